"""The vector unit: the reference model on its own (pure Python), the RTL's interface and a quick
Amaranth-simulator run of it, and the RTL against the model (cocotb bench tests/hw/tb_vector.py
on Verilator, both presets)."""

from __future__ import annotations

import random

import numpy as np
import pytest

from d1tile import numerics as nx
from d1tile.dtypes import ELEMENTS, ElemType
from d1tile.formats import FormatError, bytes_from_word, lanes_from_word, word_from_lanes
from d1tile.isa import VecOp
from d1tile.params import TileConfig
from d1tile.sim.vector import (INT32_MAX, INT32_MIN, VECTOR_LATENCY, VectorUnitState,
                               requantize, requantize_lane, vector_cmd_format, vector_execute,
                               vector_ideal_cycles, vector_op, vector_op_reference,
                               vector_result_format)
from d1tile.vector_ops import VECTOR_OPS, Params, vector_op_of

from conftest import bench_seed, run_bench


TINY = TileConfig.preset("tiny")
EXTREMES = np.array([INT32_MIN, INT32_MAX, -1, 0, 1], dtype=np.int64)


def lanes(cfg, word):
    return [int(x) for x in lanes_from_word(word, cfg.lanes)]


# -- formats -----------------------------------------------------------------------------------

@pytest.mark.parametrize("preset", ["tiny", "default"])
def test_formats(preset):
    cfg = TileConfig.preset(preset)
    cmd = vector_cmd_format(cfg)
    assert [(f.name, f.width) for f in cmd.fields] == [
        ("op", 5), ("a", cfg.word_bits), ("b", cfg.word_bits), ("scale", 16), ("shift", 6),
        ("slot", 2), ("relu", 1), ("q", 32), ("first", 1), ("last", 1)]
    res = vector_result_format(cfg)
    assert [(f.name, f.width) for f in res.fields] == [("data", cfg.word_bits),
                                                       ("mask", cfg.word_bytes)]
    assert cmd.layout.size == cmd.width and res.layout.size == res.width


# -- vector_op semantics -----------------------------------------------------------------------

def test_int32_ops_wrap_and_compare_signed():
    cfg = TINY
    a = word_from_lanes([INT32_MAX, INT32_MIN, -1, 7])
    b = word_from_lanes([1, -1, -1, -3])
    full = (1 << cfg.word_bytes) - 1
    data, mask = vector_op(cfg, VecOp.ADD, a, b)
    assert (lanes(cfg, data), mask) == ([INT32_MIN, INT32_MAX, -2, 4], full)
    data, mask = vector_op(cfg, VecOp.MUL, a, b)
    assert (lanes(cfg, data), mask) == ([INT32_MAX, INT32_MIN, 1, -21], full)
    data, mask = vector_op(cfg, VecOp.MAX, a, b)
    assert (lanes(cfg, data), mask) == ([INT32_MAX, -1, -1, 7], full)
    data, mask = vector_op(cfg, VecOp.RELU, a, b)
    assert (lanes(cfg, data), mask) == ([INT32_MAX, 0, 0, 7], full)


def test_mul_keeps_low_32_bits():
    cfg = TINY
    a = word_from_lanes([0x10000, 0x12345678, INT32_MIN, 46341])
    b = word_from_lanes([0x10000, 0x10, INT32_MIN, 46341])
    data, _ = vector_op(cfg, VecOp.MUL, a, b)
    expected = [((x * y + 2**31) % 2**32) - 2**31
                for x, y in zip(lanes(cfg, a), lanes(cfg, b))]
    assert lanes(cfg, data) == expected == [0, 0x23456780, 0, -2147479015]


