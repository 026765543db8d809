"""Built-in launch configs per GPU architecture family: the defaults the resolver uses when no tuned table applies.

``DEFAULTS[arch][kernel][precision]`` is a dict of config fields for one kernel family on one architecture family:

- arch: ``ARCH_FAMILIES`` (``arch_family`` maps a device's compute capability to one);
- kernel: ``"fwd"``, ``"fwd_softmax_w"`` (frozen-head forward), ``"bwd"`` (dL/dy) -> ``configs.KernelConfig`` fields;
  ``"combine"`` -> ``configs.CombineConfig``; ``"grpo_loss"`` -> ``configs.GRPOLossConfig``;
- precision: the operands the kernel multiplies: ``"bf16"``, ``"fp16"``, ``"fp32"`` (exact fp32, FMA) or ``"tf32"``
  (fp32 inputs on tensor cores, when the user enabled TF32 matmuls);
- value: the fields that entry sets (the rest keep the dataclass defaults), or ``None`` when no Triton kernel
  serves that combination on that architecture (fastgrpo then uses the torch path, and says so once).

A new launch config is an edit here (or a tuned table in ``tuned/``), nothing else: the launchers read configs only
through ``fastgrpo.launch_config``. Plain data on purpose: importing this module imports neither torch nor triton.
"""

from __future__ import annotations

ARCH_FAMILIES: tuple[str, ...] = ("sm75", "sm80", "sm86", "sm90", "sm100", "sm120")
KERNELS: tuple[str, ...] = ("fwd", "fwd_softmax_w", "bwd", "combine", "grpo_loss")
PRECISIONS: tuple[str, ...] = ("bf16", "fp16", "fp32", "tf32")

# The compute capability each family is compiled for (``tools/compile_report.py --arch``), and the GPUs it covers.
CAPABILITY: dict[str, tuple[int, int]] = {
    "sm75": (7, 5),  # T4, RTX 20xx
    "sm80": (8, 0),  # A100, A800; also sm_87 (Jetson Orin: A100's 164 KiB of shared memory per SM)
    "sm86": (8, 6),  # RTX 30xx, A10, A40; also sm_89 (RTX 40xx, L4, L40S: the same 100 KiB per SM)
    "sm90": (9, 0),  # H100, H200, GH200
    "sm100": (10, 0),  # B200, GB200; also sm_103 (B300) and sm_110
    "sm120": (12, 0),  # RTX 50xx, RTX PRO 6000; also sm_121 (DGX Spark)
}
# Largest dynamic shared memory one block may opt into, in bytes (CUDA C++ Programming Guide, "Technical
# Specifications per Compute Capability"): a config whose pipeline needs more does not launch there.
SHARED_MEMORY_PER_BLOCK: dict[str, int] = {
    "sm75": 64 << 10,
    "sm80": 163 << 10,
    "sm86": 99 << 10,
    "sm90": 227 << 10,
    "sm100": 227 << 10,
    "sm120": 99 << 10,
}
# Capabilities that the nearest-lower rule would map elsewhere (see CAPABILITY's comments).
_EXCEPTIONS: dict[tuple[int, int], str] = {(8, 7): "sm80"}
MIN_CAPABILITY: tuple[int, int] = (7, 5)


class UnsupportedArchitecture(ValueError):
    """A GPU older than sm_75: fastgrpo's Triton kernels are not built or checked for it."""


def arch_family(capability: tuple[int, int]) -> str:
    """The family whose defaults serve a GPU of ``capability`` (e.g. (8, 9) -> "sm86"): its own, the listed
    exceptions, else the nearest lower family (a newer minor or major revision runs its predecessor's code)."""
    cap = (int(capability[0]), int(capability[1]))
    if cap in _EXCEPTIONS:
        return _EXCEPTIONS[cap]
    if cap < MIN_CAPABILITY:
        raise UnsupportedArchitecture(
            f"compute capability {cap[0]}.{cap[1]} is older than sm_75, the oldest GPU fastgrpo's Triton kernels "
            "support; use backend='torch'"
        )
    return max((f for f in ARCH_FAMILIES if CAPABILITY[f] <= cap), key=lambda f: CAPABILITY[f])


def default(arch: str, kernel: str, precision: str) -> dict | None:
    """The built-in fields for (arch family, kernel family, precision); None: no Triton kernel there."""
    if arch not in DEFAULTS:
        raise ValueError(f"arch must be one of {ARCH_FAMILIES}, got {arch!r}")
    if kernel not in KERNELS:
        raise ValueError(f"kernel must be one of {KERNELS}, got {kernel!r}")
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    entry = DEFAULTS[arch][kernel][precision]
    return None if entry is None else dict(entry)


