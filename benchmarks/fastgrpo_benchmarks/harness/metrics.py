"""The suite's arithmetic, kept free of torch so tests can check it from known inputs.

FLOP counts are those the project's performance targets are stated in, identical for every implementation of a
mode so TFLOP/s compares implementations on the same numerator: the GEMM work a logits-free implementation must do.
Forward: one GEMM, ``2 N H V``. A trainable head: forward, recompute (the logits cannot be kept), dX and dW,
``8 N H V``. A frozen head: ``4 N H V`` (forward plus the dX product, which fastgrpo folds into its forward). The
GRPO-loss mode has a trainable head. The elementwise softmax / loss work is ignored (under 1% of the GEMM work at these
hidden sizes).
"""

from __future__ import annotations

from collections.abc import Iterable

GEMMS_PER_MODE = {"fwd": 1, "fwd_logp": 1, "fwd_all": 1, "fwd_bwd": 4, "fwd_bwd_frozen": 2, "grpo": 4}


def model_flops(mode: str, tokens: int, hidden: int, vocab: int) -> int:
    """Useful FLOPs of one call in ``mode``: ``2 N H V`` per GEMM the mode needs."""
    if mode not in GEMMS_PER_MODE:
        raise ValueError(f"unknown mode {mode!r}; choose one of {tuple(GEMMS_PER_MODE)}")
    return 2 * tokens * hidden * vocab * GEMMS_PER_MODE[mode]


def tflops(flops: float, seconds: float) -> float:
    """Achieved TFLOP/s (10^12 FLOP per second); NaN for a non-positive time."""
    return flops / seconds / 1e12 if seconds > 0 else float("nan")


def matmul_flops(m: int, n: int, k: int) -> int:
    """FLOPs of an ``[m, k] @ [k, n]`` product (one multiply and one add per term)."""
    return 2 * m * n * k


def roofline_percent(achieved_tflops: float, peak_tflops: float) -> float:
    """Achieved throughput as a percentage of the matmul throughput measured in the same run."""
    return 100.0 * achieved_tflops / peak_tflops if peak_tflops > 0 else float("nan")


def ratio(baseline: float | None, value: float | None) -> float:
    """``baseline / value``: > 1 means ``value`` is smaller (faster, or less memory) than the baseline."""
    if baseline is None or value is None or value <= 0 or baseline < 0:
        return float("nan")
    return baseline / value


def peak_extra_bytes(peak: int, baseline: int, retained: int) -> int:
    """Peak extra memory of a call: allocator peak minus what was live before it and what it hands back.

    ``baseline`` is the allocated memory just before the call (the inputs), ``retained`` the bytes of the outputs and
    gradients the call leaves allocated. What is left is the call's own working memory at its worst moment (never
    negative: allocator rounding can make the difference a few bytes below zero).
    """
    return max(0, peak - baseline - retained)


def peak_live_excluding(events: Iterable[tuple[int, int]], handed_back: set[int]) -> int:
    """Peak of the bytes live during a call, not counting the allocations it hands back.

    ``events`` are time-ordered ``(pointer, size)`` pairs, size > 0 for an allocation and < 0 for a free (the
    profiler's allocation events). An allocation is handed back when its pointer is in ``handed_back`` and it is still
    live at the end (a pointer freed and reused by the returned tensor later is counted while it was a temporary).
    The result is "allocator peak minus the returned outputs and gradients" taken at every instant, so a temporary
    peak before the gradients exist is not hidden by subtracting gradients allocated later.
    """
    events = list(events)
    live_at_end: dict[int, int] = {}  # pointer -> index of the allocation still live at the end
    for i, (ptr, size) in enumerate(events):
        if size > 0:
            live_at_end[ptr] = i
        else:
            live_at_end.pop(ptr, None)
    excluded = {i for ptr, i in live_at_end.items() if ptr in handed_back}  # never freed: no free to skip
    current = peak = 0
    for i, (_, size) in enumerate(events):
        if i not in excluded:
            current += size
            peak = max(peak, current)
    return peak


def timed_rounds(estimate_seconds: float, target_seconds: float, min_rounds: int, max_rounds: int) -> int:
    """How many timed rounds fill ``target_seconds`` given one round's estimated time, clamped to the bounds."""
    if estimate_seconds <= 0:
        return max_rounds
    return int(min(max_rounds, max(min_rounds, round(target_seconds / estimate_seconds))))


def max_abs_error(values: Iterable[float]) -> float:
    """Largest of several per-tensor errors (NaN propagates: a NaN anywhere must not pass as a small error)."""
    worst = 0.0
    for v in values:
        if v != v:  # NaN
            return float("nan")
        worst = max(worst, v)
    return worst
