"""The GEMM kernels (`d1tile.sw.kernels`): programs built by `KernelBuilder` run on the cycle model
(and a few on the Verilator tile) and must give NumPy's integer result bit for bit, with no
fault, hang or misroute, and the same read-back as the functional interpreter (which also
proves the programs deadlock-free for the timing the interpreter picks).

Shapes cover multiples of N and of the grid, shapes that are neither, idle grid rows and
columns (fewer blocks than rows/columns), K that is not a multiple of 4, both forms of a host
input, concatenated inputs, two chained quantised layers, and the compile errors (SRAM and
instruction memory overflow, bad arguments). The bf16 GEMM (BF16 operands, FP32 results) must
give `reference_gemm_bf16` (the FP32 sums added k after k) bit for bit, including K that is not a
multiple of the two BF16 vectors per word, NaN, Inf and signed zeros in the inputs."""

import numpy as np
import pytest

from conftest import bench_seed
from d1tile import numerics
from d1tile.dtypes import ElemType
from d1tile.params import TileConfig
from d1tile import isa
from d1tile.isa import Opcode
from d1tile.sim.interp import interpret
from d1tile.sw.reroll import unroll
from d1tile.sim.sram import bank_of
from d1tile.sim.tile import TileModel
from d1tile.sw.errors import CompileError
from d1tile.sw.kernels import (KernelBuilder, load_activation, pack_activation, reference_gemm,
                               reference_gemm_bf16, reference_layer, reference_layer_bf16,
                               split_even, unpack_activation, unpack_gemm)
from d1tile.sw.verify import differences

TINY = TileConfig.preset("tiny")          # 2x2 nodes, N = 4, 256 words of 16 B
DEFAULT = TileConfig.preset("default")    # 4x4 nodes, N = 8, 2048 words of 32 B


def rng(*salt):
    return np.random.default_rng([bench_seed(), *salt])


def int8(r, *shape):
    return r.integers(-128, 128, size=shape)


def gemm_program(cfg, batch, k, f, r, form="auto", out="auto"):
    x, w = int8(r, batch, k), int8(r, k, f)
    kb = KernelBuilder(cfg)
    layout = kb.input("x", batch, k, form=form)
    out = kb.gemm("gemm", layout, w, out=out)
    kb.read(out)
    tp = kb.finish()
    load_activation(tp, layout, x)
    return tp, out, reference_gemm(x, w)


