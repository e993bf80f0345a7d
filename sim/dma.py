"""The node's DMA engines, cycle-exact models: `DmaOutModel` (SEND, DONE and REPLY packets out of
the node) and `DmaInModel` (packets into the node: WRITE, IMEM, START, READ, READ_CTRS).

This module imports no Amaranth. It is the reference of `d1tile.hw.dma.DmaOut` / `DmaIn`, which
reproduce it cycle for cycle, and a part of the node's pure-Python cycle model. The formats the
two halves share (`reply_request_format`) are defined here once; the RTL takes their `.layout`.

DMA-out, per cycle (state = the registers at the start of the cycle)
--------------------------------------------------------------------
DMA-out runs one *job* at a time: a head flit, then `length` body flits. A job comes from

* the sequencer's command bus: SEND (a WRITE packet to node (x, y) carrying SRAM[src .. src+n),
  with `bump` = 1 and the instruction's `counter`; a shaped SEND, whose effective word carries
  the shape above bit 64, fetches its rows one after another, the fetch address jumping from
  the end of a row to row_start + sstride with no bubble, takes zero rows into the queue one
  word a cycle without reads (like counter words), and sends one packet of rows x n words, or,
  when the destination is not contiguous (`d1tile.isa.dma_packets`), one packet of n words
  per row: after a row's tail is taken the next head (addr + dstride, `bump` only on the last)
  is offered in the next cycle while the prefetch goes on), MCAST (the same packet as a multicast:
  `mc` ROW with first receiver (first, y), or COLUMN with (x, first), and `last`; every flit
  carries the routing fields; a shaped MCAST whose shape has a span is a rectangle
  (`d1tile.isa.mcast_rectangle`) x0..x1 by y0..y1: one COLUMN multicast per column, first
  receiver (c, y0) and `last` = y1, column c + 1 started like a new job, source fetched from
  the start, in the cycle column c's tail is taken) or HALT (a one-flit DONE packet to the host
  edge of its own row, (cfg.cols, y): addr = pc, tag = status, length = info);
* DMA-in's reply hand-off (a READ or READ_CTRS request, see `reply_request_format`): a REPLY
  packet to the requester (src_x, src_y), addr and tag echoed, body SRAM[addr .. addr+length)
  or the counters (`counter_words(cfg)` words, lane i of word w = counter w*lanes + i, zero
  padded). A READ with addr + length > sram_words is answered with length 0 and tag
  `BAD_READ_TAG`.

Outputs (Moore, from the state only):

* `idle(reply)` = no job AND no reply hand-off pending (`reply` is DMA-in's offer). The reply
  hand-off is taken (`reply_ready`) whenever no job runs, so a pending reply always goes before
  the next command: `idle` stays low until it has been taken.
* SRAM read request (`sram_reads()`): while a SRAM-sourced job has words left to fetch and
  `buffered + in_flight < PREFETCH_DEPTH`, where `buffered` is the prefetch queue's length and
  `in_flight` is 1 when a read was granted in the previous cycle (its word arrives this cycle).
  The address is the next word to fetch (modulo sram_words). A refused read is simply asked
  again in the next cycle, with the same address (the request only depends on the state).
* Flit offer (`offer()`): the head flit until it is accepted; then the queue's first word as a
  body flit (same destination, `tail` on the last one). Nothing while the queue is empty.

At the clock edge:

* the offered flit, when accepted, leaves (the head; or the queue's first word); accepting the
  packet's tail ends the job (idle again in the next cycle unless a reply is pending);
* the word of the read granted in the previous cycle enters the queue;
* a granted read advances the fetch address; READ_CTRS jobs instead take one counter word per
  cycle straight into the queue (`buffered < PREFETCH_DEPTH`), from the `counters` values of that
  cycle (so a reply's words may come from different cycles, one per word);
* with no job running: a pending reply hand-off is latched (it wins over `start`, which the
  sequencer does not raise then because `idle` is low); otherwise a `start` with a SEND or HALT
  word is latched. A start with any other opcode, or while a job runs, is ignored.

Timing, unloaded (router always ready, reads never refused): the head is offered in cycle s+1
after the start (or hand-off) cycle s, body flit k in cycle s+3+k (the first word needs a read
and a cycle in the queue), and `idle` rises in cycle s + `job_cycles(n)` + 1: see `job_cycles`.
Steady state: one flit per cycle, with `PREFETCH_DEPTH` = 3 the smallest depth that sustains it
(one word being shown, one arriving, one being asked for).

DMA-in, per cycle
-----------------
DMA-in takes packets from the router's local output. It trusts the flit framing (`head`,
`tail`), not the header's `length`: every flit after a head up to and including a tail is the
packet's body. State: whether a packet is open, what its body does (write SRAM, write imem, or
nothing), the next address; a one-word write slot (the pending SRAM write with its own bump
flag and counter); one-cycle output registers; the reply hand-off register.

Acceptance of the offered flit (combinational, the only non-Moore output), with
`slot_free` = no write pending or the pending write is granted this cycle:

* body flit of a WRITE: `slot_free` (the word goes into the write slot);
* body flit of anything else: always;
* head WRITE: always, except a bodyless (tail) head with `bump` = 1, which waits for an empty
  slot (no write pending), so that two bumps never fall in one cycle;
* head READ / READ_CTRS: `slot_free` and the hand-off register free (empty, or taken by DMA-out
  this cycle); waiting for the slot means a READ always sees the WRITEs that arrived before it;
* head START: `slot_free` (the program starts after the data that came before it has landed);
* head IMEM, heads of other kinds, and a non-head flit outside a packet: always.

Effects (at the edge of the accepting cycle; the registered outputs show them in the next
cycle, for exactly one cycle):

* WRITE body word i -> write slot (SRAM[addr + i], mask all ones). A word whose address is
  >= sram_words is still written, with an empty mask (it changes nothing), and counted by
  `dropped`. The slot's request (`sram_writes()`) is held until granted.
* `bump` (with `bump_id` = the packet's counter) pulses in the cycle after the last word's write
  is granted, or after a bodyless WRITE head is accepted, when the header's `bump` bit is set.
* IMEM body word i -> `imem_write` = (addr + i, low 64 bits) if addr + i < imem_words, else
  dropped and counted by `dropped`.
* START -> `start_req`.
* READ / READ_CTRS -> the hand-off register (`reply`, held until DMA-out takes it).
* DONE / REPLY / TEST / unknown kinds, and a non-head flit outside a packet -> `bad_packet`; the
  rest of such a packet (and any body of START / READ / READ_CTRS) is consumed and ignored.

Throughput: one flit per cycle while writes are granted. `busy` = a packet is open or a write
is pending.

One cycle of a node with these models (what the RTL's wiring does)
-------------------------------------------------------------------
1. From the state: `out.sram_reads()`, `out.offer()`, `out.reply_ready`, `inp.sram_writes()`,
   `inp.reply`, `out.idle(inp.reply)` (to the sequencer, whose `start` depends on it), the
   strobes of `inp`.
2. SRAM arbitration (DMA-out on read port 0, DMA-in on write port 0) and the router: the router
   takes `out.offer()` if its local input is ready; its local output flit `f` is taken when
   `inp.accepts(f, write_grant, out.reply_ready)`.
3. Edges: `taken = out.tick(..., reply=inp.reply)` with the phase-1 `inp.reply`, then
   `inp.tick(flit_taken_or_None, [write_grant], reply_taken=taken)`.

Hazard (documented, not resolved): the hand-off register holds one request. While it is full,
the next READ head waits at the router's local output and blocks every packet behind it. If
DMA-out's current packet cannot drain without this DMA-in (a SEND to its own node, or a cycle of
such dependencies through other nodes), that is a deadlock; the host reads only after DONE,
when no SEND is in flight.
"""

