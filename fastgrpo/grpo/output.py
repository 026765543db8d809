"""``GRPOLossOutput``: the loss and the statistics trl logs, as local sums and counts."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass(frozen=True)
class GRPOLossOutput:
    """What :func:`fastgrpo.grpo_loss` returns.

    Attributes:
        loss: 0-d fp32, differentiable; trl's ``_compute_loss`` value (gradient-accumulation scaling included).
        policy_loss: 0-d fp32, detached; the policy loss before the division by ``gradient_accumulation_steps``
            and without the entropy bonus (trl logs it as ``policy_loss`` when the entropy bonus is on).
        metrics: trl's metric name (``"kl"``, ``"entropy"``, ``"clip_ratio/low_mean"``, ``"clip_ratio/high_mean"``,
            ``"clip_ratio/region_mean"``, ``"cispo_clip_ratio"``, ``"vespo/phi_seq_mean"``; only those this
            configuration produces) -> fp32 tensor ``[local_sum, local_count]``. Reduce across ranks as trl does:
            ``totals = accelerator.reduce(metrics[name], reduction="sum"); value = totals[0] / totals[1].clamp(min=1)``.
        clip_ratio_low_per_seq, clip_ratio_high_per_seq: ``[B]`` fraction of each sequence's tokens that were
            low / high clipped (NaN for a sequence without tokens at token level; 0/1 at sequence level), or None for
            loss types without PPO clipping. trl logs ``nanmin(gather(low))`` as ``clip_ratio/low_min`` and
            ``nanmax(gather(high))`` as ``clip_ratio/high_max``.
    """

    loss: torch.Tensor
    policy_loss: torch.Tensor
    metrics: dict[str, torch.Tensor] = field(default_factory=dict)
    clip_ratio_low_per_seq: torch.Tensor | None = None
    clip_ratio_high_per_seq: torch.Tensor | None = None

    def local_mean(self, name: str) -> torch.Tensor:
        """This rank's value of metric ``name`` (what trl logs on a single process)."""
        total, count = self.metrics[name].unbind()
        return total / count.clamp(min=1.0)
