"""Floating-point arithmetic in gates: the RTL of the numeric contract (`d1tile.numerics`).

Every function here adds combinational logic to a `Module` and returns Amaranth values; the
matrix unit (`d1tile.hw.matrix`) and the vector unit (`d1tile.hw.vector`) build their
datapaths from them. The contract they implement, bit for bit, is the module docstring of
`d1tile.numerics`: round to nearest even, subnormal inputs read as zeros (DAZ), results that
round below 2**-126 flushed to zeros (FTZ, tininess after rounding), overflow to infinity, one
canonical NaN (0x7FC00000), an exact zero sum +0 unless both addends are -0.

Internal form (`Unpacked`): sign, a signed exponent `exp` (12 bits, unbounded for every value
the datapath forms: an exact BF16 or FP32 product needs -252..255), a 24-bit significand `sig`
with its leading one at bit 23, and the flags `zero`, `inf`, `nan`. The value is
(-1)**sign * sig * 2**(exp - 23).

The adder (`fp_add`) aligns the smaller operand to the larger in a 27-bit frame (3 bits below
the 24-bit significand) and ORs every bit shifted out of it into the frame's last bit (rounding
it "to odd" there); it adds or subtracts, normalises (a carry, or a left shift by the leading
zero count) and rounds once. A value rounded to odd with at least two bits beyond the target
precision rounds to nearest even exactly like the exact value (Boldo and Melquiond, 2008), and
adding or subtracting the larger operand (whose last three frame bits are zero) keeps the sum
rounded to odd; so the result is the exact sum rounded once. `tests/test_fp.py` checks every
function against `d1tile.numerics` on random and corner-case operands.
"""

from __future__ import annotations

from dataclasses import dataclass

from amaranth.hdl import Cat, Const, Module, Mux, Signal, Value, signed, unsigned

from ..numerics import BF16_NAN, F32_NAN


__all__ = [
    "Unpacked", "EXP_SHAPE", "unpack_fp32", "unpack_bf16", "round_pack", "fp_add", "fp_mul",
    "fp_mul_product", "bf16_product", "fp32_canonical", "fp32_is_nan", "fp32_max", "fp32_gt_zero",
    "bf16_from_fp32_rne", "bf16_from_fp32_sr", "fp32_from_bf16", "fp32_from_int",
    "int_from_fp32", "leading_zeros",
]

EXP_SHAPE = signed(12)
_BIAS = 127


@dataclass(frozen=True)
class Unpacked:
    """An operand in the internal form (module docstring); fields are Amaranth values."""
    sign: Value
    exp: Value
    sig: Value
    zero: Value
    inf: Value
    nan: Value

    def select(self, cond, other: "Unpacked") -> "Unpacked":
        """self if cond else other, field by field."""
        return Unpacked(*(Mux(cond, getattr(self, f), getattr(other, f))
                          for f in ("sign", "exp", "sig", "zero", "inf", "nan")))


def _sig(m: Module, shape, name: str, value) -> Signal:
    s = Signal(shape, name=name)
    m.d.comb += s.eq(value)
    return s


def unpack_fp32(m: Module, bits, name: str) -> Unpacked:
    """FP32 bits -> `Unpacked`; a subnormal reads as a zero of its sign (DAZ)."""
    bits = Value.cast(bits)
    e, f, s = bits[23:31], bits[0:23], bits[31]
    return Unpacked(
        sign=_sig(m, 1, f"{name}_sign", s),
        exp=_sig(m, EXP_SHAPE, f"{name}_exp", Cat(e, Const(0, 1)).as_signed() - _BIAS),
        sig=_sig(m, 24, f"{name}_sig", Cat(f, Const(1, 1))),
        zero=_sig(m, 1, f"{name}_zero", e == 0),
        inf=_sig(m, 1, f"{name}_inf", (e == 0xFF) & (f == 0)),
        nan=_sig(m, 1, f"{name}_nan", (e == 0xFF) & (f != 0)),
    )


