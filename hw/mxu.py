"""The matrix engine: runs MATMUL and MREAD on the node's matrix unit, fed from and written to the
node SRAM. Its two halves run side by side: MATMUL (the sequencer's MATRIX engine) accumulates
into one accumulator bank while MREAD (the READOUT engine) reads out another.

The per-cycle rules, the timing formulas and the cycle-exact model are in `d1tile.sim.mxu`
(`MatrixEngineModel`); this module is their RTL, register for register.
"""

from __future__ import annotations

from amaranth.hdl import Cat, Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out

from ..dtypes import MATRIX_TYPES, TYPE_BITS, ElemType
from ..isa import ACC_BANKS, FORMATS, Opcode
from ..params import TileConfig
from .matrix import OPERAND_BITS, MatrixUnit
from .sequencer import EngineCommand
from .sram import SRAMReadPort, SRAMWritePort


__all__ = ["MatrixEngine", "operand_word_layout"]


def operand_word_layout(cfg: TileConfig, dtype=ElemType.INT8) -> data.ArrayLayout:
    """An SRAM word seen as the operand vectors of a MATMUL of type `dtype` (vector j =
    elements jN .. jN+N-1, element 0 in the low bits), i.e. `d1tile.sim.mxu.operand_vectors`."""
    spec = MATRIX_TYPES[ElemType(dtype)]
    vectors = spec.vectors_per_word(cfg)
    element = signed(spec.operand_bits) if spec.operand == ElemType.INT8 else \
        unsigned(spec.operand_bits)
    layout = data.ArrayLayout(data.ArrayLayout(element, cfg.mac_dim), vectors)
    if layout.size != cfg.word_bits:
        raise ValueError(f"{vectors} operand vectors of {spec.name} do not fill a "
                         f"{cfg.word_bits}-bit word")
    return layout


