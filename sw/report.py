"""Run a compiled network on one or both backends and report what happened.

    compiled = compile_model("cnn.onnx", cfg, calib_x)
    net = run_network(compiled, x, backends=("model", "rtl"))
    report = net.report()              # plain data, what `d1tile run --report` writes as JSON
    print(summary(report))

For each backend, `run_network` quantises the input (int8; bf16 rounds it to BF16), runs the
compiled program on the device and reads the outputs back (`d1tile.sw.compiler.execute`); it
checks them against the exact reference (int8: the integer reference; bf16: the layer-by-layer
BF16/FP32 reference, `d1tile.sw.bf16`) bit for bit and measures their error against the float
model. With both backends
it also compares the two runs as a whole (`RunResult.comparable()`: every DONE cycle, counter
and word read back).

Cycles (all from the host's point of view, `d1tile.sim.host`):

* `cycles`: from reset to the cycle the last DONE arrived: loading every program, weight and
  input through the east edge, then the run;
* `ideal_cycles`: the network's multiply-accumulates (gemm and conv layers) divided by the
  grid's peak (`cfg.peak_macs_per_cycle`, every MAC of every node busy every cycle);
  `mac_utilisation` = ideal_cycles / cycles;
* a batch split over runs (`d1tile.sw.compiler.compile_model`, "split over time"): `cycles`
  and the counters are summed over the runs, `cycles_per_run` lists them, `macs` and
  `ideal_cycles` are the whole batch's; the per-layer figures are those of the last run
  (`batch_per_run` samples), and add up to its cycles;
* per layer, from the cycle model's issue trace (`TileModel(trace=True)`): the cycle by which
  every node had issued the first instruction after the layer; `load` is the time to the first
  instruction issued anywhere, each layer the time from the previous mark to its own, `finish`
  what remains to the last DONE (HALT, DONE packets). They add up to `cycles`. The model and
  the RTL agree on every cycle, so the breakdown is the RTL's too (the model is run for it when
  only the RTL was asked for).
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np

from d1tile.sw.compiler import Compilation, execute, references, run_results
from d1tile.sw.quant import dequantize
from d1tile.sw.runtime import ModelDevice, get_device


__all__ = ["NetworkRun", "run_network", "layer_cycles", "summary"]


def layer_cycles(c: Compilation, trace: dict, cycles: int) -> dict:
    """{"load": ..., "layers": [cycles per layer of `c.layers`], "finish": ...}, adding up to
    `cycles`, from the cycle model's issue trace of the run (module docstring)."""
    issued = {}
    for node, entries in trace.items():
        first = {}
        for pc, cycle in entries:
            first.setdefault(pc, cycle)
        issued[node] = first
    starts = [entries[0][1] for entries in trace.values() if entries]
    mark = min(starts) if starts else 0
    out = {"load": mark, "layers": []}
    for info in c.layers:
        ends = [issued[node][end] for node, (_, end) in info.plan.pcs.items()
                if end in issued.get(node, {})]
        new = max([mark, *ends])
        out["layers"].append(new - mark)
        mark = new
    out["finish"] = cycles - mark
    return out


