"""noc-stress: the traffic accounting itself, the model on several grids, and the RTL mesh on
2x2 and 3x3 (a mesh with a middle router: every port in use; smaller than 4x4 to keep
`make test` short) reporting exactly what the model reports for the same seed."""

import pytest

from conftest import bench_seed
from d1tile.params import TileConfig
from d1tile.hw.noc_run import run_rtl
from d1tile.sim.noc import NocTraffic, run_model
from d1tile.sim.router import MeshModel


@pytest.mark.parametrize("grid", [(1, 1), (1, 4), (3, 2), (4, 4)])
@pytest.mark.parametrize("rate", [0.2, 1.0])
def test_model_delivers_everything_once_in_order(grid, rate):
    cfg = TileConfig.preset("tiny").with_grid(*grid)
    stats = run_model(cfg, packets=600, rate=rate, seed=bench_seed())
    assert stats.ok, stats.summary()
    assert stats.injected == stats.delivered == 600
    assert 1 <= stats.latency_min <= stats.latency_mean <= stats.latency_p99 <= stats.latency_max


def _drive(traffic, mesh, tamper, limit=20000):
    """Run traffic through a MeshModel, passing each cycle's ejections through `tamper`."""
    cycle = 0
    while not traffic.done and cycle < limit:
        accepted, ejected = mesh.step(traffic.offers(), {})
        traffic.step(cycle, accepted, tamper(cycle, dict(ejected)))
        cycle += 1
    return traffic.stats()


def test_accounting_sees_lost_duplicated_and_reordered_packets():
    cfg = TileConfig.preset("tiny")
    seed = bench_seed()
    dropped = []

    def drop_first(cycle, ejected):
        for node, flit in list(ejected.items()):
            if not dropped:
                dropped.append(flit)
                del ejected[node]
        return ejected
    stats = _drive(NocTraffic(cfg, packets=50, rate=0.5, seed=seed), MeshModel(cfg), drop_first)
    assert not stats.ok and (stats.lost or stats.broken)

    traffic = NocTraffic(cfg, packets=50, rate=0.5, seed=seed)
    seen = []

    def replay(cycle, ejected):
        seen.extend(ejected.items())
        if traffic.generated == traffic.total and len(seen) > 1 and not replay.done:
            replay.done = True
            node, flit = next((n, f) for n, f in seen if traffic.flit_fmt.get(f, "head")
                              and traffic.flit_fmt.get(f, "tail"))
            traffic._receive(node, flit, cycle)       # the same one-flit packet again
        return ejected
    replay.done = False
    stats = _drive(traffic, MeshModel(cfg), replay)
    assert stats.duplicated >= 1 or stats.reordered >= 1, stats.summary()


@pytest.mark.parametrize("grid", [(2, 2), (3, 3)])
def test_rtl_mesh_matches_the_model(grid):
    cfg = TileConfig.preset("tiny").with_grid(*grid)
    seed = bench_seed()
    rtl = run_rtl(cfg, packets=800, rate=0.9, seed=seed)
    assert rtl.ok, rtl.summary()
    assert rtl.delivered == 800
    model = run_model(cfg, packets=800, rate=0.9, seed=seed)
    assert rtl == model, f"RTL:\n{rtl.summary()}\nmodel:\n{model.summary()}"


def test_rtl_mesh_with_multicasts_matches_the_model():
    """noc-stress with 40 % multicasts on the 2x2 RTL mesh (the build of the test above; the
    3x3 mesh bench in tb_router runs multicasts in lockstep too): every copy once, and the same
    figures as the model."""
    cfg = TileConfig.preset("tiny").with_grid(2, 2)
    seed = bench_seed()
    rtl = run_rtl(cfg, packets=800, rate=0.9, seed=seed, multicast=0.4)
    assert rtl.ok and rtl.multicasts > 200 and rtl.delivered == rtl.copies > 800, rtl.summary()
    model = run_model(cfg, packets=800, rate=0.9, seed=seed, multicast=0.4)
    assert rtl == model, f"RTL:\n{rtl.summary()}\nmodel:\n{model.summary()}"
