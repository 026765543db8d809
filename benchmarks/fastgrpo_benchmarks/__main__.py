"""``python -m benchmarks`` / ``fastgrpo-bench``: run the suite for this device through pytest-benchmark.

It runs pytest on the benchmark cases (``benchmarks/fastgrpo_benchmarks/cases/``) with ``--benchmark-only``, so the
cases, timing and
statistics are pytest-benchmark's, and the cases' conftest prints the table and writes results.json / results.csv /
table.md / PNG figures (and pytest-benchmark's own JSON) under ``benchmarks/results/local/<suite>/`` (git-ignored) or
``--out DIR`` (committed reference results: ``--out benchmarks/results/<device>-<date>``).
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

from .harness.failures import failure_lines

CASES = Path(__file__).resolve().parent / "cases"
MODULES = ("test_bench_ops.py", "test_bench_trainer.py")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fastgrpo-bench", description=__doc__)
    parser.add_argument(
        "--suite", default="auto", help="auto (device's default), cpu, cpu-large, cpu-tiny, gpu, gpu-quick, lease, ..."
    )
    parser.add_argument("--out", default=None, help="results folder (default benchmarks/results/local/<suite>)")
    parser.add_argument("--impl", action="append", default=None, help="only this implementation (repeatable)")
    parser.add_argument("-k", dest="keyword", default=None, help="pytest -k expression to pick cases")
    parser.add_argument("--no-plots", action="store_true", help="skip the PNG figures")
    parser.add_argument("--no-trainer", action="store_true", help="skip the trainer-step cases")
    parser.add_argument("--trainer-only", action="store_true", help="only the trainer-step cases")
    parser.add_argument("pytest_args", nargs="*", help="extra pytest arguments (after --)")
    return parser


def build_pytest_args(argv: list[str] | None = None) -> list[str]:
    args = _parser().parse_args(argv)
    import torch

    from .harness.suites import default_results_dir, resolve_suite

    suite = resolve_suite(args.suite, torch.cuda.is_available())  # fails early, with the choices, on a bad name
    out_dir = Path(args.out) if args.out else default_results_dir(suite)
    modules = [
        m for m in MODULES if not (args.no_trainer and "trainer" in m) and not (args.trainer_only and "ops" in m)
    ]
    out = ["-p", "no:cacheprovider", "-q", "-rfEs", "--benchmark-only", f"--rootdir={CASES.parents[2]}"]
    out += [str(CASES / m) for m in modules] + [f"--bench-suite={suite.name}", f"--bench-out={out_dir}"]
    out.append(f"--benchmark-json={out_dir / 'pytest-benchmark.json'}")
    out += ["--benchmark-columns=min,median,max,rounds", "--benchmark-sort=name"]
    for impl in args.impl or []:
        out.append(f"--bench-impl={impl}")
    if args.keyword:
        out += ["-k", args.keyword]
    if args.no_plots:
        out.append("--bench-no-plots")
    return out + list(args.pytest_args)


def run_pytest_suite(argv: list[str] | None = None) -> int:
    """The op and trainer cases of a named suite (``harness/suites.py``), through pytest-benchmark."""
    import pytest

    if not (CASES / MODULES[0]).is_file():
        print(f"fastgrpo-bench: the benchmark cases are not installed ({CASES}); run it from a source checkout: "
              "pip install -e '.[bench]' && python -m benchmarks", file=sys.stderr)  # fmt: skip
        return 2
    try:
        args = build_pytest_args(argv)
    except ValueError as exc:
        print(f"fastgrpo-bench: {exc}", file=sys.stderr)
        return 2
    out_dir = next(Path(a.split("=", 1)[1]) for a in args if a.startswith("--bench-out="))
    out_dir.mkdir(parents=True, exist_ok=True)
    started = time.time()
    rc = int(pytest.main(args))
    failures = failure_lines(_rows(out_dir / "results.json", newer_than=started))
    if failures:  # the very last lines, after pytest's own summary
        print("\n".join(failures), file=sys.stderr)
    return rc if rc != 0 or not failures else 1


def _rows(path: Path, newer_than: float) -> list[dict]:
    """The rows of this run's results.json (none if the run wrote none: a stale file from an earlier run is not
    read)."""
    try:
        if path.stat().st_mtime < newer_than:
            return []
        return json.loads(path.read_text()).get("rows", [])
    except (OSError, ValueError):
        return []


# Suites that are not pytest-benchmark case grids: name -> entry point taking the full argv (one line per suite).
SUITE_RUNNERS: dict[str, Callable[[list[str]], int]] = {
    "curves": lambda argv: importlib.import_module(f"{__package__}.curves.__main__").main(argv),  # training curves
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    known, _ = _parser().parse_known_args(argv)
    return SUITE_RUNNERS.get(known.suite, run_pytest_suite)(argv)


if __name__ == "__main__":
    sys.exit(main())
