"""Op-level cases: every (shape, mode, implementation) of the suite, timed with pytest-benchmark.

Run through ``python -m benchmarks`` or ``pytest benchmarks/fastgrpo_benchmarks/cases --benchmark-only`` (the suite
comes from ``--bench-suite`` / $FASTGRPO_BENCH_SUITE, default: the device's). A peer that is not installed or cannot
run on this device is recorded as skipped with the reason; any other error, a peer's included, fails the case
(``harness/failures.py``).
"""

from __future__ import annotations

import itertools
from typing import Any

import pytest

from .. import peers
from ..harness.failures import failure_reason, is_out_of_memory
from ..harness.inputs import InputSet, make_input_set
from ..harness.memory import measure_memory
from ..harness.metrics import model_flops, timed_rounds
from ..harness.state import BenchState, OpCase
from ..harness.timing import time_once


def _base_row(bench: BenchState, case: OpCase) -> dict[str, Any]:
    shape = case.shape
    return {
        "case": "op",
        "suite": bench.suite.name,
        "shape": shape.name,
        "tokens": shape.tokens,
        "hidden": shape.hidden,
        "vocab": shape.vocab,
        "seq_len": min(shape.seq_len, shape.tokens),
        "dtype": bench.suite.dtype,
        "mode": case.mode,
        "impl": case.impl,
        "flops": model_flops(case.mode, shape.tokens, shape.hidden, shape.vocab),
        "note": peers.NOTES.get(case.impl, ""),
    }


def test_op(benchmark: Any, bench: BenchState, op_case: OpCase) -> None:
    row = _base_row(bench, op_case)
    suite, device = bench.suite, bench.device
    if reason := bench.out_of_time():
        bench.record(**row, status="skipped", reason=reason)
        pytest.skip(reason)
    try:
        runner = peers.build(op_case.impl, op_case.mode, device)
    except peers.Unavailable as exc:  # not installed, or cannot run on this device: a skip, with the reason
        bench.record(**row, status="skipped", reason=str(exc))
        pytest.skip(str(exc))
    except Exception as exc:  # installed but broken (an ImportError from its own code included): a failure
        bench.record(**row, status="failed", reason=failure_reason(exc))
        raise
    bench.matmul_tflops()  # measured before the first case, on an idle device
    sets: list[InputSet] = []
    try:
        weight = bench.weight(op_case.shape)
        sets = [make_input_set(op_case.shape, weight, op_case.mode, seed=i) for i in range(suite.rotating_buffers)]
        rotation = itertools.cycle(sets)

        def setup() -> tuple[tuple[InputSet], dict[str, Any]]:
            s = next(rotation)
            s.clear_grads()
            return (s,), {}

        first = setup()[0][0]
        estimate = time_once(lambda: runner(first), device)  # also the first warm-up (compilation, autotuning)
        rounds = timed_rounds(estimate, suite.target_seconds, suite.min_rounds, suite.max_rounds)
        benchmark.pedantic(runner, setup=setup, rounds=rounds, warmup_rounds=suite.warmup_rounds, iterations=1)
        median = float(benchmark.stats.stats.median)
        mem_set = setup()[0][0]
        memory, _ = measure_memory(lambda: runner(mem_set), device)
        err_value, err_grad = bench.errors(op_case.impl, op_case.mode, runner)
    except Exception as exc:  # a row with the reason (not a hole in the table), and a failed test
        sets.clear()
        bench.release_memory()
        if is_out_of_memory(exc):  # the device cannot hold this peer at this shape: a measurement, not a crash
            reason = f"out of memory: {failure_reason(exc)}"
            bench.record(**row, status="skipped", reason=reason)
            pytest.skip(reason)
        bench.record(**row, status="failed", reason=failure_reason(exc))
        raise
    for s in sets:
        s.clear_grads()
    sets.clear()
    metrics = dict(
        median_s=median,
        rounds=rounds,
        peak_extra_bytes=memory.peak_extra_bytes,
        peak_extra_counter_bytes=memory.counter_bytes,
        err_value=err_value,
        err_grad=err_grad,
    )
    benchmark.extra_info.update(metrics)
    bench.record(**row, status="ok", reason="", **metrics)
