"""From per-row statistics to the scalar loss, the gradient weights and the metrics (shared by both backends).

Everything here is a handful of torch ops on ``[B]`` tensors: deterministic, no host synchronisation.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from . import layout as L
from . import registry as R
from .options import GRPOLossOptions


class Finalized(NamedTuple):
    loss: torch.Tensor  # 0-d
    policy_loss: torch.Tensor  # 0-d
    row_weight: torch.Tensor  # [B]: d loss / d row_loss[b]
    entropy_weight: torch.Tensor | None  # 0-d: d loss / d (entropy_coef-free) bonus term, or None


# Each returns (policy_loss, loss before any entropy bonus, row_weight = d loss / d row_loss[b]).
def _per_row_mean(row_loss, count, opts, num_items, gas):
    per_row = 1.0 / count.clamp(min=1.0)
    policy_loss = (row_loss * per_row).mean()
    return policy_loss, policy_loss / gas, per_row / (row_loss.shape[0] * gas)


def _token_mean(row_loss, count, opts, num_items, gas):
    total = count.sum().clamp(min=1.0)
    policy_loss = row_loss.sum() / total
    return policy_loss, policy_loss / gas, torch.ones_like(row_loss) / (total * gas)


def _max_length(row_loss, count, opts, num_items, gas):
    denom = float(row_loss.shape[0] * opts.max_completion_length)
    policy_loss = row_loss.sum() / denom
    return policy_loss, policy_loss / gas, torch.ones_like(row_loss) / (denom * gas)


def _num_items(row_loss, count, opts, num_items, gas):
    normalizer = num_items.to(row_loss.dtype).clamp(min=1.0) / opts.num_processes
    normalizer = normalizer * gas / opts.resolved_steps_per_generation
    policy_loss = row_loss.sum() / normalizer
    return policy_loss, policy_loss, torch.ones_like(row_loss) / normalizer


def _row_sum_mean(row_loss, count, opts, num_items, gas):
    policy_loss = row_loss.mean()
    return policy_loss, policy_loss / gas, torch.ones_like(row_loss) / (row_loss.shape[0] * gas)


NORMALISERS = {
    R.PER_ROW_MEAN.name: _per_row_mean,
    R.TOKEN_MEAN.name: _token_mean,
    R.MAX_LENGTH.name: _max_length,
    R.NUM_ITEMS.name: _num_items,
    R.ROW_SUM_MEAN.name: _row_sum_mean,
}

# trl's metric name -> (stats column, whether the count is the number of rows given sequence-level ratios).
METRIC_COLUMNS = {
    "clip_ratio/low_mean": (L.CLIP_LOW, lambda seq: seq),
    "clip_ratio/high_mean": (L.CLIP_HIGH, lambda seq: seq),
    "clip_ratio/region_mean": (L.CLIP_REGION, lambda seq: seq),
    "cispo_clip_ratio": (L.CISPO_CLIP, lambda seq: False),
    "vespo/phi_seq_mean": (L.PHI_SEQ, lambda seq: True),
}


def finalize_loss(stats: torch.Tensor, opts: GRPOLossOptions, num_items_in_batch: torch.Tensor | None) -> Finalized:
    """trl's normalisation of ``row_loss = sum_t per_token_loss * mask`` for ``opts.loss_type``."""
    row_loss, count = stats[:, L.ROW_LOSS], stats[:, L.ROW_COUNT]
    gas = float(opts.gradient_accumulation_steps)
    normalise = NORMALISERS[opts.entry.normaliser.name]
    policy_loss, loss, row_weight = normalise(row_loss, count, opts, num_items_in_batch, gas)

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
    seq = opts.importance_sampling_level == "sequence"

    def pair(col: int, per_row: bool) -> torch.Tensor:
        return torch.stack([stats[:, col].sum(), row_count if per_row else token_count])

    metrics: dict[str, torch.Tensor] = {}
    if opts.has_kl:
        metrics["kl"] = pair(L.KL_SUM, False)
    if has_entropies:
        metrics["entropy"] = pair(L.ENTROPY_SUM, False)
    entry = opts.entry
    for name in entry.metrics:
        col, per_row = METRIC_COLUMNS[name]
        metrics[name] = pair(col, per_row(seq))
    low = high = None
    if entry.clips:
        # trl's masked_seq_mean: no clamp, so a sequence without tokens gives 0 / 0 = NaN (skipped by nanmin/nanmax)
        low = stats[:, L.CLIP_LOW] if seq else stats[:, L.CLIP_LOW] / count
        high = stats[:, L.CLIP_HIGH] if seq else stats[:, L.CLIP_HIGH] / count
    return metrics, low, high
