"""The cycle model's fast paths change nothing: resting nodes, jumps over idle stretches and
steady streams (`d1tile.sim.tile`, `d1tile.sim.node`, `d1tile.sim.streams`) give the results of
stepping every node in every cycle (`TileModel(cfg, fast=False)`), to the cycle and to the
counter, on random, compute-heavy, racy, faulting and hanging programs; and the parts they
rely on (`MatrixEngineModel.run_alone`, `HostDriver.end_cycles`) do what their step-by-step
counterparts do. The model against the RTL is `tests/test_tile.py` and `d1tile verify`; the
speed is measured by `bench/model_vs_verilator.py`. The issue trace (`TileModel(cfg,
trace=True)`) is the same fast or slow, and the one rebuilt from the outside, cycle by cycle,
from the nodes' `instructions` counters."""

from __future__ import annotations

import random

import pytest

from conftest import bench_seed
from d1tile.formats import COUNTER_NAMES
from d1tile.isa import VecOp
from d1tile.params import TileConfig
from d1tile.sim.host import HostDriver
from d1tile.isa import ACC_BANKS, SYNC_COUNTERS, LoopControl, Opcode, decode, encode
from d1tile.sim.mxu import MatrixEngineModel, matmul_cycles
from d1tile.sim.tile import TileModel
from d1tile.sw.asm import Program
from d1tile.sw.program import TileProgram
from d1tile.sw.randprog import random_tile_program

TINY = TileConfig.preset("tiny")


