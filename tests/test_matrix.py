"""Tests of the matrix unit: the functional reference and timing description
(`d1tile.sim.matrix`), the payload layouts and constructor contract (`d1tile.hw.matrix`), the
cocotb bench on Verilator for both presets (tests/hw/tb_matrix.py), and the demo
(`d1tile.hw.matrix_demo.run_demo`)."""

from __future__ import annotations

import numpy as np
import pytest
from amaranth.hdl import Fragment

from conftest import bench_seed, run_bench
from d1tile import dtypes, numerics as nx
from d1tile.dtypes import MATRIX_TYPES, ElemType
from d1tile.formats import word_from_lanes
from d1tile.hw.matrix import (OPERAND_BITS, MatrixUnit, operand_layout, pack_operands,
                              row_layout, unpack_row)
from d1tile.hw.matrix_demo import run_demo
from d1tile.params import TileConfig
from d1tile.sim.matrix import (ACC_LATENCY, READOUT_LATENCY, MatrixUnitRef, busy_at,
                               earliest_readout_cycle, first_row_cycle, ideal_cycles,
                               matmul_reference, outer_product_beats, tile_count,
                               tiled_matmul_cycles)

INT8, BF16 = ElemType.INT8, ElemType.BF16


PRESETS = ["tiny", "default"]


@pytest.fixture
def rng():
    seed = bench_seed()
    print(f"numpy seed {seed} (replay: D1TILE_SEED={seed})")
    return np.random.default_rng(seed)


def random_int8(rng, *shape):
    return rng.integers(-128, 128, size=shape).astype(np.int8)


# -- functional reference -----------------------------------------------------------------------

@pytest.mark.parametrize("preset", PRESETS)
def test_ref_matches_numpy(preset, rng):
    cfg = TileConfig.preset(preset)
    n = cfg.mac_dim
    for _ in range(10):
        k = int(rng.integers(1, 3 * n + 1))
        A, B = random_int8(rng, n, k), random_int8(rng, k, n)
        ref = MatrixUnitRef(cfg)
        got = ref.run((a, b, i == 0) for i, (a, b) in enumerate(outer_product_beats(A, B)))
        expected = A.astype(np.int32) @ B
        assert np.array_equal(got, expected), f"K={k}: expected\n{expected}\ngot\n{got}"
        assert np.array_equal(got, matmul_reference(A, B))
        for i in range(n):
            assert np.array_equal(ref.read_row(i), expected[i].view(np.uint32)), f"row {i}"


def test_ref_bf16_is_the_k_loop_of_the_numeric_contract(rng):
    cfg = TileConfig.preset("default")
    n, k = cfg.mac_dim, 40
    A = nx.bf16_bits(rng.standard_normal((n, k)))
    B = nx.bf16_bits(rng.standard_normal((k, n)))
    ref = MatrixUnitRef(cfg)
    got = ref.run(((a, b, i == 0) for i, (a, b) in enumerate(outer_product_beats(A, B))), BF16)
    assert np.array_equal(got, nx.bf16_matmul(A, B))
    assert np.array_equal(got, matmul_reference(A, B, BF16))
    # mac_block (the cycle model's fast path) gives the same bits as beat by beat
    ref2 = MatrixUnitRef(cfg)
    ref2.mac_block(A.T, B, clear=True, dtype=BF16)
    assert np.array_equal(ref2.values(BF16), got)


def test_ref_clear_starts_from_the_types_identity():
    cfg = TileConfig.preset("tiny")
    n = cfg.mac_dim
    ref = MatrixUnitRef(cfg)
    neg_zero = np.full(n, 0x8000)
    ref.mac(neg_zero, np.full(n, 0x3F80), clear=True, dtype=BF16)     # -0 x 1 after clear
    assert (ref.acc == 0x8000_0000).all(), "clear must keep a -0 product (it adds to -0)"
    ref.mac(np.zeros(n, np.int64), np.zeros(n, np.int64), clear=True, dtype=INT8)
    assert not ref.acc.any()
    # without clear a type change reinterprets the bits
    ref.mac(np.full(n, 0x3F80), np.full(n, 0x3F80), clear=True, dtype=BF16)   # 1.0
    ref.mac(np.ones(n, np.int64), np.ones(n, np.int64), dtype=INT8)           # + 1 as int32
    assert (ref.acc == 0x3F80_0001).all()


