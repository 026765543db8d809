"""Every environment variable fastgrpo reads, in one table, each read through :func:`get` / :func:`flag`.

``python -m fastgrpo.env`` prints the table as Markdown (README's "Environment variables" section is that output;
``tests/test_env.py`` keeps the two equal and checks that no other module reads a ``FASTGRPO_*`` variable itself).
Adding a variable: one :class:`EnvVar` row here, then read it with ``env.get(NAME)`` or ``env.flag(NAME)``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

__all__ = ["VARIABLES", "EnvVar", "flag", "get", "markdown_table", "parse_bool", "triton_interpret"]

_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"", "0", "false", "no", "off"})


@dataclass(frozen=True)
class EnvVar:
    name: str
    default: str
    meaning: str
    scope: str  # "library" | "benchmarks" | "tests"
    boolean: bool = False


VARIABLES: tuple[EnvVar, ...] = (
    EnvVar(
        "TRITON_INTERPRET",
        "0",
        "Triton's own switch: run kernels on CPU tensors in the interpreter. Read once, when the kernels are "
        'imported (as Triton does); `backend="auto"` then picks Triton on CPU.',
        "library",
        boolean=True,
    ),
    EnvVar(
        "FASTGRPO_BACKEND",
        "auto",
        "Kernel backend when `fastgrpo_backend` is not passed to the trainer: `auto`, `triton` or `torch`.",
        "library",
    ),
    EnvVar(
        "FASTGRPO_LOSS",
        "auto",
        "Loss path when `fastgrpo_loss` is not passed to the trainer: `auto` (fused where covered) or `trl`.",
        "library",
    ),
    EnvVar(
        "FASTGRPO_AUTOTUNE",
        "0",
        "Opt-in autotuning: time every launch-config candidate on the first launch of each shape class.",
        "library",
        boolean=True,
    ),
    EnvVar(
        "FASTGRPO_AUTOTUNE_CACHE",
        "",
        "JSON file that keeps autotuning choices across processes (keyed by the kernel sources' hash).",
        "library",
    ),
    EnvVar(
        "FASTGRPO_BENCH_SUITE",
        "auto",
        "Benchmark suite for `python -m benchmarks` (`auto`: by device).",
        "benchmarks",
    ),
    EnvVar(
        "FASTGRPO_BENCH_OUT",
        "",
        "Results folder of a benchmark run (default: an uncommitted folder).",
        "benchmarks",
    ),
    EnvVar(
        "FASTGRPO_BENCH_COMMIT",
        "",
        "Commit recorded in benchmark provenance (default: `git rev-parse`).",
        "benchmarks",
    ),
    EnvVar(
        "FASTGRPO_BENCH_TIME_BUDGET_S",
        "0",
        "Stop starting new benchmark rows after this many seconds (0: none).",
        "benchmarks",
    ),
    EnvVar(
        "FASTGRPO_BENCH_LIGER_COMPILED",
        "1 on CUDA, else 0",
        "Run Liger's GRPO loss peer with torch.compile, as Liger ships it.",
        "benchmarks",
        boolean=True,
    ),
    EnvVar(
        "FASTGRPO_SKIP_BENCH_SMOKE",
        "0",
        "Skip the benchmark CLI smoke test in the test suite.",
        "tests",
        boolean=True,
    ),
    EnvVar(
        "FASTGRPO_TRL_ERAS",
        "the verified releases",
        "`tests/run_trl_era_tests.sh`: space-separated `trl:transformers` pairs to test (e.g. `1.14.2:5.24.0`).",
        "tests",
    ),
    EnvVar(
        "FASTGRPO_TRL_ERA_VENV",
        "$TMPDIR/fastgrpo-trl-eras-venv",
        "`tests/run_trl_era_tests.sh`: the venv in which trl releases are swapped (reused when its torch matches).",
        "tests",
    ),
)

_BY_NAME = {v.name: v for v in VARIABLES}


def _spec(name: str) -> EnvVar:
    try:
        return _BY_NAME[name]
    except KeyError:
        raise KeyError(f"{name} is not a fastgrpo environment variable; add it to fastgrpo.env.VARIABLES") from None


def parse_bool(value: str, *, name: str) -> bool:
    """``1/true/yes/on`` -> True, ``0/false/no/off`` or empty -> False (case-insensitive); anything else raises."""
    text = value.strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise ValueError(f"${name} must be one of 1/0, true/false, yes/no, on/off; got {value!r}")


def get(name: str) -> str | None:
    """The variable's value, or None when unset or empty (callers apply the documented default)."""
    _spec(name)
    value = os.environ.get(name)
    return value if value else None


def flag(name: str, default: bool = False) -> bool:
    """A boolean variable through :func:`parse_bool`; ``default`` when unset."""
    spec = _spec(name)
    if not spec.boolean:
        raise TypeError(f"{name} is not a boolean variable")
    value = os.environ.get(name)
    return default if value is None else parse_bool(value, name=name)


def triton_interpret() -> bool:
    return flag("TRITON_INTERPRET")


def markdown_table() -> str:
    lines = ["| variable | default | scope | meaning |", "|---|---|---|---|"]
    for v in VARIABLES:
        default = f"`{v.default}`" if v.default else "unset"
        lines.append(f"| `{v.name}` | {default} | {v.scope} | {v.meaning} |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(markdown_table())
