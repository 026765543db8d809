"""fastgrpo: fused Triton kernels for GRPO training with Hugging Face trl.

Importing fastgrpo has no side effects: trl is imported only when the trainer integration is used, and nothing is
patched until ``patch_trl()`` is called.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .api import LogProbs, linear_logprobs
from .options import LogProbOptions

__version__ = "0.1.0.dev0"

# Heavier pieces load on first use (module-level __getattr__), so `import fastgrpo` stays light.
_LAZY = {
    "grpo_loss": "fastgrpo.grpo",
    "fused_linear_grpo_loss": "fastgrpo.grpo",
    "GRPOLossOutput": "fastgrpo.grpo",
    "GRPOLossOptions": "fastgrpo.grpo",
    "FastGRPOTrainer": "fastgrpo.integration",
    "add_fused_lm_head": "fastgrpo.integration.head",
    "patch_trl": "fastgrpo.integration",
    "unpatch_trl": "fastgrpo.integration",
    "is_trl_patched": "fastgrpo.integration",
}

__all__ = ["LogProbOptions", "LogProbs", "linear_logprobs", *_LAZY]

if TYPE_CHECKING:  # pragma: no cover
    from .grpo import GRPOLossOptions, GRPOLossOutput, fused_linear_grpo_loss, grpo_loss  # noqa: F401
    from .integration import FastGRPOTrainer, is_trl_patched, patch_trl, unpatch_trl  # noqa: F401
    from .integration.head import add_fused_lm_head  # noqa: F401


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'fastgrpo' has no attribute {name!r}")