def test_ref_clear_and_accumulate(rng):
    cfg = TileConfig.preset("tiny")
    n = cfg.mac_dim
    ref = MatrixUnitRef(cfg)
    assert not ref.acc.any(), "accumulators must start at zero"
    a1, b1, a2, b2 = (random_int8(rng, n) for _ in range(4))
    outer1 = np.outer(a1.astype(np.int32), b1)
    outer2 = np.outer(a2.astype(np.int32), b2)
    ref.mac(a1, b1, clear=False)
    assert np.array_equal(ref.values(), outer1)
    ref.mac(a2, b2, clear=False)
    assert np.array_equal(ref.values(), outer1 + outer2), "a beat without clear must accumulate"
    ref.mac(a2, b2, clear=True)
    assert np.array_equal(ref.values(), outer2), "a beat with clear must replace the sums"
    ref.reset()
    assert not ref.acc.any()


def test_ref_wraps_int32():
    spec = MATRIX_TYPES[INT8]
    acc = np.full((2, 2), 2**31 - 1, dtype=np.int32).view(np.uint32)
    got = spec.values(spec.beat(acc, np.array([1, -1]), np.array([1, 2])))
    assert got.dtype == np.int32
    assert got.tolist() == [[-2**31, -2**31 + 1], [2**31 - 2, 2**31 - 3]]
    # 131073 beats of (-128) * (-128) overflow int32 once.
    k = 131073
    A, B = np.full((2, k), -128, dtype=np.int8), np.full((k, 2), -128, dtype=np.int8)
    assert matmul_reference(A, B)[0, 0] == k * 16384 - 2**32


def test_ref_rejects_bad_input():
    cfg = TileConfig.preset("tiny")
    ref = MatrixUnitRef(cfg)
    with pytest.raises(ValueError, match=r"a\[2\]=128"):
        ref.mac([0, 0, 128, 0], [0] * 4)
    with pytest.raises(ValueError, match=r"b\[0\]=-129"):
        ref.mac([0] * 4, [-129, 0, 0, 0])
    with pytest.raises(ValueError, match="shape"):
        ref.mac([0] * 3, [0] * 4)
    with pytest.raises(ValueError, match="dtype"):
        ref.mac([0.5] * 4, [0] * 4)
    with pytest.raises(ValueError, match="row 4"):
        ref.read_row(4)
    with pytest.raises(ValueError, match="FP32"):
        ref.mac([0] * 4, [0] * 4, dtype=ElemType.FP32)
    with pytest.raises(ValueError, match="7 is not an element type"):
        ref.mac([0] * 4, [0] * 4, dtype=7)
    with pytest.raises(ValueError, match=r"a\[1\]=65536"):
        ref.mac([0, 65536, 0, 0], [0] * 4, dtype=BF16)
    with pytest.raises(TypeError, match="TileConfig"):
        MatrixUnitRef({"mac_dim": 4})


def test_outer_product_beats():
    A = np.arange(8).reshape(4, 2)
    B = np.arange(8).reshape(2, 4) * 10
    beats = outer_product_beats(A, B)
    assert len(beats) == 2
    assert beats[1][0].tolist() == [1, 3, 5, 7] and beats[1][1].tolist() == [40, 50, 60, 70]
    with pytest.raises(ValueError, match="not"):
        outer_product_beats(A, B.T)
    with pytest.raises(ValueError, match="K = 0"):
        outer_product_beats(np.zeros((4, 0)), np.zeros((0, 4)))


# -- timing description -------------------------------------------------------------------------

def simulate_tiled_schedule(cfg: TileConfig, m: int, k: int, n: int) -> int:
    """An independent cycle-by-cycle walk of the demo's schedule under the documented rules
    (a beat is taken in every cycle it is offered; a readout request only when `busy_at` is
    false, `rd_data` being always ready; the row follows READOUT_LATENCY later); returns the
    cycles from the first beat to the last row, both counted."""
    dim = cfg.mac_dim
    tiles = tile_count(cfg, m, n)
    beats, last_row = [], None
    tile, index, row, cycle = 0, 0, 0, 0
    while tile < tiles:
        if index < k:
            beats.append(cycle)
            index += 1
        elif not busy_at(cycle, beats):
            last_row = cycle + READOUT_LATENCY
            row += 1
            if row == dim:
                tile, row, index = tile + 1, 0, 0
                if tile < tiles:        # the next tile's first beat rides with the last request
                    beats.append(cycle)
                    index = 1
        cycle += 1
    return last_row - beats[0] + 1


