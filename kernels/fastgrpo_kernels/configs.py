"""Launch-config data: one dataclass per kernel family, the interpreter's configs, the autotuning candidates, the
tuned tables' format. No state and no decisions: ``fastgrpo.launch_config`` resolves which config a launch uses
(in the order its ``LaunchConfigResolver.resolve`` documents); the per-architecture defaults are in
``arch_configs.py``.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import pathlib
from dataclasses import dataclass
from typing import Literal

from . import arch_configs

Kind = Literal["fwd", "fwd_softmax_w", "bwd", "combine", "grpo_loss", "frozen_route"]
# The lm_head GEMM kernels: forward, frozen-head forward (+ softmax@W), dL/dy. Only these are autotuned.
TUNABLE_KINDS: tuple[str, ...] = ("fwd", "fwd_softmax_w", "bwd")
# Every kind the resolver answers: kernel families, and the frozen-head route (which of two kernel paths runs).
KINDS: tuple[str, ...] = (*TUNABLE_KINDS, "combine", "grpo_loss", "frozen_route")
PRECISIONS: tuple[str, ...] = ("bf16", "fp16", "fp32", "tf32")
TUNED_DIR = pathlib.Path(__file__).resolve().parent / "tuned"


class _Fields:
    """Shared by the config dataclasses: the tuned tables' dict format."""

    def to_dict(self) -> dict:
        """The fields that differ from the defaults (the tuned tables' and autotune cache's format)."""
        default = type(self)()
        return {
            f.name: getattr(self, f.name)
            for f in dataclasses.fields(self)
            if getattr(self, f.name) != getattr(default, f.name)
        }

    def amd_options(self) -> dict:
        """The AMD-only launch options this config sets (``AMD_OPTIONS`` fields off their defaults), passed to the
        launch as keywords: empty for every NVIDIA entry, whose launch would reject them (Triton's CUDA backend has
        no such options)."""
        return {
            f.name: getattr(self, f.name)
            for f in dataclasses.fields(self)
            if f.name in AMD_OPTIONS and getattr(self, f.name) != f.default
        }

    @classmethod
    def from_dict(cls, fields: dict):
        unknown = set(fields) - field_names(cls)
        if unknown:
            raise ValueError(f"unknown {cls.__name__} fields: {sorted(unknown)}")
        return cls(**fields)


# FMA contraction (a * b + c in one rounding) in every kernel, pinned instead of left to Triton's default, which
# Triton 3.10 turns off: on, as every Triton up to 3.9 compiled these kernels, and as nvcc and cuBLAS do. Why on, and
# what it changes: docs/kernel_notes.md, "FP fusion".
FP_FUSION: bool = True


@dataclass(frozen=True)
class LaunchOptions(_Fields):
    """Compile options every kernel launch passes to Triton explicitly, so no launch depends on Triton's defaults or
    environment variables. Each launch config of a kernel family derives from this class (keyword-only fields, so
    subclasses keep their positional order) and the launchers pass these fields with each launch."""

    enable_fp_fusion: bool = dataclasses.field(default=FP_FUSION, kw_only=True)


@dataclass(frozen=True)
class KernelConfig(LaunchOptions):
    """The lm_head GEMM kernels (``fwd``, ``fwd_softmax_w``, ``bwd``)."""

    block_n: int = 128  # rows per program
    block_v: int = 128  # vocabulary columns per tile
    block_k: int = 64  # hidden-dimension step of the projection
    num_warps: int = 8
    num_stages: int = 3
    group_n: int = 8  # row blocks per group in the grouped (L2-friendly) launch order
    # Load tiles through Hopper TMA tensor descriptors (sm_90+, 16-bit or tf32 operands, 16-byte aligned rows);
    # elsewhere the launcher uses pointer loads and says so once.
    use_tma: bool = False
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
    # AMD-only launch options (Triton's HIP backend; ``AMD_OPTIONS``), set by the gfx* tables only. waves_per_eu:
    # the occupancy the register allocator aims for (0: the compiler's choice). matrix_instr_nonkdim: the MFMA
    # instruction's M/N (16: 16x16xK, 32: 32x32xK, 0: Triton's choice). kpack: K elements packed per MFMA operand
    # load (1 or 2; triton forces 1 on gfx950).
    waves_per_eu: int = 0
    matrix_instr_nonkdim: int = 0
    kpack: int = 1

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
        if self.enable_fp_fusion != default.enable_fp_fusion:
            text += f" fp_fusion={self.enable_fp_fusion}"
        return text + _amd_label(self)


@dataclass(frozen=True)
class CombineConfig(LaunchOptions):
    """The forward's combine of vocabulary splits (``combine``)."""

    block_n: int = 64  # rows per program
    block_k: int = 128  # hidden-dimension step of the target-logit dot and the softmax@W rescale
    num_warps: int = 4
    waves_per_eu: int = 0  # AMD only (see KernelConfig)

    def label(self) -> str:
        return f"{self.block_n}x{self.block_k} w{self.num_warps}" + _amd_label(self)


