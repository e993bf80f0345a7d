"""The instruction set (encoding, validity, hazard ranges), the assembler and the functional
interpreter."""

import random

import numpy as np
import pytest

from conftest import bench_seed
from d1tile.formats import VecOp, bytes_from_word, lanes_from_word, word_from_bytes
from d1tile.params import TileConfig
from d1tile.sim import isa
from d1tile.sim.interp import interpret
from d1tile.sim.isa import FaultCode, Opcode, Ranges, overlaps
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
    for code in range(8, 16):
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
    (Opcode.SEND, dict(src=0, n=1, x=2, y=0, dst=0), (FaultCode.NODE, 2)),
    (Opcode.SEND, dict(src=0, n=1, x=0, y=3, dst=0), (FaultCode.NODE, 3 << 4)),
    (Opcode.SEND, dict(src=200, n=60, x=1, y=1, dst=0), (FaultCode.ADDRESS, 200)),
    (Opcode.SEND, dict(src=0, n=60, x=1, y=1, dst=200), (FaultCode.ADDRESS, 200)),
    (Opcode.SEND, dict(src=256 - 1, n=0, x=1, y=1, dst=0), (FaultCode.NONE, 0)),
])
def test_validity_rules(op, fields, fault):
    assert TINY.sram_words == 256
    assert isa.validate(TINY, isa.decode(isa.encode(op, **fields))) == fault


def test_hazard_ranges_and_overlap():
    vec = isa.decode(isa.encode(Opcode.VEC, vop=VecOp.ADD, dst=20, a=0, b=10, n=4))
    assert isa.hazard_ranges(vec) == Ranges((0, 4), (10, 14), (20, 24))
    req = isa.decode(isa.encode(Opcode.VEC, vop=VecOp.REQUANT, dst=20, a=0, b=99, n=5))
    assert isa.hazard_ranges(req) == Ranges((0, 5), (0, 0), (20, 22))
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


@pytest.mark.parametrize("text, message", [
    ("FOO 1", "line 1: unknown instruction 'FOO'"),
    ("NOP\nMATMUL 0, 0, 0", "line 2: MATMUL a=0, b=0, kw=0, clear=0: field out of range"),
    ("MATMUL 0, 250, 8", "line 1: .*SRAM range beyond the node's 256 words \\(at address 250\\)"),
    ("SEND 0, 1, 5, 0, 0", "destination node outside the 2x2 grid"),
    ("WAIT 16, 1", "counter=16 does not fit 4 unsigned bits"),
    ("WAIT 1, 1, 1", "WAIT takes at most 2 arguments"),
    ("WAIT counter=1, count=2", "WAIT has no field 'count'"),
    ("WAIT 1, x", "value='x' is not a number"),
    ("VEC SHUFFLE, 0, 0, 0, 0, 1", "vop='SHUFFLE' is not a number"),
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


# -- functional interpreter ----------------------------------------------------------------------

def operand_words(cfg, matrix):
    """(4*kw, N) int8 rows -> kw words (4 operand vectors per word)."""
    rows = np.asarray(matrix, dtype=np.int8)
    per = cfg.k_per_word
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
    p.matmul(0, 16, k // cfg.k_per_word, clear=True)
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