from __future__ import annotations

import operator
from collections import deque

from d1tile.contracts import (BAD_READ_TAG, IMEM_DATA_BITS, PREFETCH_DEPTH, check_node,
                              counter_words, reply_request_format)
from d1tile.formats import (PERF_COUNTER_BITS, COUNTER_NAMES, Multicast, PacketKind, flit_format,
                            packet_header_format)
from d1tile.isa import Opcode, decode, dma_extent, mcast_rectangle
from d1tile.params import TileConfig


__all__ = [
    "PREFETCH_DEPTH", "BAD_READ_TAG", "IMEM_DATA_BITS",
    "reply_request_format", "counter_words", "counter_word", "job_cycles",
    "DmaOutModel", "DmaInModel",
]


def counter_word(cfg: TileConfig, counters, w: int) -> int:
    """Word `w` of a READ_CTRS reply: lane i = counters[w * lanes + i] (32 bits), zero past the
    last counter."""
    lanes = cfg.lanes
    word = 0
    base = w * lanes
    for i in range(min(lanes, len(COUNTER_NAMES) - base)):
        word |= (int(counters[base + i]) & 0xFFFF_FFFF) << (PERF_COUNTER_BITS * i)
    return word


def job_cycles(length: int, *, counters: bool = False) -> int:
    """Cycles a DMA-out job of `length` body words runs, unloaded (router always ready, SRAM
    reads never refused): the head in the first cycle; for SRAM words a bubble while the first
    word arrives, then one body flit per cycle; `length` 0: the head alone. A job latched at the
    end of cycle s runs in cycles s+1 .. s+job_cycles(...), and `idle` is high again in the next
    cycle (when no reply is pending). Counter words (`counters=True`, READ_CTRS) need no read,
    so there is no bubble."""
    length = operator.index(length)
    if length < 0:
        raise ValueError(f"length={length} must not be negative")
    if length == 0:
        return 1
    return length + 1 if counters else length + 2


