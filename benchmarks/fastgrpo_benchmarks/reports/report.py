"""Turn the recorded rows into the derived figures, a printed table, and CSV / JSON / Markdown files."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

from ..harness.metrics import ratio, roofline_percent, tflops
from ..harness.suites import BASELINE

CSV_FIELDS = (
    "case", "suite", "shape", "tokens", "hidden", "vocab", "seq_len", "dtype", "mode", "impl", "status",
    "median_ms", "rounds", "tflops", "roofline_pct", "peak_extra_mib", "err_value", "err_grad",
    "speedup_vs_trl", "memory_ratio_vs_trl", "max_completion_len", "flops", "median_s", "peak_extra_bytes",
    "peak_extra_counter_bytes",
    "reason", "note",
)  # fmt: skip


def derive(rows: list[dict[str, Any]], matmul_tflops: float) -> list[dict[str, Any]]:
    """Add TFLOP/s, % of the measured matmul throughput, MiB and the ratios against trl's head (same shape/mode).

    ``speedup_vs_trl = t_trl / t``, ``memory_ratio_vs_trl = peak_trl / peak``: above 1 is better than trl.
    """
    baseline = {
        (r["case"], r["shape"], r["mode"]): r for r in rows if r["impl"] == BASELINE and r.get("status") == "ok"
    }
    out = []
    for r in rows:
        d = dict(r)
        if d.get("status") == "ok" and d.get("median_s") is not None:
            if d.get("flops"):
                d["tflops"] = tflops(d["flops"], d["median_s"])
                d["roofline_pct"] = roofline_percent(d["tflops"], matmul_tflops)
            d["median_ms"] = d["median_s"] * 1e3
            d["peak_extra_mib"] = d["peak_extra_bytes"] / 2**20
            base = baseline.get((d["case"], d["shape"], d["mode"]))
            if base is not None and base.get("median_s") is not None:
                d["speedup_vs_trl"] = ratio(base["median_s"], d["median_s"])
                d["memory_ratio_vs_trl"] = ratio(base["peak_extra_bytes"], d["peak_extra_bytes"])
        out.append(d)
    return out


def _fmt(value: Any, spec: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return format(value, spec)


TABLE_COLUMNS = (
    ("shape", "shape", "s"), ("mode", "mode", "s"), ("impl", "impl", "s"), ("median_ms", "ms", ".2f"),
    ("tflops", "TFLOP/s", ".3f"), ("roofline_pct", "%mm", ".1f"), ("peak_extra_mib", "extra MiB", ".1f"),
    ("err_value", "err val", ".1e"), ("err_grad", "err grad", ".1e"), ("speedup_vs_trl", "x trl time", ".2f"),
    ("memory_ratio_vs_trl", "x trl mem", ".2f"), ("max_completion_len", "max len", "d"),
)  # fmt: skip


def table_lines(rows: list[dict[str, Any]], markdown: bool = False) -> list[str]:
    """A fixed-width (or Markdown) table; skipped and failed rows show their reason."""
    header = [title for _, title, _ in TABLE_COLUMNS]
    body = []
    for r in rows:
        cells = [_fmt(r.get(key), spec) for key, _, spec in TABLE_COLUMNS]
        if r.get("status") != "ok":
            cells[3:] = [f"{r.get('status')}: {r.get('reason', '')}"] + [""] * (len(cells) - 4)
        elif r.get("note"):
            cells[2] += "*"
        body.append(cells)
    if markdown:
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(c for c in cells if c or not markdown) + " |" for cells in body]
        return lines
    widths = [max([len(header[i])] + [len(c) for c in (b[i] for b in body) if len(c) < 40]) for i in range(3)]
    widths += [max(len(header[i]), *(len(b[i]) for b in body if b[3][:1].isdigit() or b[3] == "-"), 1)
               for i in range(3, len(header))]  # fmt: skip
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths))]
    for cells in body:
        if cells[3][:1].isdigit() or cells[3] == "-":
            lines.append("  ".join(c.ljust(w) for c, w in zip(cells, widths)))
        else:  # a reason runs to the end of the line
            lines.append("  ".join(c.ljust(w) for c, w in zip(cells[:3], widths)) + "  " + cells[3])
    return lines


def notes_lines(rows: list[dict[str, Any]]) -> list[str]:
    notes = sorted({f"{r['impl']}*: {r['note']}" for r in rows if r.get("note") and r.get("status") == "ok"})
    return notes


def write_results(out_dir: Path, env: dict[str, Any], rows: list[dict[str, Any]], matmul: float) -> dict[str, Path]:
    """results.json (provenance + rows), results.csv and table.md under ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"json": out_dir / "results.json", "csv": out_dir / "results.csv", "md": out_dir / "table.md"}
    clean = [{k: None if isinstance(v, float) and math.isnan(v) else v for k, v in r.items()} for r in rows]
    payload = {"environment": env, "matmul_tflops": matmul, "baseline": BASELINE, "rows": clean}
    paths["json"].write_text(json.dumps(payload, indent=1, default=str) + "\n")  # NaN written as null: strict JSON
    with paths["csv"].open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(CSV_FIELDS), extrasaction="ignore")
        writer.writeheader()
        for r in rows:
            writer.writerow({k: r.get(k, "") for k in CSV_FIELDS})
    head = [
        f"Device: {env.get('device_name')} ({env.get('device_type')}, driver {env.get('driver')}), "
        f"{env.get('date_utc')}, suite `{env.get('suite')}`, commit {env.get('git_commit') or 'unknown'}.",
        "Versions: " + ", ".join(f"{k} {v}" for k, v in env.get("versions", {}).items()) + ".",
        f"Matmul throughput measured in the same run: {matmul:.4g} TFLOP/s ({env.get('matmul_dtype', '')}).",
        "",
    ]
    paths["md"].write_text("\n".join(head + table_lines(rows, markdown=True) + [""] + notes_lines(rows)) + "\n")
    return paths
