"""Helpers shared by the kernel families: the logit transform and the one online-softmax update."""

from __future__ import annotations

import triton
import triton.language as tl

# Read once, like triton itself: TRITON_INTERPRET must be set before any @triton.jit runs.
from fastgrpo.env import triton_interpret

INTERPRET: bool = triton_interpret()


# Exponentials as exp2 of an FFMA: on sm_90 `tl.exp` lowers to ex2.approx.f32 plus a log2(e) multiply and
# denormal-range fix-ups (3 FMUL + 1 FSETP per element, from the SASS); `tl.exp2(fma(z, LOG2E, -m * LOG2E))` is one
# FFMA and one ex2.approx.ftz. Statistics stay in natural units (m, lse), so logp carries no extra rounding bias.
LOG2E = tl.constexpr(1.4426950408889634)
LN2 = tl.constexpr(0.6931471805599453)


def transform_args(opts) -> dict:
    """A ``LogProbOptions`` as the kernels' two logit-transform arguments, read only by :func:`logit_transform`:
    ``transform``, a tuple of runtime fp32 scalars, and ``TRANSFORM``, a tuple of compile-time flags. The kernels pass
    both through untouched, so a new transform changes this function and ``logit_transform``, not their signatures.
    """
    return dict(
        transform=(float(opts.logit_scale), float(opts.softcap or 1.0), opts.inv_temperature),
        TRANSFORM=(opts.softcap is not None,),
    )


@triton.jit
def logit_transform(y, transform, TRANSFORM: tl.constexpr):
    """``z = softcap * tanh(logit_scale * y / softcap) * inv_t`` and ``dz/dy``; fp32 in and out.

    ``transform = (logit_scale, softcap, inv_t)`` and ``TRANSFORM = (HAS_SOFTCAP,)`` (see :func:`transform_args`).
    Without softcap, ``z = logit_scale * y * inv_t`` and ``dz/dy`` is that scalar factor (returned broadcastable).
    """
    # torch.compile may pass Python floats as fp64 scalars: keep the math in fp32.
    logit_scale = tl.cast(transform[0], tl.float32)
    softcap = tl.cast(transform[1], tl.float32)
    inv_t = tl.cast(transform[2], tl.float32)
    HAS_SOFTCAP: tl.constexpr = TRANSFORM[0]
    if HAS_SOFTCAP:
        # tanh(u) = 2 / (1 + exp(-2u)) - 1, with exp(-2u) = exp2(c * y): stable at large |u| (exp2 -> inf or 0
        # gives th = -1 or 1), one ex2 per element, and tl has no tanh on every backend.
        c = (-2.0 * LOG2E) * logit_scale / softcap
        th = 2.0 / (1.0 + tl.exp2(y * c)) - 1.0
        z = softcap * th * inv_t
        dz_dy = (1.0 - th * th) * (logit_scale * inv_t)
    else:
        z = y * (logit_scale * inv_t)
        dz_dy = tl.zeros_like(y) + logit_scale * inv_t
    return z, dz_dy