class DmaOutModel:
    """DMA-out of node (x, y), cycle-exact with `d1tile.hw.dma.DmaOut(cfg, x, y)`.

    Per cycle (see the module docstring for the rules):

    1. outputs from the state: `idle(reply)`, `busy(reply)`, `reply_ready`, `sram_reads()`
       (one entry: the read port's address or None), `offer()` (the flit or None);
    2. `tick(...)` at the clock edge with this cycle's inputs.

    State, readable: `active`, `head_pending`, `fetch_addr`, `fetch_left`, `send_left`,
    `from_ctrs`, `in_flight`, `queue` (deque of words), `header` (the head flit).
    """

    __slots__ = ("cfg", "x", "y", "active", "head_pending", "header", "body_base", "fetch_addr",
                 "fetch_left", "send_left", "from_ctrs", "in_flight", "queue", "zero_src",
                 "row_len", "row_left", "row_start", "sstride", "dstride", "pkts_left",
                 "pkt_fields", "cols_left", "column", "_addr_mask",
                 "_payload_shift", "_tail_bit", "_flit", "_hdr", "_req", "_ctr_words", "_words")

    def __init__(self, cfg: TileConfig, x: int, y: int):
        check_node(cfg, x, y)
        self.cfg, self.x, self.y = cfg, x, y
        self._flit = flit_format(cfg)
        self._hdr = packet_header_format(cfg)
        self._req = reply_request_format(cfg)
        self._addr_mask = cfg.sram_words - 1
        self._payload_shift = self._flit.offsets["payload"]
        self._tail_bit = 1 << self._flit.offsets["tail"]
        self._ctr_words = counter_words(cfg)
        self._words = cfg.sram_words
        self.active = False
        self.head_pending = False
        self.header = 0          # the head flit of the running job
        self.body_base = 0       # a body flit of the running job without payload and tail
        self.fetch_addr = 0      # next SRAM address (or counter word) to fetch
        self.fetch_left = 0      # words still to fetch
        self.send_left = 0       # body flits still to send
        self.from_ctrs = False
        self.in_flight = False   # a read was granted last cycle: its word arrives this cycle
        self.queue: deque[int] = deque()
        self.zero_src = False    # a shaped transfer of zero rows: no reads
        self.row_len = 0         # words per source row
        self.row_left = 0        # words left to fetch in this row
        self.row_start = 0       # first word of this row
        self.sstride = 0
        self.dstride = 0
        self.pkts_left = 0       # packets after the current one (n words each)
        self.pkt_fields = None   # (dst_x, dst_y, mc, last, header fields) of the packets
        self.cols_left = 0       # a rectangle multicast: columns after the current one
        self.column = None       # and the job of its first packet (`_next_column`)

    # -- outputs from the state ------------------------------------------------------------

    def idle(self, reply=None) -> bool:
        """The command bus's `idle`: no job runs and DMA-in offers no reply hand-off (`reply`:
        DMA-in's `reply`, a request dict or None)."""
        return not self.active and reply is None

    def busy(self, reply=None) -> bool:
        """The `busy_dma_out` counter's event: not `idle(reply)`."""
        return self.active or reply is not None

    @property
    def reply_ready(self) -> bool:
        """DMA-out takes a reply hand-off this cycle if one is offered."""
        return not self.active

    def _read_addr(self):
        if (self.active and self.fetch_left and not self.from_ctrs and not self.zero_src
                and len(self.queue) + self.in_flight < PREFETCH_DEPTH):
            return self.fetch_addr & self._addr_mask
        return None

    def sram_reads(self) -> list:
        """[address or None]: the read request on DMA-out's SRAM read port."""
        return [self._read_addr()]

    def offer(self) -> int | None:
        """The flit offered to the router's local input, or None."""
        if not self.active:
            return None
        if self.head_pending:
            return self.header
        if not self.queue:
            return None
        flit = self.body_base | (self.queue[0] << self._payload_shift)
        if self.send_left == 1:
            flit |= self._tail_bit
        return flit

    # -- the clock edge ----------------------------------------------------------------------

    def tick(self, *, start: bool = False, instr: int = 0, status: int = 0, pc: int = 0,
             info: int = 0, reply=None, read_grants=(False,), read_data=(None,),
             accepted: bool = False, counters=None) -> bool:
        """One clock edge. Returns whether DMA-out took the reply hand-off this cycle (pass it
        to `DmaInModel.tick` as `reply_taken`).

        start, instr, status, pc, info : the command bus this cycle (`start` only counts when
            `idle(reply)` is high; instr is the raw 64-bit word).
        reply : DMA-in's hand-off offer this cycle (`DmaInModel.reply`), or None.
        read_grants : [bool], the SRAM's grant of this cycle's `sram_reads()` request.
        read_data : [word or None], the word arriving on the read port this cycle (the read
            granted in the previous cycle); required when one was granted.
        accepted : the router took this cycle's `offer()`.
        counters : the node's counter values this cycle (len(COUNTER_NAMES) integers); only
            read while a READ_CTRS job fetches, may be None otherwise.
        """
        if not self.active:
            if reply is not None:
                self._latch_reply(reply)
                return True
            if start:
                self._latch_command(instr, status, pc, info)
            return False
        queue = self.queue
        granted = read_grants[0] and self._read_addr() is not None
        take_ctr = ((self.from_ctrs or self.zero_src) and self.fetch_left
                    and len(queue) < PREFETCH_DEPTH)
        done = False
        if accepted:
            if self.head_pending:
                self.head_pending = False
                done = not self.send_left
            else:
                queue.popleft()
                self.send_left -= 1
                done = not self.send_left
        if self.in_flight:
            word = read_data[0]
            if word is None:
                raise ValueError("DmaOutModel.tick: a read was granted last cycle but read_data "
                                 "is None")
            queue.append(word)
        if take_ctr:
            if self.zero_src:
                queue.append(0)
            else:
                if counters is None:
                    raise ValueError("DmaOutModel.tick: a READ_CTRS reply needs the counter "
                                     "values")
                queue.append(counter_word(self.cfg, counters, self.fetch_addr))
        if granted or take_ctr:
            self.advance_fetch(1)
        self.in_flight = granted
        if done:
            if self.pkts_left:
                self._next_packet()
            elif self.cols_left:
                self._next_column()
            else:
                self.active = False
        return False

    def advance_fetch(self, k: int) -> None:
        """k words fetched, all in the current source row (k <= row_left)."""
        self.fetch_left -= k
        if k == self.row_left:
            self.row_start = (self.row_start + self.sstride) & 0xFFFF
            self.fetch_addr = self.row_start
            self.row_left = self.row_len
        else:
            self.fetch_addr = (self.fetch_addr + k) & 0xFFFF
            self.row_left -= k

    def _next_packet(self) -> None:
        """The tail of a row's packet left: the next row's head (addr + dstride; the last
        bumps)."""
        dst_x, dst_y, mc, last, fields = self.pkt_fields
        self.pkts_left -= 1
        fields["addr"] = (fields["addr"] + self.dstride) & 0xFFFF
        fields["bump"] = int(self.pkts_left == 0)
        self.header = self._flit.pack(head=1, tail=int(self.row_len == 0), dst_x=dst_x,
                                      dst_y=dst_y, mc=mc, last=last,
                                      payload=self._hdr.pack(**fields))
        self.head_pending = True
        self.send_left = self.row_len

    def _next_column(self) -> None:
        """The last packet of a rectangle's column left: the next column's first packet
        (dst_x + 1), its head offered in the next cycle and its source fetched again from
        the start, as a new job's."""
        dst_x, args, kwargs = self.column
        dst_x = (dst_x + 1) & ((1 << self.cfg.coord_bits) - 1)
        kwargs["fields"] = dict(kwargs["fields"])
        self._start_job(dst_x, *args, **kwargs, cols=self.cols_left - 1)

    def _start_job(self, dst_x, dst_y, header: int, length: int, fetch_addr: int,
                   from_ctrs: bool, mc: int = Multicast.NONE, last: int = 0, *,
                   count: int | None = None, row_len: int | None = None, zero: bool = False,
                   sstride: int = 0, dstride: int = 0, pkts: int = 0,
                   fields: dict | None = None, cols: int = 0) -> None:
        """A job: its first packet's head flit and body `length`; `count` words to fetch
        (default `length`) in rows of `row_len` (default `length`), `pkts` more packets; and
        `cols` more columns of the same (a rectangle multicast)."""
        self.cols_left = cols
        if cols:
            self.column = (dst_x, (dst_y, header, length, fetch_addr, from_ctrs, mc, last),
                           dict(count=count, row_len=row_len, zero=zero, sstride=sstride,
                                dstride=dstride, pkts=pkts, fields=dict(fields)))
        flit = self._flit
        self.header = flit.pack(head=1, tail=int(length == 0), dst_x=dst_x, dst_y=dst_y,
                                mc=mc, last=last, payload=header)
        self.body_base = flit.pack(head=0, tail=0, dst_x=dst_x, dst_y=dst_y, mc=mc, last=last,
                                   payload=0)
        self.active = True
        self.head_pending = True
        self.fetch_addr = fetch_addr
        self.fetch_left = length if count is None else count
        self.send_left = length
        self.from_ctrs = from_ctrs
        self.in_flight = False
        self.queue.clear()
        self.zero_src = zero
        self.row_start = fetch_addr
        self.row_len = self.row_left = length if row_len is None else row_len
        self.sstride, self.dstride = sstride, dstride
        self.pkts_left = pkts
        self.pkt_fields = (dst_x, dst_y, mc, last, fields) if pkts else None

    def _latch_write(self, ins, dst_x: int, dst_y: int, mc: int = Multicast.NONE,
                     last: int = 0, cols: int = 0) -> None:
        """A SEND's or MCAST's job (`ins`: the decoded effective word): the rows of its shape,
        one packet or one per row (`d1tile.isa.dma_extent`, `dma_packets`)."""
        f, e = ins.fields, dma_extent(ins)
        n = f["n"]
        first = e.rows * n if e.single else n
        fields = dict(kind=PacketKind.WRITE, src_x=self.x, src_y=self.y, addr=f["dst"],
                      length=first, counter=f["counter"], bump=int(e.single))
        self._start_job(dst_x, dst_y, self._hdr.pack(**fields), first, f["src"], False, mc,
                        last, count=e.rows * n, row_len=n, zero=bool(e.zero),
                        sstride=f.get("sstride", 0), dstride=f.get("dstride", 0),
                        pkts=0 if e.single else e.rows - 1, fields=fields, cols=cols)

    def _latch_command(self, instr: int, status: int, pc: int, info: int) -> None:
        op = instr & 0xF
        coord = (1 << self.cfg.coord_bits) - 1
        if op == Opcode.SEND:
            ins = decode(instr)
            self._latch_write(ins, ins.x & coord, ins.y & coord)
        elif op == Opcode.MCAST:
            ins = decode(instr)
            f = ins.fields
            if f.get("span"):     # a rectangle: one COLUMN multicast per column
                x0, x1, y0, y1 = mcast_rectangle(ins, (self.x, self.y))
                self._latch_write(ins, x0 & coord, y0 & coord, Multicast.COLUMN, y1 & coord,
                                  cols=(x1 - x0) & coord)
                return
            if f["col"]:
                dst, mc = (self.x, f["first"] & coord), Multicast.COLUMN
            else:
                dst, mc = (f["first"] & coord, self.y), Multicast.ROW
            self._latch_write(ins, *dst, mc, f["last"] & coord)
        elif op == Opcode.HALT:
            header = self._hdr.pack(kind=PacketKind.DONE, src_x=self.x, src_y=self.y,
                                    addr=pc & 0xFFFF, length=info & 0xFFFF, tag=status & 0xF)
            self._start_job(self.cfg.cols, self.y, header, 0, 0, False)

    def _latch_reply(self, reply) -> None:
        r = reply
        if r["ctrs"]:
            length, tag = self._ctr_words, r["tag"]
        elif r["addr"] + r["length"] > self._words:
            length, tag = 0, BAD_READ_TAG
        else:
            length, tag = r["length"], r["tag"]
        header = self._hdr.pack(kind=PacketKind.REPLY, src_x=self.x, src_y=self.y,
                                addr=r["addr"], length=length, tag=tag)
        self._start_job(r["src_x"], r["src_y"], header, length,
                        0 if r["ctrs"] else r["addr"], bool(r["ctrs"]))

    def describe(self) -> str:
        """The state in one line (for hang reports)."""
        if not self.active:
            return f"dma-out ({self.x},{self.y}): idle"
        h = self._hdr.unpack(self._flit.get(self.header, "payload") & ((1 << self._hdr.width) - 1))
        return (f"dma-out ({self.x},{self.y}): {PacketKind(h['kind']).name} to "
                f"({self._flit.get(self.header, 'dst_x')},{self._flit.get(self.header, 'dst_y')}), "
                f"head {'pending' if self.head_pending else 'sent'}, {self.send_left} body flits "
                f"to send, {self.fetch_left} to fetch, {len(self.queue)} buffered")


