"""The ort-cpu target: ORT must fuse the QDQ graph into integer kernels, and those
kernels must agree with the QDQ reference (Q/DQ simulated in float) to within a few LSB."""

import numpy as np
import onnx
import pytest

from qcompile.cpu import CpuInfo
from qcompile.errors import QCompileError
from qcompile.passes.fold_scales import FoldScales
from qcompile.passes.insert_qdq import InsertQDQ
from qcompile.runtime import fused_op_counts, make_session
from qcompile.targets import TARGET_NAMES, get_target
from qcompile.targets.ort_cpu import OPS
from tests.helpers import run
from tests.support.quant_models import conv_model, feeds, planned


def _compiled(rng, **options):
    model = conv_model(rng)
    samples = feeds(rng, 16)
    plan, _ = planned(model, samples, **options)
    InsertQDQ(plan)(model)
    FoldScales(plan)(model)
    return model, plan, samples


def test_ort_fuses_conv_and_gemm_into_integer_kernels(rng, tmp_path):
    model, _, _ = _compiled(rng)
    import onnx_ir as ir

    make_session(ir.to_proto(model), optimized_model_path=tmp_path / "opt.onnx")
    optimized = onnx.load(str(tmp_path / "opt.onnx")).graph.node
    assert {"QLinearConv", "QGemm", "QLinearSigmoid"} <= {n.op_type for n in optimized}
    assert fused_op_counts(optimized) == {"integer": 3, "float": 0}  # those three


def test_integer_kernels_agree_with_the_qdq_reference(rng):
    model, plan, samples = _compiled(rng)
    step = plan.tensors["s"].scale[0]
    for s in samples:
        ref = run(model, s, optimize=False)["s"]  # Q/DQ simulated in float
        got = run(model, s, optimize=True)["s"]  # ORT's fused integer kernels
        assert np.abs(ref - got).max() <= 2 * step + 1e-6


@pytest.mark.parametrize("flags,reduce", [({"avx2"}, True), ({"avx2", "avx512_vnni"}, False), ({"avx_vnni"}, False)])
def test_weight_range_follows_the_cpu(flags, reduce):
    target = get_target("ort-cpu", cpu=CpuInfo("x86_64", "test", frozenset(flags)))
    assert target.weight_reduce_range is reduce and target.options["reduce_range"] is reduce


def test_reduced_range_weights_fit_seven_bits(rng):
    model, _, _ = _compiled(rng, cpu=CpuInfo("x86_64", "test", frozenset({"avx2"})))
    weights = [
        v.const_value.numpy() for v in model.graph.initializers.values() if v.const_value.numpy().dtype == np.int8
    ]
    assert weights and max(np.abs(w).max() for w in weights) <= 63


def test_arm_has_no_saturation_issue():
    assert not get_target("ort-cpu", cpu=CpuInfo("aarch64", "test", frozenset())).weight_reduce_range


def test_table_is_data():
    assert OPS["Conv"].weight == 1 and OPS["MaxPool"].output == "tied" and OPS["Concat"].output == "tied_all"


def test_unknown_target_and_option():
    with pytest.raises(QCompileError, match="unknown target 'tfl'; known: " + ", ".join(TARGET_NAMES)):
        get_target("tfl")
    with pytest.raises(QCompileError, match=r"ort-cpu takes no option\(s\) \['colour'\]; known: reduce_range"):
        get_target("ort-cpu", colour="red")
