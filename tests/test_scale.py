"""Grids beyond 15 x 15 (up to `TileConfig.MAX_GRID` = 32 x 32): node coordinates of
`d1tile.params.COORD_BITS` = 5 bits in the instruction set, SEND's x one bit wider for the host
edge (x == cols), the NODE fault's value x | y << SEND_X_BITS, and the cycle model and the
functional interpreter agreeing on random programs on a D1-die-sized 18 x 20 grid and on
32 x 32 (docs/architecture.md, "Scale"). The RTL of the full 16 x 16 tile takes minutes to
elaborate, so it is a bench (`bench/rtl_scale.py`); here its coordinate-carrying parts are
elaborated at 16 x 16 and 32 x 32."""

from __future__ import annotations

import random

import pytest

from d1tile import isa
from d1tile.formats import FormatError
from d1tile.isa import COORD_BITS, SEND_X_BITS, FaultCode, Opcode, decode, encode
from d1tile.params import TileConfig
from d1tile.sim.interp import interpret
from d1tile.sim.tile import TileModel
from d1tile.sw.asm import AsmError, Program, assemble, disassemble
from d1tile.sw.program import TileProgram
from d1tile.sw.randprog import random_tile_program

from conftest import bench_seed

TINY = TileConfig.preset("tiny")


def test_coordinate_widths_come_from_one_constant():
    assert (COORD_BITS, SEND_X_BITS, TileConfig.MAX_GRID) == (5, 6, 32)
    fields = {(op, f.name): f.width for op, fmt in isa.FORMATS.items() for f in fmt.fields}
    assert fields[(Opcode.SEND, "x")] == SEND_X_BITS
    for op, name in ((Opcode.SEND, "y"), (Opcode.MCAST, "first"), (Opcode.MCAST, "last"),
                     (Opcode.SHAPE, "span_first"), (Opcode.SHAPE, "span_last")):
        assert fields[(op, name)] == COORD_BITS, (op, name)
    assert all(fmt.width <= isa.INSTR_BITS for fmt in isa.FORMATS.values())
    assert isa.SEND_MAX_WORDS == (1 << fields[(Opcode.SEND, "n")]) - 1 == \
        (1 << fields[(Opcode.MCAST, "n")]) - 1 == 2047
    # the largest grid's flits: x runs to 32 (the host edge)
    assert TINY.with_grid(32, 32).coord_bits == 6


@pytest.mark.parametrize("op, fields", [
    (Opcode.SEND, dict(src=5, n=2047, x=32, y=31, dst=7, counter=31, shaped=1)),
    (Opcode.SEND, dict(src=0, n=1, x=63, y=16, dst=0)),
    (Opcode.MCAST, dict(src=1, n=2047, col=1, first=16, last=31, dst=2, counter=30, shaped=1)),
    (Opcode.SHAPE, dict(extra=4095, sstride=3, dstride=4, zero=1, span=1, span_first=17,
                        span_last=31)),
])
def test_coordinates_above_15_round_trip(op, fields):
    word = encode(op, **fields)
    assert word < 1 << isa.INSTR_BITS
    got = decode(word)
    assert got.op == op and {k: v for k, v in got.fields.items() if k in fields} == fields
    # and through the assembler's text
    text = disassemble([word])
    assert assemble(TINY, text, check=False).words == [word]


@pytest.mark.parametrize("op, fields", [
    (Opcode.SEND, dict(x=64)), (Opcode.SEND, dict(y=32)), (Opcode.MCAST, dict(first=32)),
    (Opcode.MCAST, dict(last=32)), (Opcode.SHAPE, dict(span_last=32)),
    (Opcode.SEND, dict(n=2048)),
])
def test_coordinates_beyond_their_fields_are_refused(op, fields):
    with pytest.raises(FormatError, match="does not fit"):
        encode(op, **fields)


