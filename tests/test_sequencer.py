"""The sequencer: its interface, the model on its own (pure Python), and the RTL in lockstep with
the model (cocotb bench tests/hw/tb_sequencer.py on Verilator, both presets)."""

from __future__ import annotations

import random

import pytest
from amaranth.hdl import Fragment, Shape
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from d1tile.hw.sequencer import EngineCommand, ImemWritePort, Sequencer
from d1tile.params import TileConfig
from d1tile.isa import SHAPE_BITS, FaultCode, LoopControl, Opcode, Unit, decode, encode, validate
from d1tile.sim.sequencer import (ENGINES, HALT_WORD, SeqEvent, SeqState, SequencerModel,
                                  unstalled_done_cycle)

from conftest import bench_seed, run_bench


TINY = TileConfig.preset("tiny")
IDLE = (True, True, True, True)     # MATRIX, VECTOR, DMA, READOUT (`ENGINES`)
NOP = encode(Opcode.NOP)


def _width(member) -> int:
    return Shape.cast(member.shape).width


# -- interface ---------------------------------------------------------------------------------

def test_engine_command_signature():
    plain = EngineCommand.Signature()
    assert {k: (m.flow, _width(m)) for k, m in plain.members.items()} == {
        "start": (Out, 1), "instr": (Out, 64), "idle": (In, 1)}
    quant = EngineCommand.Signature(quant=True)
    assert {k: _width(m) for k, m in quant.members.items()
            if k not in plain.members} == {"scale": 16, "shift": 6, "relu": 1, "fscale": 32,
                                           "seed": 32, "reseed": 1}
    done = EngineCommand.Signature(done=True)
    assert {k: _width(m) for k, m in done.members.items()
            if k not in plain.members} == {"status": 4, "pc": 16, "info": 16, "shape": SHAPE_BITS}
    assert quant == EngineCommand.Signature(quant=True) and quant != plain
    assert isinstance(plain.create(), EngineCommand)
    with pytest.raises(TypeError, match="quant must be a bool, not 1"):
        EngineCommand.Signature(quant=1)

    # An engine declares the flipped bus and connects to the sequencer's.
    class Engine(wiring.Component):
        def __init__(self):
            super().__init__({"cmd": In(EngineCommand.Signature(done=True))})

        def elaborate(self, platform):
            from amaranth.hdl import Module
            m = Module()
            m.d.comb += self.cmd.idle.eq(1)
            return m

    from amaranth.hdl import Module
    m = Module()
    m.submodules.seq = seq = Sequencer(TINY)
    m.submodules.eng = eng = Engine()
    wiring.connect(m, seq.dma, eng.cmd)
    Fragment.get(m, None)


def test_sequencer_interface():
    seq = Sequencer(TINY)
    members = seq.signature.members
    widths = {k: (m.flow, _width(m)) for k, m in members.items() if not m.is_signature}
    assert widths == {
        "start_req": (In, 1), "bump": (In, 1), "bump_id": (In, 5), "running": (Out, 1),
        "issued": (Out, 1), "stall_unit": (Out, 1), "stall_hazard": (Out, 1),
        "stall_wait": (Out, 1), "stall_halt": (Out, 1), "pc": (Out, 16), "state": (Out, 2),
        "fault_code": (Out, 4), "fault_pc": (Out, 16), "fault_value": (Out, 16),
        "counters": (Out, 32 * 16)}
    assert members["imem_w"].flow == In and members["imem_w"].signature.flip() == ImemWritePort.Signature()
    assert members["matrix"].signature == EngineCommand.Signature()
    assert members["readout"].signature == EngineCommand.Signature()
    assert members["vector"].signature == EngineCommand.Signature(quant=True)
    assert members["dma"].signature == EngineCommand.Signature(done=True)
    assert seq.cfg is TINY
    with pytest.raises(AttributeError):
        seq.cfg = TINY
    Fragment.get(seq, None)
    with pytest.raises(TypeError, match="'tiny'"):
        Sequencer("tiny")


# -- the model -----------------------------------------------------------------------------------

def run_model(model, idle=IDLE, max_cycles=10_000, start=True):
    """Step `model` with constant idle flags until DONE; returns the decisions."""
    decisions = []
    if start:
        decisions.append(model.tick(idle, start_req=True))
    for _ in range(max_cycles):
        decisions.append(model.tick(idle))
        if decisions[-1].event == SeqEvent.DONE:
            return decisions
    raise AssertionError(f"no DONE: {model.describe(idle)}")


