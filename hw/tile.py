"""The tile: `cfg.rows` x `cfg.cols` nodes in a mesh, with the host port on the east edge.
Cycle-exact reference: `d1tile.sim.tile.TileModel`.

Ports (Verilog names in brackets):

* `host_in_<y>` [`host_in_<y>__valid/ready/payload`]: flits from the host into router
  (cols-1, y)'s EAST input, one link per row.
* `host_out_<y>`: flits router (cols-1, y) sends EAST, to the host (the host must be ready).
* `activity`: something moved somewhere this cycle (see `Node`); the runtime's hang detector.
* `misroute`: sticky; a flit left the mesh on the north, south or west edge (never happens with
  well-formed packets: destinations are checked when SENDs issue and hosts build their packets).
* `status_<x>_<y>`, `sync_counters_<x>_<y>`: each node's `NODE_STATUS` and WAIT counters.
"""

from __future__ import annotations

from amaranth.hdl import Cat, Module, Signal
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

from ..formats import NODE_STATUS, flit_format
from ..params import TileConfig
from .node import Node
from .sequencer import SYNC_COUNTERS_LAYOUT


__all__ = ["Tile"]


class Tile(wiring.Component):
    def __init__(self, cfg: TileConfig):
        if not isinstance(cfg, TileConfig):
            raise TypeError(f"cfg must be a TileConfig, not {cfg!r}")
        self._cfg = cfg
        flit = stream.Signature(flit_format(cfg).layout)
        members = {"activity": Out(1), "misroute": Out(1)}
        for y in range(cfg.rows):
            members[f"host_in_{y}"] = In(flit)
            members[f"host_out_{y}"] = Out(flit)
        for y in range(cfg.rows):
            for x in range(cfg.cols):
                members[f"status_{x}_{y}"] = Out(NODE_STATUS.layout)
                members[f"sync_counters_{x}_{y}"] = Out(SYNC_COUNTERS_LAYOUT)
        super().__init__(members)

    @property
    def cfg(self) -> TileConfig:
        return self._cfg

    def elaborate(self, platform):
        m = Module()
        cfg = self._cfg
        nodes = {}
        for y in range(cfg.rows):
            for x in range(cfg.cols):
                node = nodes[(x, y)] = Node(cfg, x, y)
                m.submodules[f"node_{x}_{y}"] = node
                m.d.comb += [getattr(self, f"status_{x}_{y}").eq(node.status),
                             getattr(self, f"sync_counters_{x}_{y}").eq(node.sync_counters)]
        misroute = Signal()
        m.d.comb += self.misroute.eq(misroute)
        edge_flits = []
        for (x, y), node in nodes.items():
            if (x + 1, y) in nodes:
                wiring.connect(m, node.out_east, nodes[(x + 1, y)].in_west)
                wiring.connect(m, nodes[(x + 1, y)].out_west, node.in_east)
            else:
                wiring.connect(m, wiring.flipped(getattr(self, f"host_in_{y}")), node.in_east)
                wiring.connect(m, node.out_east, wiring.flipped(getattr(self, f"host_out_{y}")))
            if (x, y + 1) in nodes:
                wiring.connect(m, node.out_south, nodes[(x, y + 1)].in_north)
                wiring.connect(m, nodes[(x, y + 1)].out_north, node.in_south)
            for d, inside in (("north", y > 0), ("south", y < cfg.rows - 1), ("west", x > 0)):
                if not inside:
                    # Nothing enters through a mesh edge; what leaves through one is dropped
                    # and flagged.
                    out = getattr(node, f"out_{d}")
                    m.d.comb += [getattr(node, f"in_{d}").valid.eq(0), out.ready.eq(1)]
                    edge_flits.append(out.valid)
        # (every tile has edges: its first row, last row and first column)
        with m.If(Cat(*edge_flits).any()):
            m.d.sync += misroute.eq(1)
        m.d.comb += self.activity.eq(Cat(*(node.activity for node in nodes.values())).any())
        return m