def test_timing_description():
    assert ACC_LATENCY == MATRIX_TYPES[INT8].pipeline_depth == MATRIX_TYPES[BF16].pipeline_depth == 2
    assert READOUT_LATENCY == 1
    assert [busy_at(c, [10]) for c in range(9, 14)] == [False, False, True, False, False]
    assert earliest_readout_cycle(10) == 10 + ACC_LATENCY
    assert first_row_cycle(10) == 10 + ACC_LATENCY + READOUT_LATENCY
    for preset in PRESETS:
        cfg = TileConfig.preset(preset)
        for m, k, n in [(1, 1, 1), (4, 4, 4), (6, 5, 7), (8, 1, 16), (16, 24, 9), (3, 2, 33)]:
            assert tiled_matmul_cycles(cfg, m, k, n) == simulate_tiled_schedule(cfg, m, k, n), (
                f"{preset} {m}x{k}x{n}")
            assert tiled_matmul_cycles(cfg, m, k, n) >= ideal_cycles(cfg, m, k, n)
    with pytest.raises(ValueError, match="k=0"):
        tiled_matmul_cycles(TileConfig.preset("tiny"), 4, 0, 4)


# -- layouts and constructor ----------------------------------------------------------------------

@pytest.mark.parametrize("preset", PRESETS)
def test_payload_layouts(preset, rng):
    cfg = TileConfig.preset(preset)
    n = cfg.mac_dim
    assert OPERAND_BITS == 16
    assert operand_layout(cfg).size == 2 * 16 * n + 1 + 2 + 1
    assert row_layout(cfg).size == 32 * n == cfg.word_bits
    a, b = random_int8(rng, n), random_int8(rng, n)
    # Independent construction: a[0] in the low 16 bits (an int8 two's complement, widened),
    # then b, then clear, then the type, then the bank.
    widen = lambda v: v.astype(np.int16).tobytes()
    expected = int.from_bytes(widen(a) + widen(b), "little") | (1 << (32 * n))
    assert pack_operands(cfg, a, b, True) == expected
    assert pack_operands(cfg, a, b, False) == expected ^ (1 << (32 * n))
    h = rng.integers(0, 1 << 16, size=n)
    assert pack_operands(cfg, h, h, False, BF16) == (
        int.from_bytes(h.astype("<u2").tobytes() * 2, "little") | (int(BF16) << (32 * n + 1)))
    assert pack_operands(cfg, a, b, False, bank=1) == (expected ^ (1 << (32 * n))) | (
        1 << (32 * n + 3))
    lanes = rng.integers(-2**31, 2**31, size=n)
    assert unpack_row(cfg, word_from_lanes(lanes)) == lanes.tolist(), \
        "a readout row must be an SRAM word of int32 lanes"
    assert unpack_row(cfg, word_from_lanes(lanes), BF16) == (lanes & 0xFFFF_FFFF).tolist()
    with pytest.raises(ValueError, match=r"a\[0\]=200"):
        pack_operands(cfg, [200] + [0] * (n - 1), [0] * n, False)


def test_matrix_unit_contract():
    cfg = TileConfig.preset("tiny")
    unit = MatrixUnit(cfg)
    Fragment.get(unit, None)   # elaborates without error (and marks the component as used)
    assert unit.n == 4
    assert unit.acc_latency == ACC_LATENCY and unit.readout_latency == READOUT_LATENCY
    assert set(unit.signature.members) == {"operands", "busy", "bank_busy", "rd_req", "rd_data"}
    with pytest.raises(AttributeError):
        unit.n = 8
    with pytest.raises(TypeError, match="TileConfig"):
        MatrixUnit(4)


# -- RTL on Verilator -----------------------------------------------------------------------------

def test_matrix_unit_bench():
    """The unit's own bench on the tiny preset. The default preset's unit (N = 8) is checked
    inside the matrix engine's bench (tests/test_mxu.py, both presets), beat for beat and row
    for row: one Verilator build per configuration of the unit, not two (each takes minutes)."""
    cfg = TileConfig.preset("tiny")
    run_bench(lambda: MatrixUnit(cfg), "matrix_unit", cfg, "tb_matrix")


def test_demo_tiny():
    cfg = TileConfig.preset("tiny")
    m, k, n = 6, 5, 7
    lines = []
    report = run_demo(cfg, m, k, n, seed=bench_seed(), log=lines.append)
    assert report["match"], f"demo result differs from NumPy: {report}"
    assert report["mismatches"] == 0
    assert report["ideal_cycles"] == m * k * n / cfg.mac_dim ** 2
    assert report["cycles"] >= report["ideal_cycles"], report
    assert report["cycles"] == tiled_matmul_cycles(cfg, m, k, n), (
        f"demo took {report['cycles']} cycles, the timing description predicts "
        f"{tiled_matmul_cycles(cfg, m, k, n)}")
    assert report["tiles"] == 4 and report["utilisation"] <= 1.0
    assert any("matrix demo" in line for line in lines), lines


