"""Recurrent models run as streams (`qcompile.streams`): continuity read off the float run, each
model fed its own state, verification and the search judging the state's error as it builds up."""

import re

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper, numpy_helper

import qcompile
from qcompile import cli
from qcompile.card import render_markdown
from qcompile.errors import QCompileError
from qcompile.metrics import OutputKind
from qcompile.runtime import make_session, run_session
from qcompile.streams import Streams, with_feedback

STATE = 16


def recurrent_model(seed: int = 0, leak: float = 0.98) -> onnx.ModelProto:
    """A leaky integrator: stateN = state·W_rec + tanh(x·W_in), y = stateN·W_out, with W_rec `leak`
    times a rotation, so an error in the state fades slowly and builds up over a stream."""
    rng = np.random.default_rng(seed)
    w_rec = leak * np.linalg.qr(rng.normal(size=(STATE, STATE)))[0]
    weights = {
        "w_in": rng.normal(size=(8, STATE)) * 0.5,
        "w_rec": w_rec,
        "w_out": rng.normal(size=(STATE, 4)),
    }
    nodes = [
        helper.make_node("MatMul", ["x", "w_in"], ["u"], name="in_proj"),
        helper.make_node("Tanh", ["u"], ["t"], name="squash"),
        helper.make_node("MatMul", ["state", "w_rec"], ["r"], name="rec_proj"),
        helper.make_node("Add", ["r", "t"], ["stateN"], name="integrate"),
        helper.make_node("MatMul", ["stateN", "w_out"], ["y"], name="out_proj"),
    ]
    graph = helper.make_graph(
        nodes,
        "recurrent",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8]),
         helper.make_tensor_value_info("state", TensorProto.FLOAT, [1, STATE])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4]),
         helper.make_tensor_value_info("stateN", TensorProto.FLOAT, [1, STATE])],
        [numpy_helper.from_array(w.astype(np.float32), name) for name, w in weights.items()],
    )  # fmt: skip
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def streamed(model, streams: int, steps: int, seed: int = 1) -> list[dict]:
    """Steps of `streams` streams of smooth inputs, each with the state the float model carries into it."""
    rng = np.random.default_rng(seed)
    session = make_session(ir.from_proto(model))
    out = []
    for _ in range(streams):
        state = np.zeros((1, STATE), np.float32)
        drift = rng.normal(size=(1, 8))
        for t in range(steps):
            x = (np.sin(0.3 * t + drift) + 0.2 * rng.normal(size=(1, 8))).astype(np.float32)
            out.append({"x": x, "state": state})
            state = run_session(session, out[-1])["stateN"]
    return out


def test_streams_are_read_off_the_float_run_and_feed_each_model_its_own_state():
    model = recurrent_model()
    samples = streamed(model, 3, 10)
    session = make_session(ir.from_proto(model))
    ref = {"stateN": [run_session(session, s)["stateN"] for s in samples]}
    kinds = {"y": OutputKind(), "stateN": OutputKind(feeds="state")}
    streams = Streams.of(samples, ref, kinds, "the test data")
    assert streams is not None and streams.spans() == [(0, 10), (10, 20), (20, 30)]
    kept = samples[:5] + samples[7:]  # a split that skips steps restarts the stream where it skips
    assert Streams.of(kept, {"stateN": ref["stateN"][:5] + ref["stateN"][7:]}, kinds, "x").spans()[:2] == [
        (0, 5),
        (5, 8),
    ]

    # a model run on the stream: its own state fed forward, not the float model's
    noisy = lambda s: {"stateN": s["state"] * 0.5 + 1.0}  # noqa: E731
    outs = streams.run(noisy, samples, threads=2)
    expect = 0.5 * samples[0]["state"] + 1.0
    for t in range(1, 10):
        expect = 0.5 * expect + 1.0
        np.testing.assert_allclose(outs[t]["stateN"], expect)
    np.testing.assert_allclose(outs[10]["stateN"], 0.5 * samples[10]["state"] + 1.0)  # a new stream starts as given


