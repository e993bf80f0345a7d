"""The 5-port mesh router (`Router`) and a test top of `cfg.rows` x `cfg.cols` routers
(`RouterMesh`).

The rules (routing, FIFOs, allocation, round robin, wormhole locks) are stated once in
`d1tile.sim.router`, whose `RouterModel`/`MeshModel` reproduce this RTL cycle by cycle;
docs/architecture.md (mesh router) explains them with timing.
"""

from __future__ import annotations

from amaranth.hdl import Array, Cat, Module, Mux, Signal, Value
from amaranth.lib import data, stream, wiring
from amaranth.lib.fifo import SyncFIFO
from amaranth.lib.wiring import In, Out

from d1tile.formats import Multicast, Port, flit_format
from d1tile.params import TileConfig
from d1tile.contracts import OPPOSITE, PORTS, RR_RESET, STEP, check_node


__all__ = ["route_xy", "route_mask", "Router", "RouterMesh"]


def route_xy(x: int, y: int, dst_x, dst_y) -> Value:
    """The Amaranth form of `d1tile.sim.router.route_xy` for a router at the constant
    coordinates (x, y): a value of shape `Port` computed from the `dst_x`, `dst_y` values."""
    return Mux(dst_x > x, Port.EAST,
               Mux(dst_x < x, Port.WEST,
                   Mux(dst_y > y, Port.SOUTH,
                       Mux(dst_y < y, Port.NORTH, Port.LOCAL))))


def route_mask(x: int, y: int, came_from: Port, head) -> tuple[Value, Value]:
    """The Amaranth form of `d1tile.sim.router.route_mask` for the input `came_from` of the
    router at (x, y): (primary, fork) from a flit view `head`; `primary` is the output a
    unicast or a multicast's link takes (LOCAL at a multicast's last receiver), and `fork` is
    high when a multicast also delivers a copy to LOCAL here."""
    dst_x, dst_y, mc, last = head.dst_x, head.dst_y, head.mc, head.last
    row = (mc == Multicast.ROW) & (last >= dst_x)
    row_here = row & ((dst_x == x) | (((came_from == Port.WEST) & (dst_x < x)) & (last >= x)))
    col = (mc == Multicast.COLUMN) & (last >= dst_y) & (dst_x == x)
    col_here = col & ((dst_y == y) | (((came_from == Port.NORTH) & (dst_y < y)) & (last >= y)))
    at_last = (row_here & (last == x)) | (col_here & (last == y))
    primary = Mux(row_here | col_here,
                  Mux(at_last, Port.LOCAL, Mux(row_here, Port.EAST, Port.SOUTH)),
                  Mux(row, Mux(dst_x > x, Port.EAST, Port.WEST),
                      Mux(col, Mux(dst_y > y, Port.SOUTH, Port.NORTH),
                          route_xy(x, y, dst_x, dst_y))))
    return primary, (row_here | col_here) & ~at_last


def _port_name(port: Port) -> str:
    return port.name.lower()


def _check_config(cfg):
    if not isinstance(cfg, TileConfig):
        raise TypeError(f"cfg must be a TileConfig, not {cfg!r}")