@dataclass
class NetworkRun:
    compiled: Compilation
    x: np.ndarray
    executions: dict           # backend -> Execution
    breakdown: dict            # layer_cycles of the run
    labels: np.ndarray | None = None
    chrome_trace: dict | None = None    # the model's last run (`run_network(timeline=True)`)

    def report(self) -> dict:
        c, cfg = self.compiled, self.compiled.cfg
        backends = list(self.executions)
        cycles = {b: e.result.cycles for b, e in self.executions.items()}
        first = self.executions[backends[0]]
        samples, runs = len(self.x), c.runs(len(self.x))
        macs = c.macs * samples // c.run_batch           # the network's, for this batch
        ideal = macs / cfg.peak_macs_per_cycle
        out = {
            "model": c.graph.name,
            "dtype": c.dtype.name.lower(),
            "batch": samples,
            "runs": runs,
            "batch_per_run": c.run_batch,
            "cycles_per_run": {b: [r.cycles for r in run_results(e.result)]
                               for b, e in self.executions.items()},
            "preset": cfg.name,
            "grid": f"{cfg.rows}x{cfg.cols}",
            "config": json.loads(cfg.to_json()),
            "backends": backends,
            "cycles": cycles,
            "total_cycles_with_readback": {b: e.result.total_cycles
                                           for b, e in self.executions.items()},
            "model_vs_rtl_cycle_diff": (cycles["rtl"] - cycles["model"]
                                        if {"model", "rtl"} <= set(cycles) else None),
            "model_and_rtl_identical": (
                self.executions["model"].result.comparable()
                == self.executions["rtl"].result.comparable()
                if {"model", "rtl"} <= set(cycles) else None),
            "macs": int(macs),
            "tile_macs": int(sum(info.tile_macs for info in c.layers)) * runs,
            "input_fold": dict(c.folds),
            "fold_estimates": {f: {k: int(v) for k, v in e.items()}
                               for f, e in c.fold_costs.items()},
            "barriers": len(c.builder.barriers) if c.builder is not None else 0,
            "peak_macs_per_cycle": cfg.peak_macs_per_cycle,
            "ideal_cycles": ideal,
            "mac_utilisation": {b: ideal / n for b, n in cycles.items()},
            "cycles_breakdown": {"load": self.breakdown["load"],
                                 "finish": self.breakdown["finish"]},
            "layers": [
                {"name": info.name, "ops": info.ops, "macs": int(info.macs),
                 "tile_macs": int(info.tile_macs),
                 "ideal_cycles": info.macs / cfg.peak_macs_per_cycle,
                 "cycles": n,
                 "mac_utilisation": (info.macs / cfg.peak_macs_per_cycle / n) if n else None}
                for info, n in zip(c.layers, self.breakdown["layers"])],
            "max_abs_diff_vs_reference": {b: e.max_abs_diff for b, e in self.executions.items()},
            "bit_exact": all(e.bit_exact for e in self.executions.values()),
            "error_vs_float": self._float_error(first),
            "outputs": {k: list(v.shape) for k, v in first.outputs.items()},
        }
        if self.labels is not None:
            out["accuracy"] = self._accuracy(first)
        return out

    def _float_error(self, execution) -> dict:
        """The dequantised tile outputs against the float graph's values of the same tensors."""
        c = self.compiled
        errors, peaks, agree = [], [], []
        for name, q in execution.outputs.items():
            got = dequantize(q, c.qgraph.scales[name])
            want = execution.float_values[name]
            errors.append(np.abs(got - want).reshape(-1))
            peaks.append(float(np.max(np.abs(want))) if want.size else 0.0)
            if want.ndim == 2:
                agree.append(float(np.mean(got.argmax(1) == want.argmax(1))))
        err = np.concatenate(errors)
        out = {"max_abs": float(err.max()) if err.size else 0.0,
               "mean_abs": float(err.mean()) if err.size else 0.0,
               "float_max_abs": max(peaks)}
        if agree:
            out["argmax_agreement"] = min(agree)
        return out

    def _accuracy(self, execution) -> dict:
        name = next(iter(execution.outputs))
        logits = execution.float_values[name]
        return {"labels": int(len(self.labels)),
                "tile": float(np.mean(execution.outputs[name].argmax(1) == self.labels)),
                "float": float(np.mean(logits.argmax(1) == self.labels))}


