"""The tensor inputs of the GRPO loss, bundled once validated (see ``checks.py``)."""

from __future__ import annotations

from typing import NamedTuple

import torch


class GRPOTensors(NamedTuple):
    """Validated inputs, all on one device. Only ``per_token_logps`` and ``entropies`` receive gradients.

    Shapes: ``[B, T]`` except ``advantages`` (``[B]`` or ``[B, 1]``), ``importance_sampling_ratio`` (``[B, T]`` or
    ``[B, 1]``) and ``num_items_in_batch`` (0-d fp32 tensor, or None when the loss type does not use it).
    """

    per_token_logps: torch.Tensor
    advantages: torch.Tensor
    completion_mask: torch.Tensor
    old_per_token_logps: torch.Tensor | None = None
    ref_per_token_logps: torch.Tensor | None = None
    importance_sampling_ratio: torch.Tensor | None = None
    sampling_per_token_logps: torch.Tensor | None = None
    entropies: torch.Tensor | None = None
    entropy_mask: torch.Tensor | None = None
    num_items_in_batch: torch.Tensor | None = None
