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


# ---- Values (the sm_90 table everywhere for now; each architecture's entries replace these as they are checked) ----

# 16-bit (and TF32) operands: 128x128x64 tiles, 8 warps, 3 stages compile for sm_90 to wgmma with pipelined async
# copies and no spills (tools/compile_report.py).
_GEMM_16 = dict(block_n=128, block_v=128, block_k=64, num_warps=8, num_stages=3)
# Exact fp32 operands run on FMAs, not tensor cores: smaller tiles stay within the register file.
_GEMM_FP32 = dict(block_n=64, block_v=64, block_k=16, num_warps=8, num_stages=3)
# The combine of the forward's vocabulary splits: rows x hidden-dimension step.
_COMBINE = dict(block_n=64, block_k=128, num_warps=4)
# GRPO loss: whole rows per program, at most 512 tokens wide and 1024 elements per tile (about 25 live fp32 tiles:
# 8 elements per thread each at 4 warps).
_GRPO_LOSS = dict(max_block_t=512, max_tile=1024, num_warps=4)


def _gemm(b16: dict | None, fp32: dict | None, tf32: dict | None = None) -> dict[str, dict | None]:
    return {"bf16": b16, "fp16": b16, "fp32": fp32, "tf32": b16 if tf32 is None else tf32}


def _same(fields: dict) -> dict[str, dict | None]:
    return dict.fromkeys(PRECISIONS, fields)


DEFAULTS: dict[str, dict[str, dict[str, dict | None]]] = {
    "sm75": {
        "fwd": _gemm(_GEMM_16, _GEMM_FP32),
        "fwd_softmax_w": _gemm(_GEMM_16, _GEMM_FP32),
        "bwd": _gemm(_GEMM_16, _GEMM_FP32),
        "combine": _same(_COMBINE),
        "grpo_loss": _same(_GRPO_LOSS),
    },
    "sm80": {
        "fwd": _gemm(_GEMM_16, _GEMM_FP32),
        "fwd_softmax_w": _gemm(_GEMM_16, _GEMM_FP32),
        "bwd": _gemm(_GEMM_16, _GEMM_FP32),
        "combine": _same(_COMBINE),
        "grpo_loss": _same(_GRPO_LOSS),
    },
    "sm86": {
        "fwd": _gemm(_GEMM_16, _GEMM_FP32),
        "fwd_softmax_w": _gemm(_GEMM_16, _GEMM_FP32),
        "bwd": _gemm(_GEMM_16, _GEMM_FP32),
        "combine": _same(_COMBINE),
        "grpo_loss": _same(_GRPO_LOSS),
    },
    "sm90": {
        "fwd": _gemm(_GEMM_16, _GEMM_FP32),
        "fwd_softmax_w": _gemm(_GEMM_16, _GEMM_FP32),
        "bwd": _gemm(_GEMM_16, _GEMM_FP32),
        "combine": _same(_COMBINE),
        "grpo_loss": _same(_GRPO_LOSS),
    },
    "sm100": {
        "fwd": _gemm(_GEMM_16, _GEMM_FP32),
        "fwd_softmax_w": _gemm(_GEMM_16, _GEMM_FP32),
        "bwd": _gemm(_GEMM_16, _GEMM_FP32),
        "combine": _same(_COMBINE),
        "grpo_loss": _same(_GRPO_LOSS),
    },
    "sm120": {
        "fwd": _gemm(_GEMM_16, _GEMM_FP32),
        "fwd_softmax_w": _gemm(_GEMM_16, _GEMM_FP32),
        "bwd": _gemm(_GEMM_16, _GEMM_FP32),
        "combine": _same(_COMBINE),
        "grpo_loss": _same(_GRPO_LOSS),
    },
}