def test_verification_feeds_the_quantized_model_its_own_state():
    model = recurrent_model()
    calib, held = streamed(model, 4, 40), streamed(model, 2, 40, seed=9)
    result = qcompile.compile(model, calibration=calib, evaluation=held, feedback={"stateN": "state"},
                              measure_latency=False)  # fmt: skip
    streams = result.card["fidelity"]["streams"]
    assert streams == {"feedback": {"stateN": "state"}, "streams": 2, "steps": 80}
    # an independent streaming run of both models on ORT
    float_session, quant_session = make_session(ir.from_proto(model)), make_session(result.model)
    ys = {"float": [], "fed": [], "given": []}
    for start in (0, 40):
        state = held[start]["state"]
        for sample in held[start : start + 40]:
            ys["float"].append(run_session(float_session, sample)["y"])
            ys["given"].append(run_session(quant_session, sample)["y"])
            got = run_session(quant_session, {**sample, "state": state})
            ys["fed"].append(got["y"])
            state = got["stateN"]
    ref, fed, given = (np.concatenate(ys[k]) for k in ("float", "fed", "given"))
    y = next(o for o in result.card["fidelity"]["outputs"] if o["name"] == "y")
    assert y["max_abs_error"] == pytest.approx(float(np.abs(ref - fed).max()), rel=1e-5)
    assert np.abs(ref - fed).max() > np.abs(ref - given).max()  # the state's error built up
    assert "Run as 2 stream(s) of 80 steps" in render_markdown(result.card)


def _sqnr(ref: np.ndarray, got: np.ndarray) -> float:
    return float(10 * np.log10(np.sum(ref**2) / np.sum((ref - got) ** 2)))


def test_the_search_judges_the_stream_and_meets_a_budget_the_step_by_step_search_misses():
    model = recurrent_model()
    calib, held = streamed(model, 6, 48), streamed(model, 3, 48, seed=9)
    naive = qcompile.compile(model, calibration=calib, evaluation=held, measure_latency=False)
    naive_fed = qcompile.compile(model, calibration=calib, evaluation=held, feedback={"stateN": "state"},
                                 measure_latency=False)  # fmt: skip
    step, stream = (next(o["sqnr_db"] for o in r.card["fidelity"]["outputs"] if o["name"] == "y")
                    for r in (naive, naive_fed))  # fmt: skip
    assert stream < step - 3  # judged step by step, all int8 looks better than it runs
    floor = (step + stream) / 2
    options = dict(calibration=calib, evaluation=held, policy="hybrid", metric="sqnr:y", floor=floor,
                   margin=0.5, measure_latency=False)  # fmt: skip
    blind = qcompile.compile(model, feedback=None, **options)
    fed = qcompile.compile(model, feedback={"stateN": "state"}, **options)
    assert not blind.card["search"]["float_groups"]  # step by step, all int8 meets the floor ...
    assert fed.card["search"]["float_groups"] and fed.card["budget"]["met"]  # ... as a stream it does not
    assert fed.card["search"]["streams"]["feedback"] == {"stateN": "state"}


def test_the_search_feeds_a_state_that_no_quantized_group_writes():
    """The state output written by an op the target keeps float (here Sin), so the search's probes
    do not include it: the probing run must still read it to feed the next step."""
    model = recurrent_model()
    for node in model.graph.node:
        node.output[:] = ["acc" if o == "stateN" else o for o in node.output]
        node.input[:] = ["acc" if i == "stateN" else i for i in node.input]
    model.graph.node.append(helper.make_node("Sin", ["acc"], ["stateN"], name="wrap"))
    calib, held = streamed(model, 4, 24), streamed(model, 2, 24, seed=9)
    result = qcompile.compile(model, calibration=calib, evaluation=held, policy="hybrid", metric="sqnr:y",
                              floor=20.0, feedback={"stateN": "state"}, measure_latency=False)  # fmt: skip
    assert result.card["search"]["streams"]["feedback"] == {"stateN": "state"}
    assert result.card["budget"]["met"]


def _steps_close(float_outputs: dict, quantized_outputs: dict) -> float:
    """The share of steps whose output y stays within 0.2 of float's: a count, not graded."""
    error = np.abs(float_outputs["y"] - quantized_outputs["y"])
    return float(np.mean(error.reshape(len(error), -1).max(axis=1) < 0.2))


def test_a_streamed_search_takes_its_sampling_error_a_stream_at_a_time():
    model = recurrent_model()
    calib, held = streamed(model, 6, 24), streamed(model, 2, 24, seed=9)
    result = qcompile.compile(model, calibration=calib, evaluation=held, policy="hybrid", metric=_steps_close,
                              floor=0.5, feedback={"stateN": "state"}, measure_latency=False)  # fmt: skip
    search = result.card["search"]
    streams = search["streams"]
    assert streams["jackknife_blocks"] == streams["streams"] >= 3
    assert search["sampling_error"] is not None
    assert f"a stream at a time: {streams['streams']} streams" in render_markdown(result.card)


