"""Outputs of a curves run: metrics.csv (every logged metric per step), samples.md, check.json / check.md, PNGs."""

from __future__ import annotations

import csv
import json
import math
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

PLOTTED = ("reward", "kl", "entropy", "clip_ratio/region_mean", "grad_norm")
COLORS = {"trl": "tab:blue", "fastgrpo": "tab:orange"}


@dataclass
class LoggedRun:
    """A run read back from metrics.csv (``--replot``): what the plots and the check need."""

    trainer: str
    config: str
    seed: int
    logs: list[dict[str, float]]


def read_csv(path: Path) -> list[LoggedRun]:
    runs: dict[tuple[str, str, int], LoggedRun] = {}
    with path.open(newline="") as f:
        for row in csv.DictReader(f):
            key = (row.pop("config"), row.pop("trainer"), int(row.pop("seed")))
            run = runs.setdefault(key, LoggedRun(key[1], key[0], key[2], []))
            run.logs.append({"step": float(row.pop("step")), **{k: float(v) for k, v in row.items() if v != ""}})
    return list(runs.values())


def write_csv(path: Path, runs: list[Any]) -> None:
    keys = sorted({k for r in runs for e in r.logs for k in e} - {"step"})
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["config", "trainer", "seed", "step", *keys])
        for r in runs:
            for e in r.logs:
                cells = [_cell(e.get(k, "")) for k in keys]
                w.writerow([r.config, r.trainer, r.seed, int(e["step"]), *cells])


def _cell(value: Any) -> Any:
    return f"{value:.7g}" if isinstance(value, float) else value  # 7 significant digits: fp32 precision


def write_samples(path: Path, runs: list[Any]) -> None:
    lines = ["# Sampled completions (first completion of three prompts per sampled generation batch)", ""]
    for r in runs:
        if r.seed != min(x.seed for x in runs if x.config == r.config):
            continue
        lines += [f"## {r.config} / {r.trainer} / seed {r.seed}", "", "| step | prompt | completion | reward |"]
        lines.append("|---|---|---|---|")
        for s in r.samples:
            lines.append(f"| {s['step']} | `{s['prompt']}` | `{s['completion']}` | {s['reward']:.2f} |")
        lines.append("")
    path.write_text("\n".join(lines))


def _series(runs: list[Any], key: str) -> tuple[list[int], list[list[float]]]:
    """Steps where ``key`` was logged and, per seed, its values (NaN where a seed lacks a step)."""
    steps = sorted({int(e["step"]) for r in runs for e in r.logs if key in e})
    out = []
    for r in runs:
        by_step = {int(e["step"]): float(e[key]) for e in r.logs if key in e}
        out.append([by_step.get(s, math.nan) for s in steps])
    return steps, out


def _smooth(xs: list[float], k: int) -> list[float]:
    out = []
    for i in range(len(xs)):
        win = [x for x in xs[max(0, i - k + 1) : i + 1] if not math.isnan(x)]
        out.append(sum(win) / len(win) if win else math.nan)
    return out


def _band(values: list[list[float]]) -> tuple[list[float], list[float], list[float]]:
    """Per step: mean over seeds, and the lowest and highest seed (the band)."""
    mean, lo, hi = [], [], []
    for col in zip(*values):
        xs = [x for x in col if not math.isnan(x)]
        mean.append(sum(xs) / len(xs) if xs else math.nan)
        lo.append(min(xs) if xs else math.nan)
        hi.append(max(xs) if xs else math.nan)
    return mean, lo, hi


def plot_metric(ax: Any, runs: list[Any], key: str, smooth: int) -> bool:
    """Mean over seeds (line) and the seeds' range (band) per trainer; False when ``key`` was never logged."""
    drew = False
    for trainer in COLORS:
        group = [r for r in runs if r.trainer == trainer]
        steps, values = _series(group, key)
        if not steps:
            continue
        k = 1 if key == "reward" else smooth  # reward is logged once per generation batch: no extra smoothing
        mean, lo, hi = _band([_smooth(v, k) for v in values])
        label = f"{trainer} (n={len(group)} seeds)"
        ax.plot(steps, mean, color=COLORS[trainer], label=label, lw=1.4)
        ax.fill_between(steps, lo, hi, color=COLORS[trainer], alpha=0.2, lw=0)
        drew = True
    ax.set_title(key if drew else f"{key} (not logged in this configuration)", fontsize=9)
    ax.set_xlabel("optimizer step", fontsize=8)
    ax.tick_params(labelsize=7)
    return drew


def plot_config(path: Path, runs: list[Any], title: str, smooth: int = 8) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(PLOTTED), figsize=(4 * len(PLOTTED), 3.2))
    for ax, key in zip(axes, PLOTTED):
        plot_metric(ax, runs, key, smooth)
    axes[0].legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def plot_readme(path: Path, reward_runs: list[Any], kl_runs: list[Any], title: str, smooth: int = 8) -> None:
    """The README figure: reward of the default configuration and KL of the beta > 0 one (dapo logs no KL at beta 0)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
    plot_metric(axes[0], reward_runs, "reward", smooth)
    axes[0].set_title(f"reward ({reward_runs[0].config})", fontsize=9)
    if kl_runs:
        plot_metric(axes[1], kl_runs, "kl", smooth)
        axes[1].set_title(f"kl ({kl_runs[0].config})", fontsize=9)
    axes[0].legend(fontsize=7)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def write_check(out: Path, config: str, learn: list[Any], parity: list[Any], ok: bool) -> None:
    from . import stats

    data = {
        "config": config,
        "ok": ok,
        "family_alpha": stats.FAMILY_ALPHA,
        "window_fraction": stats.WINDOW_FRACTION,
        "learn": [vars(x) for x in learn],
        "parity": [vars(x) for x in parity],
    }
    (out / f"check-{config}.json").write_text(json.dumps(data, indent=1))
    lines = [f"## Parity check, {config}: {'PASS' if ok else 'FAIL'}", ""]
    lines += [
        "| trainer | first-window reward | final-window reward | gain | margin (99% LCB) | ok |",
        "|---|---|---|---|---|---|",
    ]
    for x in learn:
        lines.append(f"| {x.trainer} | {x.first:.3f} | {x.final:.3f} | {x.gain:+.3f} | {x.margin:.3f} | {x.ok} |")
    lines += [
        "",
        "| metric | trl | fastgrpo | gap | Welch p | alpha (Bonferroni) | ok |",
        "|---|---|---|---|---|---|---|",
    ]
    for x in parity:
        cells = [x.metric, f"{x.trl_mean:.4g}", f"{x.fast_mean:.4g}", f"{x.gap:+.3g}", f"{x.p_value:.3g}"]
        lines.append("| " + " | ".join([*cells, f"{x.alpha:.2g}", str(x.ok)]) + " |")
    (out / f"check-{config}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines), flush=True)


def group(runs: list[Any]) -> dict[str, list[Any]]:
    out: dict[str, list[Any]] = defaultdict(list)
    for r in runs:
        out[r.config].append(r)
    return out