def test_demo_tiny_bf16():
    """The bf16 demo: bit-exact with the FP32 k-loop reference, within FP32 summation error of
    the float64 product of the same operands, and timed like the int8 demo."""
    cfg = TileConfig.preset("tiny")
    m, k, n = 5, 24, 6
    report = run_demo(cfg, m, k, n, seed=bench_seed(), dtype="bf16")
    assert report["dtype"] == "bf16" and report["match"], report
    assert report["cycles"] == tiled_matmul_cycles(cfg, m, k, n)
    assert 0 <= report["max_abs_error"] <= k * 2.0 ** -24 * 4 * report["reference_max_abs"] + 1e-6
    with pytest.raises(ValueError, match="dtype 'fp8'"):
        run_demo(cfg, m, k, n, seed=1, dtype="fp8")


@pytest.mark.parametrize("dims, name", [((0, 4, 4), "m=0"), ((4, -1, 4), "k=-1"),
                                        ((4, 4, 2.5), "n=2.5")])
def test_demo_rejects_bad_dimensions(dims, name):
    with pytest.raises(ValueError, match=name):
        run_demo(TileConfig.preset("tiny"), *dims, seed=1)


@pytest.mark.parametrize("depth", [1, 3])
def test_pipeline_depth_comes_from_the_table(depth, monkeypatch, rng):
    """The array takes its depth from the type table: with every type's entry patched to
    another depth, `busy` and the readout gate move with it (Amaranth's simulator, quick)."""
    import dataclasses
    from amaranth.sim import Simulator

    from d1tile.sim import matrix as sim_matrix
    for t in list(MATRIX_TYPES):
        monkeypatch.setitem(dtypes.MATRIX_TYPES, t,
                            dataclasses.replace(MATRIX_TYPES[t], pipeline_depth=depth))
    assert sim_matrix.acc_latency() == depth

    cfg = TileConfig.preset("tiny")
    n, k = cfg.mac_dim, 3
    A, B = random_int8(rng, n, k), random_int8(rng, k, n)
    beats = outer_product_beats(A, B)
    unit = MatrixUnit(cfg)
    log = {"beats": [], "requests": [], "rows": {}, "busy": {}}

    async def bench(ctx):
        ctx.set(unit.rd_data.ready, 1)
        next_req = 0
        for cycle in range(k + depth + n + 4):
            offer_beat = cycle < k
            ctx.set(unit.operands.valid, offer_beat)
            if offer_beat:
                a, b = beats[cycle]
                ctx.set(unit.operands.payload.as_value(), pack_operands(cfg, a, b, cycle == 0))
            offer_req = cycle >= k and next_req < n
            ctx.set(unit.rd_req.valid, offer_req)
            ctx.set(unit.rd_req.p.row, next_req % n)
            log["busy"][cycle] = ctx.get(unit.busy)
            if ctx.get(unit.rd_data.valid):
                log["rows"][cycle] = list(ctx.get(unit.rd_data.payload))
            if offer_beat:
                log["beats"].append(cycle)
            if offer_req and ctx.get(unit.rd_req.ready):
                log["requests"].append(cycle)
                next_req += 1
            await ctx.tick()

    sim = Simulator(unit)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()

    for cycle, busy in log["busy"].items():
        assert busy == busy_at(cycle, log["beats"]), f"depth {depth}, cycle {cycle}: busy {busy}"
    assert log["requests"][0] == earliest_readout_cycle(log["beats"][-1]), (
        f"depth {depth}: first request accepted in cycle {log['requests'][0]}, expected "
        f"{earliest_readout_cycle(log['beats'][-1])}")
    expected = (A.astype(np.int32) @ B).view(np.uint32)
    for row, cycle in enumerate(log["requests"]):
        assert log["rows"][cycle + READOUT_LATENCY] == expected[row].tolist(), (
            f"depth {depth}: row {row}")


