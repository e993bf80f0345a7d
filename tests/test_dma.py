"""The DMA engines: the models on their own (formats, timing formulas, acceptance rules), each
RTL half against its model in Amaranth's simulator with random (also bad) stimuli, and the
cocotb/Verilator bench of record (tests/hw/tb_dma.py): DmaOut + DmaIn + NodeSRAM + a Router at
(0, 0), in lockstep with the models, on both presets."""

from __future__ import annotations

import random

import pytest
from amaranth.hdl import Module
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out
from amaranth.sim import Simulator

from d1tile.formats import (COUNTER_NAMES, SYNC_COUNTER_ID_BITS, Multicast, PacketKind, flit_format,
                            packet_header_format)
from d1tile.hw.dma import DmaIn, DmaOut
from d1tile.hw.router import Router
from d1tile.hw.sequencer import EngineCommand, ImemWritePort, Sequencer
from d1tile.hw.sram import NodeSRAM, SRAMReadPort, SRAMWritePort
from d1tile.params import TileConfig
from d1tile.sim.dma import (BAD_READ_TAG, PREFETCH_DEPTH, DmaInModel, DmaOutModel,
                            counter_word, counter_words, job_cycles, reply_request_format)
from d1tile.sim.host import packet
from d1tile.isa import (COORD_BITS, FORMATS, INSTR_BITS, SEND_X_BITS, SHAPE_FORMAT, SYNC_COUNTERS,
                        Opcode, encode)
from d1tile.sim.sram import SRAMModel

from conftest import bench_seed, run_bench


TINY = TileConfig.preset("tiny")
DEFAULT = TileConfig.preset("default")


def send(src, n, x, y, dst, counter=0):
    return encode(Opcode.SEND, src=src, n=n, x=x, y=y, dst=dst, counter=counter)


HALT = encode(Opcode.HALT)


# -- formats and parameters -------------------------------------------------------------------

