"""The vector engine: `execute_vec` and the cycle model (`d1tile.sim.vpu`) on their own, the
RTL's interface, a quick lockstep run in Amaranth's simulator on SRAM geometries the Verilator
runs do not build, and the cocotb bench of record (tests/hw/tb_vpu.py) on both presets."""

from __future__ import annotations

import random
import sys
from pathlib import Path

import pytest

from amaranth.hdl import Module
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from d1tile.formats import VecOp, lanes_from_word, word_from_lanes
from d1tile.params import TileConfig
from d1tile.sim.isa import FORMATS, Opcode
from d1tile.sim.sram import SRAMModel
from d1tile.sim.vector import vector_op
from d1tile.sim.vpu import (VEC_START_LATENCY, VectorEngineModel, execute_vec, vec_busy_cycles,
                            vec_cycles, vec_fields, vec_ideal_cycles)

from conftest import bench_seed, run_bench

sys.path.insert(0, str(Path(__file__).parent / "hw"))
from vpu_lockstep import VpuLockstep, input_names, output_names, vec_word  # noqa: E402


TINY = TileConfig.preset("tiny")


# -- the test top (also the Verilog top of the cocotb bench) ---------------------------------

class VpuTestTop(wiring.Component):
    """`VectorEngine` on node ports read 2/3 and write 2 of a `NodeSRAM(cfg, 4, 3)`; node read
    ports 0, 1 and write ports 0, 1 are top-level contention ports for the bench, and the
    engine's own SRAM ports are mirrored on probe outputs (`a_*`, `b_*`, `w_*`)."""

    def __init__(self, cfg: TileConfig):
        from d1tile.hw.sequencer import EngineCommand
        from d1tile.hw.sram import SRAMReadPort, SRAMWritePort
        self._cfg = cfg
        addr, word = cfg.sram_addr_bits, cfg.word_bits
        super().__init__({
            "cmd": In(EngineCommand.Signature(quant=True)),
            "busy": Out(1),
            "contend_read": In(SRAMReadPort.Signature(cfg)).array(2),
            "contend_write": In(SRAMWritePort.Signature(cfg)).array(2),
            **{f"{p}_{s}": Out(w) for p in "ab"
               for s, w in (("en", 1), ("addr", addr), ("ready", 1))},
            "w_en": Out(1), "w_addr": Out(addr), "w_data": Out(word),
            "w_mask": Out(cfg.word_bytes), "w_ready": Out(1),
        })

    def elaborate(self, platform):
        from d1tile.hw.sram import NodeSRAM
        from d1tile.hw.vpu import VectorEngine
        m = Module()
        m.submodules.sram = sram = NodeSRAM(self._cfg, read_ports=4, write_ports=3)
        m.submodules.vpu = vpu = VectorEngine(self._cfg)
        wiring.connect(m, wiring.flipped(self.cmd), vpu.cmd)
        for k in range(2):
            wiring.connect(m, wiring.flipped(self.contend_read[k]), sram.read[k])
            wiring.connect(m, wiring.flipped(self.contend_write[k]), sram.write[k])
        wiring.connect(m, vpu.read_a, sram.read[2])
        wiring.connect(m, vpu.read_b, sram.read[3])
        wiring.connect(m, vpu.write, sram.write[2])
        m.d.comb += self.busy.eq(vpu.busy)
        for name, port in (("a", vpu.read_a), ("b", vpu.read_b)):
            m.d.comb += [getattr(self, f"{name}_en").eq(port.en),
                         getattr(self, f"{name}_addr").eq(port.addr),
                         getattr(self, f"{name}_ready").eq(port.ready)]
        m.d.comb += [self.w_en.eq(vpu.write.en), self.w_addr.eq(vpu.write.addr),
                     self.w_data.eq(vpu.write.data), self.w_mask.eq(vpu.write.mask),
                     self.w_ready.eq(vpu.write.ready)]
        return m


# -- execute_vec (the functional reference) --------------------------------------------------

def lanes(word, cfg=TINY):
    return [int(x) for x in lanes_from_word(word, cfg.lanes)]