def test_model_unstalled_timing():
    model = SequencerModel(TINY)
    assert model.decide(IDLE) == (SeqEvent.NONE, -1, 0) and model.state == SeqState.IDLE
    program = [NOP, encode(Opcode.SETQ, scale=7, shift=3, relu=1),
               encode(Opcode.WAIT, counter=2, value=0),
               encode(Opcode.MATMUL, a=0, b=0, kw=1, clear=1), HALT_WORD]
    model.load_imem(program)
    decisions = run_model(model)
    assert len(decisions) - 1 == unstalled_done_cycle(0, len(program) - 1)
    assert [d.event for d in decisions] == [SeqEvent.NONE] + [SeqEvent.ISSUE] * 5 + [SeqEvent.DONE]
    assert decisions[4] == (SeqEvent.ISSUE, ENGINES.index(ENGINES[0]), program[3])
    assert decisions[-1] == (SeqEvent.DONE, 2, HALT_WORD)
    assert (model.scale, model.shift, model.relu) == (7, 3, 1)
    assert model.state == SeqState.STOPPED and model.pc == 4 and not model.running


def test_model_loops_cost_no_cycle_and_describe_names_the_loop():
    """A LOOP of 4 x [STEP, MATMUL] with an always-idle matrix engine: 1 + 8 instructions
    issue back to back (the back edge is free), the MATMULs carry the stepped a; a WAIT inside
    a loop is described with its loop and iteration."""
    model = SequencerModel(TINY)
    program = [encode(Opcode.LOOP, count=4, body=2), encode(Opcode.STEP, s0=3),
               encode(Opcode.MATMUL, a=1, b=0, kw=1), HALT_WORD]
    model.load_imem(program)
    decisions = run_model(model)
    assert len(decisions) - 1 == unstalled_done_cycle(0, 9)
    assert [decode(d.instr).a for d in decisions if d.engine == 0] == [1, 4, 7, 10]
    model = SequencerModel(TINY)
    model.load_imem([encode(Opcode.LOOP, count=3, body=1), encode(Opcode.WAIT, counter=2,
                                                                   value=1), HALT_WORD])
    model.tick(IDLE, start_req=True)
    model.tick(IDLE, bump=True, bump_id=2)
    for _ in range(3):
        model.tick(IDLE)
    assert "in loop 1..1 iteration 2/3" in model.describe(), model.describe()


def test_model_setr_registers_and_the_pending_seed():
    """SETR SCALE loads q; SETR SEED loads the seed and raises `reseed`, which the next vector
    instruction's start carries and clears (a MATMUL's start does not)."""
    model = SequencerModel(TINY)
    vec = encode(Opcode.FVEC, fop=0, dst=0, a=8, b=16, n=1)
    program = [encode(Opcode.SETR, reg=0, value=0x3F80_0000),
               encode(Opcode.SETR, reg=1, value=1234),
               encode(Opcode.MATMUL, a=0, b=0, kw=1, type=2), vec, vec, HALT_WORD]
    model.load_imem(program)
    model.tick(IDLE, start_req=True)
    seen = []
    while model.state != SeqState.STOPPED:
        decision = model.decide(IDLE)
        if decision.engine >= 0 and decision.instr != HALT_WORD:
            seen.append((decision.engine, model.fscale, model.seed, model.reseed))
        model.tick(IDLE)
    assert seen == [(0, 0x3F80_0000, 1234, True), (1, 0x3F80_0000, 1234, True),
                    (1, 0x3F80_0000, 1234, False)]


def test_model_counters_wrap_and_combine():
    model = SequencerModel(TINY)
    for _ in range(1 << 16):
        model.tick(IDLE, bump=True, bump_id=4)
    assert model.counters[4] == 0, "counters wrap at 2**16"
    model.tick(IDLE, bump=True, bump_id=4)
    model.load_imem([encode(Opcode.WAIT, counter=4, value=1), HALT_WORD])
    model.tick(IDLE, start_req=True)
    assert model.tick(IDLE, bump=True, bump_id=4).event == SeqEvent.ISSUE
    assert model.counters[4] == 1, "a WAIT and a bump of one counter in one cycle combine"
    with pytest.raises(ValueError, match="bump_id=32"):
        model.tick(IDLE, bump=True, bump_id=32)


def test_model_faults_match_isa():
    """Random words over all opcodes: the recorded fault is `isa.validate`'s, at its pc."""
    rng = random.Random(bench_seed())
    for cfg in (TINY, TileConfig.preset("default")):
        model = SequencerModel(cfg)
        for _ in range(2000):
            word = rng.getrandbits(64)
            if rng.random() < 0.5:   # small fields make valid words likely
                word &= ~((1 << 64) - (1 << 4)) | rng.getrandbits(12) << 4 | rng.getrandbits(8) << 28
            if decode(word).op in (Opcode.WAIT, Opcode.HALT):
                continue
            lead = rng.randint(0, 2)
            code, value = validate(cfg, decode(word))
            if code == FaultCode.NONE:      # LOOP, STEP: the loop faults at depth 0
                code, value = LoopControl(cfg).fault(decode(word), lead)
            if decode(word).op == Opcode.LOOP and code == FaultCode.NONE:
                continue                    # a valid LOOP runs the imem after it
            model.load_imem([NOP] * lead + [word, HALT_WORD])
            run_model(model)
            got = (model.fault_code, model.fault_pc, model.fault_value)
            assert got == (code, lead if code else 0, value), f"{decode(word)}: {got}"