def compute_program(cfg: TileConfig, rng: random.Random) -> TileProgram:
    """Every node: chains of MATMULs, an MREAD, a REQUANT, rows sent to a neighbour, a WAIT."""
    tp = TileProgram(cfg)
    words, n = cfg.sram_words, cfg.mac_dim
    kw = words // 8
    for node in tp.nodes:
        tp.load(node, 0, [rng.randrange(1 << cfg.word_bits) for _ in range(2 * kw)])
    for x, y in tp.nodes:
        p = tp.node(x, y)
        for phase in range(2):
            for m in range(3):
                k = rng.randint(1, kw)
                p.matmul(rng.randrange(kw - k + 1), kw + rng.randrange(kw - k + 1), k,
                         clear=m == 0)
            out = 2 * kw + phase * n
            p.mread(out)
            p.vec(VecOp.REQUANT, 2 * kw + 2 * n + phase, out, 0, n)
            p.send(out, n, ((x + 1) % cfg.cols, y), words // 2 + phase * n, counter=phase)
            p.wait(phase, 1)
        p.halt()
        tp.read(node=(x, y), addr=0, n=words)
    return tp


def racy_program(cfg: TileConfig, rng: random.Random) -> TileProgram:
    """Not race-free on purpose (the model must be exact whatever the program): SENDs land in
    the operands of running MATMULs, nodes send to themselves, long packets cross, some
    instructions fault and some WAITs are never satisfied."""
    tp = TileProgram(cfg)
    words = cfg.sram_words
    for node in tp.nodes:
        tp.load(node, 0, [rng.randrange(1 << cfg.word_bits) for _ in range(words // 2)])
        p = Program(cfg, check=False)
        for _ in range(rng.randint(2, 12)):
            k = rng.random()
            if k < 0.35:
                kw = rng.randint(1, words // 4)
                p.matmul(rng.randrange(words - kw), rng.randrange(words - kw), kw,
                         clear=rng.random() < 0.3)
            elif k < 0.45:
                p.mread(rng.randrange(words - cfg.mac_dim))
            elif k < 0.55:
                n = rng.randint(1, 12)
                p.emit(Opcode.VEC, vop=int(rng.choice(list(VecOp))), dst=rng.randrange(words - n),
                       a=rng.randrange(words - n), b=rng.randrange(words - n), n=n, bfix=0)
            elif k < 0.85:
                n = rng.choice([0, 1, rng.randint(1, words // 2)])
                to = node if rng.random() < 0.2 else rng.choice(tp.nodes)
                p.send(rng.randrange(words - n + 1), n, to, rng.randrange(words - n + 1),
                       rng.randrange(SYNC_COUNTERS))
            elif k < 0.95:
                p.wait(rng.randrange(SYNC_COUNTERS), rng.choice([1, 1, 2]))
            else:
                p.word(encode(Opcode.NOP) | 0xC)        # undefined opcode: a fault
        p.halt()
        tp.programs[node] = p
        tp.read(node, 0, words)
    return tp


def final_state(model: TileModel) -> dict:
    """What a run leaves in the tile beyond its `RunResult`."""
    return {node: (m.sram.dump(), list(m.seq.counters),
                   [m.mxu.unit.bank_acc(b).tolist() for b in range(ACC_BANKS)],
                   list(model.mesh.routers[node].flits_in), m.sram.cycle, m.mxu.cycle)
            for node, m in model.nodes.items()}


def both_ways(tp: TileProgram, hang_cycles: int = 2000):
    fast, slow = TileModel(tp.cfg), TileModel(tp.cfg, fast=False)
    results = [model.run(tp, hang_cycles=hang_cycles) for model in (fast, slow)]
    assert results[0].comparable() == results[1].comparable()
    assert final_state(fast) == final_state(slow)
    return results[0]


CASES = {
    "random 2x2": lambda rng: random_tile_program(TINY, rng),
    "random 3x3, 3-flit FIFOs, 2 banks": lambda rng: random_tile_program(
        TINY.replace(router_fifo_depth=3, sram_banks=2).with_grid(3, 3), rng),
    "compute 4x4": lambda rng: compute_program(TINY.with_grid(4, 4), rng),
    "racy 2x3": lambda rng: racy_program(TINY.with_grid(2, 3), rng),
    "racy 3x2, 4-flit FIFOs": lambda rng: racy_program(
        TINY.replace(router_fifo_depth=4).with_grid(3, 2), rng),
}


@pytest.mark.parametrize("case", CASES)
def test_fast_paths_give_the_results_of_stepping_every_cycle(case):
    seed = bench_seed()
    for i in range(3):
        tp = CASES[case](random.Random(f"{seed}:{case}:{i}"))
        both_ways(tp, hang_cycles=random.Random(i).choice([40, 300, 2000]))


def test_a_hang_is_reported_at_the_same_cycle():
    """Every node waits forever: the run jumps over the quiet cycles in chunks shorter than
    the hang horizon, and stops exactly where stepping stops."""
    tp = TileProgram(TINY)
    for x, y in tp.nodes:
        tp.node(x, y).wait(3, 1)
        tp.node(x, y).halt()
    for hang_cycles in (1, 2, 7, 300, 2000):
        result = both_ways(tp, hang_cycles=hang_cycles)
        assert result.hang is not None and f"no activity for {hang_cycles} cycles" in result.hang


def test_run_alone_is_tick_by_tick_with_every_read_granted():
    rng = random.Random(bench_seed())
    for _ in range(60):
        cfg = rng.choice([TINY, TileConfig.preset("default")])
        words = cfg.sram_words
        memory = [rng.randrange(1 << cfg.word_bits) for _ in range(words)]
        engines = [MatrixEngineModel(cfg) for _ in range(2)]
        kw = rng.randint(1, 24)
        word = encode(Opcode.MATMUL, a=rng.randrange(words - kw), b=rng.randrange(words - kw),
                      kw=kw, clear=rng.randint(0, 1))
        pending = [None, None]           # the read granted last cycle, per engine
        refuse = rng.random()
        for engine in engines:
            engine.tick(start=True, instr=word)
        for _ in range(rng.randrange(4 * kw)):   # a start with random refusals, in lockstep
            for k, engine in enumerate(engines):
                addr = engine.sram_reads()[0]
                granted = addr is not None and rng.random() >= refuse if k == 0 else granted
                data = memory[pending[k]] if pending[k] is not None else None
                engine.tick(read_grants=[granted], read_data=[data])
                pending[k] = addr if granted else None
        if engines[0].idle:
            continue
        fast, slow = engines
        saved = fast.snapshot()
        cut = rng.randint(0, 4 * kw)
        first = memory[pending[0]] if pending[0] is not None else None
        ran, reads, last = fast.run_alone(memory, first, limit=cut)
        fast.restore(saved)
        ran, reads, last = fast.run_alone(memory, first)      # the whole way, after a restore
        granted_at = []
        for t in range(ran):
            addr = slow.sram_reads()[0]
            data = memory[pending[1]] if pending[1] is not None else None
            slow.tick(read_grants=[addr is not None], read_data=[data])
            pending[1] = addr
            if addr is not None:
                granted_at.append(t)
        assert slow.idle and reads == granted_at and last == pending[1]
        registers = lambda e: (e.rword, e.rhalf, e.c, e.beat_index, e.lpairs, e.pend, e.slots,
                               e.pipe, e.cycle, e.beats, e.unit.acc.tolist())
        assert registers(fast) == registers(slow)


def test_end_cycles_is_end_cycle_repeated():
    rng = random.Random(bench_seed())
    tp = TileProgram(TINY)
    for _ in range(200):
        hang_cycles = rng.randint(1, 50)
        bulk, single = (HostDriver(TINY, tp, hang_cycles=hang_cycles) for _ in range(2))
        for driver in (bulk, single):
            driver.queues = [type(q)() for q in driver.queues]    # nothing left to send
        cycle = 0
        while not single.hung and cycle < 400:
            n = rng.randint(0, bulk.skippable())
            active = [rng.random() < 0.3 for _ in range(n)]
            last = max((cycle + k for k in range(n) if active[k]), default=None)
            bulk.end_cycles(cycle, n, last)
            for k in range(n):
                single.end_cycle(cycle + k, active[k])
            assert (bulk.quiet, bulk.last_cycle, bulk.hang) == \
                (single.quiet, single.last_cycle, single.hang)
            active_now = rng.random() < 0.3
            for driver in (bulk, single):
                driver.end_cycle(cycle + n, active_now)
            assert (bulk.quiet, bulk.hang) == (single.quiet, single.hang)
            cycle += n + 1
        with pytest.raises(ValueError):
            bulk.end_cycles(cycle, bulk.skippable() + 1, None)


# -- the issue trace (TileModel(cfg, trace=True)) ---------------------------------------------

_ISSUED = COUNTER_NAMES.index("instructions")


def stepped_trace(tp: TileProgram, hang_cycles: int):
    """The issue trace rebuilt without the trace, from the outside: stepping every node in every
    cycle (fast=False: one `step` per cycle from cycle 0), an instruction issued in the step in
    which the node's `instructions` counter moved, at the pc the node had before that step."""
    model = TileModel(tp.cfg, fast=False)
    seen = {node: [] for node in model.nodes}
    step, steps = model.step, [0]

    def watched(offers):
        before = {node: (m.counters[_ISSUED], m.seq.pc) for node, m in model.nodes.items()}
        out = step(offers)
        for node, m in model.nodes.items():
            count, pc = before[node]
            assert m.counters[_ISSUED] - count in (0, 1)
            if m.counters[_ISSUED] != count:
                seen[node].append((pc, steps[0]))
        steps[0] += 1
        return out

    model.step = watched
    result = model.run(tp, hang_cycles=hang_cycles)
    assert steps[0] == result.total_cycles + 1       # the steps are the run's cycles 0, 1, ...
    return result, seen


def issued_pcs(cfg, words) -> list[int]:
    """The pcs a fault-free program issues, HALT included: loops followed by the ISA's rules
    (`isa.LoopControl`), so a straight-line program gives 0, 1, ..., len - 1."""
    loops, pc, pcs = LoopControl(cfg), 0, []
    while True:
        pcs.append(pc)
        instr = decode(loops.effective(words[pc]))
        if instr.op == Opcode.HALT:
            return pcs
        pc = loops.issue(instr, pc)


def traced_run(tp: TileProgram, hang_cycles: int = 2000):
    """Run `tp` traced, fast and slow; check that both traces are the one `stepped_trace`
    rebuilds and that tracing changes no result. Returns the RunResult and the fast model."""
    fast, slow = (TileModel(tp.cfg, fast=f, trace=True) for f in (True, False))
    results = [model.run(tp, hang_cycles=hang_cycles) for model in (fast, slow)]
    plain, outside = stepped_trace(tp, hang_cycles)
    assert results[0].comparable() == results[1].comparable() == plain.comparable()
    assert fast.issue_trace == slow.issue_trace == outside
    return results[0], fast


TRACE_CASES = {
    "random 2x2": lambda rng: random_tile_program(TINY, rng),
    "random 3x3": lambda rng: random_tile_program(TINY.with_grid(3, 3), rng),
    "random 3x3, 3-flit FIFOs, 2 banks": lambda rng: random_tile_program(
        TINY.replace(router_fifo_depth=3, sram_banks=2).with_grid(3, 3), rng),
    "compute 2x2": lambda rng: compute_program(TINY, rng),
    "racy 2x3": lambda rng: racy_program(TINY.with_grid(2, 3), rng),
}


@pytest.mark.parametrize("case", TRACE_CASES)
def test_the_issue_trace_is_exact_and_the_same_fast_or_slow(case):
    seed = bench_seed()
    for i in range(3):
        tp = TRACE_CASES[case](random.Random(f"{seed}:trace:{case}:{i}"))
        hang_cycles = random.Random(i).choice([40, 300, 2000]) if "racy" in case else 2000
        result, model = traced_run(tp, hang_cycles)
        trace = model.issue_trace
        assert set(trace) == set(tp.nodes)
        for node, issues in trace.items():
            report = result.nodes[node]
            where = f"seed {seed}, {case} #{i}, node {node}"
            # After a hang nothing is read back: the model's own counters then.
            issued = report.counters["instructions"] if report.counters else \
                model.nodes[node].counters[_ISSUED]
            assert result.hang is not None or report.counters, where
            assert len(issues) == issued, where
            cycles = [cycle for _, cycle in issues]
            assert all(a < b for a, b in zip(cycles, cycles[1:])), where
            if report.done_cycle is not None:
                assert not cycles or cycles[-1] < report.done_cycle, where
            if "random" in case or "compute" in case:     # no faults, no hang: every node halts
                assert report.done_cycle is not None and report.fault == 0, where
                words = tp.words_of(node)
                assert issues[-1][0] == len(words) - 1 and words[-1] == encode(Opcode.HALT), where
                assert [pc for pc, _ in issues] == issued_pcs(tp.cfg, words), where


def test_a_wait_issues_after_the_send_it_waits_for():
    """(0, 0) computes, then SENDs to (1, 0), which WAITs for it from the start: the WAIT issues
    only after the SEND (its packet's travel later), then (1, 0) goes on one issue per cycle.
    (The nodes with no program halt at once.)"""
    tp = TileProgram(TINY)
    words = TINY.sram_words
    tp.load((0, 0), 0, list(range(64)))
    a = tp.node(0, 0)
    a.matmul(0, 16, 16, clear=True)
    a.mread(64)
    a.nop()
    send = a.send(64, 4, (1, 0), words // 2, counter=5)
    a.halt()
    b = tp.node(1, 0)
    wait = b.wait(5, 1)
    b.nop()
    b.nop()
    b.halt()
    result, model = traced_run(tp)
    trace = model.issue_trace
    sender, waiter = trace[(0, 0)], trace[(1, 0)]
    send_cycle = dict(sender)[send]
    (wait_pc, wait_cycle), *after = waiter
    assert wait_pc == wait and wait_cycle > send_cycle + 1
    assert result.nodes[(1, 0)].counters["stall_wait"] > 0
    assert [pc for pc, _ in after] == [1, 2, 3]
    assert [cycle for _, cycle in after] == [wait_cycle + 1, wait_cycle + 2, wait_cycle + 3]
    assert after[-1][1] < result.nodes[(1, 0)].done_cycle
    for node in ((0, 1), (1, 1)):
        assert [pc for pc, _ in trace[node]] == [0]
    # (0, 0): the MREAD issues when the MATMUL's last beat is due (the matrix engine's known
    # timing), the NOP the next cycle; the SEND waits for the MREAD, which writes its words.
    assert [pc for pc, _ in sender] == [0, 1, 2, 3, 4]
    cycles = [cycle for _, cycle in sender]
    assert cycles[1] == cycles[0] + matmul_cycles(TINY, 16) and cycles[2] == cycles[1] + 1
    assert cycles[3] > cycles[2] + 1 and result.nodes[(0, 0)].counters["stall_hazard"] > 0


def test_no_trace_unless_asked():
    tp = random_tile_program(TINY, random.Random(bench_seed()))
    model = TileModel(TINY)
    model.run(tp)
    assert model.issue_trace is None
    assert all(node.issue_trace is None for node in model.nodes.values())


def test_the_model_device_gives_the_trace():
    from d1tile.sw.runtime import ModelDevice, get_device
    tp = random_tile_program(TINY, random.Random(bench_seed()))
    plain = ModelDevice(TINY)
    plain.load(tp)
    plain.run()
    with pytest.raises(RuntimeError, match="trace=True"):
        plain.issue_trace
    device = get_device("model", TINY, trace=True)
    with pytest.raises(RuntimeError, match="run"):
        device.issue_trace
    device.load(tp)
    with pytest.raises(RuntimeError, match="run"):
        device.issue_trace
    result = device.run()
    model = TileModel(TINY, trace=True)
    assert result.comparable() == model.run(tp).comparable() == plain.result.comparable()
    assert device.issue_trace == model.issue_trace
    assert sum(map(len, device.issue_trace.values())) == sum(
        device.counters(node)["instructions"] for node in tp.nodes)


@pytest.mark.parametrize("banks", [(0, 1), (0, 0)], ids=["alternating", "one bank"])
def test_two_accumulator_banks_overlap_readout_and_products(banks):
    """Output tiles MATMUL (bank b) + MREAD (bank b), one after another on one node. With the
    banks alternating, each MREAD issues in its MATMUL's last-beat cycle and the next tile's
    MATMUL one cycle later, so the tiles issue every `matmul_cycles(kw) + 1` cycles and the
    rows go out while the next MATMUL runs; with one bank the next MATMUL waits for the MREAD
    (STALL_HAZARD): `matmul_cycles(kw) + mread_cycles(N, 1)` per tile. Each MREAD writes its own
    tile's product (the interpreter's result, from its own bank)."""
    from d1tile.sim.interp import interpret
    from d1tile.sim.mxu import mread_cycles
    cfg, n, kw, tiles = TINY, TINY.mac_dim, 8, 6
    rng = random.Random(bench_seed())
    tp = TileProgram(cfg)
    tp.load((0, 0), 0, [rng.getrandbits(cfg.word_bits) for _ in range(2 * kw * tiles)])
    p = tp.node(0, 0)
    mms = []
    for t in range(tiles):
        bank = banks[t % 2]
        mms.append(p.matmul(kw * t, kw * (tiles + t), kw, clear=True, bank=bank))
        p.mread(160 + n * t, bank=bank)
    p.halt()
    tp.read((0, 0), 160, n * tiles)
    result, model = traced_run(tp)
    issued = dict(model.issue_trace[(0, 0)])
    period = [issued[b] - issued[a] for a, b in zip(mms, mms[1:])]
    if banks == (0, 1):
        assert period == [matmul_cycles(cfg, kw) + 1] * (tiles - 1), period
        # Each MREAD waits for its MATMUL's last beat: on the bank (hazard), or first on the
        # readout half still writing the previous tile's rows (unit).
        c = result.nodes[(0, 0)].counters
        assert c["stall_hazard"] + c["stall_unit"] == tiles * (matmul_cycles(cfg, kw) - 1)
        assert c["stall_unit"] == (tiles - 1) * (mread_cycles(n) - 1)
    else:
        assert period == [matmul_cycles(cfg, kw) + mread_cycles(n, 1)] * (tiles - 1), period
    assert result.reads == interpret(tp).reads