def test_the_assembler_checks_large_grids_against_the_config():
    cfg = TINY.with_grid(20, 18)
    p = Program(cfg)
    p.send(0, 1, (18, 19), 0)                      # x = cols: to the host
    p.send(0, 1, (17, 19), 0)
    p.mcast(0, 1, 0, row=(3, 17))
    p.mcast(0, 1, 0, column=(0, 19))
    with pytest.raises(AsmError, match="outside the 20x18 grid"):
        p.send(0, 1, (19, 0), 0)
    with pytest.raises(AsmError, match="outside the 20x18 grid"):
        p.send(0, 1, (0, 20), 0)
    assert isa.validate(cfg, decode(encode(Opcode.SEND, x=19, y=20))) == \
        (FaultCode.NODE, 19 | 20 << SEND_X_BITS)


def _has_far_sends(tp: TileProgram) -> bool:
    """Some SEND names a node beyond the old 4-bit range (x or y > 15)."""
    for node in tp.nodes:
        for word in tp.words_of(node):
            instr = decode(word)
            if instr.op == Opcode.SEND and (instr.x > 15 or instr.y > 15):
                return True
    return False


@pytest.mark.parametrize("grid", [(18, 20), (32, 32)])
def test_model_and_interpreter_agree_on_random_programs_on_large_grids(grid):
    """A D1-die-sized 18 x 20 grid and the largest, 32 x 32: random race-free programs (sends
    between any nodes, multicasts and rectangles, streams to the host at x = cols) give the
    cycle model the functional interpreter's results."""
    cfg = TINY.with_grid(*grid)
    tp = random_tile_program(cfg, random.Random(f"{bench_seed()}:scale:{grid}"), phases=2)
    assert _has_far_sends(tp)
    result = TileModel(cfg).run(tp)
    functional = interpret(tp)
    assert result.hang is None and not result.faults
    assert len(result.nodes) == cfg.nodes and all(
        r.done_cycle is not None for r in result.nodes.values())
    assert result.reads == functional.reads
    assert result.streams == functional.streams


def test_send_to_the_host_edge_at_32_columns():
    """On a 2 x 32 grid the nodes of the last column send to x = 32, the host edge, and node
    (0, 0) sends across the whole row to (31, 1) and to the host; a SEND to x = 33 faults NODE
    with the value x | y << SEND_X_BITS, an MCAST past the last column with its `last`, on the
    model and the interpreter alike."""
    cfg = TINY.with_grid(2, 32)
    host = cfg.cols
    tp = TileProgram(cfg)
    data = {node: [(node[0] << 8 | node[1] << 4 | k) for k in range(4)] for node in tp.nodes}
    for node in tp.nodes:
        tp.load(node, 0, data[node])
    p = tp.node(0, 0)
    p.send(0, 4, (31, 1), 64, counter=3)
    p.send(0, 2, (host, 0), 10)
    p.halt()
    for y in range(2):
        p = tp.node(31, y)
        if y == 1:
            p.wait(3, 1)
            p.send(64, 4, (host, 1), 20)       # what (0, 0) sent it, on to the host
        p.send(0, 4, (host, y), 30)
        p.halt()
    tp.read((31, 1), 64, 4)
    faulty = Program(cfg, check=False)
    faulty.nop()
    faulty.send(0, 1, (33, 1), 0)
    tp.programs[(5, 1)] = faulty
    faulty = Program(cfg, check=False)
    faulty.mcast(0, 1, 100, row=(30, 31))        # fine: the last column is 31
    faulty.mcast(0, 1, 100, column=(0, 2))       # no row 2
    tp.programs[(20, 0)] = faulty
    expected_faults = {(5, 1): (FaultCode.NODE, 1, 33 | 1 << SEND_X_BITS),
                       (20, 0): (FaultCode.NODE, 1, 2)}
    result = TileModel(cfg).run(tp)
    functional = interpret(tp)
    got = {node: (r.fault, r.pc, r.fault_value) for node, r in result.faults.items()}
    assert got == functional.faults() == expected_faults
    assert result.hang is None
    assert result.reads[((31, 1), 64, 4)] == data[(0, 0)]
    assert result.streams == functional.streams
    assert result.streams[(0, 0)] == [(10, data[(0, 0)][:2])]
    assert result.streams[(31, 0)] == [(30, data[(31, 0)])]
    assert result.streams[(31, 1)] == [(20, data[(0, 0)]), (30, data[(31, 1)])]


