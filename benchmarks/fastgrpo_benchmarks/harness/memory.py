"""Peak extra memory of one call: allocator peak minus the inputs (live before) and what the call hands back.

Both devices replay the profiler's allocation events (``profile_memory=True``: every tensor allocation and free of
the call, with its pointer, size and time). Their running sum starts at 0 (what was live before the call is the
baseline); allocations the call hands back (outputs and gradients, matched by pointer) are left out at every
instant, so a temporary peak before the gradients exist is not hidden by subtracting gradients allocated later
(``metrics.peak_live_excluding``). The profiled call runs slower, so it is never timed.

Why not something else on CPU: torch has no CPU allocator counters, tracemalloc does not see torch's allocations, and
peak RSS is blurred by glibc's retained pages (and a fresh process per case costs seconds of imports). On GPU the
CUDA caching allocator's counters give the targets' formula directly, ``max_memory_allocated - baseline - retained``;
it is recorded next to the event-based figure as ``peak_extra_counter_bytes`` (it can only be lower or equal: it
subtracts the gradients from the peak even when the peak came before they were allocated).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch

from ..peers.base import Outputs
from .metrics import peak_extra_bytes, peak_live_excluding


class MemoryReading(NamedTuple):
    peak_extra_bytes: int  # event-based (both devices)
    counter_bytes: int | None  # GPU allocator counters, the targets' formula (None on CPU)


def allocation_events(prof: torch.profiler.profile, device_type: str) -> list[tuple[int, int]]:
    """Time-ordered (pointer, signed size) of the profiled allocations on ``device_type``."""
    from torch._C._profiler import _EventType

    events: list[tuple[int, int, int]] = []
    stack = list(prof.profiler.kineto_results.experimental_event_tree())
    while stack:
        node = stack.pop()
        if node.tag == _EventType.Allocation and node.extra_fields.device.type == device_type:
            events.append((node.start_time_ns, node.extra_fields.ptr, node.extra_fields.alloc_size))
        stack.extend(node.children)
    events.sort()
    return [(ptr, size) for _, ptr, size in events]


def measure_memory(call: Callable[[], Outputs], device: str) -> tuple[MemoryReading, Outputs]:
    """Run ``call`` once under the profiler; return its memory reading and outputs."""
    from torch.profiler import ProfilerActivity, profile

    counter = None
    baseline = 0
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        baseline = torch.cuda.memory_allocated()
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        out = call()
        if device == "cuda":
            torch.cuda.synchronize()
    if device == "cuda":
        counter = peak_extra_bytes(torch.cuda.max_memory_allocated(), baseline, out.retained_bytes())
    events = allocation_events(prof, device)
    if not events and counter is not None:  # this build's profiler reported no allocations: counters only
        return MemoryReading(counter, counter), out
    return MemoryReading(peak_live_excluding(events, out.retained_pointers()), counter), out
