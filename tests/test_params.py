"""The parameter dataclass: presets, derived sizes, validation messages, serialisation."""

import pytest

from d1tile.params import ConfigError, PRESETS, TileConfig, parse_grid


def test_presets_have_the_documented_shapes():
    tiny, default = TileConfig.preset("tiny"), TileConfig.preset("default")
    assert (tiny.rows, tiny.cols, tiny.mac_dim) == (2, 2, 4)
    assert (default.rows, default.cols, default.mac_dim, default.sram_kib) == (4, 4, 8, 64)


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_derived_sizes_are_consistent(name):
    cfg = TileConfig.preset(name)
    assert cfg.word_bytes == 4 * cfg.mac_dim == cfg.lanes * 4
    assert cfg.sram_words * cfg.word_bytes == cfg.sram_kib * 1024
    assert cfg.bank_words * cfg.sram_banks == cfg.sram_words
    assert 1 << cfg.sram_addr_bits == cfg.sram_words
    assert 1 << cfg.bank_addr_bits == cfg.bank_words
    assert cfg.word_bits == 32 * cfg.lanes
    assert cfg.peak_macs_per_cycle == cfg.nodes * cfg.mac_dim ** 2
    # the host edge column x == cols must be representable
    assert cfg.cols < 1 << cfg.coord_bits and cfg.rows - 1 < 1 << cfg.coord_bits


def test_config_is_frozen_and_hashable():
    cfg = TileConfig.preset("tiny")
    with pytest.raises(Exception):
        cfg.rows = 3
    assert hash(cfg) == hash(TileConfig.preset("tiny"))


@pytest.mark.parametrize("field, value, words", [
    ("rows", 0, "rows=0"),
    ("cols", 33, "cols=33"),
    ("mac_dim", 3, "mac_dim=3"),
    ("sram_kib", 48, "sram_kib=48"),
    ("sram_banks", 3, "sram_banks=3"),
    ("router_fifo_depth", 1, "router_fifo_depth=1"),
    ("imem_words", 100, "imem_words=100"),
    ("rows", "4", "rows must be an integer"),
])
def test_bad_values_are_rejected_with_the_field_named(field, value, words):
    with pytest.raises(ConfigError, match=words):
        TileConfig.preset("default", **{field: value})


def test_grids_up_to_32x32_are_accepted_and_33_refused_in_one_line():
    from d1tile.params import COORD_BITS
    assert TileConfig.MAX_GRID == 1 << COORD_BITS == 32
    big = TileConfig.preset("default").with_grid(32, 32)
    assert (big.rows, big.cols, big.coord_bits) == (32, 32, 6)     # x == 32 is the host edge
    assert TileConfig.preset("default").with_grid(18, 20).nodes == 360
    for rows, cols, field in ((33, 32, "rows"), (32, 33, "cols")):
        with pytest.raises(ConfigError) as info:
            TileConfig.preset("default").with_grid(rows, cols)
        message = str(info.value)
        assert "\n" not in message
        assert message == (f"{field}=33 is outside the supported range 1..32 "
                           "(instructions name nodes with 5-bit coordinates)")


def test_sram_beyond_the_instruction_address_space_is_rejected():
    with pytest.raises(ConfigError, match="instructions address at most 65536 words"):
        TileConfig.preset("default", mac_dim=2, sram_kib=1024)


def test_grids_whose_header_does_not_fit_a_word_are_rejected():
    with pytest.raises(ConfigError, match="packet header .66 bits for a 2x8 grid. does not fit"):
        TileConfig(rows=2, cols=8, mac_dim=2, sram_kib=4)
    TileConfig(rows=8, cols=7, mac_dim=2, sram_kib=4)     # 3-bit coordinates still fit


def test_unknown_preset_and_field():
    with pytest.raises(ConfigError, match="unknown preset 'huge'"):
        TileConfig.preset("huge")
    with pytest.raises(ConfigError, match="unknown config field"):
        TileConfig.preset("tiny", lanes=4)


def test_json_round_trip_and_errors():
    cfg = TileConfig.preset("default").with_grid(3, 5)
    assert TileConfig.from_json(cfg.to_json()) == cfg
    with pytest.raises(ConfigError, match="not valid JSON"):
        TileConfig.from_json("{rows: 1")
    with pytest.raises(ConfigError, match="unknown config field"):
        TileConfig.from_json('{"bogus": 1}')


def test_parse_grid():
    assert parse_grid("4x4") == (4, 4)
    assert parse_grid("2X3") == (2, 3)
    for bad in ("4", "4x", "ax2", "2x2x2", "-1x2"):
        with pytest.raises(ConfigError, match="RxC"):
            parse_grid(bad)


def test_cache_key_names_every_field():
    a = TileConfig.preset("default")
    keys = {a.key}
    for change in ({"rows": 2}, {"mac_dim": 4}, {"sram_kib": 32}, {"sram_banks": 2},
                   {"router_fifo_depth": 2}, {"imem_words": 512}):
        keys.add(a.replace(**change).key)
    assert len(keys) == 7
