"""fp32-accumulated GEMMs from 16-bit operands, for the gradient matmuls of the Triton backward.

On a CUDA GPU, torch >= 2.8 multiplies bf16/fp16 matrices straight into an fp32 output (``out_dtype``), with no
rounding of the product to 16 bits and no fp32 copies of the operands. Which forms each torch accepts, read in
``aten/src/ATen/native/cuda/Blas.cpp`` (the checks' messages also looked up in each release's ``libtorch_cuda.so``):

- torch 2.5 ... 2.7: no ``out_dtype`` overloads (``aten::mm.dtype``/``addmm.dtype`` are absent from the 2.5 wheel's
  ``ATen/ops/mm.h`` / ``addmm.h``; present from 2.8, added by pytorch#150812).
- torch >= 2.8: ``mm(a, b, out_dtype=float32[, out=])`` (``_mm_dtype_out_cuda``: mat1 and mat2 of one 16-bit dtype,
  out of ``out_dtype``). It computes through ``addmm_out_cuda_impl`` with ``beta = 0`` into the fp32 result
  (``gemm<scalar_t, float>``).
- torch >= 2.10: ``addmm(out, a, b, out_dtype=float32, out=out)`` with an fp32 ``self``. Before pytorch#167931
  ("allows ``self`` argument to have the same precision as output", Nov 2025) nothing promised an fp32 ``self``
  with 16-bit matrices: 2.8 / 2.9 have no check on ``self``'s dtype at all, main briefly required
  ``self.dtype == mat2.dtype`` ("self and mat2 must have the same dtype"), and 2.10 and 2.11 check
  "self dtype must match either out_dtype or mat1 dtype". So the in-place accumulate uses ``addmm`` only from 2.10,
  and ``out.add_(mm(..., out_dtype))`` (one fp32 temporary of the product) on 2.8 / 2.9.
- ROCm builds: the fp32-output-from-16-bit cuBLASLt path raises "float output with half input is not enabled for
  ROCm" and the plain path was not checked there, so ROCm takes the upcast path below.

Everywhere else (CPU, the interpreter, XPU, older torch, fp32 operands) the operands are upcast to fp32 first: the same
products (a 16-bit value is exact in fp32, and in TF32), more memory.
"""

from __future__ import annotations

from typing import Literal

import torch

_TORCH = tuple(int(p) for p in torch.__version__.split("+")[0].split(".")[:2])
_HALF = (torch.bfloat16, torch.float16)

Plan = Literal["addmm_out_dtype", "mm_out_dtype", "upcast"]


def _on_cuda(t: torch.Tensor) -> bool:
    return t.device.type == "cuda"


def _native_out_dtype(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Whether torch's CUDA GEMM can take ``a`` and ``b`` as they are and write fp32 (see the module docstring)."""
    return _TORCH >= (2, 8) and _on_cuda(a) and torch.version.hip is None and a.dtype in _HALF and b.dtype == a.dtype


def plan(a: torch.Tensor, b: torch.Tensor, accumulate: bool) -> Plan:
    """Which torch call ``mm_fp32`` makes for these operands on this torch."""
    if not _native_out_dtype(a, b):
        return "upcast"
    if accumulate and _TORCH >= (2, 10):
        return "addmm_out_dtype"
    return "mm_out_dtype"


def mm_fp32(
    a: torch.Tensor, b: torch.Tensor, out: torch.Tensor | None = None, accumulate: bool = False
) -> torch.Tensor:
    """``a @ b`` accumulated in fp32, without first rounding the product to the inputs' 16-bit dtype: added into
    ``out`` (fp32) when ``accumulate``, else written into ``out`` or returned."""
    how = plan(a, b, accumulate)
    if how == "addmm_out_dtype":
        return torch.addmm(out, a, b, out_dtype=torch.float32, out=out)
    if how == "mm_out_dtype":
        if accumulate:
            return out.add_(torch.mm(a, b, out_dtype=torch.float32))
        if out is None:
            return torch.mm(a, b, out_dtype=torch.float32)
        return torch.mm(a, b, out_dtype=torch.float32, out=out)
    a32, b32 = a.float(), b.float()
    if accumulate:
        return out.addmm_(a32, b32)
    return a32 @ b32 if out is None else torch.mm(a32, b32, out=out)