# DMA-in's packet modes (`DmaInModel.mode`): what the body of the open packet does.
IDLE_MODE, WRITE_MODE, IMEM_MODE, DISCARD_MODE = range(4)


class DmaInModel:
    """DMA-in of node (x, y), cycle-exact with `d1tile.hw.dma.DmaIn(cfg, x, y)`.

    Per cycle (see the module docstring for the rules):

    1. outputs from the state: `sram_writes()` (one entry: (addr, data, mask) or None), `reply`
       (the hand-off offer: a dict of `reply_request_format` fields, or None), and the one-cycle
       strobes `bump` (with `bump_id`), `start_req`, `imem_write` ((addr, data) or None),
       `bad_packet`, `dropped`; `busy`;
    2. `accepts(flit, write_granted, reply_ready)`: whether the router's offered flit is taken
       this cycle (combinational: needs this cycle's write grant and DMA-out's `reply_ready`);
    3. `tick(flit, write_grants, reply_taken)` at the edge.
    """

    __slots__ = ("cfg", "x", "y", "in_packet", "mode", "pkt_addr", "pkt_bump", "pkt_counter",
                 "wr_pending", "wr_addr", "wr_data", "wr_full", "wr_bump", "wr_counter",
                 "reply", "bump", "bump_id", "start_req", "imem_write", "bad_packet", "dropped",
                 "_flit", "_hdr", "_head", "_tail", "_payload_shift", "_payload_mask",
                 "_hdr_mask", "_words", "_imem_words", "_full_mask", "_addr_mask", "_kind_off",
                 "_bump_off", "_req")

    def __init__(self, cfg: TileConfig, x: int, y: int):
        check_node(cfg, x, y)
        self.cfg, self.x, self.y = cfg, x, y
        self._flit = flit_format(cfg)
        self._hdr = packet_header_format(cfg)
        self._req = reply_request_format(cfg)
        self._head = 1 << self._flit.offsets["head"]
        self._tail = 1 << self._flit.offsets["tail"]
        self._payload_shift = self._flit.offsets["payload"]
        self._payload_mask = (1 << cfg.word_bits) - 1
        self._hdr_mask = (1 << self._hdr.width) - 1
        self._kind_off = self._hdr.offsets["kind"]
        self._bump_off = self._hdr.offsets["bump"]
        self._words = cfg.sram_words
        self._imem_words = cfg.imem_words
        self._full_mask = (1 << cfg.word_bytes) - 1
        self._addr_mask = cfg.sram_words - 1
        self.in_packet = False
        self.mode = IDLE_MODE
        self.pkt_addr = 0        # next body word's address (17 bits: addr + i may pass 2**16)
        self.pkt_bump = False
        self.pkt_counter = 0
        self.wr_pending = False
        self.wr_addr = 0
        self.wr_data = 0
        self.wr_full = True      # mask all ones (else empty: the address was out of range)
        self.wr_bump = False     # the slot holds the last word of a packet that bumps
        self.wr_counter = 0
        # Registered outputs.
        self.reply: dict | None = None
        self.bump = False
        self.bump_id = 0
        self.start_req = False
        self.imem_write: tuple[int, int] | None = None
        self.bad_packet = False
        self.dropped = False

    # -- outputs from the state ------------------------------------------------------------

    @property
    def busy(self) -> bool:
        """The `busy_dma_in` counter's event: a packet is open or a write is pending."""
        return self.in_packet or self.wr_pending

    @property
    def pulsing(self) -> bool:
        """A one-cycle output is high (`bump`, `start_req`, `imem_write`, `bad_packet`,
        `dropped`): the next tick clears it."""
        return (self.bump or self.start_req or self.imem_write is not None or self.bad_packet
                or self.dropped)

    def sram_writes(self) -> list:
        """[(addr, data, mask) or None]: the request on DMA-in's SRAM write port."""
        if not self.wr_pending:
            return [None]
        return [(self.wr_addr, self.wr_data, self._full_mask if self.wr_full else 0)]

    def accepts(self, flit: int | None, write_granted: bool, reply_ready: bool) -> bool:
        """Whether DMA-in takes `flit` (the router's local output this cycle, None: nothing)
        given this cycle's write grant (of `sram_writes()`) and DMA-out's `reply_ready`."""
        if flit is None:
            return False
        slot_free = not self.wr_pending or write_granted
        if self.in_packet:
            return slot_free if self.mode == WRITE_MODE else True
        if not flit & self._head:
            return True
        payload = flit >> self._payload_shift
        kind = (payload >> self._kind_off) & 0xF
        if kind == PacketKind.WRITE:
            if flit & self._tail and (payload >> self._bump_off) & 1:
                return not self.wr_pending
            return True
        if kind == PacketKind.READ or kind == PacketKind.READ_CTRS:
            return slot_free and (self.reply is None or reply_ready)
        if kind == PacketKind.START:
            return slot_free
        return True

    # -- the clock edge ----------------------------------------------------------------------

    def tick(self, flit: int | None = None, write_grants=(False,), reply_taken: bool = False) -> None:
        """One clock edge.

        flit : the flit DMA-in accepted this cycle (the router's local output when `accepts`
            said yes), or None.
        write_grants : [bool], the SRAM's grant of this cycle's `sram_writes()` request.
        reply_taken : DMA-out took the hand-off this cycle: what `DmaOutModel.tick` returned
            (= `reply` offered and `reply_ready`, both evaluated before any tick).
        """
        self.bump = False
        self.start_req = False
        self.imem_write = None
        self.bad_packet = False
        self.dropped = False
        if reply_taken:
            self.reply = None
        if self.wr_pending and write_grants[0]:
            self.wr_pending = False
            if self.wr_bump:
                self.bump, self.bump_id = True, self.wr_counter
        if flit is None:
            return
        if self.in_packet:
            self._body(flit)
            if flit & self._tail:
                self.in_packet = False
                self.mode = IDLE_MODE
            return
        if not flit & self._head:
            self.bad_packet = True
            return
        h = self._hdr.unpack((flit >> self._payload_shift) & self._hdr_mask)
        kind = h["kind"]
        tail = bool(flit & self._tail)
        mode = DISCARD_MODE
        if kind == PacketKind.WRITE:
            mode = WRITE_MODE
            self.pkt_addr, self.pkt_bump, self.pkt_counter = h["addr"], bool(h["bump"]), h["counter"]
            if tail and h["bump"]:
                self.bump, self.bump_id = True, h["counter"]
        elif kind == PacketKind.IMEM:
            mode = IMEM_MODE
            self.pkt_addr = h["addr"]
        elif kind == PacketKind.START:
            self.start_req = True
        elif kind == PacketKind.READ or kind == PacketKind.READ_CTRS:
            self.reply = {"ctrs": int(kind == PacketKind.READ_CTRS), "src_x": h["src_x"],
                          "src_y": h["src_y"], "addr": h["addr"], "length": h["length"],
                          "tag": h["tag"]}
        else:
            self.bad_packet = True
        if not tail:
            self.in_packet = True
            self.mode = mode

    def _body(self, flit: int) -> None:
        word = (flit >> self._payload_shift) & self._payload_mask
        addr = self.pkt_addr
        if self.mode == WRITE_MODE:
            in_range = addr < self._words
            self.wr_pending = True
            self.wr_addr = addr & self._addr_mask
            self.wr_data = word
            self.wr_full = in_range
            self.wr_bump = self.pkt_bump and bool(flit & self._tail)
            self.wr_counter = self.pkt_counter
            self.dropped = not in_range
        elif self.mode == IMEM_MODE:
            if addr < self._imem_words:
                self.imem_write = (addr, word & ((1 << IMEM_DATA_BITS) - 1))
            else:
                self.dropped = True
        else:
            return
        self.pkt_addr = (addr + 1) & 0x1FFFF

    def describe(self) -> str:
        """The state in one line (for hang reports)."""
        mode = ("idle", "write", "imem", "discard")[self.mode]
        return (f"dma-in ({self.x},{self.y}): packet {'open' if self.in_packet else '-'} "
                f"({mode}, next addr {self.pkt_addr}), write slot "
                f"{self.wr_addr if self.wr_pending else '-'}, reply "
                f"{'pending' if self.reply is not None else '-'}")