@pytest.mark.parametrize("cfg", [TINY, DEFAULT], ids=["tiny", "default"])
def test_reply_request_format_and_counter_words(cfg):
    fmt = reply_request_format(cfg)
    assert [(f.name, f.width) for f in fmt.fields] == [
        ("ctrs", 1), ("src_x", cfg.coord_bits), ("src_y", cfg.coord_bits), ("addr", 16),
        ("length", 16), ("tag", 16)]
    assert fmt.layout.size == fmt.width
    assert counter_words(cfg) == -(-len(COUNTER_NAMES) // cfg.lanes)
    values = [0x1000_0000 + 3 * i for i in range(len(COUNTER_NAMES))]
    values[0] = -1   # wrapped to 32 bits
    lanes = []
    for w in range(counter_words(cfg)):
        word = counter_word(cfg, values, w)
        lanes += [(word >> (32 * i)) & 0xFFFF_FFFF for i in range(cfg.lanes)]
    padding = counter_words(cfg) * cfg.lanes - len(COUNTER_NAMES)
    assert lanes == [v & 0xFFFF_FFFF for v in values] + [0] * padding


def test_job_cycles():
    assert [job_cycles(n) for n in (0, 1, 2, 10)] == [1, 3, 4, 12]
    assert [job_cycles(n, counters=True) for n in (0, 1, 6)] == [1, 2, 7]
    with pytest.raises(ValueError, match="-1"):
        job_cycles(-1)


def test_bad_arguments_are_named():
    for cls in (DmaOut, DmaIn, DmaOutModel, DmaInModel):
        with pytest.raises(TypeError, match="cfg must be a TileConfig"):
            cls("tiny", 0, 0)
        with pytest.raises(ValueError, match="x=2"):
            cls(TINY, 2, 0)
        with pytest.raises(ValueError, match="y=5"):
            cls(TINY, 0, 5)
        with pytest.raises(TypeError, match="x must be an integer"):
            cls(TINY, 0.5, 0)


def test_ports_and_properties():
    out, inp = DmaOut(TINY, 1, 0), DmaIn(TINY, 1, 0)
    assert (out.cfg, out.x, out.y) == (TINY, 1, 0)
    assert out.signature.members["cmd"] == In(EngineCommand.Signature(done=True))
    assert out.signature.members["read"] == Out(SRAMReadPort.Signature(TINY))
    assert inp.signature.members["write"] == Out(SRAMWritePort.Signature(TINY))
    assert out.signature.members["reply"].flow == In
    assert inp.signature.members["reply"].flow == Out
    assert set(inp.signature.members) == {
        "flit_in", "write", "reply", "imem_w", "start_req", "bump", "bump_id", "bad_packet",
        "dropped", "busy"}
    assert inp.signature.members["imem_w"] == Out(ImemWritePort.Signature())


def test_connects_to_the_sequencer_and_router():
    """The node's wiring type-checks: sequencer.dma -> DmaOut.cmd, DmaIn.imem_w ->
    sequencer.imem_w, the reply hand-off, and the router's local port."""
    m = Module()
    seq, router = Sequencer(TINY), Router(TINY, 1, 0)
    out, inp = DmaOut(TINY, 1, 0), DmaIn(TINY, 1, 0)
    wiring.connect(m, seq.dma, out.cmd)
    wiring.connect(m, inp.imem_w, seq.imem_w)
    wiring.connect(m, inp.reply, out.reply)
    wiring.connect(m, out.flit_out, router.in_local)
    wiring.connect(m, router.out_local, inp.flit_in)
    assert len(inp.bump_id) == len(seq.bump_id)


# -- the models: timing and rules -------------------------------------------------------------

class OutHarness:
    """DmaOutModel with an SRAM (port 0) and a router input that takes a flit when `ready`
    says so; records (cycle, flit) of every accepted flit and the cycles `idle` was high."""

    def __init__(self, cfg, x=0, y=0):
        self.cfg = cfg
        self.model = DmaOutModel(cfg, x, y)
        self.sram = SRAMModel(cfg, 1, 1)
        self.cycle = 0
        self.sent = []
        self.idle = []
        self.arriving = None

    def step(self, start=None, reply=None, ready=True, grant=True, counters=None, status=0,
             pc=0, info=0):
        m = self.model
        if m.idle(reply):
            self.idle.append(self.cycle)
        read = m.sram_reads()[0]
        grants, _ = self.sram.step([read if grant else None], [None])
        flit = m.offer()
        accepted = flit is not None and ready
        if accepted:
            self.sent.append((self.cycle, flit))
        m.tick(start=start is not None, instr=start or 0, status=status, pc=pc, info=info,
               reply=reply, read_grants=[grants[0]], read_data=[self.arriving],
               accepted=accepted, counters=counters)
        self.arriving = self.sram.read_data[0]
        self.cycle += 1


@pytest.mark.parametrize("n", [0, 1, 2, 7, 40])
def test_send_timing_and_packet(n):
    cfg = TINY
    h = OutHarness(cfg)
    rng = random.Random(n)
    words = [rng.getrandbits(cfg.word_bits) for _ in range(cfg.sram_words)]
    h.sram.load(0, words)
    h.step(start=send(10, n, 1, 1, 200, counter=9))   # cycle 0 = s
    for _ in range(n + 10):
        h.step()
    expected = packet(cfg, (1, 1), PacketKind.WRITE, src=(0, 0), addr=200,
                      body=words[10:10 + n], counter=9, bump=1)
    assert [f for _, f in h.sent] == expected
    cycles = [c for c, _ in h.sent]
    assert cycles == [1] + [3 + k for k in range(n)], cycles
    assert h.idle == [0] + list(range(job_cycles(n) + 1, h.cycle)), h.idle


@pytest.mark.parametrize("extra, n, sstride, dstride, zero", [
    (3, 4, 9, 4, 0),        # gather, contiguous at the receiver: one packet
    (3, 4, 9, 6, 0),        # scatter: a packet per row
    (2, 5, 0, 5, 0),        # one row repeated
    (4, 3, 7, 3, 1),        # zero rows, one packet
    (2, 3, 7, 10, 1),       # zero rows scattered
    (2, 0, 3, 1, 0),        # rows of no words: three bodyless heads, the last one bumping
])
def test_shaped_send_rows_packets_and_timing(extra, n, sstride, dstride, zero):
    """Words and packets of a shaped SEND, built here independently (rows sliced out of the
    memory); one flit a cycle; a one-packet transfer takes `job_cycles(rows x n)`, like a
    plain SEND of its words, and a scatter one more cycle per extra head."""
    cfg = TINY
    h = OutHarness(cfg)
    rng = random.Random(extra * 100 + n)
    words = [rng.getrandbits(cfg.word_bits) for _ in range(cfg.sram_words)]
    h.sram.load(0, words)
    word = (encode(Opcode.SEND, src=10, n=n, x=1, y=0, dst=100, counter=5, shaped=1)
            | SHAPE_FORMAT.pack(extra=extra, sstride=sstride, dstride=dstride,
                                zero=zero) << INSTR_BITS)
    h.step(start=word)
    for _ in range(80):
        h.step()
    rows = [[0] * n if zero else words[10 + r * sstride:10 + r * sstride + n]
            for r in range(extra + 1)]
    if dstride == n:
        expected = packet(cfg, (1, 0), PacketKind.WRITE, src=(0, 0), addr=100,
                          body=sum(rows, []), counter=5, bump=1)
    else:
        expected = sum((packet(cfg, (1, 0), PacketKind.WRITE, src=(0, 0),
                               addr=100 + r * dstride, body=row, counter=5,
                               bump=int(r == extra)) for r, row in enumerate(rows)), [])
    assert [f for _, f in h.sent] == expected
    cycles = [c for c, _ in h.sent]
    # the head in cycle 1; SRAM words after the first read's bubble, then one flit a cycle
    # across row ends and the heads of a scatter's rows alike; zero rows need no read
    bubble = int(bool(n) and not zero)
    assert cycles == [1] + list(range(2 + bubble, 1 + bubble + len(cycles))), cycles
    busy = cycles[-1]
    if dstride == n and not zero:
        assert busy == job_cycles((extra + 1) * n)
    assert h.idle == [0] + list(range(busy + 1, h.cycle)), h.idle


@pytest.mark.parametrize("col, extra, n, dstride, zero", [
    (0, 1, 3, 3, 0),        # a row MCAST spanned over two rows: one packet per column
    (0, 1, 3, 7, 0),        # scattered: two packets per column, the second bumping
    (1, 0, 4, 4, 0),        # a column MCAST spanned over columns 0..2
    (1, 2, 2, 5, 1),        # zero rows, scattered
    (0, 0, 0, 0, 0),        # no words: a bodyless head per column
])
def test_rectangle_multicast_packets_and_timing(col, extra, n, dstride, zero):
    """A shaped MCAST with a span, from node (1, 1) of a 3x3 grid: one COLUMN multicast per
    column of the rectangle, west to east (packets built here from the rows sliced out of the
    memory); each column's transfer runs as a new job that starts in the cycle its previous
    column's tail is taken (head one cycle later, then the first read's bubble)."""
    cfg = TINY.replace(rows=3, cols=3)
    h = OutHarness(cfg, 1, 1)
    rng = random.Random(extra * 10 + n)
    words = [rng.getrandbits(cfg.word_bits) for _ in range(cfg.sram_words)]
    h.sram.load(0, words)
    # col = 0: columns 0..2 (first..last) by rows 1..2 (the span); col = 1: rows 0..1 by
    # columns 0..2
    first, last, span = (0, 2, (1, 2)) if col == 0 else (0, 1, (0, 2))
    word = (encode(Opcode.MCAST, src=10, n=n, col=col, first=first, last=last, dst=100,
                   counter=6, shaped=1)
            | SHAPE_FORMAT.pack(extra=extra, sstride=5, dstride=dstride, zero=zero, span=1,
                                span_first=span[0], span_last=span[1]) << INSTR_BITS)
    (x0, x1), (y0, y1) = ((first, last), span) if col == 0 else (span, (first, last))
    h.step(start=word)
    for _ in range(120):
        h.step()
    rows = [[0] * n if zero else words[10 + r * 5:10 + r * 5 + n] for r in range(extra + 1)]
    fmt = flit_format(cfg)
    route = fmt.pack(mc=Multicast.COLUMN, last=y1)
    expected, cycles, t = [], [], 0
    bubble = int(bool(n) and not zero)
    for c in range(x0, x1 + 1):
        if extra == 0 or dstride == n:
            column = packet(cfg, (c, y0), PacketKind.WRITE, src=(1, 1), addr=100,
                            body=sum(rows, []), counter=6, bump=1)
        else:
            column = sum((packet(cfg, (c, y0), PacketKind.WRITE, src=(1, 1),
                                 addr=100 + r * dstride, body=row, counter=6,
                                 bump=int(r == extra)) for r, row in enumerate(rows)), [])
        expected += [f | route for f in column]
        cycles += [t + 1] + list(range(t + 2 + bubble, t + 1 + bubble + len(column)))
        t = cycles[-1]
    assert [f for _, f in h.sent] == expected
    assert [c for c, _ in h.sent] == cycles
    assert h.idle == [0] + list(range(t + 1, h.cycle)), h.idle


def test_full_rate_after_back_pressure_and_refusals():
    """With PREFETCH_DEPTH words the queue refills while the router stalls, and drains one flit
    per cycle afterwards; a refused read is repeated with the same address."""
    cfg = TINY
    h = OutHarness(cfg)
    h.sram.load(0, list(range(1, 65)))
    h.step(start=send(0, 30, 1, 0, 0))
    for _ in range(10):
        h.step(ready=False)
    assert len(h.model.queue) == PREFETCH_DEPTH and h.sent == []
    before = h.cycle
    for _ in range(8):
        h.step()
    assert [c for c, _ in h.sent] == list(range(before, before + 8))
    addr = h.model.sram_reads()[0]
    h.step(grant=False)
    assert h.model.sram_reads()[0] == addr, "a refused read must be asked again unchanged"
    for _ in range(40):
        h.step()
    payloads = [flit_format(cfg).get(f, "payload") for _, f in h.sent[1:]]
    assert payloads == list(range(1, 31))


def test_done_reply_and_ignored_commands():
    cfg = TINY
    h = OutHarness(cfg, x=1, y=1)
    hdr = packet_header_format(cfg)
    for word in (encode(Opcode.NOP), encode(Opcode.MATMUL, a=0, b=0, kw=1, clear=0)):
        h.step(start=word)
        assert h.model.idle(), f"{word:#x} is not a DMA command and must be ignored"
    h.step(start=HALT, status=4, pc=0x1234, info=0xBEEF)
    h.step()
    assert h.sent[-1][1] == packet(cfg, (cfg.cols, 1), PacketKind.DONE, src=(1, 1), addr=0x1234,
                                   length=0xBEEF, tag=4)[0]
    # A READ past the end of the SRAM: an empty reply tagged BAD_READ_TAG.
    req = {"ctrs": 0, "src_x": 2, "src_y": 0, "addr": cfg.sram_words - 2, "length": 3, "tag": 5}
    h.step(reply=req)
    h.step()
    head = hdr.unpack(flit_format(cfg).get(h.sent[-1][1], "payload"))
    assert (head["kind"], head["length"], head["tag"], head["addr"]) == (
        PacketKind.REPLY, 0, BAD_READ_TAG, cfg.sram_words - 2)
    # READ_CTRS: counter words straight into the queue, no read bubble.
    counters = list(range(100, 100 + len(COUNTER_NAMES)))
    start = h.cycle
    h.step(reply={"ctrs": 1, "src_x": 2, "src_y": 1, "addr": 0, "length": 0, "tag": 0x8000})
    for _ in range(12):
        h.step(counters=counters)
    cycles = [c - start for c, _ in h.sent[-1 - counter_words(cfg):]]
    assert cycles == list(range(1, job_cycles(counter_words(cfg), counters=True) + 1))
    body = [flit_format(cfg).get(f, "payload") for _, f in h.sent[-counter_words(cfg):]]
    assert body == [counter_word(cfg, counters, w) for w in range(counter_words(cfg))]


def test_pending_reply_goes_before_the_next_command():
    h = OutHarness(TINY)
    req = {"ctrs": 0, "src_x": 2, "src_y": 0, "addr": 0, "length": 1, "tag": 1}
    assert not h.model.idle(req) and h.model.reply_ready
    h.step(start=send(0, 1, 1, 0, 0), reply=req)   # the sequencer would not start here
    head = packet_header_format(TINY).unpack(flit_format(TINY).get(h.model.header, "payload"))
    assert head["kind"] == PacketKind.REPLY


def _flits(cfg, kind, body=(), tail_bump=0, counter=0, addr=0, length=None, tag=0):
    return packet(cfg, (0, 0), kind, src=(2, 1), addr=addr, body=body, bump=tail_bump,
                  counter=counter, length=length, tag=tag)


def test_dma_in_acceptance_rules():
    cfg = TINY
    m = DmaInModel(cfg, 0, 0)
    write = _flits(cfg, PacketKind.WRITE, body=[11, 22], tail_bump=1, counter=3, addr=5)
    assert m.accepts(write[0], False, True)
    m.tick(write[0])
    m.tick(write[1])
    assert m.sram_writes() == [(5, 11, (1 << cfg.word_bytes) - 1)] and m.busy
    # Second word: only when the pending write is granted this cycle.
    assert not m.accepts(write[2], False, True) and m.accepts(write[2], True, True)
    m.tick(write[2], write_grants=[True])
    assert m.sram_writes()[0][:2] == (6, 22) and not m.bump
    # A bodyless bumping WRITE waits for an empty slot, even if the slot is granted now.
    signal = _flits(cfg, PacketKind.WRITE, tail_bump=1, counter=4)
    assert not m.accepts(signal[0], True, True)
    m.tick(None, write_grants=[True])
    assert m.bump and m.bump_id == 3 and not m.busy
    assert m.accepts(signal[0], False, True)
    m.tick(signal[0])
    assert m.bump and m.bump_id == 4
    # READ: needs the slot free and the hand-off register free (or taken now).
    read = _flits(cfg, PacketKind.READ, addr=7, length=2, tag=9)
    m.tick(read[0])
    assert m.reply == {"ctrs": 0, "src_x": 2, "src_y": 1, "addr": 7, "length": 2, "tag": 9}
    ctrs = _flits(cfg, PacketKind.READ_CTRS, tag=1)
    assert not m.accepts(ctrs[0], False, False) and m.accepts(ctrs[0], False, True)
    m.tick(ctrs[0], reply_taken=True)
    assert m.reply["ctrs"] == 1
    # IMEM beyond the instruction memory is dropped; START pulses; bad kinds are consumed.
    imem = _flits(cfg, PacketKind.IMEM, body=[(1 << 70) | 0xAB, 0xCD], addr=cfg.imem_words - 1)
    for flit in imem:
        m.tick(flit)
        if flit is imem[1]:
            assert m.imem_write == (cfg.imem_words - 1, 0xAB)
    assert m.imem_write is None and m.dropped
    for kind in (PacketKind.DONE, PacketKind.REPLY, PacketKind.TEST, 9):
        flits = _flits(cfg, kind, body=[1, 2])
        m.tick(flits[0])
        assert m.bad_packet and m.busy
        m.tick(flits[1])
        m.tick(flits[2])
        assert not m.bad_packet and not m.busy
    start = _flits(cfg, PacketKind.START)
    m.tick(start[0])
    assert m.start_req
    # A WRITE beyond the SRAM: written with an empty mask, counted.
    far = _flits(cfg, PacketKind.WRITE, body=[5], addr=cfg.sram_words + 3)
    m.tick(far[0])
    m.tick(far[1])
    assert m.sram_writes() == [(3, 5, 0)] and m.dropped


# -- RTL against the models in Amaranth's simulator ---------------------------------------------

def _random_reply(cfg, rng):
    return {"ctrs": int(rng.random() < 0.3), "src_x": rng.randrange(1 << cfg.coord_bits),
            "src_y": rng.randrange(1 << cfg.coord_bits),
            "addr": rng.choice([rng.randrange(cfg.sram_words), rng.randrange(1 << 16)]),
            "length": rng.choice([0, rng.randrange(1, 9), rng.randrange(1 << 16)]),
            "tag": rng.randrange(1 << 16)}


def _random_instr(cfg, rng):
    """A command word as the sequencer hands it: SENDs and MCASTs (row, column, rectangle),
    some shaped (the shape above bit 64: the effective word), HALTs and random words. The
    engine trusts the fields, so any value goes, as long as model and RTL agree on it."""
    roll = rng.random()
    if roll < 0.8:
        n = rng.choice([0, 1, rng.randrange(2, 12)])
        src, dst, counter = rng.randrange(cfg.sram_words), rng.randrange(1 << 16), \
            rng.randrange(SYNC_COUNTERS)
        if roll < 0.5:
            op, word = Opcode.SEND, send(src, n, rng.randrange(1 << SEND_X_BITS),
                                         rng.randrange(1 << COORD_BITS), dst, counter)
        else:
            op, word = Opcode.MCAST, encode(Opcode.MCAST, src=src, n=n, col=rng.randrange(2),
                                            first=rng.randrange(1 << COORD_BITS),
                                            last=rng.randrange(1 << COORD_BITS),
                                            dst=dst, counter=counter)
        if rng.random() < 0.4:
            word |= 1 << FORMATS[op].offsets["shaped"]
            word |= SHAPE_FORMAT.pack(
                extra=rng.randrange(4), sstride=rng.randrange(16),
                dstride=rng.choice([n, rng.randrange(16)]), zero=int(rng.random() < 0.2),
                span=int(rng.random() < 0.7), span_first=rng.randrange(1 << COORD_BITS),
                span_last=rng.randrange(1 << COORD_BITS)) << INSTR_BITS
        return word
    if roll < 0.9:
        return HALT | rng.getrandbits(60) << 4     # fields of HALT are ignored
    # any other opcode is ignored; a random SEND's or MCAST's n (up to 2047) would make one job
    # fill the run, and the branches above draw those
    word = rng.getrandbits(64)
    return word & ~0xF if word & 0xF in (Opcode.SEND, Opcode.MCAST) else word


@pytest.mark.parametrize("cfg, node", [(TINY, (1, 0)), (TINY.with_grid(32, 32), (30, 31))],
                         ids=["2x2", "32x32"])
def test_dma_out_rtl_matches_model_amaranth_sim(cfg, node):
    """Random commands (also stray starts while busy and non-DMA opcodes), random reply
    hand-offs (good, bad range, counters), random read refusals and router back-pressure: every
    output of DmaOut equals DmaOutModel's, every cycle; on a 2x2 tile (coordinates truncated to
    its 2-bit flit fields) and at a far node of a 32x32 one (6-bit flit coordinates, the SEND,
    MCAST and SHAPE coordinates at their full width)."""
    seed = bench_seed()
    rng = random.Random(f"{seed}:{node}")
    dut = DmaOut(cfg, *node)
    model = DmaOutModel(cfg, *node)
    req_fmt = reply_request_format(cfg)
    mem = [rng.getrandbits(cfg.word_bits) for _ in range(cfg.sram_words)]
    cycles = 3000

    seen = {"rectangle columns": 0, "packets of a scatter": 0}

    async def bench(ctx):
        reply = None
        arriving = None
        for cycle in range(cycles):
            seen["rectangle columns"] += model.cols_left > 0
            seen["packets of a scatter"] += model.pkts_left > 0
            if reply is None and rng.random() < 0.05:
                reply = _random_reply(cfg, rng)
            start = rng.random() < (0.4 if model.idle(reply) else 0.05)
            instr = _random_instr(cfg, rng)
            status, pc, info = rng.randrange(16), rng.randrange(1 << 16), rng.randrange(1 << 16)
            counters = [rng.getrandbits(32) for _ in COUNTER_NAMES]
            ready = rng.random() < 0.7
            ctx.set(dut.cmd.start, start)
            ctx.set(dut.cmd.instr, instr & ((1 << INSTR_BITS) - 1))
            ctx.set(dut.cmd.shape, instr >> INSTR_BITS)
            ctx.set(dut.cmd.status, status)
            ctx.set(dut.cmd.pc, pc)
            ctx.set(dut.cmd.info, info)
            ctx.set(dut.reply.valid, reply is not None)
            ctx.set(dut.reply.payload.as_value(), req_fmt.pack(**reply) if reply else 0)
            ctx.set(dut.counters.as_value(), sum(v << (32 * i) for i, v in enumerate(counters)))
            ctx.set(dut.flit_out.ready, ready)
            ctx.set(dut.read.data, arriving if arriving is not None else rng.getrandbits(cfg.word_bits))
            read = model.sram_reads()[0]
            grant = read is not None and rng.random() < 0.75
            ctx.set(dut.read.ready, grant)
            where = f"cycle {cycle} (seed {seed})"
            assert ctx.get(dut.cmd.idle) == model.idle(reply), f"{where}: idle"
            assert ctx.get(dut.busy) == model.busy(reply), f"{where}: busy"
            assert ctx.get(dut.reply.ready) == model.reply_ready, f"{where}: reply.ready"
            assert ctx.get(dut.read.en) == (read is not None), f"{where}: read.en, model {read}"
            if read is not None:
                assert ctx.get(dut.read.addr) == read, f"{where}: read.addr"
            flit = model.offer()
            assert ctx.get(dut.flit_out.valid) == (flit is not None), f"{where}: flit valid"
            if flit is not None:
                got = ctx.get(dut.flit_out.payload.as_value())
                assert got == flit, f"{where}: flit {got:#x}, model {flit:#x}"
            taken = model.tick(start=start, instr=instr, status=status, pc=pc, info=info,
                               reply=reply, read_grants=[grant], read_data=[arriving],
                               accepted=flit is not None and ready, counters=counters)
            assert taken == (reply is not None and ctx.get(dut.reply.ready)), f"{where}: taken"
            arriving = mem[read] if grant else None
            if taken:
                reply = None
            await ctx.tick()

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()
    assert all(seen.values()), seen     # cycles spent in each, so both paths were compared


def _random_in_flit(cfg, rng, open_packet):
    """A flit for DmaIn: mostly well-formed packets, some orphans and bad kinds."""
    fmt, hdr = flit_format(cfg), packet_header_format(cfg)
    head = not open_packet if rng.random() < 0.95 else open_packet
    if not head:
        return fmt.pack(head=0, tail=int(rng.random() < 0.3), dst_x=0, dst_y=0,
                        payload=rng.getrandbits(cfg.word_bits))
    kind = rng.choice([0, 0, 0, 1, 1, 2, 3, 3, 4, 5, 6, 9, 15])
    addr = rng.choice([rng.randrange(cfg.sram_words), cfg.sram_words - 1,
                       cfg.imem_words - 1, rng.randrange(1 << 16)])
    payload = hdr.pack(kind=kind, src_x=rng.randrange(1 << cfg.coord_bits),
                       src_y=rng.randrange(1 << cfg.coord_bits), addr=addr,
                       length=rng.randrange(1 << 16), counter=rng.randrange(SYNC_COUNTERS),
                       bump=rng.randrange(2), tag=rng.randrange(1 << 16))
    return fmt.pack(head=1, tail=int(rng.random() < 0.4), dst_x=0, dst_y=0, payload=payload)


def test_dma_in_rtl_matches_model_amaranth_sim():
    """Random flits (well-formed packets of every kind, orphans, bad kinds, out-of-range
    addresses), random write refusals and hand-off back-pressure: every output of DmaIn equals
    DmaInModel's, every cycle."""
    cfg, seed = TINY, bench_seed()
    rng = random.Random(seed + 1)
    dut = DmaIn(cfg, 0, 0)
    model = DmaInModel(cfg, 0, 0)
    fmt = flit_format(cfg)
    req_fmt = reply_request_format(cfg)
    cycles = 2000

    async def bench(ctx):
        flit, open_packet = None, False
        for cycle in range(cycles):
            if flit is None and rng.random() < 0.8:
                flit = _random_in_flit(cfg, rng, open_packet)
            write = model.sram_writes()[0]
            grant = write is not None and rng.random() < 0.7
            reply_ready = rng.random() < 0.3
            ctx.set(dut.flit_in.valid, flit is not None)
            ctx.set(dut.flit_in.payload.as_value(), flit if flit is not None else 0)
            ctx.set(dut.write.ready, grant)
            ctx.set(dut.reply.ready, reply_ready)
            where = f"cycle {cycle} (seed {seed})"
            accept = model.accepts(flit, grant, reply_ready)
            assert ctx.get(dut.flit_in.ready) == accept or flit is None, f"{where}: flit_in.ready"
            assert ctx.get(dut.write.en) == (write is not None), f"{where}: write.en"
            if write is not None:
                got = (ctx.get(dut.write.addr), ctx.get(dut.write.data), ctx.get(dut.write.mask))
                assert got == write, f"{where}: write {got}, model {write}"
            assert ctx.get(dut.reply.valid) == (model.reply is not None), f"{where}: reply.valid"
            if model.reply is not None:
                assert ctx.get(dut.reply.payload.as_value()) == req_fmt.pack(**model.reply), \
                    f"{where}: reply payload"
            for name in ("start_req", "bump", "bad_packet", "dropped", "busy"):
                assert ctx.get(getattr(dut, name)) == getattr(model, name), f"{where}: {name}"
            if model.bump:
                assert ctx.get(dut.bump_id) == model.bump_id, f"{where}: bump_id"
            imem = model.imem_write
            assert ctx.get(dut.imem_w.en) == (imem is not None), f"{where}: imem_w.en"
            if imem is not None:
                assert (ctx.get(dut.imem_w.addr), ctx.get(dut.imem_w.data)) == imem, \
                    f"{where}: imem_w"
            taken = model.reply is not None and reply_ready
            model.tick(flit if accept else None, write_grants=[grant], reply_taken=taken)
            if accept:
                if not open_packet:
                    open_packet = bool(fmt.get(flit, "head")) and not fmt.get(flit, "tail")
                elif fmt.get(flit, "tail"):
                    open_packet = False
                flit = None
            await ctx.tick()

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()


# -- the Verilator bench of record --------------------------------------------------------------

def _probe(members: dict) -> Out:
    return Out(wiring.Signature({name: Out(shape) for name, shape in members.items()}))


class DmaBenchTop(wiring.Component):
    """Test top: DmaOut and DmaIn of node (0, 0) on a `NodeSRAM(cfg, read_ports=4,
    write_ports=3)`, joined by their reply hand-off, with a `Router(cfg, 0, 0)` between them
    (DmaOut -> in_local, out_local -> DmaIn), so that a SEND to (0, 0) loops back.

    The DMA parts use SRAM port 1 (read and write), not 0 as in the node, so that the bench's
    contention ports can refuse them (port 0) and be refused by them (ports 2, 3):
    `cread[0..2]` = SRAM read ports 0, 2, 3 and `cwrite[0..1]` = write ports 0, 2.
    `in_east`/`in_south` feed the router (the host and the neighbours), `out_east`/`out_south`
    drain it; north and west are mesh edges (no input; output always ready). `cmd` and
    `counters` are DmaOut's. The `tx`, `rx`, `rd`, `wr`, `hand` and `ev` groups are probes of
    the internal handshakes and DmaIn's outputs, for the lockstep checker.
    """

    def __init__(self, cfg: TileConfig):
        self._cfg = cfg
        flit = flit_format(cfg).layout
        super().__init__({
            "cmd": In(EngineCommand.Signature(done=True)),
            "counters": In(data.ArrayLayout(32, len(COUNTER_NAMES))),
            "cread": In(SRAMReadPort.Signature(cfg)).array(3),
            "cwrite": In(SRAMWritePort.Signature(cfg)).array(2),
            "in_east": In(stream.Signature(flit)),
            "in_south": In(stream.Signature(flit)),
            "out_east": Out(stream.Signature(flit)),
            "out_south": Out(stream.Signature(flit)),
            "tx": _probe({"valid": 1, "ready": 1, "payload": flit}),
            "rx": _probe({"valid": 1, "ready": 1, "payload": flit}),
            "rd": _probe({"en": 1, "addr": cfg.sram_addr_bits, "ready": 1}),
            "wr": _probe({"en": 1, "addr": cfg.sram_addr_bits, "data": cfg.word_bits,
                          "mask": cfg.word_bytes, "ready": 1}),
            "hand": _probe({"valid": 1, "ready": 1,
                            "payload": reply_request_format(cfg).layout}),
            "ev": _probe({"out_busy": 1, "in_busy": 1, "bump": 1,
                          "bump_id": SYNC_COUNTER_ID_BITS, "start_req": 1, "bad_packet": 1,
                          "dropped": 1, "imem_en": 1, "imem_addr": 16, "imem_data": 64}),
        })

    def elaborate(self, platform):
        cfg = self._cfg
        m = Module()
        sram = m.submodules.sram = NodeSRAM(cfg, read_ports=4, write_ports=3)
        router = m.submodules.router = Router(cfg, 0, 0)
        out = m.submodules.dma_out = DmaOut(cfg, 0, 0)
        inp = m.submodules.dma_in = DmaIn(cfg, 0, 0)
        wiring.connect(m, wiring.flipped(self.cmd), out.cmd)
        m.d.comb += out.counters.eq(self.counters)
        wiring.connect(m, out.read, sram.read[1])
        wiring.connect(m, inp.write, sram.write[1])
        for port, index in zip(self.cread, (0, 2, 3)):
            wiring.connect(m, wiring.flipped(port), sram.read[index])
        for port, index in zip(self.cwrite, (0, 2)):
            wiring.connect(m, wiring.flipped(port), sram.write[index])
        wiring.connect(m, inp.reply, out.reply)
        wiring.connect(m, out.flit_out, router.in_local)
        wiring.connect(m, router.out_local, inp.flit_in)
        wiring.connect(m, wiring.flipped(self.in_east), router.in_east)
        wiring.connect(m, wiring.flipped(self.in_south), router.in_south)
        wiring.connect(m, router.out_east, wiring.flipped(self.out_east))
        wiring.connect(m, router.out_south, wiring.flipped(self.out_south))
        m.d.comb += [router.in_north.valid.eq(0), router.in_west.valid.eq(0),
                     router.out_north.ready.eq(1), router.out_west.ready.eq(1)]
        m.d.comb += [
            self.tx.valid.eq(out.flit_out.valid), self.tx.ready.eq(out.flit_out.ready),
            self.tx.payload.eq(out.flit_out.payload),
            self.rx.valid.eq(inp.flit_in.valid), self.rx.ready.eq(inp.flit_in.ready),
            self.rx.payload.eq(inp.flit_in.payload),
            self.rd.en.eq(out.read.en), self.rd.addr.eq(out.read.addr),
            self.rd.ready.eq(out.read.ready),
            self.wr.en.eq(inp.write.en), self.wr.addr.eq(inp.write.addr),
            self.wr.data.eq(inp.write.data), self.wr.mask.eq(inp.write.mask),
            self.wr.ready.eq(inp.write.ready),
            self.hand.valid.eq(inp.reply.valid), self.hand.ready.eq(inp.reply.ready),
            self.hand.payload.eq(inp.reply.payload),
            self.ev.out_busy.eq(out.busy), self.ev.in_busy.eq(inp.busy),
            self.ev.bump.eq(inp.bump), self.ev.bump_id.eq(inp.bump_id),
            self.ev.start_req.eq(inp.start_req), self.ev.bad_packet.eq(inp.bad_packet),
            self.ev.dropped.eq(inp.dropped), self.ev.imem_en.eq(inp.imem_w.en),
            self.ev.imem_addr.eq(inp.imem_w.addr), self.ev.imem_data.eq(inp.imem_w.data),
        ]
        return m


@pytest.mark.parametrize("preset", ["tiny", "default"])
def test_dma_bench(preset):
    cfg = TileConfig.preset(preset)
    run_bench(lambda: DmaBenchTop(cfg), "dma_bench", cfg, "tb_dma")
