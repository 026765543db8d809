"""Launch configurations: a fixed table by default (tuned per shape class on the GPU by the benchmark issue).

``override(...)`` changes them for a block of code (tests force several vocabulary splits and a small backward
workspace at tiny shapes; tuning scripts try variants).
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass

from .common import INTERPRET


@dataclass(frozen=True)
class KernelConfig:
    block_n: int = 128  # rows per program
    block_v: int = 128  # vocabulary columns per tile
    block_k: int = 64  # hidden-dimension step of the projection
    num_warps: int = 8
    num_stages: int = 3
    group_n: int = 8  # row blocks per group in the grouped (L2-friendly) launch order
    combine_block_n: int = 64
    combine_block_k: int = 128
    # Vocabulary splits for the forward; None: enough programs to fill the device (about 2 per SM), and at least
    # min_splits so that programs running together share weight tiles (grouped order) even when N is large.
    num_splits: int | None = None
    programs_per_sm: int = 2
    min_splits: int = 8
    # Frozen head: each split keeps an fp32 [N, H] partial of softmax(z) @ W; bound their total.
    softmax_w_bytes: int = 256 << 20
    # Bytes of the backward's [N, chunk] dL/dy workspace (bounds its memory; the chunk is at least one block).
    workspace_bytes: int = 64 << 20
    # Fill outputs and workspaces with NaN before launching (tests: catches elements no kernel writes).
    poison: bool = False


# Hopper-class defaults for 16-bit operands: 128x128x64 tiles, 8 warps, 3 stages compile for sm_90 to wgmma with
# pipelined async copies and no spills (tools/compile_report.py; tests/test_kernel_compile.py). Issue 6 tunes these
# per (H, N) class on the GPU.
GPU_CONFIG = KernelConfig()
# fp32 operands (e.g. trl's cast_lm_head_to_fp32) use exact fp32 FMAs, not tensor cores: smaller tiles to stay
# within the register file.
GPU_CONFIG_FP32 = KernelConfig(block_n=64, block_v=64, block_k=16, num_warps=4, num_stages=3)
# The interpreter runs one program after another in numpy: small blocks so tiny test shapes span several blocks.
INTERPRETER_CONFIG = KernelConfig(
    block_n=16,
    block_v=32,
    block_k=16,
    num_warps=4,
    num_stages=1,
    combine_block_n=16,
    combine_block_k=16,
    programs_per_sm=1,
)

_overrides: dict = {}


def get_config(fp32_operands: bool = False) -> KernelConfig:
    """The launch config: interpreter, or the GPU table entry for the operand precision, plus any overrides."""
    base = INTERPRETER_CONFIG if INTERPRET else GPU_CONFIG_FP32 if fp32_operands else GPU_CONFIG
    return dataclasses.replace(base, **_overrides) if _overrides else base


@contextlib.contextmanager
def override(**fields) -> Iterator[KernelConfig]:
    """Temporarily replace config fields, e.g. ``with override(num_splits=3, poison=True): ...``."""
    unknown = set(fields) - {f.name for f in dataclasses.fields(KernelConfig)}
    if unknown:
        raise ValueError(f"unknown KernelConfig fields: {sorted(unknown)}")
    saved = dict(_overrides)
    _overrides.update(fields)
    try:
        yield get_config()
    finally:
        _overrides.clear()
        _overrides.update(saved)


def num_splits(cfg: KernelConfig, n: int, h: int, vocab: int, num_sms: int, softmax_w: bool) -> int:
    """Vocabulary splits: enough programs for the device when N is small, at least ``min_splits`` for L2 reuse,
    within the frozen-head partials' memory bound, never more than there are vocabulary tiles."""
    max_splits = -(-vocab // cfg.block_v)
    if softmax_w:
        max_splits = min(max_splits, max(1, cfg.softmax_w_bytes // max(n * h * 4, 1)))
    if cfg.num_splits is not None:
        return max(1, min(cfg.num_splits, max_splits))
    n_row_blocks = -(-n // cfg.block_n)
    want = max(-(-(cfg.programs_per_sm * num_sms) // max(n_row_blocks, 1)), cfg.min_splits)
    return max(1, min(want, max_splits))
