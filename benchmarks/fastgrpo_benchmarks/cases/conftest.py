"""pytest plumbing of the benchmark suite: options, the suite's cases, the shared state, and the report at the end.

``pytest benchmarks/fastgrpo_benchmarks/cases --benchmark-only [--bench-suite NAME] [--bench-out DIR]`` and ``python
-m benchmarks`` run the
same cases and write the same files.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import torch

from fastgrpo import env

from .. import peers
from ..harness.environment import describe
from ..harness.state import BenchState, OpCase
from ..harness.suites import IMPLS, SUITES, default_results_dir, resolve_suite
from ..harness.trainer_setup import KIND_VARIANTS
from ..reports.plots import write_plots
from ..reports.report import derive, notes_lines, table_lines, write_results

_STATE_KEY = pytest.StashKey[BenchState]()


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("fastgrpo-bench", "fastgrpo benchmark suite")
    group.addoption("--bench-suite", default=None, help=f"suite: auto (device's default), {', '.join(SUITES)}")
    group.addoption("--bench-out", default=None, help="results folder (default: benchmarks/results/local/<suite>)")
    group.addoption("--bench-impl", action="append", default=None, help=f"only these implementations: {IMPLS}")
    group.addoption("--bench-no-plots", action="store_true", help="skip the PNG figures")


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config: pytest.Config) -> None:
    # pyproject's addopts disable benchmarks for the unit tests; asking for --benchmark-only here means run them.
    if config.getoption("benchmark_only", False):
        config.option.benchmark_enable = True
    try:
        suite = resolve_suite(config.getoption("bench_suite"), torch.cuda.is_available())
    except ValueError as exc:
        raise pytest.UsageError(str(exc)) from exc
    if suite.device == "cpu":
        # FastGRPOTrainer's kernels: the chunked torch path on CPU, even where TRITON_INTERPRET=1 is set.
        os.environ.setdefault("FASTGRPO_BACKEND", "torch")
    if suite.device == "cuda" and "perf_counter" in str(config.getoption("benchmark_timer", "")):
        config.option.benchmark_timer = f"{__package__.rsplit('.', 1)[0]}.harness.timing.cuda_event_clock"
    state = BenchState(suite)
    state.partial_path = _out_dir(config, state) / "rows.partial.jsonl"
    state.partial_path.unlink(missing_ok=True)
    config.stash[_STATE_KEY] = state


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    state = metafunc.config.stash[_STATE_KEY]
    wanted = metafunc.config.getoption("bench_impl") or IMPLS
    if "trainer_case" in metafunc.fixturenames:
        trainer_cases = [
            (s, k, v) for s in state.suite.trainer_shapes for k in s.kinds for v in KIND_VARIANTS[k] if v in wanted
        ]
        ids = [f"{s.name}-{v}" if k == "grpo" else f"{s.name}-{k}-{v}" for s, k, v in trainer_cases]
        metafunc.parametrize("trainer_case", trainer_cases, ids=ids)
    if "op_case" not in metafunc.fixturenames:
        return
    cases = [
        OpCase(shape, mode, impl)
        for shape in state.suite.shapes
        for mode in state.suite.modes
        for impl in IMPLS
        if impl in wanted and peers.applies(impl, mode)
    ]
    metafunc.parametrize("op_case", cases, ids=[c.id for c in cases])


@pytest.fixture(scope="session")
def bench(request: pytest.FixtureRequest) -> BenchState:
    config = request.config
    if config.getoption("benchmark_disable", False) and not config.getoption("benchmark_enable", False):
        pytest.skip(
            "benchmarks are disabled (pyproject's addopts): run `python -m benchmarks` "
            "or `pytest benchmarks/fastgrpo_benchmarks/cases --benchmark-only`"
        )
    return config.stash[_STATE_KEY]


def _out_dir(config: pytest.Config, state: BenchState) -> Path:
    return Path(config.getoption("bench_out") or env.get("FASTGRPO_BENCH_OUT") or default_results_dir(state.suite))


@pytest.hookimpl(trylast=True)
def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    state = config.stash.get(_STATE_KEY, None)
    if state is None or not state.rows:
        return
    state.release_memory()
    matmul = state.matmul_tflops(remeasure=True)
    env = describe(state.device)
    env["matmul_dtype"] = state.suite.dtype
    env["suite"] = state.suite.name
    rows = derive(state.rows, matmul)
    out_dir = _out_dir(config, state)
    paths = write_results(out_dir, env, rows, matmul)
    if state.partial_path is not None:
        state.partial_path.unlink(missing_ok=True)  # complete results written
    tr = terminalreporter
    tr.section(f"fastgrpo benchmark: suite {state.suite.name} on {env['device_name']}")
    tr.write_line(f"matmul throughput ({state.suite.dtype}) measured in this run: {matmul:.3f} TFLOP/s")
    for line in table_lines(rows) + notes_lines(rows):
        tr.write_line(line)
    if config.getoption("bench_no_plots"):
        plots: list[Path] | str = "plots skipped (--bench-no-plots)"
    else:
        plots = write_plots(out_dir, rows, f"{env['device_name']}, {state.suite.dtype}, {env['date_utc']}")
    tr.write_line(f"results: {', '.join(str(p) for p in paths.values())}")
    tr.write_line(plots if isinstance(plots, str) else f"plots: {len(plots)} PNG files in {out_dir}")
