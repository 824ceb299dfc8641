"""The int16 ("16x8") arithmetic of TensorFlow Lite's reference kernels that has no int8 counterpart, in numpy.

Pure functions of int16 arrays and float32 scales (``tflite_reference`` reads the tensors and calls them):
LOGISTIC / TANH (the 256-entry sigmoid table interpolated in fixed point), SOFTMAX (the 513-entry exp and 1/(1+x)
lookup tables), ADD / SUB on power-of-two scales, MUL int16 x int16 -> int8. Integer helpers are in
``tflite_fixedpoint``.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from tests.support import tflite_fixedpoint as fx

f32 = np.float32
I16_MIN, I16_MAX = -(1 << 15), (1 << 15) - 1

# sigmoid(i / 24) in 0.16 fixed point (65535 for the last entry): LiteRT's sigmoid_table_uint16 (kernels/internal/
# common.h), shared by int16 LOGISTIC and TANH (tanh(x) = 2 sigmoid(2x) - 1). Not reproducible from a formula.
# fmt: off
SIGMOID_TABLE = np.array([
    32768, 33451, 34133, 34813, 35493, 36169, 36843, 37513, 38180, 38841, 39498, 40149, 40794, 41432, 42064, 42688,
    43304, 43912, 44511, 45102, 45683, 46255, 46817, 47369, 47911, 48443, 48964, 49475, 49975, 50464, 50942, 51409,
    51865, 52311, 52745, 53169, 53581, 53983, 54374, 54755, 55125, 55485, 55834, 56174, 56503, 56823, 57133, 57433,
    57724, 58007, 58280, 58544, 58800, 59048, 59288, 59519, 59743, 59959, 60168, 60370, 60565, 60753, 60935, 61110,
    61279, 61441, 61599, 61750, 61896, 62036, 62172, 62302, 62428, 62549, 62666, 62778, 62886, 62990, 63090, 63186,
    63279, 63368, 63454, 63536, 63615, 63691, 63765, 63835, 63903, 63968, 64030, 64090, 64148, 64204, 64257, 64308,
    64357, 64405, 64450, 64494, 64536, 64576, 64614, 64652, 64687, 64721, 64754, 64786, 64816, 64845, 64873, 64900,
    64926, 64950, 64974, 64997, 65019, 65039, 65060, 65079, 65097, 65115, 65132, 65149, 65164, 65179, 65194, 65208,
    65221, 65234, 65246, 65258, 65269, 65280, 65291, 65301, 65310, 65319, 65328, 65337, 65345, 65352, 65360, 65367,
    65374, 65381, 65387, 65393, 65399, 65404, 65410, 65415, 65420, 65425, 65429, 65433, 65438, 65442, 65445, 65449,
    65453, 65456, 65459, 65462, 65465, 65468, 65471, 65474, 65476, 65479, 65481, 65483, 65485, 65488, 65489, 65491,
    65493, 65495, 65497, 65498, 65500, 65501, 65503, 65504, 65505, 65507, 65508, 65509, 65510, 65511, 65512, 65513,
    65514, 65515, 65516, 65517, 65517, 65518, 65519, 65520, 65520, 65521, 65522, 65522, 65523, 65523, 65524, 65524,
    65525, 65525, 65526, 65526, 65526, 65527, 65527, 65528, 65528, 65528, 65529, 65529, 65529, 65529, 65530, 65530,
    65530, 65530, 65531, 65531, 65531, 65531, 65531, 65532, 65532, 65532, 65532, 65532, 65532, 65533, 65533, 65533,
    65533, 65533, 65533, 65533, 65533, 65534, 65534, 65534, 65534, 65534, 65534, 65534, 65534, 65534, 65534, 65535,
], dtype=np.int64)
# fmt: on


def checked_log2(x: np.float32) -> tuple[bool, int]:
    """CheckedLog2 (float32): (whether log2(x) is within 1e-3 of an integer, that rounded integer)."""
    with np.errstate(all="ignore"):
        log2 = f32(np.log(f32(x))) * (f32(1.0) / f32(np.log(f32(2.0))))
    rounded = f32(fx.round_half_away(log2))
    return bool(abs(f32(log2 - rounded)) < f32(1e-3)), int(rounded)


def _sigmoid_prepare(s_in: np.float32, s_out: np.float32, pot_shifts: tuple[int, ...], name: str) -> tuple[int, int]:
    """SigmoidPrepare / TanhPrepare for int16: (input_multiplier, input_left_shift) with the kernel's power-of-two
    substitution applied; a power-of-two input scale with a shift in `pot_shifts` gives multiplier 3 << shift."""
    pot_out, log2_out = checked_log2(s_out)
    if not pot_out or log2_out != -15:
        raise ValueError(f"{name} int16 needs an output scale of 2^-15 (LiteRT checks log2 within 1e-3)")
    pot, log2 = checked_log2(s_in)
    left_shift = 12 + log2
    if pot and left_shift in pot_shifts:
        return 3 << left_shift, 0
    multiplier, left_shift = float(s_in) * 4096.0 * 3.0, 0
    while multiplier <= 32767.0 / 2.0 and left_shift <= 30:
        left_shift, multiplier = left_shift + 1, multiplier * 2.0
    return int(multiplier), left_shift


def _scaled_input(x: np.ndarray, multiplier: int, left_shift: int) -> fx.Ints:
    round_ = (1 << (left_shift - 1)) if left_shift > 0 else 0
    return fx.wrap32(fx.i64(x) * multiplier + round_) >> left_shift


def logistic(x: np.ndarray, s_in: np.float32, s_out: np.float32) -> fx.Ints:
    """reference_integer_ops::Logistic (int16): |x| rescaled to 1/(3 * 4096) units (x * multiplier >> shift) indexes
    the sigmoid table by its top bits (>> 9), the low 9 bits interpolate; the 0.16 result is mirrored for x < 0 and
    rounded to 0.15. Needs output scale exactly 2^-15."""
    if s_out != f32(1 / 32768):
        raise ValueError("LOGISTIC int16 needs an output scale of exactly 1/32768")
    v = _scaled_input(x, *_sigmoid_prepare(s_in, s_out, (0,), "LOGISTIC"))
    a = np.abs(v)
    uh = a >> 9
    ua, ub = SIGMOID_TABLE[np.minimum(uh, 254)], SIGMOID_TABLE[np.minimum(uh + 1, 255)]
    r = np.where(uh >= 255, 0x7FFF << 10, (ua << 9) + (a & 0x1FF) * (ub - ua))
    r = np.where(v >= 0, r + (1 << 9), (1 << 25) - r + (1 << 9) - 1) & 0xFFFFFFFF
    return fx.wrap16(r >> 10)


def tanh(x: np.ndarray, s_in: np.float32, s_out: np.float32) -> fx.Ints:
    """reference_integer_ops::Tanh (int16): as LOGISTIC with the table indexed by |x| >> 8 (tanh(x) = 2 sigmoid(2x)
    - 1), recentred by 2^23 and rounded to 0.15; power-of-two input scales 2^-12 and 2^-11 use multiplier 3 or 6."""
    v = _scaled_input(x, *_sigmoid_prepare(s_in, s_out, (0, 1), "TANH"))
    a = np.abs(v)
    uh = a >> 8
    ua, ub = SIGMOID_TABLE[np.minimum(uh, 254)], SIGMOID_TABLE[np.minimum(uh + 1, 255)]
    r = np.where(uh >= 255, 0xFFFF << 8, (ua << 8) + (a & 0xFF) * (ub - ua))
    r = np.where(v >= 0, r - (1 << 23) + (1 << 7), -r + (1 << 23) + (1 << 7) - 1)
    return fx.wrap16(r >> 8)


def lut_populate(fn: Callable[[np.ndarray], np.ndarray], s_in: float, zp_in: int, s_out: float, zp_out: int) -> fx.Ints:
    """LUTPopulateInt16<double>: 512 samples of fn over the int16 input range plus the end point, each sample lowered
    by half the error of linear interpolation at the midpoint, rounded half away from zero and clamped to int16."""
    in_min, in_max = s_in * (I16_MIN - zp_in), s_in * (I16_MAX - zp_in)
    out_min, out_max = s_out * (I16_MIN - zp_out), s_out * (I16_MAX - zp_out)
    step = (in_max - in_min) / 512
    inv = 65536.0 / (out_max - out_min)
    i = np.arange(512, dtype=np.float64)
    val, mid, nxt = fn(in_min + i * step), fn(in_min + i * step + step / 2), fn(in_min + (i + 1) * step)
    rnd = fx.round_half_away
    sample = rnd(val * inv)
    bias = rnd((rnd((nxt * inv + sample) / 2) - rnd(mid * inv)) / 2)
    last = np.clip(rnd(fn(np.array([in_max])) * inv), I16_MIN, I16_MAX)
    return np.concatenate([np.clip(sample - bias, I16_MIN, I16_MAX), last]).astype(np.int64)


def lut_lookup(x: fx.Ints, lut: fx.Ints) -> fx.Ints:
    """LUTLookup (int16): entry 256 + (x >> 7), plus the slope to the next entry times the low 7 bits, rounded."""
    x = fx.i64(x)
    index = 256 + (x >> 7)
    base = lut[index]
    return fx.wrap16(base + ((lut[index + 1] - base) * (x & 0x7F) + 64 >> 7))


_RANGE = 65535
EXP_LUT = lut_populate(np.exp, 10.0 / _RANGE, I16_MAX, 2.0 / _RANGE, 0)
ONE_OVER_ONE_PLUS_X_LUT = lut_populate(lambda v: 1.0 / (1.0 + v), 1.0 / _RANGE, I16_MIN, 2.0 / _RANGE, 0)


def softmax(x: np.ndarray, s_in: np.float32, beta: np.float32) -> fx.Ints:
    """reference_ops::SoftmaxInt16: the difference to the row max, scaled so that [-65535, 0] is [-10, 0]
    (QuantizeMultiplier(float(s_in * beta) / (10 / 65535))), recentred by +32767 and looked up in the exp table;
    the row sum normalised by its leading zeros to Q1.14 and recentred indexes the 1/(1+x) table; each exp times
    that reciprocal is shifted right by 31 - leading zeros (rounding) and clamped to [0, 32767]."""
    q, shift = fx.quantize_multiplier(np.float64(f32(s_in * beta)) / (10.0 / 65535.0))
    x = fx.i64(x)
    diff = fx.mbqm(x - x.max(axis=-1, keepdims=True), q, shift)
    e = lut_lookup(np.clip(diff + 32767, I16_MIN, I16_MAX), EXP_LUT)
    total = fx.wrap32(e.sum(axis=-1, keepdims=True))
    headroom_plus_one = fx.count_leading_zeros32(total)
    shifted = fx.wrap32(((total << (headroom_plus_one - 1)) + (1 << 13)) >> 14)
    recip = lut_lookup(np.clip(shifted - (1 << 15) - (1 << 16), I16_MIN, I16_MAX), ONE_OVER_ONE_PLUS_X_LUT)
    right = 31 - headroom_plus_one
    y = fx.wrap32((e * recip + np.left_shift(1, right - 1)) >> right)
    return np.clip(y, 0, I16_MAX)


def pot_shifts(s1: np.float32, s2: np.float32, s_out: np.float32) -> tuple[int, int] | None:
    """ADD / SUB int16 with pot_scale_int16: the input shifts log2(s_i) - log2(s_out) when all three scales are powers
    of two (CheckedLog2), else None (LiteRT then takes the general path)."""
    logs = [checked_log2(s) for s in (s1, s2, s_out)]
    if not all(pot for pot, _ in logs):
        return None
    sh1, sh2 = logs[0][1] - logs[2][1], logs[1][1] - logs[2][1]
    if (sh1 != 0 and sh2 != 0) or sh1 > 0 or sh2 > 0:
        raise ValueError(
            "ADD/SUB int16 on power-of-two scales: LiteRT needs one input scale equal to the output's and "
            "the other not larger"
        )
    return sh1, sh2


def add_sub_pot(a: np.ndarray, b: np.ndarray, shifts: tuple[int, int], sign: int, lo: int, hi: int) -> fx.Ints:
    """Add / Sub16 (int16, power-of-two scales): the finer input rounding-divided by 2^-shift, then a saturating
    int16 sum or difference, clamped to the fused activation range."""
    a = fx.rdbpot(fx.i64(a), -shifts[0])
    b = fx.rdbpot(fx.i64(b), -shifts[1])
    return np.clip(np.clip(a + sign * b, I16_MIN, I16_MAX), lo, hi)


def mul_to_int8(a: np.ndarray, b: np.ndarray, zp_out: int, lo: int, hi: int) -> fx.Ints:
    """reference_integer_ops::Mul int16 x int16 -> int8: the Q0.15 product (SRDHM) divided by 2^8 (rounding),
    clamped to [lo - zp, hi - zp] and offset by zp; the tensors' scales are not used."""
    r = fx.rdbpot(fx.srdhm16(a, b), 8)
    return np.clip(r, lo - zp_out, hi - zp_out) + zp_out
