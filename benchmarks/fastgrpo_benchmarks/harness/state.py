"""What one benchmark session shares between its cases: the suite, cached weights and errors, and the rows."""

from __future__ import annotations

import gc
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from fastgrpo import env

from ..peers.base import Runner
from .accuracy import measure_errors
from .inputs import make_weight
from .roofline import measure_matmul_tflops
from .suites import OpShape, Suite


@dataclass(frozen=True)
class OpCase:
    shape: OpShape
    mode: str
    impl: str

    @property
    def id(self) -> str:
        return f"{self.shape.name}-{self.mode}-{self.impl}"


@dataclass
class BenchState:
    suite: Suite
    rows: list[dict[str, Any]] = field(default_factory=list)
    _weights: dict[str, torch.Tensor] = field(default_factory=dict)
    _errors: dict[tuple[str, str], tuple[float, float]] = field(default_factory=dict)
    _matmul_tflops: float | None = None
    # Seconds from the session's start after which remaining cases are skipped (0 = no limit), so a run under a
    # hard wall-clock limit (the device tool's 10 minutes) still writes its results.
    time_budget_s: float = field(default_factory=lambda: float(env.get("FASTGRPO_BENCH_TIME_BUDGET_S") or 0))
    started: float = field(default_factory=time.monotonic)
    # Rows are also appended here as they come, so a run killed by a wall-clock limit leaves what it measured.
    partial_path: Path | None = None

    def out_of_time(self) -> str | None:
        """The skip reason once the run's time budget is spent, else None."""
        if self.time_budget_s > 0 and time.monotonic() - self.started > self.time_budget_s:
            return f"time budget of the run spent (FASTGRPO_BENCH_TIME_BUDGET_S={self.time_budget_s:g})"
        return None

    @property
    def device(self) -> str:
        return self.suite.device

    @property
    def dtype(self) -> torch.dtype:
        return getattr(torch, self.suite.dtype)

    def matmul_tflops(self, remeasure: bool = False) -> float:
        """The run's matmul ceiling: measured before the first case; ``remeasure`` (at the end of the run) keeps the
        higher of the two readings, so a neighbour's load at the start of a shared machine does not set it."""
        if self._matmul_tflops is None:
            self._matmul_tflops = measure_matmul_tflops(self.device, self.dtype, repeats=self.suite.matmul_repeats)
        elif remeasure:
            self._matmul_tflops = max(
                self._matmul_tflops, measure_matmul_tflops(self.device, self.dtype, repeats=self.suite.matmul_repeats)
            )
        return self._matmul_tflops

    def weight(self, shape: OpShape) -> torch.Tensor:
        """One lm_head weight per (V, H), kept while consecutive cases use it, dropped when the shape changes."""
        key = f"{shape.vocab}x{shape.hidden}"
        if key not in self._weights:
            self._weights.clear()
            self.release_memory()
            self._weights[key] = make_weight(shape, self.dtype, self.device)
        return self._weights[key]

    def errors(self, impl: str, mode: str, runner: Runner) -> tuple[float, float]:
        key = (impl, mode)
        if key not in self._errors:
            self._errors[key] = measure_errors(runner, mode, self.suite.accuracy_shape, self.dtype, self.device)
        return self._errors[key]

    def release_memory(self) -> None:
        gc.collect()
        if self.device == "cuda":
            torch.cuda.empty_cache()

    def record(self, **row: Any) -> dict[str, Any]:
        self.rows.append(row)
        if self.partial_path is not None:
            self.partial_path.parent.mkdir(parents=True, exist_ok=True)
            with self.partial_path.open("a") as f:
                f.write(json.dumps(row, default=str) + "\n")
        return row
