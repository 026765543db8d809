"""Chunked pure-torch implementation of the fused lm_head log-prob op (the CPU path, ``backend="torch"``).

Same semantics and the same statistics as the Triton kernels, tiled over tokens and vocabulary so the extra memory
is O(tile) instead of O(N * V). Forward per row: online logsumexp over vocabulary tiles, keeping
``m`` (running max), ``s = sum exp(z - m)``, ``t = sum exp(z - m) * (z - m)`` and the target logit, so that
``lse = m + log s``, ``entropy = log s - t / s``. For a frozen head the forward also accumulates
``softmax(z) * dz/dy @ W`` (landscape notes, section 3) so the backward needs no recompute.
"""

from __future__ import annotations

import logging

import torch

from ._log import log_once
from .options import LogProbOptions

# Elements of one [tokens, vocab] fp32 tile: ~16 MB, with ~4 live temporaries of that size.
TILE_ELEMENTS = 1 << 22
MAX_TOKEN_CHUNK = 512


def _chunks(n: int, v: int, h: int) -> tuple[int, int]:
    """Token and vocabulary tile sizes: a [tokens, vocab] tile and the [vocab, H] per-chunk buffers (fp32 weight
    operands, dW accumulators) each stay within TILE_ELEMENTS, whatever N is."""
    token_chunk = max(1, min(n, MAX_TOKEN_CHUNK))
    vocab_chunk = min(v, max(256, min(TILE_ELEMENTS // token_chunk, TILE_ELEMENTS // max(h, 1))))
    return token_chunk, vocab_chunk


def _acc_dtype(compute_dtype: torch.dtype) -> torch.dtype:
    # fp32 statistics and accumulators, except for float64 inputs (kept exact for reference-grade checks)
    return torch.float64 if compute_dtype == torch.float64 else torch.float32


def _operand(t: torch.Tensor, compute_dtype: torch.dtype) -> torch.Tensor:
    """Round to the compute dtype (autocast semantics), then hold in the accumulation dtype: exact products with fp32
    accumulation, as the GPU's tensor cores (and the Triton kernels) compute a bf16 matmul."""
    return t.to(compute_dtype).to(_acc_dtype(compute_dtype))


def _logits_tile(
    x: torch.Tensor,  # [n, H] operand (see _operand)
    w: torch.Tensor,  # [v, H] operand
    b: torch.Tensor | None,  # [v]
    opts: LogProbOptions,
) -> tuple[torch.Tensor, torch.Tensor | float]:
    """fp32 logits z [n, v] and dz/dy (a tensor with softcap, else the scalar logit_scale / temperature)."""
    y = x @ w.T
    if b is not None:
        y += b.to(y.dtype)
    y *= opts.logit_scale
    if opts.softcap is None:
        return y.mul_(opts.inv_temperature), opts.logit_scale * opts.inv_temperature
    th = torch.tanh(y.div_(opts.softcap))
    dz_dy = (1.0 - th * th).mul_(opts.logit_scale * opts.inv_temperature)
    return th.mul_(opts.softcap * opts.inv_temperature), dz_dy


def forward(
    hidden: torch.Tensor,  # [N, H]
    weight: torch.Tensor,  # [V, H]
    bias: torch.Tensor | None,  # [V]
    targets: torch.Tensor,  # [N]
    opts: LogProbOptions,
    compute_dtype: torch.dtype,
    accumulate_softmax_w: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Returns ``(logp, entropy, lse, softmax_w, target_scale)``; the last two are empty unless accumulated."""
    n_tok, h = hidden.shape
    vocab = weight.shape[0]
    dev = hidden.device
    f32 = dict(device=dev, dtype=_acc_dtype(compute_dtype))
    logp = torch.empty(n_tok, **f32)
    entropy = torch.empty(n_tok if opts.return_entropy else 0, **f32)
    lse = torch.empty(n_tok, **f32)
    softmax_w = torch.empty((n_tok, h) if accumulate_softmax_w else (0,), **f32)
    target_scale = torch.empty(n_tok if accumulate_softmax_w else 0, **f32)
    token_chunk, vocab_chunk = _chunks(n_tok, vocab, h)
    valid_all = targets != opts.ignore_index

    for r0 in range(0, n_tok, token_chunk):
        r1 = min(r0 + token_chunk, n_tok)
        x = _operand(hidden[r0:r1], compute_dtype)
        tgt = targets[r0:r1].long()
        m = torch.full((r1 - r0,), float("-inf"), **f32)
        s = torch.zeros(r1 - r0, **f32)
        t = torch.zeros(r1 - r0, **f32)
        z_tgt = torch.zeros(r1 - r0, **f32)
        a_tgt = torch.zeros(r1 - r0, **f32)
        acc = torch.zeros((r1 - r0, h), **f32) if accumulate_softmax_w else None
        for c0 in range(0, vocab, vocab_chunk):
            c1 = min(c0 + vocab_chunk, vocab)
            w = _operand(weight[c0:c1], compute_dtype)
            z, dz_dy = _logits_tile(x, w, None if bias is None else bias[c0:c1], opts)
            m_new = torch.maximum(m, z.amax(-1))
            alpha = torch.exp(m - m_new)  # 0 on the first tile (m = -inf)
            # Rebase t from the old max to the new one: sum e'(z - m_new) = alpha * (t + (m - m_new) * s)
            shift = torch.where(s > 0, m - m_new, torch.zeros_like(s)) * s
            z.sub_(m_new[:, None])  # z - m_new, <= 0
            e = torch.exp(z)
            t = alpha * (t + shift) + (e * z).sum(-1)
            s = alpha * s + e.sum(-1)
            m = m_new
            local = tgt - c0
            here = (local >= 0) & (local < c1 - c0)
            idx = local.clamp(0, c1 - c0 - 1)[:, None]
            z_tgt = torch.where(here, z.gather(1, idx).squeeze(1) + m_new, z_tgt)
            if acc is not None:
                if isinstance(dz_dy, torch.Tensor):
                    a_tgt = torch.where(here, dz_dy.gather(1, idx).squeeze(1), a_tgt)
                    e.mul_(dz_dy)
                else:
                    a_tgt.fill_(dz_dy)
                    e.mul_(dz_dy)
                acc.mul_(alpha[:, None]).addmm_(e, w.to(e.dtype))
        valid = valid_all[r0:r1]
        row_lse = m + torch.log(s)
        lse[r0:r1] = row_lse
        logp[r0:r1] = torch.where(valid, z_tgt - row_lse, torch.zeros_like(row_lse))
        if opts.return_entropy:
            entropy[r0:r1] = torch.where(valid, torch.log(s) - t / s, torch.zeros_like(row_lse))
        if acc is not None:
            softmax_w[r0:r1] = acc.div_(s[:, None])
            target_scale[r0:r1] = a_tgt
    return logp, entropy, lse, softmax_w, target_scale


def backward(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    targets: torch.Tensor,
    lse: torch.Tensor,  # [N] fp32
    entropy: torch.Tensor,  # [N] fp32 or empty
    softmax_w: torch.Tensor,  # [N, H] fp32 or empty
    target_scale: torch.Tensor,  # [N] fp32 or empty
    grad_logp: torch.Tensor | None,  # [N]
    grad_entropy: torch.Tensor | None,  # [N]
    opts: LogProbOptions,
    compute_dtype: torch.dtype,
    needs: tuple[bool, bool, bool],
) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
    """Gradients for (hidden, weight, bias), each None when not needed."""
    need_x, need_w, need_b = needs[0], needs[1], needs[2] and bias is not None
    n_tok, h = hidden.shape
    vocab = weight.shape[0]
    dev = hidden.device
    acc = _acc_dtype(compute_dtype)
    valid = (targets != opts.ignore_index).to(acc)
    g_l = None if grad_logp is None else grad_logp.to(acc) * valid
    g_h = None if grad_entropy is None else grad_entropy.to(acc) * valid

    if uses_softmax_w(softmax_w, g_h, need_w, need_b):
        return softmax_w_backward(hidden, weight, targets, softmax_w, target_scale, g_l, opts, compute_dtype, need_x)
    note_recompute(softmax_w)
    if g_l is None and g_h is None:
        return zero_grads(hidden, weight, bias, need_x, need_w, need_b)

    token_chunk, vocab_chunk = _chunks(n_tok, vocab, h)
    # fp32 accumulators; with fp32 inputs they are the returned gradients themselves.
    grad_x = torch.zeros((n_tok, h), device=dev, dtype=acc) if need_x else None
    grad_w = torch.empty_like(weight) if need_w else None
    grad_b = torch.empty_like(bias) if need_b else None
    for c0 in range(0, vocab, vocab_chunk):  # vocabulary outer: each dW tile is finished once, in fp32
        c1 = min(c0 + vocab_chunk, vocab)
        w = _operand(weight[c0:c1], compute_dtype)
        b = None if bias is None else bias[c0:c1]
        gw = None
        if need_w:  # accumulate in place when the gradient is already in the accumulation dtype
            gw = grad_w[c0:c1].zero_() if grad_w.dtype == acc else torch.zeros((c1 - c0, h), device=dev, dtype=acc)
        gb = torch.zeros(c1 - c0, device=dev, dtype=acc) if need_b else None
        for r0 in range(0, n_tok, token_chunk):
            r1 = min(r0 + token_chunk, n_tok)
            x = _operand(hidden[r0:r1], compute_dtype)
            z, dz_dy = _logits_tile(x, w, b, opts)
            log_p = z.sub_(lse[r0:r1, None])
            p = torch.exp(log_p)
            dz = torch.zeros_like(p)
            if g_h is not None:
                # d entropy / dz_j = -p_j (log p_j + entropy)
                dz.addcmul_(p, log_p.add_(entropy[r0:r1, None]), value=-1.0).mul_(g_h[r0:r1, None])
            if g_l is not None:
                # d logp_t / dz_j = 1[j = t] - p_j
                dz.addcmul_(p, g_l[r0:r1, None], value=-1.0)
                local = targets[r0:r1].long() - c0
                rows = torch.nonzero((local >= 0) & (local < c1 - c0)).squeeze(1)
                dz[rows, local[rows]] += g_l[r0:r1][rows]
            dy = dz.mul_(dz_dy)
            if grad_x is not None:
                grad_x[r0:r1].addmm_(dy, w.to(acc))
            if gw is not None:
                gw.addmm_(dy.T, x.to(acc))
            if gb is not None:
                gb += dy.sum(0)
        if gw is not None and grad_w.dtype != acc:
            grad_w[c0:c1] = gw
        if gb is not None:
            grad_b[c0:c1] = gb
    return (None if grad_x is None else grad_x.to(hidden.dtype)), grad_w, grad_b


def uses_softmax_w(softmax_w: torch.Tensor, g_h: torch.Tensor | None, need_w: bool, need_b: bool) -> bool:
    """The forward's frozen-head sum serves the backward when only d/dhidden of logp is needed."""
    return softmax_w.numel() > 0 and g_h is None and not need_w and not need_b


def softmax_w_backward(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    softmax_w: torch.Tensor,  # [N, H] sum_v p_v (dz/dy)_v W_v
    target_scale: torch.Tensor,  # [N] (dz/dy) at the target
    g_l: torch.Tensor | None,  # [N], 0 at ignored rows
    opts: LogProbOptions,
    compute_dtype: torch.dtype,
    need_x: bool,
) -> tuple[torch.Tensor | None, None, None]:
    """Frozen head: d logp_t / dx = a_t * W_t - sum_v p_v a_v W_v, with no recompute (landscape notes, section 3)."""
    if not need_x:
        return None, None, None
    if g_l is None:
        return torch.zeros_like(hidden), None, None
    safe = torch.where(targets != opts.ignore_index, targets, torch.zeros_like(targets)).long()
    # W_t rounded to the compute dtype, as the forward's sum saw W
    w_t = weight.index_select(0, safe).to(compute_dtype).to(softmax_w.dtype)
    gx = (target_scale[:, None] * w_t - softmax_w).mul_(g_l[:, None].to(softmax_w.dtype))
    return gx.to(hidden.dtype), None, None


def note_recompute(softmax_w: torch.Tensor) -> None:
    if softmax_w.numel():
        log_once(
            "frozen-head-recompute",
            "fastgrpo: an entropy gradient reached a frozen head; recomputing the logits for it (slower, exact)",
            logging.INFO,
        )


def zero_grads(
    hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, need_x: bool, need_w: bool, need_b: bool
) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
    zero = lambda t, need: torch.zeros_like(t) if need and t is not None else None  # noqa: E731
    return zero(hidden, need_x), zero(weight, need_w), zero(bias, need_b)
