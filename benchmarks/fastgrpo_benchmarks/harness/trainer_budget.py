"""The longest completion length whose training step fits a memory budget (GPU), emulating a smaller card with the
allocator's per-process memory fraction: doubling from the case's length until a step runs out of memory, then
halving the gap a few times. Model, gradients and AdamW states count against the budget, as on a real card."""

from __future__ import annotations

from typing import Any

import torch

from .suites import TrainerShape

STEP = 256  # lengths are multiples of this


def _fits(runner: Any, shape: TrainerShape, length: int) -> bool:
    from .trainer_setup import synthetic_batch

    try:
        runner.step(synthetic_batch(shape, length, runner.device))
        return True
    except torch.OutOfMemoryError:
        runner.optimizer.zero_grad(set_to_none=True)
        return False
    finally:
        torch.cuda.empty_cache()


def longest_fitting_completion(runner: Any, shape: TrainerShape, budget_gib: float, refine_steps: int = 2) -> int:
    """Largest length (multiple of STEP) found to fit ``budget_gib``; 0 if even STEP does not fit."""
    total = torch.cuda.get_device_properties(0).total_memory
    torch.cuda.empty_cache()
    torch.cuda.set_per_process_memory_fraction(min(1.0, budget_gib * 2**30 / total))
    try:
        good, bad = 0, None
        length = max(STEP, shape.completion_len)
        while bad is None and length <= 1 << 17:
            if _fits(runner, shape, length):
                good, length = length, length * 2
            else:
                bad = length
        if bad is None:
            return good
        if good == 0:  # even the case's own length failed: search down
            length = bad // 2
            while length >= STEP and not _fits(runner, shape, length):
                length //= 2
            return length if length >= STEP else 0
        for _ in range(refine_steps):
            mid = (good + bad) // 2 // STEP * STEP
            if mid in (good, bad):
                break
            if _fits(runner, shape, mid):
                good = mid
            else:
                bad = mid
        return good
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0)
        torch.cuda.empty_cache()
