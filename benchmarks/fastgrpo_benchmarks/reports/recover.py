"""Write the results of a run that was stopped before its end (e.g. by a wall-clock limit) from the rows it left.

    python -m fastgrpo_benchmarks.reports.recover DIR [--suite gpu]

Reads ``DIR/rows.partial.jsonl`` (one row per finished case), re-measures the matmul ceiling on this device, and
writes results.json / results.csv / table.md and the figures as a complete run would.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from ..harness.environment import describe
from ..harness.roofline import measure_matmul_tflops
from ..harness.suites import resolve_suite
from .plots import write_plots
from .report import derive, table_lines, write_results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--suite", default=None)
    args = parser.parse_args(argv)
    partial = args.out_dir / "rows.partial.jsonl"
    if not partial.is_file():
        print(f"nothing to recover: {partial} does not exist", file=sys.stderr)
        return 1
    rows = [json.loads(line) for line in partial.read_text().splitlines() if line.strip()]
    suite = resolve_suite(args.suite or (rows[0]["suite"] if rows else None), torch.cuda.is_available())
    matmul = measure_matmul_tflops(suite.device, getattr(torch, suite.dtype))
    env = describe(suite.device) | {"matmul_dtype": suite.dtype, "suite": suite.name, "recovered_from_partial": True}
    derived = derive(rows, matmul)
    write_results(args.out_dir, env, derived, matmul)
    plots = write_plots(args.out_dir, derived, f"{env['device_name']}, {suite.dtype}, {env['date_utc']} (partial)")
    print("\n".join(table_lines(derived)))
    print(plots if isinstance(plots, str) else f"plots: {len(plots)} PNG files in {args.out_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
