"""The node SRAM: a banked scratchpad with fixed-priority read and write ports.

`NodeSRAM` is the node's only data memory. Its requesters (matrix unit, vector unit, router DMA,
sequencer) each get a port of the buses defined here, declared from the requester's side:

* `SRAMReadPort.Signature(cfg)`: `addr`, `en` out, `ready`, `data` in.
* `SRAMWritePort.Signature(cfg)`: `addr`, `en`, `data`, `mask` out, `ready` in.

The reference of its behaviour, cycle for cycle, is `d1tile.sim.sram.SRAMModel`.
"""

from __future__ import annotations

from amaranth.hdl import Array, Cat, Module, Signal, unsigned
from amaranth.lib import wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from ..params import TileConfig


__all__ = ["SRAMReadPort", "SRAMWritePort", "NodeSRAM"]


def _check_cfg(cfg) -> TileConfig:
    if not isinstance(cfg, TileConfig):
        raise TypeError(f"cfg must be a TileConfig, not {cfg!r}")
    return cfg


class _SRAMBusSignature(wiring.Signature):
    """What the read and write bus signatures share: the configuration they are built from, and
    equality by geometry (two configurations with the same SRAM geometry have interchangeable
    buses)."""

    _interface = None   # the PureInterface subclass `create` builds

    def __init__(self, cfg: TileConfig, members: dict):
        self._cfg = cfg
        super().__init__(members)

    @property
    def cfg(self) -> TileConfig:
        return self._cfg

    @property
    def addr_width(self) -> int:
        return self._cfg.sram_addr_bits

    @property
    def data_width(self) -> int:
        return self._cfg.word_bits

    def create(self, *, path=None, src_loc_at=0):
        return self._interface(self, path=path, src_loc_at=1 + src_loc_at)

    def __eq__(self, other):
        return (type(self) is type(other) and self.addr_width == other.addr_width
                and self.data_width == other.data_width)

    def __repr__(self):
        return (f"{self._interface.__name__}.Signature(addr_width={self.addr_width}, "
                f"data_width={self.data_width})")


class SRAMReadPort(wiring.PureInterface):
    """A read port of the node SRAM, as seen by the requester that drives it."""

    class Signature(_SRAMBusSignature):
        """Read bus, from the requester's side.

        Members
        -------
        addr : Out(cfg.sram_addr_bits)
            Word address; the high bits select the bank (`cfg.bank_addr_bits` low bits are the
            word inside the bank).
        en : Out(1)
            A read is requested this cycle. Hold `en` and `addr` until `ready` is seen high.
        ready : In(1)
            The request is granted this cycle (combinational from all ports' `en`/`addr`);
            meaningful only while `en` is high.
        data : In(cfg.word_bits)
            The word of the read granted in the previous cycle; valid for that one cycle only.
        """

        def __init__(self, cfg: TileConfig):
            super().__init__(_check_cfg(cfg), {
                "addr": Out(cfg.sram_addr_bits),
                "en": Out(1),
                "ready": In(1),
                "data": In(cfg.word_bits),
            })


class SRAMWritePort(wiring.PureInterface):
    """A write port of the node SRAM, as seen by the requester that drives it."""

    class Signature(_SRAMBusSignature):
        """Write bus, from the requester's side.

        Members
        -------
        addr : Out(cfg.sram_addr_bits)
            Word address (high bits select the bank).
        en : Out(1)
            A write is requested this cycle. Hold `en`, `addr`, `data` and `mask` until `ready`
            is seen high.
        data : Out(cfg.word_bits)
            The word to write.
        mask : Out(cfg.word_bytes)
            Byte enables: bit k writes bits 8k..8k+7 of `data`. An all-zero mask is a granted
            write that changes nothing.
        ready : In(1)
            The write is granted this cycle and takes effect at its end; meaningful only while
            `en` is high.
        """

        def __init__(self, cfg: TileConfig):
            super().__init__(_check_cfg(cfg), {
                "addr": Out(cfg.sram_addr_bits),
                "en": Out(1),
                "data": Out(cfg.word_bits),
                "mask": Out(cfg.word_bytes),
                "ready": In(1),
            })

        @property
        def mask_width(self) -> int:
            return self._cfg.word_bytes


