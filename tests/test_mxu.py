"""The matrix engine: the cycle model (`d1tile.sim.mxu`) on its own (timing formulas, results
against NumPy, bad input), the RTL's interface, a quick lockstep run in Amaranth's simulator on
geometries the Verilator runs do not build, and the cocotb/Verilator bench of record
(tests/hw/tb_mxu.py, harness tests/hw/mxu_lockstep.py) on both presets."""

from __future__ import annotations

import random
import sys

import numpy as np
import pytest
from amaranth.hdl import Module
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out

from d1tile.dtypes import ELEMENTS, MATRIX_TYPES, ElemType
from d1tile.formats import bytes_from_word, lanes_from_word
from d1tile.hw.matrix import operand_layout
from d1tile.hw.mxu import MatrixEngine, operand_word_layout
from d1tile.hw.sequencer import EngineCommand
from d1tile.hw.sram import NodeSRAM, SRAMReadPort, SRAMWritePort
from d1tile.params import TileConfig
from d1tile.isa import Opcode, encode
from d1tile.sim.matrix import acc_latency
from d1tile.sim.mxu import (MATMUL_FIRST_BEAT, MatrixEngineModel, ideal_matmul_cycles,
                            matmul_cycles, matmul_reference_words, mread_cycles,
                            operand_vectors)
from d1tile.sim.sram import SRAMModel

from conftest import BENCH_DIR, bench_seed, run_bench

sys.path.insert(0, str(BENCH_DIR))   # the simulator-independent harness lives beside the benches
from mxu_lockstep import (CONTEND_READS, CONTEND_WRITES, MxuLockstep,  # noqa: E402
                          input_names, matmul, mread, output_names)


TINY = TileConfig.preset("tiny")
DEFAULT = TileConfig.preset("default")


# -- the test top ------------------------------------------------------------------------------

class MatrixEngineTop(wiring.Component):
    """Test top `mxu_top`: a `MatrixEngine` on node SRAM ports read 1 / write 1 of a
    `NodeSRAM(cfg, read_ports=4, write_ports=3)`; the other node ports are top-level contention
    ports (`c_read0`, `c_read2`, `c_read3`, `c_write0`, `c_write2`, named by node port index);
    the engine's SRAM requests and grants (`mx_*`), its operand beats to the matrix unit
    (`beat_valid`, `beat_payload` = `operand_layout`) and its row requests (`row_valid`,
    `row_index`, `row_ready`) are mirrored on probe outputs."""

    def __init__(self, cfg: TileConfig):
        self._cfg = cfg
        members = {"cmd": In(EngineCommand.Signature()), "rd_cmd": In(EngineCommand.Signature()),
                   "busy": Out(1)}
        for i in CONTEND_READS:
            members[f"c_read{i}"] = In(SRAMReadPort.Signature(cfg))
        for j in CONTEND_WRITES:
            members[f"c_write{j}"] = In(SRAMWritePort.Signature(cfg))
        members.update(
            mx_rd_en=Out(1), mx_rd_addr=Out(cfg.sram_addr_bits), mx_rd_ready=Out(1),
            mx_wr_en=Out(1), mx_wr_addr=Out(cfg.sram_addr_bits), mx_wr_data=Out(cfg.word_bits),
            mx_wr_mask=Out(cfg.word_bytes), mx_wr_ready=Out(1),
            beat_valid=Out(1), beat_payload=Out(operand_layout(cfg).size),
            row_valid=Out(1), row_index=Out(range(cfg.mac_dim)), row_bank=Out(1),
            row_ready=Out(1))
        super().__init__(members)

    def elaborate(self, platform):
        cfg = self._cfg
        m = Module()
        m.submodules.engine = engine = MatrixEngine(cfg)
        m.submodules.sram = sram = NodeSRAM(cfg, read_ports=4, write_ports=3)
        wiring.connect(m, wiring.flipped(self.cmd), engine.cmd)
        wiring.connect(m, wiring.flipped(self.rd_cmd), engine.rd_cmd)
        wiring.connect(m, engine.read, sram.read[1])
        wiring.connect(m, engine.write, sram.write[1])
        for i in CONTEND_READS:
            wiring.connect(m, wiring.flipped(getattr(self, f"c_read{i}")), sram.read[i])
        for j in CONTEND_WRITES:
            wiring.connect(m, wiring.flipped(getattr(self, f"c_write{j}")), sram.write[j])
        unit = engine.unit
        m.d.comb += [
            self.busy.eq(engine.busy),
            self.mx_rd_en.eq(engine.read.en), self.mx_rd_addr.eq(engine.read.addr),
            self.mx_rd_ready.eq(engine.read.ready),
            self.mx_wr_en.eq(engine.write.en), self.mx_wr_addr.eq(engine.write.addr),
            self.mx_wr_data.eq(engine.write.data), self.mx_wr_mask.eq(engine.write.mask),
            self.mx_wr_ready.eq(engine.write.ready),
            self.beat_valid.eq(unit.operands.valid),
            self.beat_payload.eq(unit.operands.payload.as_value()),
            self.row_valid.eq(unit.rd_req.valid), self.row_index.eq(unit.rd_req.p.row),
            self.row_bank.eq(unit.rd_req.p.bank),
            self.row_ready.eq(unit.rd_req.ready),
        ]
        return m


