"""The lease's stages (``lease.STAGES``): each takes a ``StageContext`` and returns its result dict.

Sizes come from the ``lease`` suite on the GPU and the ``lease-dry-run`` suite in the CPU dry run
(``harness/suites.py``); nothing else differs between the two.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
from pathlib import Path
from typing import Any

from .compile_timer import cache_dir, cache_entries

SMI_FIELDS = ("name", "driver_version", "memory.total", "clocks.sm", "clocks.max.sm", "clocks.mem", "clocks.max.mem",
              "clocks.applications.graphics", "power.limit", "pstate", "temperature.gpu")  # fmt: skip
# Benchmark rows past this many seconds of a stage's budget are recorded as skipped, leaving time to write results.
RESULTS_MARGIN_S = 25.0


def suite_name(ctx: Any) -> str:
    return "lease-dry-run" if ctx.dry_run else "lease"


def _smi() -> dict[str, str]:
    try:
        out = subprocess.run(["nvidia-smi", f"--query-gpu={','.join(SMI_FIELDS)}", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20, check=True).stdout  # fmt: skip
    except (OSError, subprocess.SubprocessError) as exc:
        return {"error": f"nvidia-smi: {type(exc).__name__}"}
    first = out.strip().splitlines()[0] if out.strip() else ""
    return dict(zip(SMI_FIELDS, (v.strip() for v in first.split(","))))


def provenance(ctx: Any) -> dict[str, Any]:
    import torch

    from fastgrpo import env

    from ..harness.environment import describe

    device = "cuda" if torch.cuda.is_available() else "cpu"
    info = describe(device)
    smi = _smi()
    setup_path = ctx.work.parent / "setup.json"  # written by run.sh: the wheels it installed, the cache it was given
    setup = json.loads(setup_path.read_text()) if setup_path.is_file() else {}
    return {
        **info,
        "clocks": {k: v for k, v in smi.items() if k.startswith(("clocks", "power", "pstate", "temp"))} or smi,
        "nvidia_smi": smi,
        "capability": list(torch.cuda.get_device_capability(0)) if device == "cuda" else None,
        "wheels": setup.get("wheels", []),
        "site_dir": setup.get("site_dir", ""),
        "triton_cache": {
            "dir": str(cache_dir()),
            "carried": bool(setup.get("triton_cache_carried")),
            "entries_at_start": cache_entries(),
        },
        "interpreter": env.triton_interpret(),
    }


def _matmul(ctx: Any, suite: Any) -> float:
    import torch

    from ..harness.roofline import measure_matmul_tflops

    return measure_matmul_tflops(suite.device, getattr(torch, suite.dtype), repeats=suite.matmul_repeats)


def _run_suite(ctx: Any, extra: list[str]) -> tuple[int, dict[str, Any] | None]:
    """The benchmark suite in this process (pytest-benchmark), its results in the stage's work folder."""
    from ..__main__ import run_pytest_suite

    os.environ["FASTGRPO_BENCH_TIME_BUDGET_S"] = str(max(1.0, ctx.remaining_s() - RESULTS_MARGIN_S))
    out = ctx.work / "results"
    rc = run_pytest_suite(["--suite", suite_name(ctx), "--out", str(out), "--no-plots", *extra])
    path = out / "results.json"
    return rc, json.loads(path.read_text()) if path.is_file() else None


def ops(ctx: Any) -> dict[str, Any]:
    """The op benchmark: every shape x mode x implementation of the suite, matmul ceiling of the same run."""
    import torch

    from ..harness.suites import resolve_suite
    from ..reports.targets import evaluate

    suite = resolve_suite(suite_name(ctx), torch.cuda.is_available())
    partial = {"suite": suite.name, "matmul_tflops": _matmul(ctx, suite), "rows": [], "targets": []}
    ctx.flush(partial)  # a timeout keeps the ceiling; the rows come from rows.partial.jsonl
    rc, payload = _run_suite(ctx, ["--no-trainer"])
    if payload is None:
        raise RuntimeError(f"the benchmark suite wrote no results (exit status {rc})")
    payload["matmul_tflops"] = max(payload["matmul_tflops"], partial["matmul_tflops"])
    return {"suite": suite.name, "exit_code": rc, "matmul_tflops": payload["matmul_tflops"],
            "environment": payload["environment"], "rows": payload["rows"], "targets": evaluate(payload)}  # fmt: skip


def trainer(ctx: Any) -> dict[str, Any]:
    """One GRPO step and one SFT step per model shape, stock trl vs fastgrpo (time, peak memory), the longest GRPO
    completion that fits the suite's memory budget (GPU), and the SFT step's target (faster than trl's)."""
    from ..reports.targets import evaluate

    ctx.flush({"targets": []})  # a timeout salvages the finished rows and evaluates their targets
    rc, payload = _run_suite(ctx, ["--trainer-only", "--impl", "fastgrpo", "--impl", "trl_chunked"])
    if payload is None:
        raise RuntimeError(f"the trainer cases wrote no results (exit status {rc})")
    return {"suite": payload["environment"].get("suite"), "exit_code": rc, "rows": payload["rows"],
            "targets": evaluate(payload)}  # fmt: skip


def salvage_rows(ctx: Any, partial: dict[str, Any]) -> dict[str, Any]:
    """After a timeout: the suite's results.json if it got that far, else the rows it finished (rows.partial.jsonl)
    derived with the ceiling measured first."""
    from ..reports.report import derive
    from ..reports.targets import evaluate

    results = ctx.work / "results"
    out = {**partial, "suite": partial.get("suite", suite_name(ctx))}
    if (results / "results.json").is_file():
        payload = json.loads((results / "results.json").read_text())
        out.update(rows=payload["rows"], environment=payload["environment"])
        out["matmul_tflops"] = max(payload["matmul_tflops"], partial.get("matmul_tflops") or 0.0)
    else:
        path = results / "rows.partial.jsonl"
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []
        out["rows"] = derive(rows, partial.get("matmul_tflops") or float("nan"))
    if "targets" in partial:
        out["targets"] = evaluate({"rows": out["rows"]})
    return out


def _tune_module() -> Any:
    path = Path(__file__).resolve().parents[3] / "tools" / "tune.py"
    spec = importlib.util.spec_from_file_location("fastgrpo_tools_tune", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def tune(ctx: Any) -> dict[str, Any]:
    """The launch-config candidates at the two largest shapes (tools/tune.py), with the time left."""
    out = ctx.work / "tune"
    if ctx.dry_run:
        argv = ["--device", "cpu", "--hidden", "16", "--tokens", "21", "--vocab", "150"]
    else:
        argv = ["--hidden", "1536", "3584", "--tokens", "16384"]
    argv += ["--out", str(out), "--budget-s", str(max(1.0, ctx.remaining_s() - 20))]
    ctx.flush({"argv": argv})
    rc = _tune_module().main(argv)
    return {**salvage_tune(ctx, {"argv": argv}), "exit_code": rc}


def salvage_tune(ctx: Any, partial: dict[str, Any]) -> dict[str, Any]:
    out = ctx.work / "tune"
    log_path = out / "tune_log.jsonl"
    log = [json.loads(line) for line in log_path.read_text().splitlines() if line.strip()] if log_path.is_file() else []
    tables = sorted(p for p in out.glob("*.json"))
    table = json.loads(tables[0].read_text()) if tables else {}
    md = out / "tune.md"
    return {**partial, "entries": table.get("entries", []), "table": table, "log": log,
            "markdown": md.read_text() if md.is_file() else ""}  # fmt: skip
