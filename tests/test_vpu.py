"""The vector engine: `execute_vec` and the cycle model (`d1tile.sim.vpu`) on their own, the
RTL's interface, a quick lockstep run in Amaranth's simulator on SRAM geometries the Verilator
runs do not build, and the cocotb bench of record (tests/hw/tb_vpu.py) on both presets."""

from __future__ import annotations

import random
import sys
from pathlib import Path

import numpy as np
import pytest

from amaranth.hdl import Module
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from d1tile import isa
from d1tile import numerics as nx
from d1tile.dtypes import ELEMENTS, ElemType
from d1tile.formats import lanes_from_word, word_from_lanes
from d1tile.isa import FORMATS, Opcode, VecOp
from d1tile.params import TileConfig
from d1tile.sim.sram import SRAMModel
from d1tile.sim.vector import VectorUnitState, vector_op
from d1tile.sim.vpu import (VEC_START_LATENCY, VectorEngineModel, _merge, execute_vec,
                            vec_busy_cycles, vec_cycles, vec_fields, vec_ideal_cycles,
                            vec_write_range)
from d1tile.vector_ops import VECTOR_OPS, vector_op_of

from conftest import bench_seed, run_bench

sys.path.insert(0, str(Path(__file__).parent / "hw"))
from vpu_lockstep import (VpuLockstep, input_names, output_names, vec_word,  # noqa: E402
                          vector_word)


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


def f32(values, cfg=TINY) -> int:
    """A word of FP32 lanes from float values."""
    return word_from_lanes([int(x) for x in nx.f32_bits(values).view(np.int32)])


def f32_lanes(word, cfg=TINY) -> list:
    return [int(x) & 0xFFFF_FFFF for x in lanes_from_word(word, cfg.lanes)]


def code_of(name: str) -> int:
    return vector_op_of(name).code


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


def test_execute_fvec_arithmetic():
    """Each FVEC op on normal operands (where NumPy's float32 arithmetic is the contract's),
    with q = 2, and bfix."""
    cfg = TINY
    A = np.array([[1.5, -2.0, 1e30, 0.0], [3.0, 0.25, -1e30, -0.0]], dtype=np.float32)
    B = np.array([[0.5, 2.0, 1e30, -0.0], [1.0, 1.0, 1.0, 1.0]], dtype=np.float32)
    two = np.float32(2.0)
    mem = [0] * cfg.sram_words
    mem[0:2] = [f32(r) for r in A]
    mem[64:66] = [f32(r) for r in B]
    with np.errstate(over="ignore"):
        # (max: +0 is larger than -0, where np.maximum returns its second operand)
        fmax = np.where((A > B) | ((A == B) & ~np.signbit(A)), A, B)
        expect = {"FADD": A + B, "FSUB": A - B, "FMUL": A * B, "FMAX": fmax,
                  "FMASK": np.where(B > 0, A, np.float32(0)), "FAXPY": A * two + B,
                  "FRELU": np.maximum(A, np.float32(0)) + np.float32(0), "FSCALE": A * two}
    assert nx.f32_bits(expect["FMUL"][0, 2]) == 0x7F80_0000      # 1e30 * 1e30 overflows
    for name, rows in expect.items():
        execute_vec(cfg, mem, vector_word(code_of(name), 128, 0, 64, 2),
                    q=int(nx.f32_bits(2.0)))
        assert [f32_lanes(w) for w in mem[128:130]] == \
            [[int(x) for x in nx.f32_bits(r)] for r in rows], name
    # bfix: b = word 65 (all ones) for both elements
    execute_vec(cfg, mem, vector_word(code_of("FMUL"), 128, 0, 65, 2, bfix=1))
    assert [f32_lanes(w) for w in mem[128:130]] == [f32_lanes(mem[0]), f32_lanes(mem[1])]