@dataclass(frozen=True)
class GRPOLossConfig(LaunchOptions):
    """The GRPO loss kernel (``grpo_loss``): whole rows per program, tiles of at most ``max_tile`` elements."""

    max_block_t: int = 512  # tokens per tile (a row longer than this loops)
    max_tile: int = 1024  # BLOCK_B * BLOCK_T
    num_warps: int = 4
    waves_per_eu: int = 0  # AMD only (see KernelConfig)

    def blocks(self, bsz: int, seqlen: int) -> tuple[int, int]:
        """(BLOCK_B, BLOCK_T) for a [bsz, seqlen] batch: powers of two, as ``tl.arange`` needs."""
        block_t = min(_next_pow2(seqlen), self.max_block_t)
        block_b = min(_next_pow2(bsz), max(1, self.max_tile // block_t))
        return block_b, block_t

    def label(self) -> str:
        return f"t<={self.max_block_t} tile<={self.max_tile} w{self.num_warps}" + _amd_label(self)


@dataclass(frozen=True)
class FrozenRoute(_Fields):
    """A frozen head's route: accumulate softmax(z) @ W in the forward (no backward pass over V), or recompute the
    logits in the backward. The identity does 4NHV instead of 6NHV but read-modify-writes an fp32 [rows, H]
    accumulator per vocabulary tile; a tuned table may route shapes where that traffic loses to the recompute."""

    softmax_w_identity: bool = True

    def label(self) -> str:
        return "identity" if self.softmax_w_identity else "recompute"


CONFIG_CLASSES: dict[str, type] = {
    "fwd": KernelConfig,
    "fwd_softmax_w": KernelConfig,
    "bwd": KernelConfig,
    "combine": CombineConfig,
    "grpo_loss": GRPOLossConfig,
    "frozen_route": FrozenRoute,
}


# Launch options only Triton's HIP backend accepts (``HIPOptions`` in triton 3.6 and 3.9): config fields that the
# launchers pass through ``amd_options()`` and that only the AMD families' tables (arch_configs.AMD_FAMILIES) set.
AMD_OPTIONS: tuple[str, ...] = ("waves_per_eu", "matrix_instr_nonkdim", "kpack")


def _amd_label(cfg) -> str:
    short = {"waves_per_eu": "wpe", "matrix_instr_nonkdim": "mfma", "kpack": "kpack"}
    return "".join(f" {short[k]}{v}" for k, v in cfg.amd_options().items())


def field_names(cls: type) -> set[str]:
    return {f.name for f in dataclasses.fields(cls)}


def _next_pow2(n: int) -> int:
    return 1 << max(n - 1, 0).bit_length()


def check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")


def check_precision(precision: str) -> None:
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")


# The interpreter runs one program after another in numpy: small blocks so tiny test shapes span several blocks.
INTERPRETER_CONFIGS: dict[str, object] = {
    **dict.fromkeys(
        TUNABLE_KINDS,
        KernelConfig(block_n=16, block_v=32, block_k=16, num_warps=4, num_stages=1, programs_per_sm=1),
    ),
    "combine": CombineConfig(block_n=16, block_k=16, num_warps=4),
    "grpo_loss": GRPOLossConfig(max_tile=2048),  # fewer, larger numpy steps
    "frozen_route": FrozenRoute(),
}
INTERPRETER_CONFIG = INTERPRETER_CONFIGS["fwd"]

# The sm_90 defaults, which the autotuning candidates below were checked against.
GPU_CONFIG = KernelConfig(**arch_configs.default("sm90", "fwd", "bf16"))
GPU_CONFIG_FP32 = KernelConfig(**arch_configs.default("sm90", "fwd", "fp32"))


def _tiles(*shapes: tuple[int, int, int, int, int], **fields) -> list[KernelConfig]:
    return [
        KernelConfig(block_n=n, block_v=v, block_k=k, num_warps=w, num_stages=s, **fields) for n, v, k, w, s in shapes
    ]


# Autotuning candidates: only shapes that compile for sm_90 with no register spills and pipelined loads (bf16: on
# wgmma), per `python tools/compile_report.py --candidates [--dtype fp32] --check`, which
# tests/test_kernel_compile.py runs. The sm_90 default comes first (the resolver puts the device's default before).
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


def candidates(kind: str, precision: str = "bf16", *, interpret: bool | None = None) -> list[KernelConfig]:
    """The configs the autotuner may time for ``kind`` (no overrides applied; empty for kinds it does not tune).
    ``interpret``: None follows TRITON_INTERPRET."""
    check_kind(kind)
    check_precision(precision)
    if kind not in TUNABLE_KINDS:
        return []
    if interpret is None:
        from .common import INTERPRET

        interpret = INTERPRET
    if interpret:
        return list(_INTERPRETER_CANDIDATES)
    return list((_FP32_CANDIDATES if precision == "fp32" else _GPU_CANDIDATES)[kind])


def tuned_table(arch: str, tuned_dir: pathlib.Path | None = None) -> tuple[dict, ...]:
    """Entries of ``<tuned_dir>/<arch>.json`` (default: the shipped ``tuned/``; empty when none was measured)."""
    path = (TUNED_DIR if tuned_dir is None else pathlib.Path(tuned_dir)) / f"{arch}.json"
    if not path.is_file():
        return ()
    stat = path.stat()
    return _parse_table(str(path), stat.st_mtime_ns, stat.st_size)  # re-read when the file changes


@functools.cache
def _parse_table(path: str, mtime_ns: int, size: int) -> tuple[dict, ...]:
    entries = []
    for e in json.loads(pathlib.Path(path).read_text()).get("entries", ()):
        if e.get("kind") not in KINDS:
            raise ValueError(f"{path}: unknown kind {e.get('kind')!r} (kinds: {KINDS})")
        if e["kind"] == "frozen_route" and "config" not in e:  # the tuner records a route as {"identity": bool}
            e = {**e, "config": {"softmax_w_identity": bool(e["identity"])}}
        cfg = CONFIG_CLASSES[e["kind"]].from_dict(e.get("config", {}))  # fail at load on a malformed table
        if cfg.amd_options() and pathlib.Path(path).stem not in arch_configs.AMD_FAMILIES:
            raise ValueError(f"{path}: AMD-only options {cfg.amd_options()} in a table of a non-AMD family")
        entries.append(e)
    return tuple(entries)


tuned_table.cache_clear = _parse_table.cache_clear  # type: ignore[attr-defined]


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
