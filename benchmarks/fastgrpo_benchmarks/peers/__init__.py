"""The implementations the suite compares (one module each in this package), by name (``harness.suites.IMPLS``)."""

from __future__ import annotations

from collections.abc import Callable

from ..harness.suites import OUTPUT_MODES
from . import cce, eager, fastgrpo, liger, trl
from .base import Outputs, Runner, Unavailable

BUILDERS: dict[str, Callable[[str, str], Runner]] = {
    "fastgrpo": fastgrpo.build,
    "trl_chunked": trl.build,
    "eager": eager.build,
    "liger_fused": liger.build_fused,
    "liger_triton": liger.build_triton,
    "cce": cce.build,
}
# Implementations that exist only for the GRPO mode: no row at all in the op modes (not a skip).
GRPO_ONLY = ("liger_fused", "liger_triton")
# The modes that measure trl's optional per-token outputs: only the heads that offer them have rows there.
OUTPUT_MODE_IMPLS = ("fastgrpo", "trl_chunked")
NOTES = {"cce": cce.NOTE}


def applies(impl: str, mode: str) -> bool:
    if mode in OUTPUT_MODES:
        return impl in OUTPUT_MODE_IMPLS
    return mode == "grpo" or impl not in GRPO_ONLY


def build(impl: str, mode: str, device: str) -> Runner:
    """The runner of ``impl`` in ``mode`` on ``device``; raises Unavailable with the reason it cannot run."""
    if impl not in BUILDERS:
        raise Unavailable(f"unknown implementation {impl!r}")
    return BUILDERS[impl](mode, device)


__all__ = ["BUILDERS", "GRPO_ONLY", "NOTES", "Outputs", "Runner", "Unavailable", "applies", "build"]
