"""The eager peer: materialized ``[B, T, V]`` logits, then selective log-softmax and entropy, as trl <= 1.13 did.

A transcription of trl 1.13's ``selective_log_softmax`` (per-row logsumexp for fp32; per-row log_softmax for bf16)
and ``entropy_from_logits`` (128-row chunks, under no_grad as the trainer computes it for logging). trl 1.14 swapped
the per-row loop for a Triton kernel over the same materialized logits; the memory picture is the same.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..harness.inputs import InputSet
from .base import Runner, logprob_runner


def selective_log_softmax(logits: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    if logits.dtype in (torch.float32, torch.float64):
        selected = torch.gather(logits, dim=-1, index=index.unsqueeze(-1)).squeeze(-1)
        lse = torch.stack([torch.logsumexp(row, dim=-1) for row in logits])
        return selected - lse
    rows = []
    for row_logits, row_labels in zip(logits, index):
        row_logps = F.log_softmax(row_logits, dim=-1)
        rows.append(row_logps.gather(dim=-1, index=row_labels.unsqueeze(-1)).squeeze(-1))
    return torch.stack(rows)


def entropy_from_logits(logits: torch.Tensor, chunk_size: int = 128) -> torch.Tensor:
    flat = logits.reshape(-1, logits.shape[-1])
    out = []
    for chunk in flat.split(chunk_size, dim=0):
        logps = F.log_softmax(chunk, dim=-1)
        out.append(-(torch.exp(logps) * logps).sum(-1))
    return torch.cat(out).reshape(logits.shape[:-1])


def _logps_and_entropy(s: InputSet) -> tuple[torch.Tensor, torch.Tensor]:
    logits = s.hidden @ s.weight.T  # [B, T, V] in the inputs' dtype
    logp = selective_log_softmax(logits, s.targets).float()
    with torch.no_grad():
        entropy = entropy_from_logits(logits).float()
    return logp, entropy


def build(mode: str, device: str) -> Runner:
    del device
    return logprob_runner(mode, _logps_and_entropy)
