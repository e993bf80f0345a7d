"""The compiler driver: networks compiled onto the tile, bit-exact with the integer reference,
on the cycle model and (small ones) on the RTL; clear errors for what is not lowered."""

import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import bench_seed
from d1tile.params import TileConfig
from d1tile.sw.compiler import compile_model, execute
from d1tile.sw.errors import CompileError
from d1tile.sw.graph_api import GraphBuilder
from d1tile.sw.runtime import get_device

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "examples"))
from toy_models import cnn_model, mlp_model  # noqa: E402


def small_mlp(rng, batch=8, k=12, h=8, f=4):
    g = GraphBuilder("small")
    x = g.input("x", (batch, k))
    y = g.relu(g.gemm(x, rng.normal(size=(k, h)).astype(np.float32),
                      rng.normal(size=h).astype(np.float32), name="fc1"))
    y = g.gemm(y, rng.normal(size=(h, f)).astype(np.float32),
               rng.normal(size=f).astype(np.float32), name="fc2")
    return g.build(outputs=[y])


def test_mlp_toy_model_on_the_default_tile_is_bit_exact():
    cfg = TileConfig.preset("default")
    toy = mlp_model(batch=64)
    compiled = compile_model(toy.model, cfg, toy.calib_x)
    run = execute(compiled, get_device("model", cfg), toy.test_x[:64])
    assert run.max_abs_diff == 0
    assert run.result.cycles >= compiled.ideal_cycles > 0
    predicted = run.outputs["logits"].argmax(axis=1)
    assert np.mean(predicted == toy.test_y[:64]) > 0.85


def test_small_network_on_both_backends():
    cfg = TileConfig.preset("tiny")
    rng = np.random.default_rng(bench_seed())
    graph = small_mlp(rng)
    calib = rng.normal(size=(8, 12)).astype(np.float32)
    compiled = compile_model(graph, cfg, calib)
    x = rng.normal(size=(8, 12)).astype(np.float32)
    model = execute(compiled, get_device("model", cfg), x)
    rtl = execute(compiled, get_device("rtl", cfg), x)
    assert model.max_abs_diff == 0 and rtl.max_abs_diff == 0
    assert model.result.comparable() == rtl.result.comparable()


def test_what_is_not_lowered_or_does_not_fit_is_a_clear_error():
    toy = cnn_model(batch=8)
    with pytest.raises(CompileError, match="conv"):
        compile_model(toy.model, TileConfig.preset("default"), toy.calib_x)
    mlp = mlp_model(batch=16)
    with pytest.raises(CompileError, match=r"layer 'fc1\+relu1' needs .* of SRAM per node .* "
                                           r"the node has 4 KiB"):
        compile_model(mlp.model, TileConfig.preset("tiny"), mlp.calib_x)
