"""Test-only shim: let accelerate run tensor parallelism on a CPU-only machine (gloo).

``Accelerator.multi_device`` leaves out ``DistributedType.MULTI_CPU``, and ``ParallelismConfig._validate_accelerator``
(accelerate 1.16, ~line 391) then refuses ``tp_size > 1`` with "only compatible DistributedType.FSDP ... but got
MULTI_CPU". TP itself runs over gloo. This counts MULTI_CPU as multi-device, which is what the GPU types get; the
real multi-GPU path is therefore not what these tests exercise. Never used by the library.
"""

from __future__ import annotations

from typing import Any

_ORIGINAL: dict[str, Any] = {}


def install() -> None:
    from accelerate import Accelerator
    from accelerate.utils import DistributedType

    if "multi_device" in _ORIGINAL:
        return
    original = Accelerator.multi_device
    _ORIGINAL["multi_device"] = original

    def multi_device(self: Any) -> bool:
        return original.fget(self) or (self.use_distributed and self.distributed_type == DistributedType.MULTI_CPU)

    Accelerator.multi_device = property(multi_device)  # type: ignore[method-assign,assignment]


def uninstall() -> None:
    from accelerate import Accelerator

    if "multi_device" in _ORIGINAL:
        Accelerator.multi_device = _ORIGINAL.pop("multi_device")  # type: ignore[method-assign]