class Router(wiring.Component):
    """A 5-port input-buffered wormhole router with XY routing, at mesh node (x, y).

    Ports (p = local, north, east, south, west; payloads are `flit_format(cfg).layout`):

    * `in_<p>`: flits arriving from port p. `ready` = that input's FIFO is not full; it depends
      on FIFO state only, so routers can be wired back to back without combinational loops.
    * `out_<p>`: flits leaving through port p. `valid` never depends on its own `ready`; a
      multicast's copy is valid only while the fork's other output is ready (so that both move
      together).

    Contract:

    * Buffering: one FIFO of `cfg.router_fifo_depth` flits per input. A flit accepted at the end
      of cycle t is at the FIFO head, and can be on an output, in cycle t+1.
    * Routing: a packet's head flit goes to `route_xy(x, y, dst_x, dst_y)` (X, then Y, then
      LOCAL); the rest of the packet follows it through the same output. A multicast head
      (`mc`) goes where `route_mask` says: inside its run of receivers to LOCAL and the next
      hop east (ROW) or south (COLUMN) at once, a fork that moves each flit on both outputs in
      the same cycle or not at all.
    * Allocation, per output o, each cycle: if o is locked its owner input is granted; otherwise
      the first requester after o's round-robin pointer (reset `RR_RESET` = WEST, so LOCAL first)
      among the inputs that own no locked output and hold a HEAD flit routed to o; the links
      first, then LOCAL, open also to a forking head that won its link. `out_o.valid` = the
      granted FIFO is not empty (and, for a fork, its other output granted to the same input
      and ready); the payload is its head. On a transfer: a tail unlocks o,
      a non-tail head locks o to the granted input, a head moves the pointer to the granted input.
    * Latency: one cycle per router (see `d1tile.sim.router.unloaded_latency`). Throughput: one
      flit per cycle on every output at once, with `router_fifo_depth` >= 2.
    * Bad input: a HEAD flit that arrives while its input still owns an output (the previous
      packet had no tail) is forwarded as part of that packet; a body flit at an input with no
      open packet is never granted and blocks that input. Senders must send whole packets.
    """

    def __init__(self, cfg: TileConfig, x: int, y: int):
        check_node(cfg, x, y)
        self._cfg, self._x, self._y = cfg, x, y
        layout = flit_format(cfg).layout
        members = {}
        for port in PORTS:
            members[f"in_{_port_name(port)}"] = In(stream.Signature(layout))
            members[f"out_{_port_name(port)}"] = Out(stream.Signature(layout))
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

    @property
    def inputs(self) -> tuple:
        """The input streams, indexed by `Port`."""
        return tuple(getattr(self, f"in_{_port_name(p)}") for p in PORTS)

    @property
    def outputs(self) -> tuple:
        """The output streams, indexed by `Port`."""
        return tuple(getattr(self, f"out_{_port_name(p)}") for p in PORTS)

    def elaborate(self, platform):
        m = Module()
        layout = flit_format(self._cfg).layout
        n = len(PORTS)

        # Input side: FIFO, head flit, its route (and whether a multicast forks to LOCAL here).
        heads, nonempty, routes, forks, pops = [], [], [], [], []
        for port, inp in zip(PORTS, self.inputs):
            name = _port_name(port)
            # SyncFIFO reads asynchronously: a flit written at the end of cycle t is the head in
            # cycle t+1, which makes a hop one cycle; its w_rdy is "not full", state only.
            fifo = m.submodules[f"fifo_{name}"] = SyncFIFO(width=layout.size,
                                                           depth=self._cfg.router_fifo_depth)
            head = data.View(layout, fifo.r_data)
            route = Signal(Port, name=f"route_{name}")
            fork = Signal(name=f"fork_{name}")
            pop = Signal(name=f"pop_{name}")
            primary, forked = route_mask(self._x, self._y, port, head)
            m.d.comb += [
                fifo.w_data.eq(inp.payload),
                fifo.w_en.eq(inp.valid),
                inp.ready.eq(fifo.w_rdy),
                route.eq(primary),
                fork.eq(forked),
                fifo.r_en.eq(pop),
            ]
            heads.append(head)
            nonempty.append(fifo.r_rdy)
            routes.append(route)
            forks.append(fork)
            pops.append(pop)

        # Output state: wormhole lock, its owner, round-robin pointer.
        locked = [Signal(name=f"locked_{_port_name(p)}") for p in PORTS]
        owner = [Signal(range(n), name=f"owner_{_port_name(p)}") for p in PORTS]
        # The other output of a locked multicast (n: none): the two carry each flit together.
        partner = [Signal(range(n + 1), init=n, name=f"partner_{_port_name(p)}") for p in PORTS]
        pointer = [Signal(range(n), init=int(RR_RESET), name=f"rr_{_port_name(p)}") for p in PORTS]

        # An input in the middle of a packet (owner of a locked output) requests nothing else,
        # so one input is never granted by two outputs (which would pop it twice).
        busy = [Signal(name=f"busy_{_port_name(p)}") for p in PORTS]
        for i in range(n):
            m.d.comb += busy[i].eq(Cat(*(locked[o] & (owner[o] == i) for o in range(n))).any())

        # The links are allocated first; LOCAL, when not locked, is also open to a forking head
        # that won its link, so the two grants of a multicast always agree.
        grant_of = [Signal(range(n), name=f"grant_{_port_name(p)}") for p in PORTS]
        granted_of = [Signal(name=f"granted_{_port_name(p)}") for p in PORTS]
        pair_of = [Signal(range(n + 1), name=f"pair_{_port_name(p)}") for p in PORTS]
        links_first = [o for o in range(n) if PORTS[o] != Port.LOCAL] + [int(Port.LOCAL)]
        for o in links_first:
            port = PORTS[o]
            name = _port_name(port)
            requests = Signal(n, name=f"requests_{name}")
            wants = []
            for i in range(n):
                want = routes[i] == port
                if port == Port.LOCAL:      # (over the links only: no loop through LOCAL)
                    won = Cat(*((routes[i] == q) & granted_of[q] & (grant_of[q] == i)
                                for q in links_first[:-1])).any()
                    want = want | (forks[i] & won)
                wants.append(nonempty[i] & heads[i].head & ~busy[i] & want)
            m.d.comb += requests.eq(Cat(*wants))
            grant, granted = grant_of[o], granted_of[o]
            with m.If(locked[o]):
                m.d.comb += [grant.eq(owner[o]), granted.eq(1)]
            with m.Else():
                # Round robin: search from the port after the pointer, the pointer's port last.
                with m.Switch(pointer[o]):
                    for start in range(n):
                        with m.Case(start):
                            order = [(start + k) % n for k in range(1, n + 1)]
                            for k, i in enumerate(order):
                                with (m.If if k == 0 else m.Elif)(requests[i]):
                                    m.d.comb += [grant.eq(i), granted.eq(1)]
            # The other output this flit must go out on at the same time (n: none).
            pair = pair_of[o]
            with m.If(locked[o]):
                m.d.comb += pair.eq(partner[o])
            with m.Elif(Array(forks)[grant]):
                m.d.comb += pair.eq(Array(routes)[grant] if port == Port.LOCAL else Port.LOCAL)
            with m.Else():
                m.d.comb += pair.eq(n)

        grants = []
        outputs = self.outputs
        for o, (port, out) in enumerate(zip(PORTS, outputs)):
            grant, granted, pair = grant_of[o], granted_of[o], pair_of[o]
            # A multicast's output is valid only with its pair granted to it and ready.
            pair_ok = Signal(name=f"pair_ok_{_port_name(port)}")
            m.d.comb += pair_ok.eq(1)
            for p in range(n):
                if p != o:
                    with m.If(pair == p):
                        m.d.comb += pair_ok.eq(granted_of[p] & (grant_of[p] == grant)
                                               & outputs[p].ready)
            with m.Switch(grant):
                for i in range(n):
                    with m.Case(i):
                        m.d.comb += [out.valid.eq(granted & nonempty[i] & pair_ok),
                                     out.payload.eq(heads[i])]
            fire = out.valid & out.ready
            with m.If(fire):
                with m.If(out.payload.tail):
                    m.d.sync += locked[o].eq(0)
                with m.Elif(out.payload.head):
                    m.d.sync += [locked[o].eq(1), owner[o].eq(grant), partner[o].eq(pair)]
                with m.If(out.payload.head):
                    m.d.sync += pointer[o].eq(grant)
            grants.append((fire, grant))

        for i in range(n):
            m.d.comb += pops[i].eq(Cat(*(fire & (grant == i) for fire, grant in grants)).any())
        return m


