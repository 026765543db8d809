"""Host-side TMA tensor descriptors for the lm_head kernels' tile loads (``KernelConfig.use_tma``).

A descriptor needs sm_90+, a 2-D tensor with unit inner stride, a 16-byte aligned base and 16-byte multiple row
pitch, power-of-two boxes of at most 256 elements per side, and int32 sizes. Where any of that fails, the kernels
take the pointer-load path (same results; said once in the log).
"""

from __future__ import annotations

import logging

import torch

from fastgrpo_kernels.common import INTERPRET

from ._log import log_once

_MAX_BOX = 256  # cuTensorMapEncodeTiled: every box dimension <= 256 elements

try:
    from triton.tools.tensor_descriptor import TensorDescriptor
except ImportError:  # triton < 3.4
    TensorDescriptor = None


def unsupported_reason(t: torch.Tensor, block: tuple[int, int]) -> str | None:
    """Why a descriptor over ``t`` with box ``block`` cannot be built (None: it can). Checked up front because
    ``TensorDescriptor`` signals these with bare assertions."""
    elt = t.element_size()
    if t.dim() != 2 or t.numel() == 0:
        return "needs a non-empty 2-D tensor"
    if t.stride(1) != 1:
        return "the last dimension is not contiguous"
    if t.data_ptr() % 16:
        return "the base address is not 16-byte aligned"
    if (t.stride(0) * elt) % 16:
        return f"the row pitch ({t.stride(0)} elements of {elt} bytes) is not a multiple of 16 bytes"
    if block[1] * elt < 16 or max(block) > _MAX_BOX or any(b & (b - 1) for b in block):
        return f"box {list(block)} is outside TMA's limits"
    if max(t.shape) >= 2**31:
        return "a dimension does not fit int32"
    return None


def tma_capable(device: torch.device) -> bool:
    """Whether ``device`` is an NVIDIA GPU with TMA (sm_90+). The capability of ``device`` itself, not of the current
    device. ROCm also reports ``device.type == "cuda"``, with its gfx version as the "capability" (9.4 for MI300):
    not an SM number, and no TMA, so ROCm gets pointer loads."""
    if device.type != "cuda" or torch.version.hip is not None:
        return False
    return torch.cuda.get_device_capability(device)[0] >= 9


def descriptors(
    hidden: torch.Tensor, weight: torch.Tensor, block_n: int, block_v: int, block_k: int, exact_fp32: bool
) -> tuple[object | None, object | None]:
    """``(x_desc, w_desc)`` for the config's tiles, or ``(None, None)``: pointer loads."""
    reason = None
    if TensorDescriptor is None:
        reason = "this triton has no triton.tools.tensor_descriptor (needs triton >= 3.4)"
    elif exact_fp32 and not INTERPRET:
        reason = "exact fp32 dots run on FMAs, where TMA tiles cost registers and spill"
    elif not INTERPRET and not tma_capable(hidden.device):
        reason = "TMA needs an NVIDIA sm_90 or newer GPU"
    else:
        reason = unsupported_reason(hidden, (block_n, block_k)) or unsupported_reason(weight, (block_v, block_k))
    if reason is not None:
        log_once(f"tma|{reason}", f"fastgrpo: use_tma requested but {reason}; using pointer loads", logging.INFO)
        return None, None
    x_desc = TensorDescriptor(hidden, list(hidden.shape), list(hidden.stride()), [block_n, block_k])
    w_desc = TensorDescriptor(weight, list(weight.shape), list(weight.stride()), [block_v, block_k])
    return x_desc, w_desc
