"""An independent numpy model of TensorFlow Lite's reference integer kernels, running a whole ``.tflite`` file.

``run_reference(model, inputs)`` executes subgraph 0 op by op with the arithmetic of LiteRT's ``BUILTIN_REF``
kernels (``reference_integer_ops`` / ``reference_ops``), the multipliers computed as each kernel's Prepare does:
int8 activations, int8 weights per tensor or per channel, int32 bias; or "16x8": int16 activations (zero point 0),
int8 weights, int64 bias (int32 with ``quantized_bias_type`` INT32); int8 and int16 tensors may be mixed through
QUANTIZE. Float32 only into QUANTIZE and out of DEQUANTIZE. Anything else raises ``NotImplementedError`` naming the
op; configurations LiteRT rejects raise ``ValueError``. The integer helpers are in ``tflite_fixedpoint``, the
int16-only kernels (LOGISTIC, TANH, SOFTMAX, power-of-two ADD/SUB) in ``tflite_reference16``.
"""

from __future__ import annotations

from collections.abc import Callable

import ai_edge_litert.schema_py_generated as S
import numpy as np

from tests.support import tflite_fixedpoint as fx
from tests.support import tflite_reference16 as r16

_DTYPES = {getattr(S.TensorType, k): getattr(np, k.lower()) for k in ("INT8", "UINT8", "INT16", "INT32", "INT64")}
_DTYPES.update({S.TensorType.FLOAT32: np.float32, S.TensorType.BOOL: np.bool_})
_OP_NAMES = {v: k for k, v in vars(S.BuiltinOperator).items() if not k.startswith("_")}
_ACT = S.ActivationFunctionType
_TT = S.TensorType
_QRANGE = {_TT.INT8: (-128, 127), _TT.UINT8: (0, 255), _TT.INT16: (-(1 << 15), (1 << 15) - 1)}
f32 = np.float32


class _Node:
    """One operator: its input arrays and tensors, output tensors and builtin options."""

    def __init__(self, name: str, op: S.OperatorT, tensors: list[S.TensorT], values: dict[int, np.ndarray]) -> None:
        self.name, self.op, self.tensors, self.values = name, op, tensors, values
        self.opts = op.builtinOptions

    def index(self, i: int) -> int:
        ins = self.op.inputs
        return int(ins[i]) if ins is not None and i < len(ins) else -1

    def opt(self, i: int) -> np.ndarray | None:
        """Input i, None when absent (index -1 or past the end)."""
        k = self.index(i)
        return None if k < 0 else self.values[k]

    def x(self, i: int) -> np.ndarray:
        """Input i, which must be present."""
        v = self.opt(i)
        if v is None:
            raise ValueError(f"{self.name}: input {i} is missing")
        return v

    def t(self, i: int) -> S.TensorT:
        return self.tensors[self.index(i)]

    def out(self, j: int = 0) -> S.TensorT:
        return self.tensors[int(self.op.outputs[j])]

    def fail(self, what: str) -> NotImplementedError:
        return NotImplementedError(f"tflite_reference: {self.name}: {what} is not modelled")


def _scales(t: S.TensorT) -> np.ndarray:
    q = t.quantization
    if q is None or q.scale is None or len(q.scale) == 0:
        raise ValueError(f"tensor {t.name!r} has no quantization scale")
    return np.asarray(q.scale, dtype=f32)


def _scale(t: S.TensorT) -> np.float32:
    """The tensor's params.scale (its first scale), as float32."""
    return _scales(t)[0]


def _zps(t: S.TensorT) -> fx.Ints:
    q = t.quantization
    zps = np.zeros(0) if q is None or q.zeroPoint is None else q.zeroPoint
    return np.asarray(zps, dtype=np.int64).reshape(-1)


def _zp(t: S.TensorT) -> int:
    """The tensor's params.zero_point (its first zero point, 0 when it has none)."""
    zps = _zps(t)
    return int(zps[0]) if zps.size else 0


def _qrange(t: S.TensorT) -> tuple[int, int]:
    """The integer range of a quantized int8 / uint8 / int16 tensor."""
    if t.type not in _QRANGE:
        raise NotImplementedError(f"tflite_reference: tensor {t.name!r} of type {t.type} as a quantized tensor")
    return _QRANGE[t.type]


def _is16(node: _Node, i: int = 0) -> bool:
    return node.t(i).type == _TT.INT16


def _check_zero_points16(node: _Node, *inputs: int) -> None:
    """int16 kernels require zero points 0 on their int16 inputs and output."""
    if any(_zp(node.t(i)) != 0 for i in inputs) or _zp(node.out()) != 0:
        raise ValueError(f"{node.name} int16: LiteRT requires zero points 0")


def _act_range(node: _Node, fused: int) -> tuple[int, int]:
    """CalculateActivationRangeQuantized: the fused range [lo, hi] quantized as zp + round(f / scale) in float32,
    within the output type's range."""
    out = node.out()
    scale, zp = _scale(out), _zp(out)
    qmin, qmax = _qrange(out)

    def q(f: float) -> int:
        return zp + int(fx.round_half_away(f32(f) / scale))

    if fused == _ACT.NONE:
        return qmin, qmax
    if fused == _ACT.RELU:
        return max(qmin, q(0.0)), qmax
    if fused == _ACT.RELU6:
        return max(qmin, q(0.0)), min(qmax, q(6.0))
    if fused == _ACT.RELU_N1_TO_1:
        return max(qmin, q(-1.0)), min(qmax, q(1.0))
    raise node.fail(f"fused activation {fused}")


def _requant(acc: np.ndarray, q: fx.Ints, shift: fx.Ints, zp: int, lo: int, hi: int) -> fx.Ints:
    """clamp(MultiplyByQuantizedMultiplier(acc, q, shift) + zp, lo, hi), acc wrapped to int32."""
    return np.clip(fx.mbqm(fx.wrap32(acc), q, shift) + zp, lo, hi)


