"""Cycle-exact reference of the node SRAM (`d1tile.hw.sram.NodeSRAM`), in plain Python.

The node's only data memory is `cfg.sram_words` words of `cfg.word_bits` bits, split into
`cfg.sram_banks` banks by the HIGH address bits (`bank_of`), so that tensors placed in different
banks never conflict. Every cycle, each bank serves at most one read and, independently, at most
one write; among the ports that ask for the same bank, the lowest port index wins. A losing
port is not queued: it sees `ready` low and retries in a later cycle.

`SRAMModel.step` is one clock cycle. It is what the RTL does, cycle for cycle:

* grants: read port `i` is granted when it asks (`reads[i]` is an address) and no lower-indexed
  read port asks for the same bank; the same rule, separately, for writes. The grant is the
  RTL's `ready`, a combinational function of this cycle's requests only (no state, no fairness:
  a lower-indexed port that keeps asking starves the others on that bank).
* reads see the memory as it was before this cycle's writes (the RTL's read ports are not
  transparent), and their data is what the RTL shows on `read[i].data` in the NEXT cycle
  (latency 1): `read_data[i]` after `step`.
* granted writes update the bytes whose mask bit is set (byte `k` is bits `8k..8k+7`) at the end
  of the cycle; a read granted in a later cycle sees them.

The memory starts all zero, like the RTL's initial contents (which reset does not touch).

This module imports no Amaranth: the cycle model of the whole node uses it.
"""

from __future__ import annotations

import operator

from ..params import TileConfig


__all__ = ["bank_of", "SRAMModel"]


def bank_of(cfg: TileConfig, addr: int) -> int:
    """The bank that holds word `addr`: its high address bits, `addr >> cfg.bank_addr_bits`."""
    addr = operator.index(addr)
    if not 0 <= addr < cfg.sram_words:
        raise ValueError(f"SRAM address {addr} is outside 0..{cfg.sram_words - 1} ({cfg.name})")
    return addr >> cfg.bank_addr_bits


def _byte_mask_table() -> tuple[int, ...]:
    """For each 8-bit byte-enable pattern, the 64-bit mask of the bits it enables."""
    return tuple(sum(0xFF << (8 * k) for k in range(8) if m >> k & 1) for m in range(256))


_BYTES_TO_BITS = _byte_mask_table()


