"""The instruction set (encoding, validity, hazard ranges), the assembler and the functional
interpreter (integer and floating-point instructions)."""

import random

import numpy as np
import pytest

from conftest import bench_seed
from d1tile.formats import PacketKind, bytes_from_word, lanes_from_word, word_from_bytes
from d1tile.isa import VecOp
from d1tile.params import TileConfig
from d1tile import isa
from d1tile.sim.host import HostDriver
from d1tile.sim.interp import interpret
from d1tile.sim.tile import TileModel
from d1tile.isa import SEND_X_BITS, FaultCode, FVecOp, Opcode, Ranges, SetrReg, overlaps
from d1tile import numerics as nx
from d1tile.dtypes import ELEMENTS, MATRIX_TYPES, ElemType
from d1tile.sim.vector import requantize
from d1tile.sw.asm import AsmError, Program, assemble, disassemble
from d1tile.sw.program import ProgramError, TileProgram

TINY = TileConfig.preset("tiny")


# -- encoding ------------------------------------------------------------------------------------

def test_encode_decode_round_trip_for_every_opcode():
    rng = random.Random(bench_seed())
    for op, fmt in isa.FORMATS.items():
        for _ in range(50):
            fields = {f.name: rng.getrandbits(f.width) for f in fmt.fields if f.name != "op"}
            word = isa.encode(op, **fields)
            assert word < 1 << 64 and word & 0xF == op
            instr = isa.decode(word)
            assert instr.op == op and instr.fields == fields


def test_undefined_opcodes_decode_and_fault():
    for code in range(15, 16):
        instr = isa.decode(code | 0xABC0)
        assert instr.op is None
        assert isa.validate(TINY, instr) == (FaultCode.UNDEFINED, code)


@pytest.mark.parametrize("op, fields, fault", [
    (Opcode.MATMUL, dict(a=0, b=0, kw=0), (FaultCode.FIELD, 0)),
    (Opcode.MATMUL, dict(a=250, b=0, kw=7), (FaultCode.ADDRESS, 250)),
    (Opcode.MATMUL, dict(a=0, b=255, kw=2), (FaultCode.ADDRESS, 255)),
    (Opcode.MATMUL, dict(a=0, b=252, kw=4), (FaultCode.NONE, 0)),
    (Opcode.MREAD, dict(dst=0, row0=2, nrows=3), (FaultCode.FIELD, 5)),
    (Opcode.MREAD, dict(dst=0, row0=0, nrows=0), (FaultCode.FIELD, 0)),
    (Opcode.MREAD, dict(dst=253, row0=0, nrows=4), (FaultCode.ADDRESS, 253)),
    (Opcode.VEC, dict(vop=6, dst=0, a=0, b=0, n=1), (FaultCode.FIELD, 6)),
    (Opcode.VEC, dict(vop=0, dst=0, a=0, b=0, n=0), (FaultCode.FIELD, 0)),
    (Opcode.VEC, dict(vop=0, dst=0, a=250, b=0, n=7), (FaultCode.ADDRESS, 250)),
    (Opcode.VEC, dict(vop=0, dst=0, a=0, b=250, n=7), (FaultCode.ADDRESS, 250)),
    (Opcode.VEC, dict(vop=0, dst=0, a=0, b=255, n=7, bfix=1), (FaultCode.NONE, 0)),
    (Opcode.VEC, dict(vop=3, dst=0, a=0, b=255, n=7), (FaultCode.NONE, 0)),   # RELU reads no b
    (Opcode.VEC, dict(vop=4, dst=254, a=0, b=0, n=8), (FaultCode.NONE, 0)),   # 2 words out
    (Opcode.VEC, dict(vop=4, dst=255, a=0, b=0, n=8), (FaultCode.ADDRESS, 255)),
    (Opcode.SEND, dict(src=0, n=1, x=3, y=0, dst=0), (FaultCode.NODE, 3)),
    (Opcode.SEND, dict(src=0, n=1, x=2, y=1, dst=0), (FaultCode.NONE, 0)),     # to the host
    (Opcode.SEND, dict(src=0, n=1, x=2, y=2, dst=0), (FaultCode.NODE, 2 | 2 << SEND_X_BITS)),
    (Opcode.SEND, dict(src=0, n=1, x=0, y=3, dst=0), (FaultCode.NODE, 3 << SEND_X_BITS)),
    (Opcode.SEND, dict(src=200, n=60, x=1, y=1, dst=0), (FaultCode.ADDRESS, 200)),
    (Opcode.SEND, dict(src=0, n=60, x=1, y=1, dst=200), (FaultCode.ADDRESS, 200)),
    (Opcode.SEND, dict(src=256 - 1, n=0, x=1, y=1, dst=0), (FaultCode.NONE, 0)),
    # types: MATMUL INT8 / BF16 exist, INT32 / FP32 operands do not (checked first)
    (Opcode.MATMUL, dict(a=0, b=0, kw=1, type=ElemType.BF16), (FaultCode.NONE, 0)),
    (Opcode.MATMUL, dict(a=0, b=0, kw=0, type=ElemType.FP32), (FaultCode.TYPE, 3)),
    (Opcode.MATMUL, dict(a=250, b=0, kw=7, type=ElemType.INT32), (FaultCode.TYPE, 1)),
    # FVEC
    (Opcode.FVEC, dict(fop=10, dst=0, a=0, b=0, n=1), (FaultCode.FIELD, 10)),
    (Opcode.FVEC, dict(fop=FVecOp.FADD, dst=0, a=0, b=0, n=0), (FaultCode.FIELD, 0)),
    (Opcode.FVEC, dict(fop=FVecOp.FADD, dst=0, a=0, b=250, n=7), (FaultCode.ADDRESS, 250)),
    (Opcode.FVEC, dict(fop=FVecOp.FRELU, dst=0, a=0, b=255, n=7), (FaultCode.NONE, 0)),
    (Opcode.FVEC, dict(fop=FVecOp.FSUM, dst=255, a=0, n=100), (FaultCode.NONE, 0)),  # 1 word
    (Opcode.FVEC, dict(fop=FVecOp.FSUM, dst=5, a=0, n=100), (FaultCode.NONE, 0)),    # overlap ok
    # FCVT: the conversions that exist, their packing
    (Opcode.FCVT, dict(stype=ElemType.FP32, dtype=ElemType.BF16, dst=252, a=0, n=8),
     (FaultCode.NONE, 0)),                                                     # 8 -> 4 words
    (Opcode.FCVT, dict(stype=ElemType.FP32, dtype=ElemType.BF16, dst=253, a=0, n=8),
     (FaultCode.ADDRESS, 253)),
    (Opcode.FCVT, dict(stype=ElemType.BF16, dtype=ElemType.FP32, dst=0, a=252, n=8),
     (FaultCode.NONE, 0)),                                                     # 4 -> 8 words
    (Opcode.FCVT, dict(stype=ElemType.INT8, dtype=ElemType.FP32, dst=0, a=254, n=9),
     (FaultCode.ADDRESS, 254)),                                                # 3 source words
    (Opcode.FCVT, dict(stype=ElemType.BF16, dtype=ElemType.FP32, sr=1, dst=0, a=0, n=1),
     (FaultCode.TYPE, 2 | 3 << 2 | 1 << 4)),                                   # SR only to BF16
    (Opcode.FCVT, dict(stype=ElemType.INT8, dtype=ElemType.BF16, dst=0, a=0, n=1),
     (FaultCode.TYPE, 0 | 2 << 2)),
    (Opcode.FCVT, dict(stype=ElemType.FP32, dtype=ElemType.FP32, dst=0, a=0, n=1),
     (FaultCode.TYPE, 3 | 3 << 2)),
    (Opcode.SETR, dict(reg=SetrReg.SEED, value=2**32 - 1), (FaultCode.NONE, 0)),
    (Opcode.SETR, dict(reg=2, value=0), (FaultCode.FIELD, 2)),
    (Opcode.MCAST, dict(src=0, n=4, col=0, first=0, last=1, dst=252), (FaultCode.NONE, 0)),
    (Opcode.MCAST, dict(src=0, n=4, col=1, first=1, last=1, dst=0), (FaultCode.NONE, 0)),
    (Opcode.MCAST, dict(src=0, n=4, col=0, first=1, last=0, dst=0), (FaultCode.FIELD, 1)),
    (Opcode.MCAST, dict(src=0, n=4, col=0, first=0, last=2, dst=0), (FaultCode.NODE, 2)),
    (Opcode.MCAST, dict(src=0, n=4, col=1, first=2, last=3, dst=0), (FaultCode.NODE, 3)),
    (Opcode.MCAST, dict(src=253, n=4, col=0, first=0, last=1, dst=0), (FaultCode.ADDRESS, 253)),
    (Opcode.MCAST, dict(src=0, n=4, col=0, first=0, last=1, dst=253), (FaultCode.ADDRESS, 253)),
])
def test_validity_rules(op, fields, fault):
    assert TINY.sram_words == 256
    assert isa.validate(TINY, isa.decode(isa.encode(op, **fields))) == fault


