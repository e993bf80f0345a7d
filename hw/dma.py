"""The node's DMA engines: `DmaOut` (SEND, DONE and REPLY packets into the mesh) and `DmaIn`
(WRITE, IMEM, START, READ and READ_CTRS packets out of it).

The per-cycle rules are stated once, in `d1tile.sim.dma`, whose `DmaOutModel` and `DmaInModel`
reproduce this RTL cycle by cycle; docs/architecture.md (DMA engines) explains them with timing. The two halves
meet at the reply hand-off (`DmaIn.reply` -> `DmaOut.reply`, a stream of
`reply_request_format(cfg)`): the node connects them with `wiring.connect`.
"""

from __future__ import annotations

from amaranth.hdl import Cat, Const, Module, Mux, Signal, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.fifo import SyncFIFO
from amaranth.lib.wiring import In, Out

from d1tile.formats import (PERF_COUNTER_BITS, COUNTER_NAMES, Multicast, PacketKind, flit_format,
                            packet_header_format)
from d1tile.params import TileConfig
from d1tile.contracts import (BAD_READ_TAG, IMEM_DATA_BITS, PREFETCH_DEPTH, check_node,
                              counter_words, reply_request_format)
from d1tile.isa import FORMATS, SHAPE_FORMAT, SYNC_COUNTERS, Opcode, dma_extent

from .decode import IsaLogic, ShapedView
from .sequencer import EngineCommand, ImemWritePort
from .sram import SRAMReadPort, SRAMWritePort


__all__ = ["DmaOut", "DmaIn"]


class _DmaPart(wiring.Component):
    def __init__(self, cfg: TileConfig, x: int, y: int, members: dict):
        check_node(cfg, x, y)
        self._cfg, self._x, self._y = cfg, x, y
        super().__init__(members)

    @property
    def cfg(self) -> TileConfig:
        return self._cfg

    @property
    def x(self) -> int:
        return self._x

    @property
    def y(self) -> int:
        return self._y


