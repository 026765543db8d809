"""Eager, materializing reference: the ground truth for tests and benchmarks.

It builds the full ``[N, V]`` logits, so use it only at small shapes (or as the "eager" peer in benchmarks).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from .options import LogProbOptions

if TYPE_CHECKING:  # pragma: no cover
    from .api import LogProbs


def transform_logits(y: torch.Tensor, opts: LogProbOptions) -> torch.Tensor:
    """``z = softcap * tanh(logit_scale * y / softcap) / temperature`` (no tanh without softcap)."""
    z = y * opts.logit_scale
    if opts.softcap is not None:
        z = opts.softcap * torch.tanh(z / opts.softcap)
    return z / opts.temperature


def reference_linear_logprobs(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    bias: torch.Tensor | None = None,
    opts: LogProbOptions | None = None,
    dtype: torch.dtype | None = torch.float64,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-prob of each target and entropy of each row, from materialized logits.

    ``dtype`` is the precision of the whole computation (float64 for ground truth; None keeps the inputs' dtype, i.e.
    what eager torch does, used to set bf16 tolerances). Returns ``(logp, entropy)`` in that dtype, zero where the
    target is ``ignore_index``. Differentiable through autograd.
    """
    opts = opts or LogProbOptions()
    return _logp_entropy(reference_logits(hidden, weight, bias, opts, dtype), targets, opts)


def _logp_entropy(z: torch.Tensor, targets: torch.Tensor, opts: LogProbOptions) -> tuple[torch.Tensor, torch.Tensor]:
    log_p = torch.log_softmax(z, -1)
    valid = targets != opts.ignore_index
    safe = torch.where(valid, targets, torch.zeros_like(targets)).long()
    logp = log_p.gather(-1, safe.unsqueeze(-1)).squeeze(-1)
    entropy = -(log_p.exp() * log_p).sum(-1)
    zero = torch.zeros((), dtype=logp.dtype, device=logp.device)
    return torch.where(valid, logp, zero), torch.where(valid, entropy, zero)


def reference_logits(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    opts: LogProbOptions | None = None,
    dtype: torch.dtype | None = torch.float64,
) -> torch.Tensor:
    """The materialized ``[..., V]`` logits ``z`` (after scale, softcap and temperature), in ``dtype``."""
    opts = opts or LogProbOptions()
    if dtype is not None:
        hidden, weight = hidden.to(dtype), weight.to(dtype)
        bias = None if bias is None else bias.to(dtype)
    y = hidden @ weight.T
    if bias is not None:
        y = y + bias
    z = transform_logits(y, opts)
    return z.float() if dtype is None and z.dtype in (torch.bfloat16, torch.float16) else z


def reference_all_outputs(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    bias: torch.Tensor | None = None,
    opts: LogProbOptions | None = None,
    dtype: torch.dtype | None = torch.float64,
) -> LogProbs:
    """Every output of ``linear_logprobs`` from materialized logits ``z`` (whatever ``opts`` asks for), written the
    way trl's ``chunked_logprob.py`` defines them::

        logp = log_softmax(z)[target];  entropy = -sum(p * log p)
        log_sum_sq_probs = log(sum(p ** 2));  mean_logits = z.mean(-1)   # z after scale / softcap / temperature
        is_top1 = (z[target] >= z.max(-1)) & (z[target] > z[:target].max())   # ties go to the lowest index

    ``dtype`` as in :func:`reference_linear_logprobs`. Zero (False) where the target is ``ignore_index``.
    """
    from .api import LogProbs

    opts = opts or LogProbOptions()
    z = reference_logits(hidden, weight, bias, opts, dtype)
    logp, entropy = _logp_entropy(z, targets, opts)
    log_p = torch.log_softmax(z, -1)
    valid = targets != opts.ignore_index
    safe = torch.where(valid, targets, torch.zeros_like(targets)).long()
    log_sum_sq = torch.logsumexp(2.0 * log_p, -1)
    mean_logits = z.mean(-1)
    z_t = z.gather(-1, safe.unsqueeze(-1)).squeeze(-1)
    before = torch.arange(z.shape[-1], device=z.device) < safe.unsqueeze(-1)
    max_before = torch.where(before, z, torch.full_like(z, float("-inf"))).amax(-1)
    is_top1 = (z_t >= z.amax(-1)) & (z_t > max_before) & valid
    zero = torch.zeros((), dtype=logp.dtype, device=logp.device)
    return LogProbs(
        logp,
        entropy,
        torch.where(valid, log_sum_sq, zero).detach(),
        torch.where(valid, mean_logits, zero).detach(),
        is_top1,
    )
