"""The vector engine: runs `VEC` instructions by streaming SRAM words through a `VectorUnit`.

The per-cycle rules (read requests, operand buffers, the bypass, when `idle` rises) are written
out in `d1tile.sim.vpu`, whose `VectorEngineModel` reproduces this RTL cycle for cycle.
"""

from __future__ import annotations

from amaranth.hdl import Module, Mux, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from d1tile.formats import VecOp
from d1tile.params import TileConfig
from d1tile.sim.isa import BINARY_VECOPS, FORMATS, Opcode
from d1tile.sim.vpu import OPERAND_BUFFER

from .sequencer import EngineCommand
from .sram import SRAMReadPort, SRAMWritePort
from .vector import VectorUnit


__all__ = ["VectorEngine"]


class VectorEngine(wiring.Component):
    """Runs one `VEC vop, dst, a, b, n, bfix` at a time (see `d1tile.sim.isa`).

    Ports
    -----
    cmd : In(EngineCommand.Signature(quant=True))
        From the sequencer: `start` (pulse, honoured only while `idle`), `instr` (the 64-bit VEC
        word, decoded with `FORMATS[Opcode.VEC].layout`; the opcode bits are not looked at),
        `scale`, `shift`, `relu` (SETQ's registers), all latched at the end of the `start`
        cycle; `idle` back to the sequencer (a register: low from the cycle after `start` until
        the cycle after the last write is granted).
    read_a : Out(SRAMReadPort.Signature(cfg))
        Operand a (node read port 2).
    read_b : Out(SRAMReadPort.Signature(cfg))
        Operand b of ADD, MUL, MAX (node read port 3); idle for RELU and REQUANT, one read in
        all with bfix.
    write : Out(SRAMWritePort.Signature(cfg))
        Results (node write port 2): one write per element, REQUANT's under its slot's mask.
    busy : Out(1)
        Not idle (the `busy_vector` counter event).

    Timing: every request (`en`, `addr`, `data`, `mask`) and `idle` come from registers; only
    the vector unit's `cmd.ready`/`result.ready` follow this cycle's write grant. Reads of
    element 0 in cycle s + 1 after the `start` cycle s, one element per cycle from then on when
    nothing conflicts, `idle` again in cycle s + n + 3 (`d1tile.sim.vpu.vec_cycles`). Each read
    port holds a refused request until granted and buffers up to two words, so one refused port
    delays the other by at most two elements (rules in `d1tile.sim.vpu`).

    Bad input (the sequencer rejects it): addresses wrap modulo the SRAM size; op codes 5..7
    read a only and write nothing (mask 0); n = 0 is busy for one cycle and writes nothing.
    """

    def __init__(self, cfg: TileConfig):
        if not isinstance(cfg, TileConfig):
            raise TypeError(f"cfg must be a TileConfig, not {cfg!r}")
        self._cfg = cfg
        super().__init__({
            "cmd": In(EngineCommand.Signature(quant=True)),
            "read_a": Out(SRAMReadPort.Signature(cfg)),
            "read_b": Out(SRAMReadPort.Signature(cfg)),
            "write": Out(SRAMWritePort.Signature(cfg)),
            "busy": Out(1),
        })

    @property
    def cfg(self) -> TileConfig:
        return self._cfg

    def elaborate(self, platform):
        cfg = self._cfg
        m = Module()
        m.submodules.unit = unit = VectorUnit(cfg)

        vec = FORMATS[Opcode.VEC]
        instr = vec.layout(self.cmd.instr[:vec.width])
        n_max = (1 << vec.field("n").width) - 1

        busy = Signal()
        op = Signal.like(instr.vop)
        binary = Signal()
        bfix = Signal()
        requant = Signal()
        dst = Signal.like(instr.dst)
        a = Signal.like(instr.a)
        b = Signal.like(instr.b)
        n = Signal.like(instr.n)
        b_reads = Signal.like(instr.n)
        scale = Signal.like(self.cmd.scale)
        shift = Signal.like(self.cmd.shift)
        relu = Signal()
        slot = Signal(2)
        wi = Signal(range(n_max + 1))
        m.d.comb += [self.busy.eq(busy), self.cmd.idle.eq(~busy)]

        # One operand port: request counter, in-flight flag, two-entry buffer with a bypass from
        # the read port. `consume` is whether an issued command uses up this operand.
        def operand(port, base, limit, fire, consume, name):
            count = Signal(range(n_max + 1), name=f"{name}_requested")
            inflight = Signal(name=f"{name}_inflight")
            level = Signal(range(OPERAND_BUFFER + 1), name=f"{name}_level")
            buf = [Signal(cfg.word_bits, name=f"{name}_buf{k}") for k in range(OPERAND_BUFFER)]
            # A read in flight counts as a buffer entry, so the arriving word always has a place
            # and a refused request stays asserted (the sum cannot grow without a grant).
            m.d.comb += [
                port.en.eq(busy & (count != limit) & (level + inflight < OPERAND_BUFFER)),
                port.addr.eq(base + count),
            ]
            with m.If(port.en & port.ready):
                m.d.sync += count.eq(count + 1)
            m.d.sync += inflight.eq(port.en & port.ready)

            popped = Signal(name=f"{name}_popped")
            pushed = Signal(name=f"{name}_pushed")
            m.d.comb += [
                popped.eq(fire & consume & (level != 0)),
                # An arriving word goes into the buffer unless the bypass consumed it.
                pushed.eq(inflight & ~(fire & consume & (level == 0))),
            ]
            with m.If(popped):
                for k in range(OPERAND_BUFFER - 1):
                    m.d.sync += buf[k].eq(buf[k + 1])
            with m.If(pushed):
                with m.Switch(level - popped):
                    for k in range(OPERAND_BUFFER):
                        with m.Case(k):
                            m.d.sync += buf[k].eq(port.data)
            m.d.sync += level.eq(level - popped + pushed)
            available = (level != 0) | inflight
            word = Mux(level != 0, buf[0], port.data)
            # At `start`: nothing requested, buffers empty (bfix leaves its b word behind).
            return available, word, [count.eq(0), level.eq(0)]

        fire = Signal()
        avail_a, word_a, reset_a = operand(self.read_a, a, n, fire, 1, "a")
        avail_b, word_b, reset_b = operand(self.read_b, b, b_reads, fire, binary & ~bfix, "b")

        # The vector unit's result register is the write request; its `ready` is the grant.
        result = unit.result.payload
        write_fire = unit.result.valid & self.write.ready
        m.d.comb += [
            self.write.en.eq(unit.result.valid),
            self.write.addr.eq(dst + Mux(requant, wi >> 2, wi)),
            self.write.data.eq(result.data),
            self.write.mask.eq(result.mask),
            unit.result.ready.eq(self.write.ready),
            unit.cmd.valid.eq(busy & avail_a & (avail_b | ~binary)),
            unit.cmd.payload.op.eq(op),
            unit.cmd.payload.a.eq(word_a),
            unit.cmd.payload.b.eq(word_b),
            unit.cmd.payload.scale.eq(scale),
            unit.cmd.payload.shift.eq(shift),
            unit.cmd.payload.slot.eq(slot),
            unit.cmd.payload.relu.eq(relu),
            fire.eq(unit.cmd.valid & unit.cmd.ready),
        ]
        with m.If(fire):
            m.d.sync += slot.eq(slot + 1)
        with m.If(write_fire):
            m.d.sync += wi.eq(wi + 1)

        with m.If(busy):
            with m.If((n == 0) | (write_fire & (wi + 1 == n))):
                m.d.sync += busy.eq(0)
        with m.Elif(self.cmd.start):
            is_binary = instr.vop.matches(*BINARY_VECOPS)
            m.d.sync += [
                busy.eq(1),
                op.eq(instr.vop),
                binary.eq(is_binary),
                bfix.eq(instr.bfix),
                requant.eq(instr.vop == VecOp.REQUANT),
                dst.eq(instr.dst), a.eq(instr.a), b.eq(instr.b), n.eq(instr.n),
                b_reads.eq(Mux(is_binary, Mux(instr.bfix, instr.n != 0, instr.n), 0)),
                scale.eq(self.cmd.scale), shift.eq(self.cmd.shift), relu.eq(self.cmd.relu),
                slot.eq(0), wi.eq(0),
                *reset_a, *reset_b,
            ]
        return m