class DmaOut(_DmaPart):
    """DMA-out of node (x, y): turns SEND and HALT commands and READ / READ_CTRS requests into
    packets on the router's local input. Cycle-exact reference: `d1tile.sim.dma.DmaOutModel`.

    Ports
    -----
    cmd : In(EngineCommand.Signature(done=True))
        From the sequencer: `start`, `instr` (SEND -> WRITE packet; MCAST -> the same packet as
        a ROW or COLUMN multicast; HALT -> DONE packet with `status`, `pc`, `info`), `shape`
        (a shaped SEND's or MCAST's rows, `d1tile.isa.SHAPE_FORMAT`: gathered row by row, zero
        rows without reads, a packet per row when the destination is not contiguous; an
        MCAST with a span: a rectangle, one COLUMN multicast per column), and
        `idle` (out) = no job running and no reply hand-off offered.
    read : Out(SRAMReadPort.Signature(cfg))
        The node SRAM read port (port 0 in the node).
    flit_out : Out(stream.Signature(flit_format(cfg).layout))
        To the router's `in_local`. `valid` and `payload` depend on the state only.
    reply : In(stream.Signature(reply_request_format(cfg).layout))
        From DmaIn: a READ / READ_CTRS request to answer. `ready` = no job running (state only).
    counters : In(data.ArrayLayout(32, len(COUNTER_NAMES)))
        The node's performance counters, read (one word per cycle) by READ_CTRS replies.
    busy : Out(1)
        Event for the `busy_dma_out` counter: `~cmd.idle`.

    Timing: a job latched at the end of cycle s offers its head in cycle s+1, SRAM body word k in
    cycle s+3+k when the router takes every flit (one-cycle bubble for the first read), and
    `idle` rises the cycle after the tail is taken (`d1tile.sim.dma.job_cycles`). Steady state:
    one flit per cycle, through a prefetch queue of `PREFETCH_DEPTH` words.

    Bad input: a `start` with an opcode other than SEND, MCAST or HALT, or while `idle` is low, is
    ignored. SEND and MCAST fields are trusted (the sequencer faults invalid ones): source addresses wrap
    modulo `sram_words`, coordinates are truncated to `cfg.coord_bits`. A READ running past the
    SRAM gets an empty REPLY tagged `BAD_READ_TAG`.
    """

    def __init__(self, cfg: TileConfig, x: int, y: int):
        if not isinstance(cfg, TileConfig):
            raise TypeError(f"cfg must be a TileConfig, not {cfg!r}")
        super().__init__(cfg, x, y, {
            "cmd": In(EngineCommand.Signature(done=True)),
            "read": Out(SRAMReadPort.Signature(cfg)),
            "flit_out": Out(stream.Signature(flit_format(cfg).layout)),
            "reply": In(stream.Signature(reply_request_format(cfg).layout)),
            "counters": In(data.ArrayLayout(unsigned(PERF_COUNTER_BITS), len(COUNTER_NAMES))),
            "busy": Out(1),
        })

    def elaborate(self, platform):
        cfg = self._cfg
        m = Module()
        hdl = IsaLogic(m, "dma")
        header_fmt = packet_header_format(cfg)
        send_fmt = FORMATS[Opcode.SEND]
        mcast_fmt = FORMATS[Opcode.MCAST]

        # The prefetch queue: asynchronous read, so a word pushed at the end of cycle t is
        # offered in cycle t+1.
        queue = m.submodules.queue = SyncFIFO(width=cfg.word_bits, depth=PREFETCH_DEPTH)

        active = Signal()
        head_pending = Signal()
        header = Signal(flit_format(cfg).layout)     # the job's head flit
        fetch_addr = Signal(16)                       # next SRAM word / counter word to fetch
        fetch_left = Signal(16)
        send_left = Signal(16)
        from_ctrs = Signal()
        zero_src = Signal()                           # a shaped transfer of zero rows
        row_len = Signal(16)                          # words per source row
        row_left = Signal(16)                         # words left to fetch in this row
        row_start = Signal(16)                        # the first word of this row
        sstride = Signal(16)
        dstride = Signal(16)
        pkts_left = Signal(12)                        # packets after the current one
        # A rectangle multicast: the columns after the current one, and what restarts the job
        # for the next (its first packet's address, length and bump; the fetch; the packets).
        cols_left = Signal(cfg.coord_bits)
        col_addr = Signal(16)
        col_single = Signal()
        col_fetch = Signal(16)
        col_count = Signal(16)
        col_pkts = Signal(12)
        in_flight = Signal()                          # a read was granted in the last cycle

        # -- outputs (state only) --------------------------------------------------------
        m.d.comb += [
            self.cmd.idle.eq(~active & ~self.reply.valid),
            self.busy.eq(active | self.reply.valid),
            self.reply.ready.eq(~active),
        ]
        # `level + in_flight` counts the words the queue is committed to hold.
        room = (queue.level + in_flight) < PREFETCH_DEPTH
        read_en = Signal()
        m.d.comb += [
            read_en.eq(active & ~from_ctrs & ~zero_src & (fetch_left != 0) & room),
            self.read.en.eq(read_en),
            self.read.addr.eq(fetch_addr[:cfg.sram_addr_bits]),
        ]
        out = self.flit_out
        m.d.comb += out.valid.eq(active & (head_pending | queue.r_rdy))
        with m.If(head_pending):
            m.d.comb += out.payload.eq(header)
        with m.Else():
            m.d.comb += [
                out.payload.head.eq(0),
                out.payload.tail.eq(send_left == 1),
                out.payload.dst_x.eq(header.dst_x),
                out.payload.dst_y.eq(header.dst_y),
                out.payload.mc.eq(header.mc),
                out.payload.last.eq(header.last),
                out.payload.payload.eq(queue.r_data),
            ]

        # -- the counter words of READ_CTRS ------------------------------------------------
        words = counter_words(cfg)
        flat = self.counters.as_value()
        padded = Cat(flat, Const(0, words * cfg.word_bits - len(flat)))
        index = fetch_addr[:max(1, (words - 1).bit_length())]
        counter_word = padded.word_select(index, cfg.word_bits)

        # -- the clock edge ----------------------------------------------------------------
        taken = out.valid & out.ready
        granted = read_en & self.read.ready
        # Counter words and zero rows need no read: one a cycle straight into the queue.
        take_ctr = (active & (from_ctrs | zero_src) & (fetch_left != 0)
                    & (queue.level < PREFETCH_DEPTH))
        m.d.comb += [
            queue.w_en.eq(in_flight | take_ctr),
            queue.w_data.eq(Mux(in_flight, self.read.data, Mux(zero_src, 0, counter_word))),
            queue.r_en.eq(taken & ~head_pending),
        ]
        m.d.sync += in_flight.eq(granted)
        with m.If(granted | take_ctr):
            m.d.sync += fetch_left.eq(fetch_left - 1)
            with m.If(row_left == 1):       # the next source row
                m.d.sync += [fetch_addr.eq(row_start + sstride), row_start.eq(row_start + sstride),
                             row_left.eq(row_len)]
            with m.Else():
                m.d.sync += [fetch_addr.eq(fetch_addr + 1), row_left.eq(row_left - 1)]
        # A packet ends when its tail is taken: the job, or the next row's packet.
        hdr = header_fmt.layout(header.payload[:header_fmt.width])
        ends = Signal()
        with m.If(taken):
            with m.If(head_pending):
                m.d.sync += head_pending.eq(0)
                m.d.comb += ends.eq(send_left == 0)
            with m.Else():
                m.d.sync += send_left.eq(send_left - 1)
                m.d.comb += ends.eq(send_left == 1)
        with m.If(ends):
            with m.If((pkts_left == 0) & (cols_left != 0)):
                # The next column (`d1tile.sim.dma.DmaOutModel._next_column`): nothing is
                # fetched or in flight now (the tail was the last word), so the fetch restarts.
                # Length and tail are those of the first packet already (every packet of a
                # transfer has n words, or there is one packet).
                m.d.sync += [
                    cols_left.eq(cols_left - 1),
                    head_pending.eq(1),
                    header.dst_x.eq(header.dst_x + 1),
                    hdr.addr.eq(col_addr),
                    hdr.bump.eq(col_single),
                    send_left.eq(hdr.length),
                    pkts_left.eq(col_pkts),
                    fetch_addr.eq(col_fetch),
                    row_start.eq(col_fetch),
                    row_left.eq(row_len),
                    fetch_left.eq(col_count),
                ]
            with m.Elif(pkts_left == 0):
                m.d.sync += active.eq(0)
            with m.Else():
                m.d.sync += [
                    pkts_left.eq(pkts_left - 1),
                    head_pending.eq(1),
                    header.tail.eq(row_len == 0),      # a row's packet: n words
                    hdr.addr.eq(hdr.addr + dstride),
                    hdr.bump.eq(pkts_left == 1),
                    send_left.eq(row_len),
                ]

        # A new job: a pending reply first, else a command. Decoded into these, then latched.
        go = Signal()
        new_header = Signal(header_fmt.layout)
        new_dst_x = Signal(cfg.coord_bits)
        new_dst_y = Signal(cfg.coord_bits)
        new_mc = Signal(2)
        new_last = Signal(cfg.coord_bits)
        new_length = Signal(16)         # the first packet's body
        new_count = Signal(16)          # the words to fetch (every packet's)
        new_fetch = Signal(16)
        new_ctrs = Signal()
        new_zero = Signal()
        new_row_len = Signal(16)
        new_sstride = Signal(16)
        new_dstride = Signal(16)
        new_pkts = Signal(12)
        new_cols = Signal(cfg.coord_bits)
        with m.If(~active):
            # Inside the condition, not as a lone constant assignment: Amaranth emits a lone
            # constant as an `always @*` with no inputs, which Verilator never evaluates.
            m.d.comb += [new_header.src_x.eq(self._x), new_header.src_y.eq(self._y)]
            with m.If(self.reply.valid):
                r = self.reply.payload
                m.d.comb += [
                    go.eq(1),
                    new_header.kind.eq(PacketKind.REPLY),
                    new_header.addr.eq(r.addr),
                    new_dst_x.eq(r.src_x),
                    new_dst_y.eq(r.src_y),
                ]
                with m.If(r.ctrs):
                    m.d.comb += [new_length.eq(words), new_header.tag.eq(r.tag), new_ctrs.eq(1)]
                with m.Elif(r.addr + r.length > cfg.sram_words):
                    m.d.comb += [new_length.eq(0), new_header.tag.eq(BAD_READ_TAG)]
                with m.Else():
                    m.d.comb += [new_length.eq(r.length), new_header.tag.eq(r.tag),
                                 new_fetch.eq(r.addr)]
                m.d.comb += [new_header.length.eq(new_length), new_count.eq(new_length),
                             new_row_len.eq(new_length)]
            with m.Elif(self.cmd.start):
                send = send_fmt.layout(self.cmd.instr[:send_fmt.width])
                mcast = mcast_fmt.layout(self.cmd.instr[:mcast_fmt.width])
                shape = SHAPE_FORMAT.layout(self.cmd.shape)

                def write_job(x):
                    # SEND and MCAST alike: the rows of the shape, one packet or one per row
                    # (`isa.dma_extent`, `isa.dma_packets`).
                    e = dma_extent(ShapedView(x, shape), hdl)
                    first = Mux(e.single, e.rows * x.n, x.n)
                    return [
                        go.eq(1),
                        new_header.kind.eq(PacketKind.WRITE),
                        new_header.addr.eq(x.dst),
                        new_header.length.eq(first),
                        new_header.counter.eq(x.counter),
                        new_header.bump.eq(e.single),
                        new_length.eq(first),
                        new_count.eq(e.rows * x.n),
                        new_fetch.eq(x.src),
                        new_zero.eq(e.zero),
                        new_row_len.eq(x.n),
                        new_sstride.eq(shape.sstride),
                        new_dstride.eq(shape.dstride),
                        new_pkts.eq(Mux(e.single, 0, shape.extra)),
                    ]

                with m.Switch(self.cmd.instr[:4]):
                    with m.Case(Opcode.MCAST):
                        m.d.comb += write_job(mcast)
                        with m.If(shape.span):
                            # A rectangle (`isa.mcast_rectangle`): x0..x1 by y0..y1, one
                            # COLUMN multicast per column.
                            x0 = Mux(mcast.col, shape.span_first, mcast.first)
                            x1 = Mux(mcast.col, shape.span_last, mcast.last)
                            m.d.comb += [
                                new_dst_x.eq(x0),
                                new_dst_y.eq(Mux(mcast.col, mcast.first, shape.span_first)),
                                new_mc.eq(Multicast.COLUMN),
                                new_last.eq(Mux(mcast.col, mcast.last, shape.span_last)),
                                new_cols.eq(x1 - x0),
                            ]
                        with m.Else():
                            m.d.comb += [
                                new_dst_x.eq(Mux(mcast.col, self._x, mcast.first)),
                                new_dst_y.eq(Mux(mcast.col, mcast.first, self._y)),
                                new_mc.eq(Mux(mcast.col, Multicast.COLUMN, Multicast.ROW)),
                                new_last.eq(mcast.last),
                            ]
                    with m.Case(Opcode.SEND):
                        m.d.comb += write_job(send) + [
                            new_dst_x.eq(send.x),
                            new_dst_y.eq(send.y),
                        ]
                    with m.Case(Opcode.HALT):
                        m.d.comb += [
                            go.eq(1),
                            new_header.kind.eq(PacketKind.DONE),
                            new_header.addr.eq(self.cmd.pc),
                            new_header.length.eq(self.cmd.info),
                            new_header.tag.eq(self.cmd.status),
                            new_dst_x.eq(cfg.cols),
                            new_dst_y.eq(self._y),
                        ]
        with m.If(go):
            m.d.sync += [
                active.eq(1),
                head_pending.eq(1),
                header.head.eq(1),
                header.tail.eq(new_length == 0),
                header.dst_x.eq(new_dst_x),
                header.dst_y.eq(new_dst_y),
                header.mc.eq(new_mc),
                header.last.eq(new_last),
                header.payload.eq(new_header.as_value()),
                fetch_addr.eq(new_fetch),
                fetch_left.eq(new_count),
                send_left.eq(new_length),
                from_ctrs.eq(new_ctrs),
                zero_src.eq(new_zero),
                row_start.eq(new_fetch),
                row_len.eq(new_row_len),
                row_left.eq(new_row_len),
                sstride.eq(new_sstride),
                dstride.eq(new_dstride),
                pkts_left.eq(new_pkts),
                cols_left.eq(new_cols),
                col_addr.eq(new_header.addr),
                col_single.eq(new_header.bump),
                col_fetch.eq(new_fetch),
                col_count.eq(new_count),
                col_pkts.eq(new_pkts),
            ]
        return m