def test_transposed_readout_reads_columns(rng):
    """`rd_req.col`: the unit returns column i of the bank (lane j = acc[j][i]) with the row
    readout's timing; the model's `read_row(i, bank, col=True)` is the same column; both
    against A @ B of NumPy (int32, exact)."""
    from amaranth.sim import Simulator

    cfg = TileConfig.preset("tiny")
    n, k = cfg.mac_dim, 3
    A, B = random_int8(rng, n, k), random_int8(rng, k, n)
    beats = outer_product_beats(A, B)
    expected = (A.astype(np.int32) @ B).view(np.uint32)
    ref = MatrixUnitRef(cfg)
    ref.run(((a, b, i == 0) for i, (a, b) in enumerate(beats)), bank=1)
    for i in range(n):
        assert np.array_equal(ref.read_row(i, 1, col=True), expected[:, i]), f"column {i}"
        assert np.array_equal(ref.read_row(i, 1), expected[i]), f"row {i}"
    unit = MatrixUnit(cfg)
    got = {}

    async def bench(ctx):
        ctx.set(unit.rd_data.ready, 1)
        for cycle, (a, b) in enumerate(beats):
            ctx.set(unit.operands.valid, 1)
            ctx.set(unit.operands.payload.as_value(),
                    pack_operands(cfg, a, b, cycle == 0, bank=1))
            await ctx.tick()
        ctx.set(unit.operands.valid, 0)
        requests = [(i, col) for i in range(n) for col in (1, 0)]
        pending = None
        while requests or ctx.get(unit.rd_data.valid):
            if ctx.get(unit.rd_data.valid):
                got[pending] = list(ctx.get(unit.rd_data.payload))
            if requests:
                i, col = requests[0]
                ctx.set(unit.rd_req.valid, 1)
                ctx.set(unit.rd_req.p.row, i)
                ctx.set(unit.rd_req.p.bank, 1)
                ctx.set(unit.rd_req.p.col, col)
                taken = ctx.get(unit.rd_req.ready)
            else:
                ctx.set(unit.rd_req.valid, 0)
                taken = False
            await ctx.tick()
            pending = requests.pop(0) if taken else None

    sim = Simulator(unit)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    assert len(got) == 2 * n
    for (i, col), lanes in got.items():
        want = expected[:, i] if col else expected[i]
        assert lanes == want.tolist(), f"{'column' if col else 'row'} {i}"


@pytest.mark.parametrize("types", [(INT8,), (BF16,)])
def test_a_single_type_unit_computes_its_type_and_ignores_the_other(types, rng):
    """The cost builds' units (`MatrixUnit(cfg, types)`, `d1tile.hw.cost.matrix_unit_cost`)
    are still matrix units: beats of their type give the reference's bits, beats of the type
    they lack leave the accumulators as they are (Amaranth's simulator, quick)."""
    from amaranth.sim import Simulator
    cfg = TileConfig.preset("tiny")
    n, k = cfg.mac_dim, 3
    own = types[0]
    other = BF16 if own == INT8 else INT8
    operands = {INT8: (random_int8(rng, n, k), random_int8(rng, k, n)),
                BF16: (nx.bf16_bits(rng.standard_normal((n, k))),
                       nx.bf16_bits(rng.standard_normal((k, n))))}
    # own beats, then (after them) beats of the missing type, which must change nothing
    beats = [(a, b, i == 0, own) for i, (a, b) in enumerate(outer_product_beats(*operands[own]))]
    beats += [(a, b, True, other) for a, b in outer_product_beats(*operands[other])]
    unit = MatrixUnit(cfg, types)
    assert unit.types == types
    rows = {}

    async def bench(ctx):
        ctx.set(unit.rd_data.ready, 1)
        for a, b, clear, dtype in beats:
            ctx.set(unit.operands.valid, 1)
            ctx.set(unit.operands.payload.as_value(), pack_operands(cfg, a, b, clear, dtype))
            await ctx.tick()
        ctx.set(unit.operands.valid, 0)
        for row in range(n):
            ctx.set(unit.rd_req.valid, 1)
            ctx.set(unit.rd_req.p.row, row)
            while not ctx.get(unit.rd_req.ready):
                await ctx.tick()
            await ctx.tick()
            ctx.set(unit.rd_req.valid, 0)
            rows[row] = list(ctx.get(unit.rd_data.payload))

    sim = Simulator(unit)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    expected = matmul_reference(*operands[own], own).astype(np.int64) & 0xFFFFFFFF
    for row in range(n):
        assert rows[row] == expected[row].tolist(), f"{own.name}-only unit, row {row}"


def test_a_unit_of_no_or_unknown_types_is_refused():
    with pytest.raises(ValueError, match="non-empty subset"):
        MatrixUnit(TileConfig.preset("tiny"), ())
    with pytest.raises(ValueError, match="non-empty subset"):
        MatrixUnit(TileConfig.preset("tiny"), (ElemType.FP32,))