def test_stepped_moves_only_the_address_slots_modulo_2_16():
    mm = isa.encode(Opcode.MATMUL, a=5, b=7, kw=3, clear=1, type=1, bank=1)
    got = isa.decode(isa.stepped(mm, (10, 0xFFFF, 99)))       # MATMUL has two slots: s2 unused
    assert got.fields == dict(a=15, b=6, kw=3, clear=1, type=1, bank=1)
    send = isa.encode(Opcode.SEND, src=0xFFFE, n=2, x=1, y=1, dst=3, counter=31)
    assert isa.decode(isa.stepped(send, (3, 4, 0))).fields == dict(
        src=1, n=2, x=1, y=1, dst=7, counter=31, shaped=0)
    vec = isa.encode(Opcode.VEC, vop=2, bfix=1, dst=1, a=2, b=3, n=4)
    assert isa.decode(isa.stepped(vec, (1, 2, 3))).fields == dict(
        vop=2, bfix=1, dst=2, a=4, b=6, n=4)
    wait = isa.encode(Opcode.WAIT, counter=3, value=9)
    assert isa.stepped(wait, (1, 2, 3)) == wait and isa.stepped(0xE, (1, 1, 1)) == 0xE
    assert isa.stepped(mm, (0, 0, 0)) == mm


def _run_loops(program, limit=1000):
    """The pcs a program issues under `LoopControl`, and its fault (or None)."""
    loops = isa.LoopControl(TINY)
    pc, pcs = 0, []
    while len(pcs) < limit:
        instr = isa.decode(loops.effective(program[pc]))
        fault = isa.validate(TINY, instr)
        if fault[0] == FaultCode.NONE:
            fault = loops.fault(instr, pc)
        if fault[0] != FaultCode.NONE:
            return pcs, (fault, pc)
        if instr.op == Opcode.HALT:
            return pcs, None
        pcs.append(pc)
        pc = loops.issue(instr, pc)
    raise AssertionError("runaway")


def test_loop_control_order_counts_and_faults():
    L = lambda count, body: isa.encode(Opcode.LOOP, count=count, body=body)
    nop, halt = isa.encode(Opcode.NOP), isa.encode(Opcode.HALT)
    # 2 x (LOOP 3 x [1 NOP], NOP): inner body pc 2, outer body pcs 1..3
    assert _run_loops([L(2, 3), L(3, 1), nop, nop, halt]) == (
        [0] + [1, 2, 2, 2, 3] * 2, None)
    assert _run_loops([L(0, 2), nop, nop, halt]) == ([0], None)      # count 0: skipped
    assert _run_loops([L(1, 2), nop, nop, halt]) == ([0, 1, 2], None)
    assert _run_loops([L(65535, 1), nop, halt], limit=70000)[0].count(1) == 65535
    assert _run_loops([L(2, 0), halt])[1] == ((FaultCode.FIELD, 0), 0)
    deep = [L(1, 12 - 2 * k) for k in range(isa.LOOP_DEPTH + 1)] + [nop] * 10 + [halt]
    assert _run_loops(deep)[1] == ((FaultCode.LOOP, isa.LOOP_DEPTH), isa.LOOP_DEPTH)
    assert _run_loops([L(2, 2), L(2, 1), nop, halt])[1] == ((FaultCode.LOOP, 1), 1)
    assert _run_loops([L(2, TINY.imem_words - 1), halt])[1] is None   # HALT inside the body
    assert _run_loops([nop, L(2, TINY.imem_words - 1), halt])[1] == (
        (FaultCode.LOOP, TINY.imem_words - 1), 1)
    step = isa.encode(Opcode.STEP, s0=1, level=1)
    assert _run_loops([L(2, 2), step, nop, halt])[1] == ((FaultCode.LOOP, 1), 1)
    assert _run_loops([step, halt])[1] == ((FaultCode.LOOP, 1), 0)


