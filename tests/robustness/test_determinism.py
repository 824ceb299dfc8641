"""Same model, data and options → byte-identical model and plan files, whichever executor calibrates."""

from __future__ import annotations

import multiprocessing
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from contextlib import contextmanager

import pytest

import qcompile
from qcompile.cli import main
from tests.helpers import SAMPLES

MODEL = SAMPLES / "digits_cnn.onnx"
CALIB = SAMPLES / "digits_calib.npz"


@contextmanager
def _executor(kind: str):
    if kind == "serial":
        yield None
    elif kind == "threads":
        with ThreadPoolExecutor(2) as pool:
            yield pool
    elif kind == "processes":
        with ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn")) as pool:
            yield pool
    else:
        distributed = pytest.importorskip("distributed")
        with distributed.LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
        ) as cluster:
            with distributed.Client(cluster) as client:
                yield client.get_executor()


def _outputs(tmp_path, kind: str, calibrator: str) -> dict[str, bytes]:
    with _executor(kind) as executor:
        result = qcompile.compile(
            MODEL, calibration=CALIB, calibrator=calibrator, measure_latency=False, executor=executor
        )
    files = result.save(tmp_path / f"{kind}-{calibrator}")
    return {k: files[k].read_bytes() for k in ("model", "plan")} | {"samples": result.card["calibration_samples"]}


@pytest.mark.slow
@pytest.mark.parametrize("calibrator", ["minmax", "ema", "percentile"])
def test_every_executor_gives_identical_files(tmp_path, calibrator):
    serial = _outputs(tmp_path, "serial", calibrator)
    for kind in ("threads", "processes", "dask"):
        assert _outputs(tmp_path, kind, calibrator) == serial, kind


@pytest.mark.slow
def test_cli_jobs_option_gives_identical_files(tmp_path, capsys):
    args = ["compile", str(MODEL), "--calib", str(CALIB), "--no-latency", "--calibrator", "percentile"]
    assert main([*args, "-o", str(tmp_path / "one")]) == 0
    assert main([*args, "--jobs", "2", "-o", str(tmp_path / "two")]) == 0
    for name in ("digits_cnn.ort-cpu.onnx", "plan.json"):
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "two" / name).read_bytes()


@pytest.mark.slow
@pytest.mark.parametrize("policy", ["hybrid", "selective"])
def test_the_precision_search_makes_the_same_plan_on_every_executor(policy):
    import numpy as np

    from tests.passes.test_sensitivity import planted_chain

    def plan(kind: str) -> str:
        rng = np.random.default_rng(11)
        data = [{"x": np.abs(rng.normal(size=(1, 16))).astype(np.float32)} for _ in range(24)]
        with _executor(kind) as executor:
            result = qcompile.compile(
                planted_chain(np.random.default_rng(1234)),
                calibration=data,
                policy=policy,
                metric="sqnr",
                floor=30,
                measure_latency=False,
                executor=executor,
            )
        assert result.card["search"]["table"], "the ranking ran"
        return result.plan.to_json()

    serial = plan("serial")
    for kind in ("processes", "dask"):
        assert plan(kind) == serial, kind


@pytest.mark.slow
def test_a_model_quantized_inside_its_if_gets_the_same_files_from_a_process_pool(tmp_path):
    import numpy as np

    from tests.support.quant_models import if_feeds, if_model

    def files(kind: str) -> dict[str, bytes]:
        rng = np.random.default_rng(5)
        calib, held = if_feeds(rng, 32, loud=1000), if_feeds(rng, 8, loud=1000)
        with _executor(kind) as executor:
            result = qcompile.compile(
                if_model(np.random.default_rng(7), loud=1000),
                calibration=calib,
                evaluation=held,
                policy="hybrid",
                metric="sqnr",
                floor=30,
                measure_latency=False,
                executor=executor,
            )
        assert result.plan.nodes["then_conv1"].precision == "int8"  # the branch was searched, not skipped
        saved = result.save(tmp_path / kind)
        return {k: saved[k].read_bytes() for k in ("model", "plan")}

    assert files("processes") == files("serial")