def unpack_bf16(m: Module, bits, name: str) -> Unpacked:
    """BF16 bits -> `Unpacked` (the FP32 with the same high half)."""
    return unpack_fp32(m, Cat(Const(0, 16), Value.cast(bits)[0:16]), name)


def leading_zeros(m: Module, value, name: str) -> Signal:
    """The number of leading zeros of `value` (its width when it is zero)."""
    value = Value.cast(value)
    width = len(value)
    count = Const(width, range(width + 1))
    for i in range(width):               # the highest set bit decides: it comes last
        count = Mux(value[i], width - 1 - i, count)
    return _sig(m, range(width + 1), name, count)


def round_pack(m: Module, sign, exp, frame, name: str, *, zero=0, inf=0, nan=0) -> Signal:
    """Round a normalised value to FP32 bits: `frame` holds the significand with its leading
    one at the top bit (width W >= 25: 24 bits, a guard bit, and bits whose OR is the sticky
    bit), `exp` the exponent of that leading one. Round to nearest even; then the biased
    exponent decides: >= 255 infinity, <= 0 a zero of `sign` (flush after rounding). `zero`,
    `inf`, `nan` override the result (a zero of `sign`, an infinity of `sign`, the canonical
    NaN)."""
    frame = Value.cast(frame)
    width = len(frame)
    mant = frame[width - 24:width]
    guard = frame[width - 25]
    sticky = frame[:width - 25].any() if width > 25 else Const(0)
    up = guard & (sticky | mant[0])
    rounded = _sig(m, 25, f"{name}_rounded", mant + up)
    carry = rounded[24]
    biased = _sig(m, signed(13), f"{name}_biased", exp + carry + _BIAS)
    fraction = Mux(carry, rounded[1:24], rounded[0:23])
    out = Signal(32, name=f"{name}_out")
    with m.If(nan):
        m.d.comb += out.eq(F32_NAN)
    with m.Elif(inf | (~zero & (biased >= 0xFF))):
        m.d.comb += out.eq(Cat(Const(0, 23), Const(0xFF, 8), sign))
    with m.Elif(zero | (biased <= 0)):
        m.d.comb += out.eq(Cat(Const(0, 31), sign))
    with m.Else():
        m.d.comb += out.eq(Cat(fraction, biased[0:8], sign))
    return out


def fp_add(m: Module, x: Unpacked, y: Unpacked, name: str) -> Signal:
    """x + y rounded once to FP32 bits (module docstring). x and y may have exponents beyond
    FP32's range (an exact product); the result overflows or flushes as the contract says."""
    x_big = _sig(m, 1, f"{name}_x_big",
                 Mux(x.zero, 0, Mux(y.zero, 1, (x.exp > y.exp)
                                    | ((x.exp == y.exp) & (x.sig >= y.sig)))))
    big = x.select(x_big, y)
    small = y.select(x_big, x)
    dist = _sig(m, signed(13), f"{name}_dist", big.exp - small.exp)
    # Beyond 26 places the smaller operand is all sticky; clamp the shift there.
    shift = _sig(m, range(28), f"{name}_shift", Mux(dist > 27, 27, dist[0:5]))
    small_frame = _sig(m, 27, f"{name}_small_frame", Mux(small.zero, 0, small.sig << 3))
    mask = _sig(m, 28, f"{name}_mask", (Const(1, 28) << shift) - 1)
    lost = (small_frame & mask[:27]).any()
    aligned = _sig(m, 27, f"{name}_aligned", (small_frame >> shift) | lost)
    big_frame = big.sig << 3
    subtract = big.sign ^ small.sign
    total = _sig(m, 28, f"{name}_total",
                 Mux(subtract, big_frame - aligned, big_frame + aligned))
    carry = total[27]
    lz = leading_zeros(m, total[:27], f"{name}_lz")
    frame = _sig(m, 28, f"{name}_frame", Mux(carry, total, total << (lz + 1)))
    exp = _sig(m, EXP_SHAPE, f"{name}_exp_r", Mux(carry, big.exp + 1, big.exp - lz))
    both_zero = x.zero & y.zero
    cancelled = ~both_zero & (total == 0)
    nan = x.nan | y.nan | (x.inf & y.inf & (x.sign != y.sign))
    inf = x.inf | y.inf
    sign = Mux(inf, Mux(x.inf, x.sign, y.sign),
               Mux(both_zero, x.sign & y.sign, Mux(cancelled, 0, big.sign)))
    return round_pack(m, sign, exp, frame, name, zero=both_zero | cancelled, inf=inf, nan=nan)