def test_rtl_parts_that_carry_coordinates_elaborate_at_large_grids():
    """The 16 x 16 mesh of routers (`RouterMesh`: every router's coordinates, the flits'
    5-bit fields) elaborates, and the node at the far corner of a 32 x 32 tile (its
    sequencer's decoder of the wider SEND, MCAST and SHAPE fields, its DMA building their
    6-bit flit coordinates) converts to RTLIL. The whole 16 x 16 tile elaborates too, in
    minutes (`bench/rtl_scale.py`)."""
    from amaranth.back import rtlil
    from amaranth.hdl import Fragment

    from d1tile.hw.node import Node
    from d1tile.hw.router import RouterMesh

    Fragment.get(RouterMesh(TINY.with_grid(16, 16)), None)
    cfg = TINY.with_grid(32, 32)
    text = rtlil.convert(Node(cfg, cfg.cols - 1, cfg.rows - 1), name="node")
    assert "module" in text and "seq" in text


def test_rtl_sequencer_checks_coordinates_at_32_columns():
    """The RTL sequencer of a 32 x 32 tile (Amaranth simulator) raises the NODE faults and
    values `isa.validate` gives, at the edges of the wider fields: SEND to x = 32 (the host)
    and 31 pass, x = 33 and 63 fault with x | y << SEND_X_BITS (y up to 31); MCAST `last` = 31
    passes, in a row and in a column; and on an 18 x 20 tile (rows x cols) x = 20 passes,
    x = 21, y = 18 and MCAST `last` = 18 (a column), 20 (a row) fault."""
    from amaranth.sim import Simulator

    from d1tile.contracts import SeqState
    from d1tile.hw.sequencer import Sequencer

    def cases(cfg):
        rows, cols = cfg.rows, cfg.cols
        send = lambda x, y: encode(Opcode.SEND, src=0, n=1, x=x, y=y, dst=0)
        mcast = lambda col, last: encode(Opcode.MCAST, src=0, n=1, col=col, first=0, last=last,
                                         dst=0)
        words = [send(cols, rows - 1), send(cols - 1, rows - 1), send(cols + 1, 0),
                 send(cols + 1, rows - 1),
                 send((1 << SEND_X_BITS) - 1, rows - 1), send(0, rows - 1),
                 mcast(0, cols - 1), mcast(1, rows - 1)]
        if rows < 1 << COORD_BITS:
            words += [send(0, rows), mcast(1, rows)]
        if cols < 1 << COORD_BITS:
            words += [mcast(0, cols)]
        return words

    for cfg in (TINY.with_grid(32, 32), TINY.with_grid(18, 20)):
        dut = Sequencer(cfg)
        got, expected = [], []
        words = cases(cfg)
        halt = encode(Opcode.HALT)

        async def bench(ctx):
            for engine in (dut.matrix, dut.readout, dut.vector, dut.dma):
                ctx.set(engine.idle, 1)
            for word in words:
                for addr, data in enumerate((word, halt)):
                    ctx.set(dut.imem_w.addr, addr)
                    ctx.set(dut.imem_w.data, data)
                    ctx.set(dut.imem_w.en, 1)
                    await ctx.tick()
                ctx.set(dut.imem_w.en, 0)
                ctx.set(dut.start_req, 1)
                await ctx.tick()
                ctx.set(dut.start_req, 0)
                for _ in range(20):
                    await ctx.tick()
                    if ctx.get(dut.state) == SeqState.STOPPED:
                        break
                assert ctx.get(dut.state) == SeqState.STOPPED, decode(word)
                got.append((FaultCode(ctx.get(dut.fault_code)), ctx.get(dut.fault_value)))
                expected.append(isa.validate(cfg, decode(word)))

        sim = Simulator(dut)
        sim.add_clock(1e-6)
        sim.add_testbench(bench)
        sim.run()
        assert got == expected
        kinds = [code for code, _ in expected]
        assert kinds.count(FaultCode.NONE) >= 4 and kinds.count(FaultCode.NODE) >= 3, expected
        assert (FaultCode.NODE, cfg.cols + 1) in expected
        assert (FaultCode.NODE, cfg.cols + 1 | (cfg.rows - 1) << SEND_X_BITS) in expected
