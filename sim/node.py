"""Cycle-exact model of a node (`d1tile.hw.node.Node`): the sequencer, the three engines, the
DMA-in half, the banked SRAM and the performance counters, composed exactly as the RTL wires
them. The node's router lives in the tile's `MeshModel`.

One cycle of a node is split in three calls, made for every node of the tile in this order:

1. `outputs()`: everything the node drives this cycle, from its state alone: the sequencer's
   decision (which reads the engines' `idle`, itself state), every SRAM request, and the flit
   DMA-out offers to the router. The SRAM arbitrates here (its grants are combinational from the
   requests), and the registered pulses DMA-in sends to the sequencer are captured.
2. `eject_ready(flit)`: whether DMA-in takes the flit the router offers on its local output
   (combinational from this cycle's write grant and DMA-out's `reply_ready`).
3. `tick(accepted, ejected, router)`: the clock edge of every part, given whether the router
   took DMA-out's flit and the flit DMA-in took; the performance counters add this cycle's events.

SRAM ports (index = priority): read 0 DMA-out, 1 matrix engine, 2 and 3 vector engine (a, b);
write 0 DMA-in, 1 matrix engine, 2 vector engine.
"""

from __future__ import annotations

from d1tile.formats import COUNTER_NAMES, NODE_STATUS
from d1tile.params import TileConfig
from d1tile.sim.dma import DmaInModel, DmaOutModel
from d1tile.sim.mxu import MatrixEngineModel
from d1tile.sim.sequencer import ENGINES, SeqEvent, SeqState, SequencerModel
from d1tile.sim.sram import SRAMModel
from d1tile.sim.vpu import VectorEngineModel


__all__ = ["NodeModel", "READ_PORTS", "WRITE_PORTS"]

READ_PORTS = 4
WRITE_PORTS = 3
COUNTER_MASK = 0xFFFF_FFFF
_C = {name: i for i, name in enumerate(COUNTER_NAMES)}
_DMA = ENGINES.index(next(u for u in ENGINES if u.name == "DMA"))
_MATRIX = ENGINES.index(next(u for u in ENGINES if u.name == "MATRIX"))
_VECTOR = ENGINES.index(next(u for u in ENGINES if u.name == "VECTOR"))
_STALL_COUNTER = {SeqEvent.STALL_UNIT: _C["stall_unit"], SeqEvent.STALL_HAZARD: _C["stall_hazard"],
                  SeqEvent.STALL_WAIT: _C["stall_wait"], SeqEvent.STALL_HALT: _C["stall_halt"]}


