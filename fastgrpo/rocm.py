"""ROCm devices: which AMD GPU a ``cuda`` device is.

A ROCm build of torch (``torch.version.hip`` set) reports AMD GPUs as ``device.type == "cuda"`` and answers
``get_device_capability`` with the gfx version's digits (MI300X, gfx942: (9, 4)), which collide with NVIDIA's
compute capabilities (sm_90 is (9, 0)). What a device is on ROCm is read from its gfx name instead:
``get_device_properties(device).gcnArchName``, e.g. ``"gfx942:sramecc+:xnack-"`` (the target features after the
first colon do not change the code Triton generates for fastgrpo's kernels).
"""

from __future__ import annotations

import torch


def is_rocm() -> bool:
    """Whether this torch is a ROCm build (its ``cuda`` devices are AMD GPUs)."""
    return torch.version.hip is not None


def gfx_arch(device: torch.device | None = None) -> str:
    """The gfx target of a ROCm ``cuda`` device (``device.index`` None or no device: the current one), e.g.
    ``"gfx942"``, without the target features."""
    index = None if device is None else device.index
    if index is None:
        index = torch.cuda.current_device()
    name = torch.cuda.get_device_properties(index).gcnArchName
    return name.split(":", 1)[0].strip().lower()
