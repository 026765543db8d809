"""Which precision fp32 matmuls may use: the user's TF32 setting, read through the API this torch offers.

fastgrpo's Triton kernels multiply fp32 operands in TF32 exactly when torch's own fp32 CUDA matmuls would, so
``torch.backends.cuda.matmul.fp32_precision = "tf32"`` (or the legacy ``allow_tf32 = True``, or
``torch.set_float32_matmul_precision("high")``) speeds up both alike, and the default stays exact fp32.

What torch offers, read in its sources:

- torch 2.5 ... 2.8: only the legacy flag. ``torch.backends.cuda.matmul.allow_tf32`` reads
  ``at::Context::allowTF32CuBLAS()``, i.e. ``float32_matmul_precision != HIGHEST`` (``aten/src/ATen/Context.cpp``);
  ``torch/backends/cuda/__init__.py`` has no ``fp32_precision`` there (checked in the 2.5.0 and 2.8.0 wheels).
- torch >= 2.9: ``torch.backends.cuda.matmul.fp32_precision`` (``torch/backends/cuda/__init__.py``, class
  ``cuBLASModule``, in the 2.9.0 and 2.10.0 wheels) returns ``Context::float32Precision(cuda, matmul)``, which
  resolves ``"none"`` through ``cuda.all`` and then ``torch.backends.fp32_precision`` (the generic setting that
  transformers' ``enable_tf32`` writes); it answers ``"tf32"``, ``"ieee"``, or ``"none"`` when nothing was set
  (torch's default: exact fp32). torch's cuBLAS GEMMs use TF32 exactly when ``float32Precision(CUDA, MATMUL) ==
  TF32`` (``aten/src/ATen/cuda/CUDABlas.cpp``), and the legacy setters write this setting too
  (``setAllowTF32CuBLAS``, ``setFloat32MatmulPrecision``), so it is the one source of truth. The legacy getter is
  not: ``allowTF32CuBLAS()`` raises "mix of the legacy and new APIs" whenever the two disagree, e.g. after
  ``torch.backends.fp32_precision = "tf32"``. Read in ``Context.cpp`` (its string-keyed form, as in the 2.9.0
  wheel's ``Context.h``, and its enum-keyed form, as from 2.10.0) and run on torch 2.13.
"""

from __future__ import annotations

import os
from typing import Literal

import torch

DotPrecision = Literal["tf32", "ieee"]


def fp32_matmul_allows_tf32() -> bool:
    """Whether the user allowed TF32 for fp32 CUDA matmuls (torch's default: no)."""
    cublas = torch.backends.cuda.matmul
    try:
        setting = cublas.fp32_precision  # torch >= 2.9
    except AttributeError:  # torch < 2.9 (cuBLASModule.__getattr__ raises it for names it lacks): the legacy flag
        return bool(cublas.allow_tf32)
    return setting == "tf32"


def fp32_dot_precision(device: torch.device | None = None) -> DotPrecision:
    """Triton's ``input_precision`` for fp32 operands on ``device`` (None: the current one): "tf32" where torch's
    fp32 matmuls there may use TF32 (on ROCm: ``rocm_fp32_matmul_uses_xf32``), else "ieee"."""
    if not fp32_matmul_allows_tf32():
        return "ieee"
    if torch.version.hip is not None:
        return "tf32" if rocm_fp32_matmul_uses_xf32(device) else "ieee"
    return "tf32"


# ---- ROCm (AMD Instinct) ----
# torch's fp32 matmuls on ROCm use XF32 (AMD's TF32: hipBLASLt's HIPBLAS_COMPUTE_32F_FAST_TF32) only when the TF32
# setting above is on *and* the environment has HIPBLASLT_ALLOW_TF32=1: ``Context::allowTF32CuBLAS()`` returns false
# on ROCm unless that variable is "1" (pytorch#139869, torch >= 2.7; c10's boolean env check accepts "1" only).
# Triton lowers ``input_precision="tf32"`` only on gfx942 (MI300X/MI325X: v_mfma_f32_*_xf32); on gfx90a and gfx950
# it is a compile error ("tf32" is not in their allowed_dot_input_precisions, triton 3.6 and 3.9), and gfx950 has no
# XF32 MFMA. So fastgrpo uses tf32 only on gfx942 with both switches on, exact fp32 ("ieee") otherwise. Exact fp32
# still runs on the matrix cores on CDNA: Triton lowers an "ieee" fp32 dot to v_mfma_f32_32x32x2_f32 on gfx90a,
# gfx942 and gfx950 (read from the AMDGCN by tools/compile_report.py).
ROCM_TF32_ENV = "HIPBLASLT_ALLOW_TF32"
ROCM_TF32_ARCHS = frozenset({"gfx940", "gfx941", "gfx942"})  # CDNA3: the MI300 series


def rocm_fp32_matmul_uses_xf32(device: torch.device | None = None) -> bool:
    """On a ROCm torch with TF32 allowed: whether fp32 matmuls on ``device`` may use XF32 (see above)."""
    if os.environ.get(ROCM_TF32_ENV) != "1":
        return False
    if device is not None and device.type != "cuda":
        return False
    from .rocm import gfx_arch

    return gfx_arch(device) in ROCM_TF32_ARCHS