def _channel_scales(node: _Node, x: int, w: int, channels: int) -> np.ndarray:
    """double(s_in) * double(s_w[c]) / double(s_out) per output channel (one weight scale serves them all)."""
    wt = node.t(w)
    s_w = _scales(wt).astype(np.float64)
    if s_w.size > 1 and (s_w.size != channels or wt.shape[wt.quantization.quantizedDimension] != channels):
        raise ValueError(f"{node.name}: {s_w.size} weight scales on quantized_dimension of size != {channels} channels")
    return np.float64(_scale(node.t(x))) * np.broadcast_to(s_w, (channels,)) / np.float64(_scale(node.out()))


def _per_channel_multipliers(node: _Node, x: int, w: int, channels: int) -> tuple[fx.Ints, fx.Ints]:
    """PopulateConvolutionQuantizationParams: QuantizeMultiplier of each channel's s_in * s_w[c] / s_out."""
    return fx.quantize_multiplier(_channel_scales(node, x, w, channels))


def _out_and_pad(padding: int, size: int, k: int, stride: int, dilation: int = 1) -> tuple[int, int]:
    """ComputeOutSize and ComputePadding: SAME -> ceil(size / stride), VALID -> (size - eff_k + stride) // stride;
    the leading pad is half of max((out - 1) * stride + eff_k - size, 0), rounded down."""
    eff = (k - 1) * dilation + 1
    out = (size + stride - 1) // stride if padding == S.Padding.SAME else (size + stride - eff) // stride
    return out, max((out - 1) * stride + eff - size, 0) // 2


Pair = tuple[int, int]


def _windows(x: np.ndarray, k: Pair, s: Pair, d: Pair, out: Pair, pad: Pair, fill: int) -> np.ndarray:
    """NHWC patches [N, OH, OW, KH*KW, C] (kernel k, stride s, dilation d, leading pad): outside reads `fill`."""
    n, h, w, c = x.shape
    span = [(out[i] - 1) * s[i] + 1 for i in (0, 1)]
    xp = np.full(
        (n, max(span[0] + (k[0] - 1) * d[0], pad[0] + h), max(span[1] + (k[1] - 1) * d[1], pad[1] + w), c),
        fill,
        dtype=x.dtype,
    )
    xp[:, pad[0] : pad[0] + h, pad[1] : pad[1] + w] = x
    cols = [
        xp[:, a : a + span[0] : s[0], b : b + span[1] : s[1]]
        for a in range(0, k[0] * d[0], d[0])
        for b in range(0, k[1] * d[1], d[1])
    ]
    return np.stack(cols, axis=3)


def _conv_geometry(node: _Node, h: int, w: int, kh: int, kw: int) -> tuple[Pair, Pair, Pair, Pair, Pair]:
    o = node.opts
    oh, ph = _out_and_pad(o.padding, h, kh, o.strideH, o.dilationHFactor)
    ow, pw = _out_and_pad(o.padding, w, kw, o.strideW, o.dilationWFactor)
    return (kh, kw), (o.strideH, o.strideW), (o.dilationHFactor, o.dilationWFactor), (oh, ow), (ph, pw)


def _bias(node: _Node, i: int, channels: int) -> fx.Ints:
    b = node.opt(i)
    return np.zeros(channels, np.int64) if b is None else fx.i64(b).reshape(channels)


def _int32_acc16x8(node: _Node, i: int) -> bool:
    """16x8 CONV_2D / DEPTHWISE_CONV_2D / FULLY_CONNECTED / TRANSPOSE_CONV (bias input i): int8 weights, zero points
    0; quantized_bias_type INT32 selects an int32 bias and accumulator (True), unset or INT64 an int64 accumulator
    with the bias read as int64 whatever its type (an int32 bias is refused here)."""
    if node.t(1).type != _TT.INT8:
        raise node.fail("int16 activations with weights other than int8")
    _check_zero_points16(node, 2 if node.name == "TRANSPOSE_CONV" else 0)
    qbt, b = getattr(node.opts, "quantizedBiasType", 0), node.opt(i)
    btype = None if b is None else node.t(i).type
    if qbt not in (0, _TT.INT32, _TT.INT64) or (qbt and btype not in (None, qbt)):
        raise ValueError(f"{node.name} 16x8: quantized_bias_type must be INT32 or INT64 and match the bias type")
    if btype not in (None, _TT.INT64) and qbt != _TT.INT32:
        raise ValueError(f"{node.name} 16x8: the bias must be int64, or int32 with quantized_bias_type INT32")
    return qbt == _TT.INT32


def _requant16x8(node: _Node, acc: fx.Ints, i: int, q: fx.Ints, shift: fx.Ints, lo: int, hi: int) -> fx.Ints:
    """16x8 requantization of acc + bias (input i): MultiplyByQuantizedMultiplier on an int32 accumulator, or the
    int64 one (multiplier rounded to 16 bits); the output zero point is 0."""
    acc32 = _int32_acc16x8(node, i)
    acc = acc + _bias(node, i, acc.shape[-1])
    return np.clip(fx.mbqm(fx.wrap32(acc), q, shift) if acc32 else fx.mbqm64(acc, q, shift), lo, hi)


