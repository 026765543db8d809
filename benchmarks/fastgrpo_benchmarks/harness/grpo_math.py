"""The GRPO loss of the benchmark's GRPO mode, in eager torch, for peers that only produce log-probs.

trl's defaults (``loss_type="dapo"``, token-level importance sampling, ``use_bias_correction_kl=True``) with
``beta=0.04`` so the k3 KL term is exercised, on-policy (old log-probs = the current ones, detached, as trl does when
it skips the old-policy pass), one process and no gradient accumulation: the dapo normaliser is then the number of
completion tokens. It is a transcription of that one configuration of trl's ``_compute_loss``, used for timing and
as the float64 reference of the GRPO mode.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class GRPOSettings:
    beta: float = 0.04
    epsilon_low: float = 0.2
    epsilon_high: float = 0.2
    loss_type: str = "dapo"
    use_bias_correction_kl: bool = True


SETTINGS = GRPOSettings()


def grpo_loss_from_logps(
    logp: torch.Tensor,  # [B, T]
    ref_logp: torch.Tensor,  # [B, T]
    advantages: torch.Tensor,  # [B]
    mask: torch.Tensor,  # [B, T]
    settings: GRPOSettings = SETTINGS,
) -> torch.Tensor:
    """Scalar dapo loss: clipped policy term plus ``beta`` times the (bias-corrected) k3 KL, token mean."""
    old = logp.detach()
    coef_1 = torch.exp(logp - old)
    coef_2 = torch.clamp(coef_1, 1 - settings.epsilon_low, 1 + settings.epsilon_high)
    adv = advantages.to(logp.dtype)[:, None]
    per_token = -torch.min(coef_1 * adv, coef_2 * adv)
    if settings.beta != 0.0:
        diff = ref_logp.to(logp.dtype) - logp
        kl = torch.exp(diff) - diff - 1
        if settings.use_bias_correction_kl:
            kl = kl * coef_1
        per_token = per_token + settings.beta * kl
    m = mask.to(logp.dtype)
    return (per_token * m).sum() / m.sum().clamp(min=1.0)