def test_execute_reductions_write_once():
    """FSUM / FMAXR of n words: one write, to dst (the words after it untouched), the lane-wise
    fold of numerics.fp32_sum / fp32_max_reduce; dst may be one of the sources."""
    cfg = TINY
    rng = np.random.default_rng(3)
    rows = nx.f32_bits(rng.normal(size=(9, cfg.lanes)) * 1e3)
    rows[4, 0] = nx.F32_NAN
    rows[2, 1] = 0x7F80_0000
    for name, reference in (("FSUM", nx.fp32_sum), ("FMAXR", nx.fp32_max_reduce)):
        mem = [0x1234] * cfg.sram_words
        mem[10:19] = [word_from_lanes(r.view(np.int32)) for r in rows]
        execute_vec(cfg, mem, vector_word(code_of(name), 12, 10, 0, 9))   # dst inside a
        assert f32_lanes(mem[12]) == list(reference(rows)), name
        assert mem[13:19] == [word_from_lanes(r.view(np.int32)) for r in rows[3:]]
        assert mem[9] == mem[19] == 0x1234
        one = [0] * cfg.sram_words
        one[0] = word_from_lanes(nx.f32_bits([-0.0, 0.0, 1.0, -np.inf]).view(np.int32))
        execute_vec(cfg, one, vector_word(code_of(name), 5, 0, 0, 1))
        assert f32_lanes(one[5]) == list(reference(rows[:0].tolist() + [f32_lanes(one[0])]))


def test_execute_conversions_pack_and_unpack():
    """FP32 -> BF16 packs two elements per word (element i in half i % 2 of dst + i // 2);
    BF16 -> FP32 reads them back; int8 <-> FP32 four per word; the * q of the int conversions."""
    cfg = TINY
    n = cfg.lanes
    values = np.array([[1.0, -2.5, 3.0e-39, 65504.0], [0.1, -0.0, np.inf, np.nan],
                       [7.0, 8.0, -9.0, 1e10]], dtype=np.float32)
    mem = [0] * cfg.sram_words
    mem[0:3] = [f32(v) for v in values]
    mem[101] = (1 << cfg.word_bits) - 1
    execute_vec(cfg, mem, vector_word(code_of("CVT_F32_BF16"), 100, 0, 0, 3))
    halves = [ELEMENTS[ElemType.BF16].unpack(cfg, mem[100 + w]) for w in range(2)]
    rne = nx.bf16_from_f32_rne(nx.f32_bits(values))
    assert list(halves[0]) == list(rne[0]) + list(rne[1])
    assert list(halves[1][:n]) == list(rne[2]) and list(halves[1][n:]) == [0xFFFF] * n
    execute_vec(cfg, mem, vector_word(code_of("CVT_BF16_F32"), 200, 100, 0, 3))
    assert [f32_lanes(w) for w in mem[200:203]] == [list(nx.f32_from_bf16(r)) for r in rne]
    # int8 -> FP32 * q, then back with * 1/q: four elements per source word
    ints = np.arange(-8, 8).reshape(4, n)
    mem[50] = ELEMENTS[ElemType.INT8].pack(cfg, ints.ravel())
    q = int(nx.f32_bits(0.5))
    execute_vec(cfg, mem, vector_word(code_of("CVT_I8_F32"), 60, 50, 0, 4), q=q)
    assert [f32_lanes(w) for w in mem[60:64]] == [list(nx.f32_bits(r * 0.5)) for r in ints]
    mem[70] = 0
    execute_vec(cfg, mem, vector_word(code_of("CVT_F32_I8"), 70, 60, 0, 4),
                q=int(nx.f32_bits(2.0)))
    assert list(ELEMENTS[ElemType.INT8].unpack(cfg, mem[70])) == list(ints.ravel())