def test_steps_add_up_over_levels_and_clear_after_one_instruction():
    p = Program(TINY)
    with p.loop(3):
        with p.loop(2):
            p.step(s0=1)                      # inner iteration j
            p.step(s0=10, s1=-1, level=1)     # outer iteration i
            p.matmul(100, 50, 1)              # a = 100 + j + 10 i, b = 50 - i
            p.matmul(0, 0, 1)                 # not stepped
        p.nop()
    p.halt()
    loops = isa.LoopControl(TINY)
    pc, seen = 0, []
    while isa.decode(p.words[pc]).op != Opcode.HALT:
        instr = isa.decode(loops.effective(p.words[pc]))
        if instr.op == Opcode.MATMUL:
            seen.append((instr.a, instr.b))
        pc = loops.issue(instr, pc)
    assert seen == [x for i in range(3) for j in range(2)
                    for x in ((100 + j + 10 * i, 50 - i), (0, 0))]


def test_assembler_loops():
    text = """
    LOOP 4, 2          ; four times the next two
    STEP 1, 1, 0, 0
    SEND 0, 1, 1, 0, 0, 3
    STEP s0=2, level=0
    HALT
    """
    words = assemble(TINY, text).words
    assert assemble(TINY, disassemble(words)).words == words
    assert isa.decode(words[0]).fields == dict(count=4, body=2)
    p = Program(TINY)
    with pytest.raises(AsmError, match="empty body"):
        with p.loop(2):
            pass
    p = Program(TINY)
    with pytest.raises(AsmError, match="inner loop"):
        with p.loop(2):
            with p.loop(2):
                p.nop()
    p = Program(TINY)
    with pytest.raises(AsmError, match="deeper"):
        with p.loop(1), p.loop(1), p.loop(1), p.loop(1), p.loop(1):
            p.nop()
    with pytest.raises(AsmError, match="stride"):
        Program(TINY).step(s0=1 << 16)
    with pytest.raises(AsmError, match="count=70000"):
        Program(TINY).loop(70000, 1)


def test_interpreter_runs_loops_with_stepped_sends():
    """Node (0, 0) sends words 0..5 one at a time to (1, 0)'s words 10.. with a loop of a
    stepped SEND; (1, 0) waits for the six and copies them, doubled, with a stepped VEC."""
    tp = TileProgram(TINY)
    values = [word_from_bytes([k] * 16) for k in range(6)]
    tp.load((0, 0), 0, values)
    p = tp.node(0, 0)
    with p.loop(6):
        p.step(1, 1)
        p.send(0, 1, (1, 0), 10, counter=4)
    p.halt()
    q = tp.node(1, 0)
    q.wait(4, 6)
    with q.loop(3):
        q.step(2, 2, 2)
        q.vec(VecOp.ADD, 40, 10, 10, n=2)
    q.halt()
    result = interpret(tp)
    assert not result.faults() and result.deadlock is None
    node = result.nodes[(1, 0)]
    assert node.sram[10:16] == values
    assert np.array_equal([lanes_from_word(w, 4) for w in node.sram[40:46]],
                          [2 * lanes_from_word(v, 4) for v in values])


def test_interpreter_multicasts_to_a_row_and_a_column():
    """Node (1, 1) of a 3x3 tile multicasts 2 words to its whole row and (stepped, in a loop)
    one word each to rows 0..2 of its column; every receiver waits for its counter."""
    cfg = TINY.with_grid(3, 3)
    tp = TileProgram(cfg)
    words = [word_from_bytes([k + 1] * 16) for k in range(5)]
    tp.load((1, 1), 0, words)
    p = tp.node(1, 1)
    p.mcast(0, 2, 100, row=(0, 2), counter=3)
    with p.loop(3):
        p.step(1, 1)
        p.mcast(2, 1, 110, column=(0, 2), counter=4)
    for node in tp.nodes:
        q = tp.node(*node) if node != (1, 1) else p
        if node[1] == 1:
            q.wait(3, 1)
        if node[0] == 1:
            q.wait(4, 3)
        q.halt()
    result = interpret(tp)
    assert not result.faults() and result.deadlock is None
    for (x, y), n in result.nodes.items():
        assert n.sram[100:102] == (words[:2] if y == 1 else [0, 0]), (x, y)
        assert n.sram[110:113] == (words[2:5] if x == 1 else [0, 0, 0]), (x, y)


