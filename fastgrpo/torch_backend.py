"""Chunked pure-torch implementation of the fused lm_head log-prob op (the CPU path, ``backend="torch"``).

Same semantics and the same statistics as the Triton kernels, tiled over tokens and vocabulary so the extra memory
is O(tile) instead of O(N * V). Forward per row: online logsumexp over vocabulary tiles, keeping
``m`` (running max), ``s = sum exp(z - m)``, ``t = sum exp(z - m) * (z - m)`` and the target logit, so that
``lse = m + log s``, ``entropy = log s - t / s``. For a frozen head the forward also accumulates
``softmax(z) * dz/dy @ W``: with ``a = dz/dy``, ``d logp_t / dx = a_t W_t - sum_v p_v a_v W_v``, and that sum is the
only vocabulary-wide term, so the online softmax can carry it (rescaled with ``s``) and the backward for ``hidden``
needs no recompute of the logits.

The optional outputs ride along in the same tiles: ``q = sum exp(2 (z - m))`` (rescaled by ``alpha ** 2``) gives
``log_sum_sq_probs = log q - 2 log s``; ``sum z`` gives ``mean_logits``; the running ``(max, index of its first
occurrence)`` gives ``is_top1 = (argmax == target)``, trl's tie rule (the target is a maximum and no earlier column
equals it) read off the same logit values that the max was taken over.
"""

from __future__ import annotations

import torch

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


def acc_dtype(compute_dtype: torch.dtype) -> torch.dtype:
    # fp32 statistics and accumulators, except for float64 inputs (kept exact for reference-grade checks)
    return torch.float64 if compute_dtype == torch.float64 else torch.float32


def _operand(t: torch.Tensor, compute_dtype: torch.dtype) -> torch.Tensor:
    """Round to the compute dtype (autocast semantics), then hold in the accumulation dtype: exact products with fp32
    accumulation, as the GPU's tensor cores (and the Triton kernels) compute a bf16 matmul."""
    return t.to(compute_dtype).to(acc_dtype(compute_dtype))


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
    return_row_argmax: bool = False,
) -> tuple[torch.Tensor, ...]:
    """Returns ``(logp, entropy, lse, softmax_w, target_scale, log_sum_sq_probs, mean_logits, is_top1, row_max,
    argmax)``: entropy and log_sum_sq_probs / mean_logits / is_top1 empty unless asked in ``opts``, softmax_w and
    target_scale empty unless accumulated, row_max (``z.amax(-1)``) and argmax (its first column, int32) empty unless
    ``return_row_argmax``; is_top1 bool, the others in the accumulation dtype. row_max / argmax are written at every
    row, ignored or not: a vocabulary shard's statistics (see ``vocab_parallel``)."""
    n_tok, h = hidden.shape
    vocab = weight.shape[0]
    dev = hidden.device
    f32 = dict(device=dev, dtype=acc_dtype(compute_dtype))
    logp = torch.empty(n_tok, **f32)
    entropy = torch.empty(n_tok if opts.return_entropy else 0, **f32)
    lse = torch.empty(n_tok, **f32)
    softmax_w = torch.empty((n_tok, h) if accumulate_softmax_w else (0,), **f32)
    target_scale = torch.empty(n_tok if accumulate_softmax_w else 0, **f32)
    log_sum_sq = torch.empty(n_tok if opts.return_log_sum_sq_probs else 0, **f32)
    mean_logits = torch.empty(n_tok if opts.return_mean_logits else 0, **f32)
    is_top1 = torch.empty(n_tok if opts.return_is_top1 else 0, device=dev, dtype=torch.bool)
    row_max = torch.empty(n_tok if return_row_argmax else 0, **f32)
    argmax = torch.empty(n_tok if return_row_argmax else 0, device=dev, dtype=torch.int32)
    track_arg = opts.return_is_top1 or return_row_argmax
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
        q = torch.zeros(r1 - r0, **f32) if opts.return_log_sum_sq_probs else None
        sum_z = torch.zeros(r1 - r0, **f32) if opts.return_mean_logits else None
        arg = torch.zeros(r1 - r0, device=dev, dtype=torch.long) if track_arg else None
        for c0 in range(0, vocab, vocab_chunk):
            c1 = min(c0 + vocab_chunk, vocab)
            w = _operand(weight[c0:c1], compute_dtype)
            z, dz_dy = _logits_tile(x, w, None if bias is None else bias[c0:c1], opts)
            tile_max = z.amax(-1)
            if arg is not None:  # strictly greater: an equal maximum in a later tile keeps the earlier index
                arg = torch.where(tile_max > m, z.argmax(-1) + c0, arg)  # argmax: the first maximum in the tile
            if sum_z is not None:
                sum_z += z.sum(-1)
            m_new = torch.maximum(m, tile_max)
            alpha = torch.exp(m - m_new)  # 0 on the first tile (m = -inf)
            # Rebase t from the old max to the new one: sum e'(z - m_new) = alpha * (t + (m - m_new) * s)
            shift = torch.where(s > 0, m - m_new, torch.zeros_like(s)) * s
            z.sub_(m_new[:, None])  # z - m_new, <= 0
            e = torch.exp(z)
            t = alpha * (t + shift) + (e * z).sum(-1)
            s = alpha * s + e.sum(-1)
            if q is not None:
                q = alpha * alpha * q + (e * e).sum(-1)
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
        zero = torch.zeros_like(row_lse)
        if q is not None:
            log_sum_sq[r0:r1] = torch.where(valid, torch.log(q) - 2.0 * torch.log(s), zero)
        if sum_z is not None:
            mean_logits[r0:r1] = torch.where(valid, sum_z / vocab, zero)
        if opts.return_is_top1:
            is_top1[r0:r1] = valid & (arg == tgt)
        if return_row_argmax:
            row_max[r0:r1] = m
            argmax[r0:r1] = arg
        if acc is not None:
            softmax_w[r0:r1] = acc.div_(s[:, None])
            target_scale[r0:r1] = a_tgt
    return logp, entropy, lse, softmax_w, target_scale, log_sum_sq, mean_logits, is_top1, row_max, argmax


