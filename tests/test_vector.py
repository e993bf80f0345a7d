"""The vector unit: the reference model on its own (pure Python), and the RTL against it
(cocotb bench tests/hw/tb_vector.py on Verilator, both presets)."""

from __future__ import annotations

import numpy as np
import pytest

from d1tile.formats import FormatError, VecOp, bytes_from_word, lanes_from_word, word_from_lanes
from d1tile.params import TileConfig
from d1tile.sim.vector import (INT32_MAX, INT32_MIN, VECTOR_LATENCY, requantize, requantize_lane,
                               vector_cmd_format, vector_execute, vector_ideal_cycles, vector_op,
                               vector_result_format)

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
        ("op", 3), ("a", cfg.word_bits), ("b", cfg.word_bits), ("scale", 16), ("shift", 6),
        ("slot", 2), ("relu", 1)]
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


@pytest.mark.parametrize("op", [5, 6, 7])
def test_undefined_ops_write_nothing(op):
    a = word_from_lanes([1, 2, 3, 4])
    assert vector_op(TINY, op, a, a, 5, 6, 1, 1) == (0, 0)


def test_bad_arguments_name_the_field():
    with pytest.raises(FormatError, match="op"):
        vector_op(TINY, 8, 0, 0)
    with pytest.raises(FormatError, match="shift"):
        vector_op(TINY, VecOp.REQUANT, 0, 0, shift=64)
    with pytest.raises(FormatError, match=r"\.a="):
        vector_op(TINY, VecOp.ADD, -1, 0)
    with pytest.raises(ValueError, match="scale"):
        requantize([1], 65536, 0)
    with pytest.raises(ValueError, match="acc"):
        requantize([INT32_MAX + 1], 1, 0)
    with pytest.raises(TypeError, match="acc"):
        requantize([1.5], 1, 0)


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

def test_vector_unit_rejects_bad_config():
    from d1tile.hw.vector import VectorUnit
    with pytest.raises(TypeError, match="TileConfig"):
        VectorUnit("tiny")


def test_vector_unit_rtl(preset_cfg):
    from d1tile.hw.vector import VectorUnit
    run_bench(lambda: VectorUnit(preset_cfg), "vector_unit", preset_cfg, "tb_vector")
