"""Triton kernel of the GRPO loss over [B, T] per-token values: loss terms, row statistics and per-token gradients.

The math is trl's ``GRPOTrainer._compute_loss``, documented once as torch in ``fastgrpo.grpo.api.grpo_loss``.
One program owns ``BLOCK_B`` whole rows and walks their tokens in ``BLOCK_T`` chunks, so every per-row quantity
(sequence-level ratio, off-policy mask, vespo's gamma weight, the row sums) is finished inside the program, in token
order: deterministic, no atomics. Passes over a row:

1. (only when a row-level input is needed) masked token count, sum of log-ratios, of the off-policy KL and of
   vespo's clamped log-ratios;
2. per-token loss and statistics, written as per-row sums to ``stats`` [B, NUM_STATS]; at token-level importance
   sampling also the per-token gradient;
3. (sequence level only) the per-token gradient, which needs the row's sum of ``d loss / d coef_1`` from pass 2.

Gradients are unscaled: ``g[b, t] = d row_loss[b] / d logps[b, t]`` with ``row_loss[b] = sum_t ptl * mask``; the
caller multiplies by the loss type's per-row weight (``fastgrpo.grpo.finalize``). All math is fp32: inputs of any
float dtype are upcast on load (the interpreter mishandles 16-bit arithmetic).

``LOSS_KIND`` selects the policy term's branch (``fastgrpo.grpo.registry.KernelKind``; which loss type uses which
kind is declared there). ``KIND_POLICY_FN`` calls the ``POLICY`` constexpr instead, a ``@triton.jit`` function the
loss type's registry entry supplies, with ``policy_params`` (a tuple of floats) as its parameters.
"""

from __future__ import annotations

import triton
import triton.language as tl

from fastgrpo.grpo import registry as R
from fastgrpo.grpo.registry import KernelKind

# Column layout of ``stats``; must match ``fastgrpo.grpo.layout``.
ROW_LOSS = tl.constexpr(0)
ROW_COUNT = tl.constexpr(1)
KL_SUM = tl.constexpr(2)
ENTROPY_SUM = tl.constexpr(3)
ENTROPY_BONUS_SUM = tl.constexpr(4)
ENTROPY_BONUS_COUNT = tl.constexpr(5)
CLIP_LOW = tl.constexpr(6)
CLIP_HIGH = tl.constexpr(7)
CLIP_REGION = tl.constexpr(8)
CISPO_CLIP = tl.constexpr(9)
PHI_SEQ = tl.constexpr(10)
NUM_STATS = tl.constexpr(11)

# LOSS_KIND values: the numbers of ``fastgrpo.grpo.registry.KernelKind`` (which loss type uses which kind is
# declared there, never here).
KIND_PPO_CLIP = tl.constexpr(int(KernelKind.PPO_CLIP))
KIND_CISPO = tl.constexpr(int(KernelKind.CISPO))
KIND_SAPO = tl.constexpr(int(KernelKind.SAPO))
KIND_VESPO = tl.constexpr(int(KernelKind.VESPO))
KIND_POLICY_FN = tl.constexpr(int(KernelKind.POLICY_FN))  # the policy term is the POLICY function argument

FLT_MAX = tl.constexpr(3.4028234663852886e38)
# trl's vespo clamps, one source with the torch path (fastgrpo.grpo.registry).
VESPO_LOG_RATIO_CLAMP = tl.constexpr(R.VESPO_LOG_RATIO_CLAMP)
VESPO_LOG_W_MIN = tl.constexpr(R.VESPO_LOG_W_MIN)
VESPO_LAMBDA_MIN = tl.constexpr(R.VESPO_LAMBDA_MIN)


@triton.jit
def _load_tile(ptr, offs, tile_mask, other):
    """One [BLOCK_B, BLOCK_T] tile of a [B, T] input, upcast to fp32."""
    return tl.load(ptr + offs, mask=tile_mask, other=other).to(tl.float32)