def fp_mul_product(m: Module, x: Unpacked, y: Unpacked, product, name: str) -> Signal:
    """x * y rounded to FP32 bits, given `product` = x.sig * y.sig (48 bits; the caller's
    multiplier, so that the vector unit can share one per lane)."""
    product = Value.cast(product)[:48]
    top = product[47]
    frame = _sig(m, 48, f"{name}_frame", Mux(top, product, product << 1))
    exp = _sig(m, EXP_SHAPE, f"{name}_exp_r", x.exp + y.exp + top)
    nan = x.nan | y.nan | (x.inf & y.zero) | (x.zero & y.inf)
    return round_pack(m, x.sign ^ y.sign, exp, frame, name, zero=x.zero | y.zero,
                      inf=x.inf | y.inf, nan=nan)


def fp_mul(m: Module, x: Unpacked, y: Unpacked, name: str) -> Signal:
    """x * y rounded once to FP32 bits (the exact 48-bit product, then `round_pack`)."""
    return fp_mul_product(m, x, y, _sig(m, 48, f"{name}_product", x.sig * y.sig), name)


def bf16_product(m: Module, a: Unpacked, b: Unpacked, product16, name: str) -> Unpacked:
    """The exact product of two BF16 operands (unpacked with `unpack_bf16`), in the internal
    form: `product16` = the 8-bit significands' product (16 bits, the caller's multiplier, which
    the matrix unit shares with its int8 product)."""
    p = Value.cast(product16)[:16]
    top = p[15]
    return Unpacked(
        sign=_sig(m, 1, f"{name}_sign", a.sign ^ b.sign),
        exp=_sig(m, EXP_SHAPE, f"{name}_exp", a.exp + b.exp + top),
        sig=_sig(m, 24, f"{name}_sig", Mux(top, p << 8, p << 9)[:24]),
        zero=_sig(m, 1, f"{name}_zero", a.zero | b.zero),
        inf=_sig(m, 1, f"{name}_inf", a.inf | b.inf),
        nan=_sig(m, 1, f"{name}_nan", a.nan | b.nan | (a.inf & b.zero) | (a.zero & b.inf)),
    )


# -- comparisons and canonical forms -----------------------------------------------------------

def fp32_is_nan(bits) -> Value:
    bits = Value.cast(bits)
    return (bits[23:31] == 0xFF) & (bits[0:23] != 0)


def fp32_canonical(m: Module, bits, name: str) -> Signal:
    """An FP32 operand as the datapath passes it on: a subnormal becomes a zero of its sign,
    a NaN the canonical NaN."""
    bits = Value.cast(bits)
    return _sig(m, 32, name, Mux(fp32_is_nan(bits), F32_NAN,
                                 Mux(bits[23:31] == 0, Cat(Const(0, 31), bits[31]), bits)))


def fp32_gt_zero(bits) -> Value:
    """bits > 0: positive, not a zero or subnormal, not NaN."""
    bits = Value.cast(bits)
    return ~bits[31] & (bits[23:31] != 0) & ~fp32_is_nan(bits)


def fp32_max(m: Module, a, b, name: str) -> Signal:
    """max(a, b) (`d1tile.numerics.fp32_max`): the canonical NaN if either is NaN; +0 > -0."""
    ca = fp32_canonical(m, a, f"{name}_a")
    cb = fp32_canonical(m, b, f"{name}_b")
    mag_a, mag_b = ca[:31], cb[:31]
    # Sign-magnitude order of canonical values (zeros are +0 or -0, so +0 > -0 falls out).
    a_larger = Mux(ca[31] != cb[31], cb[31], Mux(ca[31], mag_a < mag_b, mag_a > mag_b))
    return _sig(m, 32, name, Mux(fp32_is_nan(ca) | fp32_is_nan(cb), F32_NAN,
                                 Mux(a_larger, ca, cb)))


