"""The GRPO loss of trl's ``GRPOTrainer`` as a fused op, and its composition with the fused lm_head log-probs.

Layers: ``fastgrpo_kernels.grpo_loss`` (Triton kernel) -> ``launch.py`` (checks, allocation, launch) /
``torch_math.py`` (the same math in torch) -> ``autograd.py`` -> ``api.py`` (``grpo_loss``) and ``fused.py``
(``fused_linear_grpo_loss``). What each loss type is (kernel kind, normaliser, metrics, needed inputs) is declared
once, in ``registry.py``; see docs/adding_a_loss_type.md.
"""

from __future__ import annotations

from .api import grpo_loss
from .fused import fused_linear_grpo_loss
from .options import IMPORTANCE_SAMPLING_LEVELS, LOSS_TYPES, GRPOLossOptions
from .output import GRPOLossOutput

__all__ = [
    "IMPORTANCE_SAMPLING_LEVELS",
    "LOSS_TYPES",
    "GRPOLossOptions",
    "GRPOLossOutput",
    "fused_linear_grpo_loss",
    "grpo_loss",
]