@triton.jit
def _load_token_inputs(
    lp_ptr,
    old_ptr,
    ref_ptr,
    isr_ptr,
    emask_ptr,
    mask_ptr,
    rows64,
    cols,
    offs,
    tile_mask,
    stride_isr_b,
    stride_isr_t,
    HAS_OLD: tl.constexpr,
    HAS_KL: tl.constexpr,
    HAS_ISR: tl.constexpr,
    HAS_ENTROPY_MASK: tl.constexpr,
):
    """fp32 [BLOCK_B, BLOCK_T] tiles ``(mask, logp, old, ref, isr, entropy_mask)``; absent inputs alias ``logp``."""
    m = _load_tile(mask_ptr, offs, tile_mask, 0.0)
    lp = _load_tile(lp_ptr, offs, tile_mask, 0.0)
    old = _load_tile(old_ptr, offs, tile_mask, 0.0) if HAS_OLD else lp  # trl: old = logp.detach()
    ref = _load_tile(ref_ptr, offs, tile_mask, 0.0) if HAS_KL else lp
    isr = lp
    if HAS_ISR:  # [B, T], or [B, 1] read with a zero token stride
        isr = tl.load(
            isr_ptr + rows64[:, None] * stride_isr_b + cols.to(tl.int64)[None, :] * stride_isr_t,
            mask=tile_mask,
            other=1.0,
        ).to(tl.float32)
    emask = _load_tile(emask_ptr, offs, tile_mask, 0.0) if HAS_ENTROPY_MASK else lp
    return m, lp, old, ref, isr, emask


@triton.jit
def _token_terms(
    lp,
    old,
    ref,
    isr,
    emask,
    adv,
    coef_1,
    row_mult,
    beta,
    eps_lo,
    eps_hi,
    delta,
    sapo_t_pos,
    sapo_t_neg,
    phi,
    policy_params,
    HAS_KL: tl.constexpr,
    HAS_BIAS_CORRECTION: tl.constexpr,
    HAS_ISR: tl.constexpr,
    HAS_ENTROPY_MASK: tl.constexpr,
    HAS_DELTA: tl.constexpr,
    LOSS_KIND: tl.constexpr,
    SEQ_LEVEL: tl.constexpr,
    POLICY: tl.constexpr,
):
    """Per-token loss pieces for one [BLOCK_B, BLOCK_T] tile (``adv``, ``row_mult``, ``phi`` are [BLOCK_B, 1]).

    Returns ``(ptl, d_coef, d_direct, kl, coef_1_metric)``: the unmasked per-token loss, its partial derivatives
    with respect to ``coef_1`` and (directly) to the log-prob, the KL term (bias correction included), and the
    ratio the clip metrics read (after trl's ``delta`` clamp). At token level the bias-corrected KL's whole
    gradient is in ``d_direct``; ``d logp = d_direct + d_coef * coef_1`` either way.
    """
    mult = row_mult + tl.zeros_like(lp)  # off-policy mask [BLOCK_B, 1] -> [BLOCK_B, BLOCK_T]
    if HAS_ENTROPY_MASK:
        mult = mult * emask
    if HAS_ISR:
        mult = mult * isr
    coef_metric = coef_1
    if LOSS_KIND == KIND_PPO_CLIP:  # -min(coef_1d * A, coef_2 * A); torch's min splits a tie's gradient in half
        coef_2 = tl.minimum(tl.maximum(coef_1, 1.0 - eps_lo), 1.0 + eps_hi)
        in_clip = ((coef_1 >= 1.0 - eps_lo) & (coef_1 <= 1.0 + eps_hi)).to(tl.float32)
        if HAS_DELTA:
            coef_1d = tl.minimum(coef_1, delta)
            pass_delta = (coef_1 <= delta).to(tl.float32)
        else:
            coef_1d = coef_1
            pass_delta = tl.zeros_like(coef_1) + 1.0
        a = coef_1d * adv
        b = coef_2 * adv
        w_a = tl.where(a < b, 1.0, tl.where(a == b, 0.5, 0.0))
        policy = -tl.minimum(a, b)
        d_coef = -(w_a * pass_delta + (1.0 - w_a) * in_clip) * adv
        d_direct = tl.zeros_like(lp)
        coef_metric = coef_1d
    elif LOSS_KIND == KIND_CISPO:  # cispo: detached clamp(coef_1, max=eps_high) * A * logp
        clamped = tl.minimum(coef_1, eps_hi)
        policy = -clamped * adv * lp
        d_coef = tl.zeros_like(lp)
        d_direct = -clamped * adv
    elif LOSS_KIND == KIND_SAPO:  # sapo: soft clip sigmoid(tau (coef_1 - 1)) * 4 / tau
        tau = tl.where(adv > 0, sapo_t_pos, sapo_t_neg)
        sig = tl.sigmoid(tau * (coef_1 - 1.0))
        policy = -sig * 4.0 / tau * adv
        d_coef = -4.0 * sig * (1.0 - sig) * adv
        d_direct = tl.zeros_like(lp)
    elif LOSS_KIND == KIND_POLICY_FN:  # the loss type's own @triton.jit policy term (fastgrpo.grpo.registry)
        policy, d_coef, d_direct = POLICY(coef_1, lp, adv, policy_params)
    else:  # KIND_VESPO: detached per-row gamma weight phi
        policy = -phi * adv * lp
        d_coef = tl.zeros_like(lp)
        d_direct = -phi * adv + tl.zeros_like(lp)
    ptl = policy * mult
    d_coef = d_coef * mult
    d_direct = d_direct * mult
    kl = tl.zeros_like(lp)
    if HAS_KL:
        diff = ref - lp
        e = tl.exp(diff)
        kl = e - diff - 1.0
        dkl = 1.0 - e
        if HAS_BIAS_CORRECTION:  # per_token_kl * coef_1: the ratio carries gradient through the KL too
            if SEQ_LEVEL:
                d_coef = d_coef + beta * kl
                d_direct = d_direct + beta * dkl * coef_1
            else:
                # d(kl * exp(logp - old)) / dlogp = (1 - e^diff + e^diff - diff - 1) * coef_1 = -diff * coef_1,
                # exact, where the two-term sum loses every digit in fp32 at large |diff|.
                d_direct = d_direct - beta * diff * coef_1
            kl = kl * coef_1
        else:
            d_direct = d_direct + beta * dkl
        ptl = ptl + beta * kl
    return ptl, d_coef, d_direct, kl, coef_metric


