"""Cycle-exact model of a node (`d1tile.hw.node.Node`): the sequencer, the engines (the matrix
engine with its MATMUL and MREAD halves, the vector engine, DMA-out), the DMA-in half, the banked
SRAM and the performance counters, composed exactly as the RTL wires them. The node's router lives
in the tile's `MeshModel`.

One cycle of a node is split in three calls, made for every node of the tile in this order:

1. `outputs()`: everything the node drives this cycle, from its state alone: the sequencer's
   decision (which reads the engines' `idle`, itself state), every SRAM request, and the flit
   DMA-out offers to the router. The SRAM arbitrates here (its grants are combinational from the
   requests), and the registered pulses DMA-in sends to the sequencer are captured.
2. `eject_ready(flit)`: whether DMA-in takes the flit the router offers on its local output
   (combinational from this cycle's write grant and DMA-out's `reply_ready`).
3. `tick(accepted, ejected, counters)`: the clock edge of every part, given whether the router
   took DMA-out's flit and the flit DMA-in took; the performance counters add this cycle's events.

SRAM ports (index = priority): read 0 DMA-out, 1 matrix engine, 2 and 3 vector engine (a, b);
write 0 DMA-in, 1 matrix engine, 2 vector engine.

Resting: cycles that need no stepping
-------------------------------------
Most cycles of most nodes change nothing, or change only the matrix engine. `rest(cycle,
router)`, called at the start of a cycle, recognises the cases in which that is provable until
the node's router wakes it:

* *asleep*: every engine and DMA idle with nothing in flight, and the sequencer in IDLE,
  STOPPED, or stalled on a WAIT (which only DMA-in's bump can release). Only the `cycles` and
  `stall_wait` counters move.
* *blocked*: the same, except that DMA-out offers a flit its router's LOCAL input cannot take
  (the input is full) and has nothing to fetch: it stays so until that input has room. A
  reply request DMA-in hands over meanwhile waits for it.
* *coasting*: the same, except that a MATMUL runs, and the sequencer's decision is a stall
  (or NONE) that cannot change before the matrix engine's `idle` rises: the engine is then
  alone on the SRAM, so every read is granted at once and its course is fixed. It is run ahead
  at once (`MatrixEngineModel.run_alone`) to the cycle `idle` rises, `wake`.

A resting node is not stepped: the tile calls `resume(cycle)` before stepping it again, at
`wake` or in the first cycle its router wakes it (`woken_by`: a flit on its local output, or
room for a blocked DMA-out's flit), whichever comes first. `resume` brings every register and
counter to where the skipped cycles would have left them (a coast cut short is replayed from
its snapshot to that cycle). `active_at(cycle)` says whether a skipped cycle had any activity
(a matrix read grant), for the host's hang detection.

A node that is one end of a steady stream (`stream_end`: DMA-out sending SRAM words, or DMA-in
taking a packet's body, and nothing else moving) can also be advanced many cycles at once
(`stream_source`, `stream_sink`), by `d1tile.sim.streams`.

Issues happen in `tick` alone (a resting node and a stream's end issue nothing: their decision
is NONE or a stall), so the optional issue trace (`issue_trace`, `TileModel(cfg, trace=True)`)
is recorded there, with the cycle of the tile stepping the node (`trace_clock.cycle`).
"""

from __future__ import annotations

from bisect import bisect_left

from d1tile.contracts import (ENGINES, IMEM_DATA_BITS, PREFETCH_DEPTH, READ_PORTS, WRITE_PORTS,
                              SeqEvent, SeqState)
from d1tile.isa import Unit
from d1tile.formats import COUNTER_NAMES, NODE_STATUS, Port, flit_format
from d1tile.params import TileConfig
from d1tile.sim.dma import (DISCARD_MODE, IMEM_MODE, WRITE_MODE,
                            DmaInModel, DmaOutModel)