# -- the model on its own ---------------------------------------------------------------------

class EngineAlone:
    """The engine model on an SRAMModel of its own (port 0 optionally blocking the engine's
    bank, by a `block(cycle) -> bool` pattern), stepped like the node will step it."""

    def __init__(self, cfg, block=None):
        self.cfg = cfg
        self.model = MatrixEngineModel(cfg)
        self.sram = SRAMModel(cfg, 2, 2)
        self.block = block
        self.data = None
        self.cycle = 0
        self.beats: list[int] = []
        self.writes: list[int] = []

    def step(self, start=False, instr=0, bus=None):
        """One cycle; a start goes to the half its opcode names (MREAD: the readout bus), or
        to `bus` ("matrix" or "readout") if given."""
        model = self.model
        if bus is None:
            bus = "readout" if start and (instr & 0xF) == Opcode.MREAD else "matrix"
        rd_start, rd_instr = (start, instr) if bus == "readout" else (False, 0)
        if bus == "readout":
            start, instr = False, 0
        if model.beat() is not None:
            self.beats.append(self.cycle)
        read = model.sram_reads()[0]
        blocker = read if read is not None and self.block and self.block(self.cycle) else None
        write = model.sram_writes()[0]
        rg, wg = self.sram.step([blocker, read], [None, write])
        if wg[1]:
            self.writes.append(self.cycle)
        data = self.data
        model.tick(start, instr, [rg[1]], [wg[1]], [data], rd_start, rd_instr)
        self.data = self.sram.read_data[1]
        self.cycle += 1

    def run(self, word, limit=10_000) -> int:
        """Start `word` now on its half (which must be idle); return cycles until that half's
        `idle` is high."""
        readout = (word & 0xF) == Opcode.MREAD
        idle = (lambda: self.model.rd_idle) if readout else (lambda: self.model.idle)
        assert idle()
        start = self.cycle
        self.step(True, word)
        while not idle():
            self.step()
            assert self.cycle - start < limit, "engine never idle"
        return self.cycle - start


def _random_words(cfg, rng, n):
    return [rng.getrandbits(cfg.word_bits) for _ in range(n)]


@pytest.mark.parametrize("cfg", [TINY, DEFAULT], ids=["tiny", "default"])
@pytest.mark.parametrize("dtype", list(MATRIX_TYPES), ids=lambda t: t.name)
def test_operand_vectors_match_the_rtl_layout(cfg, dtype):
    """The model's slicing of a word and the RTL's `operand_word_layout` agree, for each type:
    4 vectors of N int8, or 2 vectors of N BF16."""
    rng = random.Random(1)
    layout = operand_word_layout(cfg, dtype)
    vectors = MATRIX_TYPES[dtype].vectors_per_word(cfg)
    assert vectors == {ElemType.INT8: 4, ElemType.BF16: 2}[dtype]
    for _ in range(20):
        word = rng.getrandbits(cfg.word_bits)
        view = data.Const(layout, word)
        rtl = [[int(x) for x in view[j]] for j in range(vectors)]
        assert operand_vectors(cfg, word, dtype).tolist() == rtl
        assert operand_vectors(cfg, word, dtype).ravel().tolist() == \
            ELEMENTS[dtype].unpack(cfg, word).tolist()
    if dtype == ElemType.INT8:
        assert operand_vectors(cfg, word).ravel().tolist() == \
            bytes_from_word(word, cfg.word_bytes).tolist()


