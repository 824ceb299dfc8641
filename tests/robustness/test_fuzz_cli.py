"""Hostile and broken inputs through the CLI: every case ends with exit 0 and a valid
model, or exit 2 and one line naming the problem.  Exit 3 (internal error) fails.

Fixed seed, 100 cases per generator in CI; `QCOMPILE_FUZZ_EXAMPLES=2000 pytest tests/robustness/test_fuzz_cli.py`
for a longer run.
"""

from __future__ import annotations

import os
from collections import Counter

import numpy as np
import onnx
import pytest
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st

from qcompile.cli import main
from tests.helpers import SAMPLES

MODEL_BYTES = (SAMPLES / "digits_cnn.onnx").read_bytes()
CALIB = SAMPLES / "digits_calib.npz"
EXAMPLES = int(os.environ.get("QCOMPILE_FUZZ_EXAMPLES", "100"))
OUTCOMES: Counter = Counter()


def _run(tmp_path, model_path, calib=CALIB, capsys=None, extra=()):
    code = main(
        ["compile", str(model_path), "--calib", str(calib), "-o", str(tmp_path / "out"), "--no-latency", *extra]
    )
    err = capsys.readouterr().err if capsys else ""
    OUTCOMES[code] += 1
    assert code in (0, 1, 2), f"exit {code}: {err}"
    if code == 1 and capsys:  # the files are written, but the result fails its checks: said on stderr
        assert "qcompile: warning: " in err and "Traceback" not in err, err
    if code == 2:
        assert err.count("\n") == 1 and err.startswith("qcompile: error: "), err
    else:
        onnx.checker.check_model(str(next((tmp_path / "out").glob("*.onnx"))))
    return code, err


@seed(20261124)
@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_corrupted_model_files(tmp_path_factory, capsys, data):
    tmp = tmp_path_factory.mktemp("fuzz")
    blob = bytearray(MODEL_BYTES)
    kind = data.draw(st.sampled_from(["truncate", "flip", "random", "splice"]))
    if kind == "truncate":
        blob = blob[: data.draw(st.integers(0, len(blob) - 1))]
    elif kind == "flip":
        for _ in range(data.draw(st.integers(1, 8))):
            i = data.draw(st.integers(0, len(blob) - 1))
            blob[i] ^= 1 << data.draw(st.integers(0, 7))
    elif kind == "random":
        blob = bytearray(data.draw(st.binary(max_size=2048)))
    else:
        i = data.draw(st.integers(0, len(blob) - 1))
        blob = blob[:i] + bytearray(data.draw(st.binary(min_size=1, max_size=64))) + blob[i:]
    (tmp / "m.onnx").write_bytes(bytes(blob))
    _run(tmp, tmp / "m.onnx", capsys=capsys)


BROKEN_MODELS = {
    "dangling input": """<ir_version: 8, opset_import: ["": 17]> g (float[1, 4] x) => (float[1, 4] y) { y = Add(x, nowhere) }""",
    "custom op": """<ir_version: 8, opset_import: ["": 17, "acme": 1]> g (float[1, 4] x) => (float[1, 4] y) { y = acme.Magic(x) }""",
    "opset 9": """<ir_version: 4, opset_import: ["": 9]> g (float[1, 4] x) => (float[1, 4] y) { y = Relu(x) }""",
    "opset 99": """<ir_version: 8, opset_import: ["": 99]> g (float[1, 4] x) => (float[1, 4] y) { y = Relu(x) }""",
    "empty graph": """<ir_version: 8, opset_import: ["": 17]> g (float[1, 4] x) => (float[1, 4] x) { }""",
    "zero-size": """<ir_version: 8, opset_import: ["": 17]> g (float[1, 0] x) => (float[1, 0] y) { y = Relu(x) }""",
    "nan weights": """<ir_version: 8, opset_import: ["": 17]> g (float[1, 4] x) => (float[1, 2] y) <float[4, 2] w = {nan, 1, 2, 3, 4, 5, 6, 7}> { y = MatMul(x, w) }""",
    "inf weights": """<ir_version: 8, opset_import: ["": 17]> g (float[1, 4] x) => (float[1, 2] y) <float[4, 2] w = {inf, 1, 2, 3, 4, 5, 6, -inf}> { y = MatMul(x, w) }""",
    "constant output": """<ir_version: 8, opset_import: ["": 17]> g (float[1, 4] x) => (float[1, 4] y) <float[1, 4] c = {0, 0, 0, 0}> { y = Mul(x, c) }""",
}


@pytest.mark.parametrize("name", list(BROKEN_MODELS))
def test_broken_models(tmp_path, capsys, name):
    proto = onnx.parser.parse_model(BROKEN_MODELS[name])
    (tmp_path / "m.onnx").write_bytes(proto.SerializeToString())
    shape = [d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim]
    np.savez(tmp_path / "c.npz", x=np.ones((3, *shape), np.float32))
    _run(tmp_path, tmp_path / "m.onnx", tmp_path / "c.npz", capsys)


def test_duplicate_names_and_cycles(tmp_path, capsys):
    graph = onnx.helper.make_graph(
        [
            onnx.helper.make_node("Relu", ["b"], ["a"]),
            onnx.helper.make_node("Relu", ["a"], ["b"]),
            onnx.helper.make_node("Add", ["x", "a"], ["y"]),
        ],
        "g",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 4])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 4])],
    )
    (tmp_path / "m.onnx").write_bytes(onnx.helper.make_model(graph).SerializeToString())
    np.savez(tmp_path / "c.npz", x=np.ones((3, 1, 4), np.float32))
    code, _ = _run(tmp_path, tmp_path / "m.onnx", tmp_path / "c.npz", capsys)
    assert code == 2


