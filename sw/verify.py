"""`d1tile verify`: random programs on the cycle model and on the RTL, compared.

For each of N random race-free multi-node programs (`d1tile.sw.randprog`), the cycle model and
the Verilator tile run it from a fresh tile; the two `RunResult`s must be identical: every
node's final SRAM (all of it is read back), what each node streamed to the host, the cycle
each DONE arrived, the total cycle count and every performance counter. Both are also checked
against the functional interpreter (the executable specification): the same final SRAM, the
same streams and no fault.

Program i of seed S is `random_tile_program(cfg, random.Random(f"{S}:{i}"))`, so any program can
be replayed alone with `--only i`. The report counts the instructions the programs issued, per
opcode and type (`instruction_kind`), so that a run shows which paths it exercised.
"""

from __future__ import annotations

import random
import time
from collections import Counter
from dataclasses import dataclass, field

from d1tile import isa
from d1tile.dtypes import ElemType
from d1tile.isa import FVecOp, Opcode, SetrReg, VecOp
from d1tile.params import TileConfig
from d1tile.sim.interp import interpret
from d1tile.sim.tile import TileModel
from d1tile.sw.randprog import random_tile_program


__all__ = ["VerifyReport", "verify", "program_for", "differences", "instruction_kind",
           "exercised"]


def program_for(cfg: TileConfig, seed: int, index: int):
    return random_tile_program(cfg, random.Random(f"{seed}:{index}"))


def _name(enum, value) -> str:
    try:
        return enum(value).name
    except ValueError:
        return str(value)


def instruction_kind(word: int) -> str:
    """What an instruction exercises, in a few words: the opcode, and the type or op where it
    has one, and the accumulator bank of MATMUL and MREAD ("MATMUL BF16 bank 1", "MREAD bank 0",
    "FVEC FAXPY", "FCVT FP32->BF16 SR", "SETR SEED")."""
    ins = isa.decode(word)
    if ins.op is None:
        return "undefined"
    if ins.op == Opcode.MATMUL:
        return f"MATMUL {_name(ElemType, ins.type)} bank {ins.bank}"
    if ins.op == Opcode.MREAD:
        return f"MREAD bank {ins.bank}"
    if ins.op == Opcode.VEC:
        return f"VEC {_name(VecOp, ins.vop)}"
    if ins.op == Opcode.FVEC:
        return f"FVEC {_name(FVecOp, ins.fop)}"
    if ins.op == Opcode.FCVT:
        return (f"FCVT {_name(ElemType, ins.stype)}->{_name(ElemType, ins.dtype)}"
                + (" SR" if ins.sr else ""))
    if ins.op == Opcode.SETR:
        return f"SETR {_name(SetrReg, ins.reg)}"
    if ins.op == Opcode.MCAST:
        return f"MCAST {'COLUMN' if ins.col else 'ROW'}"
    return ins.op.name


def run_kind(node, instr) -> list[str]:
    """What an instruction executed by the interpreter exercises (`instruction_kind`), and
    for loops how: "LOOP count 0" / "count 1" / "count >1", "LOOP nested" (opened inside
    another), "STEP level k", and "stepped OP" for an instruction whose fields a STEP moved."""
    kinds = [instruction_kind(instr.raw)]
    loops = node.loops
    if instr.op == Opcode.LOOP:
        kinds[0] = f"LOOP count {instr.count if instr.count < 2 else '>1'}"
        if loops.depth:
            kinds.append("LOOP nested")
    elif instr.op == Opcode.STEP:
        kinds[0] = f"STEP level {instr.level}"
    elif any(loops.offsets) and instr.op in isa.ADDRESS_SLOTS:
        kinds.append(f"stepped {instr.op.name}")
    if instr.op == Opcode.MREAD and instr.tr:
        kinds.append("MREAD transposed")
    if instr.op == Opcode.SEND and instr.x == node.cfg.cols:
        kinds.append("SEND host")
    if instr.op in isa.SHAPED_OPS and instr.shaped:
        extent = isa.dma_extent(instr)
        kinds.append(f"shaped {instr.op.name}")
        if extent.zero:
            kinds.append(f"shaped {instr.op.name} zero")
        if not extent.single:
            kinds.append(f"shaped {instr.op.name} scatter")
        if instr.op == Opcode.MCAST and getattr(instr, "span", 0):
            kinds.append("MCAST rectangle")
    return kinds


def exercised(programs, progress=None) -> tuple[Counter, list]:
    """Instructions executed per kind (`run_kind`) by the functional interpreter on
    `programs`, and the interpreter's results (one per program). `progress(done)`: called
    after each program."""
    counts = Counter()

    def count(node, instr):
        counts.update(run_kind(node, instr))

    results = []
    for tp in programs:
        results.append(interpret(tp, on_issue=count))
        if progress is not None:
            progress(len(results))
    return counts, results