@triton.jit
def grpo_loss_fwd_kernel(
    lp_ptr,
    old_ptr,
    ref_ptr,
    samp_ptr,
    ent_ptr,
    emask_ptr,
    mask_ptr,  # each [B, T], row-major contiguous
    isr_ptr,  # [B, T] or [B, 1] (strides below)
    adv_ptr,  # [B]
    stats_ptr,  # [B, NUM_STATS] fp32
    grad_lp_ptr,
    grad_ent_ptr,  # [B, T] fp32, written with COMPUTE_GRAD (grad_ent also needs HAS_ENTROPY_BONUS)
    B,
    T,
    stride_isr_b,
    stride_isr_t,
    beta,
    eps_lo,
    eps_hi,
    delta,
    off_policy_threshold,
    sapo_t_pos,
    sapo_t_neg,
    vespo_k_pos,
    vespo_lambda_pos,
    vespo_k_neg,
    vespo_lambda_neg,
    entropy_coef,
    policy_params,  # tuple of fp32: the POLICY function's parameters (a placeholder for the built-in kinds)
    HAS_OLD: tl.constexpr,
    HAS_KL: tl.constexpr,
    HAS_BIAS_CORRECTION: tl.constexpr,
    HAS_SAMPLING: tl.constexpr,
    HAS_ISR: tl.constexpr,
    HAS_ENTROPIES: tl.constexpr,
    HAS_ENTROPY_MASK: tl.constexpr,
    HAS_ENTROPY_BONUS: tl.constexpr,
    HAS_DELTA: tl.constexpr,
    HAS_OFF_POLICY: tl.constexpr,
    SEQ_LEVEL: tl.constexpr,
    LOSS_KIND: tl.constexpr,
    COMPUTE_GRAD: tl.constexpr,
    BLOCK_B: tl.constexpr,
    BLOCK_T: tl.constexpr,
    POLICY: tl.constexpr = None,  # @triton.jit (coef_1, logp, adv, params) -> (policy, d/d coef_1, d/d logp)
):
    pid = tl.program_id(0)
    rows = pid * BLOCK_B + tl.arange(0, BLOCK_B)  # [BLOCK_B]
    row_mask = rows < B
    rows64 = rows.to(tl.int64)
    row_base = rows64[:, None] * T  # [BLOCK_B, 1] int64 offset of each row
    adv = tl.load(adv_ptr + rows64, mask=row_mask, other=0.0).to(tl.float32)[:, None]  # [BLOCK_B, 1]
    IS_VESPO: tl.constexpr = LOSS_KIND == KIND_VESPO
    ISR_IN_LOSS: tl.constexpr = HAS_ISR and not IS_VESPO  # vespo folds the ratio into phi instead
    ISR_IN_PHI: tl.constexpr = HAS_ISR and IS_VESPO

    # ---- pass 1: row-level inputs (masked count, sequence log-ratio, off-policy KL, vespo log-weight) ----
    count = tl.zeros((BLOCK_B,), dtype=tl.float32)
    lr_sum = tl.zeros((BLOCK_B,), dtype=tl.float32)
    opm_sum = tl.zeros((BLOCK_B,), dtype=tl.float32)
    vespo_sum = tl.zeros((BLOCK_B,), dtype=tl.float32)
    if SEQ_LEVEL or HAS_OFF_POLICY or IS_VESPO:
        for t0 in range(0, T, BLOCK_T):
            cols = t0 + tl.arange(0, BLOCK_T)  # [BLOCK_T]
            tile_mask = row_mask[:, None] & (cols < T)[None, :]  # [BLOCK_B, BLOCK_T]
            offs = row_base + cols.to(tl.int64)[None, :]  # [BLOCK_B, BLOCK_T] int64
            m = _load_tile(mask_ptr, offs, tile_mask, 0.0)
            lp = _load_tile(lp_ptr, offs, tile_mask, 0.0)
            old = _load_tile(old_ptr, offs, tile_mask, 0.0) if HAS_OLD else lp
            log_ratio = lp - old
            count += tl.sum(m, axis=1)
            lr_sum += tl.sum(log_ratio * m, axis=1)
            if HAS_OFF_POLICY:
                samp = _load_tile(samp_ptr, offs, tile_mask, 0.0) if HAS_SAMPLING else old
                kl_div = samp - lp
                kl_div = tl.where(kl_div != kl_div, 0.0, kl_div)  # torch.nan_to_num(nan=0.0): inf -> +-FLT_MAX
                kl_div = tl.minimum(tl.maximum(kl_div, -FLT_MAX), FLT_MAX)
                opm_sum += tl.sum(kl_div * m, axis=1)
            if IS_VESPO:
                clamped = tl.minimum(tl.maximum(log_ratio, -VESPO_LOG_RATIO_CLAMP), VESPO_LOG_RATIO_CLAMP)
                vespo_sum += tl.sum(clamped * m, axis=1)
                if ISR_IN_PHI:  # every position of the row, as trl does (not masked)
                    isr = tl.load(
                        isr_ptr + rows64[:, None] * stride_isr_b + cols.to(tl.int64)[None, :] * stride_isr_t,
                        mask=tile_mask,
                        other=1.0,
                    ).to(tl.float32)  # [BLOCK_B, BLOCK_T]
                    log_isr = tl.minimum(tl.maximum(tl.log(isr), VESPO_LOG_W_MIN), VESPO_LOG_RATIO_CLAMP)
                    vespo_sum += tl.sum(tl.where(tile_mask, log_isr, 0.0), axis=1)
    count_c = tl.maximum(count, 1.0)  # [BLOCK_B]
    coef_seq = tl.exp(lr_sum / count_c)  # [BLOCK_B], sequence-level importance weight
    coef_row = coef_seq[:, None]  # [BLOCK_B, 1]
    row_mult = tl.full((BLOCK_B, 1), 1.0, tl.float32)
    if HAS_OFF_POLICY:
        keep = (adv >= 0) | ((opm_sum / count_c)[:, None] <= off_policy_threshold)
        row_mult = keep.to(tl.float32)
    phi = tl.zeros((BLOCK_B, 1), dtype=tl.float32)
    if IS_VESPO:
        log_w = tl.minimum(tl.maximum(vespo_sum, VESPO_LOG_W_MIN), VESPO_LOG_RATIO_CLAMP)[:, None]
        nonneg = adv >= 0
        k = tl.where(nonneg, vespo_k_pos, vespo_k_neg)
        lam = tl.maximum(tl.where(nonneg, vespo_lambda_pos, vespo_lambda_neg), VESPO_LAMBDA_MIN)
        phi = tl.exp(lam + k * log_w - lam * tl.exp(log_w))
        phi = tl.where(tl.abs(phi) <= FLT_MAX, phi, 0.0)  # nan_to_num(nan=0, posinf=0, neginf=0)

    # ---- pass 2: per-token loss, row statistics, token-level gradients ----
    count2 = tl.zeros((BLOCK_B,), dtype=tl.float32)
    row_loss = tl.zeros((BLOCK_B,), dtype=tl.float32)
    kl_sum = tl.zeros((BLOCK_B,), dtype=tl.float32)
    ent_sum = tl.zeros((BLOCK_B,), dtype=tl.float32)
    bonus_sum = tl.zeros((BLOCK_B,), dtype=tl.float32)
    bonus_count = tl.zeros((BLOCK_B,), dtype=tl.float32)
    low_sum = tl.zeros((BLOCK_B,), dtype=tl.float32)
    high_sum = tl.zeros((BLOCK_B,), dtype=tl.float32)
    region_sum = tl.zeros((BLOCK_B,), dtype=tl.float32)
    cispo_sum = tl.zeros((BLOCK_B,), dtype=tl.float32)
    d_coef_sum = tl.zeros((BLOCK_B,), dtype=tl.float32)
    for t0 in range(0, T, BLOCK_T):
        cols = t0 + tl.arange(0, BLOCK_T)  # [BLOCK_T]
        tile_mask = row_mask[:, None] & (cols < T)[None, :]  # [BLOCK_B, BLOCK_T]
        offs = row_base + cols.to(tl.int64)[None, :]  # [BLOCK_B, BLOCK_T] int64
        m, lp, old, ref, isr, emask = _load_token_inputs(
            lp_ptr,
            old_ptr,
            ref_ptr,
            isr_ptr,
            emask_ptr,
            mask_ptr,
            rows64,
            cols,
            offs,
            tile_mask,
            stride_isr_b,
            stride_isr_t,
            HAS_OLD,
            HAS_KL,
            HAS_ISR,
            HAS_ENTROPY_MASK,
        )  # each [BLOCK_B, BLOCK_T]
        coef_1 = coef_row + tl.zeros_like(lp) if SEQ_LEVEL else tl.exp(lp - old)
        ptl, d_coef, d_direct, kl, coef_metric = _token_terms(
            lp,
            old,
            ref,
            isr,
            emask,
            adv,
            coef_1,
            row_mult,
            beta,
            eps_lo,
            eps_hi,
            delta,
            sapo_t_pos,
            sapo_t_neg,
            phi,
            policy_params,
            HAS_KL,
            HAS_BIAS_CORRECTION,
            ISR_IN_LOSS,
            HAS_ENTROPY_MASK,
            HAS_DELTA,
            LOSS_KIND,
            SEQ_LEVEL,
            POLICY,
        )
        count2 += tl.sum(m, axis=1)
        row_loss += tl.sum(ptl * m, axis=1)
        if HAS_KL:
            kl_sum += tl.sum(kl * m, axis=1)
        if HAS_ENTROPIES:
            ent = _load_tile(ent_ptr, offs, tile_mask, 0.0)
            eff = m
            if HAS_ENTROPY_MASK:
                eff = m * emask
            ent_sum += tl.sum(ent * m, axis=1)
            bonus_sum += tl.sum(ent * eff, axis=1)
            bonus_count += tl.sum(eff, axis=1)
            if COMPUTE_GRAD and HAS_ENTROPY_BONUS:
                tl.store(grad_ent_ptr + offs, -entropy_coef * eff, mask=tile_mask)
        if LOSS_KIND == KIND_PPO_CLIP and not SEQ_LEVEL:
            low = ((coef_metric < 1.0 - eps_lo) & (adv < 0)).to(tl.float32)
            high = ((coef_metric > 1.0 + eps_hi) & (adv > 0)).to(tl.float32)
            low_sum += tl.sum(low * m, axis=1)
            high_sum += tl.sum(high * m, axis=1)
            region_sum += tl.sum(tl.maximum(low, high) * m, axis=1)
        if LOSS_KIND == KIND_CISPO:
            cispo_sum += tl.sum(((coef_1 > eps_hi) & (adv > 0)).to(tl.float32) * m, axis=1)
        if SEQ_LEVEL:
            d_coef_sum += tl.sum(d_coef * m, axis=1)
        elif COMPUTE_GRAD:
            tl.store(grad_lp_ptr + offs, m * (d_direct + d_coef * coef_1), mask=tile_mask)

    if LOSS_KIND == KIND_PPO_CLIP and SEQ_LEVEL:  # one indicator per sequence (trl's (B, 1) tensors)
        coef_metric_row = coef_row
        if HAS_DELTA:
            coef_metric_row = tl.minimum(coef_row, delta)
        low_row = ((coef_metric_row < 1.0 - eps_lo) & (adv < 0)).to(tl.float32)  # [BLOCK_B, 1]
        high_row = ((coef_metric_row > 1.0 + eps_hi) & (adv > 0)).to(tl.float32)
        low_sum = tl.sum(low_row, axis=1)
        high_sum = tl.sum(high_row, axis=1)
        region_sum = tl.sum(tl.maximum(low_row, high_row), axis=1)

    stats_row = stats_ptr + rows64 * NUM_STATS  # [BLOCK_B] pointers
    tl.store(stats_row + ROW_LOSS, row_loss, mask=row_mask)
    tl.store(stats_row + ROW_COUNT, count2, mask=row_mask)
    tl.store(stats_row + KL_SUM, kl_sum, mask=row_mask)
    tl.store(stats_row + ENTROPY_SUM, ent_sum, mask=row_mask)
    tl.store(stats_row + ENTROPY_BONUS_SUM, bonus_sum, mask=row_mask)
    tl.store(stats_row + ENTROPY_BONUS_COUNT, bonus_count, mask=row_mask)
    tl.store(stats_row + CLIP_LOW, low_sum, mask=row_mask)
    tl.store(stats_row + CLIP_HIGH, high_sum, mask=row_mask)
    tl.store(stats_row + CLIP_REGION, region_sum, mask=row_mask)
    tl.store(stats_row + CISPO_CLIP, cispo_sum, mask=row_mask)
    tl.store(stats_row + PHI_SEQ, tl.sum(phi, axis=1), mask=row_mask)

    # ---- pass 3 (sequence level): every token moves coef_1 = exp(masked mean log-ratio) ----
    if SEQ_LEVEL and COMPUTE_GRAD:
        row_term = (coef_seq * d_coef_sum / count_c)[:, None]  # [BLOCK_B, 1]
        for t0 in range(0, T, BLOCK_T):
            cols = t0 + tl.arange(0, BLOCK_T)  # [BLOCK_T]
            tile_mask = row_mask[:, None] & (cols < T)[None, :]  # [BLOCK_B, BLOCK_T]
            offs = row_base + cols.to(tl.int64)[None, :]  # [BLOCK_B, BLOCK_T] int64
            m, lp, old, ref, isr, emask = _load_token_inputs(
                lp_ptr,
                old_ptr,
                ref_ptr,
                isr_ptr,
                emask_ptr,
                mask_ptr,
                rows64,
                cols,
                offs,
                tile_mask,
                stride_isr_b,
                stride_isr_t,
                HAS_OLD,
                HAS_KL,
                HAS_ISR,
                HAS_ENTROPY_MASK,
            )  # each [BLOCK_B, BLOCK_T]
            coef_1 = coef_row + tl.zeros_like(lp)
            ptl, d_coef, d_direct, kl, coef_metric = _token_terms(
                lp,
                old,
                ref,
                isr,
                emask,
                adv,
                coef_1,
                row_mult,
                beta,
                eps_lo,
                eps_hi,
                delta,
                sapo_t_pos,
                sapo_t_neg,
                phi,
                policy_params,
                HAS_KL,
                HAS_BIAS_CORRECTION,
                ISR_IN_LOSS,
                HAS_ENTROPY_MASK,
                HAS_DELTA,
                LOSS_KIND,
                SEQ_LEVEL,
                POLICY,
            )
            tl.store(grad_lp_ptr + offs, m * d_direct + m * row_term, mask=tile_mask)