def run_network(c: Compilation, x, backends=("model",), *, labels=None, log=None,
                rtl_device=None, timeline: bool = False) -> NetworkRun:
    """Run compiled network `c` on float input `x` on each backend ("model", "rtl"); the model
    runs with the issue trace for the per-layer breakdown (run once more for it if only "rtl"
    is asked for). `rtl_device`: a device to use for "rtl" (tests reuse one). `timeline`: the
    model runs with its timeline, and `NetworkRun.chrome_trace` is the last run's trace."""
    backends = list(dict.fromkeys(backends))
    for b in backends:
        if b not in ("model", "rtl"):
            raise ValueError(f"unknown backend {b!r}; use model, rtl or both")
    x = np.asarray(x, dtype=np.float32)
    refs = references(c, x)
    executions, trace, model_cycles = {}, None, None
    for b in backends if "model" in backends else ["model", *backends]:
        if log:
            what = {"model": "the cycle model", "rtl": "the RTL (Verilator)"}[b]
            if b not in backends:
                what += " (for the per-layer breakdown)"
            log(f"  running on {what} ...")
        if b == "model":
            device = ModelDevice(c.cfg, trace=True, timeline=timeline)
        else:
            device = rtl_device if rtl_device is not None else get_device(b, c.cfg, log=log)
        run = execute(c, device, x, refs)
        if b == "model":
            # the issue trace is the last run's (one, unless the batch is split over runs)
            trace = device.issue_trace
            model_cycles = run_results(run.result)[-1].cycles
            chrome = device.chrome_trace() if timeline else None
        if b in backends:
            executions[b] = run
    return NetworkRun(c, x, executions, layer_cycles(c, trace, model_cycles),
                      None if labels is None else np.asarray(labels),
                      chrome if timeline else None)


def summary(report: dict) -> str:
    """The report as a few lines a person reads."""
    dtype = report.get("dtype", "int8")
    lines = [f"{report['model']}: batch {report['batch']} on the {report['grid']} tile "
             f"({report['preset']}: N = {report['config']['mac_dim']}, "
             f"{report['peak_macs_per_cycle']} MACs/cycle), {dtype}"]
    if "accuracy" in report:
        acc = report["accuracy"]
        lines.append(f"  accuracy      tile ({dtype}) {100 * acc['tile']:.1f} %   float "
                     f"{100 * acc['float']:.1f} %   ({acc['labels']} test images)")
    exact = ", ".join(f"{b} {d:g}" for b, d in report["max_abs_diff_vs_reference"].items())
    which = "vs integer reference" if dtype == "int8" else "vs bf16 reference"
    lines.append(f"  {which:<23}{'bit-exact' if report['bit_exact'] else 'MISMATCH'}"
                 f" (max |diff|: {exact})")
    err = report["error_vs_float"]
    lines.append(f"  vs float model         max |error| {err['max_abs']:.4g} (outputs up to "
                 f"{err['float_max_abs']:.4g})"
                 + (f", argmax agrees on {100 * err['argmax_agreement']:.1f} %"
                    if "argmax_agreement" in err else ""))
    cyc = "   ".join(f"{b} {n:,}" for b, n in report["cycles"].items())
    lines.append(f"  cycles        {cyc}   ideal {report['ideal_cycles']:,.0f}   "
                 f"utilisation {100 * next(iter(report['mac_utilisation'].values())):.1f} %")
    if report["model_vs_rtl_cycle_diff"] is not None:
        same = "identical" if report["model_and_rtl_identical"] else "DIFFERENT"
        lines.append(f"  model vs RTL  cycle difference {report['model_vs_rtl_cycle_diff']} "
                     f"(whole runs {same})")
    parts = [f"load {report['cycles_breakdown']['load']:,}"]
    parts += [f"{layer['name']} {layer['cycles']:,}" for layer in report["layers"]]
    parts.append(f"finish {report['cycles_breakdown']['finish']:,}")
    runs = report.get("runs", 1)
    if runs > 1:
        lines.append(f"  split         {runs} runs of {report['batch_per_run']} samples (the batch "
                     "does not fit the tile at once); per layer: the last run")
    lines.append("  per layer     " + ", ".join(parts))
    return "\n".join(lines)
