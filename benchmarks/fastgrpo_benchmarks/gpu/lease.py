"""The one-command GPU lease: every stage in order, each in a process of its own under its own time budget, each
writing ``$OUT/NN-<stage>.json`` as soon as it ends (a stage stopped by its budget leaves what it had finished).

    bash benchmarks/fastgrpo_benchmarks/gpu/run.sh lease [--dry-run] [--triton-cache DIR] [--save-triton-cache]

(``run.sh`` installs the carried wheels and calls ``python -m fastgrpo_benchmarks.gpu.lease``.) The file schema is
in ``schema.py`` and ``benchmarks/README.md``. Another stage is one more ``Stage`` in ``STAGES`` (at most 7 stage
files: the device tool returns 8 files, one of them the log).
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .compile_timer import CompileTimer
from .schema import SCHEMA, check_dir

# The fill stage gets what is left of this: under 8 minutes with the wheel install and the kills of stages past their
# budgets (5 s each), on an H100/H200 (the device tool allows 10 per command).
LEASE_BUDGET_S = 450.0


@dataclass(frozen=True)
class Stage:
    name: str
    budget_s: float  # on the GPU
    dry_budget_s: float  # CPU dry run (Triton interpreter, tiny shapes)
    run: str  # "module:function" in this package: function(ctx: StageContext) -> result dict
    result_keys: tuple[str, ...]  # what the schema check requires in the file's "result"
    salvage: str | None = None  # "module:function"(ctx, partial result) -> result, after a timeout (pure Python)
    fill: bool = False  # gets whatever time is left of LEASE_BUDGET_S (at least budget_s)


STAGES: list[Stage] = [
    Stage(
        "provenance",
        25,
        60,
        "stages:provenance",
        ("device_name", "driver", "clocks", "versions", "git_commit", "wheels", "triton_cache"),
    ),
    Stage("correctness", 75, 150, "correctness:run", ("checks", "passed")),
    Stage("ops", 180, 150, "stages:ops", ("suite", "matmul_tflops", "rows", "targets"), salvage="stages:salvage_rows"),
    # GRPO and SFT steps at two shapes (the SFT step: issue 20); 20 s more than the GRPO steps alone had, not measured
    # on a GPU yet: cases past the budget are recorded as skipped.
    Stage("trainer", 130, 150, "stages:trainer", ("suite", "rows"), salvage="stages:salvage_rows"),
    Stage("tune", 30, 150, "stages:tune", ("entries", "log"), salvage="stages:salvage_tune", fill=True),
    # Other work that needs a GPU check adds a Stage before the fill stage (tune), which takes the time left; 2 of the
    # device tool's 8 file slots are free.
]


def _resolve(ref: str) -> Callable[..., Any]:
    module, attr = ref.split(":")
    return getattr(importlib.import_module(f"{__package__}.{module}"), attr)


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def stage_path(out: Path, index: int, stage: Stage) -> Path:
    return out / f"{index:02d}-{stage.name}.json"


def write_record(path: Path, record: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(record, indent=1, default=str, allow_nan=False) + "\n")
    tmp.replace(path)  # atomic: a kill mid-write leaves the previous version, never half a file


def _clean(value: Any) -> Any:
    """NaN/inf -> None, so every file is strict JSON."""
    if isinstance(value, float) and (value != value or value in (float("inf"), float("-inf"))):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


@dataclass
class StageContext:
    """What a stage function gets: where to write, how long it has, whether this is the CPU dry run."""

    stage: Stage
    index: int
    out: Path
    work: Path
    dry_run: bool
    budget_s: float
    deadline: float = 0.0  # time.time() at which the driver stops this stage (0: budget_s from now)
    started: float = field(default_factory=time.monotonic)
    started_utc: str = field(default_factory=_now)
    timer: Any = None

    @property
    def path(self) -> Path:
        return stage_path(self.out, self.index, self.stage)

    def remaining_s(self) -> float:
        if self.deadline:
            return self.deadline - time.time()
        return self.budget_s - (time.monotonic() - self.started)

    def record(self, status: str, result: dict[str, Any], error: str | None = None) -> dict[str, Any]:
        return {
            "schema": SCHEMA,
            "stage": self.stage.name,
            "index": self.index,
            "status": status,
            "dry_run": self.dry_run,
            "started_utc": self.started_utc,
            "wall_s": round(time.monotonic() - self.started, 2),
            "budget_s": self.budget_s,
            "triton": (self.timer or CompileTimer()).summary(),  # zeros until the stage's process installs one
            "result": _clean(result),
            "error": error,
        }

    def flush(self, result: dict[str, Any], status: str = "running") -> None:
        """Write what the stage has so far (status "running"): a timeout keeps it."""
        write_record(self.path, self.record(status, result))


def run_stage_here(ctx: StageContext) -> int:
    """Inside the stage's own process: time Triton's compiles, run the stage, write its file."""
    ctx.timer = CompileTimer().install()
    ctx.flush({})
    try:
        result = _resolve(ctx.stage.run)(ctx)
    except Exception as exc:  # the file says what broke; the lease goes on with the next stage
        import traceback

        traceback.print_exc()
        partial = _read(ctx.path).get("result", {})
        if ctx.stage.salvage is not None:  # what the stage finished before it broke
            try:
                partial = _resolve(ctx.stage.salvage)(ctx, partial)
            except Exception as salvage_exc:
                partial = {**partial, "salvage_error": f"{type(salvage_exc).__name__}: {salvage_exc}"}
        write_record(ctx.path, ctx.record("error", partial, f"{type(exc).__name__}: {exc}"[:2000]))
        return 1
    status = "failed" if result.get("passed") is False else "ok"
    write_record(ctx.path, ctx.record(status, result))
    return 0


def _read(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _kill_group(proc: subprocess.Popen) -> None:
    for sig, wait in ((signal.SIGTERM, 5), (signal.SIGKILL, 5)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def run_lease(out: Path, work: Path, dry_run: bool, stages: list[Stage] | None = None) -> int:
    """Every stage in order, each under its budget; returns 0 if every stage file exists and passes the schema."""
    stages = STAGES if stages is None else stages
    out.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    total = 0.0 if dry_run else LEASE_BUDGET_S
    for index, stage in enumerate(stages, 1):
        budget = stage.dry_budget_s if dry_run else stage.budget_s
        if stage.fill and total:
            budget = max(budget, total - (time.monotonic() - start))
        path = stage_path(out, index, stage)
        cmd = [sys.executable, "-m", f"{__package__}.lease", "--run-stage", stage.name, "--index", str(index),
               "--out", str(out), "--work", str(work), "--budget-s", str(budget),
               "--deadline", str(time.time() + budget)]  # fmt: skip
        cmd += ["--dry-run"] if dry_run else []
        print(f"[lease] stage {index} {stage.name}: start {_now()}, budget {budget:.0f} s", flush=True)
        began = time.monotonic()
        proc = subprocess.Popen(cmd, start_new_session=True)
        try:
            rc = proc.wait(timeout=budget)
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            rc = None
        wall = time.monotonic() - began
        if rc is None or not path.is_file() or _read(path).get("status") == "running":
            _close_unfinished(path, stage, index, out, work, dry_run, budget, wall, timed_out=rc is None)
        for stray in out.glob("*.tmp"):  # a write cut short by the kill: not a result, and it would take a file slot
            stray.unlink()
        record = _read(path)
        tri = record.get("triton", {})
        print(f"[lease] stage {index} {stage.name}: {record.get('status')} in {wall:.0f} s; Triton compile "
              f"{tri.get('compile_s', 0.0):.1f} s in {tri.get('compiles', 0)} compiles "
              f"({tri.get('cache_hits', 0)} from the disk cache)", flush=True)  # fmt: skip
    _summarise_cache(out, stages)
    problems = check_dir(out, stages, dry_run=dry_run)
    print(f"[lease] done in {time.monotonic() - start:.0f} s; files: {sorted(p.name for p in out.iterdir())}")
    for p in problems:
        print(f"[lease] schema: {p}")
    return 1 if problems else 0


def _close_unfinished(path: Path, stage: Stage, index: int, out: Path, work: Path, dry_run: bool, budget: float,
                      wall: float, timed_out: bool) -> None:  # fmt: skip
    """A stage that was killed (or died) keeps its last flushed result, salvaged where it has a salvage function."""
    record = _read(path)
    ctx = StageContext(stage, index, out, work / stage.name, dry_run, budget)
    result = record.get("result") or {}
    if stage.salvage is not None:
        try:
            result = _resolve(stage.salvage)(ctx, result)
        except Exception as exc:  # salvage is best effort; the file still says what happened
            result = {**result, "salvage_error": f"{type(exc).__name__}: {exc}"}
    status = "timeout" if timed_out else "error"
    error = f"stopped by its {budget:.0f} s budget" if timed_out else "the stage's process ended without a result"
    new = ctx.record(status, result, error)
    new.update(started_utc=record.get("started_utc", new["started_utc"]), wall_s=round(wall, 2))
    new["triton"] = record.get("triton") or new["triton"]
    write_record(path, new)


def _summarise_cache(out: Path, stages: list[Stage]) -> None:
    """Provenance gets the Triton disk cache's hits and misses over the whole lease (a carried cache is kept only
    if it hit)."""
    files = [stage_path(out, i, s) for i, s in enumerate(stages, 1)]
    records = [_read(p) for p in files if p.is_file()]
    prov = next((r for r, p in zip(records, files) if r.get("stage") == "provenance"), None)
    if prov is None:
        return
    hits = sum(r.get("triton", {}).get("cache_hits", 0) for r in records)
    misses = sum(r.get("triton", {}).get("cache_misses", 0) for r in records)
    seconds = sum(r.get("triton", {}).get("compile_s", 0.0) for r in records)
    prov["result"].setdefault("triton_cache", {})["lease"] = {"hits": hits, "misses": misses,
                                                               "compile_s": round(seconds, 3)}  # fmt: skip
    write_record(out / f"{prov['index']:02d}-provenance.json", prov)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT") or "/tmp/fastgrpo-lease-out"))
    parser.add_argument("--work", type=Path, default=Path("/tmp/fastgrpo-lease-work"))
    parser.add_argument("--dry-run", action="store_true", help="CPU: Triton interpreter, tiny shapes, same stages")
    parser.add_argument("--run-stage", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--index", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--budget-s", type=float, default=0.0, help=argparse.SUPPRESS)
    parser.add_argument("--deadline", type=float, default=0.0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.run_stage:
        stage = next(s for s in STAGES if s.name == args.run_stage)
        work = args.work / stage.name
        work.mkdir(parents=True, exist_ok=True)
        ctx = StageContext(stage, args.index, args.out, work, args.dry_run, args.budget_s, args.deadline)
        return run_stage_here(ctx)
    return run_lease(args.out, args.work, args.dry_run)


if __name__ == "__main__":
    sys.exit(main())
