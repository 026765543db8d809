"""``python -m fastgrpo_benchmarks.curves`` (or ``python -m benchmarks --suite curves``): training curves, stock trl
vs fastgrpo.

Trains the counting task (``task.py``) with trl's ``GRPOTrainer`` and ``FastGRPOTrainer(fastgrpo_backend="torch")``
from the same seeds, writes metrics.csv, samples.md, one PNG per configuration (and readme.png), and runs the
parity check (``stats.py``) on the checked configurations; the exit status is 1 when a check fails.

``--mode full`` (default): dapo, dapo with beta=0.1, LoRA; 4 seeds x 320 steps. ``--mode quick`` (CI): dapo with
beta=0.1; 24 seeds x 160 steps. ``--mutant NAME`` runs the same in a scratch copy of fastgrpo with a deliberately
broken loss (``mutants.py``): the check is expected to fail.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

from . import configs, mutants, report, runs, stats


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m fastgrpo_benchmarks.curves", description=__doc__.split("\n\n")[0])
    p.add_argument("--suite", default="curves", help=argparse.SUPPRESS)  # accepted from `python -m benchmarks`
    p.add_argument("--mode", choices=sorted(configs.MODES), default="full")
    p.add_argument("--out", default=None, help="results folder (default: a new folder under $TMPDIR)")
    p.add_argument("--seeds", type=int, default=None, help="override the mode's number of seeds")
    p.add_argument("--steps", type=int, default=None, help="override the mode's number of optimizer steps")
    p.add_argument("--config", action="append", default=None, help="only this configuration (repeatable)")
    p.add_argument("--mutant", choices=sorted(mutants.MUTANTS), default=None, help="run against a broken loss")
    p.add_argument("--replot", metavar="DIR", default=None, help="plots and check again from DIR/metrics.csv")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse(sys.argv[1:] if argv is None else argv)
    if args.replot:
        return replot(Path(args.replot), Path(args.out) if args.out else Path(args.replot))
    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="fastgrpo-curves-"))
    out.mkdir(parents=True, exist_ok=True)
    if args.mutant and os.environ.get(mutants.ACTIVE_ENV) != args.mutant:
        return mutants.rerun_in_scratch_copy(args.mutant, sys.argv[1:] if argv is None else argv)
    import torch

    torch.set_num_threads(1)  # the model is tiny: threads only add overhead (and CI has 2 cores)
    mode = configs.MODES[args.mode]
    seeds = mode.seeds if args.seeds is None else tuple(range(args.seeds))
    steps = mode.steps if args.steps is None else args.steps
    names = tuple(args.config) if args.config else mode.configs
    unknown = [n for n in names if n not in configs.CONFIGS]
    if unknown:
        print(f"curves: unknown --config {unknown}; choices: {sorted(configs.CONFIGS)}", file=sys.stderr)
        return 2
    if any(configs.CONFIGS[n].lora for n in names) and importlib.util.find_spec("peft") is None:
        print("curves: SKIPPING the LoRA configuration: peft is not installed (pip install peft)", file=sys.stderr)
        names = tuple(n for n in names if not configs.CONFIGS[n].lora)
    sample_steps = (1, (steps // 2 // 8) * 8 + 1, ((steps - 1) // 8) * 8 + 1)  # generation batches: start, mid, end
    root = Path(tempfile.mkdtemp(prefix="fastgrpo-curves-work-"))
    import fastgrpo

    if args.mutant:
        mutants.check_imported_copy()
    print(f"curves: mode={mode.name} configs={names} seeds={seeds} steps={steps} out={out}", flush=True)
    print(f"curves: fastgrpo from {Path(fastgrpo.__file__).parent}", flush=True)
    start, cpu_start = time.perf_counter(), time.process_time()
    results = []
    for name in names:
        for seed in seeds:
            for trainer in runs.TRAINERS:
                r = runs.run(trainer, configs.CONFIGS[name], seed, steps, root, sample_steps)
                results.append(r)
                print(f"  {name} seed={seed} {trainer:8s} {r.seconds:5.1f}s", flush=True)
    report.write_csv(out / "metrics.csv", results)
    report.write_samples(out / "samples.md", results)
    meta = {
        "mode": mode.name,
        "configs": list(names),
        "checked": [name for name in mode.checked if name in names],
        "seeds": list(seeds),
        "steps": steps,
        "training_wall_seconds": round(time.perf_counter() - start, 1),
        "training_cpu_seconds": round(time.process_time() - cpu_start, 1),
        "load_average_1min_at_end": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        "device": f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)",
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d"),
        "mutant": args.mutant,
        "versions": _versions(),
    }
    return analyse(out, results, meta)


def replot(src: Path, out: Path) -> int:
    """Plots and check again from a results folder's metrics.csv and run.json (no training)."""
    out.mkdir(parents=True, exist_ok=True)
    meta = json.loads((src / "run.json").read_text())
    return analyse(out, report.read_csv(src / "metrics.csv"), meta)


def analyse(out: Path, results: list, meta: dict) -> int:
    """PNGs, the parity check of the checked configurations, run.json; 0 when every check passed."""
    by_config = report.group(results)
    title = f"trl GRPOTrainer vs FastGRPOTrainer (torch backend), {meta['device']}, {meta['date']}"
    meta["plots"] = True
    try:
        for name, group in by_config.items():
            report.plot_config(out / f"curves-{name}.png", group, f"{name}: {title}")
        if "dapo" in by_config:
            report.plot_readme(out / "readme.png", by_config["dapo"], by_config.get("dapo-beta0.1", []), title)
    except ImportError as exc:  # matplotlib missing: the CSV and the check still count
        meta["plots"] = False
        print(f"curves: no plots ({exc})", file=sys.stderr)
    ok = True
    if len(meta["seeds"]) < 2:
        print("curves: parity check SKIPPED: it needs at least 2 seeds per trainer", flush=True)
        meta["checked"] = []
    for name in meta["checked"]:
        group = by_config[name]
        learn = [stats.learn_check(t, [r for r in group if r.trainer == t]) for t in runs.TRAINERS]
        parity = stats.parity_check(
            [r for r in group if r.trainer == "trl"], [r for r in group if r.trainer == "fastgrpo"]
        )
        config_ok = all(x.ok for x in learn) and all(x.ok for x in parity)
        report.write_check(out, name, learn, parity, config_ok)
        ok = ok and config_ok
    meta["ok"] = ok
    (out / "run.json").write_text(json.dumps(meta, indent=1))
    wall, load = meta.get("training_wall_seconds"), meta.get("load_average_1min_at_end")
    print(f"curves: {'PASS' if ok else 'FAIL'}; training {wall}s wall (1-min load average {load}); results in {out}")
    return 0 if ok else 1


def _versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {}
    for pkg in ("torch", "transformers", "trl", "peft", "accelerate"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            out[pkg] = "missing"
    return out


if __name__ == "__main__":
    sys.exit(main())