def test_single_sample_and_constant_data(tmp_path, capsys):
    np.savez(tmp_path / "one.npz", input=np.zeros((1, 1, 1, 8, 8), np.float32))
    code, _ = _run(tmp_path, SAMPLES / "digits_cnn.onnx", tmp_path / "one.npz", capsys)
    assert code == 0


INPUT_SHAPE = (1, 1, 8, 8)
GOOD_DATA = np.load(CALIB)["input"][:12]


def _calibration_arrays(data) -> dict[str, np.ndarray]:
    kind = data.draw(
        st.sampled_from(["name", "rank", "dim", "dtype", "nonfinite", "constant", "count", "extra", "labels", "scalar"])
    )
    x = GOOD_DATA[: data.draw(st.integers(1, len(GOOD_DATA)))].copy()
    arrays = {"input": x}
    if kind == "name":
        arrays = {data.draw(st.text(min_size=1, max_size=8).filter(lambda t: t != "input")): x}
    elif kind == "rank":
        arrays["input"] = x.reshape(x.shape[0], *INPUT_SHAPE[1:], 1) if data.draw(st.booleans()) else x[:, 0, 0]
    elif kind == "dim":
        arrays["input"] = np.zeros((len(x), 1, 1, 8, data.draw(st.integers(0, 12))), np.float32)
    elif kind == "dtype":
        dtype = data.draw(st.sampled_from(["int8", "int64", "float16", "float64", "bool", "complex64", "U3"]))
        arrays["input"] = x.astype(dtype)
    elif kind == "nonfinite":
        x.flat[data.draw(st.integers(0, x.size - 1))] = data.draw(st.sampled_from([np.nan, np.inf, -np.inf]))
    elif kind == "constant":
        arrays["input"] = np.full_like(x, data.draw(st.floats(-1e6, 1e6)))
    elif kind == "count":
        arrays["input"] = x[:0]
    elif kind == "extra":
        arrays["other"] = x
    elif kind == "labels":
        arrays["labels"] = np.arange(len(x) + data.draw(st.integers(-len(x), 3)))
    else:
        arrays["input"] = np.float32(1.0)
    return arrays


@seed(20261124)
@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_bad_calibration_data(tmp_path_factory, capsys, data):
    tmp = tmp_path_factory.mktemp("calib")
    np.savez(tmp / "c.npz", **_calibration_arrays(data))
    _run(tmp, SAMPLES / "digits_cnn.onnx", tmp / "c.npz", capsys)


def _reference_plan() -> dict:
    import json
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as tmp:
        assert (
            main(["compile", str(SAMPLES / "digits_cnn.onnx"), "--calib", str(CALIB), "--no-latency", "-o", tmp]) == 0
        )
        return json.loads((Path(tmp) / "plan.json").read_text())


JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**40), 2**40)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=6,
)


def _mutate(data, node):
    """Replace, delete or rename one entry somewhere in the JSON tree."""
    if isinstance(node, dict) and node and data.draw(st.booleans()):
        key = data.draw(st.sampled_from(sorted(node)))
        action = data.draw(st.sampled_from(["descend", "replace", "delete", "rename"]))
        if action == "descend" and isinstance(node[key], (dict, list)) and node[key]:
            _mutate(data, node[key])
        elif action == "delete":
            del node[key]
        elif action == "rename":
            node["missing_" + key] = node.pop(key)
        else:
            node[key] = data.draw(JSON_VALUES)
    elif isinstance(node, list) and node:
        i = data.draw(st.integers(0, len(node) - 1))
        if isinstance(node[i], (dict, list)) and node[i] and data.draw(st.booleans()):
            _mutate(data, node[i])
        else:
            node[i] = data.draw(JSON_VALUES)


@seed(20261124)
@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_malformed_plan_files(tmp_path_factory, capsys, data):
    import copy
    import json

    global REFERENCE_PLAN
    if REFERENCE_PLAN is None:
        REFERENCE_PLAN = _reference_plan()
        capsys.readouterr()
    plan = copy.deepcopy(REFERENCE_PLAN)
    for _ in range(data.draw(st.integers(1, 4))):
        _mutate(data, plan)
    text = json.dumps(plan)
    if data.draw(st.integers(0, 9)) == 0:
        text = text[: data.draw(st.integers(0, len(text)))]
    tmp = tmp_path_factory.mktemp("plan")
    (tmp / "plan.json").write_text(text)
    _run(tmp, SAMPLES / "digits_cnn.onnx", CALIB, capsys, extra=["--plan", str(tmp / "plan.json")])


REFERENCE_PLAN = None


@seed(20261124)
@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_api_with_corrupted_bytes(data):
    """The Python API with in-memory sources: a result that passes the checker, or QCompileError."""
    import qcompile

    blob = bytearray(MODEL_BYTES)
    for _ in range(data.draw(st.integers(1, 8))):
        i = data.draw(st.integers(0, len(blob) - 1))
        blob[i] ^= 1 << data.draw(st.integers(0, 7))
    source = bytes(blob) if data.draw(st.booleans()) else _proto_or_bytes(bytes(blob))
    calibration = [{"input": x[None]} for x in GOOD_DATA[:6]]
    try:
        result = qcompile.compile(source, calibration=calibration, measure_latency=False)
    except qcompile.QCompileError as e:
        OUTCOMES["api error"] += 1
        assert "\n" not in str(e)
        return
    OUTCOMES["api ok"] += 1
    onnx.checker.check_model(result.to_proto())


def _proto_or_bytes(blob: bytes):
    try:
        return onnx.ModelProto.FromString(blob)
    except Exception:  # not even protobuf: hand over the bytes
        return blob


def test_report_counts(capsys):
    with capsys.disabled():
        print(f"\nfuzz outcomes by exit code: {dict(OUTCOMES)}")