@pytest.mark.parametrize("cfg", [TINY, DEFAULT], ids=["tiny", "default"])
@pytest.mark.parametrize("kw", [1, 2, 3, 16])
@pytest.mark.parametrize("dtype", list(MATRIX_TYPES), ids=lambda t: t.name)
def test_model_matmul_timing(cfg, kw, dtype):
    """Uncontended: first beat MATMUL_FIRST_BEAT cycles after the start, then one beat per
    cycle, `idle` high in the last-beat cycle, `matmul_cycles(kw, type)` after the start: the
    same beats per cycle for both types, V = 4 (INT8) or 2 (BF16) beats per word pair."""
    eng = EngineAlone(cfg)
    eng.sram.load(0, _random_words(cfg, random.Random(kw), 2 * kw))
    eng.step()
    start = eng.cycle
    cycles = eng.run(matmul(0, kw, kw, True, dtype))
    eng.step()     # the last-beat cycle
    expected_beats = [start + MATMUL_FIRST_BEAT + k
                      for k in range(ideal_matmul_cycles(cfg, kw, dtype))]
    assert eng.beats == expected_beats
    v = {ElemType.INT8: 4, ElemType.BF16: 2}[dtype]
    assert cycles == matmul_cycles(cfg, kw, dtype) == v * kw + 3
    assert eng.beats[-1] == start + cycles, "idle must rise in the last-beat cycle"


@pytest.mark.parametrize("cfg", [TINY, DEFAULT], ids=["tiny", "default"])
def test_model_mread_timing(cfg):
    """MREAD writes one row per cycle from start + 2; `idle` nrows + 2 cycles after the start;
    started in the last-beat cycle of a MATMUL it first waits acc_latency - 1 cycles."""
    n = cfg.mac_dim
    eng = EngineAlone(cfg)
    eng.sram.load(0, _random_words(cfg, random.Random(2), 4))
    eng.run(matmul(0, 2, 2, True))      # returns in the last-beat cycle: start the MREAD there
    start = eng.cycle
    assert eng.run(mread(100, 0, n)) == mread_cycles(n, acc_latency() - 1)
    busy = acc_latency() - 1
    assert eng.writes == [start + 2 + busy + r for r in range(n)]
    for nrows in (1, n - 1):
        eng.step()
        start = eng.cycle
        assert eng.run(mread(200, n - nrows, nrows)) == mread_cycles(nrows)
        assert eng.writes[-nrows:] == [start + 2 + r for r in range(nrows)]


def test_model_full_rate_under_two_refusals_per_four_cycles():
    """Port 0 taking the engine's bank 2 cycles out of every 4 costs nothing after start-up:
    each pair's two reads fit the 5-cycle window of the prefetch slots."""
    cfg = DEFAULT
    kw = 16
    eng = EngineAlone(cfg, block=lambda cycle: cycle % 4 in (1, 2))
    eng.sram.load(0, _random_words(cfg, random.Random(3), 2 * kw))
    eng.run(matmul(0, kw, kw, True))
    eng.step()     # the last-beat cycle
    assert eng.beats == list(range(eng.beats[0], eng.beats[0] + 4 * kw)), \
        "beats not back to back"
    assert eng.model.read_refusals > 0


def test_model_bf16_needs_a_read_every_cycle():
    """A BF16 MATMUL reads two words per two beats: the read port is busy every cycle in the
    steady state, so each refused read cycle delays the beats (INT8 absorbs up to 3 per word)."""
    cfg = DEFAULT
    kw = 16
    for dtype, free in ((ElemType.INT8, True), (ElemType.BF16, False)):
        eng = EngineAlone(cfg, block=lambda cycle: cycle % 4 == 1)
        eng.sram.load(0, _random_words(cfg, random.Random(4), 2 * kw))
        eng.run(matmul(0, kw, kw, True, dtype))
        eng.step()
        beats = ideal_matmul_cycles(cfg, kw, dtype)
        span = eng.beats[-1] - eng.beats[0] + 1
        assert len(eng.beats) == beats
        assert (span == beats) == free, f"{dtype.name}: {beats} beats over {span} cycles"