def check_weight_in_backward(hidden: torch.Tensor, weight: torch.Tensor) -> None:
    """The forward checked ``weight`` as [V, H]; raise if it has no rows now instead of returning wrong gradients.

    A parameter released between forward and backward (DeepSpeed ZeRO-3 partitions it to 0 elements outside a
    gather) is still the saved tensor, with its data gone.
    """
    if weight.dim() != 2 or weight.shape[0] == 0 or weight.shape[1] != hidden.shape[-1]:
        raise ValueError(
            f"weight has shape {tuple(weight.shape)} in the backward of linear_logprobs, expected [V, H] with V > 0 "
            f"and H={hidden.shape[-1]}: the weight was released or resharded after the forward (e.g. a DeepSpeed "
            "ZeRO-3 partitioned lm_head outside deepspeed.zero.GatheredParameters); gather it for the backward too"
        )


def backward(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    targets: torch.Tensor,
    lse: torch.Tensor,  # [N]
    entropy: torch.Tensor,  # [N] or empty
    g_l: torch.Tensor | None,  # [N] upstream gradient of logp, 0 at ignored rows, accumulation dtype
    g_h: torch.Tensor | None,  # [N] upstream gradient of entropy, likewise
    opts: LogProbOptions,
    compute_dtype: torch.dtype,
    needs: tuple[bool, bool, bool],
) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
    """Gradients for (hidden, weight, bias) by recomputing the logit tiles; each None when not needed.
    The frozen-head and no-gradient cases are handled before this (``fastgrpo.backward``)."""
    check_weight_in_backward(hidden, weight)
    need_x, need_w, need_b = needs
    n_tok, h = hidden.shape
    vocab = weight.shape[0]
    dev = hidden.device
    acc = acc_dtype(compute_dtype)
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
