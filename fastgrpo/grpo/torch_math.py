"""Pure-torch backend of the GRPO loss: the per-row statistics and per-token gradients the Triton kernel computes.

It evaluates the same closed-form derivatives as ``fastgrpo_kernels.grpo_loss`` (no autograd), so both backends
share ``finalize.py`` and the autograd function. The math is documented once, in ``fastgrpo.grpo.api.grpo_loss``.
"""

from __future__ import annotations

import torch

from . import layout as L
from .options import GRPOLossOptions
from .registry import VESPO_LAMBDA_MIN, VESPO_LOG_RATIO_CLAMP, VESPO_LOG_W_MIN, KernelKind
from .tensors import GRPOTensors


def _vespo_phi(adv, log_ratio, mask, isr, opts: GRPOLossOptions):
    """phi(w) = exp(lambda + k log w - lambda w), w = exp(sum_t clamp(log_ratio) * mask (+ sum_t log isr)); [B]."""
    seq = (log_ratio.clamp(-VESPO_LOG_RATIO_CLAMP, VESPO_LOG_RATIO_CLAMP) * mask).sum(-1)
    if isr is not None:  # summed over every position, as trl does (not masked)
        seq = seq + isr.log().clamp(VESPO_LOG_W_MIN, VESPO_LOG_RATIO_CLAMP).sum(-1)
    log_w = seq.clamp(VESPO_LOG_W_MIN, VESPO_LOG_RATIO_CLAMP)
    nonneg = adv >= 0
    k = torch.where(nonneg, opts.vespo_k_pos, opts.vespo_k_neg)
    lam = torch.where(nonneg, opts.vespo_lambda_pos, opts.vespo_lambda_neg).clamp(min=VESPO_LAMBDA_MIN)
    phi = torch.exp(lam + k * log_w - lam * torch.exp(log_w))
    return torch.where(torch.isfinite(phi), phi, torch.zeros_like(phi))


