"""Eager, materializing reference: the ground truth for tests and benchmarks.

It builds the full ``[N, V]`` logits, so use it only at small shapes (or as the "eager" peer in benchmarks).
"""

from __future__ import annotations

import torch

from .options import LogProbOptions


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
    if dtype is not None:
        hidden, weight = hidden.to(dtype), weight.to(dtype)
        bias = None if bias is None else bias.to(dtype)
    y = hidden @ weight.T
    if bias is not None:
        y = y + bias
    z = transform_logits(y, opts)
    log_p = torch.log_softmax(z.float() if dtype is None and z.dtype in (torch.bfloat16, torch.float16) else z, -1)
    valid = targets != opts.ignore_index
    safe = torch.where(valid, targets, torch.zeros_like(targets)).long()
    logp = log_p.gather(-1, safe.unsqueeze(-1)).squeeze(-1)
    entropy = -(log_p.exp() * log_p).sum(-1)
    zero = torch.zeros((), dtype=logp.dtype, device=logp.device)
    return torch.where(valid, logp, zero), torch.where(valid, entropy, zero)