class MatrixEngine(wiring.Component):
    """Runs the sequencer's MATMUL and MREAD instructions on a `MatrixUnit` it owns.

    Ports
    -----
    cmd : In(EngineCommand.Signature())
        MATMULs (the MATRIX engine): `start` (pulse, taken only while `idle` is high), `instr`
        (the raw MATMUL word), `idle` (out): low from the cycle after an accepted start until
        the instruction is done.
    rd_cmd : In(EngineCommand.Signature())
        MREADs (the READOUT engine), the same protocol, independent of `cmd`: an MREAD runs
        beside a MATMUL (the sequencer keeps them on different banks).
    read : Out(SRAMReadPort.Signature(cfg))
        Node SRAM read port 1: MATMUL's operand words (A and B alternately).
    write : Out(SRAMWritePort.Signature(cfg))
        Node SRAM write port 1: MREAD's accumulator rows (mask all ones).
    busy : Out(1)
        Either half busy (`~cmd.idle | ~rd_cmd.idle`), the event of the `busy_matrix` counter.

    Contract (details and formulas in `d1tile.sim.mxu`):

    * MATMUL a, b, kw, clear, type, bank: words a+w and b+w (w < kw) are read and give V beats
      each into accumulator bank `bank`
      (V = the type's vectors per word: 4 for INT8, 2 for BF16), beat j = operand vector j of
      both words and the type, `clear` on the first beat if set. Two pair slots prefetch; first
      beat 4 cycles after the start cycle; one beat per cycle in steady state if each word's
      reads are refused at most V - 1 cycles. `idle` is high in the last-beat cycle:
      back-to-back MATMULs issue every V * kw + 3 cycles.
    * MREAD dst, row0, nrows, bank: rows (row0 + r) mod N of bank `bank` to words dst + r, one
      per cycle while the writes are granted; `rd_cmd.idle` rises the cycle after the last
      write's grant (nrows + 2 cycles after the start when nothing waits; a row request waits
      while a beat into its bank is in the unit's pipeline).
    * Every SRAM request, `idle` and `busy` are functions of registers only (Moore); refused
      requests are held unchanged until granted. The only same-cycle dependency on a grant is
      the unit's `rd_data.ready` (= the write grant).
    * Bad input: MATMUL kw = 0 or of a type the unit lacks, MREAD nrows = 0 and other opcodes
      (on either command bus) are ignored (stays idle);
      other fields are not checked (the sequencer validates): addresses wrap modulo
      `cfg.sram_words`, rows modulo N. A `start` while not idle is ignored.

    `cfg` must be a TileConfig (else TypeError).
    """

    def __init__(self, cfg: TileConfig):
        if not isinstance(cfg, TileConfig):
            raise TypeError(f"cfg must be a TileConfig, not {cfg!r}")
        self._cfg = cfg
        self._unit = MatrixUnit(cfg)
        super().__init__({
            "cmd": In(EngineCommand.Signature()),
            "rd_cmd": In(EngineCommand.Signature()),
            "read": Out(SRAMReadPort.Signature(cfg)),
            "write": Out(SRAMWritePort.Signature(cfg)),
            "busy": Out(1),
        })

    @property
    def cfg(self) -> TileConfig:
        return self._cfg

    @property
    def unit(self) -> MatrixUnit:
        """The owned matrix unit (a submodule; testbenches observe its streams)."""
        return self._unit

    def elaborate(self, platform):
        cfg = self._cfg
        m = Module()
        m.submodules.unit = unit = self._unit
        ops, rd_req, rd_data = unit.operands, unit.rd_req, unit.rd_data
        cmd, rd_cmd, read, write = self.cmd, self.rd_cmd, self.read, self.write

        is_matmul = Signal()     # a MATMUL runs
        is_mread = Signal()      # an MREAD runs

        # -- MATMUL state ------------------------------------------------------------------
        mm_format = FORMATS[Opcode.MATMUL]
        a_base = Signal(mm_format.field("a").width)
        b_base = Signal(mm_format.field("b").width)
        kw = Signal(mm_format.field("kw").width)
        clear = Signal()
        mtype = Signal(TYPE_BITS)          # the MATMUL's operand type
        mbank = Signal(range(ACC_BANKS))   # its accumulator bank
        rword = Signal.like(kw)            # next word to read
        rhalf = Signal()                   # 0: its A word, 1: its B word
        c = Signal.like(kw)                # pair being beaten
        vpw_max = max(t.vectors_per_word(cfg) for t in MATRIX_TYPES.values())
        beat = Signal(range(vpw_max))
        # The type's last beat of a word pair (V - 1), from the type table.
        last_beat = Signal.like(beat)
        m.d.comb += last_beat.eq(Const(0))
        with m.Switch(mtype):
            for t, spec in MATRIX_TYPES.items():
                with m.Case(t):
                    m.d.comb += last_beat.eq(spec.vectors_per_word(cfg) - 1)
        lpairs = Signal.like(kw)           # pairs whose B word has landed
        pend = Signal()                    # a read was granted last cycle: its word is on `data`
        pend_half = Signal()
        pend_slot = Signal()
        slot_a = [Signal(cfg.word_bits, name=f"slot{s}_a") for s in range(2)]
        slot_b = [Signal(cfg.word_bits, name=f"slot{s}_b") for s in range(2)]

        # -- MREAD state -------------------------------------------------------------------
        mr_format = FORMATS[Opcode.MREAD]
        dst = Signal(mr_format.field("dst").width)
        row0 = Signal(mr_format.field("row0").width)
        nrows = Signal(mr_format.field("nrows").width)
        rbank = Signal(range(ACC_BANKS))
        rcol = Signal()                    # MREAD tr: columns instead of rows
        requested = Signal.like(nrows)
        written = Signal.like(nrows)

        # -- Moore outputs -----------------------------------------------------------------
        idle = Signal()
        m.d.comb += [
            idle.eq(~is_matmul | ((c + 1 == kw) & (beat == last_beat))),
            cmd.idle.eq(idle),
            rd_cmd.idle.eq(~is_mread),
            self.busy.eq(~idle | is_mread),
        ]

        # Pair rword goes to slot rword % 2, which holds pair rword - 2 = c until the end of c's
        # last beat; a read granted in beat last_beat - 1 lands exactly at that edge.
        slot_free = (rword != c + 2) | (beat + 1 >= last_beat)
        m.d.comb += [
            read.en.eq(is_matmul & (rword != kw) & slot_free),
            read.addr.eq(Mux(rhalf, b_base, a_base) + rword),
        ]

        head = c[0]
        cur_a = Mux(head, slot_a[1], slot_a[0])
        cur_b = Mux(head, slot_b[1], slot_b[0])
        # Operand vector `beat` of the current words, element by element into the unit's
        # OPERAND_BITS-wide fields, in the layout of the MATMUL's type.
        with m.Switch(mtype):
            for t in MATRIX_TYPES:
                with m.Case(t):
                    layout = operand_word_layout(cfg, t)
                    va, vb = data.View(layout, cur_a), data.View(layout, cur_b)
                    for e in range(cfg.mac_dim):
                        m.d.comb += [ops.p.a[e].eq(va[beat][e]),
                                     ops.p.b[e].eq(vb[beat][e])]
        m.d.comb += [
            ops.valid.eq(is_matmul & (lpairs != c)),
            ops.p.clear.eq(clear & (c == 0) & (beat == 0)),
            ops.p.type.eq(mtype),
            ops.p.bank.eq(mbank),
        ]

        m.d.comb += [
            rd_req.valid.eq(is_mread & (requested != nrows)),
            rd_req.p.row.eq(row0 + requested),       # truncated: rows wrap modulo N
            rd_req.p.bank.eq(rbank),
            rd_req.p.col.eq(rcol),
            write.en.eq(is_mread & rd_data.valid),
            write.addr.eq(dst + written),
            write.data.eq(rd_data.payload),
            write.mask.eq(Const((1 << cfg.word_bytes) - 1, cfg.word_bytes)),
            # The only acceptance that depends on a same-cycle grant.
            rd_data.ready.eq(write.en & write.ready),
        ]

        # -- MATMUL: reads, landing, beats -------------------------------------------------
        read_granted = read.en & read.ready
        m.d.sync += [pend.eq(read_granted), pend_half.eq(rhalf), pend_slot.eq(rword[0])]
        with m.If(read_granted):
            m.d.sync += rhalf.eq(~rhalf)
            with m.If(rhalf):
                m.d.sync += rword.eq(rword + 1)
        with m.If(pend):
            for s in range(2):
                with m.If(pend_slot == s):
                    with m.If(pend_half):
                        m.d.sync += slot_b[s].eq(read.data)
                    with m.Else():
                        m.d.sync += slot_a[s].eq(read.data)
            with m.If(pend_half):
                m.d.sync += lpairs.eq(lpairs + 1)
        with m.If(ops.valid):
            m.d.sync += beat.eq(beat + 1)
            with m.If(beat == last_beat):
                m.d.sync += [beat.eq(0), c.eq(c + 1)]
                with m.If(c + 1 == kw):
                    m.d.sync += is_matmul.eq(0)

        # -- MREAD: row requests, writes ---------------------------------------------------
        with m.If(rd_req.valid & rd_req.ready):
            m.d.sync += requested.eq(requested + 1)
        with m.If(write.en & write.ready):
            m.d.sync += written.eq(written + 1)
            with m.If(written + 1 == nrows):
                m.d.sync += is_mread.eq(0)

        # -- commands (after the finishing transitions: a start in the last-beat cycle wins) --
        mm = data.View(mm_format.layout, cmd.instr[:mm_format.width])
        mr = data.View(mr_format.layout, rd_cmd.instr[:mr_format.width])
        known_type = Cat(*(mm.type == t for t in MATRIX_TYPES)).any()
        with m.If(cmd.start & idle & (cmd.instr[:4] == Opcode.MATMUL) & (mm.kw != 0)
                  & known_type):
            m.d.sync += [
                is_matmul.eq(1),
                a_base.eq(mm.a), b_base.eq(mm.b), kw.eq(mm.kw), clear.eq(mm.clear),
                mtype.eq(mm.type), mbank.eq(mm.bank),
                rword.eq(0), rhalf.eq(0), c.eq(0), beat.eq(0), lpairs.eq(0),
            ]
        with m.If(rd_cmd.start & ~is_mread & (rd_cmd.instr[:4] == Opcode.MREAD)
                  & (mr.nrows != 0)):
            m.d.sync += [
                is_mread.eq(1),
                dst.eq(mr.dst), row0.eq(mr.row0), nrows.eq(mr.nrows), rbank.eq(mr.bank), rcol.eq(mr.tr),
                requested.eq(0), written.eq(0),
            ]
        return m