def bf16_gemm_program(cfg, batch, k, f, r, form="auto", specials=False, out="auto"):
    x = r.standard_normal((batch, k)).astype(np.float32)
    w = r.standard_normal((k, f)).astype(np.float32)
    if specials:        # signed zeros, infinities and NaNs, and values that flush
        for a in (x, w):
            flat = a.reshape(-1)
            picks = r.choice(flat.size, size=max(1, flat.size // 8), replace=False)
            flat[picks] = r.choice([0.0, -0.0, np.inf, -np.inf, np.nan, 1e-39, 3e38],
                                   size=picks.size)
    kb = KernelBuilder(cfg)
    layout = kb.input("x", batch, k, form=form, dtype=ElemType.BF16)
    out = kb.gemm("gemm", layout, w, out=out)
    kb.read(out)
    tp = kb.finish()
    load_activation(tp, layout, x)
    return tp, out, reference_gemm_bf16(cfg, x, w)


def same_bits(a, b) -> bool:
    return np.array_equal(np.asarray(a, np.float32).view(np.uint32),
                          np.asarray(b, np.float32).view(np.uint32))


def check_run(tp, result):
    assert not result.faults, result.faults
    assert result.hang is None, result.hang
    assert not result.misroute
    functional = interpret(tp)
    assert functional.deadlock is None, functional.deadlock
    assert result.reads == functional.reads
    assert result.streams == functional.streams


GEMM_SHAPES = [
    (8, 16, 8),     # one block per node each way: multiples of N and of the grid
    (16, 32, 16),   # two blocks per node each way
    (5, 7, 3),      # nothing a multiple: one batch block, one feature block, K % 4 = 3
    (13, 30, 11),   # not multiples of N nor of the grid
    (1, 1, 1),
    (20, 5, 30),    # uneven split: 5 batch blocks and 8 feature blocks over 2 columns / rows
]


@pytest.mark.parametrize("form", ["blocks", "chunks"])
@pytest.mark.parametrize("shape", GEMM_SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_gemm_on_the_model(shape, form):
    tp, out, expected = gemm_program(TINY, *shape, rng(1, *shape), form=form)
    result = TileModel(TINY).run(tp)
    check_run(tp, result)
    assert np.array_equal(unpack_gemm(out, result), expected)


def bf16_chain(cfg, batch, sizes, r, relus, pool=1, specials=False):
    """bf16 layers K0 -> K1 -> ... (the first with `pool` candidates): the program, the output
    layouts and each layer's expected BF16 bits (`reference_layer_bf16` on the previous one's
    BF16 values). `specials`: an eighth of the inputs zeros, infinities, NaNs and subnormals,
    x[0, 0] a NaN whatever the seed."""
    x = r.standard_normal((batch, sizes[0])).astype(np.float32)
    if specials:
        flat = x.reshape(-1)
        picks = r.choice(flat.size, size=max(1, flat.size // 8), replace=False)
        flat[picks] = r.choice([0.0, -0.0, np.inf, -np.inf, np.nan, 1e-39], size=picks.size)
        flat[0] = np.nan
    kb = KernelBuilder(cfg)
    layout = kb.input("x", batch, sizes[0], dtype=ElemType.BF16)
    h, outputs, expected, value = layout, [], [], x
    for n, (k, f, relu) in enumerate(zip(sizes, sizes[1:], relus)):
        shape = (pool, k, f) if n == 0 and pool > 1 else (k, f)
        w = (r.standard_normal(shape) / np.sqrt(k)).astype(np.float32)
        b = r.standard_normal(f)
        h = kb.bf16_layer(f"fc{n}", h, w, b, relu=relu)
        outputs.append(h)
        bits = reference_layer_bf16(cfg, value, w, b, relu)
        expected.append(bits)
        value = numerics.bf16_value(bits).astype(np.float32)
    for h in outputs:
        kb.read(h)
    tp = kb.finish()
    load_activation(tp, layout, x)
    return tp, outputs, expected


@pytest.mark.parametrize("cfg, batch, sizes, relus, pool", [
    (TINY, 8, (16, 8), (True,), 1), (TINY, 13, (30, 11), (False,), 1),
    (TINY, 9, (20, 12), (True,), 3), (TINY, 11, (10, 13, 6), (True, False), 1),
    (TINY, 3, (20, 4, 9), (False, True), 2), (DEFAULT, 13, (30, 11), (False,), 1),
    (DEFAULT, 11, (10, 13, 6), (True, False), 1), (DEFAULT, 3, (20, 4, 9), (False, True), 2)],
    ids=lambda v: v.name if isinstance(v, TileConfig) else None)
def test_bf16_layers_on_the_model(cfg, batch, sizes, relus, pool):
    """bf16 layers (chained, max-pooled, with and without relu; NaN, Inf, signed zeros and
    subnormals in the input): every layer's BF16 output bit for bit as
    `reference_layer_bf16`, the run the interpreter's."""
    tp, outputs, expected = bf16_chain(cfg, batch, sizes, rng(40, batch, *sizes), relus, pool,
                                       specials=True)
    result = TileModel(cfg).run(tp)
    check_run(tp, result)
    for h, want in zip(outputs, expected):
        got = unpack_activation(h, result)
        assert got.dtype == np.uint16 and np.array_equal(got, want), h.name


def test_bf16_padding_rows_are_zero():
    """A bf16 layer with F = 4 of N = 8 rows per block and NaN in its input: the padding rows
    of its output (features 4..7, which the next layer multiplies by zero weights, and 0 x NaN
    is NaN) are +0 on the tile (FVEC FMASK), so the next layer is right."""
    from d1tile.dtypes import MATRIX_TYPES
    tp, outputs, expected = bf16_chain(DEFAULT, 3, (20, 4, 9), rng(42), (False, True),
                                       specials=True)
    result = TileModel(DEFAULT).run(tp)
    check_run(tp, result)
    h = outputs[0]
    spec = MATRIX_TYPES[ElemType.BF16]
    for node, segs in h.segments.items():
        words = result.reads[(node, *h.region(*node))]
        vectors = np.concatenate([spec.operand_vectors(DEFAULT, w) for w in words])   # features
        assert np.all(vectors[4:8] == 0), node
        # sample 0 is NaN in every real feature (x[0, 0] is NaN), which is what the padding
        # rows would be without the mask
        assert np.all(np.isnan(numerics.bf16_value(vectors[:4, 0]))), node
    assert np.array_equal(unpack_activation(outputs[1], result), expected[1])


def test_bf16_layer_reference_is_near_float64():
    """The bf16 reference against float64 arithmetic on the same BF16-rounded operands:
    relu(x w + b) within the error of FP32 sums and one BF16 rounding (2**-8 relative, and
    the FP32 sum's K 2**-24 of sum |x w|)."""
    r = rng(41)
    x = r.standard_normal((16, 40)).astype(np.float32)
    w = r.standard_normal((40, 12)).astype(np.float32)
    b = r.standard_normal(12)
    got = numerics.bf16_value(reference_layer_bf16(TINY, x, w, b, relu=True))
    xb = numerics.bf16_value(numerics.bf16_bits(x))
    wb = numerics.bf16_value(numerics.bf16_bits(w))
    exact = np.maximum(xb @ wb + b.astype(np.float32), 0)
    bound = 2.0 ** -8 * np.abs(exact) + 40 * 2.0 ** -24 * (np.abs(xb) @ np.abs(wb) + np.abs(b))
    assert np.all(np.abs(got - exact) <= bound)
    assert np.any(got != exact)          # the rounding is there to be seen


def test_bf16_layer_errors():
    kb = KernelBuilder(TINY)
    x8 = kb.input("x8", 4, 8)
    with pytest.raises(CompileError, match="layer 'fc': bf16 layers take bf16 inputs"):
        kb.bf16_layer("fc", x8, np.ones((8, 4), np.float32), np.zeros(4))
    xb = kb.input("xb", 4, 8, dtype=ElemType.BF16)
    with pytest.raises(CompileError, match="quantised layers take int8 inputs"):
        kb.quantised_layer("q", xb, np.ones((8, 4), np.int8), np.zeros(4, np.int32), 1, 1)
    with pytest.raises(CompileError, match="bias must be a real vector of 4 values"):
        kb.bf16_layer("fc2", xb, np.ones((8, 4), np.float32), np.zeros(3))


STREAM_SHAPES = [
    (8, 16, 8),     # one tile per node: a ring of one tile, one SEND
    (20, 5, 30),    # 3 x 4 tiles on node (0, 0): fewer than two groups of STREAM_TILES
    (40, 12, 72),   # 5 x 9 = 45 tiles per node, one per SEND: the ring of 2 wraps
    (44, 4, 60),    # 48 .. 35 tiles of kw = 1, 8 per SEND: the ring of 16 wraps, short groups
]


def test_stream_group_follows_the_link_load():
    """One tile per SEND while a row's results (N + 1 flits per tile) take at most 0.9 of the
    compute time on its host link, else 8: (40, 12, 72) on the tiny tile, row 0's
    (45 + 45) tiles x 5 flits = 450 against 45 tiles x 15 cycles (kw = 3) = 675; (44, 4, 60),
    (48 + 40) x 5 = 440 against 48 x 7 (kw = 1) = 336."""
    from d1tile.sim.mxu import matmul_cycles
    assert (matmul_cycles(TINY, 3, ElemType.INT8), matmul_cycles(TINY, 1, ElemType.INT8)) \
        == (15, 7)
    for (batch, k, f), group in (((40, 12, 72), 1), ((44, 4, 60), 8)):
        kb = KernelBuilder(TINY)
        kb.gemm("g", kb.input("x", batch, k), np.ones((k, f), dtype=np.int8), out="host")
        assert kb.layers[-1].stream == group, (batch, k, f)


@pytest.mark.parametrize("dtype", ["int8", "bf16"])
@pytest.mark.parametrize("shape", STREAM_SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_streamed_gemm_on_the_model(shape, dtype):
    """C streamed to the host (out="host") is the same C, bit for bit, and nothing of it is
    read back: every word arrives in the nodes' streams, N per tile."""
    make = gemm_program if dtype == "int8" else bf16_gemm_program
    kwargs = {} if dtype == "int8" else {"specials": True}
    tp, out, expected = make(TINY, *shape, rng(31, *shape), out="host", **kwargs)
    assert out.streamed is not None and not tp.reads
    result = TileModel(TINY).run(tp)
    check_run(tp, result)
    got = unpack_gemm(out, result)
    if dtype == "int8":
        assert np.array_equal(got, expected)
    else:
        assert same_bits(got, expected)
    for node, (offset, tiles) in out.streamed.items():
        assert offset == 0
        assert len(result.stream_words(node)) == len(tiles) * TINY.mac_dim
    assert set(result.streams) == set(out.streamed)


def test_gemm_streams_its_result_only_when_it_does_not_fit():
    """out="auto": a C that fits stays in SRAM; one that does not (64 x 8 x 64 on the tiny
    tile: 256 words of results per node, the whole SRAM) is streamed, and comes out right;
    out="sram" refuses it with the overflow error; two streamed GEMMs share a stream."""
    tp, out, expected = gemm_program(TINY, 16, 8, 16, rng(32))
    assert out.streamed is None
    r = rng(33)
    x, w1, w2 = int8(r, 64, 8), int8(r, 8, 64), int8(r, 8, 40)
    kb = KernelBuilder(TINY)
    layout = kb.input("x", 64, 8)
    c1 = kb.gemm("big", layout, w1)
    c2 = kb.gemm("second", layout, w2, out="host")
    kb.read(c1)
    kb.read(c2)
    tp = kb.finish()
    load_activation(tp, layout, x)
    assert c1.streamed is not None and c2.streamed is not None
    assert all(c2.streamed[node][0] == len(tiles) * TINY.mac_dim
               for node, (_, tiles) in c1.streamed.items())
    result = TileModel(TINY).run(tp)
    check_run(tp, result)
    assert np.array_equal(unpack_gemm(c1, result), reference_gemm(x, w1))
    assert np.array_equal(unpack_gemm(c2, result), reference_gemm(x, w2))
    kb = KernelBuilder(TINY)
    layout = kb.input("x", 64, 8)
    with pytest.raises(CompileError, match=r"layer 'big' needs .* results [\d.]+ KiB.* the node "
                                           r"has 4 KiB"):
        kb.gemm("big", layout, w1, out="sram")
    with pytest.raises(ValueError, match="out='disk'"):
        KernelBuilder(TINY).gemm("g", layout, w1, out="disk")


def test_a_streamed_result_that_was_not_received_is_an_error():
    tp, out, _ = gemm_program(TINY, 8, 16, 8, rng(34), out="host")   # a tile of 4 words per node
    result = TileModel(TINY).run(tp)
    result.streams.pop((1, 1))
    with pytest.raises(ValueError, match=r"node \(1, 1\) streamed 0 words, 4 expected"):
        unpack_gemm(out, result)


def run_layer(cfg, x, w, b, scale, shift, relu):
    """One quantised layer on the model (run checked against the interpreter): its output."""
    kb = KernelBuilder(cfg)
    layout = kb.input("x", *x.shape)
    y = kb.quantised_layer("fc", layout, w, b, scale=scale, shift=shift, relu=relu)
    kb.read(y)
    tp = kb.finish()
    load_activation(tp, layout, x)
    result = TileModel(cfg).run(tp)
    check_run(tp, result)
    return unpack_activation(y, result)


@pytest.mark.parametrize("shape", GEMM_SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_bf16_gemm_on_the_model(shape):
    tp, out, expected = bf16_gemm_program(TINY, *shape, rng(21, *shape), specials=True)
    result = TileModel(TINY).run(tp)
    check_run(tp, result)
    got = unpack_gemm(out, result)
    assert got.dtype == np.float32
    assert same_bits(got, expected), f"{np.count_nonzero(got.view(np.uint32) != expected.view(np.uint32))} differ"


def test_bf16_gemm_on_the_default_tile_is_close_to_float64():
    """A 64 x 200 x 48 bf16 GEMM on the default 4x4 tile: bit-exact with its reference, and
    within the FP32 summation bound (K u sum |x w|, u = 2**-24) of the float64 product of the
    same BF16-rounded inputs."""
    r = rng(22)
    tp, out, expected = bf16_gemm_program(DEFAULT, 64, 200, 48, r)
    result = TileModel(DEFAULT).run(tp)
    check_run(tp, result)
    got = unpack_gemm(out, result)
    assert same_bits(got, expected)
    r2 = rng(22)            # the same draws as bf16_gemm_program's
    xf = numerics.bf16_value(numerics.bf16_bits(r2.standard_normal((64, 200)).astype(np.float32)))
    wf = numerics.bf16_value(numerics.bf16_bits(r2.standard_normal((200, 48)).astype(np.float32)))
    exact = xf @ wf
    bound = 200 * 2.0 ** -24 * (np.abs(xf) @ np.abs(wf))
    assert (np.abs(got.astype(np.float64) - exact) <= bound).all()


def test_bf16_operands_take_twice_the_words():
    kb = KernelBuilder(TINY)
    a = kb.input("a", 8, 40)
    b = kb.input("b", 8, 40, dtype=ElemType.BF16)
    assert (a.kwords, b.kwords) == (10, 20)
    with pytest.raises(CompileError, match="are INT8 and BF16"):
        kb.gemm("mixed", [a, b], np.zeros((80, 4), dtype=np.int8))
    with pytest.raises(CompileError, match="quantised layers take int8 inputs"):
        kb.quantised_layer("q", b, np.zeros((40, 4)), np.zeros(4, int), 1, 1)
    with pytest.raises(CompileError, match="must be numbers for bf16"):
        kb.gemm("s", b, np.array([["a"] * 4] * 40))


@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("shape", [(8, 16, 8), (5, 7, 3), (13, 30, 11), (17, 9, 12)],
                         ids=lambda s: "x".join(map(str, s)))
def test_quantised_layer_on_the_model(shape, relu):
    batch, k, f = shape
    r = rng(2, *shape)
    x, w, b = int8(r, batch, k), int8(r, k, f), r.integers(-2**20, 2**20, size=f)
    got = run_layer(TINY, x, w, b, 777, 16, relu)
    assert got.dtype == np.int8 and got.shape == (batch, f)
    assert np.array_equal(got, reference_layer(x, w, b, 777, 16, relu))


@pytest.mark.parametrize("cfg", [TINY, DEFAULT], ids=["tiny", "default"])
@pytest.mark.parametrize("shape", [(5, 12, 4, 9), (9, 20, 2, 17), (6, 8, 9, 3)],
                         ids=lambda s: "x".join(map(str, s)))
def test_pooled_layer_on_the_model(cfg, shape):
    """max over P candidate weight sets, reduced on the int32 accumulators, equals the max of
    the requantised candidates (requantize is monotonic) and the pooled reference."""
    batch, k, pool, f = shape
    r = rng(7, *shape)
    x, w, b = int8(r, batch, k), int8(r, pool, k, f), r.integers(-2**16, 2**16, size=f)
    got = run_layer(cfg, x, w, b, 555, 15, True)
    candidates = [reference_layer(x, w[p], b, 555, 15, True) for p in range(pool)]
    assert np.array_equal(got, reference_layer(x, w, b, 555, 15, True))
    assert np.array_equal(got, np.max(candidates, axis=0))


def test_sparse_weights_use_k_windows():
    """A feature block whose weights are zero outside a few K words multiplies only those:
    fewer MAC cycles, the same result."""
    batch, k, f = 8, 64, 16
    r = rng(8)
    x = int8(r, batch, k)
    w = np.zeros((k, f), dtype=np.int64)
    w[8:20, :4] = int8(r, 12, 4)          # block 0 of tiny (N = 4): words 2..4
    w[40:44, 4:8] = int8(r, 4, 4)         # block 1: word 10
    w[4:8, 12:16] = int8(r, 4, 4)         # block 3: words 1, then (a gap of 3) 6..7
    w[24:32, 12:16] = int8(r, 8, 4)
    b = r.integers(-100, 100, size=f)
    kb = KernelBuilder(TINY)
    layout = kb.input("x", batch, k)
    y = kb.quantised_layer("sparse", layout, w, b, scale=300, shift=10)
    assert kb.layers[-1].kruns[0] == [(2, 5)] and kb.layers[-1].kruns[1] == [(10, 11)]
    assert kb.layers[-1].kruns[2] == [(0, 1)]        # all zero: one word
    assert kb.layers[-1].kruns[3] == [(1, 2), (6, 8)]  # two runs: two accumulating MATMULs
    kb.read(y)
    tp = kb.finish()
    load_activation(tp, layout, x)
    result = TileModel(TINY).run(tp)
    check_run(tp, result)
    assert np.array_equal(unpack_activation(y, result), reference_layer(x, w, b, 300, 10))


def chain(cfg, batch, sizes, r, relus):
    x = int8(r, batch, sizes[0])
    kb = KernelBuilder(cfg)
    first = layout = kb.input("x", batch, sizes[0])
    act, expected, outputs = x, [], []
    for n, (k, f) in enumerate(zip(sizes, sizes[1:])):
        w, b = int8(r, k, f), r.integers(-3000, 3000, size=f)
        scale, shift = int(r.integers(1, 1 << 16)), int(r.integers(12, 24))
        layout = kb.quantised_layer(f"fc{n}", layout, w, b, scale, shift, relu=relus[n])
        kb.read(layout)
        act = reference_layer(act, w, b, scale, shift, relus[n])
        expected.append(act)
        outputs.append(layout)
    tp = kb.finish()
    load_activation(tp, first, x)
    return tp, outputs, expected


@pytest.mark.parametrize("batch, sizes", [(8, (16, 8, 8)), (11, (10, 13, 6)), (3, (20, 4, 9))],
                         ids=["multiples", "uneven", "idle-nodes"])
def test_two_chained_layers_on_the_model(batch, sizes):
    tp, outputs, expected = chain(TINY, batch, sizes, rng(3, batch, *sizes), (True, False))
    result = TileModel(TINY).run(tp)
    check_run(tp, result)
    for layout, want in zip(outputs, expected):
        assert np.array_equal(unpack_activation(layout, result), want), layout.name


def test_chained_layers_on_the_default_tile():
    """Three layers on the 4x4 default tile (N = 8), one of them too narrow for every row."""
    tp, outputs, expected = chain(DEFAULT, 37, (70, 100, 12, 40), rng(4), (True, True, False))
    result = TileModel(DEFAULT).run(tp)
    check_run(tp, result)
    for layout, want in zip(outputs, expected):
        assert np.array_equal(unpack_activation(layout, result), want), layout.name


def test_gemm_on_the_default_tile_and_other_grids():
    for cfg, shape in ((DEFAULT, (40, 72, 50)), (TINY.with_grid(3, 2), (14, 22, 26)),
                       (TINY.with_grid(1, 3), (30, 9, 7)), (TINY.with_grid(1, 1), (6, 11, 5))):
        tp, out, expected = gemm_program(cfg, *shape, rng(5, *shape))
        result = TileModel(cfg).run(tp)
        check_run(tp, result)
        assert np.array_equal(unpack_gemm(out, result), expected), cfg.key


def test_concatenated_inputs():
    """A layer over two activations, features concatenated: [a, b] @ W (what an add or a
    concat lowers to); one is a host input in block form, the other a layer output."""
    r = rng(6)
    a, c = int8(r, 9, 10), int8(r, 9, 6)
    w0, b0 = int8(r, 6, 7), r.integers(-100, 100, size=7)
    w = int8(r, 17, 5)
    kb = KernelBuilder(TINY)
    la, lc = kb.input("a", 9, 10, form="blocks"), kb.input("c", 9, 6)
    h = kb.quantised_layer("h", lc, w0, b0, 300, 10)
    out = kb.gemm("mix", [la, h], w)
    kb.read(out)
    tp = kb.finish()
    load_activation(tp, la, a)
    load_activation(tp, lc, c)
    result = TileModel(TINY).run(tp)
    check_run(tp, result)
    hq = reference_layer(c, w0, b0, 300, 10)
    assert np.array_equal(unpack_gemm(out, result), reference_gemm(np.hstack([a, hq]), w))


@pytest.mark.parametrize("form", ["blocks", "chunks"])
def test_pack_and_unpack_are_inverse(form):
    r = rng(7)
    for cfg, (batch, k) in ((TINY, (13, 30)), (DEFAULT, (70, 33))):
        x = int8(r, batch, k)
        kb = KernelBuilder(cfg)
        layout = kb.input("x", batch, k, form=form)
        pieces = pack_activation(layout, x)
        reads = {(node, addr, len(words)): words for node, (addr, words) in pieces.items()}
        assert np.array_equal(unpack_activation(layout, reads), x)
        # every word of every block is held exactly once
        held = sorted((s.block, w) for segs in layout.segments.values() for s in segs
                      for w in range(s.k0, s.k1))
        blocks = -(-batch // cfg.mac_dim)
        assert held == [(j, w) for j in range(blocks) for w in range(layout.kwords)]


def test_operand_layout_of_a_packed_word():
    """Byte s*N + i of word w of batch block j is X[jN + i, 4w + s] (the X^T operand words)."""
    x = np.arange(8 * 8).reshape(8, 8) - 32          # batch 8, 8 features
    kb = KernelBuilder(TINY)
    layout = kb.input("x", 8, 8, form="chunks")
    (addr, words), = [pieces for node, pieces in pack_activation(layout, x).items()
                      if node == (1, 0)]             # column 1: batch block 1, chunk 0: word 0
    from d1tile.formats import bytes_from_word
    got = bytes_from_word(words[0], TINY.word_bytes)
    assert [int(v) for v in got] == [int(x[4 + i, s]) for s in range(4) for i in range(4)]


def test_common_placement_finds_one_address_free_on_every_node():
    from d1tile.sw.kernels import OPERAND, STAGE, NodeSram
    a, b = NodeSram(TINY, (0, 0)), NodeSram(TINY, (1, 0))
    bank = TINY.bank_words
    a.alloc("a stage", 10, STAGE)                    # bank 0 of a holds a stage region
    b.alloc("b stage", bank + 5, STAGE)              # banks 0 and 1 of b
    addr = NodeSram.common([a, b], "w", 20, OPERAND)
    # the lowest address free on both, in a bank neither holds a stage region in
    assert addr == 2 * bank
    assert all(any(r.lo == addr and r.name == "w" for r in s.regions) for s in (a, b))
    full = NodeSram(TINY, (0, 1))
    full.alloc("all", TINY.sram_words - 4, STAGE)
    before = [list(s.regions) for s in (a, full)]
    assert NodeSram.common([a, full], "x", 8, OPERAND) is None     # nothing allocated
    assert [list(s.regions) for s in (a, full)] == before


def test_the_gather_multicasts_each_block_once():
    """Every weight block goes along its row and every activation segment down its column in
    one MCAST, to the same address on every receiver, and each node's tiles take the row's
    weight blocks and the column's batch blocks in one order."""
    r = rng(12)
    x, w = int8(r, 256, 256), int8(r, 256, 256)
    kb = KernelBuilder(DEFAULT)
    layout = kb.input("x", 256, 256)
    out = kb.gemm("gemm", layout, w)
    kb.read(out)
    tp = kb.finish()
    load_activation(tp, layout, x)
    expected = reference_gemm(x, w)
    layer = kb.layers[-1]
    assert all(len(m.receivers) == 4 for m in layer.messages)
    assert len(layer.messages) == 16 * 4          # 32 weight blocks, 32 activation blocks
    # the programs as issued (`unroll`: the loops expanded)
    words = {node: [isa.decode(w) for w in unroll(tp.words_of(node))] for node in tp.nodes}
    for node, ins in words.items():
        assert sum(i.op == Opcode.MCAST for i in ins) == 4
        assert not any(i.op == Opcode.SEND for i in ins)
    for y in range(4):
        rows = [[i for i, _, _ in layer.plans[(x, y)].tiles] for x in range(4)]
        assert all(r == rows[0] for r in rows)
    for x in range(4):
        cols = [[j for _, j, _ in layer.plans[(x, y)].tiles] for y in range(4)]
        assert all(c == cols[0] for c in cols)
    result = TileModel(DEFAULT).run(tp)
    assert np.array_equal(unpack_gemm(out, result), expected)


def test_sends_never_read_a_bank_the_matrix_unit_reads():
    """The benchmark's shape: staging (DMA-out) and operand (MATMUL) regions in separate banks,
    results in a third; the 256^3 GEMM places one class per bank."""
    kb = KernelBuilder(DEFAULT)
    layout = kb.input("x", 256, 256)
    kb.gemm("gemm", layout, np.zeros((256, 256), dtype=np.int8))
    for node, sram in kb.sram.items():
        banks = {}
        for region in sram.regions:
            for addr in (region.lo, region.hi - 1):
                banks.setdefault(region.cls, set()).add(bank_of(DEFAULT, addr))
        assert not banks["stage"] & banks["operand"], (node, sram.regions)
        assert not banks["result"] & (banks["stage"] | banks["operand"]), (node, sram.regions)
        assert sum(r.size for r in sram.regions) <= DEFAULT.sram_words


def test_vector_sources_in_different_banks():
    """Quantised layers: the accumulator rows and the bias words (VEC ADD's a and b) are in
    different banks, so the add runs at one word per cycle."""
    kb = KernelBuilder(DEFAULT)
    layout = kb.input("x", 64, 256)
    kb.quantised_layer("fc", layout, np.zeros((256, 128), dtype=np.int8),
                       np.zeros(128, dtype=np.int32), 1, 1)
    for node, sram in kb.sram.items():
        acc = [r for r in sram.regions if r.name.endswith("accumulator rows")]
        weights = [r for r in sram.regions if r.name.endswith(": weights")]
        if acc:
            acc_banks = {bank_of(DEFAULT, a) for a in (acc[0].lo, acc[0].hi - 1)}
            w_banks = set(range(bank_of(DEFAULT, weights[0].lo),
                                bank_of(DEFAULT, weights[0].hi - 1) + 1))
            assert not acc_banks & w_banks, sram.regions


def test_sram_overflow_names_the_layer_and_the_limit():
    kb = KernelBuilder(TINY)
    layout = kb.input("x", 8, 512)
    with pytest.raises(CompileError, match=r"layer 'fc1' needs [\d.]+ KiB of SRAM per node "
                                           r"\(node \(\d, \d\): .*weights [\d.]+ KiB.*\), "
                                           r"the node has 4 KiB"):
        kb.quantised_layer("fc1", layout, np.ones((512, 8), dtype=np.int8),
                           np.zeros(8, dtype=np.int32), 1, 1)
    kb = KernelBuilder(TINY)
    with pytest.raises(CompileError, match=r"tensor 'huge' needs [\d.]+ KiB .* the node has "
                                           r"4 KiB"):
        kb.input("huge", 64, 2048)


def test_chained_layers_report_earlier_layers_in_the_overflow():
    kb = KernelBuilder(TINY)
    layout = kb.input("x", 8, 200)
    h = kb.gemm("fc1", layout, np.ones((200, 8), dtype=np.int8))
    layout2 = kb.input("x2", 8, 200)
    # fc2 with 8 outputs fits in the words of fc1's dead regions, after a barrier; with 12 not
    with pytest.raises(CompileError, match=r"layer 'fc2' needs .* earlier layers [\d.]+ KiB.*"
                                           r" \(nor with the words of the earlier layers' dead "
                                           r"regions reused\)$"):
        kb.gemm("fc2", layout2, np.ones((200, 12), dtype=np.int8))
    assert h.base and not kb.barriers


def test_instruction_memory_overflow_names_the_layer():
    # 8 x 8 tiles per node, four instructions each: about 290 straight-line, rolled into loops it
    # fits
    kb = KernelBuilder(TINY)
    layout = kb.input("x", 64, 4)
    kb.quantised_layer("wide", layout, np.zeros((4, 64), dtype=np.int8),
                       np.zeros(64, dtype=np.int32), 1, 1)
    assert max(len(p) for p in kb.tp.programs.values()) < 289
    # a 16-word instruction memory: the rolled program does not fit
    small = TINY.replace(imem_words=16)
    kb = KernelBuilder(small)
    layout = kb.input("x", 64, 4)
    with pytest.raises(CompileError, match=r"layer 'wide' needs \d+ instructions on node "
                                           r"\(\d, \d\) \(64 tiles: \d+ instructions "
                                           r"straight-line, \d+ rolled into loops, earlier "
                                           r"layers 0 and the HALT\), its instruction memory "
                                           r"holds 16"):
        kb.quantised_layer("wide", layout, np.zeros((4, 64), dtype=np.int8),
                           np.zeros(64, dtype=np.int32), 1, 1)
    # and beyond 64 x 16 straight-line instructions the compiler does not try
    kb = KernelBuilder(small)
    layout = kb.input("x", 256, 4)
    with pytest.raises(CompileError, match=r"layer 'wider' needs \d+ straight-line "
                                           r"instructions on node .*more than the 1024 \(64 x "
                                           r"the instruction memory\)"):
        kb.quantised_layer("wider", layout, np.zeros((4, 256), dtype=np.int8),
                           np.zeros(256, dtype=np.int32), 1, 1)


def test_bad_arguments_are_compile_errors():
    kb = KernelBuilder(TINY)
    x = kb.input("x", 4, 8)
    cases = [
        (lambda: kb.gemm("a", x, np.zeros((9, 4), dtype=np.int8)),
         r"layer 'a': weights have 9 rows but the input has 8 features"),
        (lambda: kb.gemm("b", x, np.full((8, 4), 200)), r"layer 'b': weights must be int8"),
        (lambda: kb.gemm("c", x, np.zeros((8, 4), dtype=np.float32)),
         r"layer 'c': weights must be integers for int8, not float32"),
        (lambda: kb.quantised_layer("d", x, np.zeros((8, 4), dtype=np.int8), np.zeros(3, int),
                                    1, 1), r"layer 'd': bias must be an integer vector of 4"),
        (lambda: kb.quantised_layer("e", x, np.zeros((8, 4), dtype=np.int8), np.zeros(4, int),
                                    70000, 1), r"layer 'e': scale=70000 is outside 0..65535"),
        (lambda: kb.quantised_layer("f", x, np.zeros((8, 4), dtype=np.int8), np.zeros(4, int),
                                    1, 64), r"layer 'f': shift=64 is outside 0..63"),
        (lambda: kb.input("x", 4, 8), r"the name 'x' is used twice"),
        (lambda: kb.input("g", 0, 8), r"tensor 'g': batch must be a positive integer"),
        (lambda: kb.gemm("h", [x, kb.input("y", 5, 4)], np.zeros((12, 4), dtype=np.int8)),
         r"layer 'h': inputs 'x' and 'y' have batches 4 and 5"),
    ]
    for build, message in cases:
        with pytest.raises(CompileError, match=message):
            build()
    with pytest.raises(CompileError, match="mac_dim to be a multiple of 4"):
        kb2 = KernelBuilder(TINY.replace(mac_dim=2, rows=1, cols=1))
        kb2.quantised_layer("q", kb2.input("x", 2, 4), np.zeros((4, 2), dtype=np.int8),
                            np.zeros(2, int), 1, 1)
    with pytest.raises(ValueError, match="expected shape"):
        load_activation(kb.tp, x, np.zeros((3, 8), dtype=np.int8))


def test_split_even():
    assert split_even(5, 2) == [(0, 3), (3, 5)]
    assert split_even(1, 3) == [(0, 1), (1, 1), (1, 1)]
    assert split_even(8, 4) == [(0, 2), (2, 4), (4, 6), (6, 8)]


def test_tiny_benchmark_case_runs_near_its_figure():
    """bench/gemm_utilisation.py's tiny case (32^3): correct, and the compute phase keeps the
    matrix unit busy (a guard against schedules that stop overlapping communication)."""
    tp, out, expected = gemm_program(TINY, 32, 32, 32, rng(8))
    result = TileModel(TINY).run(tp)
    check_run(tp, result)
    assert np.array_equal(unpack_gemm(out, result), expected)
    ideal = 32 ** 3 / TINY.peak_macs_per_cycle
    running = max(r.counters["cycles"] for r in result.nodes.values())
    assert ideal / running > 0.68, running
    # the matrix unit idles under 80 cycles of each node's compute phase (57 measured: the
    # first operands' multicasts and start-up); the sequencer's own waits overlap the MATMULs
    assert all(r.counters["cycles"] - r.counters["busy_matrix"] < 80
               for r in result.nodes.values())
    assert all(r.counters["sram_conflicts"] == 0 for r in result.nodes.values())


def test_256_cube_meets_the_utilisation_target():
    """The benchmark's headline case (bench/gemm_utilisation.py): >= 80 % of the MACs' peak
    over RunResult.cycles (host loading included), every node's SENDs overlapped."""
    tp, out, expected = gemm_program(DEFAULT, 256, 256, 256, rng(12))
    result = TileModel(DEFAULT).run(tp)
    assert not result.faults and result.hang is None
    assert np.array_equal(unpack_gemm(out, result), expected)
    ideal = 256 ** 3 / DEFAULT.peak_macs_per_cycle
    assert ideal / result.cycles >= 0.80, result.cycles
    for report in result.nodes.values():
        assert report.counters["sram_conflicts"] == 0
        # every matrix unit is busy all of the run but under 1 100 cycles (930 measured on the
        # last node to finish: the host's loading before its START, MATMUL start-up, the
        # first operands; an early node waits longer inside its compute phase, for the rest
        # of its row); the sequencer's WAITs (stall_wait) mostly overlap the running MATMULs
        assert result.cycles - report.counters["busy_matrix"] < 1100, report.counters


def test_send_schedule_keeps_due_order_and_deadlines():
    """`schedule_sends`: no message after its due slot nor before its earliest one, a sender's
    messages in due order, slot -1 only for what is due there, each slot within its DMA budget
    unless forced."""
    from d1tile.sim.dma import job_cycles
    from d1tile.sw.kernels import Message, schedule_sends
    r = np.random.default_rng([bench_seed(), 13])
    for _ in range(200):
        tiles = {(s, 0): int(r.integers(0, 6)) for s in range(3)}
        msgs = [Message((int(r.integers(0, 3)), 0), (int(r.integers(0, 3)), 1), 0, 0,
                        int(r.integers(0, 40)), 0, int(r.integers(0, 8)), (0, 0))
                for _ in range(int(r.integers(1, 30)))]
        for m in msgs:      # some have a fed source: no slot before `earliest`
            if r.random() < 0.3:
                m.earliest = int(r.integers(-1, m.due + 1))
        capacity = int(r.integers(0, 100))
        schedule_sends(msgs, tiles, capacity)
        for sender, count in tiles.items():
            mine = [m for m in msgs if m.sender == sender]
            ordered = sorted(mine, key=lambda m: (m.due, m.rank, m.receiver, m.dst))
            slots = [m.slot for m in ordered]
            assert slots == sorted(slots)
            for m in mine:
                assert -1 <= m.slot <= max(min(m.due, count - 1), -1)
                assert m.slot >= min(m.earliest, max(min(m.due, count - 1), -1)), m
                assert m.slot == -1 or m.slot <= m.due or m.slot == count - 1
            spent = {}
            for m in ordered:          # a message over a slot's budget must be due there
                spent[m.slot] = spent.get(m.slot, 0) + job_cycles(m.n) + 1
                if m.slot == -1:
                    assert m.due == -1 or count == 0, m
                elif spent[m.slot] > capacity:
                    assert m.due == m.slot or m.slot == count - 1, m


# -- the same programs on the RTL ------------------------------------------------------------

def rtl_cases():
    """Few and small: the tiny tile build is shared by every RTL test."""
    cases = {}
    tp, out, expected = gemm_program(TINY, 5, 7, 3, rng(9), form="chunks")
    cases["gemm 5x7x3"] = (tp, lambda res: unpack_gemm(out, res), expected)
    tp2, out2, expected2 = gemm_program(TINY, 8, 16, 12, rng(10))
    cases["gemm 8x16x12"] = (tp2, lambda res: unpack_gemm(out2, res), expected2)
    tp3, outputs, expected3 = chain(TINY, 6, (12, 8, 5), rng(11), (True, False))
    cases["two layers 6x12->8->5"] = (tp3, lambda res: unpack_activation(outputs[-1], res),
                                      expected3[-1])
    tp4, out4, expected4 = bf16_gemm_program(TINY, 8, 13, 6, rng(23), specials=True)
    cases["bf16 gemm 8x13x6"] = (tp4, lambda res: unpack_gemm(out4, res).view(np.uint32),
                                 expected4.view(np.uint32))
    tp5, out5, expected5 = gemm_program(TINY, 40, 12, 72, rng(35), out="host")
    cases["gemm 40x12x72 streamed"] = (tp5, lambda res: unpack_gemm(out5, res), expected5)
    tp6, outputs6, expected6 = bf16_chain(TINY, 9, (20, 12, 5), rng(36), (True, False), pool=2,
                                          specials=True)
    cases["bf16 layers 9x20->12 (pooled)->5"] = (
        tp6, lambda res: unpack_activation(outputs6[-1], res), expected6[-1])
    return cases


def test_rtl_matches_the_model():
    from d1tile.hw.tile_run import run_rtl
    cases = rtl_cases()
    programs = [tp for tp, _, _ in cases.values()]
    rtl = run_rtl(programs)
    for (name, (tp, unpack, expected)), got in zip(cases.items(), rtl):
        model = TileModel(TINY).run(tp)
        assert model.comparable() == got.comparable(), (name, differences(model.comparable(),
                                                                          got.comparable()))
        check_run(tp, got)
        assert np.array_equal(unpack(got), expected), name
