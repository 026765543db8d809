"""``python -m benchmarks`` / ``fastgrpo-bench``: run the suite for this device through pytest-benchmark.

It runs pytest on the benchmark modules with ``--benchmark-only``, so the cases, timing and statistics are
pytest-benchmark's, and the suite's conftest prints the table and writes results.json / results.csv / table.md /
PNG figures (and pytest-benchmark's own JSON) under ``benchmarks/results/<suite>/`` or ``--out``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
MODULES = ("test_bench_ops.py", "test_bench_trainer.py")


def build_pytest_args(argv: list[str] | None = None) -> list[str]:
    parser = argparse.ArgumentParser(prog="fastgrpo-bench", description=__doc__)
    parser.add_argument(
        "--suite", default="auto", help="auto (device's default), cpu, cpu-large, cpu-tiny, gpu, gpu-quick"
    )
    parser.add_argument("--out", default=None, help="results folder (default benchmarks/results/<suite>)")
    parser.add_argument("--impl", action="append", default=None, help="only this implementation (repeatable)")
    parser.add_argument("-k", dest="keyword", default=None, help="pytest -k expression to pick cases")
    parser.add_argument("--no-plots", action="store_true", help="skip the PNG figures")
    parser.add_argument("--no-trainer", action="store_true", help="skip the trainer-step cases")
    parser.add_argument("pytest_args", nargs="*", help="extra pytest arguments (after --)")
    args = parser.parse_args(argv)
    import torch

    from .suites import default_results_dir, resolve_suite

    suite = resolve_suite(args.suite, torch.cuda.is_available())  # fails early, with the choices, on a bad name
    out_dir = Path(args.out) if args.out else default_results_dir(suite)
    modules = [m for m in MODULES if not (args.no_trainer and "trainer" in m)]
    out = ["-p", "no:cacheprovider", "-q", "-rs", "--benchmark-only", f"--rootdir={HERE.parent}"]
    out += [str(HERE / m) for m in modules] + [f"--bench-suite={suite.name}", f"--bench-out={out_dir}"]
    out.append(f"--benchmark-json={out_dir / 'pytest-benchmark.json'}")
    out += ["--benchmark-columns=min,median,max,rounds", "--benchmark-sort=name"]
    for impl in args.impl or []:
        out.append(f"--bench-impl={impl}")
    if args.keyword:
        out += ["-k", args.keyword]
    if args.no_plots:
        out.append("--bench-no-plots")
    return out + list(args.pytest_args)


def main(argv: list[str] | None = None) -> int:
    if {"curves", "--suite=curves"} & {*(sys.argv[1:] if argv is None else argv)}:  # training curves (curves/)
        return __import__(f"{__package__}.curves.__main__", fromlist=["main"]).main(argv)
    import pytest

    try:
        args = build_pytest_args(argv)
    except ValueError as exc:
        print(f"fastgrpo-bench: {exc}", file=sys.stderr)
        return 2
    out_dir = next(Path(a.split("=", 1)[1]) for a in args if a.startswith("--bench-out="))
    out_dir.mkdir(parents=True, exist_ok=True)
    return int(pytest.main(args))


if __name__ == "__main__":
    sys.exit(main())
