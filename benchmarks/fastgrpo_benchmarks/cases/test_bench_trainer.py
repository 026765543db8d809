"""Trainer-step cases: one optimisation step per trainer kind (GRPO, SFT, DPO: the suite's ``trainer_kinds``) and
variant, and (GPU, GRPO) the longest completion that fits a memory budget. Rows of the same table
(``case = "trainer"``), ``mode`` = ``step`` (GRPO), ``sft_step``, ``dpo_step`` or ``max_len@<budget>GiB``."""

from __future__ import annotations

from typing import Any

import pytest

from ..harness.failures import distribution_installed, failure_reason, is_out_of_memory
from ..harness.memory import measure_memory
from ..harness.state import BenchState
from ..harness.trainer_budget import longest_fitting_completion
from ..harness.trainer_setup import KIND_MODES, StepRunner, synthetic_batch


def _row(bench: BenchState, shape: Any, variant: str, mode: str) -> dict[str, Any]:
    return {
        "case": "trainer",
        "suite": bench.suite.name,
        "shape": shape.name,
        "tokens": shape.completions * shape.completion_len,
        "hidden": shape.hidden,
        "vocab": shape.vocab,
        "seq_len": shape.completion_len,
        "dtype": "bfloat16" if bench.device == "cuda" else "float32",
        "mode": mode,
        "impl": variant,
        "note": "",
    }


class _Outputs:
    """measure_memory's view of a step: nothing handed back (the step sets the grads to None)."""

    def retained_bytes(self) -> int:
        return 0

    def retained_pointers(self) -> set[int]:
        return set()


def test_trainer_step(benchmark: Any, bench: BenchState, trainer_case: tuple[Any, str, str]) -> None:
    shape, kind, variant = trainer_case
    row = _row(bench, shape, variant, KIND_MODES[kind])
    if reason := bench.out_of_time():
        bench.record(**row, status="skipped", reason=reason)
        pytest.skip(reason)
    if not distribution_installed("trl"):  # every variant builds a trl trainer
        reason = f"{variant} trainer not available: trl not installed"
        bench.record(**row, status="skipped", reason=reason)
        pytest.skip(reason)
    try:
        runner = StepRunner(variant, shape, bench.device, kind)
    except Exception as exc:  # trl is installed: an ImportError or a crash building the trainer is a failure
        bench.record(**row, status="failed", reason=failure_reason(exc))
        raise
    try:
        batch = synthetic_batch(shape, shape.completion_len, bench.device, kind=kind)
        runner.step(batch)  # warm-up: optimizer state, kernels compiled
        suite = bench.suite
        benchmark.pedantic(runner.step, args=(batch,), rounds=max(1, min(3, suite.max_rounds)),
                           warmup_rounds=min(1, suite.warmup_rounds), iterations=1)  # fmt: skip
        median = float(benchmark.stats.stats.median)
        memory, _ = measure_memory(lambda: (runner.step(batch), _Outputs())[1], bench.device)  # type: ignore[arg-type,return-value]
        metrics = {
            "median_s": median,
            "rounds": len(benchmark.stats.stats.data),
            "peak_extra_bytes": memory.peak_extra_bytes,
            "peak_extra_counter_bytes": memory.counter_bytes,
        }
        benchmark.extra_info.update(metrics)
        bench.record(**row, status="ok", reason="", **metrics)
        if bench.suite.memory_budget_gib > 0 and kind == "grpo":
            budget = bench.suite.memory_budget_gib
            length = longest_fitting_completion(runner, shape, budget)
            bench.record(**_row(bench, shape, variant, f"max_len@{budget:g}GiB"), status="ok", reason="",
                         max_completion_len=length)  # fmt: skip
    except Exception as exc:
        if is_out_of_memory(exc):
            reason = f"out of memory: {failure_reason(exc)}"
            bench.record(**row, status="skipped", reason=reason)
            pytest.skip(reason)
        bench.record(**row, status="failed", reason=failure_reason(exc))
        raise
    finally:
        runner.close()
        bench.release_memory()
