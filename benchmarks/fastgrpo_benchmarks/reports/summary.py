"""The README's performance section, generated from a run's results.json: a compact table and the figure to embed.

    python -m fastgrpo_benchmarks.reports.summary RESULTS   (results.json, a results folder, or a GPU lease's $OUT)

One line per (shape, mode): each implementation's median time, and fastgrpo's speed-up and memory ratio against
trl 1.16's chunked head; then the trainer steps. Device, driver, versions and date head the section.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import Any

from ..harness.suites import IMPLS
from .results_io import load_payload


def _ms(row: dict[str, Any] | None) -> str:
    if row is None:
        return "-"
    if row.get("status") != "ok":
        return "skipped" if row.get("status") == "skipped" else "failed"
    ms = row["median_s"] * 1e3
    return f"{ms:.1f}" if ms >= 10 else f"{ms:.3g}"


def _x(value: Any) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.2f}x"


def summary_lines(payload: dict[str, Any], figure: str | None = None) -> list[str]:
    env, rows = payload["environment"], payload["rows"]
    by = {(r["case"], r["shape"], r["mode"], r["impl"]): r for r in rows}
    impls = [i for i in IMPLS if any(r["impl"] == i and r["case"] == "op" for r in rows)]
    lines = [
        ("CPU DRY RUN, not measurements. " if env.get("dry_run") else "")
        + f"Measured on {env.get('device_name')} (driver {env.get('driver')}), {env.get('date_utc')}, "
        f"{env.get('matmul_dtype', '')}; "
        + ", ".join(f"{k} {v}" for k, v in env.get("versions", {}).items() if v != "not installed")
        + f". Matmul ceiling measured in the same run: {payload['matmul_tflops']:.4g} TFLOP/s.",
        "",
        "| shape | mode | " + " | ".join(f"{i} ms" for i in impls) + " | fastgrpo vs trl: time | memory |",
        "|---|---|" + "---|" * (len(impls) + 2),
    ]
    keys = list(dict.fromkeys((r["shape"], r["mode"]) for r in rows if r["case"] == "op"))
    for shape, mode in keys:
        fast = by.get(("op", shape, mode, "fastgrpo"), {})
        cells = [_ms(by.get(("op", shape, mode, i))) for i in impls]
        speed, mem = _x(fast.get("speedup_vs_trl")), _x(fast.get("memory_ratio_vs_trl"))
        lines.append(f"| {shape} | {mode} | " + " | ".join(cells) + f" | {speed} | {mem} |")
    trainer = [r for r in rows if r["case"] == "trainer"]
    if trainer:
        lines += [
            "",
            "| trainer step | trainer | variant | ms | peak extra MiB | max completion length |",
            "|---|---|---|---|---|---|",
        ]
        for r in trainer:
            if not r["mode"].endswith("step"):
                continue
            fit = {}
            if r["mode"] == "step":  # the memory-budget search runs for the GRPO step only
                fit = next((t for t in trainer if t["shape"] == r["shape"] and t["impl"] == r["impl"]
                            and t["mode"].startswith("max_len")), {})  # fmt: skip
            kind = "grpo" if r["mode"] == "step" else r["mode"].removesuffix("_step")
            peak = f"{r['peak_extra_bytes'] / 2**20:.0f}" if r.get("status") == "ok" else r.get("reason", "")
            lines.append(f"| {r['shape']} | {kind} | {r['impl']} | {_ms(r)} | {peak} | "
                         f"{fit.get('max_completion_len', '-')} |")  # fmt: skip
    if figure:
        lines += ["", f"![speed-up against trl 1.16's chunked head]({figure})"]
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("results", type=Path, help="results.json, a results folder, or a GPU lease's $OUT")
    parser.add_argument("--figure", default=None, help="path of the PNG to embed (e.g. the speed-up figure)")
    args = parser.parse_args(argv)
    payload = load_payload(args.results)
    print("\n".join(summary_lines(payload, args.figure)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
