"""Integer helpers of TensorFlow Lite's reference kernels, in numpy.

Every function takes and returns int64 arrays holding C ``int32_t`` values and reproduces the C results bit for
bit: truncating division where C divides, arithmetic right shifts where C shifts, two's-complement wrap where an
int32 product or shift overflows. The rounding helpers are the double-rounding ones (``TFLITE_SINGLE_ROUNDING``
off, as in the LiteRT wheels); the fixed-point transcendental functions are gemmlowp's ``fixedpoint.h``.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

I32_MIN = -(1 << 31)
I32_MAX = (1 << 31) - 1
Ints = npt.NDArray[np.int64]
ArrayLike = npt.ArrayLike


def i64(x: ArrayLike) -> Ints:
    """``x`` as an int64 array."""
    return np.asarray(x, dtype=np.int64)


def wrap32(x: ArrayLike) -> Ints:
    """Two's-complement wrap of an integer to int32: ((x + 2^31) mod 2^32) - 2^31."""
    return ((i64(x) + (1 << 31)) & 0xFFFFFFFF) - (1 << 31)


def c_div(a: ArrayLike, b: ArrayLike) -> Ints:
    """C integer division a / b: the quotient truncated toward zero."""
    a, b = i64(a), i64(b)
    q = np.abs(a) // np.abs(b)
    return np.where((a < 0) != (b < 0), -q, q)


def round_half_away(x: ArrayLike) -> npt.NDArray[np.float64]:
    """std::round (TfLiteRound): nearest integer, halves away from zero; exact for float32 and float64 input."""
    x = np.asarray(x, dtype=np.float64)
    t = np.trunc(x)
    with np.errstate(invalid="ignore"):
        return t + np.sign(x) * (np.abs(x - t) >= 0.5)


def float_to_int32(x: ArrayLike) -> Ints:
    """static_cast<int32_t>(float) as x86 does it: truncation, and INT32_MIN for NaN or out-of-range values."""
    x = np.asarray(x, dtype=np.float64)
    bad = ~np.isfinite(x) | (x >= 2.0**31) | (x < -(2.0**31))
    return np.where(bad, I32_MIN, np.trunc(np.where(bad, 0.0, x))).astype(np.int64)


