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


def fp32_dot_precision() -> DotPrecision:
    """Triton's ``input_precision`` for fp32 operands: "tf32" where torch's fp32 matmuls may use TF32, else "ieee"."""
    return "tf32" if fp32_matmul_allows_tf32() else "ieee"