_MODE_WRITE, _MODE_IMEM, _MODE_DISCARD = 1, 2, 3


class DmaIn(_DmaPart):
    """DMA-in of node (x, y): executes the packets the router delivers to the node.
    Cycle-exact reference: `d1tile.sim.dma.DmaInModel` (whose docstring states every rule).

    Ports
    -----
    flit_in : In(stream.Signature(flit_format(cfg).layout))
        From the router's `out_local`. `ready` is combinational from the offered flit, this
        cycle's write grant and `reply.ready` (the acceptance rules of `DmaInModel.accepts`).
    write : Out(SRAMWritePort.Signature(cfg))
        The node SRAM write port (port 0 in the node): one pending word, held until granted.
    reply : Out(stream.Signature(reply_request_format(cfg).layout))
        To DmaOut: a READ / READ_CTRS request (a register, held until taken).
    imem_w : Out(ImemWritePort.Signature())
        IMEM body words (low 64 bits) to the sequencer's instruction memory, `en` for one cycle,
        the cycle after the word's acceptance; words for addresses >= `cfg.imem_words` are not
        sent (they pulse `dropped`).
    start_req : Out(1)
        Pulse, the cycle after a START head is accepted.
    bump : Out(1), bump_id : Out(range(SYNC_COUNTERS))
        Pulse, the cycle after the last word of a WRITE with `bump` = 1 is written (granted), or
        after a bodyless bumping WRITE head is accepted.
    bad_packet : Out(1)
        Pulse, the cycle after the head of a DONE / REPLY / TEST / unknown packet (or a non-head
        flit outside a packet) is accepted; the rest of the packet is consumed.
    dropped : Out(1)
        Pulse, the cycle after a WRITE word beyond `sram_words` (written with an empty mask) or
        an IMEM word beyond `imem_words` (not written) is accepted.
    busy : Out(1)
        Event for the `busy_dma_in` counter: a packet is open or a write is pending.

    Throughput: one flit per cycle while writes are granted.
    """

    def __init__(self, cfg: TileConfig, x: int, y: int):
        if not isinstance(cfg, TileConfig):
            raise TypeError(f"cfg must be a TileConfig, not {cfg!r}")
        super().__init__(cfg, x, y, {
            "flit_in": In(stream.Signature(flit_format(cfg).layout)),
            "write": Out(SRAMWritePort.Signature(cfg)),
            "reply": Out(stream.Signature(reply_request_format(cfg).layout)),
            "imem_w": Out(ImemWritePort.Signature()),
            "start_req": Out(1),
            "bump": Out(1),
            "bump_id": Out(range(SYNC_COUNTERS)),
            "bad_packet": Out(1),
            "dropped": Out(1),
            "busy": Out(1),
        })

    def elaborate(self, platform):
        cfg = self._cfg
        m = Module()
        header_fmt = packet_header_format(cfg)
        flit = self.flit_in.payload
        head = header_fmt.layout(flit.payload[:header_fmt.width])

        in_packet = Signal()
        mode = Signal(2)
        pkt_addr = Signal(17)        # addr + i of the next body word; may pass 2**16
        pkt_bump = Signal()
        pkt_counter = Signal(range(SYNC_COUNTERS))
        wr_pending = Signal()
        wr_addr = Signal(cfg.sram_addr_bits)
        wr_data = Signal(cfg.word_bits)
        wr_full = Signal()           # mask all ones; else empty (address beyond the SRAM)
        wr_bump = Signal()           # the slot holds the last word of a bumping packet
        wr_counter = Signal(range(SYNC_COUNTERS))
        reply_valid = Signal()
        reply_payload = Signal(reply_request_format(cfg).layout)
        imem_en = Signal()
        imem_addr = Signal(16)
        imem_data = Signal(IMEM_DATA_BITS)

        # -- outputs (state only) --------------------------------------------------------
        m.d.comb += [
            self.write.en.eq(wr_pending),
            self.write.addr.eq(wr_addr),
            self.write.data.eq(wr_data),
            self.write.mask.eq(wr_full.replicate(cfg.word_bytes)),
            self.reply.valid.eq(reply_valid),
            self.reply.payload.eq(reply_payload),
            self.imem_w.en.eq(imem_en),
            self.imem_w.addr.eq(imem_addr),
            self.imem_w.data.eq(imem_data),
            self.busy.eq(in_packet | wr_pending),
        ]
        strobes = [self.start_req, self.bump, self.bad_packet, self.dropped, imem_en]
        m.d.sync += [s.eq(0) for s in strobes]

        # -- acceptance ----------------------------------------------------------------------
        slot_free = ~wr_pending | self.write.ready
        reply_free = ~reply_valid | self.reply.ready
        ready = Signal()
        with m.If(in_packet):
            m.d.comb += ready.eq(Mux(mode == _MODE_WRITE, slot_free, 1))
        with m.Elif(~flit.head):
            m.d.comb += ready.eq(1)
        with m.Else():
            with m.Switch(head.kind):
                with m.Case(PacketKind.WRITE):
                    # A bodyless bumping WRITE bumps at once: it waits for the slot to empty so
                    # that it never bumps in the same cycle as the slot's last word.
                    m.d.comb += ready.eq(~(flit.tail & head.bump) | ~wr_pending)
                with m.Case(PacketKind.READ, PacketKind.READ_CTRS):
                    m.d.comb += ready.eq(slot_free & reply_free)
                with m.Case(PacketKind.START):
                    m.d.comb += ready.eq(slot_free)
                with m.Default():
                    m.d.comb += ready.eq(1)
        m.d.comb += self.flit_in.ready.eq(ready)
        take = self.flit_in.valid & ready

        # -- the clock edge ----------------------------------------------------------------
        with m.If(self.reply.ready):
            m.d.sync += reply_valid.eq(0)
        with m.If(wr_pending & self.write.ready):
            m.d.sync += wr_pending.eq(0)
            with m.If(wr_bump):
                m.d.sync += [self.bump.eq(1), self.bump_id.eq(wr_counter)]
        with m.If(take):
            with m.If(in_packet):
                with m.If(flit.tail):
                    m.d.sync += in_packet.eq(0)
                with m.Switch(mode):
                    with m.Case(_MODE_WRITE):
                        in_range = pkt_addr < cfg.sram_words
                        m.d.sync += [
                            wr_pending.eq(1),
                            wr_addr.eq(pkt_addr[:cfg.sram_addr_bits]),
                            wr_data.eq(flit.payload),
                            wr_full.eq(in_range),
                            self.dropped.eq(~in_range),
                            wr_bump.eq(pkt_bump & flit.tail),
                            wr_counter.eq(pkt_counter),
                            pkt_addr.eq(pkt_addr + 1),
                        ]
                    with m.Case(_MODE_IMEM):
                        with m.If(pkt_addr < cfg.imem_words):
                            m.d.sync += [imem_en.eq(1), imem_addr.eq(pkt_addr),
                                         imem_data.eq(flit.payload[:IMEM_DATA_BITS])]
                        with m.Else():
                            m.d.sync += self.dropped.eq(1)
                        m.d.sync += pkt_addr.eq(pkt_addr + 1)
            with m.Elif(~flit.head):
                m.d.sync += self.bad_packet.eq(1)
            with m.Else():
                m.d.sync += [in_packet.eq(~flit.tail), mode.eq(_MODE_DISCARD)]
                with m.Switch(head.kind):
                    with m.Case(PacketKind.WRITE):
                        m.d.sync += [mode.eq(_MODE_WRITE), pkt_addr.eq(head.addr),
                                     pkt_bump.eq(head.bump), pkt_counter.eq(head.counter)]
                        with m.If(flit.tail & head.bump):
                            m.d.sync += [self.bump.eq(1), self.bump_id.eq(head.counter)]
                    with m.Case(PacketKind.IMEM):
                        m.d.sync += [mode.eq(_MODE_IMEM), pkt_addr.eq(head.addr)]
                    with m.Case(PacketKind.START):
                        m.d.sync += self.start_req.eq(1)
                    with m.Case(PacketKind.READ, PacketKind.READ_CTRS):
                        m.d.sync += [
                            reply_valid.eq(1),
                            reply_payload.ctrs.eq(head.kind == PacketKind.READ_CTRS),
                            reply_payload.src_x.eq(head.src_x),
                            reply_payload.src_y.eq(head.src_y),
                            reply_payload.addr.eq(head.addr),
                            reply_payload.length.eq(head.length),
                            reply_payload.tag.eq(head.tag),
                        ]
                    with m.Default():
                        m.d.sync += self.bad_packet.eq(1)
        return m