def test_model_results_match_numpy():
    """Random MATMUL/MREAD programs of both types on the model alone (with refusals) leave in
    SRAM exactly the rows of the reference products (`matmul_reference_words`: int64 sums, or
    the BF16 k-loop)."""
    for seed in range(6):
        rng = random.Random(seed)
        cfg = [TINY, DEFAULT][seed % 2]
        n = cfg.mac_dim
        eng = EngineAlone(cfg, block=lambda cycle: rng.random() < 0.3)
        words = _random_words(cfg, rng, 64)
        eng.sram.load(0, words)
        acc = np.zeros((n, n), dtype=np.uint32)
        for _ in range(12):
            kw = rng.randint(1, 20)
            a, b = rng.randrange(64 - kw), rng.randrange(64 - kw)
            clear = rng.random() < 0.4
            dtype = rng.choice(list(MATRIX_TYPES))
            eng.run(matmul(a, b, kw, clear, dtype))
            acc = matmul_reference_words(cfg, words[a:a + kw], words[b:b + kw], dtype, acc=acc,
                                         clear=clear)
            row0 = rng.randrange(n)
            nrows = rng.randint(1, n - row0)
            dst = 100 + rng.randrange(50)
            for _ in range(rng.randrange(3)):
                eng.step()
            eng.run(mread(dst, row0, nrows))
            for _ in range(3):
                eng.step()
            for r in range(nrows):
                got = lanes_from_word(eng.sram.word(dst + r), n).view(np.uint32)
                assert got.tolist() == acc[row0 + r].tolist(), \
                    f"seed {seed}: row {row0 + r} at word {dst + r}"


def test_model_ignores_bad_commands():
    """Other opcodes, kw = 0, nrows = 0 and a start while busy leave the engine as it was."""
    cfg = TINY
    eng = EngineAlone(cfg)
    for word in (encode(Opcode.NOP), encode(Opcode.HALT), matmul(0, 0, 0, True),
                 mread(0, 0, 0), encode(Opcode.VEC, vop=0, dst=0, a=0, b=0, n=1), 0xF,
                 matmul(0, 4, 4, True, ElemType.FP32), matmul(0, 4, 4, True, ElemType.INT32)):
        eng.step(True, word)
        assert eng.model.idle, f"{word:#x} was not ignored"
    eng.step(True, matmul(0, 4, 4, False))
    assert not eng.model.idle
    eng.step(True, matmul(0, 4, 4, True))          # while busy: ignored
    eng.step(True, mread(0, 0, 1), bus="matrix")   # an MREAD on the MATMUL bus: ignored
    while not eng.model.idle:
        eng.step()
    eng.step()     # the last-beat cycle
    assert eng.model.rows_written == 0 and eng.model.beats == 16
    eng.step(True, matmul(0, 4, 1, True), bus="readout")   # a MATMUL on the MREAD bus: ignored
    assert eng.model.idle and eng.model.rd_idle and eng.model.still


def test_model_wraps_addresses_and_rows():
    """Unchecked fields wrap: after the last word comes word 0; rows modulo N."""
    cfg = TINY
    eng = EngineAlone(cfg)
    last = cfg.sram_words - 1
    eng.step(True, matmul(last, 5, 2, True))
    reads = []
    while not eng.model.idle:
        reads += [a for a in eng.model.sram_reads() if a is not None]
        eng.step()
    assert reads == [last, 5, 0, 6]
    eng.step()     # the last-beat cycle: an MREAD started here would wait for the unit
    eng.step(True, mread(last, cfg.mac_dim - 1, 2))
    rows, writes = [], []
    while not eng.model.rd_idle:
        rows.append(eng.model.row_request())
        writes.append(eng.model.sram_writes()[0])
        eng.step()
    assert [r for r in rows if r is not None] == [cfg.mac_dim - 1, 0]
    assert [w[0] for w in writes if w is not None] == [last, 0]


