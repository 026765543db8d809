"""Launcher of the GRPO loss kernel: prepares pointers, allocates (NaN-poisoned) outputs, launches with the block
sizes and warps of the launch-config resolver."""

from __future__ import annotations

import torch
import triton

from fastgrpo_kernels.grpo_loss import KIND_CISPO, KIND_PPO_CLIP, KIND_SAPO, KIND_VESPO, grpo_loss_fwd_kernel

from .. import launch_config
from . import layout as L
from .options import PPO_CLIP_LOSSES, GRPOLossOptions
from .tensors import GRPOTensors

_LOSS_KIND = {
    "cispo": KIND_CISPO,
    "sapo": KIND_SAPO,
    "vespo": KIND_VESPO,
    **dict.fromkeys(PPO_CLIP_LOSSES, KIND_PPO_CLIP),
}


def _row_major(t: torch.Tensor | None) -> torch.Tensor | None:
    """Contiguous [B, T]; bool masks are read as uint8 (a free view)."""
    if t is None:
        return None
    t = t.contiguous()
    return t.view(torch.uint8) if t.dtype == torch.bool else t


def _launch_config(per_token_logps: torch.Tensor) -> tuple[int, int, int]:
    """(BLOCK_B, BLOCK_T, num_warps) from the launch-config resolver: whole rows per program."""
    cfg = launch_config.current().grpo_loss_config(per_token_logps)
    return (*cfg.blocks(*per_token_logps.shape), cfg.num_warps)


def grpo_rows_triton(
    x: GRPOTensors, opts: GRPOLossOptions, compute_grad: bool
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """Same contract as ``torch_math.grpo_rows_torch``; inputs are already validated by ``checks.py``."""
    lp = x.per_token_logps.detach().contiguous()
    bsz, seqlen = lp.shape
    # NaN poison: an element the kernel fails to write shows up in every comparison.
    poisoned = lambda *shape: torch.full(shape, float("nan"), dtype=torch.float32, device=lp.device)
    stats = poisoned(bsz, L.NUM_STATS)
    bonus = opts.has_entropy_bonus and x.entropies is not None
    grad_lp = poisoned(bsz, seqlen) if compute_grad else None
    grad_ent = poisoned(bsz, seqlen) if compute_grad and bonus else None

    old, ref, samp = _row_major(x.old_per_token_logps), _row_major(x.ref_per_token_logps), None
    if opts.off_policy_mask_threshold is not None:
        samp = _row_major(x.sampling_per_token_logps)
    ent, emask, mask = _row_major(x.entropies), _row_major(x.entropy_mask), _row_major(x.completion_mask)
    isr = x.importance_sampling_ratio
    isr_strides = (0, 0) if isr is None else (isr.stride(0), isr.stride(1) if isr.shape[1] > 1 else 0)
    adv = x.advantages.detach().reshape(-1).contiguous()
    has_kl = opts.has_kl
    dummy = lp  # never read: the matching HAS_* flag is False
    block_b, block_t, num_warps = _launch_config(lp)
    grid = (triton.cdiv(bsz, block_b),)
    grpo_loss_fwd_kernel[grid](
        lp,
        dummy if old is None else old,
        ref if has_kl else dummy,
        dummy if samp is None else samp,
        dummy if ent is None else ent,
        dummy if emask is None else emask,
        mask,
        dummy if isr is None else isr,
        adv,
        stats,
        stats if grad_lp is None else grad_lp,
        stats if grad_ent is None else grad_ent,
        bsz,
        seqlen,
        isr_strides[0],
        isr_strides[1],
        float(opts.beta),
        opts.epsilon_low,
        opts.resolved_epsilon_high,
        0.0 if opts.delta is None else float(opts.delta),
        0.0 if opts.off_policy_mask_threshold is None else float(opts.off_policy_mask_threshold),
        float(opts.sapo_temperature_pos),
        float(opts.sapo_temperature_neg),
        float(opts.vespo_k_pos),
        float(opts.vespo_lambda_pos),
        float(opts.vespo_k_neg),
        float(opts.vespo_lambda_neg),
        float(opts.entropy_coef),
        HAS_OLD=old is not None,
        HAS_KL=has_kl,
        HAS_BIAS_CORRECTION=has_kl and opts.use_bias_correction_kl,
        HAS_SAMPLING=samp is not None,
        HAS_ISR=isr is not None,
        HAS_ENTROPIES=ent is not None,
        HAS_ENTROPY_MASK=emask is not None,
        HAS_ENTROPY_BONUS=bonus,
        HAS_DELTA=opts.delta is not None,
        HAS_OFF_POLICY=opts.off_policy_mask_threshold is not None,
        SEQ_LEVEL=opts.importance_sampling_level == "sequence",
        LOSS_KIND=_LOSS_KIND[opts.loss_type],
        COMPUTE_GRAD=compute_grad,
        BLOCK_B=block_b,
        BLOCK_T=block_t,
        num_warps=num_warps,
    )
    return stats, grad_lp, grad_ent
