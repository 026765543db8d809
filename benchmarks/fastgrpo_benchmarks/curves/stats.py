"""The parity check of the quick mode: both trainers learn, and their final-window metrics are compatible.

Unit of replication: one seed (one training run). For each run and metric, the window mean is the mean of the values
logged in the first / last ``WINDOW_FRACTION`` of the optimizer steps.

1. Learning, per trainer: the per-seed reward gain ``g = final - first`` must have a one-sided 99% lower confidence
   bound above zero: ``mean(g) > t_{0.99, n-1} * sd(g) / sqrt(n)`` (the margin comes from the seed spread).
2. Parity: for every metric in ``PARITY_METRICS`` (those present), Welch's two-sample t-test of the two trainers'
   final-window means across seeds, rejected at ``FAMILY_ALPHA / len(metrics)`` (Bonferroni). If both trainers
   compute the same objective, the seeds' window means have the same distribution for each metric, so the chance
   that any metric is rejected is at most ``FAMILY_ALPHA`` = 1% (up to the t approximation of Welch's test).

The thresholds are constants here, fixed before the deliberately broken losses were run (see the README note).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from . import tdist

WINDOW_FRACTION = 0.2
FAMILY_ALPHA = 0.01
LEARN_CONFIDENCE = 0.99
PARITY_METRICS = (
    "reward",
    "kl",
    "entropy",
    "clip_ratio/region_mean",
    "grad_norm",
    "loss",
    "completions/mean_length",
)


def window_mean(logs: list[dict[str, float]], key: str, which: str) -> float:
    """Mean of ``key`` over the first or last ``WINDOW_FRACTION`` of the steps (NaN if never logged there)."""
    n = len(logs)
    w = max(1, int(round(n * WINDOW_FRACTION)))
    part = logs[:w] if which == "first" else logs[n - w :]
    values = [float(e[key]) for e in part if key in e and e[key] is not None and not math.isnan(float(e[key]))]
    return sum(values) / len(values) if values else math.nan


def _mean_sd(xs: list[float]) -> tuple[float, float]:
    m = sum(xs) / len(xs)
    sd = math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1)) if len(xs) > 1 else math.nan
    return m, sd


@dataclass
class LearnResult:
    trainer: str
    first: float
    final: float
    gain: float
    margin: float  # t_{0.99,n-1} * sd(gain) / sqrt(n)
    ok: bool


@dataclass
class ParityResult:
    metric: str
    trl_mean: float
    fast_mean: float
    gap: float  # fastgrpo - trl
    p_value: float
    alpha: float  # per-metric level (Bonferroni)
    ok: bool


def learn_check(trainer: str, runs: list[Any]) -> LearnResult:
    first = [window_mean(r.logs, "reward", "first") for r in runs]
    final = [window_mean(r.logs, "reward", "last") for r in runs]
    gains = [b - a for a, b in zip(first, final)]
    mean_gain, sd = _mean_sd(gains)
    n = len(gains)
    margin = tdist.ppf(LEARN_CONFIDENCE, n - 1) * sd / math.sqrt(n) if n > 1 else math.inf
    return LearnResult(trainer, _mean_sd(first)[0], _mean_sd(final)[0], mean_gain, margin, mean_gain > margin)


def parity_check(trl_runs: list[Any], fast_runs: list[Any]) -> list[ParityResult]:
    present = [
        m
        for m in PARITY_METRICS
        if all(not math.isnan(window_mean(r.logs, m, "last")) for r in [*trl_runs, *fast_runs])
    ]
    alpha = FAMILY_ALPHA / max(1, len(present))
    out = []
    for metric in present:
        a = [window_mean(r.logs, metric, "last") for r in trl_runs]
        b = [window_mean(r.logs, metric, "last") for r in fast_runs]
        (ma, sa), (mb, sb) = _mean_sd(a), _mean_sd(b)
        # Constant in both (e.g. a metric pinned at 0): compatible only if equal; Welch's t is undefined there.
        both_constant = sa == 0 and sb == 0
        p = (1.0 if ma == mb else 0.0) if both_constant else tdist.welch(a, b)[1]
        out.append(ParityResult(metric, ma, mb, mb - ma, p, alpha, p >= alpha))
    return out