def test_execute_stochastic_conversion_uses_and_advances_the_state():
    cfg = TINY
    mem = [0] * cfg.sram_words
    rows = nx.f32_bits(np.random.default_rng(5).normal(size=(5, cfg.lanes)))
    mem[0:5] = [word_from_lanes(r.view(np.int32)) for r in rows]
    word = vector_word(code_of("CVT_F32_BF16_SR"), 100, 0, 0, 5)
    with pytest.raises(ValueError, match="CVT_F32_BF16_SR needs the vector unit's state"):
        execute_vec(cfg, list(mem), word)
    state = VectorUnitState(cfg)
    state.reseed(77)
    execute_vec(cfg, mem, word, state=state)
    rng = nx.rng_seed_states(77, cfg.lanes)
    expected = []
    for r in rows:
        rng, rand = nx.rng_next(rng)
        expected.append(nx.bf16_from_f32_sr(r, rand))
    got = np.concatenate([ELEMENTS[ElemType.BF16].unpack(cfg, mem[100 + w]) for w in range(3)])
    assert list(got[:5 * cfg.lanes]) == list(np.concatenate(expected))
    assert state.rng == rng


def test_execute_vec_matches_vector_op_per_element():
    """Every op: the words execute_vec writes are vector_op of element i's words, at
    dst + (i >> write_shift) under its mask (one write at dst for a reduction)."""
    rng = random.Random(bench_seed())
    cfg = TINY
    for code, spec in sorted(VECTOR_OPS.items()):
        for _ in range(4):
            mem = [rng.getrandbits(cfg.word_bits) for _ in range(cfg.sram_words)]
            before = list(mem)
            n, bfix = rng.randint(1, 20), rng.randrange(2)
            a, b, dst = 0, 64, 128 + rng.randrange(40)
            params = dict(scale=rng.randrange(1 << 16), shift=rng.randrange(64),
                          relu=rng.randrange(2), q=rng.getrandbits(32))
            seed = rng.getrandbits(32)
            state = VectorUnitState(cfg, seed)
            execute_vec(cfg, mem, vector_word(code, dst, a, b, n, bfix), **params, state=state)
            mirror = VectorUnitState(cfg, seed)
            expected = {}
            for i in range(n):
                bw = before[b if bfix else b + i] if spec.binary else 0
                out = vector_op(cfg, code, before[a + (i >> spec.read_shift)], bw,
                                params["scale"], params["shift"], i % 4, params["relu"],
                                params["q"], int(i == 0), int(i == n - 1), mirror)
                if out is not None:
                    addr = dst + (0 if spec.reduce else i >> spec.write_shift)
                    expected[addr] = _merge(expected.get(addr, before[addr]), *out)
            assert {k: mem[k] for k in expected} == expected, spec.name
            untouched = [k for k in range(cfg.sram_words) if k not in expected]
            assert all(mem[k] == before[k] for k in untouched), spec.name


def test_undefined_codes_write_nothing():
    cfg = TINY
    mem = list(range(cfg.sram_words))
    for code in sorted(set(range(32)) - set(VECTOR_OPS)):
        execute_vec(cfg, mem, vector_word(code, 100, 0, 64, 5))
    assert mem == list(range(cfg.sram_words))


def test_execute_vec_bad_arguments():
    cfg = TINY
    mem = [0] * cfg.sram_words
    with pytest.raises(ValueError, match="memory has 3 words"):
        execute_vec(cfg, [0] * 3, vec_word(VecOp.ADD, 0, 0, 0, 1))
    with pytest.raises(ValueError, match=r"opcode 6\) is not one of VEC, FVEC, FCVT"):
        execute_vec(cfg, mem, isa.encode(Opcode.SEND, n=1))
    with pytest.raises(ValueError, match="q=4294967296"):
        execute_vec(cfg, mem, vec_word(VecOp.ADD, 0, 0, 0, 1), q=1 << 32)
    with pytest.raises(ValueError, match="scale=-1"):
        execute_vec(cfg, mem, vec_word(VecOp.ADD, 0, 0, 0, 1), scale=-1)
    with pytest.raises(ValueError, match="is not a 64-bit value"):
        vec_fields(1 << 64)


