"""The contracts the RTL (`d1tile.hw`) and the cycle model (`d1tile.sim`) both obey, stated once
below both: the node's SRAM port assignment, the engines' modes and states, pipeline depths and
latencies, queue sizes and the mesh's port geometry.

The timing rules built on these constants are written out where they are implemented, in the
models' docstrings (`d1tile.sim.mxu`, `d1tile.sim.vpu`, `d1tile.sim.dma`, ...) and in
docs/architecture.md; this module holds the numbers and enumerations both levels must share,
so that neither imports the other's internals.

This module imports no Amaranth.
"""

from __future__ import annotations

import enum
from functools import cache

from .formats import COUNTER_NAMES, BitFormat, Field, Port
from .isa import INSTR_BITS, Opcode, Unit, encode
from .params import TileConfig


__all__ = [
    "READ_PORTS", "WRITE_PORTS",
    "SeqState", "SeqEvent", "ENGINES", "HALT_WORD",
    "MATMUL_FIRST_BEAT", "READOUT_LATENCY",
    "OPERAND_BUFFER",
    "PREFETCH_DEPTH", "BAD_READ_TAG", "IMEM_DATA_BITS", "reply_request_format", "counter_words",
    "PORTS", "OPPOSITE", "STEP", "RR_RESET", "check_node",
]


# -- the node ------------------------------------------------------------------------------------

READ_PORTS = 4
"""SRAM read ports of a node; index = priority on a bank conflict: 0 DMA-out, 1 matrix engine,
2 and 3 vector engine (operands a and b)."""
WRITE_PORTS = 3
"""SRAM write ports: 0 DMA-in, 1 matrix engine (its readout half: MREAD), 2 vector engine."""


# -- the sequencer -------------------------------------------------------------------------------

class SeqState(enum.IntEnum):
    IDLE = 0      # after reset, before the first START
    RUN = 1       # fetching and issuing
    HALTING = 2   # HALT issued or fault raised: waiting for every engine to be idle
    STOPPED = 3   # DONE handed to DMA-out; a START runs the program again from pc 0


class SeqEvent(enum.IntEnum):
    NONE = 0          # IDLE, STOPPED, or HALTING while an engine is busy
    ISSUE = 1
    STALL_UNIT = 2
    STALL_HAZARD = 3
    STALL_WAIT = 4
    STALL_HALT = 5
    FAULT = 6
    DONE = 7          # HALTING with every engine idle: DMA started with the DONE command


ENGINES = (Unit.MATRIX, Unit.VECTOR, Unit.DMA, Unit.READOUT)
"""The engines in the order of every per-engine list (`units_idle`, start vectors, ranges).
MATRIX (MATMUL) and READOUT (MREAD) are the two halves of the matrix engine."""

HALT_WORD = encode(Opcode.HALT)
"""The `instr` of the DONE command to DMA-out (the canonical HALT word, whatever the word at the
HALT's address holds in its unused bits, and also after a fault)."""


# -- the matrix engine ---------------------------------------------------------------------------

MATMUL_FIRST_BEAT = 4
"""Cycles from the start cycle s of a MATMUL to its first beat when no read is refused: read A0
in s+1, read B0 in s+2 (A0 arrives), B0 arrives in s+3, beat in s+4."""

READOUT_LATENCY = 1
"""Cycles from a matrix unit readout request's acceptance to its row being valid on `rd_data`.
(The beat-to-accumulator latency is the type's `pipeline_depth`, `d1tile.dtypes`.)"""


# -- the vector engine ---------------------------------------------------------------------------

OPERAND_BUFFER = 2
"""Operand words each vector-engine read port may hold, counting a read in flight: 2 is the
least that keeps one element per cycle with a one-cycle SRAM read latency and a bypass."""


# -- DMA -----------------------------------------------------------------------------------------

PREFETCH_DEPTH = 3
"""Words DMA-out may hold in its prefetch queue plus the one in flight from the SRAM."""

BAD_READ_TAG = 0xFFFF
"""Tag of the REPLY to a READ whose range runs past the SRAM (its length is 0)."""

IMEM_DATA_BITS = INSTR_BITS
"""Bits of an IMEM body word that are written to the instruction memory (the low ones)."""


@cache
def reply_request_format(cfg: TileConfig) -> BitFormat:
    """DMA-in's hand-off of a READ / READ_CTRS request to DMA-out: `ctrs` (1: READ_CTRS), the
    requester (`src_x`, `src_y`: where the REPLY goes), and `addr`, `length`, `tag` as in the
    request's header."""
    return BitFormat("reply_request", [
        Field("ctrs", 1),
        Field("src_x", cfg.coord_bits),
        Field("src_y", cfg.coord_bits),
        Field("addr", 16),
        Field("length", 16),
        Field("tag", 16),
    ])


def counter_words(cfg: TileConfig) -> int:
    """Body words of a READ_CTRS reply: the counters, `cfg.lanes` per word."""
    return -(-len(COUNTER_NAMES) // cfg.lanes)


# -- the mesh ------------------------------------------------------------------------------------

PORTS = tuple(Port)
"""The five router ports in index order (the order the round robin walks)."""

OPPOSITE = {Port.NORTH: Port.SOUTH, Port.SOUTH: Port.NORTH,
            Port.EAST: Port.WEST, Port.WEST: Port.EAST}
"""The input port of the neighbour that an output port feeds."""

STEP = {Port.NORTH: (0, -1), Port.EAST: (1, 0), Port.SOUTH: (0, 1), Port.WEST: (-1, 0)}
"""(dx, dy) from a router to the neighbour behind an output port (x east, y south)."""

RR_RESET = Port.WEST
"""Reset value of every output's round-robin pointer: the search starts after it, so LOCAL has
the first turn after reset."""


def check_node(cfg: TileConfig, x, y) -> None:
    """Reject a node position outside the mesh (ValueError) or of the wrong type (TypeError);
    the check of every per-node component (router, DMA), RTL and model."""
    if not isinstance(cfg, TileConfig):
        raise TypeError(f"cfg must be a TileConfig, not {cfg!r}")
    for name, value, limit in (("x", x, cfg.cols), ("y", y, cfg.rows)):
        if not isinstance(value, int) or isinstance(value, bool):
            raise TypeError(f"{name} must be an integer, not {value!r}")
        if not 0 <= value < limit:
            raise ValueError(f"{name}={value} is outside the {cfg.rows}x{cfg.cols} mesh "
                             f"(0..{limit - 1})")