def test_model_rejects_bad_arguments():
    with pytest.raises(TypeError, match="cfg must be a TileConfig"):
        MatrixEngineModel("tiny")
    model = MatrixEngineModel(TINY)
    with pytest.raises(ValueError, match="read port 1 granted without a request"):
        model.tick(read_grants=[True])
    with pytest.raises(ValueError, match="write port 1 granted without a request"):
        model.tick(write_grants=[True])
    with pytest.raises(ValueError, match="read data given"):
        model.tick(read_data=[5])
    model.tick(True, matmul(0, 0, 1, True))
    model.tick(read_grants=[True])
    with pytest.raises(ValueError, match="read data missing"):
        model.tick()
    for bad in (0, -1):
        with pytest.raises(ValueError, match=f"kw={bad}"):
            matmul_cycles(TINY, bad)
        with pytest.raises(ValueError, match=f"nrows={bad}"):
            mread_cycles(bad)


# -- the RTL's interface -----------------------------------------------------------------------

def test_engine_interface():
    engine = MatrixEngine(TINY)
    members = engine.signature.members
    assert members["cmd"] == In(EngineCommand.Signature())
    assert members["rd_cmd"] == In(EngineCommand.Signature())
    assert members["read"] == Out(SRAMReadPort.Signature(TINY))
    assert members["write"] == Out(SRAMWritePort.Signature(TINY))
    assert members["busy"] == Out(1)
    assert {name: (m.flow, m.shape) for name, m in EngineCommand.Signature().members.items()} \
        == {"start": (Out, 1), "instr": (Out, 64), "idle": (In, 1)}
    assert engine.cfg is TINY and engine.unit.n == TINY.mac_dim
    with pytest.raises(TypeError, match="cfg must be a TileConfig, not 'tiny'"):
        MatrixEngine("tiny")


# -- quick lockstep in Amaranth's simulator ----------------------------------------------------

def _lookup(top, name):
    obj = top
    for part in name.split("__"):
        obj = getattr(obj, part)
    return obj


@pytest.mark.parametrize("overrides", [
    dict(mac_dim=2, sram_kib=1, sram_banks=1),     # one bank: every request conflicts
    dict(mac_dim=4, sram_kib=1, sram_banks=8),     # 8-word banks
], ids=["n2-b1", "n4-b8"])
def test_rtl_matches_model_in_amaranth_sim(overrides):
    from amaranth.sim import Simulator

    cfg = TileConfig.preset("tiny", **overrides)
    seed = bench_seed()
    print(f"amaranth-sim matrix engine lockstep {cfg.key}, seed {seed} "
          f"(replay: D1TILE_SEED={seed})")
    rng = random.Random(seed)
    top = MatrixEngineTop(cfg)
    lock = MxuLockstep(cfg, rng)
    lock.fill()
    for _ in range(10):
        lock.issue(lock.random_matmul(6) if rng.random() < 0.6 else lock.random_mread(),
                   gap=rng.choice([0, 0, 1, 3]))
    lock.issue(mread(lock.random_range(cfg.mac_dim), 0, cfg.mac_dim))
    lock.contention(reads=0.4, writes=0.4)
    ins = {name: _lookup(top, name) for name in input_names()}
    outs = {name: _lookup(top, name) for name in output_names()}

    async def bench(ctx):
        while lock.busy:
            for name, value in lock.inputs().items():
                ctx.set(ins[name], value)
            lock.check({name: ctx.get(sig) for name, sig in outs.items()})
            await ctx.tick()
            assert lock.cycle < 20_000, "did not finish"
        lock.contention(0, 0)
        lock.readback([a for a in range(cfg.sram_words) if lock.functional[a] is not None])
        while lock.busy:
            for name, value in lock.inputs().items():
                ctx.set(ins[name], value)
            lock.check({name: ctx.get(sig) for name, sig in outs.items()})
            await ctx.tick()

    sim = Simulator(top)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()
    lock.final_check()
    print(f"{lock.cycle} cycles, {lock.model.beats} beats, {lock.model.rows_written} rows "
          f"written, engine refusals: {lock.engine_read_refusals} reads, "
          f"{lock.engine_write_refusals} writes")
    assert lock.engine_read_refusals + lock.engine_write_refusals > 0, "no refusal exercised"
    assert lock.model.rows_written > 0, "no row written"


# -- the cocotb bench of record on Verilator ---------------------------------------------------

def test_matrix_engine_verilator(preset_cfg):
    run_bench(lambda: MatrixEngineTop(preset_cfg), "mxu_top", preset_cfg, "tb_mxu")