def _min_weights(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """d min(a, b) / da and / db as torch's autograd defines them (a tie splits the gradient in half)."""
    wa = torch.where(a < b, 1.0, torch.where(a == b, 0.5, 0.0))
    return wa, 1.0 - wa


def grpo_rows_torch(
    x: GRPOTensors, opts: GRPOLossOptions, compute_grad: bool
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """Returns ``(row_stats [B, NUM_STATS], d row_loss / d logps [B, T] | None, d bonus / d entropies | None)``.

    ``row_loss[b] = sum_t per_token_loss[b, t] * mask[b, t]``; the entropy gradient is ``-entropy_coef * mask *
    entropy_mask``. Both gradients are unscaled: ``finalize`` supplies the per-row and entropy weights.
    """
    f32 = torch.float64 if x.per_token_logps.dtype == torch.float64 else torch.float32
    lp = x.per_token_logps.detach().to(f32)
    bsz = lp.shape[0]
    mask = x.completion_mask.to(f32)
    adv = x.advantages.detach().to(f32).reshape(bsz, 1)
    old = lp if x.old_per_token_logps is None else x.old_per_token_logps.detach().to(f32)
    isr = None if x.importance_sampling_ratio is None else x.importance_sampling_ratio.detach().to(f32)
    eps_lo, eps_hi = opts.epsilon_low, opts.resolved_epsilon_high
    count = mask.sum(-1, keepdim=True)
    count_c = count.clamp(min=1.0)
    stats = torch.zeros(bsz, L.NUM_STATS, dtype=f32, device=lp.device)
    stats[:, L.ROW_COUNT] = count[:, 0]

    log_ratio = lp - old
    seq = opts.importance_sampling_level == "sequence"
    coef_1 = torch.exp((log_ratio * mask).sum(-1, keepdim=True) / count_c if seq else log_ratio)  # [B, 1] or [B, T]

    # Multipliers of the policy term: off-policy sequence mask, entropy mask, vLLM IS ratio.
    mult = torch.ones_like(lp)
    if opts.off_policy_mask_threshold is not None:
        samp = old if x.sampling_per_token_logps is None else x.sampling_per_token_logps.detach().to(f32)
        kl_div = torch.nan_to_num(samp - lp, nan=0.0)
        avg_kl = (kl_div * mask).sum(-1, keepdim=True) / count_c
        mult = mult * ((adv >= 0) | (avg_kl <= opts.off_policy_mask_threshold)).to(f32)
    if x.entropy_mask is not None:
        mult = mult * x.entropy_mask.to(f32)
    entry = opts.entry
    kind = entry.kind
    if isr is not None and kind != KernelKind.VESPO:  # vespo folds the ratio into phi instead
        mult = mult * isr

    # Policy term P(coef_1, logp), its partial derivative in coef_1 (pc) and its direct one in logp (pd).
    zero = torch.zeros((), dtype=f32, device=lp.device)
    if kind == KernelKind.CISPO:
        clamped = coef_1.clamp(max=eps_hi)
        policy, pc, pd = -clamped * adv * lp, zero, -clamped * adv
        stats[:, L.CISPO_CLIP] = (((coef_1 > eps_hi) & (adv > 0)).to(f32) * mask).sum(-1)
    elif kind == KernelKind.PPO_CLIP:
        coef_2 = coef_1.clamp(1 - eps_lo, 1 + eps_hi)
        in_clip = ((coef_1 >= 1 - eps_lo) & (coef_1 <= 1 + eps_hi)).to(f32)
        coef_1d, pass_delta = coef_1, torch.ones_like(coef_1)
        if opts.delta is not None:
            coef_1d, pass_delta = coef_1.clamp(max=opts.delta), (coef_1 <= opts.delta).to(f32)
        wa, wb = _min_weights(coef_1d * adv, coef_2 * adv)
        policy = -torch.minimum(coef_1d * adv, coef_2 * adv)
        pc, pd = -(wa * pass_delta + wb * in_clip) * adv, zero
        low = (coef_1d < 1 - eps_lo) & (adv < 0)
        high = (coef_1d > 1 + eps_hi) & (adv > 0)
        for col, hit in ((L.CLIP_LOW, low), (L.CLIP_HIGH, high), (L.CLIP_REGION, low | high)):
            stats[:, col] = hit.to(f32)[:, 0] if seq else (hit.to(f32) * mask).sum(-1)
    elif kind == KernelKind.SAPO:
        temp = torch.where(adv > 0, opts.sapo_temperature_pos, opts.sapo_temperature_neg)
        sig = torch.sigmoid(temp * (coef_1 - 1))
        policy, pc, pd = -sig * 4 / temp * adv, -4 * sig * (1 - sig) * adv, zero
    elif kind == KernelKind.POLICY_FN:
        policy, pc, pd = entry.torch_policy(coef_1.expand_as(lp), lp, adv, entry.policy_values(opts))
    else:  # KernelKind.VESPO
        phi = _vespo_phi(adv[:, 0], log_ratio, mask, isr, opts)[:, None]
        policy, pc, pd = -phi * adv * lp, zero, -phi * adv
        stats[:, L.PHI_SEQ] = phi[:, 0]

    per_token_loss = policy * mult
    dloss_dcoef = pc * mult  # [B, T]
    dloss_dlogp = pd * mult
    if opts.has_kl:
        ref = x.ref_per_token_logps.detach().to(f32)
        diff = ref - lp
        kl = torch.exp(diff) - diff - 1
        dkl = 1 - torch.exp(diff)
        if opts.use_bias_correction_kl and seq:  # per_token_kl * coef_1: the ratio's gradient flows through the KL
            dloss_dcoef = dloss_dcoef + opts.beta * kl
            dloss_dlogp = dloss_dlogp + opts.beta * dkl * coef_1
        elif opts.use_bias_correction_kl:  # token level: (dkl + kl) * coef_1 = -diff * coef_1 exactly (no cancellation)
            dloss_dlogp = dloss_dlogp - opts.beta * diff * coef_1
        else:
            dloss_dlogp = dloss_dlogp + opts.beta * dkl
        if opts.use_bias_correction_kl:
            kl = kl * coef_1
        per_token_loss = per_token_loss + opts.beta * kl
        stats[:, L.KL_SUM] = (kl * mask).sum(-1)
    stats[:, L.ROW_LOSS] = (per_token_loss * mask).sum(-1)

    if x.entropies is not None:
        ent = x.entropies.detach().to(f32)
        eff = mask if x.entropy_mask is None else mask * x.entropy_mask.to(f32)
        stats[:, L.ENTROPY_SUM] = (ent * mask).sum(-1)
        stats[:, L.ENTROPY_BONUS_SUM] = (ent * eff).sum(-1)
        stats[:, L.ENTROPY_BONUS_COUNT] = eff.sum(-1)

    grad_logp = grad_ent = None
    if compute_grad:
        dloss_dcoef = dloss_dcoef.expand_as(lp)
        if seq:  # coef_1 = exp(sum_t log_ratio * mask / count): every token of the row moves it
            row = (dloss_dcoef * mask).sum(-1, keepdim=True)
            grad_logp = mask * dloss_dlogp + mask / count_c * coef_1 * row
        else:
            grad_logp = mask * (dloss_dlogp + dloss_dcoef * coef_1)
        if opts.has_entropy_bonus and x.entropies is not None:
            eff = mask if x.entropy_mask is None else mask * x.entropy_mask.to(f32)
            grad_ent = -opts.entropy_coef * eff
    return stats, grad_logp, grad_ent
