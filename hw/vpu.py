"""The vector engine: runs the vector instructions (VEC, FVEC, FCVT) by streaming SRAM words
through a `VectorUnit`.

The per-cycle rules (read requests, operand buffers, the bypass, the read and write rates, when
`idle` rises) are written out in `d1tile.sim.vpu`, whose `VectorEngineModel` reproduces this RTL
register for register; docs/vector.md is the long form.
"""

from __future__ import annotations

from amaranth.hdl import Module, Mux, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from d1tile import isa
from d1tile.contracts import OPERAND_BUFFER
from d1tile.isa import FORMATS, VECTOR_FAMILY
from d1tile.params import TileConfig
from d1tile.vector_ops import NO_OP, OP_BITS

from .decode import IsaLogic
from .sequencer import EngineCommand
from .sram import SRAMReadPort, SRAMWritePort
from .vector import VectorUnit


__all__ = ["VectorEngine"]

_N_BITS = max(FORMATS[op].field("n").width for op in VECTOR_FAMILY)


class VectorEngine(wiring.Component):
    """Runs one vector-family instruction at a time (`VEC`, `FVEC`, `FCVT`: `d1tile.isa`).

    Ports
    -----
    cmd : In(EngineCommand.Signature(quant=True))
        From the sequencer: `start` (pulse, honoured only while `idle`), `instr` (the 64-bit
        word: its opcode bits select VEC, FVEC or FCVT, decoded by the ISA's own rules,
        `isa.vector_fields` / `isa.vector_shape` over `IsaLogic`; any other opcode runs as
        n = 0), `scale`, `shift`, `relu` (SETQ's registers) and `fscale` (SETR's q), all
        latched at the end of the `start` cycle; `seed` and `reseed`: with a honoured `start`,
        `reseed` reloads the unit's generator from `seed` in that same cycle (before the
        instruction's first element, which comes two cycles later); `idle` back to the
        sequencer (a register: low from the cycle after `start` until the cycle after the last
        write is granted).
    read_a : Out(SRAMReadPort.Signature(cfg))
        Operand a (node read port 2): one read per element, of word a + (i >> read_shift).
    read_b : Out(SRAMReadPort.Signature(cfg))
        Operand b of the binary ops (node read port 3); idle for unary ops, one read in all with
        bfix.
    write : Out(SRAMWritePort.Signature(cfg))
        Results (node write port 2): one write per element to dst + (i >> write_shift) under
        its group's byte mask; a reduction's one write to dst.
    busy : Out(1)
        Not idle (the `busy_vector` counter event).

    Timing: every request (`en`, `addr`, `data`, `mask`) and `idle` come from registers; only
    the vector unit's `cmd.ready`/`result.ready` follow this cycle's write grant. Reads of
    element 0 in cycle s + 1 after the `start` cycle s, one element per cycle from then on when
    nothing conflicts, `idle` again in cycle s + n + 3 for every op (`d1tile.sim.vpu.vec_cycles`).
    Each read port holds a refused request until granted and buffers up to two words, so one
    refused port delays the other by at most two elements (rules in `d1tile.sim.vpu`).

    Bad input (the sequencer rejects it): addresses wrap modulo the SRAM size; undefined op
    codes read a only and write nothing (mask 0); n = 0 is busy for one cycle and writes
    nothing.
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
        n_max = (1 << _N_BITS) - 1
        addr_bits = isa.ADDR_BITS

        # -- decode: the ISA's rules on the instruction word ---------------------------------
        word = self.cmd.instr
        dec_code = Signal(OP_BITS)
        dec_dst, dec_a, dec_b = (Signal(addr_bits, name=f"dec_{k}") for k in ("dst", "a", "b"))
        dec_n = Signal(_N_BITS)
        dec_bfix, dec_binary, dec_reduce = Signal(), Signal(), Signal()
        dec_rs, dec_ws = Signal(2), Signal(2)
        hdl = IsaLogic(m, "vdec")
        m.d.comb += dec_code.eq(NO_OP)      # other opcodes: nothing to do (n = 0)
        with m.Switch(word[:4]):
            for op in VECTOR_FAMILY:
                with m.Case(op):
                    x = FORMATS[op].layout(word[:FORMATS[op].width])
                    v = isa.vector_fields(op, x, hdl)
                    s = isa.vector_shape(v, hdl)
                    m.d.comb += [
                        dec_code.eq(v.code), dec_dst.eq(v.dst), dec_a.eq(v.a), dec_b.eq(v.b),
                        dec_n.eq(v.n), dec_bfix.eq(v.bfix), dec_binary.eq(s.binary),
                        dec_reduce.eq(s.reduce), dec_rs.eq(s.read_shift),
                        dec_ws.eq(s.write_shift),
                    ]

        # -- registers: the latched instruction ----------------------------------------------
        busy = Signal()
        code = Signal(OP_BITS)
        binary = Signal()
        bfix = Signal()
        read_shift = Signal(2)
        write_shift = Signal(2)
        dst = Signal(addr_bits)
        a = Signal(addr_bits)
        b = Signal(addr_bits)
        n = Signal(_N_BITS)
        b_reads = Signal(_N_BITS)
        last_write = Signal(_N_BITS)     # the index of the instruction's last write
        scale = Signal.like(self.cmd.scale)
        shift = Signal.like(self.cmd.shift)
        relu = Signal()
        q = Signal.like(self.cmd.fscale)
        ei = Signal(range(n_max + 1))    # elements sent to the unit: slot, first, last
        wi = Signal(range(n_max + 1))
        m.d.comb += [self.busy.eq(busy), self.cmd.idle.eq(~busy)]

        # One operand port: request counter, in-flight flag, two-entry buffer with a bypass from
        # the read port. `consume` is whether an issued command uses up this operand.
        def operand(port, base, shift_by, limit, fire, consume, name):
            count = Signal(range(n_max + 1), name=f"{name}_requested")
            inflight = Signal(name=f"{name}_inflight")
            level = Signal(range(OPERAND_BUFFER + 1), name=f"{name}_level")
            buf = [Signal(cfg.word_bits, name=f"{name}_buf{k}") for k in range(OPERAND_BUFFER)]
            # A read in flight counts as a buffer entry, so the arriving word always has a place
            # and a refused request stays asserted (the sum cannot grow without a grant).
            m.d.comb += [
                port.en.eq(busy & (count != limit) & (level + inflight < OPERAND_BUFFER)),
                port.addr.eq(base + (count >> shift_by)),
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
            operand_word = Mux(level != 0, buf[0], port.data)
            # At `start`: nothing requested, buffers empty (bfix leaves its b word behind).
            return available, operand_word, [count.eq(0), level.eq(0)]

        fire = Signal()
        avail_a, word_a, reset_a = operand(self.read_a, a, read_shift, n, fire, 1, "a")
        avail_b, word_b, reset_b = operand(self.read_b, b, 0, b_reads, fire, binary & ~bfix, "b")

        # The vector unit's result register is the write request; its `ready` is the grant.
        result = unit.result.payload
        write_fire = unit.result.valid & self.write.ready
        m.d.comb += [
            self.write.en.eq(unit.result.valid),
            self.write.addr.eq(dst + (wi >> write_shift)),
            self.write.data.eq(result.data),
            self.write.mask.eq(result.mask),
            unit.result.ready.eq(self.write.ready),
            unit.cmd.valid.eq(busy & avail_a & (avail_b | ~binary)),
            unit.cmd.payload.op.eq(code),
            unit.cmd.payload.a.eq(word_a),
            unit.cmd.payload.b.eq(word_b),
            unit.cmd.payload.scale.eq(scale),
            unit.cmd.payload.shift.eq(shift),
            unit.cmd.payload.slot.eq(ei[:2]),
            unit.cmd.payload.relu.eq(relu),
            unit.cmd.payload.q.eq(q),
            unit.cmd.payload.first.eq(ei == 0),
            unit.cmd.payload.last.eq(ei + 1 == n),
            fire.eq(unit.cmd.valid & unit.cmd.ready),
            # The generator is reseeded in the start cycle, while the unit has no command.
            unit.seed.eq(self.cmd.seed),
            unit.reseed.eq(self.cmd.start & self.cmd.reseed & ~busy),
        ]
        with m.If(fire):
            m.d.sync += ei.eq(ei + 1)
        with m.If(write_fire):
            m.d.sync += wi.eq(wi + 1)

        with m.If(busy):
            with m.If((n == 0) | (write_fire & (wi == last_write))):
                m.d.sync += busy.eq(0)
        with m.Elif(self.cmd.start):
            m.d.sync += [
                busy.eq(1),
                code.eq(dec_code), binary.eq(dec_binary), bfix.eq(dec_bfix),
                read_shift.eq(dec_rs), write_shift.eq(dec_ws),
                dst.eq(dec_dst), a.eq(dec_a), b.eq(dec_b), n.eq(dec_n),
                b_reads.eq(Mux(dec_binary, Mux(dec_bfix, dec_n != 0, dec_n), 0)),
                last_write.eq(Mux(dec_reduce, 0, dec_n - 1)),
                scale.eq(self.cmd.scale), shift.eq(self.cmd.shift), relu.eq(self.cmd.relu),
                q.eq(self.cmd.fscale),
                ei.eq(0), wi.eq(0),
                *reset_a, *reset_b,
            ]
        return m