def test_vec_fields_decode_every_family():
    word = vec_word(VecOp.MAX, 1, 2, 3, 4, 1)
    assert vec_fields(word) == dict(opcode=int(Opcode.VEC), code=int(VecOp.MAX), dst=1, a=2,
                                    b=3, n=4, bfix=1, binary=1, reduce=0, read_shift=0,
                                    write_shift=0)
    f = vec_fields(vector_word(code_of("FSUM"), 7, 8, 9, 127, 1))
    assert (f["opcode"], f["code"], f["n"], f["binary"], f["reduce"]) == (8, 16, 127, 0, 1)
    f = vec_fields(vector_word(code_of("CVT_I8_F32"), 7, 8, 9, 200))
    assert (f["opcode"], f["code"], f["b"], f["read_shift"], f["write_shift"]) == (9, 29, 0, 2, 0)
    assert vec_write_range(vec_fields(vector_word(code_of("CVT_F32_BF16"), 10, 0, 0, 5))) \
        == (10, 13)
    assert vec_write_range(vec_fields(vector_word(code_of("FMAXR"), 10, 0, 0, 5))) == (10, 11)
    # Opcodes outside the family: nothing to do.
    assert vec_fields(isa.encode(Opcode.MATMUL, a=1, kw=3))["n"] == 0
    assert FORMATS[Opcode.VEC].width == 64


# -- the cycle model on its own --------------------------------------------------------------

def model_run(cfg, instrs, quant=(0, 0, 0), contention=None, sram=None, q=0, model=None,
              reseed=None):
    """Run instructions back to back on the model with an SRAMModel; returns (sram, per-
    instruction cycles from start to idle). `contention(cycle)` gives (reads of ports 0, 1) to
    create conflicts; `reseed` (a seed) goes with every start."""
    sram = sram or SRAMModel(cfg, 4, 3)
    model = model or VectorEngineModel(cfg)
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
        model.tick(rg[2:], wg[2:], due, start, instr, *quant, q=q, seed=reseed or 0,
                   reseed=start and reseed is not None)
        due = sram.read_data[2:]
        cycle += 1
        assert cycle < 100_000
    cycles.append(cycle - start_cycle)
    return sram, cycles


@pytest.mark.parametrize("code", sorted(VECTOR_OPS), ids=lambda c: VECTOR_OPS[c].name)
def test_model_timing_formula(code):
    """No conflicts (a, b, dst in different banks): idle again vec_cycles(n) after start, for
    every op: reductions and conversions as well."""
    cfg = TINY
    spec = VECTOR_OPS[code]
    for n in (1, 2, 3, 4, 5, 16, 40, 63):
        for bfix in (0, 1):
            sram, cycles = model_run(cfg, [vector_word(code, 128, 0, 64, n, bfix)])
            assert cycles == [vec_cycles(n)] == [n + VEC_START_LATENCY], (spec.name, n, bfix)
            assert sram.write_grants[2] == spec.writes(n), (spec.name, n)
            assert sram.read_grants[2] == n, (spec.name, n)
    assert vec_busy_cycles(10) == 12 and vec_ideal_cycles(10) == 10 and vec_cycles(0) == 2


@pytest.mark.parametrize("name", ["CVT_BF16_F32", "CVT_I8_F32", "CVT_F32_BF16", "CVT_F32_I8",
                                  "REQUANT", "FSUM", "FADD"])