def test_model_pc_fault_and_start_timing():
    """Running past the last word faults PC (value = pc = imem_words, as `sim.interp` says);
    a START in the DONE cycle is ignored (it sees HALTING), one in STOPPED restarts."""
    model = SequencerModel(TINY)
    decisions = run_model(model)
    assert sum(d.event == SeqEvent.ISSUE for d in decisions) == TINY.imem_words
    assert decisions[-2].event == SeqEvent.FAULT
    assert (model.fault_code, model.fault_pc, model.fault_value, model.pc) == (
        FaultCode.PC, TINY.imem_words, TINY.imem_words, TINY.imem_words)
    model.load_imem([HALT_WORD])
    model.tick(IDLE, start_req=True)
    assert model.tick(IDLE, start_req=True).event == SeqEvent.ISSUE
    assert model.tick(IDLE, start_req=True).event == SeqEvent.DONE
    assert model.state == SeqState.STOPPED, "START in the DONE cycle is ignored"
    model.tick(IDLE, start_req=True)
    assert (model.state, model.pc, model.fault_code) == (SeqState.RUN, 0, FaultCode.NONE)


def test_model_hazard_and_unit_stalls():
    model = SequencerModel(TINY)
    mread = encode(Opcode.MREAD, dst=10, row0=0, nrows=2)
    send = encode(Opcode.SEND, src=11, n=1, x=0, y=0, dst=0, counter=0)
    model.load_imem([mread, send, HALT_WORD])
    model.tick(IDLE, start_req=True)
    assert model.tick(IDLE).engine == ENGINES.index(Unit.READOUT)
    busy_readout = (True, True, True, False)
    assert model.decide(busy_readout).event == SeqEvent.STALL_HAZARD
    assert model.decide((True, True, False, False)).event == SeqEvent.STALL_UNIT
    assert "busy engines: DMA, READOUT" in model.describe((True, True, False, False))
    assert model.tick(IDLE) == (SeqEvent.ISSUE, 2, send)


def test_model_accumulator_bank_hazards():
    """An MREAD waits for the MATMUL accumulating into its bank, a MATMUL for the MREAD reading
    its bank (STALL_HAZARD); on different banks they issue side by side."""
    matrix, readout = ENGINES.index(Unit.MATRIX), ENGINES.index(Unit.READOUT)
    mm = lambda bank: encode(Opcode.MATMUL, a=0, b=8, kw=2, clear=1, bank=bank)
    mr = lambda bank: encode(Opcode.MREAD, dst=40, row0=0, nrows=2, bank=bank)
    busy = lambda engine: tuple(e != engine for e in range(len(ENGINES)))
    for first, second, busy_engine, hazard in (
            (mm(0), mr(0), matrix, True), (mm(0), mr(1), matrix, False),
            (mr(1), mm(1), readout, True), (mr(1), mm(0), readout, False)):
        model = SequencerModel(TINY)
        model.load_imem([first, second, HALT_WORD])
        model.tick(IDLE, start_req=True)
        model.tick(IDLE)
        event = model.decide(busy(busy_engine)).event
        assert event == (SeqEvent.STALL_HAZARD if hazard else SeqEvent.ISSUE), \
            (decode(first), decode(second), event)


def test_model_bad_arguments():
    with pytest.raises(TypeError, match="'tiny'"):
        SequencerModel("tiny")
    model = SequencerModel(TINY)
    with pytest.raises(ValueError, match="4 flags"):
        model.decide((True, True))
    with pytest.raises(ValueError, match="256-word imem"):
        model.load_imem([0, 0], base=255)
    with pytest.raises(ValueError, match="wider than 64 bits"):
        model.load_imem([1 << 64])
    model.tick(IDLE, imem_write=(TINY.imem_words, 5))   # ignored, as the RTL's port does
    assert model.imem[0] == 0


def test_model_describe_wait():
    model = SequencerModel(TINY)
    model.load_imem([encode(Opcode.WAIT, counter=3, value=3)])
    model.tick(IDLE, bump=True, bump_id=3)
    model.tick(IDLE, start_req=True)
    assert model.tick(IDLE).event == SeqEvent.STALL_WAIT
    assert "counter 3: 1 < 3" in model.describe()


# -- the bench of record (Verilator) --------------------------------------------------------------

SEQ_TESTS = ("seq_unstalled_timing,seq_faults_directed,seq_faults_random,seq_hazards,"
             "seq_wait_and_bumps,seq_halt_waits,seq_start_and_imem,seq_loops,"
             "seq_random_programs")


@pytest.mark.parametrize("preset", ["tiny", "default"])
def test_sequencer_bench(preset):
    cfg = TileConfig.preset(preset)
    run_bench(lambda: Sequencer(cfg), "sequencer", cfg, "tb_sequencer", testcase=SEQ_TESTS)
