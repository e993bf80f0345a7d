"""The device interface: the same program on the model and on the RTL device."""

import pytest

from d1tile.params import TileConfig
from d1tile.sw.program import TileProgram
from d1tile.sw.runtime import get_device

CFG = TileConfig.preset("tiny")


def small_program():
    tp = TileProgram(CFG)
    tp.load((1, 0), 0, [5, 6, 7])
    p = tp.node(1, 0)
    p.send(0, 3, (0, 1), 40, counter=7)
    p.halt()
    q = tp.node(0, 1)
    q.wait(7, 1)
    q.vec("add", dst=50, a=40, b=40, n=3)
    q.halt()
    tp.read((0, 1), 50, 3)
    return tp


def test_same_program_on_both_devices():
    results = {}
    for name in ("model", "rtl"):
        device = get_device(name, CFG)
        device.load(small_program())
        results[name] = device.run()
        assert device.read((0, 1), 50, 3) == [10, 12, 14]
        assert device.counters((1, 0))["instructions"] == 2
    assert results["model"].comparable() == results["rtl"].comparable()


def test_device_errors_are_clear():
    device = get_device("model", CFG)
    with pytest.raises(RuntimeError, match="nothing loaded"):
        device.run()
    with pytest.raises(ValueError, match="compiled for"):
        device.load(TileProgram(TileConfig.preset("default")))
    device.load(small_program())
    device.run()
    with pytest.raises(KeyError, match="were not read back"):
        device.read((0, 1), 0, 1)
    with pytest.raises(ValueError, match="unknown backend 'fpga'"):
        get_device("fpga", CFG)