# (a, scale, shift, relu, expected): ties round towards +infinity, then clamp to [lo, 127].
ROUNDING_CASES = [
    (1, 1, 1, 0, 1), (-1, 1, 1, 0, 0), (3, 1, 1, 0, 2), (-3, 1, 1, 0, -1),
    (5, 1, 2, 0, 1), (6, 1, 2, 0, 2), (-6, 1, 2, 0, -1), (-5, 1, 2, 0, -1), (-7, 1, 2, 0, -2),
    (300, 3, 3, 0, 113), (-300, 3, 3, 0, -112),
    (255, 1, 1, 0, 127), (-257, 1, 1, 0, -128), (-259, 1, 1, 0, -128),
    (-5, 1, 0, 1, 0), (100, 1, 0, 1, 100),
    (INT32_MIN, 1, 31, 0, -1), (1 << 30, 1, 31, 0, 1), (-(1 << 30), 1, 31, 0, 0),
    (INT32_MIN, 65535, 46, 0, -2), (INT32_MIN, 65535, 47, 0, -1), (INT32_MAX, 65535, 63, 0, 0),
    (INT32_MAX, 0, 0, 0, 0), (INT32_MAX, 65535, 0, 0, 127), (INT32_MIN, 65535, 0, 1, 0),
]


@pytest.mark.parametrize("a,scale,shift,relu,q", ROUNDING_CASES)
def test_requant_rounding(a, scale, shift, relu, q):
    assert requantize_lane(a, scale, shift, relu) == q
    assert int(requantize(np.array([a]), scale, shift, relu)[0]) == q
    data, _ = vector_op(TINY, VecOp.REQUANT, word_from_lanes([a] * TINY.lanes), 0, scale, shift,
                        0, relu)
    assert list(bytes_from_word(data, TINY.word_bytes)[:TINY.lanes]) == [q] * TINY.lanes


@pytest.mark.parametrize("slot", range(4))
def test_requant_slot_placement(slot):
    cfg = TINY
    n = cfg.lanes
    a = word_from_lanes([10, -20, 300, -300])
    data, mask = vector_op(cfg, VecOp.REQUANT, a, 0, scale=1, shift=0, slot=slot)
    expected = [0] * cfg.word_bytes
    expected[slot * n:(slot + 1) * n] = [10, -20, 127, -128]
    assert list(bytes_from_word(data, cfg.word_bytes)) == expected
    assert mask == ((1 << n) - 1) << (slot * n)


def test_four_requants_pack_one_operand_word():
    cfg = TINY
    n = cfg.lanes
    rng = np.random.default_rng(1)
    accs = rng.integers(-1000, 1000, size=(4, n))
    word = 0
    for slot in range(4):
        data, mask = vector_op(cfg, VecOp.REQUANT, word_from_lanes(accs[slot]), 0, scale=3,
                               shift=4, slot=slot)
        enabled = sum(0xFF << (8 * j) for j in range(cfg.word_bytes) if mask >> j & 1)
        assert data & ~enabled == 0, f"slot {slot} writes outside its mask"
        assert word & enabled == 0, f"slot {slot} overlaps an earlier slot"
        word |= data
    assert list(bytes_from_word(word, cfg.word_bytes)) == list(requantize(accs, 3, 4).reshape(-1))


UNDEFINED = sorted(set(range(32)) - set(VECTOR_OPS))


@pytest.mark.parametrize("op", UNDEFINED)
def test_undefined_ops_write_nothing(op):
    a = word_from_lanes([1, 2, 3, 4])
    assert UNDEFINED == [5, 6, 7, *range(18, 24), 31]
    assert vector_op(TINY, op, a, a, 5, 6, 1, 1, 0x3F80_0000, 0, 1) == (0, 0)


def test_bad_arguments_name_the_field():
    with pytest.raises(FormatError, match="op"):
        vector_op(TINY, 32, 0, 0)
    with pytest.raises(FormatError, match="shift"):
        vector_op(TINY, VecOp.REQUANT, 0, 0, shift=64)
    with pytest.raises(FormatError, match=r"\.a="):
        vector_op(TINY, VecOp.ADD, -1, 0)
    with pytest.raises(FormatError, match=r"\.q="):
        vector_op(TINY, vector_op_of("FSCALE").code, 0, 0, q=1 << 32)
    with pytest.raises(ValueError, match="FSUM needs the unit's state"):
        vector_op(TINY, vector_op_of("FSUM").code, 0, 0)
    with pytest.raises(ValueError, match="CVT_F32_BF16_SR needs the unit's state"):
        vector_op(TINY, vector_op_of("CVT_F32_BF16_SR").code, 0, 0)
    with pytest.raises(ValueError, match="seed=-1"):
        VectorUnitState(TINY).reseed(-1)
    with pytest.raises(ValueError, match="scale"):
        requantize([1], 65536, 0)
    with pytest.raises(ValueError, match="acc"):
        requantize([INT32_MAX + 1], 1, 0)
    with pytest.raises(TypeError, match="acc"):
        requantize([1.5], 1, 0)