def test_model_read_and_write_rates(name):
    """Element i reads word a + (i >> read_shift) and writes dst + (i >> write_shift): the
    addresses the model requests, cycle by cycle (a reduction writes dst once)."""
    cfg = TINY
    spec = vector_op_of(name)
    n = 9
    model = VectorEngineModel(cfg)
    sram = SRAMModel(cfg, 4, 3)
    model.tick(start=True, instr=vector_word(spec.code, 128, 0, 64, n))
    reads, writes = [], []
    due = [None, None]
    for _ in range(vec_cycles(n)):
        r = model.sram_reads()
        w = model.sram_writes()
        rg, wg = sram.step([None, None] + r, [None, None] + w)
        reads += [addr for addr in r[:1] if addr is not None]
        writes += [x[0] for x in w if x is not None]
        model.tick(rg[2:], wg[2:], due)
        due = sram.read_data[2:]
    assert model.idle
    assert reads == [i >> spec.read_shift for i in range(n)]
    assert writes == ([128] if spec.reduce else [128 + (i >> spec.write_shift) for i in range(n)])


def test_model_same_bank_operands_take_two_cycles_per_element():
    cfg = TINY
    rng = random.Random(1)
    for code in (VecOp.ADD, code_of("FAXPY"), code_of("FMASK")):
        for n in (1, 2, 7, 30):
            sram = SRAMModel(cfg, 4, 3)
            sram.load(0, [rng.getrandbits(cfg.word_bits) for _ in range(cfg.sram_words)])
            before = sram.dump()
            instr = vector_word(code, 128, 0, 32, n)       # a and b both in bank 0
            sram, cycles = model_run(cfg, [instr], sram=sram, q=0x3FC0_0000)
            execute_vec(cfg, before, instr, q=0x3FC0_0000)
            assert sram.dump() == before
            assert cycles == [vec_cycles(n, shared_bank=True)] == [2 * n + 3], n
            # bfix reads b once: back to (almost) one element per cycle.
            _, cycles = model_run(cfg, [vector_word(code, 128, 0, 32, n, 1)])
            assert cycles[0] <= vec_cycles(n) + 2


def test_model_refused_reads_hold_and_results_match():
    """Random contention from higher-priority ports: requests held, results exact (every op,
    the generator state carried from instruction to instruction)."""
    cfg = TINY
    rng = random.Random(bench_seed())
    sram = SRAMModel(cfg, 4, 3)
    sram.load(0, [rng.getrandbits(cfg.word_bits) for _ in range(cfg.sram_words)])
    functional = sram.dump()
    state = VectorUnitState(cfg)
    instrs = []
    codes = sorted(VECTOR_OPS) * 2
    rng.shuffle(codes)
    for code in codes:
        n = rng.randint(1, 30)
        instrs.append(vector_word(code, 128 + rng.randrange(20), rng.randrange(30),
                                  64 + rng.randrange(30), n, rng.randrange(2)))
    quant, q = (3, 2, 1), 0x3F40_0000
    for instr in instrs:
        execute_vec(cfg, functional, instr, *quant, q=q, state=state)
    model = VectorEngineModel(cfg)
    sram, cycles = model_run(
        cfg, instrs, quant, q=q, model=model,
        contention=lambda c: [rng.choice([None, rng.randrange(256)]) for _ in range(2)],
        sram=sram)
    assert sram.dump() == functional
    assert model.unit_state.rng == state.rng
    assert all(c >= vec_cycles(vec_fields(i)["n"]) for c, i in zip(cycles, instrs))


