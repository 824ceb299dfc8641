"""Stage 2 on its own: calibrate, plan, Q/DQ, fold, legality, on a prepared model."""

import dataclasses
from collections import Counter

import numpy as np
import pytest

from qcompile.config import CompileConfig
from qcompile.errors import QCompileError
from qcompile.plan import NodeDecision, QuantPlan
from qcompile.prepare import prepare
from qcompile.quantize import quantize
from qcompile.runtime import make_session, run_session
from qcompile.targets import get_target
from qcompile.targets.base import LegalityError
from tests.helpers import SAMPLES

MODEL = SAMPLES / "digits_cnn.onnx"


def _calibration(n=16):
    data = np.load(SAMPLES / "digits_calib.npz")
    return [{"input": data["input"][i : i + 1]} for i in range(n)]


def test_quantize_returns_a_plan_and_a_runnable_int8_model():
    config = CompileConfig(get_target("ort-cpu"))
    prepared = prepare(MODEL, config.target)
    q = quantize(prepared, _calibration(), config)
    assert q.model is prepared.model  # the prepared copy is rewritten in place
    assert list(q.plan.meta) == [
        "target", "calibrator", "policy", "weight_qrange", "per_channel", "bias_correction", "opset",
    ]  # fmt: skip
    assert set(q.plan.meta["bias_correction"]) <= {n.name for n in q.model.graph}
    assert q.calibration.num_samples == 16 and q.calibration.calibrator == "minmax"
    counts = Counter(n.op_type for n in q.model.graph)
    assert counts["QuantizeLinear"] > 0 and counts["DequantizeLinear"] > 0
    assert all(d.precision == "int8" for d in q.plan.nodes.values())
    out = run_session(make_session(q.session), _calibration(1)[0])
    assert np.all(np.isfinite(next(iter(out.values()))))


def test_pinned_plan_and_illegal_plan():
    config = CompileConfig(get_target("ort-cpu"), QuantPlan(nodes={"fc2": NodeDecision("float")}))
    q = quantize(prepare(MODEL, config.target), _calibration(), config)
    assert q.plan.nodes["fc2"].reason == "pinned by the user plan"
    full = get_target("ort-cpu")
    no_gemm = dataclasses.replace(full, ops={k: v for k, v in full.ops.items() if k != "Gemm"})
    bad = CompileConfig(no_gemm, QuantPlan(nodes={"fc2": NodeDecision("int8")}))
    with pytest.raises(LegalityError, match="rule int8-op-supported fails at node 'fc2'"):
        quantize(prepare(MODEL, bad.target), _calibration(), bad)


def test_config_rejects_unknown_names_before_any_work():
    with pytest.raises(QCompileError, match="unknown calibrator 'kl'; known: minmax, ema, percentile"):
        CompileConfig(get_target("ort-cpu"), calibrator="kl")
    with pytest.raises(QCompileError, match="unknown policy 'clever'; known: naive, hybrid"):
        CompileConfig(get_target("ort-cpu"), policy="clever")
    with pytest.raises(
        QCompileError, match="margin only applies to the search of --policy hybrid or selective, not naive"
    ):
        CompileConfig(get_target("ort-cpu"), margin=1.0)
    for bad in (-1.0, float("nan"), float("inf")):
        with pytest.raises(QCompileError, match="the margin must be a finite number ≥ 0"):
            CompileConfig(get_target("ort-cpu"), policy="hybrid", margin=bad)
    with pytest.raises(QCompileError, match="a time budget only applies to the search of --policy hybrid or selective"):
        CompileConfig(get_target("ort-cpu"), time_budget=10.0)
    for bad in (-1.0, float("nan"), float("inf")):
        with pytest.raises(QCompileError, match="the time budget must be a finite number of seconds ≥ 0"):
            CompileConfig(get_target("ort-cpu"), policy="selective", time_budget=bad)