# -- the FP32 ops, reductions, conversions ------------------------------------------------------

def f32(values) -> int:
    return word_from_lanes([int(x) for x in nx.f32_bits(values).view(np.int32)])


def bits(word, cfg=TINY) -> list:
    return [int(x) & 0xFFFF_FFFF for x in lanes_from_word(word, cfg.lanes)]


def code(name: str) -> int:
    return vector_op_of(name).code


def test_fp_ops_follow_the_numeric_contract():
    """Every FP32 op's lanes are its numerics function, specials included; q is the scalar."""
    cfg = TINY
    a = [0x7FC0_1234, 0x8000_0000, 0x0000_0001, 0x7F7F_FFFF]  # NaN payload, -0, subnormal, max
    b = [0x3F80_0000, 0x0000_0000, 0x8000_0000, 0x7F7F_FFFF]
    q = 0x4000_0000
    A, B = word_from_lanes([x - (1 << 32) if x >> 31 else x for x in a]), \
        word_from_lanes([x - (1 << 32) if x >> 31 else x for x in b])
    full = (1 << cfg.word_bytes) - 1
    cases = {"FADD": nx.fp32_add(a, b), "FSUB": nx.fp32_sub(a, b), "FMUL": nx.fp32_mul(a, b),
             "FMAX": nx.fp32_max(a, b), "FMASK": nx.fp32_mask(a, b),
             "FAXPY": nx.fp32_axpy(a, q, b), "FRELU": nx.fp32_relu(a),
             "FSCALE": nx.fp32_mul(a, q)}
    for name, expected in cases.items():
        data, mask = vector_op(cfg, code(name), A, B, q=q)
        assert (bits(data), mask) == ([int(x) for x in expected], full), name
    # the specials, written out: NaN -> canonical; -0 + +0 = +0; a subnormal reads as +0, and
    # +0 + -0 = +0; max + max overflows
    assert bits(vector_op(cfg, code("FADD"), A, B)[0]) == [nx.F32_NAN, 0, 0, 0x7F80_0000]
    assert bits(vector_op(cfg, code("FMAX"), A, B)[0])[1:3] == [0, 0]
    assert bits(vector_op(cfg, code("FAXPY"), A, B, q=q)[0])[3] == 0x7F80_0000
    # FAXPY is not fused: (2**-1 * (1 + 2**-23)) * 2 - 1 rounds the product first
    x = f32([1 + 2**-23] * 4)
    assert vector_op(cfg, code("FAXPY"), x, f32([-1.0] * 4), q=int(nx.f32_bits(1.0)))[0] == \
        f32([2**-23] * 4)


def test_reductions_fold_from_their_identity_and_emit_at_last():
    cfg = TINY
    state = VectorUnitState(cfg)
    rows = [f32([1.0, -0.0, np.inf, 3.0]), f32([2.0, -0.0, -np.inf, -3.0]),
            f32([0.5, -0.0, 1.0, 0.0])]
    for name, ident in (("FSUM", nx.F32_NEG_ZERO), ("FMAXR", nx.F32_NEG_INF)):
        assert VECTOR_OPS[code(name)].identity == ident
        outs = [vector_op(cfg, code(name), w, 0, first=int(k == 0), last=int(k == 2),
                          state=state) for k, w in enumerate(rows)]
        assert outs[:2] == [None, None]
        data, mask = outs[2]
        arr = np.array([bits(w) for w in rows], dtype=np.uint32)
        ref = nx.fp32_sum(arr) if name == "FSUM" else nx.fp32_max_reduce(arr)
        assert bits(data) == [int(x) for x in ref] and mask == (1 << cfg.word_bytes) - 1
        assert list(state.acc) == [int(x) for x in ref]
    # FSUM of -0 rows stays -0; one row alone is that row, canonical
    assert bits(vector_op(cfg, code("FSUM"), f32([-0.0] * 4), 0, state=state)[0]) == \
        [0x8000_0000] * 4
    sub = word_from_lanes([1, 0x7F80_0001, 5, -1])
    assert bits(vector_op(cfg, code("FSUM"), sub, 0, state=state)[0]) == \
        [0, nx.F32_NAN, 0, nx.F32_NAN]
    # without first: continues the accumulator (zero after reset)
    fresh = VectorUnitState(cfg)
    assert bits(vector_op(cfg, code("FMAXR"), f32([-1.0] * 4), 0, first=0, state=fresh)[0]) == \
        [0] * 4


