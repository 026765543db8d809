"""trl integration: ``patch_trl()`` / ``unpatch_trl()``, ``add_fused_lm_head`` (trl's fused head on fastgrpo's kernels)
and ``FastGRPOTrainer`` (a drop-in ``trl.GRPOTrainer``).

Importing this package imports trl; ``import fastgrpo`` alone does not (it loads this package on first use).
"""

from __future__ import annotations

from .head import add_fused_lm_head
from .trainer import FastGRPOTrainer, is_trl_patched, patch_trl, trl_support, unpatch_trl

__all__ = ["FastGRPOTrainer", "add_fused_lm_head", "is_trl_patched", "patch_trl", "trl_support", "unpatch_trl"]