# ---- Values: each entry passes `python tools/compile_report.py --ci --check` (no spills, shared memory within
# the family's limit, the family's tensor-core MMA for 16-bit / TF32 operands, >= 64x64 16-bit tiles, pipelined
# loads, TMA variants on sm_90+), on triton 3.9 for every family and on triton 3.6 for sm80 and sm90. Compiled,
# never run on a GPU: speed per family is unmeasured (docs/kernel_notes.md has each entry's registers and memory).


def _tile(n: int, v: int, k: int, warps: int, stages: int) -> dict:
    return dict(block_n=n, block_v=v, block_k=k, num_warps=warps, num_stages=stages)


# 16-bit operands: 128x128x64, 8 warps, 3 stages (sm_90: wgmma, 217 / 255 / 254 registers for the forward, the
# frozen-head forward and dL/dy; sm_80/86/89/120: mma.sync; sm_100: tcgen05).
_GEMM_16 = _tile(128, 128, 64, 8, 3)
# The frozen-head forward also holds the softmax@W tile: off sm_90 it spills at 128x128x64 (sm_80 64 B, sm_86/89
# 8 B, sm_120 56 B, sm_100 88 B of stack on triton 3.9; sm_80 400 B on 3.6). 128x128x32 with 4 stages is clean on
# 3.9 everywhere but spills 200+ B on sm_80/120 under triton 3.6; what is clean on both tritons:
_FROZEN_16_SM80 = _tile(128, 64, 64, 8, 4)  # sm_80, sm_86/89
_FROZEN_16_SM100 = _tile(128, 128, 32, 8, 4)
_FROZEN_16_SM120 = _tile(128, 64, 32, 8, 4)  # 128x64x64 spills 8-32 B there
# TF32 (fp32 operands on tensor cores, when the user enables TF32 matmuls): twice the bytes per tile. Off sm_90/100,
# 128x128x64 needs 128 KiB of shared memory (over sm_86/120's 99 KiB) and spills 16-32 B: a 32-wide step there.
_TF32_SMALL_SMEM = _tile(128, 128, 32, 8, 3)
# TF32 frozen-head forward: 128x128 spills everywhere (sm_90 152 B, sm_100 200 B at 128x128x64); 128x64x32 does not.
_FROZEN_TF32 = _tile(128, 64, 32, 8, 4)
_FROZEN_TF32_SMALL_SMEM = _tile(128, 64, 32, 8, 3)  # 72 KiB, within 99 KiB
# Exact fp32 operands run on FMAs, not tensor cores: smaller tiles stay within the register file. The frozen-head
# forward takes 4 warps (at 8 it spills 8 B on sm_90 under triton 3.6, ptxas 12.8), except on sm_86/89, where 4
# warps spill 8-16 B (ptxas stops at 168 registers) and 8 are clean on triton 3.6 and 3.9.
_GEMM_FP32 = _tile(64, 64, 16, 8, 3)
_FROZEN_FP32 = _tile(64, 64, 16, 4, 3)
# The combine of the forward's vocabulary splits: rows x hidden-dimension step, 4 warps (what the launcher used
# before this table). fp32 operands: a 64-wide step (64x128 spills 24 B on sm_80 under triton 3.6, at 4 or 8 warps).
_COMBINE = dict(block_n=64, block_k=128, num_warps=4)
_COMBINE_FP32 = dict(block_n=64, block_k=64, num_warps=4)
# GRPO loss: whole rows per program, at most 512 tokens wide and 1024 elements per tile, 8 warps (4 elements per
# thread per tile). At 4 warps the all-options kernel spills 8-16 B with 16-bit inputs on sm_80/86/89/100.
_GRPO_LOSS = dict(max_block_t=512, max_tile=1024, num_warps=8)


def _gemm(b16: dict | None, fp32: dict | None, tf32: dict | None = None) -> dict[str, dict | None]:
    return {"bf16": b16, "fp16": b16, "fp32": fp32, "tf32": b16 if tf32 is None else tf32}


def _same(fields: dict | None) -> dict[str, dict | None]:
    return dict.fromkeys(PRECISIONS, fields)