def conv_2d(node: _Node) -> list[np.ndarray]:
    """ConvPerChannel: acc = sum w * (x - zp_in) over the window (padding skipped) + bias, requantized per channel;
    grouped when the filter's depth divides the input's."""
    x, w = fx.i64(node.x(0)) - _zp(node.t(0)), fx.i64(node.x(1))
    if np.any(_zps(node.t(1)) != 0):
        raise ValueError("CONV_2D: LiteRT requires zero weight zero points")
    oc, kh, kw, cg = w.shape
    g = x.shape[3] // cg
    geo = _conv_geometry(node, x.shape[1], x.shape[2], kh, kw)
    cols = _windows(x, *geo, fill=0)
    n, oh, ow = cols.shape[:3]
    cols = cols.reshape(n, oh, ow, kh * kw, g, cg)
    acc = np.einsum("nhwkgc,gokc->nhwgo", cols, w.reshape(g, oc // g, kh * kw, cg)).reshape(n, oh, ow, oc)
    q, shift = _per_channel_multipliers(node, 0, 1, oc)
    lo, hi = _act_range(node, node.opts.fusedActivationFunction)
    if _is16(node):
        return [_requant16x8(node, acc, 2, q, shift, lo, hi)]
    return [_requant(acc + _bias(node, 2, oc), q, shift, _zp(node.out()), lo, hi)]


def depthwise_conv_2d(node: _Node) -> list[np.ndarray]:
    """DepthwiseConvPerChannel: output channel c = i * multiplier + m reads input channel i."""
    x, w = fx.i64(node.x(0)) - _zp(node.t(0)), fx.i64(node.x(1))
    _, kh, kw, oc = w.shape
    cols = _windows(x, *_conv_geometry(node, x.shape[1], x.shape[2], kh, kw), fill=0)
    cols = cols[..., np.arange(oc) // (oc // x.shape[3])]
    acc = np.einsum("nhwkc,kc->nhwc", cols, w.reshape(kh * kw, oc))
    q, shift = _per_channel_multipliers(node, 0, 1, oc)
    lo, hi = _act_range(node, node.opts.fusedActivationFunction)
    if _is16(node):
        return [_requant16x8(node, acc, 2, q, shift, lo, hi)]
    return [_requant(acc + _bias(node, 2, oc), q, shift, _zp(node.out()), lo, hi)]


def fully_connected(node: _Node) -> list[np.ndarray]:
    """FullyConnected / FullyConnectedPerChannel (reference variants taking the scales): acc = (w - zp_w) . (x - zp_in)
    + bias (int32, or int64 in 16x8), then round(double(acc) * double(s_in) * double(s_w) / double(s_out)) half away
    from zero, + zp_out, clamped; per output channel when the weights have several scales (that kernel ignores the
    weight zero point)."""
    x, wt = node.x(0), node.t(1)
    w = fx.i64(node.x(1))
    oc, depth = w.shape[-2], w.shape[-1]
    per_channel = _scales(wt).size > 1
    if per_channel and wt.quantization.quantizedDimension != 0:
        raise ValueError("FULLY_CONNECTED: LiteRT requires per-channel weights on quantized_dimension 0")
    bt = node.t(2) if node.opt(2) is not None else None
    if not per_channel and bt is not None:
        s_iw = np.float64(_scale(node.t(0))) * np.float64(_scale(wt))
        if abs(s_iw - np.float64(_scale(bt))) / np.float64(_scale(node.out())) > 0.02:
            raise ValueError("FULLY_CONNECTED: LiteRT requires |s_in * s_w - s_bias| / s_out <= 0.02")
    w = w.reshape(oc, depth) - (0 if per_channel else _zp(wt))
    acc = (fx.i64(x).reshape(-1, depth) - _zp(node.t(0))) @ w.T + _bias(node, 2, oc)
    acc = acc if _is16(node) and not _int32_acc16x8(node, 2) else fx.wrap32(acc)  # 16x8: int64 unless the bias is int32
    eff = _channel_scales(node, 0, 1, oc)
    y = fx.float_to_int32(fx.round_half_away(acc.astype(np.float64) * eff)) + _zp(node.out())
    lo, hi = _act_range(node, node.opts.fusedActivationFunction)
    y = np.clip(y, lo, hi)
    return [y.reshape(*x.shape[:-1], oc) if node.opts.keepNumDims else y]


def transpose_conv(node: _Node) -> list[np.ndarray]:
    """TransposeConv: scatter-add (x - zp_in) * w into the output at y*stride - pad + ky, then bias and per-channel
    requantization; the pad is the one a conv from the output size to the input size would use."""
    oh, ow = (int(v) for v in np.ravel(node.x(0))[1:3])
    w, x = fx.i64(node.x(1)), fx.i64(node.x(2)) - _zp(node.t(2))
    oc, kh, kw, _ = w.shape
    n, h, wd, _ = x.shape
    o = node.opts
    sh, sw = o.strideH, o.strideW
    ph, pw = _out_and_pad(o.padding, oh, kh, sh)[1], _out_and_pad(o.padding, ow, kw, sw)[1]
    full = np.zeros((n, max((h - 1) * sh + kh, ph + oh), max((wd - 1) * sw + kw, pw + ow), oc), np.int64)
    for ky in range(kh):
        for kx in range(kw):
            full[:, ky : ky + (h - 1) * sh + 1 : sh, kx : kx + (wd - 1) * sw + 1 : sw] += x @ w[:, ky, kx, :].T
    acc = full[:, ph : ph + oh, pw : pw + ow]
    q, shift = _per_channel_multipliers(node, 2, 1, oc)
    lo, hi = _act_range(node, getattr(o, "fusedActivationFunction", _ACT.NONE))
    if _is16(node, 2):
        return [_requant16x8(node, acc, 3, q, shift, lo, hi)]
    return [_requant(acc + _bias(node, 3, oc), q, shift, _zp(node.out()), lo, hi)]


def batch_matmul(node: _Node) -> list[np.ndarray]:
    """BatchMatMul int8: (lhs - zp_l) @ (rhs - zp_r) with broadcast batch dims, requantized by
    QuantizeMultiplier(double(float(s_l * s_r)) / s_out) (the float product, as GetQuantizedConvolutionMultipler)
    over the full int8 range (no fused activation); int16 (zero points 0): int64 accumulator and multiply."""
    lhs, rhs = fx.i64(node.x(0)) - _zp(node.t(0)), fx.i64(node.x(1)) - _zp(node.t(1))
    if node.opts is not None and node.opts.adjX:
        lhs = np.swapaxes(lhs, -1, -2)
    if node.opts is not None and node.opts.adjY:
        rhs = np.swapaxes(rhs, -1, -2)
    q, shift = fx.quantize_multiplier(np.float64(_scale(node.t(0)) * _scale(node.t(1))) / _scale(node.out()))
    if _is16(node):  # int16 x int16 or int16 x int8: int64 accumulator and multiply
        _check_zero_points16(node, 0, 1)
        return [np.clip(fx.mbqm64(np.matmul(lhs, rhs), q, shift), *_qrange(node.out()))]
    return [_requant(np.matmul(lhs, rhs), q, shift, _zp(node.out()), -128, 127)]


def _add_sub(node: _Node, sign: int) -> list[np.ndarray]:
    """Quantized ADD/SUB (left_shift = 20, 15 for int16): each input (x - zp) * 2^left_shift is scaled by
    s_i / (2 max(s1, s2)), the sum (difference) by 2 max(s1, s2) / (2^left_shift s_out), every step
    MultiplyByQuantizedMultiplierSmallerThanOneExp. int16 with pot_scale_int16 (the option's default) and three
    power-of-two scales takes the shift-only path of ``tflite_reference16``."""
    a, b, out = node.t(0), node.t(1), node.out()
    lo, hi = _act_range(node, node.opts.fusedActivationFunction if node.opts is not None else _ACT.NONE)
    left_shift = 15 if _is16(node) else 20
    if _is16(node):
        _check_zero_points16(node, 0, 1)
        pot = node.opts is not None and node.opts.potScaleInt16  # missing options: params zeroed, so false
        shifts = r16.pot_shifts(_scale(a), _scale(b), _scale(out)) if pot else None
        if shifts is not None:
            if sign > 0 and node.x(0).shape != node.x(1).shape:
                raise ValueError("ADD int16 on power-of-two scales does not broadcast (LiteRT aborts)")
            return [r16.add_sub_pot(node.x(0), node.x(1), shifts, sign, lo, hi)]
    twice_max = np.float64(2 * max(_scale(a), _scale(b)))
    real_out = twice_max / np.float64(f32(1 << left_shift) * _scale(out))
    if real_out >= 1 and sign > 0:
        raise ValueError(f"ADD: output multiplier {real_out} >= 1 (LiteRT aborts in Prepare)")
    if real_out >= 1:
        raise node.fail(f"an output multiplier {real_out} >= 1 (LiteRT right-shifts by a negative amount)")
    scaled = []
    for i, t in enumerate((a, b)):
        q, shift = fx.quantize_multiplier(np.float64(_scale(t)) / twice_max)
        scaled.append(fx.mbqm_smaller_than_one(fx.wrap32((fx.i64(node.x(i)) - _zp(t)) << left_shift), q, shift))
    q, shift = fx.quantize_multiplier(real_out)
    raw = fx.mbqm_smaller_than_one(fx.wrap32(scaled[0] + sign * scaled[1]), q, shift) + _zp(out)
    return [np.clip(raw, lo, hi)]


def add(node: _Node) -> list[np.ndarray]:
    if node.t(0).type == S.TensorType.INT32:  # plain int32 addition (an index computation), wrapping
        return [fx.wrap32(fx.i64(node.x(0)) + fx.i64(node.x(1))).astype(np.int32)]
    return _add_sub(node, 1)


def mirror_pad(node: _Node) -> list[np.ndarray]:
    """MIRROR_PAD: REFLECT (edge not repeated) or SYMMETRIC (edge repeated), on raw values."""
    widths = [(int(b), int(a)) for b, a in np.asarray(node.x(1)).reshape(-1, 2)]
    mode = "reflect" if node.opts is None or node.opts.mode == S.MirrorPadMode.REFLECT else "symmetric"
    return [np.pad(node.x(0), widths, mode=mode)]


def cast(node: _Node) -> list[np.ndarray]:
    """CAST between integer types: the value, in the output's type."""
    return [node.x(0).astype(_dtype(node.out()))]


def sub(node: _Node) -> list[np.ndarray]:
    return _add_sub(node, -1)


def mul(node: _Node) -> list[np.ndarray]:
    """Quantized MUL: MultiplyByQuantizedMultiplier((a - zp_a)(b - zp_b), s_a * s_b / s_out in float32) + zp_out
    (int16: zero points 0); int16 x int16 -> int8 is the scale-free Q0.15 product of ``tflite_reference16``."""
    a, b = fx.i64(node.x(0)) - _zp(node.t(0)), fx.i64(node.x(1)) - _zp(node.t(1))
    q, shift = fx.quantize_multiplier(np.float64(_scale(node.t(0)) * _scale(node.t(1)) / _scale(node.out())))
    lo, hi = _act_range(node, node.opts.fusedActivationFunction if node.opts is not None else _ACT.NONE)
    if _is16(node) and node.out().type != _TT.INT16:
        if node.out().type != _TT.INT8:
            raise node.fail("int16 inputs with an output other than int16 / int8")
        return [r16.mul_to_int8(node.x(0), node.x(1), _zp(node.out()), lo, hi)]
    if _is16(node):
        _check_zero_points16(node, 0, 1)
    return [_requant(a * b, q, shift, _zp(node.out()), lo, hi)]


def maximum(node: _Node) -> list[np.ndarray]:
    """MAXIMUM on the raw int8 values (no requantization)."""
    return [np.maximum(node.x(0), node.x(1))]


def minimum(node: _Node) -> list[np.ndarray]:
    """MINIMUM on the raw int8 values (no requantization)."""
    return [np.minimum(node.x(0), node.x(1))]


def _pool_geometry(node: _Node, x: np.ndarray) -> tuple[Pair, Pair, Pair, Pair, Pair]:
    o = node.opts
    oh, ph = _out_and_pad(o.padding, x.shape[1], o.filterHeight, o.strideH)
    ow, pw = _out_and_pad(o.padding, x.shape[2], o.filterWidth, o.strideW)
    return (o.filterHeight, o.filterWidth), (o.strideH, o.strideW), (1, 1), (oh, ow), (ph, pw)


def max_pool_2d(node: _Node) -> list[np.ndarray]:
    """MaxPool int8: max of the raw values inside the image, clamped to the fused activation range."""
    x = node.x(0)
    m = _windows(fx.i64(x), *_pool_geometry(node, x), fill=_qrange(node.t(0))[0]).max(axis=3)
    lo, hi = _act_range(node, node.opts.fusedActivationFunction)
    return [np.clip(m, lo, hi)]


def average_pool_2d(node: _Node) -> list[np.ndarray]:
    """AveragePool int8: sum of the raw values inside the image divided by their count, rounding half away from zero
    ((sum +- count/2) / count truncated), clamped to the fused activation range."""
    x = node.x(0)
    geo = _pool_geometry(node, x)
    total = _windows(fx.i64(x), *geo, fill=0).sum(axis=3)
    count = _windows(np.ones_like(fx.i64(x)), *geo, fill=0).sum(axis=3)
    avg = fx.c_div(np.where(total > 0, total + count // 2, total - count // 2), count)
    lo, hi = _act_range(node, node.opts.fusedActivationFunction)
    return [np.clip(avg, lo, hi)]


def _axes(node: _Node, i: int, rank: int) -> list[int]:
    return sorted({int(a) % rank for a in np.ravel(node.x(i))})


def mean(node: _Node) -> list[np.ndarray]:
    """QuantizedMeanOrSum (mean): QuantizeMultiplier(s_in / s_out) is divided by the element count n as
    (q << k) / n with k = min(floor(log2 n), 32, 31 + shift), the shift lowered by k; the int32 sum minus zp_in * n is
    requantized with it."""
    x = node.x(0)
    axes = _axes(node, 1, x.ndim)
    n = int(np.prod([x.shape[a] for a in axes]))
    total = fx.wrap32(fx.i64(x).sum(axis=tuple(axes), keepdims=bool(node.opts.keepDims)))
    q, shift = (int(v) for v in fx.quantize_multiplier(np.float64(_scale(node.t(0))) / np.float64(_scale(node.out()))))
    k = min(n.bit_length() - 1, 32, 31 + shift)
    q, shift = int(fx.wrap32((q << k) // n)), shift - k
    if _is16(node):
        _check_zero_points16(node, 0)
    return [np.clip(fx.mbqm(fx.wrap32(total - _zp(node.t(0)) * n), q, shift) + _zp(node.out()), *_qrange(node.out()))]


def reshape(node: _Node) -> list[np.ndarray]:
    """RESHAPE / SQUEEZE / EXPAND_DIMS: the shape input (RESHAPE), else new_shape, else the output tensor's shape."""
    shape = None
    if node.name == "RESHAPE":
        s = node.opt(1)
        if s is not None and s.ndim == 1:
            shape = [int(v) for v in s]
        elif node.opts is not None and node.opts.newShape is not None and len(node.opts.newShape):
            shape = [int(v) for v in node.opts.newShape]
    if shape is None:
        shape = [int(v) for v in node.out().shape]
    return [node.x(0).reshape(shape)]


def concatenation(node: _Node) -> list[np.ndarray]:
    """CONCATENATION of raw values: int8 requires every input's scale and zero point to equal the output's, int16
    only zero points 0 (other scales are copied unconverted)."""
    out = node.out()
    n = len(node.op.inputs)
    if _is16(node):
        _check_zero_points16(node, *range(n))
    for i in range(n if out.type == _TT.INT8 else 0):
        if _scale(node.t(i)) != _scale(out) or _zp(node.t(i)) != _zp(out):
            raise ValueError(
                "CONCATENATION int8: LiteRT requires the inputs' scales and zero points to be the output's"
            )
    if node.opts.fusedActivationFunction != _ACT.NONE:
        raise node.fail("a fused activation")
    return [np.concatenate([node.x(i) for i in range(n)], axis=node.opts.axis)]


def pad(node: _Node) -> list[np.ndarray]:
    """PAD / PADV2: constant padding with the output zero point (PAD) or the constant_values input (PADV2)."""
    widths = np.asarray(node.x(1), np.int64).reshape(-1, 2)
    c = node.opt(2)
    value = _zp(node.out()) if node.name == "PAD" or c is None else c.ravel()[0]
    return [np.pad(node.x(0), [tuple(int(v) for v in p) for p in widths], constant_values=value)]


def transpose(node: _Node) -> list[np.ndarray]:
    return [np.transpose(node.x(0), [int(p) for p in node.x(1)])]


def strided_slice(node: _Node) -> list[np.ndarray]:
    """STRIDED_SLICE with begin/end/shrink masks: StartForAxis/StopForAxis (negative indices wrap once, then clamp
    to [0, dim] for positive strides, [-1, dim - 1] for negative ones)."""
    x, o = node.x(0), node.opts
    if o.ellipsisMask or o.newAxisMask or getattr(o, "offset", False):
        raise node.fail("ellipsis_mask, new_axis_mask or offset")
    begin, end, strides = (np.ravel(node.x(i)).astype(np.int64) for i in (1, 2, 3))
    big = 1 << 31  # the masks stand for INT_MIN / INT_MAX, which wrap-adding dim leaves out of range
    index, keep = [], []
    for ax, dim in enumerate(x.shape):
        st = int(strides[ax])
        lo_c, hi_c = (0, dim) if st > 0 else (-1, dim - 1)
        start = (-big if st > 0 else big) if o.beginMask >> ax & 1 else int(begin[ax])
        start = min(max(start + dim if start < 0 else start, lo_c), hi_c)
        if o.shrinkAxisMask >> ax & 1:
            if st < 0:
                raise ValueError("STRIDED_SLICE: LiteRT writes nothing for a shrunk axis with a negative stride")
            stop = start + 1
        else:
            stop = (big if st > 0 else -big) if o.endMask >> ax & 1 else int(end[ax])
            stop = min(max(stop + dim if stop < 0 else stop, lo_c), hi_c)
        index.append(np.arange(start, stop, st, dtype=np.int64))
        keep.append(not o.shrinkAxisMask >> ax & 1)
    y = x[np.ix_(*index)]
    return [y.reshape([s for s, k in zip(y.shape, keep, strict=True) if k])]


def slice_(node: _Node) -> list[np.ndarray]:
    """SLICE: begin and size per axis, size -1 meaning to the end."""
    x = node.x(0)
    begin, size = np.ravel(node.x(1)), np.ravel(node.x(2))
    index = tuple(
        slice(int(b), d if int(s) == -1 else int(b) + int(s)) for b, s, d in zip(begin, size, x.shape, strict=True)
    )
    return [x[index]]


def split(node: _Node) -> list[np.ndarray]:
    """SPLIT: inputs (axis, value), num_splits equal parts."""
    x = node.x(1)
    return list(np.split(x, node.opts.numSplits, axis=int(np.ravel(node.x(0))[0]) % x.ndim))


def split_v(node: _Node) -> list[np.ndarray]:
    """SPLIT_V: inputs (value, size_splits, axis); pieces of the given sizes."""
    x = node.x(0)
    sizes = np.ravel(node.x(1)).astype(np.int64)
    return list(np.split(x, np.cumsum(sizes)[:-1], axis=int(np.ravel(node.x(2))[0]) % x.ndim))


def gather(node: _Node) -> list[np.ndarray]:
    """GATHER along `axis` (batch_dims 0)."""
    if node.opts is not None and node.opts.batchDims:
        raise node.fail("batch_dims")
    x = node.x(0)
    axis = (node.opts.axis if node.opts is not None else 0) % x.ndim
    return [np.take(x, fx.i64(node.x(1)), axis=axis)]


def resize_nearest_neighbor(node: _Node) -> list[np.ndarray]:
    """GetNearestNeighbor in float32: in = min(round or floor((out + offset) * scale), in - 1), offset 0.5 with
    half_pixel_centers, scale = (in - 1)/(out - 1) with align_corners else in/out."""
    x, (oh, ow) = node.x(0), (int(v) for v in node.x(1))
    ac, hp = node.opts.alignCorners, node.opts.halfPixelCenters

    def index(n_out: int, n_in: int) -> fx.Ints:
        scale = f32(n_in - 1) / f32(n_out - 1) if ac and n_out > 1 else f32(n_in) / f32(n_out)
        v = (np.arange(n_out).astype(f32) + f32(0.5 if hp else 0.0)) * scale
        i = fx.round_half_away(v) if ac else np.floor(v)
        i = np.minimum(i.astype(np.int64), n_in - 1)
        return fx.i64(np.maximum(i, 0) if hp else i)

    return [x[:, index(oh, x.shape[1])][:, :, index(ow, x.shape[2])]]


def _bilinear_axis(n_out: int, n_in: int, ac: bool, hp: bool) -> tuple[fx.Ints, fx.Ints, fx.Ints]:
    """ComputeInterpolationValuesInteger: position in 1/1024 units, lower and upper source indices."""
    if ac and n_out > 1:
        scale = ((1 << 10) * (n_in - 1) + (n_out - 1) // 2) // (n_out - 1)
    else:
        scale = ((1 << 10) * n_in + n_out // 2) // n_out
    v = np.arange(n_out, dtype=np.int64) * scale + ((scale // 2 - (1 << 9)) if hp else 0)
    return v, np.maximum(fx.c_div(v, 1 << 10), 0), np.minimum(fx.c_div(v + (1 << 10) - 1, 1 << 10), n_in - 1)


def resize_bilinear(node: _Node) -> list[np.ndarray]:
    """ResizeBilinearInteger: the four neighbours weighted in 1/1024 units each way, the 2^20-scaled sum divided
    by 2^20 rounding half away from zero (C division after adding +-2^19)."""
    x, (oh, ow) = fx.i64(node.x(0)), (int(v) for v in node.x(1))
    ac, hp = node.opts.alignCorners, node.opts.halfPixelCenters
    yv, y0, y1 = _bilinear_axis(oh, x.shape[1], ac, hp)
    xv, x0, x1 = _bilinear_axis(ow, x.shape[2], ac, hp)
    dy = (yv - (y0 << 10))[None, :, None, None]
    dx = (xv - (x0 << 10))[None, None, :, None]
    rows0, rows1 = x[:, y0], x[:, y1]
    total = (
        rows0[:, :, x0] * ((1 << 10) - dy) * ((1 << 10) - dx)
        + rows1[:, :, x0] * dy * ((1 << 10) - dx)
        + rows0[:, :, x1] * ((1 << 10) - dy) * dx
        + rows1[:, :, x1] * dy * dx
    )
    return [fx.c_div(total + np.where(total > 0, 1 << 19, -(1 << 19)), 1 << 20)]


def _lut(node: _Node, fn: Callable[[np.ndarray], np.ndarray]) -> list[np.ndarray]:
    """LUTPopulate<int8>: out = clamp((int)(round(f(s_in * (q - zp_in)) / s_out) + zp_out)), all in float32."""
    t, out = node.t(0), node.out()
    q = np.arange(-128, 128)
    real = fn((_scale(t) * (q - _zp(t)).astype(f32)).astype(f32))
    rescaled = fx.round_half_away(real.astype(f32) * (f32(1) / _scale(out))).astype(f32)
    table = np.clip(fx.float_to_int32(rescaled + f32(_zp(out))), -128, 127).astype(np.int8)
    return [table[fx.i64(node.x(0)) + 128]]


def logistic(node: _Node) -> list[np.ndarray]:
    """LOGISTIC int8 (kReference uses the 256-entry LUT of 1.0f / (1.0f + expf(-x))); needs s_out = 1/256.
    int16: ``tflite_reference16.logistic``."""
    if _is16(node):
        _check_zero_points16(node, 0)
        return [r16.logistic(node.x(0), _scale(node.t(0)), _scale(node.out()))]
    if _scale(node.out()) != f32(1 / 256):
        raise ValueError("LOGISTIC int8 needs an output scale of 1/256")
    return _lut(node, lambda v: f32(1) / (f32(1) + np.exp(-v.astype(np.float64)).astype(f32)))


def tanh(node: _Node) -> list[np.ndarray]:
    """TANH int8 (kReference uses the 256-entry LUT of tanhf); int16: ``tflite_reference16.tanh``."""
    if _is16(node):
        _check_zero_points16(node, 0)
        return [r16.tanh(node.x(0), _scale(node.t(0)), _scale(node.out()))]
    return _lut(node, lambda v: np.tanh(v.astype(np.float64)).astype(f32))


def softmax(node: _Node) -> list[np.ndarray]:
    """Softmax int8 (reference_ops::Softmax): diffs to the row max >= diff_min are scaled to Q5.26 by the beta
    multiplier, exp'd by gemmlowp, summed in Q12.19; each exp times the Q0.31 reciprocal of the sum is shifted by
    num_bits_over_unit + 23 and offset by -128 (int16 output: + 15, offset -32768, no check of its scale).
    int16 -> int16: ``tflite_reference16.softmax``, output scale 1/32768 (+-0.1%), zero points 0."""
    out = node.out()
    if _is16(node):
        _check_zero_points16(node, 0)
        if out.type != _TT.INT16 or abs(_scale(out) - f32(1 / 32768)) > f32(0.001 / 32768):
            raise ValueError("SOFTMAX int16 needs an int16 output of scale 1/32768")
        return [r16.softmax(node.x(0), _scale(node.t(0)), f32(node.opts.beta))]
    bits = 16 if out.type == _TT.INT16 else 8
    if bits == 8 and (_zp(out) != -128 or abs(_scale(out) - f32(1 / 256)) > f32(0.001 / 256)):
        raise ValueError("SOFTMAX int8 needs output zero point -128 and scale 1/256")
    beta = f32(node.opts.beta)
    if float(beta) * float(_scale(node.t(0))) * 2.0**26 <= 1.0:
        raise ValueError("SOFTMAX int8 needs beta * s_in * 2^26 > 1 (LiteRT aborts: QuantizeMultiplierGreaterThanOne)")
    q, shift = fx.preprocess_softmax_scaling(float(beta), float(_scale(node.t(0))), 5)
    diff_min = -fx.calculate_input_radius(5, shift)
    x = fx.i64(node.x(0))
    diff = x - x.max(axis=-1, keepdims=True)
    live = diff >= diff_min
    e = fx.exp_on_negative_values(fx.mbqm_greater_than_one(np.where(live, diff, 0), q, shift), 5)
    total = np.where(live, fx.rdbpot(e, 12), 0).sum(axis=-1, keepdims=True)
    recip, bits_over_unit = fx.get_reciprocal(total, 12)
    if np.any(bits_over_unit > bits):
        raise ValueError("SOFTMAX int8: a row's sum of exps is too large, LiteRT aborts (exponent > 31)")
    lo, hi = _qrange(out)
    y = fx.rdbpot(fx.srdhm(recip, e), bits_over_unit + 31 - bits) + lo
    return [np.where(live, np.clip(y, lo, hi), lo)]


def hard_swish(node: _Node) -> list[np.ndarray]:
    """reference_ops::HardSwish int8: x on a 2^7 finer scale, times the int16 "relu-ish" factor
    (x + 3) / 6 in [0, 1] (saturating shifts, SRDHM), times the output multiplier (truncating doubling high-mul),
    shifted to the output scale."""
    t, out = node.t(0), node.out()
    if _is16(node):
        raise ValueError("HARD_SWISH: LiteRT has no int16 kernel")
    hires = f32(1.0 / 128.0) * _scale(t)
    out_q, out_exp = (int(v) for v in fx.quantize_multiplier(np.float64(hires / _scale(out))))
    rel_q, rel_exp = (int(v) for v in fx.quantize_multiplier(np.float64(hires / f32(3.0 / 32768.0))))
    if out_exp > 0:
        raise ValueError("HARD_SWISH int8 needs s_in / (128 s_out) < 1")
    out_q16, rel_q16 = fx.downscale_multiplier_to_int16(out_q), fx.downscale_multiplier_to_int16(rel_q)
    v = fx.wrap16(fx.wrap16(fx.i64(node.x(0)) - _zp(t)) * 128)
    pre_out = fx.srdhm16(v, out_q16)
    r = fx.sat_left_shift16(v, rel_exp - 1) if rel_exp > 0 else v
    r = fx.srdhm16(r, rel_q16)
    r = fx.sat_left_shift16(r, 1) if rel_exp > 0 else (fx.rdbpot(r, -rel_exp) if rel_exp < 0 else r)
    r = (r + (1 << 15)) >> 1
    y = fx.wrap16(fx.rdbpot(fx.sdhm16(r, pre_out), -out_exp) + _zp(out))
    return [np.clip(y, -128, 127).astype(np.int8)]


def leaky_relu(node: _Node) -> list[np.ndarray]:
    """QuantizeLeakyRelu: x - zp_in >= 0 uses the identity multiplier s_in / s_out, else s_in * alpha / s_out
    (both in float32); + zp_out, clamped."""
    t, out = node.t(0), node.out()
    v = fx.i64(node.x(0)) - _zp(t)
    qa, sa = fx.quantize_multiplier(np.float64(_scale(t) * f32(node.opts.alpha) / _scale(out)))
    qi, si = fx.quantize_multiplier(np.float64(_scale(t) / _scale(out)))
    if _is16(node):
        _check_zero_points16(node, 0)
    y = np.where(v >= 0, fx.mbqm(v, qi, si), fx.mbqm(v, qa, sa)) + _zp(out)
    return [np.clip(y, *_qrange(out))]


def prelu(node: _Node) -> list[np.ndarray]:
    """Prelu int8: x - zp_in >= 0 -> MBQM(v, s_in / s_out); else MBQM(v * (alpha - zp_a), s_in * s_a / s_out);
    multipliers in float32, alpha broadcast."""
    t, ta, out = node.t(0), node.t(1), node.out()
    v = fx.i64(node.x(0)) - _zp(t)
    a = fx.i64(node.x(1)) - _zp(ta)
    q1, s1 = fx.quantize_multiplier(np.float64(_scale(t) / _scale(out)))
    q2, s2 = fx.quantize_multiplier(np.float64(_scale(t) * _scale(ta) / _scale(out)))
    y = np.where(v >= 0, fx.mbqm(v, q1, s1), fx.mbqm(fx.wrap32(v * a), q2, s2)) + _zp(out)
    return [np.clip(y, *_qrange(out))]


_RELU_BOUNDS = {"RELU": (0.0, None), "RELU6": (0.0, 6.0), "RELU_N1_TO_1": (-1.0, 1.0), "RELU_0_TO_1": (0.0, 1.0)}


def relu(node: _Node) -> list[np.ndarray]:
    """QuantizedReluX: zp_out + MBQM(x - zp_in, s_in / s_out) clamped to zp_out + roundf(bound / s_out)."""
    t, out = node.t(0), node.out()
    lo_f, hi_f = _RELU_BOUNDS[node.name]
    if _is16(node) and node.name not in ("RELU", "RELU6"):
        raise ValueError(f"{node.name}: LiteRT has no int16 kernel")
    if _is16(node):
        _check_zero_points16(node, 0)
    s_out, zp_out = _scale(out), _zp(out)
    qmin, qmax = _qrange(out)
    lo = max(qmin, zp_out + int(fx.round_half_away(f32(lo_f) / s_out)))
    hi = qmax if hi_f is None else min(qmax, zp_out + int(fx.round_half_away(f32(hi_f) / s_out)))
    q, shift = fx.quantize_multiplier(np.float64(_scale(t) / s_out))
    return [np.clip(zp_out + fx.mbqm(fx.i64(node.x(0)) - _zp(t), q, shift), lo, hi)]


def quantize(node: _Node) -> list[np.ndarray]:
    """QUANTIZE: float32 -> int8/int16 as (int32)round(x / scale) + zp (float32 division); int8/int16 ->
    int8/int16 as Requantize with QuantizeMultiplier(double(s_in) / double(s_out)) (int16 -> int16: zero points 0)."""
    t, out, x = node.t(0), node.out(), node.x(0)
    if out.type not in (_TT.INT8, _TT.INT16) or _scales(out).size > 1:
        raise node.fail("output other than per-tensor int8 / int16")
    lo, hi = _qrange(out)
    if t.type == _TT.FLOAT32:
        v = fx.wrap32(fx.float_to_int32(fx.round_half_away(x.astype(f32) / _scale(out))) + _zp(out))
        return [np.clip(v, lo, hi)]
    if t.type not in (_TT.INT8, _TT.INT16):
        raise node.fail(f"input type {t.type}")
    if t.type == out.type == _TT.INT16:
        _check_zero_points16(node, 0)
    q, shift = fx.quantize_multiplier(np.float64(_scale(t)) / np.float64(_scale(out)))
    return [_requant(fx.i64(x) - _zp(t), q, shift, _zp(out), lo, hi)]


def dequantize(node: _Node) -> list[np.ndarray]:
    """DEQUANTIZE int8/int16 -> float32: float(double(scale) * (q - zp)); per channel float(scale[c] * (q - zp[c]))."""
    t, x = node.t(0), node.x(0)
    if t.type not in (_TT.INT8, _TT.INT16):
        raise node.fail(f"input type {t.type}")
    if t.type == _TT.INT16 and _zp(t) != 0:
        raise ValueError("DEQUANTIZE int16: LiteRT requires zero point 0")
    scales = _scales(t)
    if scales.size == 1:
        return [(np.float64(scales[0]) * (fx.i64(x) - _zp(t))).astype(f32)]
    axis = t.quantization.quantizedDimension
    shape = [1] * x.ndim
    shape[axis] = -1
    zps = _zps(t).reshape(shape)
    return [(scales.reshape(shape) * (fx.i64(x) - zps).astype(f32)).astype(f32)]


Kernel = Callable[[_Node], list[np.ndarray]]
_KERNEL_FUNCS: tuple[Kernel, ...] = (
    conv_2d,
    depthwise_conv_2d,
    fully_connected,
    transpose_conv,
    batch_matmul,
    add,
    sub,
    mul,
    maximum,
)
_KERNEL_FUNCS += (minimum, max_pool_2d, average_pool_2d, mean, reshape, concatenation, pad, transpose, strided_slice)
_KERNEL_FUNCS += (slice_, split, gather, resize_nearest_neighbor, resize_bilinear, logistic, tanh, softmax, hard_swish)
_KERNEL_FUNCS += (leaky_relu, prelu, relu, quantize, dequantize, split_v, cast, mirror_pad)
KERNELS: dict[str, Kernel] = {f.__name__.strip("_").upper(): f for f in _KERNEL_FUNCS}
KERNELS.update(SQUEEZE=reshape, EXPAND_DIMS=reshape, PADV2=pad, RELU6=relu, RELU_N1_TO_1=relu, RELU_0_TO_1=relu)
_FLOAT_OK = {"QUANTIZE", "DEQUANTIZE", "RESHAPE", "SQUEEZE", "EXPAND_DIMS"}


def _constant(model: S.ModelT, raw: bytes, t: S.TensorT) -> np.ndarray | None:
    """A tensor's buffer contents (inline data, or offset/size into the file), None when it has none."""
    buf = model.buffers[t.buffer] if model.buffers is not None and t.buffer < len(model.buffers) else None
    if buf is None:
        return None
    if buf.data is not None and len(buf.data):
        data = np.asarray(buf.data, dtype=np.uint8).tobytes()
    elif buf.offset > 1 and buf.size:
        data = raw[buf.offset : buf.offset + buf.size]
    else:
        return None
    shape = [] if t.shape is None else [int(v) for v in t.shape]
    return np.frombuffer(data, dtype=_dtype(t)).reshape(shape).copy()


def _dtype(t: S.TensorT) -> type:
    if t.type not in _DTYPES:
        raise NotImplementedError(f"tflite_reference: tensor {t.name!r} of type {t.type} is not modelled")
    return _DTYPES[t.type]


def run_reference(model: bytes, inputs: list[np.ndarray]) -> list[np.ndarray]:
    """Outputs of subgraph 0 for `inputs` (in the model's input order, already in the model's dtypes)."""
    m = S.ModelT.InitFromPackedBuf(bytearray(model), 0)
    sg = m.subgraphs[0]
    tensors = list(sg.tensors)
    values: dict[int, np.ndarray] = {}
    for i, t in enumerate(tensors):
        c = _constant(m, model, t)
        if c is not None:
            values[i] = c
    graph_inputs = [int(i) for i in sg.inputs]
    if len(inputs) != len(graph_inputs):
        raise ValueError(f"the model has {len(graph_inputs)} inputs, {len(inputs)} were given")
    for i, x in zip(graph_inputs, inputs, strict=True):
        values[i] = np.asarray(x, dtype=_dtype(tensors[i]))
    for op in sg.operators or []:
        code = m.operatorCodes[op.opcodeIndex]
        name = _OP_NAMES.get(max(code.builtinCode, code.deprecatedBuiltinCode), f"builtin code {code.builtinCode}")
        kernel = KERNELS.get(name)
        if kernel is None:
            raise NotImplementedError(f"tflite_reference: {name} is not modelled")
        node = _Node(name, op, tensors, values)
        if name not in _FLOAT_OK and any(tensors[int(k)].type == S.TensorType.FLOAT32 for k in op.inputs if k >= 0):
            raise node.fail("a float32 input")
        for k, y in zip(op.outputs, kernel(node), strict=True):
            values[int(k)] = np.asarray(y, dtype=_dtype(tensors[int(k)]))
    return [values[int(i)] for i in sg.outputs]