@pytest.mark.parametrize(
    ("feedback", "message"),
    [
        ({"hidden": "state"}, "the model has no output 'hidden'; it has ['stateN', 'y']"),
        ({"stateN": "h0"}, "the model has no input 'h0'; it has ['state', 'x']"),
        ({"y": "state"}, "output 'y' (FLOAT[1, 4]) cannot be fed to input 'state' (FLOAT[1, 16])"),
        ({"stateN": "state", "y": "state"}, "two outputs fed to the same input"),
    ],
)
def test_feedback_pairs_are_checked_against_the_model(feedback, message):
    model = ir.from_proto(recurrent_model())
    with pytest.raises(QCompileError, match="feedback .*" + re.escape(message)):
        with_feedback(model, {}, feedback)


def test_feedback_on_samples_that_never_continue_each_other_is_an_error():
    model = recurrent_model()
    rng = np.random.default_rng(0)
    lone = [{"x": rng.normal(size=(1, 8)).astype(np.float32), "state": np.zeros((1, STATE), np.float32)}
            for _ in range(12)]  # fmt: skip
    with pytest.raises(QCompileError, match="no sample of the evaluation data continues the one before it"):
        qcompile.compile(model, calibration=lone, evaluation=lone, feedback={"stateN": "state"}, measure_latency=False)


def test_the_cli_takes_feedback_pairs(tmp_path, capsys):
    model = recurrent_model()
    onnx.save(model, tmp_path / "rec.onnx")
    samples = streamed(model, 4, 40)
    np.savez(tmp_path / "calib.npz", **{k: np.stack([s[k] for s in samples]) for k in ("x", "state")})
    args = ["compile", str(tmp_path / "rec.onnx"), "--calib", str(tmp_path / "calib.npz"), "--no-latency",
            "-o", str(tmp_path / "out")]  # fmt: skip
    assert cli.main([*args, "--feedback", "stateN=state"]) == 0
    card = (tmp_path / "out" / "card.md").read_text()
    assert "Run as 1 stream(s) of 32 steps in all" in card  # the held-out split: every 5th run of 32 steps
    capsys.readouterr()
    for bad in (["stateN"], ["stateN="], ["stateN=state", "--feedback", "stateN=x"]):
        assert cli.main([*args, "--feedback", *bad]) == 2
    errors = capsys.readouterr().err.splitlines()
    assert errors == [
        "qcompile: error: --feedback takes OUTPUT=INPUT (a state output and the input it feeds), got 'stateN'",
        "qcompile: error: --feedback takes OUTPUT=INPUT (a state output and the input it feeds), got 'stateN='",
        "qcompile: error: --feedback names output 'stateN' twice",
    ]


def test_a_target_with_its_own_runtime_runs_the_streams_there():
    """LiteRT runs the .tflite a step at a time on its own state; every runtime is compared with the
    QDQ model streamed the same way (else the agreement would compare a stream with lone steps)."""
    from qcompile.targets.tflite import tflite_model_of
    from qcompile.targets.tflite_run import LiteRtRunner

    model = recurrent_model()
    calib, held = streamed(model, 4, 40), streamed(model, 2, 24, seed=9)
    result = qcompile.compile(model, "tflite", calib, held, feedback={"stateN": "state"}, measure_latency=False)
    assert result.card["fidelity"]["streams"]["streams"] == 2
    runner = LiteRtRunner(tflite_model_of(result.model, result.target))
    float_session, errors, state = make_session(ir.from_proto(model)), [], None
    for i, sample in enumerate(held):
        got = runner.run(sample if i % 24 == 0 else {**sample, "state": state})
        state = got["stateN"]
        errors.append(np.abs(got["y"] - run_session(float_session, sample)["y"]).max())
    y = next(o for o in result.card["fidelity"]["outputs"] if o["name"] == "y")
    assert y["max_abs_error"] == pytest.approx(float(max(errors)), rel=1e-5)
    agreement = result.card["deployment"]["runtimes_vs_qdq"]
    assert all(a["y"]["max_lsb"] <= 2 for a in agreement.values()), agreement


def test_a_jackknife_groups_steps_by_stream_or_in_runs_of_root_n_steps():
    three = Streams({"stateN": "state"}, (False, *[True] * 9) * 3)
    assert three.blocks() == three.spans() == [(0, 10), (10, 20), (20, 30)]
    one = Streams({"stateN": "state"}, (False, *[True] * 29))  # one stream: runs of ⌈√30⌉ = 6 steps
    assert one.blocks() == [(0, 6), (6, 12), (12, 18), (18, 24), (24, 30)]
    two = Streams({"stateN": "state"}, (False, *[True] * 3, False, *[True] * 4))  # 9 steps: runs of 3
    assert two.blocks() == [(0, 3), (3, 4), (4, 7), (7, 9)]
    assert one.describe(blocks=True)["jackknife_blocks"] == 5
