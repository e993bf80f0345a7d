"""Every bit format of the tile, defined once.

A `BitFormat` is an ordered list of fields, the first at bit 0. It packs and unpacks plain
Python integers (for the cycle model, the compiler and the testbenches) and produces the
equivalent `amaranth.lib.data.StructLayout` for the RTL (`BitFormat.layout`, imported lazily so
that this module does not need Amaranth).

Formats defined here:

* `flit_format(cfg)`: what travels on a mesh link.
* `packet_header_format(cfg)`: the payload of a packet's head flit.
* SRAM word <-> int32 lanes / int8 bytes conversions (`word_from_lanes`, ...).

Enumerations shared by hardware, model and compiler (`Port`, `PacketKind`) are plain
`enum.IntEnum`s; Amaranth accepts them as shapes. Element types are in `d1tile.dtypes`, the
instruction set's fields and codes in `d1tile.isa`.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from functools import cache

import numpy as np

from .params import TileConfig


__all__ = [
    "Field", "BitFormat", "FormatError",
    "Port", "PacketKind", "COUNTER_NAMES", "PERF_COUNTER_BITS", "NODE_STATUS",
    "flit_format", "packet_header_format", "SYNC_COUNTER_ID_BITS",
    "word_from_lanes", "lanes_from_word", "word_from_bytes", "bytes_from_word",
]


class FormatError(ValueError):
    """A value does not fit the field it is packed into; the message names the format and field."""


@dataclass(frozen=True)
class Field:
    name: str
    width: int
    signed: bool = False


class BitFormat:
    """An ordered set of named bit fields; the first field occupies the least significant bits."""

    def __init__(self, name: str, fields: list[Field]):
        self.name = name
        self.fields = tuple(fields)
        self.offsets: dict[str, int] = {}
        self._by_name: dict[str, Field] = {}
        offset = 0
        for field in self.fields:
            if field.name in self._by_name:
                raise ValueError(f"{name}: duplicate field {field.name!r}")
            if field.width <= 0:
                raise ValueError(f"{name}.{field.name}: width must be positive")
            self._by_name[field.name] = field
            self.offsets[field.name] = offset
            offset += field.width
        self.width = offset
        # What `pack` needs per field, worked out once: (name, offset, width, value mask,
        # lowest and highest value, signed).
        self._packing = tuple(
            (f.name, self.offsets[f.name], f.width, (1 << f.width) - 1,
             -(1 << (f.width - 1)) if f.signed else 0,
             (1 << (f.width - 1)) - 1 if f.signed else (1 << f.width) - 1, f.signed)
            for f in self.fields)
        self._names = frozenset(self._by_name)

    def __repr__(self):
        inner = ", ".join(f"{f.name}:{'s' if f.signed else 'u'}{f.width}" for f in self.fields)
        return f"BitFormat({self.name}: {inner})"

    def field(self, name: str) -> Field:
        return self._by_name[name]

    def pack(self, **values: int) -> int:
        """Pack field values (missing fields are zero) into one integer."""
        if not values.keys() <= self._names:
            unknown = set(values) - self._names
            raise FormatError(f"{self.name}: unknown field(s) {', '.join(sorted(unknown))}")
        word = 0
        get = values.get
        for name, offset, width, mask, lo, hi, signed in self._packing:
            value = int(get(name, 0))
            if not lo <= value <= hi:
                raise FormatError(
                    f"{self.name}.{name}={value} does not fit {width} "
                    f"{'signed' if signed else 'unsigned'} bits ({lo}..{hi})")
            word |= (value & mask) << offset
        return word

    def unpack(self, word: int) -> dict[str, int]:
        """Split an integer into its field values (signed fields sign-extended)."""
        word = int(word)
        if word < 0 or word >> self.width:
            raise FormatError(f"{self.name}: {word:#x} is wider than the format's {self.width} bits")
        values = {}
        for field in self.fields:
            value = (word >> self.offsets[field.name]) & ((1 << field.width) - 1)
            if field.signed and value >> (field.width - 1):
                value -= 1 << field.width
            values[field.name] = value
        return values

    def get(self, word: int, name: str) -> int:
        field = self._by_name[name]
        value = (int(word) >> self.offsets[name]) & ((1 << field.width) - 1)
        if field.signed and value >> (field.width - 1):
            value -= 1 << field.width
        return value

    @property
    def layout(self):
        """The format as an `amaranth.lib.data.StructLayout` (same fields, same bit positions)."""
        from amaranth.hdl import signed, unsigned
        from amaranth.lib import data
        return data.StructLayout({
            f.name: (signed(f.width) if f.signed else unsigned(f.width)) for f in self.fields})


# -- enumerations ------------------------------------------------------------------------------

class Port(enum.IntEnum):
    """Router ports. y grows southwards, x eastwards; the host edge is east of the last column."""
    LOCAL = 0
    NORTH = 1
    EAST = 2
    SOUTH = 3
    WEST = 4


class PacketKind(enum.IntEnum):
    """What a packet's head flit asks of its destination (see `packet_header_format`)."""
    WRITE = 0      # body words -> SRAM[addr...]; then, if `bump`, counter[`counter`] += 1
    IMEM = 1       # body words (low 64 bits each) -> instruction memory[addr...]
    START = 2      # start the sequencer at pc 0 (ignored unless it is idle or stopped)
    READ = 3       # reply with SRAM[addr .. addr+length) to (src_x, src_y)
    READ_CTRS = 4  # reply with the node's counters (COUNTER_NAMES order) to (src_x, src_y)
    DONE = 5       # node -> host, once per run: addr = pc, tag = FaultCode, length = fault value
    REPLY = 6      # answer to READ / READ_CTRS: body = the words; addr and tag echo the request
    TEST = 15      # opaque payload, used by router testbenches