from d1tile.sim.mxu import MatrixEngineModel
from d1tile.sim.sequencer import SequencerModel
from d1tile.sim.sram import SRAMModel
from d1tile.sim.vpu import VectorEngineModel


__all__ = ["NodeModel", "READ_PORTS", "WRITE_PORTS", "NEVER"]

COUNTER_MASK = 0xFFFF_FFFF
NEVER = float("inf")
"""`NodeModel.wake` of a node asleep: only a flit wakes it."""

_C = {name: i for i, name in enumerate(COUNTER_NAMES)}
_DMA, _MATRIX = ENGINES.index(Unit.DMA), ENGINES.index(Unit.MATRIX)
_VECTOR, _READOUT = ENGINES.index(Unit.VECTOR), ENGINES.index(Unit.READOUT)
# `outputs` and `rest` build the idle flags in this order:
assert ENGINES == (Unit.MATRIX, Unit.VECTOR, Unit.DMA, Unit.READOUT), ENGINES
_STALL_COUNTER = {SeqEvent.STALL_UNIT: _C["stall_unit"], SeqEvent.STALL_HAZARD: _C["stall_hazard"],
                  SeqEvent.STALL_WAIT: _C["stall_wait"], SeqEvent.STALL_HALT: _C["stall_halt"]}
_RESTING_EVENTS = frozenset({SeqEvent.NONE, *_STALL_COUNTER})
_CYCLES, _ISSUED = _C["cycles"], _C["instructions"]
_BUSY_MATRIX, _BUSY_VECTOR = _C["busy_matrix"], _C["busy_vector"]
_BUSY_DMA_OUT, _BUSY_DMA_IN = _C["busy_dma_out"], _C["busy_dma_in"]
_CONFLICTS = _C["sram_conflicts"]
_FLITS_IN, _FLITS_OUT = _C["flits_in_local"], _C["flits_out_local"]
_ISSUE = SeqEvent.ISSUE
_LOCAL_PORT = int(Port.LOCAL)


