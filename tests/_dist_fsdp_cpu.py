"""Test-only shim: let accelerate run FSDP2 on a CPU-only machine (gloo).

accelerate 1.15 sets ``DistributedType.FSDP`` only for accelerator device types; with ``cpu=True`` an FSDP plugin is
dropped silently and the model is wrapped in DDP (distributed type ``MULTI_CPU``). FSDP2 itself works over gloo, so
after accelerate's own ``AcceleratorState.__init__`` this promotes ``MULTI_CPU`` + an FSDP plugin to ``FSDP``.
Never used by the library; the tests assert that FSDP2 is really active (``accelerator.is_fsdp2``, DTensor params).
"""

from __future__ import annotations

from typing import Any

_ORIGINAL: dict[str, Any] = {}


def install() -> None:
    from accelerate.state import AcceleratorState, PartialState
    from accelerate.utils import DistributedType

    if "init" in _ORIGINAL:
        return
    original = AcceleratorState.__init__
    _ORIGINAL["init"] = original

    def init(self: Any, *args: Any, fsdp_plugin: Any = None, **kwargs: Any) -> None:
        original(self, *args, fsdp_plugin=fsdp_plugin, **kwargs)
        # (FSDP already: a previous promotion left it in PartialState's shared state, which this init copied.)
        if fsdp_plugin is not None and self.distributed_type in (DistributedType.MULTI_CPU, DistributedType.FSDP):
            self.distributed_type = DistributedType.FSDP
            self.fsdp_plugin = fsdp_plugin
            # Later AcceleratorState() calls copy PartialState's type over the shared state: keep them in step.
            PartialState._shared_state["distributed_type"] = DistributedType.FSDP

    AcceleratorState.__init__ = init  # type: ignore[method-assign]


def uninstall() -> None:
    from accelerate.state import AcceleratorState

    if "init" in _ORIGINAL:
        AcceleratorState.__init__ = _ORIGINAL.pop("init")  # type: ignore[method-assign]