class NodeSRAM(wiring.Component):
    """The node's banked SRAM: `cfg.sram_words` words of `cfg.word_bits` bits.

    Parameters
    ----------
    cfg : TileConfig
    read_ports, write_ports : int, 1 or more
        Number of read and write ports. Port 0 has the highest priority.

    Members
    -------
    read : In(SRAMReadPort.Signature(cfg)).array(read_ports)
    write : In(SRAMWritePort.Signature(cfg)).array(write_ports)
        (Verilog names `read__0__addr`, `write__2__mask`, ...)

    Behaviour
    ---------
    * Banks: `cfg.sram_banks` banks of `cfg.bank_words` words; the bank of a word is its high
      address bits, `addr >> cfg.bank_addr_bits`, so the compiler avoids conflicts by placing
      tensors that are used together in different banks. Each bank is one memory with one
      synchronous read port and one byte-granular write port.
    * Arbitration, per bank and per cycle: among the read ports with `en` high whose address
      falls in that bank, the lowest port index is granted (`ready` high); the others see
      `ready` low and must hold their request and retry (nothing is queued). Independently, the
      same for write ports. A read and a write may use the same bank in the same cycle. `ready`
      is combinational from the `en`/`addr` of all ports of that kind (no state, no fairness: a
      port that asks every cycle starves higher-indexed ports on its bank).
    * Reads: latency 1. The word appears on `read[i].data` in the cycle after the grant, and
      is guaranteed for that cycle only. A read granted in the same cycle as a write to the same
      word returns the OLD word (read ports are not transparent).
    * Writes: the bytes enabled by `mask` are written at the end of the granted cycle; a read
      granted in a later cycle sees them.
    * Throughput: up to one read and one write per bank per cycle, i.e. at most
      `min(read_ports, sram_banks)` reads and `min(write_ports, sram_banks)` writes per cycle.
    * Every address is valid (the SRAM size is a power of two); there is no bad input. The
      contents start at zero and are not touched by reset.
    * `ready` must not feed back into `en` in the same cycle (that would be a combinational
      loop); requesters decide `en` from their own state.

    The cycle-exact reference is `d1tile.sim.sram.SRAMModel`.
    """

    def __init__(self, cfg: TileConfig, *, read_ports: int, write_ports: int):
        _check_cfg(cfg)
        for name, value in (("read_ports", read_ports), ("write_ports", write_ports)):
            if not isinstance(value, int) or isinstance(value, bool):
                raise TypeError(f"{name} must be an integer, not {value!r}")
            if value < 1:
                raise ValueError(f"{name} must be at least 1, not {value}")
        self._cfg = cfg
        self._read_ports = read_ports
        self._write_ports = write_ports
        super().__init__({
            "read": In(SRAMReadPort.Signature(cfg)).array(read_ports),
            "write": In(SRAMWritePort.Signature(cfg)).array(write_ports),
        })

    @property
    def cfg(self) -> TileConfig:
        return self._cfg

    @property
    def read_ports(self) -> int:
        return self._read_ports

    @property
    def write_ports(self) -> int:
        return self._write_ports

    def elaborate(self, platform):
        cfg = self._cfg
        m = Module()
        low = cfg.bank_addr_bits

        def bank(port):
            return port.addr[low:]

        def grants(ports):
            # Fixed priority: a port wins unless a lower-indexed port asks for the same bank.
            # Comparing bank fields pairwise (rather than decoding a request matrix per bank)
            # keeps the logic at ports^2/2 small comparators whatever the bank count.
            for i, port in enumerate(ports):
                conflicts = [other.en & (bank(other) == bank(port)) for other in ports[:i]]
                if conflicts:
                    m.d.comb += port.ready.eq(port.en & ~Cat(*conflicts).any())
                else:
                    m.d.comb += port.ready.eq(port.en)

        grants(self.read)
        grants(self.write)

        bank_data = []
        for b in range(cfg.sram_banks):
            mem = Memory(shape=unsigned(cfg.word_bits), depth=cfg.bank_words, init=[])
            m.submodules[f"bank{b}"] = mem
            # Not transparent: a read in the cycle of a write to the same word returns the old
            # word, so no bypass path runs from write data to read data.
            rd = mem.read_port(transparent_for=())
            wr = mem.write_port(granularity=8)
            bank_data.append(rd.data)

            # The bank serves its lowest-indexed requester. Later comb assignments take
            # precedence, so assigning in reverse port order leaves the winner's request.
            # (The read port's `en` resets to 1, so it is always driven explicitly; the write
            # port's byte enables default to 0 when nobody writes this bank.)
            read_requests = [port.en & (bank(port) == b) for port in self.read]
            m.d.comb += rd.en.eq(Cat(*read_requests).any())
            for port, request in reversed(list(zip(self.read, read_requests))):
                with m.If(request):
                    m.d.comb += rd.addr.eq(port.addr[:low])
            for port in reversed(self.write):
                with m.If(port.en & (bank(port) == b)):
                    m.d.comb += [wr.en.eq(port.mask), wr.addr.eq(port.addr[:low]),
                                 wr.data.eq(port.data)]

        # Each read port remembers which bank served its last grant and shows that bank's output
        # in the next cycle. Bank outputs only change on a new grant of that bank, so the word is
        # stable for at least the one cycle the contract promises.
        bank_data = Array(bank_data)
        for i, port in enumerate(self.read):
            served_by = Signal(range(cfg.sram_banks), name=f"read{i}_bank")
            with m.If(port.ready):
                m.d.sync += served_by.eq(bank(port))
            m.d.comb += port.data.eq(bank_data[served_by])

        return m


SRAMReadPort.Signature._interface = SRAMReadPort
SRAMWritePort.Signature._interface = SRAMWritePort