class RouterMesh(wiring.Component):
    """A `cfg.rows` x `cfg.cols` mesh of `Router`s: the test top of the network.

    Router (x, y) is wired to its neighbours (out_east -> (x+1, y).in_west, and so on). Ports:

    * `inject_<x>_<y>` (In stream of flits): router (x, y)'s `in_local`.
    * `eject_<x>_<y>` (Out stream of flits): router (x, y)'s `out_local`.
    * `misroute` (Out(1)): sticky; rises the cycle after any flit leaves the mesh through an edge
      port (edge outputs are always ready and drop the flit; edge inputs never carry a flit).
      The host edge (x == cols) is attached by the tile, not here, so here it is an error too.

    Latency: `unloaded_latency(hops)` from injection to ejection (d1tile.sim.router).
    """

    def __init__(self, cfg: TileConfig):
        _check_config(cfg)
        self._cfg = cfg
        layout = flit_format(cfg).layout
        members = {}
        for y in range(cfg.rows):
            for x in range(cfg.cols):
                members[f"inject_{x}_{y}"] = In(stream.Signature(layout))
                members[f"eject_{x}_{y}"] = Out(stream.Signature(layout))
        members["misroute"] = Out(1)
        super().__init__(members)

    @property
    def cfg(self) -> TileConfig:
        return self._cfg

    def inject(self, x: int, y: int):
        return getattr(self, f"inject_{x}_{y}")

    def eject(self, x: int, y: int):
        return getattr(self, f"eject_{x}_{y}")

    def elaborate(self, platform):
        m = Module()
        cfg = self._cfg
        routers = {}
        for y in range(cfg.rows):
            for x in range(cfg.cols):
                router = routers[x, y] = m.submodules[f"router_{x}_{y}"] = Router(cfg, x, y)
                wiring.connect(m, wiring.flipped(self.inject(x, y)), router.in_local)
                wiring.connect(m, router.out_local, wiring.flipped(self.eject(x, y)))
        for (x, y), router in routers.items():
            for port, (dx, dy) in STEP.items():
                neighbour = routers.get((x + dx, y + dy))
                out = router.outputs[port]
                if neighbour is not None:
                    wiring.connect(m, out, neighbour.inputs[OPPOSITE[port]])
                else:
                    m.d.comb += [out.ready.eq(1), router.inputs[port].valid.eq(0)]
                    with m.If(out.valid):
                        m.d.sync += self.misroute.eq(1)
        return m