class NodeModel:
    """Node (x, y) of a tile: see the module docstring for the per-cycle protocol."""

    def __init__(self, cfg: TileConfig, x: int, y: int):
        self.cfg, self.x, self.y = cfg, x, y
        self.seq = SequencerModel(cfg)
        self.mxu = MatrixEngineModel(cfg)
        self.vpu = VectorEngineModel(cfg)
        self.dout = DmaOutModel(cfg, x, y)
        self.din = DmaInModel(cfg, x, y)
        self.sram = SRAMModel(cfg, READ_PORTS, WRITE_PORTS)
        self.counters = [0] * len(COUNTER_NAMES)   # all but the router's flit counters
        # This cycle's values, set by outputs():
        self._arrived = [None] * READ_PORTS
        self._granted_before = [False] * READ_PORTS

    # -- phase 1 -------------------------------------------------------------------------------

    def outputs(self) -> int | None:
        """Evaluate this cycle's outputs and arbitrate the SRAM; returns DMA-out's flit offer."""
        din, dout = self.din, self.dout
        self.reply = din.reply
        self._din_busy = din.busy
        self.idle = (self.mxu.idle, self.vpu.idle, dout.idle(self.reply))
        self.decision = self.seq.decide(self.idle)
        self.reply_ready = dout.reply_ready
        # Registered pulses of DMA-in, seen by the sequencer this cycle.
        self.pulses = (din.bump, din.bump_id, din.start_req, din.imem_write)
        reads = dout.sram_reads() + self.mxu.sram_reads() + self.vpu.sram_reads()
        writes = din.sram_writes() + self.mxu.sram_writes() + self.vpu.sram_writes()
        # The words on the read ports this cycle come from last cycle's grants.
        self._arrived = [self.sram.read_data[i] if self._granted_before[i] else None
                         for i in range(READ_PORTS)]
        self.read_grants, self.write_grants = self.sram.step(reads, writes)
        self._granted_before = list(self.read_grants)
        self.requests = sum(r is not None for r in reads) + sum(w is not None for w in writes)
        self.grants = sum(self.read_grants) + sum(self.write_grants)
        self.offer = dout.offer()
        return self.offer

    # -- phase 2 -------------------------------------------------------------------------------

    def eject_ready(self, flit: int | None) -> bool:
        return self.din.accepts(flit, self.write_grants[0], self.reply_ready)

    # -- phase 3 -------------------------------------------------------------------------------

    def counter_values(self, router) -> list[int]:
        """The counters as the RTL's registers hold them at the start of this cycle."""
        values = list(self.counters)
        base_in, base_out = _C["flits_in_local"], _C["flits_out_local"]
        for p in range(5):
            values[base_in + p] = router.flits_in[p] & COUNTER_MASK
            values[base_out + p] = router.flits_out[p] & COUNTER_MASK
        return values

    def tick(self, accepted: bool, ejected: int | None, counters: list[int]) -> None:
        """The clock edge. `counters`: `counter_values()` taken before the router stepped."""
        seq, decision, arrived = self.seq, self.decision, self._arrived
        starts = [False, False, False]
        if decision.engine >= 0:
            starts[decision.engine] = True
        reply_taken = self.dout.tick(
            start=starts[_DMA], instr=decision.instr if starts[_DMA] else 0,
            status=seq.status, pc=seq.pc, info=seq.info, reply=self.reply,
            read_grants=self.read_grants[0:1], read_data=arrived[0:1], accepted=accepted,
            counters=counters)
        self.din.tick(ejected, self.write_grants[0:1], reply_taken)
        self.mxu.tick(starts[_MATRIX], decision.instr if starts[_MATRIX] else 0,
                      self.read_grants[1:2], self.write_grants[1:2], arrived[1:2])
        self.vpu.tick(self.read_grants[2:4], self.write_grants[2:3], arrived[2:4],
                      starts[_VECTOR], decision.instr if starts[_VECTOR] else 0,
                      seq.scale, seq.shift, seq.relu)
        c = self.counters
        if seq.running:
            c[0] += 1
        event = decision.event
        if event == SeqEvent.ISSUE:
            c[1] += 1
        elif event in _STALL_COUNTER:
            c[_STALL_COUNTER[event]] += 1
        c[2] += not self.idle[_MATRIX]
        c[3] += not self.idle[_VECTOR]
        c[4] += not self.idle[_DMA]
        c[5] += self.din_busy
        c[_C["sram_conflicts"]] += self.requests - self.grants
        bump, bump_id, start_req, imem_write = self.pulses
        seq.tick(self.idle, bump, bump_id, start_req, imem_write)
        for i in range(len(c)):
            c[i] &= COUNTER_MASK

    @property
    def din_busy(self) -> bool:
        return self._din_busy

    # -- reports -------------------------------------------------------------------------------

    def status(self, router) -> int:
        """The `NODE_STATUS` word of the current cycle, from the state (it evaluates this
        cycle's outputs, so call it only when the run has stopped)."""
        seq = self.seq
        offer = self.outputs()
        router.evaluate()
        eject = router.out[0]
        event = self.decision.event
        if event not in _STALL_COUNTER and event != SeqEvent.ISSUE:
            event = SeqEvent.NONE      # the RTL's status shows the issue and stall strobes only
        return NODE_STATUS.pack(
            state=int(seq.state), pc=seq.pc & 0xFFFF, event=int(event),
            fault=int(seq.fault_code), busy_matrix=int(not self.idle[_MATRIX]),
            busy_vector=int(not self.idle[_VECTOR]), busy_dma_out=int(not self.idle[_DMA]),
            busy_dma_in=int(self._din_busy),
            out_blocked=int(offer is not None and not router.ready[0]),
            in_blocked=int(eject is not None and not self.eject_ready(eject)))

    @property
    def halted(self) -> bool:
        return self.seq.state == SeqState.STOPPED