# -- conversions --------------------------------------------------------------------------------

def bf16_from_fp32_rne(m: Module, bits, name: str) -> Signal:
    """FP32 -> BF16, round to nearest even (the magnitude never carries into the sign bit: the
    largest finite value rounds up to infinity)."""
    c = fp32_canonical(m, bits, f"{name}_in")
    rounded = _sig(m, 32, f"{name}_sum", c + 0x7FFF + c[16])
    return _sig(m, 16, name, Mux(fp32_is_nan(c), BF16_NAN, rounded[16:32]))


def bf16_from_fp32_sr(m: Module, bits, rand16, name: str) -> Signal:
    """FP32 -> BF16 with stochastic rounding: up (away from zero) when `rand16` is below the
    16 dropped bits."""
    c = fp32_canonical(m, bits, f"{name}_in")
    up = Value.cast(rand16)[:16] < c[0:16]
    return _sig(m, 16, name, Mux(fp32_is_nan(c), BF16_NAN, c[16:32] + up))


def fp32_from_bf16(m: Module, bits16, name: str) -> Signal:
    """BF16 -> FP32: exact, subnormals flushed, the canonical NaN."""
    return fp32_canonical(m, Cat(Const(0, 16), Value.cast(bits16)[:16]), name)


def fp32_from_int(m: Module, value, name: str) -> Signal:
    """A signed 32-bit integer -> FP32, round to nearest even; 0 -> +0."""
    value = Value.cast(value).as_signed()
    sign = value[31]
    mag = _sig(m, 32, f"{name}_mag", Mux(sign, -value, value))
    lz = leading_zeros(m, mag, f"{name}_lz")
    frame = _sig(m, 32, f"{name}_frame", mag << lz)
    exp = _sig(m, EXP_SHAPE, f"{name}_exp", 31 - lz)
    return round_pack(m, sign, exp, frame, name, zero=mag == 0)


def int_from_fp32(m: Module, bits, lo: int, hi: int, name: str) -> Signal:
    """FP32 -> a signed integer in [lo, hi] (a range within int32): round to nearest even,
    saturate (infinities too), NaN -> 0. Returns a signed 32-bit value."""
    x = unpack_fp32(m, bits, f"{name}_x")
    # |x| < 2**31 when exp <= 30: the integer part is sig << (exp - 23) or sig >> (23 - exp).
    left = _sig(m, range(8), f"{name}_left", Mux(x.exp > 23, x.exp - 23, 0)[:3])
    right = _sig(m, range(32), f"{name}_right", Mux(x.exp >= 23, 0,
                                                    Mux(x.exp < -2, 26, 23 - x.exp))[:5])
    frame = _sig(m, 26, f"{name}_frame", Cat(Const(0, 2), x.sig))       # 2 guard positions
    shifted = _sig(m, 26, f"{name}_shifted", frame >> right)
    mask = _sig(m, 27, f"{name}_mask", (Const(1, 27) << right) - 1)
    sticky = (frame & mask[:26]).any() | shifted[0]
    whole = shifted[2:26]
    guard = shifted[1]
    up = guard & (sticky | whole[0])
    small = _sig(m, 25, f"{name}_small", whole + up)
    magnitude = _sig(m, 32, f"{name}_magnitude", Mux(x.exp >= 23, x.sig << left, small))
    big = x.inf | (x.exp >= 31)
    signed_value = Mux(x.sign, -magnitude.as_signed(), magnitude.as_signed())
    out = Signal(signed(32), name=name)
    with m.If(x.nan | x.zero):
        m.d.comb += out.eq(0)
    with m.Elif(big | (signed_value > hi) | (signed_value < lo)):
        m.d.comb += out.eq(Mux(x.sign, lo, hi))
    with m.Else():
        m.d.comb += out.eq(signed_value)
    return out
