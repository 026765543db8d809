"""One PNG per figure (grouped bars: one group per shape and mode, one bar per implementation).

matplotlib is optional (``pip install fastgrpo[bench]``); without it the plots are skipped with a message.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from ..harness.suites import IMPLS

FIGURES = {
    "median_ms": ("median time (ms)", True),
    "tflops": ("achieved TFLOP/s (model FLOPs)", False),
    "roofline_pct": ("% of measured matmul throughput", False),
    "peak_extra_mib": ("peak extra memory (MiB)", True),
    "err_value": ("max error vs float64 (value)", True),
    "err_grad": ("max error vs float64 (grad, scaled)", True),
    "speedup_vs_trl": ("speed-up vs trl 1.16 head (x)", False),
    "memory_ratio_vs_trl": ("memory ratio vs trl 1.16 head (x)", False),
}


def write_plots(out_dir: Path, rows: list[dict[str, Any]], title: str) -> list[Path] | str:
    """Write the figures; returns their paths, or the reason they were skipped."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed (pip install 'fastgrpo[bench]'): plots skipped"
    ok = [r for r in rows if r.get("status") == "ok"]
    groups = list(dict.fromkeys(f"{r['shape']}\n{r['mode']}" for r in ok))
    impls = [i for i in IMPLS if any(r["impl"] == i for r in ok)] + sorted({r["impl"] for r in ok} - set(IMPLS))
    paths = []
    for key, (label, log_scale) in FIGURES.items():
        values = {(f"{r['shape']}\n{r['mode']}", r["impl"]): r.get(key) for r in ok}
        if not any(isinstance(v, float | int) and not math.isnan(v) and v > 0 for v in values.values()):
            continue
        fig, ax = plt.subplots(figsize=(max(6.0, 1.2 * len(groups) + 2), 4.5))
        width = 0.8 / max(1, len(impls))
        for j, impl in enumerate(impls):
            ys = [values.get((g, impl)) for g in groups]
            xs = [i + (j - (len(impls) - 1) / 2) * width for i in range(len(groups))]
            ax.bar(xs, [y if isinstance(y, float | int) and y == y else 0.0 for y in ys], width, label=impl)
        ax.set_xticks(range(len(groups)), groups, fontsize=7)
        ax.set_ylabel(label)
        if log_scale:
            ax.set_yscale("log")
        if key in ("speedup_vs_trl", "memory_ratio_vs_trl"):
            ax.axhline(1.0, color="grey", linewidth=0.8)
        ax.set_title(f"{label}\n{title}", fontsize=9)
        ax.legend(fontsize=7)
        fig.tight_layout()
        path = out_dir / f"{key}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)
    return paths