def _family(
    frozen_16: dict, tf32: dict, frozen_tf32: dict, frozen_fp32: dict = _FROZEN_FP32
) -> dict[str, dict[str, dict | None]]:
    return {
        "fwd": _gemm(_GEMM_16, _GEMM_FP32, tf32),
        "fwd_softmax_w": _gemm(frozen_16, frozen_fp32, frozen_tf32),
        "bwd": _gemm(_GEMM_16, _GEMM_FP32, tf32),
        "combine": {"bf16": _COMBINE, "fp16": _COMBINE, "fp32": _COMBINE_FP32, "tf32": _COMBINE_FP32},
        "grpo_loss": _same(_GRPO_LOSS),
    }


# A forward that asks for any optional output (log_sum_sq_probs, mean_logits, is_top1) keeps their running values
# and tile reductions next to its tiles. Where a "fwd" or "fwd_softmax_w" entry then spills (compiled with every
# output on: tools/compile_report.py, families fwd_outputs and fwd_softmax_w_outputs), these fields replace the
# entry's for such launches (``output_tiles``): half the rows. Measured with every output on, triton 3.9 (regs /
# stack bytes at the table's tile): forward 255/8 with 16-bit and TF32 operands on sm_80/86/89/100/120 (TF32 sm_100
# 255/80, sm_120 255/16), TF32 on sm_90 255/8; frozen-head forward sm_90 bf16 255/96, sm_100 bf16 255/384, sm_100
# TF32 (TMA) 255/24, exact fp32 sm_80/86/89 8, sm_90 32, sm_100 48, sm_120 40 bytes. Half the rows: no spills
# (sm_80 exact fp32 frozen: 32 rows spill 8 B at 3 stages, none at 2; sm_100 TF32 forward: a 32-wide k step too).
_HALF_16 = dict(block_n=64)
_HALF_FP32 = dict(block_n=32)
_FWD_HALF = {"bf16": _HALF_16, "fp16": _HALF_16, "tf32": _HALF_16}
OUTPUT_TILES: dict[str, dict[str, dict[str, dict]]] = {
    "sm80": {"fwd": _FWD_HALF, "fwd_softmax_w": {"fp32": dict(block_n=32, num_stages=2)}},
    "sm86": {"fwd": _FWD_HALF, "fwd_softmax_w": {"fp32": _HALF_FP32}},
    "sm90": {"fwd": {"tf32": _HALF_16}, "fwd_softmax_w": {"bf16": _HALF_16, "fp16": _HALF_16, "fp32": _HALF_FP32}},
    "sm100": {
        "fwd": {**_FWD_HALF, "tf32": dict(block_n=64, block_k=32)},  # 64x128x64 TMA: 16 B at 128 registers
        "fwd_softmax_w": {"bf16": _HALF_16, "fp16": _HALF_16, "fp32": _HALF_FP32, "tf32": _HALF_16},
    },
    "sm120": {"fwd": _FWD_HALF, "fwd_softmax_w": {"fp32": _HALF_FP32}},
}


def output_tiles(arch: str | None, kernel: str, precision: str) -> dict:
    """Fields replacing a ``kernel`` ("fwd" / "fwd_softmax_w") config's for a launch that asks for any optional
    output (empty: none)."""
    return dict(OUTPUT_TILES.get(arch or "", {}).get(kernel, {}).get(precision, {}))


# Families no Triton kernel serves (every entry None): the torch path for the whole device, and why (logged once;
# backend="triton" raises with it).
TORCH_PATH: dict[str, str] = {
    "sm75": "Triton lowers no matmul to tensor cores on sm_75 (T4, RTX 20xx), and sm_75 has no bf16 tensor cores",
}

DEFAULTS: dict[str, dict[str, dict[str, dict | None]]] = {
    # T4 / RTX 20xx: Triton (3.6 and 3.9) lowers no dot to tensor-core MMA on sm_75, fp16 included (FMAs; every
    # GEMM kernel spills kilobytes per thread), and sm_75 has no bf16 tensor cores: the chunked torch path (cuBLAS)
    # serves every kernel there, said once in the log. The GRPO loss follows (one backend choice per device).
    "sm75": dict.fromkeys(KERNELS, _same(None)),
    "sm80": _family(_FROZEN_16_SM80, _TF32_SMALL_SMEM, _FROZEN_TF32),
    "sm86": _family(_FROZEN_16_SM80, _TF32_SMALL_SMEM, _FROZEN_TF32_SMALL_SMEM, _GEMM_FP32),
    "sm90": _family(_GEMM_16, _GEMM_16, _FROZEN_TF32),
    "sm100": _family(_FROZEN_16_SM100, _GEMM_16, _FROZEN_TF32),
    "sm120": _family(_FROZEN_16_SM120, _TF32_SMALL_SMEM, _FROZEN_TF32_SMALL_SMEM),
}