def test_hazard_ranges_and_overlap():
    vec = isa.decode(isa.encode(Opcode.VEC, vop=VecOp.ADD, dst=20, a=0, b=10, n=4))
    assert isa.hazard_ranges(vec) == Ranges((0, 4), (10, 14), (20, 24))
    req = isa.decode(isa.encode(Opcode.VEC, vop=VecOp.REQUANT, dst=20, a=0, b=99, n=5))
    assert isa.hazard_ranges(req) == Ranges((0, 5), (0, 0), (20, 22))
    axpy = isa.decode(isa.encode(Opcode.FVEC, fop=FVecOp.FAXPY, dst=20, a=0, b=10, n=4, bfix=1))
    assert isa.hazard_ranges(axpy) == Ranges((0, 4), (10, 11), (20, 24))
    fsum = isa.decode(isa.encode(Opcode.FVEC, fop=FVecOp.FSUM, dst=20, a=0, b=10, n=9))
    assert isa.hazard_ranges(fsum) == Ranges((0, 9), (0, 0), (20, 21))
    narrow = isa.decode(isa.encode(Opcode.FCVT, stype=ElemType.FP32, dtype=ElemType.BF16,
                                   dst=20, a=0, n=5))
    assert isa.hazard_ranges(narrow) == Ranges((0, 5), (0, 0), (20, 23))
    widen = isa.decode(isa.encode(Opcode.FCVT, stype=ElemType.INT8, dtype=ElemType.FP32,
                                  dst=20, a=0, n=5))
    assert isa.hazard_ranges(widen) == Ranges((0, 2), (0, 0), (20, 25))
    matmul = Ranges((0, 4), (8, 12))
    mread = Ranges(write=(3, 5))
    send_empty = Ranges((3, 3))
    assert overlaps(mread, matmul)                       # write after read
    assert overlaps(Ranges((4, 6)), mread)               # read after write
    assert overlaps(Ranges(write=(4, 5)), mread)         # write after write
    assert not overlaps(Ranges((0, 3)), matmul)          # reads never conflict
    assert not overlaps(Ranges(write=(4, 8)), matmul)    # adjacent, disjoint
    assert not overlaps(send_empty, mread) and not overlaps(mread, send_empty)


# -- assembler -----------------------------------------------------------------------------------

def test_builder_and_text_assemble_to_the_same_words():
    p = Program(TINY)
    p.setq(scale=300, shift=12, relu=True)
    p.matmul(0, 16, 4, clear=True)
    p.mread(32)
    p.vec("requant", dst=40, a=32, n=4)
    p.send(src=40, n=1, to=(1, 1), dst=100, counter=3)
    p.wait(2, 1)
    p.halt()
    text = """
        SETQ 300, 12, 1          ; scale, shift, relu
        MATMUL a=0, b=16, kw=4, clear=1
        MREAD 32
        VEC REQUANT, 0, 40, 32, 0, 4     # vop, bfix, dst, a, b, n
        SEND src=40, n=1, x=1, y=1, dst=100, counter=3
        WAIT 2, 1
        HALT
    """
    assert assemble(TINY, text).words == p.words
    assert assemble(TINY, disassemble(p.words)).words == p.words


def test_floating_point_instructions_assemble_by_name():
    p = Program(TINY)
    p.matmul(0, 16, 4, clear=True, dtype="bf16")
    p.fscale(0.01)
    p.seed(7)
    p.fvec("faxpy", dst=40, a=32, b=48, n=8)
    p.fcvt("fp32", "bf16", dst=60, a=40, n=8, stochastic=True)
    text = """
        MATMUL 0, 16, 4, clear=1, type=BF16
        SETR SCALE, 0.01
        SETR SEED, 7
        FVEC FAXPY, 0, 40, 32, 48, 8      # fop, bfix, dst, a, b, n
        FCVT FP32, BF16, 1, 60, 40, 8     # stype, dtype, sr, dst, a, n
    """
    assert assemble(TINY, text).words == p.words
    assert assemble(TINY, disassemble(p.words)).words == p.words
    assert "type=BF16" in disassemble(p.words) and "fop=FAXPY" in disassemble(p.words)
    assert isa.decode(p.words[1]).value == int(nx.f32_bits(0.01))


@pytest.mark.parametrize("text, message", [
    ("FOO 1", "line 1: unknown instruction 'FOO'"),
    ("NOP\nMATMUL 0, 0, 0", "line 2: MATMUL a=0, b=0, kw=0, clear=0, type=0, bank=0: field out of range"),
    ("MATMUL 0, 250, 8", "line 1: .*SRAM range beyond the node's 256 words \\(at address 250\\)"),
    ("SEND 0, 1, 5, 0, 0", "destination node outside the 2x2 grid"),
    ("WAIT 32, 1", "counter=32 does not fit 5 unsigned bits"),
    ("WAIT 1, 1, 1", "WAIT takes at most 2 arguments"),
    ("WAIT counter=1, count=2", "WAIT has no field 'count'"),
    ("WAIT 1, x", "value='x' is not a number"),
    ("VEC SHUFFLE, 0, 0, 0, 0, 1", "vop='SHUFFLE' is not a number; names: ADD, MUL"),
    ("MATMUL 0, 0, 1, type=FP32", "element type or conversion the node does not have"),
    ("FCVT BF16, INT8, 0, 0, 0, 1", "element type or conversion the node does not have"),
    ("SETR SCALE, 1.5e", "value='1.5e' is not a number"),
])
def test_assembler_errors_name_the_line_and_the_reason(text, message):
    with pytest.raises(AsmError, match=message):
        assemble(TINY, text)


def test_unchecked_programs_and_raw_words():
    p = assemble(TINY, "MATMUL 0, 0, 0\n.word 0xF", check=False)
    assert [isa.decode(w).op for w in p.words] == [Opcode.MATMUL, None]
    with pytest.raises(AsmError, match="instruction memory"):
        q = Program(TINY)
        for _ in range(TINY.imem_words + 1):
            q.nop()


def test_tile_program_rejects_bad_regions():
    tp = TileProgram(TINY)
    with pytest.raises(ProgramError, match="outside the 2x2 grid"):
        tp.node(2, 0)
    with pytest.raises(ProgramError, match="does not fit its 256-word SRAM"):
        tp.load((0, 0), 250, [0] * 7)
    with pytest.raises(ProgramError, match="read of 3 words at 254"):
        tp.read((1, 1), 254, 3)