def test_model_reseeds_at_start_only():
    """A start with reseed loads rng_seed_states(seed); a start while busy (ignored) does not,
    nor does reseed without start; the states persist from instruction to instruction."""
    cfg = TINY
    sr = vector_word(code_of("CVT_F32_BF16_SR"), 128, 0, 0, 3)
    model = VectorEngineModel(cfg)
    assert model.unit_state.rng == nx.rng_seed_states(0, cfg.lanes)
    model.tick(seed=99, reseed=True)                   # no start: nothing
    assert model.unit_state.rng == nx.rng_seed_states(0, cfg.lanes)
    model_run(cfg, [sr], model=model, reseed=1234)
    states = nx.rng_seed_states(1234, cfg.lanes)
    for _ in range(3):
        states, _ = nx.rng_next(states)
    assert model.unit_state.rng == states
    model_run(cfg, [sr], model=model)                 # no reseed: carries on
    for _ in range(3):
        states, _ = nx.rng_next(states)
    assert model.unit_state.rng == states
    model.tick(start=True, instr=sr)
    model.tick([True, False], [False], [None, None], start=True, instr=sr, seed=5, reseed=True)
    assert model.unit_state.rng == states             # start while busy: reseed ignored too
    # the zero state is replaced (seed = -INC mod 2**32 makes lane 0's sum 0)
    model = VectorEngineModel(cfg)
    model.tick(start=True, instr=sr, seed=(-nx.RNG_INCREMENT) % (1 << 32), reseed=True)
    assert model.unit_state.rng[0] == nx.RNG_INCREMENT


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
    for code, bfix, b_reads in ((VecOp.MUL, 1, 1), (VecOp.MUL, 0, 12), (VecOp.RELU, 0, 0),
                                (VecOp.REQUANT, 1, 0), (code_of("FAXPY"), 1, 1),
                                (code_of("FSUB"), 0, 12), (code_of("FSCALE"), 1, 0),
                                (code_of("FSUM"), 1, 0), (code_of("CVT_F32_I32"), 1, 0)):
        sram = SRAMModel(cfg, 4, 3)
        model_run(cfg, [vector_word(code, 128, 0, 64, 12, bfix)], sram=sram)
        assert sram.read_grants[3] == b_reads and sram.read_grants[2] == 12, code
        assert sram.write_grants[2] == VECTOR_OPS[code].writes(12), code


def test_model_start_while_busy_is_ignored_and_bad_input():
    cfg = TINY
    model = VectorEngineModel(cfg)
    model.tick(start=True, instr=vec_word(VecOp.RELU, 200, 0, 0, 4))
    assert model.busy and model.sram_reads() == [0, None]
    model.tick([True, False], [False], [None, None], start=True,
               instr=vec_word(VecOp.ADD, 9, 9, 9, 9))
    assert model.sram_reads() == [1, None]              # still the RELU
    assert "RELU dst=200" in model.describe()
    with pytest.raises(ValueError, match="read port a"):
        model.tick([False, False], [False], [None, None])
    with pytest.raises(TypeError, match="TileConfig"):
        VectorEngineModel("tiny")
    with pytest.raises(ValueError, match="scale=70000"):
        VectorEngineModel(cfg).tick(start=True, instr=0, scale=70000)
    with pytest.raises(ValueError, match="q=-1"):
        VectorEngineModel(cfg).tick(start=True, instr=0, q=-1)
    with pytest.raises(ValueError, match="seed=4294967296"):
        VectorEngineModel(cfg).tick(start=True, instr=0, seed=1 << 32, reseed=True)
    with pytest.raises(ValueError, match="n=-1"):
        vec_cycles(-1)
    # n = 0 (the sequencer faults it): busy one cycle, no request.
    for word in (vec_word(VecOp.ADD, 0, 0, 0, 0, 1), vector_word(code_of("FSUM"), 0, 0, 0, 0),
                 isa.encode(Opcode.SETQ, scale=3)):         # not a vector instruction: n = 0
        model = VectorEngineModel(cfg)
        model.tick(start=True, instr=word)
        assert model.busy and model.sram_reads() == [None, None]
        model.tick()
        assert model.idle and model.still


def test_model_undefined_codes_read_a_and_write_nothing():
    cfg = TINY
    for code in (5, 7, 18, 23, 31):
        sram = SRAMModel(cfg, 4, 3)
        sram.load(0, list(range(cfg.sram_words)))
        sram_after, cycles = model_run(cfg, [vector_word(code, 128, 0, 64, 6, 0)], sram=sram)
        assert cycles == [vec_cycles(6)] and sram.read_grants[2:] == [6, 0], code
        assert sram_after.write_grants[2] == 6 and sram.dump() == list(range(cfg.sram_words))


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
            ls.queue_random(ls.random_vec(max_n=24), ls.rng.randrange(3))
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
