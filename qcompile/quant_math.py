"""Scale and zero-point arithmetic shared by every pass and target.

For an integer type with range [qmin, qmax] and a real range [lo, hi] that
contains 0 (widened to contain it when it does not):

    asymmetric:  scale = (hi - lo) / (qmax - qmin),  zp = round(qmin - lo / scale)
    symmetric:   scale = max(|lo|, |hi|) / ((qmax - qmin) / 2),  zp = (qmin + qmax + 1) // 2

    quantize(x)   = clip(round_half_even(x / scale) + zp, qmin, qmax)
    dequantize(q) = (q - zp) * scale

which is exactly ONNX QuantizeLinear / DequantizeLinear.  A zero range gets
scale 1.0 so that constants survive quantization exactly.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = [
    "IntRange",
    "INT_RANGES",
    "int_range",
    "scale_zero_point",
    "quantize",
    "dequantize",
    "sqnr_db",
]


@dataclass(frozen=True)
class IntRange:
    """The representable integers of a quantized dtype (after any range reduction)."""

    qmin: int
    qmax: int
    numpy_dtype: type

    @property
    def levels(self) -> int:
        return self.qmax - self.qmin


INT_RANGES: dict[str, IntRange] = {
    "int8": IntRange(-128, 127, np.int8),
    "uint8": IntRange(0, 255, np.uint8),
    "int16": IntRange(-32768, 32767, np.int16),
    "uint16": IntRange(0, 65535, np.uint16),
    "int4": IntRange(-8, 7, np.int8),
    "uint4": IntRange(0, 15, np.uint8),
    "int32": IntRange(-(2**31), 2**31 - 1, np.int32),
}


def int_range(dtype: str, *, symmetric: bool = False, reduce_range: bool = False) -> IntRange:
    """The integer range used for `dtype`.

    Symmetric signed ranges drop the most negative value (int8: [-127, 127]) so
    that zero sits exactly in the middle. `reduce_range` drops one more bit
    (int8: [-64, 63], symmetric [-63, 63]), which keeps ORT's u8s8 kernels on
    CPUs without VNNI from saturating their int16 accumulators.
    """
    if dtype not in INT_RANGES:
        raise ValueError(f"{dtype!r} is not an integer quantization dtype; known: {', '.join(INT_RANGES)}")
    base = INT_RANGES[dtype]
    qmin, qmax = base.qmin, base.qmax
    if reduce_range:
        qmin, qmax = (qmin // 2, qmax // 2) if qmin < 0 else (0, qmax // 2)
    if symmetric and qmin < 0:
        qmin = -qmax
    return IntRange(qmin, qmax, base.numpy_dtype)


def scale_zero_point(
    lo: np.ndarray | float, hi: np.ndarray | float, qrange: IntRange, *, symmetric: bool
) -> tuple[np.ndarray, np.ndarray]:
    """Scale (float32) and zero point (the range's dtype) for real range [lo, hi].

    Works elementwise, so per-channel ranges give per-channel parameters.
    """
    lo = np.minimum(np.asarray(lo, dtype=np.float64), 0.0)
    hi = np.maximum(np.asarray(hi, dtype=np.float64), 0.0)
    if symmetric:
        absmax = np.maximum(-lo, hi)
        scale = absmax / (qrange.levels / 2.0)
        zp = np.full(scale.shape, (qrange.qmin + qrange.qmax + 1) // 2, dtype=np.int64)
    else:
        scale = (hi - lo) / qrange.levels
        safe = np.where(scale > 0, scale, 1.0)
        zp = np.clip(np.round(qrange.qmin - lo / safe), qrange.qmin, qrange.qmax).astype(np.int64)
    # a zero range gets scale 1; a range too small for float32 gets its smallest normal
    scale = np.where(scale > 0, np.maximum(scale, np.finfo(np.float32).tiny), 1.0).astype(np.float32)
    return scale, zp.astype(qrange.numpy_dtype)


def _broadcast(param: np.ndarray, ndim: int, axis: int | None) -> np.ndarray:
    param = np.asarray(param)
    if param.ndim == 0 or axis is None:
        return param
    shape = [1] * ndim
    shape[axis] = -1
    return param.reshape(shape)


def quantize(
    x: np.ndarray, scale: np.ndarray, zero_point: np.ndarray, qrange: IntRange, axis: int | None = None
) -> np.ndarray:
    """ONNX QuantizeLinear in numpy: saturate(rint(x / scale) + zero_point), x / scale in
    float32 as the operator computes it, round half to even.  One float32 temporary the
    size of `x`, updated in place (weights can be gigabytes)."""
    s = _broadcast(scale, x.ndim, axis).astype(np.float32)
    z = _broadcast(zero_point, x.ndim, axis).astype(np.float32)
    q = np.asarray(np.divide(x, s, dtype=np.float32))  # 0-d stays an array, so `out=` works
    np.rint(q, out=q)
    q += z
    np.clip(q, qrange.qmin, qrange.qmax, out=q)
    return q.astype(qrange.numpy_dtype)


def dequantize(q: np.ndarray, scale: np.ndarray, zero_point: np.ndarray, axis: int | None = None) -> np.ndarray:
    """ONNX DequantizeLinear in numpy, as ONNX Runtime computes it: float32(q − z) · s in float32
    (for an int32 bias beyond 2^24 the float32 conversion rounds, as it does there)."""
    s = _broadcast(scale, q.ndim, axis).astype(np.float32)
    z = _broadcast(zero_point, q.ndim, axis).astype(np.int64)
    return (q.astype(np.int64) - z).astype(np.float32) * s


def sqnr_db(reference: np.ndarray, approx: np.ndarray) -> float:
    """Signal-to-quantization-noise ratio 10·log10(Σref² / Σ(ref-approx)²), in dB."""
    ref = np.asarray(reference, dtype=np.float64).ravel()
    err = ref - np.asarray(approx, dtype=np.float64).ravel()
    noise = float(np.dot(err, err))
    signal = float(np.dot(ref, ref))
    if noise == 0.0:
        return float("inf")
    if signal == 0.0:
        return float("-inf")
    return 10.0 * np.log10(signal / noise)