def test_tile_program_feeds_go_in_key_order_and_must_be_loaded():
    tp = TileProgram(TINY)
    tp.feed((0, 0), 10, [1, 2], counter=31, key=(1, 0))
    tp.expect_feed((1, 0), 20, 3, counter=30, key=(0, 5))
    tp.feed((0, 1), 30, [4], counter=31, key=(0, 5))      # same key: after the earlier call
    with pytest.raises(ProgramError, match=r"node \(1, 0\) expects 3 words fed at 20"):
        tp.image()
    with pytest.raises(ProgramError, match=r"expects 3 words fed at 20 on node \(1, 0\), not 2"):
        tp.load((1, 0), 20, [7, 8])
    tp.load((1, 0), 20, [7, 8, 9])                        # the expected feed, not a load
    assert tp.loads == {}
    order = [((1, 0), 20, [7, 8, 9], 30), ((0, 1), 30, [4], 31), ((0, 0), 10, [1, 2], 31)]
    assert tp.image().feeds == order
    assert TileProgram.from_json(tp.to_json()).image().feeds == order
    with pytest.raises(ProgramError, match="feed counter 32 is not one of the node's 32"):
        tp.feed((0, 0), 0, [0], counter=32)
    # A region declared twice (its words reused after a barrier): loads in declaration order.
    tp.expect_feed((0, 0), 40, 1, counter=1, key=(2,))
    tp.expect_feed((0, 0), 40, 2, counter=1, key=(3,))
    with pytest.raises(ProgramError, match=r"expects 1 words fed at 40 on node \(0, 0\), not 2"):
        tp.load((0, 0), 40, [5, 6])
    tp.load((0, 0), 40, [5])
    tp.load((0, 0), 40, [6, 7])
    assert tp.image().feeds[-2:] == [((0, 0), 40, [5], 1), ((0, 0), 40, [6, 7], 1)]


def test_feeds_arrive_after_the_start_and_bump_their_counter():
    """Node (1, 1) WAITs for two fed regions (70 words: two packets for the first), then
    copies them; the host sends them after every START, so the node has been running."""
    tp = TileProgram(TINY)
    first, second = list(range(1, 71)), [99]
    tp.feed((1, 1), 0, first, counter=31)
    tp.feed((1, 1), 80, second, counter=31)
    p = tp.node(1, 1)
    p.wait(31, 2)
    p.send(0, 70, (1, 1), 100, counter=0)
    p.send(80, 1, (1, 1), 180, counter=0)
    p.wait(0, 2)
    p.halt()
    tp.read((1, 1), 100, 81)
    driver = HostDriver(TINY, tp.image())
    kinds = [driver.header.unpack(driver.flit.get(f, "payload"))["kind"]
             for f in driver.queues[1] if driver.flit.get(f, "head")]
    assert kinds[-5:] == [PacketKind.START, PacketKind.START, PacketKind.WRITE,
                          PacketKind.WRITE, PacketKind.WRITE]
    result = TileModel(TINY).run(tp)
    assert result.hang is None and not result.faults
    assert result.reads[((1, 1), 100, 81)] == first + [0] * 10 + second
    assert result.nodes[(1, 1)].counters["stall_wait"] > 70      # it waited for the feeds
    functional = interpret(tp)
    assert functional.reads == result.reads
    assert functional.nodes[(1, 1)].counters[31] == 0


def test_early_nodes_are_loaded_and_started_first_in_their_rows():
    """An early node's program, data and START go before the rest of its row's loading; the
    other rows and nodes keep the order of the grid."""
    tp = TileProgram(TINY)
    for node in tp.nodes:
        tp.node(*node).halt()
    tp.load((0, 1), 0, [5])
    tp.early.append((1, 1))
    image = TileProgram.from_json(tp.to_json()).image()
    assert image.early == [(1, 1)]
    driver = HostDriver(TINY, image)
    heads = [driver.header.unpack(driver.flit.get(f, "payload"))
             for f in driver.queues[1] if driver.flit.get(f, "head")]
    order = [(h["kind"], driver.flit.get(f, "dst_x"))
             for h, f in zip(heads, [f for f in driver.queues[1] if driver.flit.get(f, "head")])]
    assert order == [(PacketKind.IMEM, 1), (PacketKind.START, 1), (PacketKind.IMEM, 0),
                     (PacketKind.WRITE, 0), (PacketKind.START, 0)]
    result = TileModel(TINY).run(tp)
    assert result.hang is None and not result.faults
    assert result.nodes[(1, 1)].done_cycle < result.nodes[(0, 1)].done_cycle


# -- functional interpreter ----------------------------------------------------------------------

def operand_words(cfg, matrix):
    """(4*kw, N) int8 rows -> kw words (4 operand vectors per word)."""
    rows = np.asarray(matrix, dtype=np.int8)
    per = MATRIX_TYPES[ElemType.INT8].vectors_per_word(cfg)
    return [word_from_bytes(rows[i:i + per].reshape(-1)) for i in range(0, len(rows), per)]


