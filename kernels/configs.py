"""Launch configurations: a fixed table by default, per-device tuned tables when measured, autotuning opt-in.

Resolution, for one launch of kernel family ``kind`` ("fwd", "fwd_softmax_w" or "bwd") at a shape:

1. the interpreter config under ``TRITON_INTERPRET=1``; otherwise
2. the nearest entry of the tuned table for the device's architecture (``tuned/sm90.json``, written on a GPU by
   ``python -m benchmarks.tune``), or the built-in default for the operand precision when there is none;
3. ``fastgrpo.tuning`` may replace that with an autotuned choice among ``candidates(kind, ...)`` (opt-in);
4. ``override(...)`` fields win over all of these (tests force several vocabulary splits and a small backward
   workspace at tiny shapes; tuning scripts try variants).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import math
import pathlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

from .common import INTERPRET

Kind = Literal["fwd", "fwd_softmax_w", "bwd"]
KINDS: tuple[str, ...] = ("fwd", "fwd_softmax_w", "bwd")
TUNED_DIR = pathlib.Path(__file__).resolve().parent / "tuned"


@dataclass(frozen=True)
class KernelConfig:
    block_n: int = 128  # rows per program
    block_v: int = 128  # vocabulary columns per tile
    block_k: int = 64  # hidden-dimension step of the projection
    num_warps: int = 8
    num_stages: int = 3
    group_n: int = 8  # row blocks per group in the grouped (L2-friendly) launch order
    # Load tiles through Hopper TMA tensor descriptors (sm_90+, 16-bit or tf32 operands, 16-byte aligned rows);
    # elsewhere the launcher uses pointer loads and says so once.
    use_tma: bool = False
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

    def label(self) -> str:
        """Short human-readable name, e.g. ``128x128x64 w8 s3``, plus any non-default launch fields."""
        text = f"{self.block_n}x{self.block_v}x{self.block_k} w{self.num_warps} s{self.num_stages}"
        default = KernelConfig()
        if self.use_tma:
            text += " tma"
        if self.group_n != default.group_n:
            text += f" group_n={self.group_n}"
        if self.min_splits != default.min_splits:
            text += f" min_splits={self.min_splits}"
        if self.workspace_bytes != default.workspace_bytes:
            text += f" workspace_bytes={self.workspace_bytes >> 20}M"
        return text

    def to_dict(self) -> dict:
        """The fields that differ from the defaults (the tuned tables' format)."""
        default = KernelConfig()
        return {
            f.name: getattr(self, f.name)
            for f in dataclasses.fields(self)
            if getattr(self, f.name) != getattr(default, f.name)
        }

    @classmethod
    def from_dict(cls, fields: dict) -> KernelConfig:
        unknown = set(fields) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f"unknown KernelConfig fields: {sorted(unknown)}")
        return cls(**fields)


# Hopper-class defaults for 16-bit operands: 128x128x64 tiles, 8 warps, 3 stages compile for sm_90 to wgmma with
# pipelined async copies and no spills (tools/compile_report.py; tests/test_kernel_compile.py).
GPU_CONFIG = KernelConfig()
# fp32 operands (e.g. trl's cast_lm_head_to_fp32) use exact fp32 FMAs, not tensor cores: smaller tiles to stay
# within the register file.
GPU_CONFIG_FP32 = KernelConfig(block_n=64, block_v=64, block_k=16, num_warps=8, num_stages=3)
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


def _tiles(*shapes: tuple[int, int, int, int, int], **fields) -> list[KernelConfig]:
    return [
        KernelConfig(block_n=n, block_v=v, block_k=k, num_warps=w, num_stages=s, **fields) for n, v, k, w, s in shapes
    ]


# Autotuning candidates: only shapes that compile for sm_90 with no register spills and pipelined loads (bf16: on
# wgmma), per `python tools/compile_report.py --candidates [--dtype fp32] --check`, which
# tests/test_kernel_compile.py runs. The default comes first.
_GPU_CANDIDATES: dict[str, list[KernelConfig]] = {
    "fwd": [GPU_CONFIG]
    + _tiles(
        (128, 128, 64, 8, 4),
        (128, 64, 64, 8, 4),
        (64, 128, 64, 4, 4),
        (64, 256, 64, 8, 3),
        (128, 256, 64, 8, 2),
        (128, 128, 128, 8, 2),
    )
    + [
        dataclasses.replace(GPU_CONFIG, group_n=16),
        dataclasses.replace(GPU_CONFIG, min_splits=4),
        dataclasses.replace(GPU_CONFIG, min_splits=16),
    ]
    + _tiles((128, 128, 64, 8, 3), (128, 128, 64, 8, 4), (64, 256, 64, 8, 3), (128, 256, 64, 8, 2), use_tma=True),
    # The frozen-head forward also holds the softmax@W tile: fewer shapes fit without spills (with TMA, 4 stages do).
    "fwd_softmax_w": [GPU_CONFIG]
    + _tiles((128, 64, 64, 8, 4), (64, 64, 64, 4, 5))
    + _tiles((128, 128, 64, 8, 3), (128, 128, 64, 8, 4), use_tma=True),
    "bwd": [GPU_CONFIG]
    + _tiles((128, 128, 64, 8, 4), (128, 64, 64, 8, 4), (64, 128, 64, 4, 4), (64, 256, 64, 8, 3), (128, 128, 128, 8, 2))
    + [dataclasses.replace(GPU_CONFIG, workspace_bytes=256 << 20)]
    + _tiles((128, 128, 64, 8, 3), (128, 128, 64, 8, 4), use_tma=True),
}
_FP32_TILES = _tiles((32, 64, 16, 4, 3), (64, 32, 16, 4, 3), (64, 64, 16, 4, 2), (64, 64, 32, 4, 2))
_FP32_CANDIDATES: dict[str, list[KernelConfig]] = {
    "fwd": [GPU_CONFIG_FP32] + _FP32_TILES,
    # the others spill with the softmax@W tile
    "fwd_softmax_w": [GPU_CONFIG_FP32] + _tiles((64, 32, 16, 4, 3), (64, 64, 16, 4, 2)),
    "bwd": [GPU_CONFIG_FP32] + _FP32_TILES,
}
# Under the interpreter: variants of its small blocks, so tests can run every candidate on tiny shapes.
_INTERPRETER_CANDIDATES = [INTERPRETER_CONFIG] + [
    dataclasses.replace(INTERPRETER_CONFIG, block_n=n, block_v=v, block_k=k) for n, v, k in ((32, 16, 16), (16, 64, 32))
]