@triton.jit
def online_softmax_update(
    m, s, t, q, arg, z, v0, HAS_T: tl.constexpr, HAS_Q: tl.constexpr, HAS_ARG: tl.constexpr
):  # fmt: skip
    """Fold one logit tile ``z`` [BLOCK_N, BLOCK_V] (masked entries -inf), whose columns are ``v0 + arange(BLOCK_V)``,
    into per-row running statistics.

    ``m`` running max, ``s = sum exp(z - m)``, ``t = sum exp(z - m) * (z - m) * log2(e)``,
    ``q = sum exp(2 (z - m))`` (all [BLOCK_N], fp32), ``arg`` the column of the first maximum ([BLOCK_N] int32),
    from which ``lse = m + log(s)``, ``entropy = log(s) - t * ln2 / s``, ``log(sum p^2) = log(q) - 2 log(s)`` and
    ``is_top1 = (arg == target)``. Keeping ``t`` relative to ``m`` avoids the cancellation of ``lse - sum(p * z)``
    at large logits; ``t`` is in units of the exponent the exp2 already computed (no extra multiply per element).
    ``t``, ``q`` and ``arg`` are updated only with ``HAS_T`` (entropy asked), ``HAS_Q`` (log_sum_sq_probs) and
    ``HAS_ARG`` (is_top1); otherwise they pass through unchanged.

    ``arg``: the tile's first column equal to the new max replaces it only when the tile raised the max, so an equal
    maximum in a later tile (or a later split, see ``combine_partials``) keeps the earlier index: trl's ``is_top1``
    rule, ties to the lowest index. Comparing the same fp32 values that the max was taken over makes the rule exact
    whatever the rounding of the logits. It is taken before ``e`` exists, so ``z`` need not outlive ``e``.

    Returns ``(m_new, s_new, t_new, q_new, arg_new, e, alpha)`` with ``e = exp(z - m_new)`` (0 at masked entries)
    and ``alpha = exp(m - m_new)``, the factor any accumulator weighted by ``e`` is rescaled by.
    """
    m_new = tl.maximum(m, tl.max(z, axis=1))  # [BLOCK_N]
    arg_new = arg
    if HAS_ARG:
        local = tl.arange(0, z.shape[1])  # [BLOCK_V]
        first = tl.min(tl.where(z == m_new[:, None], local[None, :], z.shape[1]), axis=1)  # [BLOCK_N]
        arg_new = tl.where(m_new > m, v0 + first, arg)
    alpha = tl.exp2((m - m_new) * LOG2E)  # 0 on the first tile (m = -inf)
    x = z * LOG2E - (m_new * LOG2E)[:, None]  # [BLOCK_N, BLOCK_V] (z - m_new) * log2(e), one FFMA; -inf masked
    e = tl.exp2(x)
    s_new = alpha * s + tl.sum(e, axis=1)
    t_new = t
    if HAS_T:
        # Rebase t to the new max: sum e'x' = alpha * (t + (m - m_new) * log2(e) * s); s = 0 before the first tile.
        shift = tl.where(s > 0, (m - m_new) * LOG2E, 0.0) * s
        # Where x < -1000, e = 2^x is exactly 0 in fp32, so clamping x there changes no product, and it turns the
        # masked entries' 0 * -inf into 0 with one max instead of a compare and a select.
        t_new = alpha * (t + shift) + tl.sum(e * tl.maximum(x, -1000.0), axis=1)
    q_new = q
    if HAS_Q:
        q_new = (alpha * alpha) * q + tl.sum(e * e, axis=1)  # exp(2(z - m)) = e^2: one FMUL per element
    return m_new, s_new, t_new, q_new, arg_new, e, alpha


@triton.jit
def combine_partials(m_i, s_i, t_i, m_all):
    """Weight of one vocabulary split's statistics after the global max ``m_all``: returns (scale, s, t) terms. The
    split's ``q`` (``online_softmax_update``) scales by ``scale * scale``; its sum of logits and first-argmax column
    need no rescaling (the argmax of the first split whose max equals ``m_all`` wins)."""
    d = (m_i - m_all) * LOG2E
    scale = tl.exp2(d)
    return scale, s_i * scale, scale * (t_i + d * s_i)


@triton.jit
def grouped_tile(pid, n_row_blocks, n_cols, GROUP: tl.constexpr):
    """Map a 1-D program id to (row block, column) with GROUP row blocks per group, the column varying fastest
    within a group: programs running together share GROUP row blocks of X and a band of weight tiles in L2,
    instead of every row block re-streaming its whole X block from HBM for each weight tile (the matmul tutorial's
    grouped ordering; columns are vocabulary splits in the forward and vocabulary blocks in the backward)."""
    per_group = GROUP * n_cols
    group = pid // per_group
    first = group * GROUP
    size = tl.minimum(n_row_blocks - first, GROUP)
    local = pid % per_group
    return first + local % size, local // size