class SRAMModel:
    """The banked node SRAM with `read_ports` read and `write_ports` write ports.

    Parameters
    ----------
    cfg : the tile configuration (word size, SRAM size, bank count).
    read_ports, write_ports : number of ports of each kind, 1 or more; port 0 has the highest
        priority.

    Attributes
    ----------
    read_data : after `step`, `read_data[i]` is the word a granted read of port `i` returns (what
        the RTL shows on `read[i].data` in the next cycle), or None when port `i` was not granted.
    read_grants, read_stalls, write_grants, write_stalls : per-port counts of granted requests
        and of cycles a request was refused because of a bank conflict.
    cycle : number of `step` calls so far.
    """

    def __init__(self, cfg: TileConfig, read_ports: int, write_ports: int):
        if not isinstance(cfg, TileConfig):
            raise TypeError(f"cfg must be a TileConfig, not {cfg!r}")
        for name, value in (("read_ports", read_ports), ("write_ports", write_ports)):
            if not isinstance(value, int) or isinstance(value, bool):
                raise TypeError(f"{name} must be an integer, not {value!r}")
            if value < 1:
                raise ValueError(f"{name} must be at least 1, not {value}")
        self._cfg = cfg
        self._read_ports = read_ports
        self._write_ports = write_ports
        self._words = cfg.sram_words
        self._bank_shift = cfg.bank_addr_bits
        self._word_mask = (1 << cfg.word_bits) - 1
        self._full_mask = (1 << cfg.word_bytes) - 1
        self._mem = [0] * cfg.sram_words
        self.read_data: list[int | None] = [None] * read_ports
        self.read_grants = [0] * read_ports
        self.read_stalls = [0] * read_ports
        self.write_grants = [0] * write_ports
        self.write_stalls = [0] * write_ports
        self.cycle = 0

    @property
    def cfg(self) -> TileConfig:
        return self._cfg

    @property
    def read_ports(self) -> int:
        return self._read_ports

    @property
    def write_ports(self) -> int:
        return self._write_ports

    def bank_of(self, addr: int) -> int:
        return bank_of(self._cfg, addr)

    # -- one cycle ---------------------------------------------------------------------------

    def _check_addr(self, kind: str, port: int | None, addr) -> int:
        if addr.__class__ is not int:
            try:
                addr = operator.index(addr)
            except TypeError:
                where = kind if port is None else f"{kind} port {port}"
                raise TypeError(f"{where}: address must be an integer, not {addr!r}") from None
        if not 0 <= addr < self._words:
            where = kind if port is None else f"{kind} port {port}"
            raise ValueError(f"{where}: address {addr} is outside 0..{self._words - 1}")
        return addr

    def arbitrate(self, addrs) -> list[bool]:
        """Grants for one kind of port: `addrs[i]` is port i's address or None (idle). A port is
        granted when it asks and no lower-indexed port asks for the same bank."""
        shift = self._bank_shift
        taken = 0  # bit b set: bank b already granted to a lower-indexed port
        grants = []
        for addr in addrs:
            if addr is None:
                grants.append(False)
                continue
            bit = 1 << (addr >> shift)
            if taken & bit:
                grants.append(False)
            else:
                taken |= bit
                grants.append(True)
        return grants

    def step(self, reads, writes, *, check: bool = True) -> tuple[list[bool], list[bool]]:
        """Advance one cycle.

        `reads[i]` is read port i's address or None; `writes[j]` is `(addr, data, mask)` or None,
        with `data` a `cfg.word_bits`-bit unsigned integer and `mask` a `cfg.word_bytes`-bit byte
        enable. Returns `(read_grants, write_grants)`, lists of bools (the RTL's `ready` of each
        requesting port). Afterwards `read_data` holds the granted reads' words. Raises
        ValueError/TypeError (naming the port and value) for a wrong number of ports, an address
        outside the SRAM, or data/mask wider than their fields; `check=False` skips those checks
        (for a caller whose requests are valid by construction, like the node's engines).
        """
        if check:
            self._check_step(reads, writes)
        shift = self._bank_shift
        mem = self._mem
        read_data = self.read_data
        # Reads first: they see the words as they were before this cycle's writes.
        taken = 0  # bit b set: bank b already granted to a lower-indexed port
        read_grants = []
        for i, addr in enumerate(reads):
            if addr is None:
                read_grants.append(False)
                read_data[i] = None
                continue
            bit = 1 << (addr >> shift)
            if taken & bit:
                read_grants.append(False)
                read_data[i] = None
                self.read_stalls[i] += 1
            else:
                taken |= bit
                read_grants.append(True)
                read_data[i] = mem[addr]
                self.read_grants[i] += 1
        # Granted writes are to different banks, hence different words: their order is moot.
        taken = 0
        write_grants = []
        for j, request in enumerate(writes):
            if request is None:
                write_grants.append(False)
                continue
            addr, data, mask = request
            bit = 1 << (addr >> shift)
            if taken & bit:
                write_grants.append(False)
                self.write_stalls[j] += 1
            else:
                taken |= bit
                write_grants.append(True)
                mem[addr] = data if mask == self._full_mask else self._merge(mem[addr], data, mask)
                self.write_grants[j] += 1
        self.cycle += 1
        return read_grants, write_grants

    def _check_step(self, reads, writes) -> None:
        if len(reads) != self._read_ports or len(writes) != self._write_ports:
            raise ValueError(f"step needs {self._read_ports} reads and {self._write_ports} writes, "
                             f"got {len(reads)} and {len(writes)}")
        for i, a in enumerate(reads):
            if a is not None:
                self._check_addr("read", i, a)
        for j, request in enumerate(writes):
            if request is None:
                continue
            addr, data, mask = request
            self._check_addr("write", j, addr)
            if not 0 <= data <= self._word_mask:
                raise ValueError(f"write port {j}: data {data:#x} does not fit "
                                 f"{self._cfg.word_bits} unsigned bits")
            if not 0 <= mask <= self._full_mask:
                raise ValueError(f"write port {j}: mask {mask:#x} does not fit "
                                 f"{self._cfg.word_bytes} byte enables")

    def idle_cycles(self, n: int) -> None:
        """`n` cycles without a request (what `step` with every port idle does, n times)."""
        if n:
            for i in range(self._read_ports):
                self.read_data[i] = None
            self.cycle += n

    @property
    def memory(self) -> list:
        """The words themselves (not a copy), for a caller that reads many in one go while no
        port writes (`MatrixEngineModel.run_alone`)."""
        return self._mem

    def _merge(self, old: int, data: int, mask: int) -> int:
        if mask == self._full_mask:
            return data
        bits = 0
        shift = 0
        while mask:
            bits |= _BYTES_TO_BITS[mask & 0xFF] << shift
            mask >>= 8
            shift += 64
        return (old & ~bits) | (data & bits)

    # -- direct access (loading programs and data, reading results) --------------------------

    def load(self, addr: int, words) -> None:
        """Write `words` (unsigned `word_bits`-bit integers) at `addr`, `addr + 1`, ... without
        using any port or cycle."""
        addr = self._check_addr("load", None, addr)
        words = list(words)
        if addr + len(words) > self._words:
            raise ValueError(f"loading {len(words)} words at {addr} runs past the end of the SRAM "
                             f"({self._words} words)")
        for k, word in enumerate(words):
            word = operator.index(word)
            if not 0 <= word <= self._word_mask:
                raise ValueError(f"word {k} of the load ({word:#x}) does not fit "
                                 f"{self._cfg.word_bits} unsigned bits")
            self._mem[addr + k] = word

    def word(self, addr: int) -> int:
        """The word at `addr` now."""
        return self._mem[self._check_addr("word", None, addr)]

    def dump(self) -> list[int]:
        """A copy of the whole memory, address 0 first."""
        return list(self._mem)