def test_conversions_place_groups_under_masks():
    cfg = TINY
    n = cfg.lanes
    # 1, a BF16 tie (rounds to even), a negative subnormal, the largest normal (-> Inf)
    a = word_from_lanes([0x3F80_0000, 0x3F80_8000, 0x8000_0001 - (1 << 32), 0x7F7F_FFFF])
    for slot in range(4):
        data, mask = vector_op(cfg, code("CVT_F32_BF16"), a, 0, slot=slot)
        half = slot % 2
        assert mask == ((1 << 2 * n) - 1) << (2 * n * half)
        assert list(ELEMENTS[ElemType.BF16].unpack(cfg, data)[half * n:(half + 1) * n]) == \
            [int(x) for x in nx.bf16_from_f32_rne(bits(a))]
        data, mask = vector_op(cfg, code("CVT_F32_I8"), f32([1.5, -2.5, 300.0, -7.0]), 0,
                               slot=slot, q=int(nx.f32_bits(1.0)))
        assert mask == ((1 << n) - 1) << (n * slot)
        assert list(bytes_from_word(data, cfg.word_bytes)[slot * n:(slot + 1) * n]) == \
            [2, -2, 127, -7]
        # the int8 source group follows the slot too
        src = ELEMENTS[ElemType.INT8].pack(cfg, np.arange(4 * n) - 8)
        data, _ = vector_op(cfg, code("CVT_I8_F32"), src, 0, slot=slot, q=int(nx.f32_bits(2.0)))
        assert bits(data) == [int(x) for x in nx.f32_bits((np.arange(n) + slot * n - 8) * 2.0)]
    wide = ELEMENTS[ElemType.BF16].pack(cfg, [0x3F80, 0xFF81, 0x0001, 0x8000, 1, 2, 3, 4])
    assert bits(vector_op(cfg, code("CVT_BF16_F32"), wide, 0, slot=0)[0]) == \
        [0x3F80_0000, nx.F32_NAN, 0, 0x8000_0000]
    assert bits(vector_op(cfg, code("CVT_I32_F32"), word_from_lanes([(1 << 24) + 1, -3, 0, 7]),
                          0, q=int(nx.f32_bits(1.0)))[0]) == \
        [0x4B80_0000, int(nx.f32_bits(-3.0)), 0, int(nx.f32_bits(7.0))]
    assert lanes_from_word(vector_op(cfg, code("CVT_F32_I32"), f32([2.5, -3.5, 1e20, np.nan]),
                                     0, q=int(nx.f32_bits(1.0)))[0], n).tolist() == \
        [2, -4, INT32_MAX, 0]


def test_stochastic_conversion_advances_the_generator_once_per_element():
    cfg = TINY
    state = VectorUnitState(cfg, seed=5)
    assert state.rng == nx.rng_seed_states(5, cfg.lanes)
    a = f32([1.0 + 2**-9, -1.0 - 2**-9, 3.0, 1e-3])
    mirror = nx.rng_seed_states(5, cfg.lanes)
    for slot in range(6):
        data, mask = vector_op(cfg, code("CVT_F32_BF16_SR"), a, 0, slot=slot % 4, state=state)
        mirror, rand = nx.rng_next(mirror)
        half = (slot % 4) % 2
        got = ELEMENTS[ElemType.BF16].unpack(cfg, data)[half * cfg.lanes:(half + 1) * cfg.lanes]
        assert list(got) == [int(x) for x in nx.bf16_from_f32_sr(bits(a), rand)]
    assert state.rng == mirror
    state.reseed(0)
    assert state.rng == nx.rng_seed_states(0, cfg.lanes) == VectorUnitState(cfg).rng
    copy = state.copy()
    vector_op(cfg, code("CVT_F32_BF16_SR"), a, 0, state=state)
    assert copy.rng == nx.rng_seed_states(0, cfg.lanes) != state.rng


