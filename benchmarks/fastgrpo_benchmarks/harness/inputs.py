"""Synthetic inputs for the op-level cases: lm_head weight, hidden states, targets and GRPO tensors."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .suites import FORWARD_MODES, OpShape


@dataclass
class InputSet:
    """One set of inputs. ``hidden`` is ``[B, T, H]`` (``B * T`` tokens); the weight is shared between sets."""

    hidden: torch.Tensor  # [B, T, H], a leaf
    weight: torch.Tensor  # [V, H], a leaf (requires_grad only for a trainable head)
    targets: torch.Tensor  # [B, T] int64 (the completion ids)
    grad_logp: torch.Tensor  # [B, T] fp32 upstream gradient for the log-prob modes
    mask: torch.Tensor  # [B, T] completion mask (GRPO mode)
    advantages: torch.Tensor  # [B] fp32
    ref_logp: torch.Tensor  # [B, T] fp32 reference-model log-probs

    @property
    def tokens(self) -> int:
        return self.hidden.shape[0] * self.hidden.shape[1]

    def clear_grads(self) -> None:
        self.hidden.grad = None
        self.weight.grad = None


def make_weight(shape: OpShape, dtype: torch.dtype, device: str, seed: int = 0) -> torch.Tensor:
    """An lm_head weight with the scale of a trained head (std 0.02): logits of a realistic spread, not one-hot."""
    gen = torch.Generator(device=device).manual_seed(seed)
    w = torch.empty(shape.vocab, shape.hidden, device=device, dtype=dtype)
    return w.normal_(0.0, 0.02, generator=gen)


def make_input_set(shape: OpShape, weight: torch.Tensor, mode: str, seed: int) -> InputSet:
    """Random inputs of ``shape`` around ``weight``, with grads enabled as ``mode`` needs them."""
    device, dtype = weight.device, weight.dtype
    gen = torch.Generator(device=device).manual_seed(1000 + seed)
    b, t = shape.batch, min(shape.seq_len, shape.tokens)
    hidden = torch.randn(b, t, shape.hidden, device=device, dtype=dtype, generator=gen)
    targets = torch.randint(0, shape.vocab, (b, t), device=device, generator=gen)
    grad_logp = torch.randn(b, t, device=device, dtype=torch.float32, generator=gen)
    # Completion lengths between T/2 and T, as when some completions stop early.
    lengths = torch.randint(max(1, t // 2), t + 1, (b,), device=device, generator=gen)
    mask = (torch.arange(t, device=device)[None, :] < lengths[:, None]).to(torch.int64)
    advantages = torch.randn(b, device=device, dtype=torch.float32, generator=gen)
    # Near the policy's own log-probs (about -log V here), so the k3 KL stays in its usual range.
    ref_logp = -math.log(shape.vocab) + 0.3 * torch.randn(b, t, device=device, dtype=torch.float32, generator=gen)
    hidden.requires_grad_(mode not in FORWARD_MODES)
    weight.requires_grad_(mode in ("fwd_bwd", "grpo"))
    weight.grad = None
    return InputSet(hidden, weight, targets, grad_logp, mask, advantages, ref_logp)
