import numpy as np
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper, numpy_helper

from qcompile.channel_scales import CHANNEL_SPREAD, channel_candidates, channel_spec
from qcompile.passes.infer_shapes import InferShapes
from qcompile.plan import QuantSpec
from qcompile.quant_math import int_range
from qcompile.targets import get_target

SPREAD = np.array([1.0, 50.0, 1.0, 0.5, 2.0, 1.0, 30.0, 1.0], np.float32)  # each channel's scale


def hardswish_net(rng: np.random.Generator, spread: np.ndarray = SPREAD) -> ir.Model:
    """x → Conv → t0 → HardSwish → t1 → depthwise Conv → t2 → HardSwish → t3 → 1×1 Conv → y, the
    stem's output channels scaled by `spread` (as a MobileNetV3 stem's are, 50× apart)."""
    c = len(spread)
    inits = {
        "w0": (rng.normal(size=(c, 3, 3, 3)) * 0.3 * spread[:, None, None, None]).astype(np.float32),
        "b0": (rng.normal(size=c) * spread).astype(np.float32),
        "w1": (rng.normal(size=(c, 1, 3, 3)) * 0.3).astype(np.float32),
        "b1": rng.normal(size=c).astype(np.float32),
        "w2": (rng.normal(size=(4, c, 1, 1)) * 0.3).astype(np.float32),
        "b2": rng.normal(size=4).astype(np.float32),
    }
    nodes = [
        helper.make_node("Conv", ["x", "w0", "b0"], ["t0"], "stem", pads=[1, 1, 1, 1]),
        helper.make_node("HardSwish", ["t0"], ["t1"], "hs0"),
        helper.make_node("Conv", ["t1", "w1", "b1"], ["t2"], "dw", pads=[1, 1, 1, 1], group=c),
        helper.make_node("HardSwish", ["t2"], ["t3"], "hs1"),
        helper.make_node("Conv", ["t3", "w2", "b2"], ["y"], "pw"),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 12, 12])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 12, 12])],
        [numpy_helper.from_array(v, k) for k, v in inits.items()],
    )
    model = ir.from_proto(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)], ir_version=10))
    InferShapes()(model)
    return model


def hardswish_feeds(rng: np.random.Generator, n: int = 8) -> list[dict[str, np.ndarray]]:
    return [{"x": rng.normal(size=(1, 3, 12, 12)).astype(np.float32)} for _ in range(n)]


def test_candidates_are_tensors_between_absorbing_convs_and_float_kernels(rng):
    model = hardswish_net(rng)
    # t3 feeds a 1×1 Conv, whose weights mix channels: its input scale must be one
    assert channel_candidates(model, get_target("ort-cpu")) == {"t0": 1, "t1": 1, "t2": 1}
    assert channel_candidates(model, get_target("tflite")) == {}  # its kernels take no such scale


def _brute_force(lo, hi, qrange):
    """Every zero point's scales (inf where it cannot hold a channel); the one with the least Σ log s_c."""
    best = None
    for z in range(qrange.qmin, qrange.qmax + 1):
        need = []
        for lo_c, hi_c in zip(lo, hi, strict=True):
            down = 0.0 if lo_c >= 0 else (-lo_c / (z - qrange.qmin) if z > qrange.qmin else np.inf)
            up = 0.0 if hi_c <= 0 else (hi_c / (qrange.qmax - z) if z < qrange.qmax else np.inf)
            need.append(max(down, up))
        if np.all(np.isfinite(need)) and (best is None or np.sum(np.log(need)) < best[0]):
            best = (np.sum(np.log(need)), z, np.array(need))
    return best


@pytest.mark.parametrize("signed", [True, False], ids=["both signs", "non-negative"])
def test_channel_spec_fits_every_channel_with_the_best_shared_zero_point(rng, signed):
    qrange = int_range("uint8")
    lo = -np.abs(rng.normal(size=8)) * SPREAD * 0.2 if signed else np.zeros(8)  # else the best z is qmin
    hi = np.abs(rng.normal(size=8)) * SPREAD
    per_tensor = QuantSpec("uint8", scale=(0.1,), zero_point=(40,))
    spec, spread = channel_spec(per_tensor, (float(lo.min()), float(hi.max())), lo, hi, qrange)
    _, z, scales = _brute_force(lo, hi, qrange)
    assert spec.axis == 1 and set(spec.zero_point) == {z} and (signed or z == 0)
    np.testing.assert_allclose(spec.scale, scales, rtol=1e-6)
    s = np.asarray(spec.scale)
    assert np.all(-z * s <= lo + 1e-6) and np.all((qrange.qmax - z) * s >= hi - 1e-6)  # nothing clipped
    assert np.isclose(spread, s.max() / s.min())  # float32 scales


def test_channel_spec_keeps_one_scale_below_the_spread_and_clips_to_the_tensor_range():
    qrange = int_range("uint8")
    per_tensor = QuantSpec("uint8", scale=(0.1,), zero_point=(0,))
    for factor, per_channel in ((0.9, False), (1.1, True)):  # channel peaks CHANNEL_SPREAD × factor apart
        hi = np.array([1.0, 2.0, CHANNEL_SPREAD * factor])
        found = channel_spec(per_tensor, (0.0, float(hi.max())), np.zeros(3), hi, qrange)
        assert (found is not None) == per_channel
        if found:
            assert np.isclose(found[1], CHANNEL_SPREAD * factor)
    hi = np.array([1.0, 100.0, 1.0, 1.0])  # a percentile range of [0, 10] clips the 100 to 10
    spec, spread = channel_spec(per_tensor, (0.0, 10.0), np.zeros(4), hi, qrange)
    assert spec.zero_point == (0,) * 4 and np.isclose(spec.scale[1], 10 / 255) and np.isclose(spread, 10.0)