def test_interpreter_matrix_product_requantise_and_send():
    cfg = TINY
    rng = np.random.default_rng(bench_seed())
    n, k = cfg.mac_dim, 8
    a = rng.integers(-128, 128, size=(n, k))
    b = rng.integers(-128, 128, size=(k, n))
    tp = TileProgram(cfg)
    tp.load((0, 0), 0, operand_words(cfg, a.T))
    tp.load((0, 0), 16, operand_words(cfg, b))
    p = tp.node(0, 0)
    p.matmul(0, 16, k // MATRIX_TYPES[ElemType.INT8].vectors_per_word(cfg), clear=True)
    p.mread(32)
    p.setq(scale=77, shift=9)
    p.vec("requant", dst=40, a=32, n=n)
    p.send(src=32, n=n, to=(1, 1), dst=8, counter=5)
    p.halt()
    q = tp.node(1, 1)
    q.wait(5, 1)
    q.vec("relu", dst=20, a=8, n=n)
    q.halt()
    tp.read((0, 0), 40, 1)
    tp.read((1, 1), 20, n)
    result = interpret(tp)
    assert result.deadlock is None and not result.faults()
    c = a @ b
    got_q = bytes_from_word(result.reads[((0, 0), 40, 1)][0], cfg.word_bytes).reshape(4, n)
    assert np.array_equal(got_q, requantize(c, 77, 9, 0))
    got_relu = np.array([lanes_from_word(w, n) for w in result.reads[((1, 1), 20, n)]])
    assert np.array_equal(got_relu, np.maximum(c, 0))


def test_interpreter_reports_deadlock_and_faults():
    tp = TileProgram(TINY)
    tp.node(0, 0).wait(1, 2)
    tp.node(1, 0).send(0, 1, (0, 0), 0, counter=1)
    tp.node(1, 0).halt()
    bad = Program(TINY, check=False)
    bad.nop()
    bad.matmul(0, 250, 8)
    tp.programs[(0, 1)] = bad
    result = interpret(tp)
    assert "node (0, 0): pc 0 WAIT counter=1, value=2 waits on counter 1 (1 < 2)" in result.deadlock
    assert result.faults() == {(0, 1): (FaultCode.ADDRESS, 1, 250)}


def test_interpreter_faults_when_the_pc_runs_off_the_instruction_memory():
    tp = TileProgram(TINY)
    tp.node(0, 0).nop()          # no HALT: NOPs until the end of the instruction memory
    result = interpret(tp)
    assert result.faults() == {(0, 0): (FaultCode.PC, TINY.imem_words, TINY.imem_words)}


@pytest.mark.parametrize("fields, fault", [
    (dict(vop=VecOp.ADD, dst=10, a=10, b=30, n=4), FaultCode.NONE),      # in place
    (dict(vop=VecOp.ADD, dst=8, a=10, b=30, n=4), FaultCode.NONE),       # below the source
    (dict(vop=VecOp.ADD, dst=11, a=10, b=30, n=4), FaultCode.FIELD),     # above: reads results
    (dict(vop=VecOp.ADD, dst=31, a=10, b=30, n=4), FaultCode.FIELD),     # same, on b
    (dict(vop=VecOp.RELU, dst=11, a=10, b=11, n=4), FaultCode.FIELD),
    (dict(vop=VecOp.RELU, dst=20, a=10, b=11, n=4), FaultCode.NONE),     # b unused by RELU
    (dict(vop=VecOp.MAX, dst=20, a=10, b=22, n=4, bfix=1), FaultCode.FIELD),
    (dict(vop=VecOp.MAX, dst=20, a=10, b=24, n=4, bfix=1), FaultCode.NONE),
    (dict(vop=VecOp.REQUANT, dst=10, a=10, n=8), FaultCode.NONE),        # packs in place
    (dict(vop=VecOp.REQUANT, dst=11, a=10, n=8), FaultCode.FIELD),
])
def test_vec_destination_must_not_run_ahead_of_its_sources(fields, fault):
    instr = isa.decode(isa.encode(Opcode.VEC, **fields))
    assert isa.validate(TINY, instr)[0] == fault


@pytest.mark.parametrize("fields, fault", [
    (dict(stype=ElemType.BF16, dtype=ElemType.FP32, dst=10, a=10, n=4), FaultCode.FIELD),
    (dict(stype=ElemType.BF16, dtype=ElemType.FP32, dst=8, a=10, n=4), FaultCode.FIELD),
    (dict(stype=ElemType.BF16, dtype=ElemType.FP32, dst=12, a=10, n=4), FaultCode.NONE),
    (dict(stype=ElemType.BF16, dtype=ElemType.FP32, dst=6, a=10, n=4), FaultCode.NONE),
    (dict(stype=ElemType.FP32, dtype=ElemType.BF16, dst=10, a=10, n=4), FaultCode.NONE),
    (dict(stype=ElemType.FP32, dtype=ElemType.INT8, dst=11, a=10, n=4), FaultCode.FIELD),
])
def test_widening_conversions_never_overlap_their_source(fields, fault):
    """An element that reads one source word for several results (BF16 -> FP32, INT8 -> FP32)
    would read its own results in place: those conversions may not overlap their source at
    all; narrowing ones follow the in-place rule."""
    instr = isa.decode(isa.encode(Opcode.FCVT, **fields))
    assert isa.validate(TINY, instr)[0] == fault


def test_interpreter_bf16_product_and_vector_ops():
    """MATMUL BF16 and MREAD give the FP32 reference; FAXPY with SETR's q, a reduction and a
    conversion back to BF16 give what the numeric reference gives on the same words."""
    cfg = TINY
    n = cfg.mac_dim
    rng = np.random.default_rng(bench_seed())
    k = 6                                          # three BF16 words of two vectors each
    a = nx.bf16_bits(rng.standard_normal((n, k)))
    b = nx.bf16_bits(rng.standard_normal((k, n)))
    bf16 = ELEMENTS[ElemType.BF16]
    words = lambda m: [bf16.pack(cfg, m[2 * w:2 * w + 2].reshape(-1)) for w in range(len(m) // 2)]
    tp = TileProgram(cfg)
    tp.load((0, 0), 0, words(a.T))
    tp.load((0, 0), 16, words(b))
    p = tp.node(0, 0)
    p.matmul(0, 16, k // 2, clear=True, dtype="bf16")
    p.mread(32)
    p.fscale(-0.5)
    p.fvec("faxpy", dst=40, a=32, b=32, n=n)           # c * -0.5 + c
    p.fvec("fsum", dst=50, a=40, n=n)                  # sum of the rows, lane by lane
    p.fcvt("fp32", "bf16", dst=60, a=40, n=n)
    p.halt()
    tp.read((0, 0), 32, n)
    tp.read((0, 0), 40, n)
    tp.read((0, 0), 50, 1)
    tp.read((0, 0), 60, n // 2)
    result = interpret(tp)
    assert result.deadlock is None and not result.faults()
    fp32 = ELEMENTS[ElemType.FP32]
    lanes = lambda ws: np.array([fp32.unpack(cfg, w) for w in ws])
    c = nx.bf16_matmul(a, b)
    assert np.array_equal(lanes(result.reads[((0, 0), 32, n)]), c)
    half = nx.fp32_axpy(c, nx.f32_bits(-0.5), c)
    assert np.array_equal(lanes(result.reads[((0, 0), 40, n)]), half)
    assert np.array_equal(lanes(result.reads[((0, 0), 50, 1)])[0], nx.fp32_sum(half))
    packed = np.concatenate([bf16.unpack(cfg, w) for w in result.reads[((0, 0), 60, n // 2)]])
    assert np.array_equal(packed.reshape(n, n), nx.bf16_from_f32_rne(half))


def _shaped(op, shape, **fields):
    """The effective word of a shaped SEND / MCAST: the instruction and the shape register."""
    word = isa.encode(op, shaped=1, **fields)
    return isa.decode(word | isa.SHAPE_FORMAT.pack(**shape) << isa.INSTR_BITS)


def test_shaped_transfers_are_checked_with_their_shape():
    w = TINY.sram_words
    ok = (FaultCode.NONE, 0)
    send = dict(x=1, y=1, counter=3)
    gather = dict(extra=3, sstride=10, dstride=2)      # 4 rows of 2 words, 10 apart
    assert isa.validate(TINY, _shaped(Opcode.SEND, gather, src=w - 32, n=2, dst=0, **send)) == ok
    # the last row ends at src + 3 * 10 + 2
    assert isa.validate(TINY, _shaped(Opcode.SEND, gather, src=w - 31, n=2, dst=0, **send)) == \
        (FaultCode.ADDRESS, w - 31)
    # zero rows read nothing: any src
    zeros = dict(gather, zero=1)
    assert isa.validate(TINY, _shaped(Opcode.SEND, zeros, src=w - 1, n=2, dst=0, **send)) == ok
    scatter = dict(extra=2, dstride=100)               # 3 rows, 100 apart at the receiver
    assert isa.validate(TINY, _shaped(Opcode.SEND, scatter, src=0, n=4, dst=w - 204,
                                      **send)) == ok
    assert isa.validate(TINY, _shaped(Opcode.SEND, scatter, src=0, n=4, dst=w - 203,
                                      **send)) == (FaultCode.ADDRESS, w - 203)
    mc = dict(col=0, first=0, last=1, counter=1)
    assert isa.validate(TINY, _shaped(Opcode.MCAST, scatter, src=0, n=4, dst=w - 203,
                                      **mc)) == (FaultCode.ADDRESS, w - 203)
    # the node check still comes first
    assert isa.validate(TINY, _shaped(Opcode.SEND, scatter, src=0, n=4, dst=w - 203, x=3, y=0,
                                      counter=0))[0] == FaultCode.NODE
    # one packet's 16-bit length: only a 2**16-word SRAM can exceed it
    big = TileConfig(**{**TINY.__dict__, "name": "big", "sram_kib": 1024})
    assert big.sram_words == 1 << 16
    whole = dict(extra=63, dstride=1024)               # 64 x 1024 = 65536 words
    assert isa.validate(big, _shaped(Opcode.SEND, whole, src=0, n=1024, dst=0, x=0, y=0,
                                     counter=0)) == (FaultCode.FIELD, 1024)
    assert isa.validate(big, _shaped(Opcode.SEND, dict(whole, extra=62), src=0, n=1024, dst=0,
                                     x=0, y=0, counter=0)) == ok
    # hazard ranges: the hull of the rows read; nothing for zeros
    assert isa.hazard_ranges(_shaped(Opcode.SEND, gather, src=5, n=2, dst=0, **send)) == \
        Ranges((5, 37))
    assert isa.hazard_ranges(_shaped(Opcode.SEND, zeros, src=5, n=2, dst=0, **send)) == \
        Ranges((5, 5))
    # a word wider than 64 bits is only an effective SEND or MCAST
    with pytest.raises(ValueError, match="wider"):
        isa.decode(isa.encode(Opcode.MATMUL, a=0, b=0, kw=1) | 1 << 64)


def test_shaped_transfer_rows_and_packets_match_numpy_strides():
    rng = random.Random(bench_seed())
    for _ in range(300):
        n, extra = rng.randint(0, 5), rng.randint(0, 4)
        sstride, dstride = rng.randint(0, 9), rng.choice([n, rng.randint(0, 9)])
        instr = _shaped(Opcode.SEND, dict(extra=extra, sstride=sstride, dstride=dstride),
                        src=3, n=n, dst=200, x=0, y=0, counter=0)
        memory = np.arange(1000)
        rows = np.lib.stride_tricks.as_strided(
            memory[3:], shape=(extra + 1, n), strides=(sstride * 8, 8))
        assert isa.dma_source(instr) == [int(v) for v in rows.flat]
        packets = isa.dma_packets(instr)
        if dstride == n or extra == 0:       # contiguous at the receiver: one packet
            assert packets == [(200, (extra + 1) * n, True)]
        else:                                # a packet per row, the last one bumping
            assert packets == [(200 + r * dstride, n, r == extra) for r in range(extra + 1)]
        assert sum(bump for *_, bump in packets) == 1


def test_shape_register_is_set_by_shape_used_by_shaped_transfers_cleared_by_start():
    lc = isa.LoopControl(TINY)
    send = isa.encode(Opcode.SEND, src=0, n=2, x=0, y=0, dst=8, counter=0)
    shaped = isa.encode(Opcode.SEND, src=0, n=2, x=0, y=0, dst=8, counter=0, shaped=1)
    assert lc.effective(shaped) == shaped                  # all zeros: the plain transfer
    shape = isa.encode(Opcode.SHAPE, extra=2, sstride=5, dstride=3, zero=0)
    lc.issue(isa.decode(shape), 0)
    assert isa.decode(lc.effective(send)) == isa.decode(send)     # not shaped: no shape
    eff = isa.decode(lc.effective(shaped))
    assert (eff.extra, eff.sstride, eff.dstride, eff.zero) == (2, 5, 3, 0)
    # a STEP still moves the address fields of the shaped word
    with_loop = isa.LoopControl(TINY)
    with_loop.issue(isa.decode(shape), 0)
    with_loop.issue(isa.decode(isa.encode(Opcode.LOOP, count=2, body=2)), 1)
    with_loop.loops[-1][3] = 1
    with_loop.issue(isa.decode(isa.encode(Opcode.STEP, s0=4, s1=10)), 2)
    eff = isa.decode(with_loop.effective(shaped))
    assert (eff.src, eff.dst, eff.extra, eff.sstride) == (4, 18, 2, 5)
    lc.reset()
    assert lc.effective(shaped) == shaped


def test_assembler_shape_and_shaped_sends():
    p = Program(TINY)
    p.shape(rows=4, sstride=16, dstride=2)
    p.send(0, 2, (1, 0), 0, shaped=True)
    p.mcast(0, 2, 0, row=(0, 1), shaped=True)
    assert isa.decode(p.words[0]).fields == dict(extra=3, sstride=16, dstride=2, zero=0, span=0,
                                                 span_first=0, span_last=0)
    assert isa.decode(p.words[1]).shaped == 1
    # checked with the last SHAPE: 4 rows 16 apart from 220 leave the 256-word SRAM
    with pytest.raises(AsmError, match="SRAM range beyond"):
        p.send(220, 2, (1, 0), 0, shaped=True)
    p.send(220, 2, (1, 0), 0)                       # the same SEND unshaped fits
    with pytest.raises(AsmError, match="rows=0"):
        p.shape(rows=0)
    with pytest.raises(AsmError, match="rows=4097"):
        p.shape(rows=4097)
    text = disassemble(p.words)
    assert "SHAPE" in text and "shaped=1" in text
    assert assemble(TINY, text).words == p.words


def test_rectangle_multicasts_are_checked_and_reach_their_rectangle():
    """A shaped MCAST with a span: its receivers (column by column), its checks, and on a 3x3
    tile the words and counter bumps of a row MCAST spanned over rows and of a column MCAST
    spanned over columns, in the interpreter."""
    cfg = TINY.with_grid(3, 3)
    ok = (FaultCode.NONE, 0)
    mc = dict(src=0, n=2, dst=100, counter=1)
    rect = dict(span=1, span_first=1, span_last=2)
    row = _shaped(Opcode.MCAST, rect, col=0, first=0, last=1, **mc)
    column = _shaped(Opcode.MCAST, dict(rect, span_first=0), col=1, first=2, last=2, **mc)
    assert isa.mcast_rectangle(row, (1, 1)) == (0, 1, 1, 2)
    assert isa.mcast_receivers(row, (1, 1)) == [(0, 1), (0, 2), (1, 1), (1, 2)]
    assert isa.mcast_receivers(column, (1, 1)) == [(0, 2), (1, 2), (2, 2)]
    assert isa.validate(cfg, row) == ok and isa.validate(cfg, column) == ok
    assert isa.validate(cfg, _shaped(Opcode.MCAST, dict(rect, span_first=2, span_last=1),
                                     col=0, first=0, last=1, **mc)) == (FaultCode.FIELD, 2)
    assert isa.validate(cfg, _shaped(Opcode.MCAST, dict(rect, span_last=3), col=0, first=0,
                                     last=1, **mc)) == (FaultCode.NODE, 3)
    wide = TINY.with_grid(2, 4)           # a column MCAST spans columns: up to cols - 1
    assert isa.validate(wide, _shaped(Opcode.MCAST, dict(rect, span_last=3), col=1, first=0,
                                      last=1, **mc)) == ok
    assert isa.validate(wide, _shaped(Opcode.MCAST, dict(rect, span_last=3), col=0, first=0,
                                      last=1, **mc)) == (FaultCode.NODE, 3)
    # the span of a SEND is a mistake
    assert isa.validate(cfg, _shaped(Opcode.SEND, rect, x=0, y=0, **mc)) == (FaultCode.FIELD, 1)
    p = Program(cfg)
    p.shape(rows=1, span=(1, 2))
    with pytest.raises(AsmError, match="SEND"):
        p.send(0, 2, (0, 0), 0, shaped=True)

    tp = TileProgram(cfg)
    words = [word_from_bytes([k + 1] * 16) for k in range(4)]
    tp.load((1, 1), 0, words)
    p = tp.node(1, 1)
    p.shape(rows=2, sstride=2, dstride=5, span=(1, 2))    # two rows of one word, scattered
    p.mcast(0, 1, 100, row=(0, 1), counter=3, shaped=True)
    p.shape(rows=1, span=(0, 2))
    p.mcast(1, 2, 110, column=(2, 2), counter=4, shaped=True)
    expect3 = {(0, 1), (0, 2), (1, 1), (1, 2)}
    expect4 = {(0, 2), (1, 2), (2, 2)}
    for node in tp.nodes:
        q = tp.node(*node) if node != (1, 1) else p
        if node in expect3:
            q.wait(3, 1)
        if node in expect4:
            q.wait(4, 1)
        q.halt()
    result = interpret(tp)
    assert not result.faults() and result.deadlock is None
    for node, n in result.nodes.items():
        got = [n.sram[100], n.sram[105]]
        assert got == ([words[0], words[2]] if node in expect3 else [0, 0]), node
        assert n.sram[110:112] == (words[1:3] if node in expect4 else [0, 0]), node
        assert n.counters[3] == 0 and n.counters[4] == 0, node


def test_interpreter_transposed_readout_and_a_transpose_through_the_bank():
    """MREAD tr writes the columns of the bank: (A @ B)^T; with A the identity, B^T itself (a
    block transposed on the tile, exact)."""
    cfg = TINY
    rng = np.random.default_rng(bench_seed())
    n = cfg.mac_dim
    k = MATRIX_TYPES[ElemType.INT8].vectors_per_word(cfg)      # one word per operand
    a = rng.integers(-128, 128, size=(n, k))
    b = rng.integers(-128, 128, size=(k, n))
    eye = np.eye(n, k, dtype=np.int64)
    tp = TileProgram(cfg)
    tp.load((0, 0), 0, operand_words(cfg, a.T) + operand_words(cfg, eye.T))
    tp.load((0, 0), 16, operand_words(cfg, b))
    p = tp.node(0, 0)
    p.matmul(0, 16, 1, clear=True, bank=1)
    p.mread(32, bank=1, transpose=True)
    p.mread(40, row0=1, nrows=2, bank=1)                     # rows, for comparison
    p.matmul(1, 16, 1, clear=True, bank=0)
    p.mread(48, row0=1, nrows=3, transpose=True)
    p.halt()
    tp.read((0, 0), 32, 24)
    words = interpret(tp).reads[((0, 0), 32, 24)]
    lanes = np.array([lanes_from_word(w, n) for w in words])
    c = a @ b
    assert np.array_equal(lanes[0:n], c.T)
    assert np.array_equal(lanes[8:10], c[1:3])
    assert np.array_equal(lanes[16:19], b.T[1:4])