def quantize_multiplier(m: ArrayLike) -> tuple[Ints, Ints]:
    """QuantizeMultiplier: m = q * 2^(shift - 31) with q = round(frexp mantissa * 2^31) in [2^30, 2^31).

    A mantissa rounding up to 2^31 is halved (shift + 1); shifts below -31 flush to q = shift = 0; m = 0 gives 0, 0.
    """
    mant, exp = np.frexp(np.asarray(m, dtype=np.float64))
    q = round_half_away(mant * 2.0**31).astype(np.int64)
    shift = exp.astype(np.int64)
    top = q == (1 << 31)
    q, shift = np.where(top, q // 2, q), np.where(top, shift + 1, shift)
    tiny = shift < -31
    return np.where(tiny, 0, q), np.where(tiny, 0, shift)


def srdhm(a: ArrayLike, b: ArrayLike) -> Ints:
    """SaturatingRoundingDoublingHighMul (int32): (a*b + nudge) / 2^31 truncated, nudge = 2^30 or 1 - 2^30 by sign.

    The one overflow, a = b = INT32_MIN, saturates to INT32_MAX.
    """
    a, b = i64(a), i64(b)
    ab = a * b
    t = ab + np.where(ab >= 0, 1 << 30, 1 - (1 << 30))
    high = np.where(t >= 0, t >> 31, -((-t) >> 31))
    return np.where((a == I32_MIN) & (b == I32_MIN), I32_MAX, high)


def rdbpot(x: ArrayLike, exponent: ArrayLike) -> Ints:
    """RoundingDivideByPOT: x / 2^exponent rounded to nearest, halves away from zero."""
    x, e = i64(x), i64(exponent)
    mask = np.left_shift(1, e) - 1
    threshold = (mask >> 1) + (x < 0)
    return (x >> e) + ((x & mask) > threshold)


def mbqm(x: ArrayLike, q: ArrayLike, shift: ArrayLike) -> Ints:
    """MultiplyByQuantizedMultiplier: RDBPOT(SRDHM(x * 2^max(shift, 0), q), max(-shift, 0)), x*2^l wrapping to int32."""
    shift = i64(shift)
    left = np.maximum(shift, 0)
    return rdbpot(srdhm(wrap32(i64(x) * np.left_shift(1, left)), q), np.maximum(-shift, 0))


def mbqm64(x: ArrayLike, q: ArrayLike, shift: ArrayLike) -> Ints:
    """MultiplyByQuantizedMultiplier for an int64 accumulator (16x8 kernels): q rounded to 16 bits,
    (q + 2^15) >> 16 (0x7FFF from 0x7FFF0000 up), then (x * q16 + 2^(14 - shift)) >> (15 - shift), truncated to int32.
    The int64 product wraps as C's does on overflow."""
    q, shift = i64(q), i64(shift)
    reduced = np.where(q < 0x7FFF0000, (q + (1 << 15)) >> 16, 0x7FFF)
    total_shift = 15 - shift
    with np.errstate(over="ignore"):
        return wrap32((i64(x) * reduced + np.left_shift(1, total_shift - 1)) >> total_shift)


def mbqm_smaller_than_one(x: ArrayLike, q: ArrayLike, left_shift: ArrayLike) -> Ints:
    """MultiplyByQuantizedMultiplierSmallerThanOneExp: RDBPOT(SRDHM(x, q), -left_shift), left_shift <= 0."""
    return rdbpot(srdhm(x, q), -i64(left_shift))


def mbqm_greater_than_one(x: ArrayLike, q: ArrayLike, left_shift: int) -> Ints:
    """MultiplyByQuantizedMultiplierGreaterThanOne: SRDHM(x * 2^left_shift, q), the product wrapping to int32."""
    return srdhm(wrap32(i64(x) << left_shift), q)


def sat_shift_left(x: ArrayLike, exponent: int, bits: int = 32) -> Ints:
    """gemmlowp SaturatingRoundingMultiplyByPOT for exponent > 0: x * 2^exponent saturated to the int range."""
    x = i64(x)
    threshold = (1 << (bits - 1 - exponent)) - 1
    lo, hi = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    return np.where(x > threshold, hi, np.where(x < -threshold, lo, x << exponent))


def rounding_half_sum(a: ArrayLike, b: ArrayLike) -> Ints:
    """gemmlowp RoundingHalfSum (int32): (a + b + sign(a + b)) / 2 truncated."""
    s = i64(a) + i64(b)
    return c_div(s + np.where(s >= 0, 1, -1), 2)


def _exp_on_interval_between_negative_one_quarter_and_0_excl(a: Ints) -> Ints:
    """exp(a) for a in [-1/4, 0), Q0.31: Taylor series of degree 4 around -1/8, exp(-1/8) * exp(a + 1/8)."""
    constant_term, one_third = 1895147668, 715827883
    x = a + (1 << 28)
    x2 = srdhm(x, x)
    x3 = srdhm(x2, x)
    x4 = srdhm(x2, x2)
    x4_over_4 = rdbpot(x4, 2)
    poly = rdbpot(srdhm(x4_over_4 + x3, one_third) + x2, 1)
    return constant_term + srdhm(constant_term, x + poly)


_EXP_BARREL = ((-2, 1672461947), (-1, 1302514674), (0, 790015084), (1, 290630308), (2, 39332535), (3, 720401), (4, 242))


def exp_on_negative_values(a: ArrayLike, integer_bits: int) -> Ints:
    """gemmlowp exp_on_negative_values: exp(a) in Q0.31 for a <= 0 given in Q(integer_bits).(31-integer_bits).

    a = -(k/4 + r) is split into a remainder on [-1/4, 0) (Taylor series) and a product of constants exp(-2^j)
    selected by the bits of the multiple of 1/4; a = 0 gives the Q0.31 one (INT32_MAX).
    """
    a = i64(a)
    frac_bits = 31 - integer_bits
    quarter = 1 << (frac_bits - 2)
    a_mod_quarter_minus_quarter = (a & (quarter - 1)) - quarter
    result = _exp_on_interval_between_negative_one_quarter_and_0_excl(
        sat_shift_left(a_mod_quarter_minus_quarter, integer_bits) if integer_bits else a_mod_quarter_minus_quarter
    )
    remainder = a_mod_quarter_minus_quarter - a
    for exponent, multiplier in _EXP_BARREL:
        if integer_bits > exponent:
            bit = (remainder & (1 << (frac_bits + exponent))) != 0
            result = np.where(bit, srdhm(result, multiplier), result)
    if integer_bits > 5:
        result = np.where(a < -(1 << (36 - integer_bits)), 0, result)
    return np.where(a == 0, I32_MAX, result)


def one_over_one_plus_x_for_x_in_0_1(a: ArrayLike) -> Ints:
    """gemmlowp 1/(1+a) for a in [0, 1) in Q0.31: three Newton-Raphson steps on the half denominator (1+a)/2 in Q2.29,
    starting from 48/17 - 32/17 * d."""
    half_denominator = rounding_half_sum(a, I32_MAX)
    one_q2 = 1 << 29
    x = 1515870810 + srdhm(half_denominator, -1010580540)
    for _ in range(3):
        one_minus = one_q2 - srdhm(half_denominator, x)
        x = x + sat_shift_left(srdhm(x, one_minus), 2)
    return sat_shift_left(x, 1)


def count_leading_zeros32(x: ArrayLike) -> Ints:
    """__builtin_clz of the uint32 value of x (32 for 0): 32 minus the bit length."""
    _, bit_length = np.frexp((i64(x) & 0xFFFFFFFF).astype(np.float64))
    return 32 - bit_length.astype(np.int64)


def get_reciprocal(x: ArrayLike, integer_digits: int) -> tuple[Ints, Ints]:
    """TFLite GetReciprocal: (1/x as Q0.31 of the normalised x, num_bits_over_unit) for x > 0 in Q(integer_digits).

    x is shifted left by its leading zeros to [2^31, 2^32) (i.e. 1 + f with f in [0, 1)); 1/(1+f) is gemmlowp's
    Newton-Raphson; num_bits_over_unit = integer_digits - leading zeros.
    """
    x = i64(x)
    headroom_plus_one = count_leading_zeros32(x)
    shifted_minus_one = ((x << headroom_plus_one) & 0xFFFFFFFF) - (1 << 31)
    return one_over_one_plus_x_for_x_in_0_1(shifted_minus_one), integer_digits - headroom_plus_one


def calculate_input_radius(input_integer_bits: int, input_left_shift: int, total_signed_bits: int = 31) -> int:
    """CalculateInputRadius: floor((2^ib - 1) * 2^(tsb - ib) / 2^left_shift), the largest input not saturating."""
    value = ((1 << input_integer_bits) - 1) * float(1 << (total_signed_bits - input_integer_bits))
    return int(np.floor(value / float(1 << input_left_shift)))


def preprocess_softmax_scaling(beta: float, input_scale: float, input_integer_bits: int) -> tuple[int, int]:
    """PreprocessSoftmaxScaling: QuantizeMultiplierGreaterThanOne(min(beta * scale * 2^(31 - ib), 2^31 - 1))."""
    real = min(float(beta) * float(input_scale) * float(1 << (31 - input_integer_bits)), float((1 << 31) - 1))
    q, shift = quantize_multiplier(real)
    return int(q), int(shift)


# int16 helpers (HARD_SWISH, 16x8 kernels)


def wrap16(x: ArrayLike) -> Ints:
    """Two's-complement wrap to int16."""
    return ((i64(x) + (1 << 15)) & 0xFFFF) - (1 << 15)


def srdhm16(a: ArrayLike, b: ArrayLike) -> Ints:
    """SaturatingRoundingDoublingHighMul (int16): (a*b + nudge) / 2^15 truncated, -2^15 * -2^15 -> 32767."""
    a, b = i64(a), i64(b)
    ab = a * b
    high = c_div(ab + np.where(ab >= 0, 1 << 14, 1 - (1 << 14)), 1 << 15)
    return np.where((a == -(1 << 15)) & (b == -(1 << 15)), (1 << 15) - 1, wrap16(high))


def sdhm16(a: ArrayLike, b: ArrayLike) -> Ints:
    """SaturatingDoublingHighMul (int16, hard_swish.h): a*b / 2^15 truncated toward zero, -2^15 * -2^15 -> 32767."""
    a, b = i64(a), i64(b)
    return np.where((a == -(1 << 15)) & (b == -(1 << 15)), (1 << 15) - 1, wrap16(c_div(a * b, 1 << 15)))


def sat_left_shift16(x: ArrayLike, amount: int) -> Ints:
    """SaturatingLeftShift (int16): x * 2^amount clamped to [-32768, 32767]."""
    return np.clip(i64(x) * (1 << amount), -(1 << 15), (1 << 15) - 1)


def downscale_multiplier_to_int16(q: int) -> int:
    """DownScaleInt32ToInt16Multiplier: (q + 2^15) >> 16, 32767 when q is within 2^15 of INT32_MAX."""
    if q >= I32_MAX - (1 << 15):
        return (1 << 15) - 1
    return (q + (1 << 15)) >> 16