def differences(model: dict, rtl: dict, limit: int = 3) -> list[str]:
    """Where two `RunResult.comparable()` dicts differ, in words (at most `limit` items)."""
    out = []
    for key in model:
        a, b = model[key], rtl.get(key)
        if a == b:
            continue
        if isinstance(a, dict):
            b = b if isinstance(b, dict) else {}
            for sub in sorted(set(a) | set(b)):
                if a.get(sub) != b.get(sub):
                    if key == "reads":
                        words = [i for i, (p, q) in enumerate(zip(a.get(sub) or [],
                                                                   b.get(sub) or [])) if p != q]
                        out.append(f"SRAM of node {sub.split('@')[0]}: {len(words)} words differ, "
                                   f"first at offset {words[0] if words else '?'}")
                    elif key == "nodes":
                        out.append(f"node {sub}: model [done cycle, fault, pc, value, counters] "
                                   f"{a.get(sub)} vs RTL {b.get(sub)}")
                    elif key == "streams":
                        out.append(f"stream of node {sub} to the host: model "
                                   f"{len(a.get(sub) or [])} packets "
                                   f"{sum(len(p[1]) for p in a.get(sub) or [])} words vs RTL "
                                   f"{len(b.get(sub) or [])} packets "
                                   f"{sum(len(p[1]) for p in b.get(sub) or [])} words")
                    if len(out) >= limit:
                        return out
        else:
            out.append(f"{key}: model {a!r} vs RTL {b!r}")
        if len(out) >= limit:
            break
    return out


@dataclass
class VerifyReport:
    programs: int = 0
    mismatches: int = 0
    lines: list = field(default_factory=list)
    model_cycles: int = 0
    model_seconds: float = 0.0
    rtl_seconds: float = 0.0
    build_seconds: float = 0.0
    exercised: Counter = field(default_factory=Counter)

    def exercised_line(self) -> str:
        """One line: instructions per opcode and type, most frequent first."""
        parts = ", ".join(f"{kind} {count}" for kind, count in self.exercised.most_common())
        return f"instructions exercised ({sum(self.exercised.values())}): {parts}"


def verify(cfg: TileConfig, count: int, seed: int, *, only: int | None = None, log=print,
           command: str = "d1tile verify", rtl: bool = True, progress=None) -> VerifyReport:
    """Run the comparison; `log` gets one line per mismatch (with a reproducer), the
    Verilator build's progress lines, and the summary. `rtl=False`: the cycle model against
    the functional interpreter only (no Verilator: any grid the model runs).
    `progress(stage, done, total)`, if given, is called as the work advances: stage
    "interpreter" and "model" per program, "RTL" before and after the one Verilator run of
    them all."""
    progress = progress or (lambda stage, done, total: None)
    indices = [only] if only is not None else list(range(count))
    programs = [program_for(cfg, seed, i) for i in indices]
    report = VerifyReport(programs=len(programs))
    report.exercised, functionals = exercised(programs, progress=lambda done: progress(
        "interpreter", done, len(programs)))
    started = time.monotonic()
    models = []
    for tp in programs:
        models.append(TileModel(cfg).run(tp))
        progress("model", len(models), len(programs))
    report.model_seconds = time.monotonic() - started
    report.model_cycles = sum(r.total_cycles for r in models)
    rtls = [None] * len(programs)
    if rtl:
        from d1tile.hw.tile_run import run_rtl, tile_build
        started = time.monotonic()
        tile_build(cfg, log)             # with its progress lines; run_rtl reuses it
        report.build_seconds = time.monotonic() - started
        timing = {}
        progress("RTL", 0, len(programs))
        rtls = run_rtl(programs, timing=timing, log=lambda line: None)
        progress("RTL", len(programs), len(programs))
        report.rtl_seconds = timing["run_s"]
    for index, model, rtl_result, functional in zip(indices, models, rtls, functionals):
        problems = [] if rtl_result is None else differences(model.comparable(),
                                                             rtl_result.comparable())
        for (node, addr, n), words in functional.reads.items():
            if model.reads.get((node, addr, n)) != words:
                problems.append(f"node {node}: the final SRAM differs from the functional "
                                "interpreter's")
                break
        if functional.streams != model.streams:
            problems.append("the streams to the host differ from the functional interpreter's")
        if functional.faults() or model.faults or model.hang:
            problems.append(f"unexpected fault or hang: {model.faults or model.hang}")
        if problems:
            report.mismatches += 1
            line = (f"program {index}: MISMATCH: {'; '.join(problems)}; reproduce: {command} "
                    f"--random-programs 1 --seed {seed} --only {index} --grid "
                    f"{cfg.rows}x{cfg.cols} --preset {cfg.name}"
                    f"{'' if rtl else ' --backend model'}")
            report.lines.append(line)
            log(line)
    return report
