"""A node of the tile: router, banked SRAM, sequencer, matrix engine, vector engine, DMA-out,
DMA-in and the performance counters. Cycle-exact reference: `d1tile.sim.node.NodeModel`.

SRAM ports (index = priority on a bank conflict): read 0 DMA-out, 1 matrix engine, 2 and 3
vector engine (operands a and b); write 0 DMA-in, 1 matrix engine, 2 vector engine. DMA first,
so that the mesh is drained and fed before compute; compute is refused at most one cycle in
a row by each DMA port.

Counters (`COUNTER_NAMES`, 32 bits, wrapping, zero after reset): each adds this cycle's event:
the sequencer's `running` and strobes, each engine's `busy`, every router port's transfers
(valid and ready), and the number of SRAM requests refused by bank arbitration.
"""

from __future__ import annotations

from amaranth.hdl import Cat, Const, Module, Signal
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from ..formats import PERF_COUNTER_BITS, COUNTER_NAMES, NODE_STATUS, Port, flit_format
from ..params import TileConfig
from ..contracts import READ_PORTS, WRITE_PORTS, SeqEvent
from .dma import DmaIn, DmaOut
from .mxu import MatrixEngine
from .router import Router
from .sequencer import SYNC_COUNTERS_LAYOUT, Sequencer
from .sram import NodeSRAM
from .vpu import VectorEngine


__all__ = ["Node", "LINKS"]

LINKS = ("north", "east", "south", "west")


class Node(wiring.Component):
    """Node (x, y). Ports: `in_<d>` / `out_<d>` flit streams for d in north, east, south, west
    (the router's links; the tile wires them to the neighbours or to its edges), `activity`
    (anything moved this cycle: a flit on a router port, an SRAM grant, an issued instruction),
    `status` (`NODE_STATUS`, for hang reports) and `sync_counters` (`SYNC_COUNTERS` x 16 bits)."""

    def __init__(self, cfg: TileConfig, x: int, y: int):
        if not isinstance(cfg, TileConfig):
            raise TypeError(f"cfg must be a TileConfig, not {cfg!r}")
        self._cfg, self._x, self._y = cfg, x, y
        flit = stream.Signature(flit_format(cfg).layout)
        members = {}
        for d in LINKS:
            members[f"in_{d}"] = In(flit)
            members[f"out_{d}"] = Out(flit)
        members.update({
            "activity": Out(1),
            "status": Out(NODE_STATUS.layout),
            "sync_counters": Out(SYNC_COUNTERS_LAYOUT),
        })
        super().__init__(members)

    @property
    def cfg(self) -> TileConfig:
        return self._cfg

    def elaborate(self, platform):
        m = Module()
        cfg = self._cfg
        m.submodules.router = router = Router(cfg, self._x, self._y)
        m.submodules.sram = sram = NodeSRAM(cfg, read_ports=READ_PORTS, write_ports=WRITE_PORTS)
        m.submodules.seq = seq = Sequencer(cfg)
        m.submodules.mxu = mxu = MatrixEngine(cfg)
        m.submodules.vpu = vpu = VectorEngine(cfg)
        m.submodules.dout = dout = DmaOut(cfg, self._x, self._y)
        m.submodules.din = din = DmaIn(cfg, self._x, self._y)

        for d in LINKS:
            wiring.connect(m, wiring.flipped(getattr(self, f"in_{d}")), getattr(router, f"in_{d}"))
            wiring.connect(m, getattr(router, f"out_{d}"), wiring.flipped(getattr(self, f"out_{d}")))
        wiring.connect(m, dout.flit_out, router.in_local)
        wiring.connect(m, router.out_local, din.flit_in)
        wiring.connect(m, seq.matrix, mxu.cmd)
        wiring.connect(m, seq.readout, mxu.rd_cmd)
        wiring.connect(m, seq.vector, vpu.cmd)
        wiring.connect(m, seq.dma, dout.cmd)
        wiring.connect(m, din.reply, dout.reply)
        wiring.connect(m, din.imem_w, seq.imem_w)
        m.d.comb += [seq.start_req.eq(din.start_req), seq.bump.eq(din.bump),
                     seq.bump_id.eq(din.bump_id)]
        for port, master in zip(sram.read, (dout.read, mxu.read, vpu.read_a, vpu.read_b)):
            wiring.connect(m, master, port)
        for port, master in zip(sram.write, (din.write, mxu.write, vpu.write)):
            wiring.connect(m, master, port)

        # -- performance counters ---------------------------------------------------------
        counters = Signal(data.ArrayLayout(PERF_COUNTER_BITS, len(COUNTER_NAMES)))
        m.d.comb += dout.counters.eq(counters)
        refused = [p.en & ~p.ready for p in (*sram.read, *sram.write)]
        granted = Cat(*(p.en & p.ready for p in (*sram.read, *sram.write)))
        ports = [router.in_local, router.in_north, router.in_east, router.in_south, router.in_west]
        outs = [router.out_local, router.out_north, router.out_east, router.out_south,
                router.out_west]
        moved_in = [p.valid & p.ready for p in ports]
        moved_out = [p.valid & p.ready for p in outs]
        events = {
            "cycles": seq.running, "instructions": seq.issued,
            "busy_matrix": mxu.busy, "busy_vector": vpu.busy, "busy_dma_out": dout.busy,
            "busy_dma_in": din.busy, "stall_unit": seq.stall_unit,
            "stall_hazard": seq.stall_hazard, "stall_wait": seq.stall_wait,
            "stall_halt": seq.stall_halt,
            "sram_conflicts": sum(r.as_unsigned() for r in refused),
        }
        for port in Port:
            events[f"flits_in_{port.name.lower()}"] = moved_in[port]
            events[f"flits_out_{port.name.lower()}"] = moved_out[port]
        for i, name in enumerate(COUNTER_NAMES):
            m.d.sync += counters[i].eq(counters[i] + events[name])

        # -- observation --------------------------------------------------------------------
        m.d.comb += self.activity.eq(granted.any() | seq.issued | Cat(*moved_in, *moved_out).any())
        event = Signal(3)
        with m.If(seq.issued):
            m.d.comb += event.eq(SeqEvent.ISSUE)
        with m.Elif(seq.stall_unit):
            m.d.comb += event.eq(SeqEvent.STALL_UNIT)
        with m.Elif(seq.stall_hazard):
            m.d.comb += event.eq(SeqEvent.STALL_HAZARD)
        with m.Elif(seq.stall_wait):
            m.d.comb += event.eq(SeqEvent.STALL_WAIT)
        with m.Elif(seq.stall_halt):
            m.d.comb += event.eq(SeqEvent.STALL_HALT)
        m.d.comb += [
            self.status.state.eq(seq.state),
            self.status.pc.eq(seq.pc),
            self.status.event.eq(event),
            self.status.fault.eq(seq.fault_code),
            self.status.busy_matrix.eq(mxu.busy),
            self.status.busy_vector.eq(vpu.busy),
            self.status.busy_dma_out.eq(dout.busy),
            self.status.busy_dma_in.eq(din.busy),
            self.status.out_blocked.eq(dout.flit_out.valid & ~dout.flit_out.ready),
            self.status.in_blocked.eq(router.out_local.valid & ~din.flit_in.ready),
            self.sync_counters.eq(seq.counters),
        ]
        return m
