"""From per-row statistics to the scalar loss, the gradient weights and the metrics (shared by both backends).

Everything here is a handful of torch ops on ``[B]`` tensors: deterministic, no host synchronisation.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from . import layout as L
from .options import NUM_ITEMS_LOSSES, PER_ROW_MEAN_LOSSES, PPO_CLIP_LOSSES, GRPOLossOptions


class Finalized(NamedTuple):
    loss: torch.Tensor  # 0-d
    policy_loss: torch.Tensor  # 0-d
    row_weight: torch.Tensor  # [B]: d loss / d row_loss[b]
    entropy_weight: torch.Tensor | None  # 0-d: d loss / d (entropy_coef-free) bonus term, or None


def finalize_loss(stats: torch.Tensor, opts: GRPOLossOptions, num_items_in_batch: torch.Tensor | None) -> Finalized:
    """trl's normalisation of ``row_loss = sum_t per_token_loss * mask`` for ``opts.loss_type``."""
    bsz = stats.shape[0]
    row_loss, count = stats[:, L.ROW_LOSS], stats[:, L.ROW_COUNT]
    gas = float(opts.gradient_accumulation_steps)
    ones = torch.ones_like(row_loss)
    if opts.loss_type in PER_ROW_MEAN_LOSSES:
        per_row = 1.0 / count.clamp(min=1.0)
        policy_loss = (row_loss * per_row).mean()
        loss, row_weight = policy_loss / gas, per_row / (bsz * gas)
    elif opts.loss_type == "bnpo":
        total = count.sum().clamp(min=1.0)
        policy_loss = row_loss.sum() / total
        loss, row_weight = policy_loss / gas, ones / (total * gas)
    elif opts.loss_type == "dr_grpo":
        denom = float(bsz * opts.max_completion_length)
        policy_loss = row_loss.sum() / denom
        loss, row_weight = policy_loss / gas, ones / (denom * gas)
    elif opts.loss_type in NUM_ITEMS_LOSSES:
        normalizer = num_items_in_batch.to(stats.dtype).clamp(min=1.0) / opts.num_processes
        normalizer = normalizer * gas / opts.resolved_steps_per_generation
        policy_loss = row_loss.sum() / normalizer
        loss, row_weight = policy_loss, ones / normalizer
    else:  # luspo: per-row sum, then batch mean
        policy_loss = row_loss.mean()
        loss, row_weight = policy_loss / gas, ones / (bsz * gas)

    entropy_weight = None
    if opts.has_entropy_bonus:
        bonus_count = stats[:, L.ENTROPY_BONUS_COUNT].sum().clamp(min=1.0)
        entropy_loss = stats[:, L.ENTROPY_BONUS_SUM].sum() / bonus_count / gas
        loss = loss - opts.entropy_coef * entropy_loss
        entropy_weight = 1.0 / (bonus_count * gas)
    return Finalized(loss, policy_loss.detach(), row_weight, entropy_weight)


def metrics_from_stats(
    stats: torch.Tensor, opts: GRPOLossOptions, has_entropies: bool
) -> tuple[dict[str, torch.Tensor], torch.Tensor | None, torch.Tensor | None]:
    """trl's logged statistics as ``[local_sum, local_count]`` plus the per-sequence clip fractions."""
    stats = stats.detach().float()
    bsz = stats.shape[0]
    count = stats[:, L.ROW_COUNT]
    token_count = count.sum()
    row_count = torch.full_like(token_count, float(bsz))

    def pair(col: int, per_row: bool) -> torch.Tensor:
        return torch.stack([stats[:, col].sum(), row_count if per_row else token_count])

    metrics: dict[str, torch.Tensor] = {}
    if opts.has_kl:
        metrics["kl"] = pair(L.KL_SUM, False)
    if has_entropies:
        metrics["entropy"] = pair(L.ENTROPY_SUM, False)
    low = high = None
    if opts.loss_type in PPO_CLIP_LOSSES:
        seq = opts.importance_sampling_level == "sequence"
        metrics["clip_ratio/low_mean"] = pair(L.CLIP_LOW, seq)
        metrics["clip_ratio/high_mean"] = pair(L.CLIP_HIGH, seq)
        metrics["clip_ratio/region_mean"] = pair(L.CLIP_REGION, seq)
        # trl's masked_seq_mean: no clamp, so a sequence without tokens gives 0 / 0 = NaN (skipped by nanmin/nanmax)
        low = stats[:, L.CLIP_LOW] if seq else stats[:, L.CLIP_LOW] / count
        high = stats[:, L.CLIP_HIGH] if seq else stats[:, L.CLIP_HIGH] / count
    elif opts.loss_type == "cispo":
        metrics["cispo_clip_ratio"] = pair(L.CISPO_CLIP, False)
    elif opts.loss_type == "vespo":
        metrics["vespo/phi_seq_mean"] = pair(L.PHI_SEQ, True)
    return metrics, low, high
