"""Launcher of the GRPO loss kernel: prepares pointers, allocates (NaN-poisoned) outputs, launches with the block
sizes and warps of the launch-config resolver.

The options object is flattened here, once, into the kernel's named arguments; the kernel is launched with keywords
only, so two arguments of one type (``sapo_t_pos`` / ``sapo_t_neg``, a vespo k / lambda pair) cannot swap places.
"""

from __future__ import annotations

import importlib
from typing import NamedTuple

import torch
import triton

from fastgrpo_kernels.grpo_loss import grpo_loss_fwd_kernel

from .. import launch_config
from ..triton_backend import _on_device
from . import layout as L
from .options import GRPOLossOptions
from .registry import KernelKind, LossType
from .tensors import GRPOTensors


class LaunchConfig(NamedTuple):
    block_b: int  # whole rows per program
    block_t: int  # tokens per tile
    num_warps: int
    enable_fp_fusion: bool  # FMA contraction, pinned by the config (fastgrpo_kernels.configs.FP_FUSION)
    amd_options: tuple = ()  # (name, value) pairs of AMD-only launch options (configs.AMD_OPTIONS); none elsewhere


def _launch_config(per_token_logps: torch.Tensor) -> LaunchConfig:
    """The GRPO loss kernel's block sizes, warps and FP fusion, from the launch-config resolver (the one place they
    are chosen)."""
    cfg = launch_config.current().grpo_loss_config(per_token_logps)
    return LaunchConfig(
        *cfg.blocks(*per_token_logps.shape), cfg.num_warps, cfg.enable_fp_fusion, tuple(cfg.amd_options().items())
    )


def _row_major(t: torch.Tensor | None) -> torch.Tensor | None:
    """Contiguous [B, T]; bool masks are read as uint8 (a free view)."""
    if t is None:
        return None
    t = t.contiguous()
    return t.view(torch.uint8) if t.dtype == torch.bool else t


def _kernel_policy(entry: LossType):
    """The ``@triton.jit`` policy term of a ``POLICY_FN`` loss type (imported when named as ``"module:attr"``)."""
    if entry.kind != KernelKind.POLICY_FN:
        return None
    fn = entry.kernel_policy
    if isinstance(fn, str):
        module, _, attr = fn.partition(":")
        fn = getattr(importlib.import_module(module), attr)
    return fn


def option_arguments(opts: GRPOLossOptions) -> dict:
    """The kernel's scalar and constexpr arguments that come from the options, by the kernel's parameter names."""
    entry = opts.entry
    return dict(
        beta=float(opts.beta),
        eps_lo=opts.epsilon_low,
        eps_hi=opts.resolved_epsilon_high,
        delta=0.0 if opts.delta is None else float(opts.delta),
        off_policy_threshold=0.0 if opts.off_policy_mask_threshold is None else float(opts.off_policy_mask_threshold),
        sapo_t_pos=float(opts.sapo_temperature_pos),
        sapo_t_neg=float(opts.sapo_temperature_neg),
        vespo_k_pos=float(opts.vespo_k_pos),
        vespo_lambda_pos=float(opts.vespo_lambda_pos),
        vespo_k_neg=float(opts.vespo_k_neg),
        vespo_lambda_neg=float(opts.vespo_lambda_neg),
        entropy_coef=float(opts.entropy_coef),
        policy_params=entry.policy_values(opts) or (0.0,),  # a tuple argument cannot be empty
        HAS_KL=opts.has_kl,
        HAS_BIAS_CORRECTION=opts.has_kl and opts.use_bias_correction_kl,
        HAS_DELTA=opts.delta is not None,
        HAS_OFF_POLICY=opts.off_policy_mask_threshold is not None,
        SEQ_LEVEL=opts.importance_sampling_level == "sequence",
        LOSS_KIND=int(entry.kind),
        POLICY=_kernel_policy(entry),
    )


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
    adv = x.advantages.detach().reshape(-1).contiguous()
    dummy = lp  # never read: the matching HAS_* flag is False
    cfg = _launch_config(lp)
    # Triton launches on the current device: make it the tensors' (e.g. cuda:1 under device_map="auto").
    with _on_device(lp.device):
        grpo_loss_fwd_kernel[(triton.cdiv(bsz, cfg.block_b),)](
            lp_ptr=lp,
            old_ptr=dummy if old is None else old,
            ref_ptr=ref if opts.has_kl else dummy,
            samp_ptr=dummy if samp is None else samp,
            ent_ptr=dummy if ent is None else ent,
            emask_ptr=dummy if emask is None else emask,
            mask_ptr=mask,
            isr_ptr=dummy if isr is None else isr,
            adv_ptr=adv,
            stats_ptr=stats,
            grad_lp_ptr=stats if grad_lp is None else grad_lp,
            grad_ent_ptr=stats if grad_ent is None else grad_ent,
            B=bsz,
            T=seqlen,
            stride_isr_b=0 if isr is None else isr.stride(0),
            stride_isr_t=0 if isr is None or isr.shape[1] == 1 else isr.stride(1),
            **option_arguments(opts),
            HAS_OLD=old is not None,
            HAS_SAMPLING=samp is not None,
            HAS_ISR=isr is not None,
            HAS_ENTROPIES=ent is not None,
            HAS_ENTROPY_MASK=emask is not None,
            HAS_ENTROPY_BONUS=bonus,
            COMPUTE_GRAD=compute_grad,
            BLOCK_B=cfg.block_b,
            BLOCK_T=cfg.block_t,
            num_warps=cfg.num_warps,
            enable_fp_fusion=cfg.enable_fp_fusion,
            **dict(cfg.amd_options),
        )
    return stats, grad_lp, grad_ent