COUNTER_NAMES = (
    # cycles the sequencer spent running (from START to its DONE), instructions issued
    "cycles", "instructions",
    # cycles each unit was busy
    "busy_matrix", "busy_vector", "busy_dma_out", "busy_dma_in",
    # cycles the instruction at pc could not issue, by cause
    "stall_unit", "stall_hazard", "stall_wait", "stall_halt",
    # flits through each router port, in `Port` order
    "flits_in_local", "flits_in_north", "flits_in_east", "flits_in_south", "flits_in_west",
    "flits_out_local", "flits_out_north", "flits_out_east", "flits_out_south", "flits_out_west",
    # SRAM requests refused by bank arbitration (all ports)
    "sram_conflicts",
)
"""The node's performance counters, 32 bits each, in the order READ_CTRS returns them (lane i of
reply word i // lanes is counter i)."""

PERF_COUNTER_BITS = 32
"""Width of each performance counter (the sync counters are `d1tile.isa.SYNC_COUNTER_BITS`)."""


NODE_STATUS = BitFormat("node_status", [
    Field("state", 2),          # the sequencer's SeqState
    Field("pc", 16),
    Field("event", 3),          # the sequencer's SeqEvent of this cycle (what the pc waits for)
    Field("fault", 4),          # FaultCode raised so far (0: none)
    Field("busy_matrix", 1),
    Field("busy_vector", 1),
    Field("busy_dma_out", 1),
    Field("busy_dma_in", 1),
    Field("out_blocked", 1),    # DMA-out offers a flit that the router does not take
    Field("in_blocked", 1),     # the router offers a flit that DMA-in does not take
])
"""A node's state for hang reports, read the same way from the RTL (a debug port) and from the
cycle model, and turned into words by `d1tile.sim.tile.describe_node`."""


# -- mesh formats ------------------------------------------------------------------------------

class Multicast(enum.IntEnum):
    """A flit's `mc` field: how far a packet goes (`d1tile.sim.router.route_mask`)."""
    NONE = 0       # unicast to (dst_x, dst_y)
    ROW = 1        # along the row it travels in, every node from dst_x to last
    COLUMN = 2     # X to column dst_x, then along it, every node from dst_y to last


@cache
def flit_format(cfg: TileConfig) -> BitFormat:
    """A flit: routing fields on every flit (so any flit can be checked in flight), then one SRAM
    word of payload. `head` marks the first flit of a packet, `tail` the last; a one-flit packet
    has both. `mc` (`Multicast`) and `last` make a packet a multicast to a run of nodes: the
    first is (dst_x, dst_y), `last` the x (ROW) or y (COLUMN) of the last."""
    return BitFormat("flit", [
        Field("head", 1),
        Field("tail", 1),
        Field("dst_x", cfg.coord_bits),
        Field("dst_y", cfg.coord_bits),
        Field("mc", 2),
        Field("last", cfg.coord_bits),
        Field("payload", cfg.word_bits),
    ])


SYNC_COUNTER_ID_BITS = 5
"""Width of a sync counter's index, in packet headers and in SEND and WAIT (so a node has
2**5 = 32 counters: `d1tile.isa.SYNC_COUNTERS`). 32 lets the GEMM kernels, which WAIT on one
counter per sender (rows + cols of them), run on every grid with rows + cols <= 31 (every grid
up to 15x15; the tile itself goes to 32x32, `d1tile.params.COORD_BITS`); 6 bits would make the
header of a mac_dim = 2 tile (64-bit words) too wide for grids of more than 3 columns."""


@cache
def packet_header_format(cfg: TileConfig) -> BitFormat:
    """The payload of a packet's head flit. `length` counts the body flits that follow."""
    return BitFormat("packet_header", [
        Field("kind", 4),
        Field("src_x", cfg.coord_bits),
        Field("src_y", cfg.coord_bits),
        Field("addr", 16),
        Field("length", 16),
        Field("counter", SYNC_COUNTER_ID_BITS),
        Field("bump", 1),
        Field("tag", 16),
    ])


# -- SRAM words --------------------------------------------------------------------------------
# A word is little-endian: lane i is bytes [4i, 4i+4) as a signed int32; int8 element j is byte j.

def word_from_lanes(lanes) -> int:
    """Pack int32 lanes (any integers; wrapped to 32 bits) into a word."""
    word = 0
    for i, lane in enumerate(lanes):
        word |= (int(lane) & 0xFFFF_FFFF) << (32 * i)
    return word


def lanes_from_word(word: int, lanes: int) -> np.ndarray:
    """Unpack a word into `lanes` signed int32 values."""
    raw = int(word).to_bytes(4 * lanes, "little")
    return np.frombuffer(raw, dtype="<i4").astype(np.int32)


def word_from_bytes(values) -> int:
    """Pack int8 (or uint8) values into a word, element j at byte j."""
    arr = np.asarray(values, dtype=np.int64) & 0xFF
    return int.from_bytes(arr.astype(np.uint8).tobytes(), "little")


def bytes_from_word(word: int, nbytes: int) -> np.ndarray:
    """Unpack a word into `nbytes` signed int8 values."""
    return np.frombuffer(int(word).to_bytes(nbytes, "little"), dtype=np.int8).copy()
