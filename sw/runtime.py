"""One device interface, two devices: the cycle model and the Verilator tile.

    device = get_device("model", cfg)          # or "rtl"
    device.load(tile_program)                  # programs, data, what to read back
    result = device.run()                      # a RunResult: cycles, faults, hang report
    words = device.read((x, y), addr, n)       # words read back after the run
    device.counters((x, y))                    # that node's performance counters

    device = get_device("model", cfg, trace=True)  # the model can also trace the issues:
    device.issue_trace                         # after run(): (x, y) -> [(pc, cycle), ...]

Both devices run the same `TileProgram` from a fresh tile through the same host protocol
(`d1tile.sim.host`), so their results can be compared as they are: `result.comparable()`.
"""

from __future__ import annotations

from d1tile.params import TileConfig
from d1tile.sim.host import DEFAULT_HANG_CYCLES, RunResult


__all__ = ["Device", "ModelDevice", "RtlDevice", "get_device", "BACKENDS"]


class Device:
    """A tile that runs `TileProgram`s. Subclasses implement `_execute`."""

    name = "device"

    def __init__(self, cfg: TileConfig, *, hang_cycles: int = DEFAULT_HANG_CYCLES):
        if not isinstance(cfg, TileConfig):
            raise TypeError(f"cfg must be a TileConfig, not {cfg!r}")
        self.cfg = cfg
        self.hang_cycles = hang_cycles
        self._program = None
        self._result: RunResult | None = None

    def load(self, tile_program) -> None:
        if tile_program.cfg != self.cfg:
            raise ValueError(f"the program was compiled for {tile_program.cfg.key}, "
                             f"this device is {self.cfg.key}")
        self._program = tile_program
        self._result = None

    def run(self) -> RunResult:
        if self._program is None:
            raise RuntimeError("nothing loaded: call load(tile_program) first")
        self._result = self._execute(self._program)
        return self._result

    def _execute(self, tile_program) -> RunResult:
        raise NotImplementedError

    @property
    def result(self) -> RunResult:
        if self._result is None:
            raise RuntimeError("no run yet: call run() first")
        return self._result

    def read(self, node, addr: int, n: int) -> list[int]:
        """Words read back after the run; the region must be one the program asked for."""
        try:
            return self.result.reads[(tuple(node), addr, n)]
        except KeyError:
            raise KeyError(f"node {node} words {addr}..{addr + n - 1} were not read back: add "
                           "them with TileProgram.read before the run") from None

    def counters(self, node) -> dict:
        return self.result.nodes[tuple(node)].counters


class ModelDevice(Device):
    """The cycle model (`d1tile.sim.tile.TileModel`).

    `trace=True` records the model's issue trace: after `run()`, `issue_trace` is
    (x, y) -> [(pc, cycle), ...], every instruction each node issued and the cycle it issued in
    (the time base of `RunResult.cycles`), in issue order."""

    name = "model"

    def __init__(self, cfg: TileConfig, *, hang_cycles: int = DEFAULT_HANG_CYCLES,
                 trace: bool = False, timeline: bool = False):
        super().__init__(cfg, hang_cycles=hang_cycles)
        self.trace = trace or timeline
        self.timeline = timeline
        self._issue_trace: dict | None = None
        self._model = None
        self.on_stream = None     # `TileModel.run`'s callback for the packets streamed to the host

    def load(self, tile_program) -> None:
        super().load(tile_program)
        self._issue_trace = None

    def _execute(self, tile_program) -> RunResult:
        from d1tile.sim.tile import TileModel
        self._issue_trace = None
        model = TileModel(self.cfg, trace=self.trace, timeline=self.timeline)
        result = model.run(tile_program, hang_cycles=self.hang_cycles,
                           on_stream=self.on_stream)
        self._issue_trace = model.issue_trace
        self._model = model if self.timeline else None
        return result

    def chrome_trace(self) -> dict:
        """The last run as a Chrome trace-event / Perfetto JSON object (`d1tile.sim.trace`);
        needs `ModelDevice(cfg, timeline=True)`."""
        from d1tile.sim.trace import chrome_trace
        if self._model is None:
            raise RuntimeError("no timeline: create the device with ModelDevice(cfg, "
                               "timeline=True) and run() first")
        programs = {node: p.words for node, p in self._program.programs.items()}
        return chrome_trace(self.cfg, programs, self._model.issue_trace, self._model.timeline,
                            self._model.timeline_ends(), self._model.packets())

    @property
    def issue_trace(self) -> dict:
        """(x, y) -> [(pc, cycle), ...] of the last run (`d1tile.sim.tile.TileModel`)."""
        if not self.trace:
            raise RuntimeError("no issue trace: this device records none; create it with "
                               "ModelDevice(cfg, trace=True)")
        if self._issue_trace is None:
            raise RuntimeError("no issue trace yet: call run() first")
        return self._issue_trace


class RtlDevice(Device):
    """The Verilator build of the tile (built once per configuration, then reused)."""

    name = "rtl"

    def __init__(self, cfg: TileConfig, *, hang_cycles: int = DEFAULT_HANG_CYCLES, log=None):
        super().__init__(cfg, hang_cycles=hang_cycles)
        self.log = log
        self.timing: dict = {}

    def _execute(self, tile_program) -> RunResult:
        from d1tile.hw.tile_run import run_rtl
        result, = run_rtl([tile_program], hang_cycles=self.hang_cycles, log=self.log,
                          timing=self.timing)
        return result


BACKENDS = {"model": ModelDevice, "rtl": RtlDevice}


def get_device(name: str, cfg: TileConfig, **kwargs) -> Device:
    try:
        return BACKENDS[name](cfg, **kwargs)
    except KeyError:
        raise ValueError(f"unknown backend {name!r}; known: {', '.join(BACKENDS)}") from None
