"""trl integration: ``FastGRPOTrainer`` (a drop-in ``trl.GRPOTrainer``) and ``patch_trl()`` / ``unpatch_trl()``.

Importing this package imports trl; ``import fastgrpo`` alone does not (it loads this package on first use).
"""

from __future__ import annotations

from .trainer import FastGRPOTrainer, is_trl_patched, patch_trl, trl_support, unpatch_trl

__all__ = ["FastGRPOTrainer", "is_trl_patched", "patch_trl", "trl_support", "unpatch_trl"]
