"""Bit formats: pack/unpack round trips, range errors, and agreement with the Amaranth layouts."""

import random

import numpy as np
import pytest

from d1tile.formats import (BitFormat, Field, FormatError, bytes_from_word, flit_format,
                            lanes_from_word, packet_header_format, word_from_bytes,
                            word_from_lanes)
from d1tile.params import TileConfig


@pytest.mark.parametrize("preset", ["tiny", "default"])
def test_flit_round_trip(preset):
    cfg = TileConfig.preset(preset)
    fmt = flit_format(cfg)
    rng = random.Random(1)
    for _ in range(200):
        values = {f.name: rng.getrandbits(f.width) for f in fmt.fields}
        word = fmt.pack(**values)
        assert fmt.unpack(word) == values
        assert word < 1 << fmt.width
    # head, tail, dst_x, dst_y, mc (2), last, payload
    assert fmt.width == 2 + 2 * cfg.coord_bits + 2 + cfg.coord_bits + cfg.word_bits


def test_header_fits_in_one_payload():
    for preset in ("tiny", "default"):
        cfg = TileConfig.preset(preset)
        assert packet_header_format(cfg).width <= cfg.word_bits


def test_signed_fields_and_range_errors():
    fmt = BitFormat("t", [Field("a", 4, signed=True), Field("b", 3)])
    assert fmt.unpack(fmt.pack(a=-8, b=7)) == {"a": -8, "b": 7}
    assert fmt.get(fmt.pack(a=-1, b=2), "a") == -1
    with pytest.raises(FormatError, match=r"t\.a=8 does not fit 4 signed bits"):
        fmt.pack(a=8)
    with pytest.raises(FormatError, match=r"t\.b=-1"):
        fmt.pack(b=-1)
    with pytest.raises(FormatError, match="unknown field"):
        fmt.pack(c=1)
    with pytest.raises(FormatError, match="wider"):
        fmt.unpack(1 << 7)


def test_amaranth_layout_matches_bit_positions():
    from amaranth.hdl import Const
    cfg = TileConfig.preset("tiny")
    fmt = flit_format(cfg)
    layout = fmt.layout
    assert layout.size == fmt.width
    for field in fmt.fields:
        assert layout[field.name].offset == fmt.offsets[field.name]
        assert layout[field.name].shape.width == field.width
    # Amaranth's constant for the same field values has the same bits as BitFormat.pack
    values = dict(head=1, tail=0, dst_x=2, dst_y=1, payload=0xABCDEF)
    assert Const.cast(layout.const(values)).value == fmt.pack(**values)


def test_word_conversions():
    rng = np.random.default_rng(3)
    lanes = rng.integers(-2**31, 2**31, size=8, dtype=np.int64)
    word = word_from_lanes(lanes)
    assert np.array_equal(lanes_from_word(word, 8), lanes.astype(np.int32))
    # lane 0 is the least significant 32 bits
    assert word & 0xFFFF_FFFF == int(lanes[0]) & 0xFFFF_FFFF
    data = rng.integers(-128, 128, size=32)
    word = word_from_bytes(data)
    assert np.array_equal(bytes_from_word(word, 32), data.astype(np.int8))
    assert word & 0xFF == int(data[0]) & 0xFF