def test_model_matches_ops_table_lane_references():
    """vector_op on random words = each op's `lanes` reference on its groups (the table), in
    group slot % groups(dst) of the word, nothing outside its mask."""
    rng = np.random.default_rng(bench_seed())
    cfg = TileConfig.preset("default")
    n = cfg.lanes
    for c, spec in VECTOR_OPS.items():
        if spec.reduce or spec.stochastic:
            continue
        src, dst = ELEMENTS[spec.src], ELEMENTS[spec.dst]
        for _ in range(20):
            a, b = (int.from_bytes(rng.bytes(cfg.word_bytes), "little") for _ in range(2))
            slot, q = int(rng.integers(4)), int(rng.integers(1 << 32))
            data, mask = vector_op(cfg, c, a, b, 3, 4, slot, 1, q)
            lanes_b = src.unpack(cfg, b) if spec.binary else None
            ref = spec.lanes(src.group(cfg, a, slot % src.groups), lanes_b, Params(3, 4, 1, q))
            g = slot % dst.groups
            assert list(dst.group(cfg, data, g)) == list(dst.unpack(cfg, dst.pack(cfg, ref))[:n])
            enabled = sum(0xFF << (8 * k) for k in range(cfg.word_bytes) if mask >> k & 1)
            assert data & ~enabled == 0 and mask == ((1 << n * dst.bits // 8) - 1) << (
                g * n * dst.bits // 8), spec.name


@pytest.mark.parametrize("preset", ["tiny", "default"])
def test_kernels_match_the_reference_on_every_op(preset):
    """`vector_op` runs each op's kernel (Python scalars, `vector_kernel`); they give
    `vector_op_reference`'s (the NumPy lane references') data, mask, accumulator and generator
    states: every code (undefined ones too), every slot, first / last, random parameters, on
    words whose lanes are the contract's special values, random FP32 biased to its edges (NaN
    payloads, subnormals, Inf, ties), BF16 halves of them, and random or extreme integers."""
    cfg = TileConfig.preset(preset)
    seed = bench_seed()
    rng = random.Random(seed)

    def lane(kind):
        if kind == "fp32":
            return nx.random_fp32(rng, 0.3)
        if kind == "bf16":
            return nx.random_fp32(rng, 0.3) >> 16 | nx.random_fp32(rng, 0.3) & 0xFFFF_0000
        return rng.choice([rng.getrandbits(32), rng.getrandbits(8) * 0x0101_0101,
                           rng.choice([0, 0xFFFF_FFFF, 0x8000_0000, 0x7FFF_FFFF, 0x7F80_7F80])])

    def word(kind):
        return sum(lane(kind) << (32 * k) for k in range(cfg.lanes))

    kinds = {ElemType.FP32: "fp32", ElemType.BF16: "bf16"}
    for _ in range(400):
        for code_ in range(1 << 5):
            spec = VECTOR_OPS.get(code_)
            kind = kinds.get(spec.src, "int") if spec else rng.choice(["fp32", "int"])
            a, b, acc = word(kind), word(kind), word("fp32")
            q = rng.choice([nx.random_fp32(rng, 0.3), 0x3F80_0000, rng.getrandbits(32)])
            fields = (rng.randrange(1 << 16), rng.randrange(64), rng.randrange(4),
                      rng.randrange(2), q, rng.randrange(2), rng.randrange(2))
            states = [VectorUnitState(cfg, rng.getrandbits(32))]
            states.append(states[0].copy())
            states[0].acc_word = states[1].acc_word = acc
            got = vector_op(cfg, code_, a, b, *fields, state=states[0])
            ref = vector_op_reference(cfg, code_, a, b, *fields, state=states[1])
            what = (f"{spec.name if spec else code_}: a={a:#x} b={b:#x} fields={fields} "
                    f"acc={acc:#x} (seed {seed})")
            assert got == ref, what
            assert states[0].acc_word == states[1].acc_word, what
            assert states[0].rng == states[1].rng, what


def test_unit_state_accumulator_views():
    """`acc` (lanes, uint32) and `acc_word` (one integer) are the same register."""
    state = VectorUnitState(TINY)
    assert state.acc_word == 0 and state.acc.dtype == np.uint32 and not state.acc.any()
    state.acc = [1, 0x8000_0000, 3, 0xFFFF_FFFF]
    assert state.acc_word == word_from_lanes([1, 0x8000_0000, 3, 0xFFFF_FFFF])
    assert [int(v) for v in state.copy().acc] == [1, 0x8000_0000, 3, 0xFFFF_FFFF]


# -- requantize (NumPy) agrees with vector_op --------------------------------------------------

def biased_lanes(rng, shape):
    values = rng.integers(INT32_MIN, INT32_MAX, size=shape, endpoint=True)
    pick = rng.random(shape)
    values = np.where(pick < 0.3, rng.choice(EXTREMES, size=shape), values)
    return np.where((pick >= 0.3) & (pick < 0.5), rng.integers(-300, 300, size=shape), values)


@pytest.mark.parametrize("preset", ["tiny", "default"])
def test_requantize_matches_vector_op(preset):
    cfg = TileConfig.preset(preset)
    n = cfg.lanes
    seed = bench_seed()
    print(f"seed {seed} (replay: D1TILE_SEED={seed})")
    rng = np.random.default_rng(seed)
    count = 3000
    acc = biased_lanes(rng, (count, n))
    scale = rng.choice(np.array([0, 1, 65535, 3, 255]), size=count)
    scale = np.where(rng.random(count) < 0.5, rng.integers(0, 65536, size=count), scale)
    shift = rng.choice(np.array([0, 1, 31, 47, 63]), size=count)
    shift = np.where(rng.random(count) < 0.5, rng.integers(0, 64, size=count), shift)
    relu = rng.integers(0, 2, size=count)
    slot = rng.integers(0, 4, size=count)
    vec = requantize(acc, scale[:, None], shift[:, None], relu[:, None])
    assert vec.dtype == np.int8 and vec.shape == (count, n)
    for k in range(count):
        data, mask = vector_op(cfg, VecOp.REQUANT, word_from_lanes(acc[k]), 0, int(scale[k]),
                               int(shift[k]), int(slot[k]), int(relu[k]))
        got = bytes_from_word(data, cfg.word_bytes)[slot[k] * n:(slot[k] + 1) * n]
        assert list(got) == list(vec[k]), (
            f"row {k}: acc={list(acc[k])} scale={scale[k]} shift={shift[k]} relu={relu[k]}: "
            f"vector_op {list(got)}, requantize {list(vec[k])}")


def test_requantize_edge_grid():
    """Every extreme accumulator against every extreme scale and every shift, both relu."""
    acc = np.concatenate([EXTREMES, [INT32_MIN + 1, INT32_MAX - 1, 127, 128, -128, -129]])
    for scale in (0, 1, 2, 255, 256, 65535):
        for shift in range(64):
            for relu in (0, 1):
                vec = requantize(acc, scale, shift, relu)
                ref = [requantize_lane(int(x), scale, shift, relu) for x in acc]
                assert list(vec) == ref, f"scale={scale} shift={shift} relu={relu}"


def test_execute_packs_through_the_formats():
    cfg = TINY
    cmd = vector_cmd_format(cfg).pack(op=VecOp.ADD, a=word_from_lanes([1, 2, 3, 4]),
                                      b=word_from_lanes([10, 20, 30, 40]))
    result = vector_result_format(cfg).unpack(vector_execute(cfg, cmd))
    assert lanes(cfg, result["data"]) == [11, 22, 33, 44]
    assert result["mask"] == (1 << cfg.word_bytes) - 1


def test_ideal_cycles():
    assert VECTOR_LATENCY == 1
    assert [vector_ideal_cycles(n) for n in (0, 1, 64)] == [0, 2, 65]


# -- RTL ---------------------------------------------------------------------------------------

def test_vector_unit_interface_and_bad_config():
    from amaranth.lib import stream
    from amaranth.lib.wiring import In, Out
    from d1tile.hw.vector import VectorUnit
    unit = VectorUnit(TINY)
    members = unit.signature.members
    assert members["cmd"] == In(stream.Signature(vector_cmd_format(TINY).layout))
    assert members["result"] == Out(stream.Signature(vector_result_format(TINY).layout))
    assert members["seed"] == In(32) and members["reseed"] == In(1)
    assert unit.latency == VECTOR_LATENCY and unit.lanes == 4 and unit.cfg is TINY
    with pytest.raises(TypeError, match="TileConfig"):
        VectorUnit("tiny")


def test_vector_unit_routes_cover_the_table(monkeypatch):
    from d1tile.hw import vector
    assert set(vector._routes()) == set(VECTOR_OPS)
    monkeypatch.delitem(vector._ROUTES, "FSUM")
    with pytest.raises(ValueError, match="do not match the ops of VECTOR_OPS"):
        vector._routes()


def test_xorshift_gates_match_numerics():
    from amaranth.hdl import Module, Signal
    from amaranth.sim import Simulator
    from d1tile.hw.vector import xorshift32
    m = Module()
    s = Signal(32)
    out = Signal(32)
    m.d.comb += out.eq(xorshift32(s))
    values = [1, 0x9E37_79B9, 0xFFFF_FFFF, 0x8000_0000, 12345678]

    async def bench(ctx):
        for v in values:
            ctx.set(s, v)
            assert ctx.get(out) == nx.xorshift32(v), hex(v)

    sim = Simulator(m)
    sim.add_testbench(bench)
    sim.run()


def test_vector_unit_in_amaranth_sim():
    """A short random run in Amaranth's simulator (every op, reseeds in the cycle of a
    stochastic command: the reseed applies first), against vector_execute."""
    import random
    from amaranth.sim import Simulator
    from d1tile.hw.vector import VectorUnit
    cfg = TINY
    cmd_format = vector_cmd_format(cfg)
    rng = random.Random(bench_seed())
    dut = VectorUnit(cfg)
    sr = vector_op_of("CVT_F32_BF16_SR").code
    steps = []
    for k in range(200):
        op = sr if k % 3 == 0 else rng.choice(sorted(VECTOR_OPS) + [7, 31])
        fields = dict(op=op, a=rng.getrandbits(cfg.word_bits), b=rng.getrandbits(cfg.word_bits),
                      scale=rng.getrandbits(16), shift=rng.getrandbits(6),
                      slot=rng.getrandbits(2), relu=rng.getrandbits(1), q=rng.getrandbits(32),
                      first=rng.getrandbits(1), last=rng.getrandbits(1))
        seed = rng.getrandbits(32) if rng.random() < 0.3 else None
        steps.append((cmd_format.pack(**fields), seed))
    state = VectorUnitState(cfg)
    expected = []
    for cmd, seed in steps:
        if seed is not None:
            state.reseed(seed)
        expected.append(vector_execute(cfg, cmd, state))
    got = []

    async def bench(ctx):
        ctx.set(dut.result.ready, 1)
        for cmd, seed in steps:
            ctx.set(dut.cmd.valid, 1)
            ctx.set(dut.cmd.payload.as_value(), cmd)
            ctx.set(dut.reseed, seed is not None)
            ctx.set(dut.seed, seed or rng.getrandbits(32))
            await ctx.tick()
            got.append(ctx.get(dut.result.payload.as_value()) if ctx.get(dut.result.valid)
                       else None)

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()
    for k, (want, have) in enumerate(zip(expected, got)):
        assert want == have, f"command {k} ({VECTOR_OPS.get(steps[k][0] & 31)})"


def test_vector_unit_rtl():
    """The unit's own bench on the tiny preset; the default preset's unit is checked inside the
    vector engine's bench (tests/test_vpu.py, both presets), op for op."""
    from d1tile.hw.vector import VectorUnit
    cfg = TileConfig.preset("tiny")
    run_bench(lambda: VectorUnit(cfg), "vector_unit", cfg, "tb_vector")