def test_execute_vec_ops():
    cfg = TINY
    mem = [0] * cfg.sram_words
    a = [word_from_lanes([i, -i, 2 * i, 2**31 - 1]) for i in range(1, 9)]
    b = [word_from_lanes([10, 10, -10, 1])] * 8
    mem[0:8], mem[64:72] = a, b
    execute_vec(cfg, mem, vec_word(VecOp.ADD, 128, 0, 64, 8))
    assert [lanes(w) for w in mem[128:136]] == [
        [i + 10, -i + 10, 2 * i - 10, -2**31] for i in range(1, 9)]
    execute_vec(cfg, mem, vec_word(VecOp.MUL, 128, 0, 64, 3, bfix=1))   # b = mem[64] for all
    assert [lanes(w) for w in mem[128:131]] == [[10 * i, -10 * i, -20 * i, 2**31 - 1]
                                                 for i in range(1, 4)]
    assert lanes(mem[131]) == [14, 6, -2, -2**31]      # untouched from the ADD
    execute_vec(cfg, mem, vec_word(VecOp.RELU, 192, 64, 0, 1))
    assert lanes(mem[192]) == [10, 10, 0, 1]


def test_execute_vec_requant_packs_slots():
    """REQUANT of n words: word dst + i // 4, slot i % 4; a partial last word keeps its other
    bytes."""
    cfg = TINY
    n = cfg.lanes
    mem = [0] * cfg.sram_words
    mem[10:16] = [word_from_lanes([i * 8 + k for k in range(n)]) for i in range(6)]
    mem[101] = (1 << cfg.word_bits) - 1     # bytes of slots 2, 3 stay all ones
    execute_vec(cfg, mem, vec_word(VecOp.REQUANT, 100, 10, 0, 6), scale=1, shift=1, relu=0)
    got = [[int(x) for x in mem[100 + w].to_bytes(cfg.word_bytes, "little")] for w in range(2)]
    expected0 = [(i * 8 + k + 1) >> 1 for i in range(4) for k in range(n)]
    assert got[0] == expected0
    assert got[1][:2 * n] == [(i * 8 + k + 1) >> 1 for i in (4, 5) for k in range(n)]
    assert got[1][2 * n:] == [0xFF] * (2 * n)


