"""Clocks for pytest-benchmark: CUDA events on a GPU (device time), ``perf_counter`` on CPU.

pytest-benchmark calls its timer right before and right after the timed call and keeps the difference.
``cuda_event_clock`` records an event on the current stream, waits for it and returns the device time elapsed since
an origin event: the difference of two readings is the device time of the work between them, as
``triton.testing.do_bench`` measures it. Pass it with ``--benchmark-timer`` (the suite's conftest does so on GPU).
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch

_origin: torch.cuda.Event | None = None


def cuda_event_clock() -> float:
    """Seconds of device time since the first call (events on the current CUDA stream)."""
    global _origin
    if _origin is None:
        _origin = torch.cuda.Event(enable_timing=True)
        _origin.record()
    event = torch.cuda.Event(enable_timing=True)
    event.record()
    event.synchronize()
    return _origin.elapsed_time(event) / 1000.0


def synchronize(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def time_once(fn: Callable[[], object], device: str) -> float:
    """Seconds for one call, waiting for the device before and after (used to size the timed rounds)."""
    synchronize(device)
    start = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - start