class NodeModel:
    """Node (x, y) of a tile: see the module docstring for the per-cycle protocol.

    `counters` holds the node's performance counters (all but the router's flit counters) as
    running totals; the RTL's 32-bit registers hold them modulo 2**32 (`counter_values`).
    """

    def __init__(self, cfg: TileConfig, x: int, y: int):
        self.cfg, self.x, self.y = cfg, x, y
        self.seq = SequencerModel(cfg)
        self.mxu = MatrixEngineModel(cfg)
        self.vpu = VectorEngineModel(cfg)
        self.dout = DmaOutModel(cfg, x, y)
        self.din = DmaInModel(cfg, x, y)
        self.sram = SRAMModel(cfg, READ_PORTS, WRITE_PORTS)
        self.counters = [0] * len(COUNTER_NAMES)
        self._payload_shift = flit_format(cfg).offsets["payload"]
        # This cycle's values, set by outputs():
        self._arrived = [None] * READ_PORTS
        self._granted_before = [False] * READ_PORTS
        self.reply = None
        self._din_busy = False
        # Resting (module docstring).
        self.resting = False
        self.blocked = False
        self.wake = 0
        self._rest_from = 0
        self._rest_event = SeqEvent.NONE
        self._rest_running = False
        self._coast = None    # (snapshot, first data, read cycles, set of them, last address)
        # Issue trace (`TileModel(cfg, trace=True)`): a list that `tick` appends (pc, cycle) to
        # at every issue, `cycle` read from `trace_clock.cycle` (the tile, whose `cycle` is the
        # cycle being stepped while it ticks its nodes). None: no trace.
        self.issue_trace: list | None = None
        self.trace_clock = None
        # Timeline (`TileModel(cfg, timeline=True)`, which steps every node in every cycle): a
        # list that `tick` appends (cycle, state) to whenever the state changes, state =
        # (sequencer event, then busy flags of MATMUL, MREAD, vector, DMA-out, DMA-in), the same
        # conditions the performance counters count, then the matrix engine's bank (-1: idle),
        # the readout engine's, and the SRAM accesses granted and refused in the cycle. With it,
        # `packets_out` gets (cycle, head flit) for every packet whose head DMA-out injects and
        # `packets_in` (head cycle, tail cycle, head flit) for every packet DMA-in takes in.
        # None: no timeline.
        self.timeline: list | None = None
        self.packets_out: list | None = None
        self.packets_in: list | None = None
        self._head_in = None
        self._timeline_state = None
        self.timeline_end: int | None = None          # the cycle after the DONE event
        self.timeline_counters: list | None = None    # the counters then

    # -- phase 1 -------------------------------------------------------------------------------

    def outputs(self) -> int | None:
        """Evaluate this cycle's outputs and arbitrate the SRAM; returns DMA-out's flit offer."""
        din, dout, mxu, vpu, sram = self.din, self.dout, self.mxu, self.vpu, self.sram
        reply = self.reply = din.reply
        self._din_busy = din.in_packet or din.wr_pending
        dout_active = dout.active
        idle = self.idle = (mxu.idle, vpu.idle, not dout_active and reply is None,
                            not mxu.mread_on)
        self.decision = self.seq.decide(idle)
        self.reply_ready = not dout_active
        # Registered pulses of DMA-in, seen by the sequencer this cycle.
        self.pulses = (din.bump, din.bump_id, din.start_req, din.imem_write)
        r0 = dout._read_addr() if dout_active else None
        r1 = mxu._read_address()
        r2, r3, w2 = vpu.requests()
        w0 = din.sram_writes()[0] if din.wr_pending else None
        w1 = mxu._write_request()
        # The words on the read ports this cycle come from last cycle's grants.
        granted_before = self._granted_before
        if True in granted_before:
            data = sram.read_data
            self._arrived = [data[i] if granted_before[i] else None for i in range(READ_PORTS)]
        elif self._arrived is not _NOTHING:
            self._arrived = _NOTHING
        if r0 is None and r1 is None and r2 is None and r3 is None and w0 is None \
                and w1 is None and w2 is None:
            sram.idle_cycles(1)
            self.read_grants, self.write_grants = _NO_READS, _NO_WRITES
            self._granted_before = _NO_READS
            self.requests = self.grants = 0
        else:
            reads, writes = (r0, r1, r2, r3), (w0, w1, w2)
            self.read_grants, self.write_grants = sram.step(reads, writes, check=False)
            self._granted_before = self.read_grants
            self.requests = (READ_PORTS - reads.count(None)) + (WRITE_PORTS - writes.count(None))
            self.grants = self.read_grants.count(True) + self.write_grants.count(True)
        self.offer = dout.offer() if dout_active else None
        return self.offer

    # -- phase 2 -------------------------------------------------------------------------------

    def eject_ready(self, flit: int | None) -> bool:
        return self.din.accepts(flit, self.write_grants[0], self.reply_ready)

    # -- phase 3 -------------------------------------------------------------------------------

    @property
    def wants_counters(self) -> bool:
        """Whether this cycle's `tick` reads the counters (DMA-out fetches a READ_CTRS word)."""
        dout = self.dout
        return dout.active and dout.from_ctrs and dout.fetch_left > 0

    def counter_values(self, router) -> list[int]:
        """The counters as the RTL's registers hold them at the start of this cycle."""
        values = [v & COUNTER_MASK for v in self.counters]
        for p in range(5):
            values[_FLITS_IN + p] = router.flits_in[p] & COUNTER_MASK
            values[_FLITS_OUT + p] = router.flits_out[p] & COUNTER_MASK
        return values

    def tick(self, accepted: bool, ejected: int | None, counters: list[int] | None) -> None:
        """The clock edge. `counters`: `counter_values()` taken before the router stepped (only
        read when `wants_counters` was true in this cycle; may be None otherwise)."""
        seq, decision, arrived = self.seq, self.decision, self._arrived
        dout, din = self.dout, self.din
        engine = decision.engine
        instr = decision.instr
        read_grants, write_grants = self.read_grants, self.write_grants
        reply = self.reply
        if self.timeline is not None and self.timeline_end is None:
            cycle = self.trace_clock.cycle
            if accepted and dout.head_pending:
                self.packets_out.append((cycle, dout.header))
            if ejected is not None:
                if not din.in_packet:
                    self._head_in = (cycle, ejected)
                if ejected & din._tail and self._head_in is not None:
                    self.packets_in.append((self._head_in[0], cycle, self._head_in[1]))
                    self._head_in = None
        if dout.active or reply is not None or engine == _DMA:
            reply_taken = dout.tick(
                start=engine == _DMA, instr=instr if engine == _DMA else 0,
                status=seq.status, pc=seq.pc, info=seq.info, reply=reply,
                read_grants=read_grants[0:1], read_data=arrived[0:1], accepted=accepted,
                counters=counters)
        else:
            reply_taken = False
        if ejected is not None or din.wr_pending or reply_taken or din.pulsing:
            din.tick(ejected, write_grants[0:1], reply_taken)
        mxu = self.mxu
        if engine == _MATRIX or engine == _READOUT or not mxu.still:
            mxu.tick(engine == _MATRIX, instr if engine == _MATRIX else 0,
                     read_grants[1:2], write_grants[1:2], arrived[1:2],
                     engine == _READOUT, instr if engine == _READOUT else 0)
        else:
            mxu.cycle += 1          # all an idle engine's tick does
        vpu = self.vpu
        if engine == _VECTOR or not vpu.still:
            vpu.tick(read_grants[2:4], write_grants[2:3], arrived[2:4],
                     engine == _VECTOR, instr if engine == _VECTOR else 0,
                     seq.scale, seq.shift, seq.relu, q=seq.fscale, seed=seq.seed,
                     reseed=seq.reseed)
        c = self.counters
        state = seq.state
        if state == SeqState.RUN or state == SeqState.HALTING:
            c[_CYCLES] += 1
        event = decision.event
        if event == _ISSUE:
            c[_ISSUED] += 1
            if self.issue_trace is not None:     # seq.pc: the issued instruction's (tick moves it)
                self.issue_trace.append((seq.pc, self.trace_clock.cycle))
        else:
            stall = _STALL_COUNTER.get(event)
            if stall is not None:
                c[stall] += 1
        idle = self.idle
        if not idle[_MATRIX] or not idle[_READOUT]:
            c[_BUSY_MATRIX] += 1
        if not idle[_VECTOR]:
            c[_BUSY_VECTOR] += 1
        if not idle[_DMA]:
            c[_BUSY_DMA_OUT] += 1
        if self._din_busy:
            c[_BUSY_DMA_IN] += 1
        if self.requests != self.grants:
            c[_CONFLICTS] += self.requests - self.grants
        if self.timeline is not None and self.timeline_end is None:
            cycle = self.trace_clock.cycle
            state = (int(event), not idle[_MATRIX], not idle[_READOUT], not idle[_VECTOR],
                     not idle[_DMA], self._din_busy,
                     state == SeqState.RUN or state == SeqState.HALTING,
                     -1 if idle[_MATRIX] else mxu.mbank, -1 if idle[_READOUT] else mxu.rbank,
                     self.grants, self.requests - self.grants)
            if state != self._timeline_state:
                self._timeline_state = state
                self.timeline.append((cycle, state))
            if event == SeqEvent.DONE:      # the program's end: the host protocol follows
                self.timeline_end = cycle + 1
                self.timeline_counters = list(c)
        bump, bump_id, start_req, imem_write = self.pulses
        if bump or start_req or imem_write is not None or event not in _RESTING_EVENTS:
            seq.tick(idle, bump, bump_id, start_req, imem_write)

    @property
    def din_busy(self) -> bool:
        return self._din_busy

    # -- resting (module docstring) --------------------------------------------------------------

    def rest(self, cycle: int, router) -> bool:
        """At the start of `cycle` (every earlier cycle ticked; `router` is the node's, in that
        cycle's state): stop stepping the node if it is asleep, blocked or can coast (module
        docstring). Returns whether it rests; `wake` is then the first cycle it must be stepped
        in again (`NEVER`: only its router can wake it, see `woken_by`)."""
        din, dout = self.din, self.dout
        if din.busy or din.pulsing or not self.vpu.still:
            return False
        if din.reply is not None and not dout.active:
            return False     # DMA-out takes the hand-off in this cycle
        granted = self._granted_before
        if granted[0] or granted[2] or granted[3]:
            return False
        blocked = dout.active
        if blocked:
            # DMA-out rests only blocked: its flit refused by a full LOCAL input, and nothing
            # to fetch (its queue full, or every word fetched).
            if dout.in_flight or (dout.fetch_left and len(dout.queue) < PREFETCH_DEPTH):
                return False
            router.evaluate()
            if router.ready[_LOCAL_PORT] or dout.offer() is None:
                return False
        mxu = self.mxu
        if not mxu.matmul_on:
            if not mxu.still:
                return False
            coast = False
        elif mxu.idle or not mxu.can_run_alone():
            return False
        else:
            coast = True
        event = self.seq.decide((not coast, True, not blocked and din.reply is None, True)).event
        if event not in _RESTING_EVENTS:
            return False
        self.resting = True
        self.blocked = blocked
        self._rest_from = cycle
        self._rest_event = event
        self._rest_running = self.seq.running
        if coast:
            sram = self.sram
            data = sram.read_data[1] if granted[1] else None
            snapshot = mxu.snapshot()
            n, reads, last = mxu.run_alone(sram.memory, data)
            reads = [cycle + r for r in reads]
            self._coast = (snapshot, data, reads, frozenset(reads), last)
            self.wake = cycle + n
        else:
            self._coast = None
            self.wake = NEVER
        return True

    def woken_by(self, router) -> bool:
        """Whether the resting node's router wakes it in this cycle: a flit on its local output,
        or, for a blocked DMA-out, room in its LOCAL input."""
        if not router.count:
            return self.blocked
        router.evaluate()
        return router.local_out() is not None or (self.blocked and router.ready[_LOCAL_PORT])

    def active_at(self, cycle: int) -> bool:
        """Whether the resting node has activity (an SRAM grant) in `cycle` (before `wake`)."""
        return self._coast is not None and cycle in self._coast[3]

    def last_activity(self, first: int, end: int) -> int | None:
        """The last cycle of first..end-1 in which the resting node has activity, or None."""
        if self._coast is None:
            return None
        reads = self._coast[2]
        k = bisect_left(reads, end)
        if k and reads[k - 1] >= first:
            return reads[k - 1]
        return None

    def resume(self, cycle: int) -> None:
        """Bring the resting node to the start of `cycle` (at most `wake`) and step it again."""
        if not self.resting:
            return
        if cycle > self.wake:
            raise ValueError(f"node ({self.x},{self.y}): resumed at cycle {cycle}, after its "
                             f"wake cycle {self.wake}")
        n = cycle - self._rest_from
        c = self.counters
        if self._rest_running:
            c[_CYCLES] += n
        if self.blocked:
            c[_BUSY_DMA_OUT] += n
        stall = _STALL_COUNTER.get(self._rest_event)
        if stall is not None:
            c[stall] += n
        sram, mxu = self.sram, self.mxu
        coast = self._coast
        if coast is None:
            mxu.cycle += n
            sram.idle_cycles(n)
        else:
            snapshot, data, reads, _, last = coast
            if cycle < self.wake:
                mxu.restore(snapshot)
                ran, done, last = mxu.run_alone(sram.memory, data, limit=n)
                assert ran == n, (ran, n)
                granted = len(done)
            else:
                granted = len(reads)
            c[_BUSY_MATRIX] += n
            if n:
                # The word of a read granted in the last skipped cycle arrives in this one.
                sram.read_grants[1] += granted
                sram.idle_cycles(n)
                if last is not None:
                    sram.read_data[1] = sram.memory[last]
                    self._granted_before = _PORT1_READ
                else:
                    self._granted_before = _NO_READS
            self._coast = None
        self.resting = False

    # -- steady streams (d1tile.sim.streams) ----------------------------------------------------

    def stream_end(self) -> str | None:
        """The node's part in a steady stream in this cycle (`d1tile.sim.streams`): "source"
        (DMA-out sends SRAM words in its steady state: one word queued, one arriving, one read
        per cycle), "sink" (DMA-in takes the body of a WRITE, IMEM or discarded packet), or None.
        Either way nothing else in the node may move: the other engines idle, no pulse, and the
        sequencer in a decision that only a DMA end or a bump can change (NONE or a stall)."""
        din, dout = self.din, self.dout
        if din.bump or din.start_req or din.bad_packet or din.dropped:
            return None
        if not self.vpu.still or not self.mxu.still:
            return None
        granted = self._granted_before
        if granted[1] or granted[2] or granted[3]:
            return None
        source = dout.active
        if source == din.in_packet:
            return None
        if source:
            if din.wr_pending or din.imem_write is not None:
                return None
            if dout.head_pending or dout.from_ctrs or dout.zero_src or len(dout.queue) != 1 \
                    or not dout.in_flight or not dout.fetch_left or not granted[0]:
                return None
        else:
            if din.reply is not None or granted[0]:
                return None
            mode = din.mode
            if mode == IMEM_MODE:
                if self.seq.state != SeqState.IDLE and self.seq.state != SeqState.STOPPED:
                    return None     # instruction words could change its decisions
            elif (mode != WRITE_MODE and mode != DISCARD_MODE) or din.imem_write is not None:
                return None
        if self._stream_event(source) not in _RESTING_EVENTS:
            return None
        return "source" if source else "sink"

    def _stream_event(self, source: bool) -> SeqEvent:
        return self.seq.decide((True, True, not source and self.din.reply is None, True)).event

    def stream_limit(self) -> float:
        """How many cycles the node's end of a stream stays steady: a source until its last
        word is fetched (its tail comes later), a sink until its address would leave its memory."""
        dout = self.dout
        if dout.active:
            # within one source row, and before the packet's tail
            return min(dout.fetch_left, dout.row_left, dout.send_left - 1)
        din = self.din
        if din.mode == WRITE_MODE:
            return max(0, self.cfg.sram_words - din.pkt_addr)
        if din.mode == IMEM_MODE:
            return max(0, self.cfg.imem_words - din.pkt_addr)
        return NEVER

    def _stream_cycles(self, m: int, source: bool) -> None:
        """The counters and cycle counts of m cycles at one end of a stream."""
        c = self.counters
        if self.seq.running:
            c[_CYCLES] += m
        stall = _STALL_COUNTER.get(self._stream_event(source))
        if stall is not None:
            c[stall] += m
        c[_BUSY_DMA_OUT if source else _BUSY_DMA_IN] += m
        self.mxu.cycle += m
        self.sram.cycle += m

    def stream_source(self, m: int) -> list[int]:
        """m >= 2 cycles of a steady source (`stream_end` said "source", m <= `stream_limit`):
        the m flits DMA-out sends, one per cycle, as its registers, the SRAM's and the counters
        advance."""
        if m < 2:
            raise ValueError(f"stream_source: {m} cycles (2 at least)")
        dout, sram = self.dout, self.sram
        mem, mask = sram.memory, self.cfg.sram_words - 1
        base, shift = dout.body_base, self._payload_shift
        # The queued word goes first, then the arriving one, then one read per cycle (the
        # word read in cycle k is sent in cycle k + 2): the steady state of `DmaOutModel`.
        first = dout.fetch_addr
        words = [dout.queue[0], sram.read_data[0]]
        words.extend(mem[(first + k) & mask] for k in range(m - 2))
        flits = [base | (word << shift) for word in words]
        dout.queue[0] = mem[(first + m - 2) & mask]
        dout.advance_fetch(m)
        dout.send_left -= m
        data = sram.read_data
        data[0] = mem[(first + m - 1) & mask]
        for i in range(1, READ_PORTS):
            data[i] = None
        sram.read_grants[0] += m
        self._stream_cycles(m, True)
        return flits

    def stream_sink(self, flits: list[int]) -> None:
        """len(flits) cycles of a steady sink (`stream_end` said "sink", at most `stream_limit`
        of them): DMA-in takes one body flit per cycle."""
        m = len(flits)
        din, sram = self.din, self.sram
        shift, payload = self._payload_shift, (1 << self.cfg.word_bits) - 1
        words = [(flit >> shift) & payload for flit in flits]
        addr = din.pkt_addr
        if din.mode == WRITE_MODE:
            mem, mask = sram.memory, self.cfg.sram_words - 1
            written = 0
            if din.wr_pending:             # the word taken in the cycle before
                if din.wr_full:
                    mem[din.wr_addr] = din.wr_data
                written += 1
            for k in range(m - 1):
                mem[(addr + k) & mask] = words[k]
            written += m - 1
            sram.write_grants[0] += written
            din.wr_pending, din.wr_addr, din.wr_data = True, (addr + m - 1) & mask, words[-1]
            din.wr_full, din.wr_bump, din.wr_counter = True, False, din.pkt_counter
            din.pkt_addr = (addr + m) & 0x1FFFF
        elif din.mode == IMEM_MODE:
            bits = (1 << IMEM_DATA_BITS) - 1
            seq = self.seq
            if din.imem_write is not None:
                seq.load_imem([din.imem_write[1]], din.imem_write[0])
            seq.load_imem([word & bits for word in words[:-1]], addr)
            din.imem_write = (addr + m - 1, words[-1] & bits)
            din.pkt_addr = (addr + m) & 0x1FFFF
        self._stream_cycles(m, False)

    # -- reports -------------------------------------------------------------------------------

    def status(self, router) -> int:
        """The `NODE_STATUS` word of the current cycle, from the state (it evaluates this
        cycle's outputs, so call it only when the run has stopped)."""
        seq = self.seq
        offer = self.outputs()
        router.evaluate()
        eject = router.local_out()
        event = self.decision.event
        if event not in _STALL_COUNTER and event != SeqEvent.ISSUE:
            event = SeqEvent.NONE      # the RTL's status shows the issue and stall strobes only
        return NODE_STATUS.pack(
            state=int(seq.state), pc=seq.pc & 0xFFFF, event=int(event),
            fault=int(seq.fault_code),
            busy_matrix=int(not self.idle[_MATRIX] or not self.idle[_READOUT]),
            busy_vector=int(not self.idle[_VECTOR]), busy_dma_out=int(not self.idle[_DMA]),
            busy_dma_in=int(self._din_busy),
            out_blocked=int(offer is not None and not router.ready[0]),
            in_blocked=int(eject is not None and not self.eject_ready(eject)))

    @property
    def halted(self) -> bool:
        return self.seq.state == SeqState.STOPPED


_NOTHING = (None,) * READ_PORTS
_NO_READS = (False,) * READ_PORTS
_NO_WRITES = (False,) * WRITE_PORTS
_PORT1_READ = (False, True, False, False)