def test_execute_vec_matches_vector_op_per_element():
    rng = random.Random(bench_seed())
    cfg = TINY
    for _ in range(50):
        mem = [rng.getrandbits(cfg.word_bits) for _ in range(cfg.sram_words)]
        before = list(mem)
        op = rng.choice(list(VecOp))
        n, bfix = rng.randint(1, 20), rng.randrange(2)
        a, b, dst = 0, 64, 128 + rng.randrange(40)
        q = (rng.randrange(1 << 16), rng.randrange(64), rng.randrange(2))
        execute_vec(cfg, mem, vec_word(op, dst, a, b, n, bfix), *q)
        for i in range(n):
            bw = before[b if bfix else b + i] if op in (VecOp.ADD, VecOp.MUL, VecOp.MAX) else 0
            data, mask = vector_op(cfg, op, before[a + i], bw, *q[:2], i % 4, q[2])
            addr = dst + (i // 4 if op == VecOp.REQUANT else i)
            got = [mem[addr] >> (8 * k) & 0xFF for k in range(cfg.word_bytes) if mask >> k & 1]
            want = [data >> (8 * k) & 0xFF for k in range(cfg.word_bytes) if mask >> k & 1]
            assert got == want, f"{op.name} element {i}"


def test_vec_fields_ignore_opcode():
    word = vec_word(VecOp.MAX, 1, 2, 3, 4, 1)
    fields = {"vop": VecOp.MAX, "bfix": 1, "dst": 1, "a": 2, "b": 3, "n": 4}
    assert vec_fields(word) == {"op": int(Opcode.VEC), **fields}
    assert {k: v for k, v in vec_fields(word ^ 0xF).items() if k != "op"} == fields
    assert FORMATS[Opcode.VEC].width == 64


# -- the cycle model on its own --------------------------------------------------------------

def model_run(cfg, instrs, quant=(0, 0, 0), contention=None, sram=None):
    """Run VECs back to back on the model with an SRAMModel; returns (sram, per-VEC cycles from
    start to idle). `contention(cycle)` gives (reads of ports 0, 1) to create conflicts."""
    sram = sram or SRAMModel(cfg, 4, 3)
    model = VectorEngineModel(cfg)
    due = [None, None]
    cycles = []
    pending = list(instrs)
    cycle = start_cycle = 0
    while pending or not model.idle:
        start = model.idle and bool(pending)
        instr = pending.pop(0) if start else 0
        if start:
            if cycle:
                cycles.append(cycle - start_cycle)
            start_cycle = cycle
        extra = contention(cycle) if contention else [None, None]
        rg, wg = sram.step(extra + model.sram_reads(), [None, None] + model.sram_writes())
        model.tick(rg[2:], wg[2:], due, start, instr, *quant)
        due = sram.read_data[2:]
        cycle += 1
        assert cycle < 100_000
    cycles.append(cycle - start_cycle)
    return sram, cycles


@pytest.mark.parametrize("op", list(VecOp))
def test_model_timing_formula(op):
    """No conflicts (a, b, dst in different banks): idle again vec_cycles(n) after start."""
    cfg = TINY
    for n in (1, 2, 3, 4, 5, 16, 40):
        for bfix in (0, 1):
            _, cycles = model_run(cfg, [vec_word(op, 128, 0, 64, n, bfix)])
            assert cycles == [vec_cycles(n)] == [n + VEC_START_LATENCY], (op, n, bfix)
    assert vec_busy_cycles(10) == 12 and vec_ideal_cycles(10) == 10 and vec_cycles(0) == 2


def test_model_same_bank_operands_take_two_cycles_per_element():
    cfg = TINY
    rng = random.Random(1)
    for n in (1, 2, 7, 30):
        sram = SRAMModel(cfg, 4, 3)
        sram.load(0, [rng.getrandbits(cfg.word_bits) for _ in range(cfg.sram_words)])
        before = sram.dump()
        instr = vec_word(VecOp.ADD, 128, 0, 32, n)       # a and b both in bank 0
        sram, cycles = model_run(cfg, [instr], sram=sram)
        execute_vec(cfg, before, instr)
        assert sram.dump() == before
        assert cycles == [vec_cycles(n, shared_bank=True)] == [2 * n + 3], n
        # bfix reads b once: back to (almost) one element per cycle.
        _, cycles = model_run(cfg, [vec_word(VecOp.ADD, 128, 0, 32, n, 1)])
        assert cycles[0] <= vec_cycles(n) + 2


def test_model_refused_reads_hold_and_results_match():
    """Random contention from higher-priority ports: requests held, results exact."""
    cfg = TINY
    rng = random.Random(bench_seed())
    sram = SRAMModel(cfg, 4, 3)
    sram.load(0, [rng.getrandbits(cfg.word_bits) for _ in range(cfg.sram_words)])
    functional = sram.dump()
    instrs = []
    for k in range(30):
        op = rng.choice(list(VecOp))
        n = rng.randint(1, 30)
        instrs.append(vec_word(op, 128 + rng.randrange(20), rng.randrange(30),
                               64 + rng.randrange(30), n, rng.randrange(2)))
    quant = (3, 2, 1)
    for instr in instrs:
        execute_vec(cfg, functional, instr, *quant)
    sram, cycles = model_run(
        cfg, instrs, quant,
        contention=lambda c: [rng.choice([None, rng.randrange(256)]) for _ in range(2)],
        sram=sram)
    assert sram.dump() == functional
    assert all(c >= vec_cycles(vec_fields(i)["n"]) for c, i in zip(cycles, instrs))


def test_model_held_request_keeps_address():
    """A refused read keeps its address; the other port runs on, at most two elements ahead."""
    cfg = TINY
    model = VectorEngineModel(cfg)
    model.tick(start=True, instr=vec_word(VecOp.ADD, 200, 0, 64, 8))
    seen = []
    due = [None, None]
    for cycle in range(6):
        reads = model.sram_reads()
        seen.append(reads)
        grants = [reads[0] is not None, False]        # port b always refused
        model.tick(grants, [False], due)
        due = [1 if grants[0] else None, None]
    assert [b for _, b in seen] == [64] * 6
    # a: elements 0 and 1, then its buffer (two words) is full and it stops.
    assert [a for a, _ in seen] == [0, 1, None, None, None, None]


def test_model_bfix_reads_b_once_and_unary_reads_no_b():
    cfg = TINY
    for op, bfix, b_reads in ((VecOp.MUL, 1, 1), (VecOp.MUL, 0, 12), (VecOp.RELU, 0, 0),
                              (VecOp.REQUANT, 1, 0)):
        sram = SRAMModel(cfg, 4, 3)
        model_run(cfg, [vec_word(op, 128, 0, 64, 12, bfix)], sram=sram)
        assert sram.read_grants[3] == b_reads and sram.read_grants[2] == 12, op
        assert sram.write_grants[2] == 12, op


def test_model_start_while_busy_is_ignored_and_bad_input():
    cfg = TINY
    model = VectorEngineModel(cfg)
    model.tick(start=True, instr=vec_word(VecOp.RELU, 200, 0, 0, 4))
    assert model.busy and model.sram_reads() == [0, None]
    model.tick([True, False], [False], [None, None], start=True,
               instr=vec_word(VecOp.ADD, 9, 9, 9, 9))
    assert model.sram_reads() == [1, None]              # still the RELU
    with pytest.raises(ValueError, match="read port a"):
        model.tick([False, False], [False], [None, None])
    with pytest.raises(TypeError, match="TileConfig"):
        VectorEngineModel("tiny")
    with pytest.raises(ValueError, match="scale=70000"):
        VectorEngineModel(cfg).tick(start=True, instr=0, scale=70000)
    with pytest.raises(ValueError, match="n=-1"):
        vec_cycles(-1)
    # n = 0 (the sequencer faults it): busy one cycle, no request.
    model = VectorEngineModel(cfg)
    model.tick(start=True, instr=vec_word(VecOp.ADD, 0, 0, 0, 0, 1))
    assert model.busy and model.sram_reads() == [None, None]
    model.tick()
    assert model.idle


# -- the RTL ---------------------------------------------------------------------------------

def test_vector_engine_interface():
    from d1tile.hw.sequencer import EngineCommand
    from d1tile.hw.sram import SRAMReadPort, SRAMWritePort
    from d1tile.hw.vpu import VectorEngine
    dut = VectorEngine(TINY)
    assert dut.cfg is TINY
    members = dut.signature.members
    assert members["cmd"] == In(EngineCommand.Signature(quant=True))
    assert members["read_a"] == members["read_b"] == Out(SRAMReadPort.Signature(TINY))
    assert members["write"] == Out(SRAMWritePort.Signature(TINY))
    assert members["busy"] == Out(1)
    with pytest.raises(AttributeError):
        dut.cfg = TINY
    with pytest.raises(TypeError, match="cfg must be a TileConfig, not 'tiny'"):
        VectorEngine("tiny")


def _amaranth_lockstep(cfg, seed, vecs, contention, start_while_busy=0.0):
    from amaranth.sim import Simulator
    top = VpuTestTop(cfg)
    ls = VpuLockstep(cfg, random.Random(seed), log=print)
    ls.contention = contention
    ls.start_while_busy = start_while_busy

    def handle(name):
        obj = top
        for part in name.split("__"):
            obj = obj[int(part)] if part.isdigit() else getattr(obj, part)
        return obj

    ins = {name: handle(name) for name in input_names()}
    outs = {name: handle(name) for name in output_names()}

    async def bench(ctx):
        async def step():
            for name, value in ls.inputs().items():
                ctx.set(ins[name], value)
            ls.check({name: ctx.get(sig) for name, sig in outs.items()})
            await ctx.tick()

        await ls.fill(step)
        for _ in range(vecs):
            ls.queue_vec(ls.random_vec(max_n=24), ls.random_quant(), ls.rng.randrange(3))
        await ls.run(step, 20_000)
        await ls.readback(step)
        ls.final_check()

    sim = Simulator(top)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()
    return ls


@pytest.mark.parametrize("banks", [1, 2])
def test_rtl_matches_model_in_amaranth_sim(banks):
    """One bank (a, b and the contention always collide) and two banks, in Amaranth's simulator:
    quick, and geometries the Verilator runs do not build."""
    cfg = TileConfig.preset("tiny", sram_kib=1, sram_banks=banks)
    seed = bench_seed()
    print(f"amaranth-sim vector engine lockstep: banks {banks}, seed {seed} "
          f"(replay: D1TILE_SEED={seed})")
    ls = _amaranth_lockstep(cfg, seed, vecs=12, contention=(0.3, 0.3), start_while_busy=0.05)
    assert ls.model.elements > 0 and sum(ls.sram.read_stalls[2:]) > 0


# -- the cocotb bench of record on Verilator ---------------------------------------------------

def test_vector_engine_verilator(preset_cfg):
    run_bench(lambda: VpuTestTop(preset_cfg), "vpu_top", preset_cfg, "tb_vpu")
