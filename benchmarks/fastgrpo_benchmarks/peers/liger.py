"""Liger-Kernel's GRPO losses (GRPO mode only: neither is a log-prob op).

- ``liger_fused``: ``LigerFusedLinearGRPOLoss``, rows chunked, logits streamed in torch, gradients computed inside
  the forward. ``compiled=True`` (Liger's default) on GPU, where the warm-up absorbs the compile; ``False`` on CPU,
  where torch.compile would need a C++ toolchain and minutes (override: FASTGRPO_BENCH_LIGER_COMPILED=0/1).
- ``liger_triton``: ``triton_grpo_loss`` over materialized ``[B, T+1, V]`` logits (GPU only: Triton kernels).
"""

from __future__ import annotations

import torch

from fastgrpo import env

from ..harness.grpo_math import SETTINGS
from ..harness.inputs import InputSet
from .base import Outputs, Runner, Unavailable, import_peer


def _only_grpo(mode: str) -> None:
    if mode != "grpo":
        raise Unavailable("Liger's GRPO losses offer no log-prob-only mode")


def build_fused(mode: str, device: str) -> Runner:
    _only_grpo(mode)
    LigerFusedLinearGRPOLoss = import_peer("liger_kernel.chunked_loss", "liger-kernel").LigerFusedLinearGRPOLoss
    compiled = env.flag("FASTGRPO_BENCH_LIGER_COMPILED", default=device == "cuda")
    loss_fn = LigerFusedLinearGRPOLoss(
        beta=SETTINGS.beta,
        compiled=compiled,
        use_ref_model=True,
        epsilon_low=SETTINGS.epsilon_low,
        epsilon_high=SETTINGS.epsilon_high,
        loss_type=SETTINGS.loss_type,
        use_bias_correction_kl=SETTINGS.use_bias_correction_kl,
        temperature=1.0,
    )

    def run(s: InputSet) -> Outputs:
        loss, _metrics = loss_fn(s.hidden, s.weight, s.targets, s.mask, s.advantages, ref_per_token_logps=s.ref_logp)
        loss.backward()
        return Outputs(loss.detach(), s.hidden.grad, s.weight.grad)

    return run


def build_triton(mode: str, device: str) -> Runner:
    _only_grpo(mode)
    if device != "cuda":
        raise Unavailable("Liger's Triton grpo_loss runs on CUDA only")
    triton_grpo_loss = import_peer("liger_kernel.transformers.grpo_loss", "liger-kernel").triton_grpo_loss

    def run(s: InputSet) -> Outputs:
        # triton_grpo_loss drops the last position of [B, T+1, V] logits: give it one extra row per sequence.
        hidden = torch.cat([s.hidden, s.hidden[:, -1:]], dim=1)
        logits = hidden @ s.weight.T
        loss, _metrics = triton_grpo_loss(
            logits,
            None,
            s.ref_logp,
            s.targets,
            s.advantages,
            s.mask,
            temperature=1.0,
            beta=SETTINGS.beta,
            eps_low=SETTINGS.epsilon_low,
            eps_high=SETTINGS.epsilon_high,
            loss_type=SETTINGS.loss_type,
            reduce=True,
            use_bias_correction_kl=SETTINGS.use_bias_correction_kl,
        )
        loss.backward()
        return Outputs(loss.detach(), s.hidden.grad, s.weight.grad)

    return run