def candidates(kind: Kind, fp32_operands: bool = False) -> list[KernelConfig]:
    """Configs the autotuner times for ``kind`` (the default first), with any ``override`` fields applied."""
    _check_kind(kind)
    base = _INTERPRETER_CANDIDATES if INTERPRET else (_FP32_CANDIDATES if fp32_operands else _GPU_CANDIDATES)[kind]
    return list(dict.fromkeys(apply_overrides(c) for c in base))  # overrides may make candidates equal


def dtype_name(fp32_operands: bool, bits16: str = "bf16") -> str:
    return "fp32" if fp32_operands else bits16


@functools.cache
def tuned_table(arch: str) -> tuple[dict, ...]:
    """Entries of ``tuned/<arch>.json`` (empty when none was measured for that architecture)."""
    path = TUNED_DIR / f"{arch}.json"
    if not path.is_file():
        return ()
    data = json.loads(path.read_text())
    entries = tuple(data.get("entries", ()))
    for e in entries:
        if e.get("kind") in KINDS:
            KernelConfig.from_dict(e.get("config", {}))  # fail at load on a malformed table, not mid-training
    return entries


def _nearest(entries, n: int, h: int) -> dict | None:
    """The entry measured at the shape closest to (n, h): hidden size first (it sets the work per tile), then N."""
    if not entries:
        return None
    dist = lambda e: (abs(math.log(e["h"] / h)), abs(math.log(e["n"] / max(n, 1))))  # noqa: E731
    return min(entries, key=dist)


def get_config(
    kind: Kind = "fwd",
    fp32_operands: bool = False,
    *,
    n: int = 0,
    h: int = 0,
    arch: str | None = None,
    dtype: str = "bf16",
) -> KernelConfig:
    """The launch config for ``kind`` at (n, h) on ``arch`` (e.g. "sm90"; None: no tuned table), plus overrides."""
    _check_kind(kind)
    if INTERPRET:
        base = INTERPRETER_CONFIG
    else:
        base = GPU_CONFIG_FP32 if fp32_operands else GPU_CONFIG
        if arch is not None and n > 0 and h > 0:
            name = dtype_name(fp32_operands, dtype)
            entry = _nearest([e for e in tuned_table(arch) if e["kind"] == kind and e["dtype"] == name], n, h)
            if entry is not None:
                base = KernelConfig.from_dict(entry["config"])
    return apply_overrides(base)


def frozen_head_identity(n: int, h: int, arch: str | None, dtype: str = "bf16") -> bool:
    """Whether a frozen head accumulates softmax(z) @ W in the forward (no backward pass over V) or recomputes the
    logits in the backward. The identity does 4NHV instead of 6NHV but read-modify-writes an fp32 [rows, H]
    accumulator per vocabulary tile; a tuned table may route shapes where that traffic loses to the recompute."""
    if INTERPRET or arch is None or "frozen_identity" in _overrides:
        return bool(_overrides.get("frozen_identity", True))
    routes = [e for e in tuned_table(arch) if e["kind"] == "frozen_route" and e["dtype"] == dtype]
    entry = _nearest(routes, n, h)
    return True if entry is None else bool(entry["identity"])


_overrides: dict = {}


def apply_overrides(cfg: KernelConfig) -> KernelConfig:
    fields = {k: v for k, v in _overrides.items() if k != "frozen_identity"}
    return dataclasses.replace(cfg, **fields) if fields else cfg


def has_overrides() -> bool:
    return bool(_overrides)


@contextlib.contextmanager
def override(**fields) -> Iterator[None]:
    """Temporarily replace config fields, e.g. ``with override(num_splits=3, poison=True): ...``.

    ``frozen_identity=False`` also routes frozen heads to the recompute backward."""
    unknown = set(fields) - {f.name for f in dataclasses.fields(KernelConfig)} - {"frozen_identity"}
    if unknown:
        raise ValueError(f"unknown KernelConfig fields: {sorted(unknown)}")
    saved = dict(_overrides)
    _overrides.update(fields)
    try:
        yield
    finally:
        _overrides.clear()
        _overrides.update(saved)


def _check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")


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
