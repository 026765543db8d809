"""Forward kernels of the fused lm_head log-prob op: projection tiles + online logsumexp, never an [N, V] tensor.

Math (per row, ``z`` the transformed logits, see ``fastgrpo.linear_logprobs``)::

    lse = logsumexp(z);  logp = z[target] - lse;  entropy = lse - sum(softmax(z) * z)
    z[target] = transform(x . W[target] + b[target])   # an indexed dot, in the combine kernel
    softmax_w = (softmax(z) * dz/dy) @ W          # frozen-head identity, only with HAS_SOFTMAX_W
    log_sum_sq_probs = logsumexp(2 * z) - 2 * lse # only with HAS_LOG_SUM_SQ
    mean_logits = z.sum() / V                     # only with HAS_MEAN_LOGITS
    is_top1 = z.argmax() == target                # first maximum, from the tiles' own values; only with HAS_IS_TOP1
    row_max, argmax = z.max(), z.argmax()         # every row, only with HAS_ROW_ARGMAX (a vocabulary shard's part)

``linear_logprobs_fwd_kernel`` runs one program per (row block, vocabulary split), in grouped order (GROUP_N row
blocks x all splits run together: their X blocks and the splits' current weight tiles stay in L2). The splits give
enough programs when N is small and L2 reuse when N is large. Each program writes its split's partial statistics;
``combine_splits_kernel`` merges them in a fixed order (deterministic, no atomics).

The partial statistics of a vocabulary slice, per row (one [SPLITS, N] buffer each; what a tensor-parallel rank
would exchange for its slice, with its column offset added to ``arg``):

    m    max z over the slice;                 s  = sum exp(z - m);   t = sum exp(z - m) * (z - m) * log2(e)
    q    sum exp(2 (z - m))   (HAS_LOG_SUM_SQ)  sz = sum z            (HAS_MEAN_LOGITS)
    arg  first column of the slice's max (int32, HAS_IS_TOP1)

and their exact merge, in slice order: ``m_all = max m_i``, ``s = sum s_i c_i``, ``q = sum q_i c_i^2`` with
``c_i = exp(m_i - m_all)``, ``sz = sum sz_i``, ``arg`` = the ``arg_i`` of the first slice with ``m_i == m_all``.
"""

from __future__ import annotations

import triton
import triton.language as tl

from .common import (
    LN2,
    LOG2E,
    combine_partials,
    grouped_tile,
    logit_transform,
    online_softmax_update,
)


@triton.jit
def _w_tile(
    w_ptr,
    w_desc,
    v0,
    k0,
    cols64,
    col_mask,
    H,
    stride_wv,
    stride_wh,
    USE_TMA: tl.constexpr,
    DOT_DTYPE: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    """One weight tile ``w[cols, k0:k0 + BLOCK_K]`` as DOT_DTYPE: [BLOCK_V, BLOCK_K], zero outside the tensor. With
    USE_TMA it comes through the descriptor, whose box may read real weights past ``col_mask`` (inside V): every
    caller masks those columns out of its result."""
    if USE_TMA:
        w = w_desc.load([v0, k0])
    else:
        ks = k0 + tl.arange(0, BLOCK_K)  # [BLOCK_K]
        w = tl.load(
            w_ptr + cols64[:, None] * stride_wv + ks[None, :] * stride_wh,
            mask=col_mask[:, None] & (ks < H)[None, :],
            other=0.0,
        )
    return w.to(DOT_DTYPE)


@triton.jit
def _logits_tile(
    x_ptr,
    w_ptr,
    b_ptr,
    x_desc,  # host TensorDescriptor over x, block [BLOCK_N, BLOCK_K]; None without USE_TMA
    w_desc,  # host TensorDescriptor over the whole w, block [BLOCK_V, BLOCK_K]; None without USE_TMA
    row0,  # first row of the tile: the descriptor coordinate
    v0,  # first vocabulary column of the tile: the descriptor coordinate
    rows64,
    row_mask,
    cols64,
    col_mask,
    H,
    stride_xn,
    stride_xh,
    stride_wv,
    stride_wh,
    HAS_BIAS: tl.constexpr,
    USE_TMA: tl.constexpr,
    DOT_DTYPE: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_V: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    """``y = x[rows] @ w[cols].T (+ b[cols])`` in fp32: [BLOCK_N, BLOCK_V].

    With USE_TMA the tiles come through Hopper tensor-memory-access descriptors, which zero-fill outside the tensor
    like the masked loads' ``other=0``; columns past the caller's range but inside V are real weights, which every
    caller masks out of its result (``col_mask``)."""
    acc = tl.zeros((BLOCK_N, BLOCK_V), dtype=tl.float32)
    for k0 in range(0, H, BLOCK_K):
        if USE_TMA:
            x = x_desc.load([row0, k0]).to(DOT_DTYPE)  # [BLOCK_N, BLOCK_K]
        else:
            ks = k0 + tl.arange(0, BLOCK_K)  # [BLOCK_K]
            x = tl.load(
                x_ptr + rows64[:, None] * stride_xn + ks[None, :] * stride_xh,
                mask=row_mask[:, None] & (ks < H)[None, :],
                other=0.0,
            ).to(DOT_DTYPE)  # [BLOCK_N, BLOCK_K]
        w = _w_tile(w_ptr, w_desc, v0, k0, cols64, col_mask, H, stride_wv, stride_wh, USE_TMA, DOT_DTYPE, BLOCK_K)
        acc = tl.dot(x, tl.trans(w), acc, input_precision=DOT_PRECISION)  # w: [BLOCK_V, BLOCK_K]
    if HAS_BIAS:
        acc += tl.load(b_ptr + cols64, mask=col_mask, other=0.0).to(tl.float32)[None, :]
    return acc


@triton.jit
def linear_logprobs_fwd_kernel(
    x_ptr,  # [N, H]
    w_ptr,  # [V, H]
    b_ptr,  # [V]
    x_desc,  # TensorDescriptor over x, block [BLOCK_N, BLOCK_K], or None without USE_TMA
    w_desc,  # TensorDescriptor over w, block [BLOCK_V, BLOCK_K], or None without USE_TMA
    part_m_ptr,  # [SPLITS, N] fp32 running max
    part_s_ptr,  # [SPLITS, N] fp32 sum exp(z - m)
    part_t_ptr,  # [SPLITS, N] fp32 sum exp(z - m) * (z - m) * log2(e), 0 without HAS_ENTROPY
    part_acc_ptr,  # [SPLITS, N, H] fp32, only with HAS_SOFTMAX_W
    part_q_ptr,  # [SPLITS, N] fp32 sum exp(2 (z - m)), only with HAS_LOG_SUM_SQ
    part_sz_ptr,  # [SPLITS, N] fp32 sum z, only with HAS_MEAN_LOGITS
    part_arg_ptr,  # [SPLITS, N] int32 first column of the split's max, only with HAS_IS_TOP1
    N,
    H,
    V,
    v_per_split,
    stride_xn,
    stride_xh,
    stride_wv,
    stride_wh,
    transform,  # tuple of fp32: the logit transform's scalars (kernels/fastgrpo_kernels/common.py: transform_args)
    HAS_BIAS: tl.constexpr,
    TRANSFORM: tl.constexpr,  # tuple: the logit transform's compile-time flags
    HAS_SOFTMAX_W: tl.constexpr,
    HAS_ENTROPY: tl.constexpr,
    HAS_LOG_SUM_SQ: tl.constexpr,
    HAS_MEAN_LOGITS: tl.constexpr,
    HAS_IS_TOP1: tl.constexpr,
    USE_TMA: tl.constexpr,
    DOT_DTYPE: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_V: tl.constexpr,
    BLOCK_K: tl.constexpr,
    GROUP_N: tl.constexpr,
):
    if USE_TMA:  # the descriptors' boxes are compiled in: they must be the tiles
        tl.static_assert(x_desc.block_shape[0] == BLOCK_N)
        tl.static_assert(x_desc.block_shape[1] == BLOCK_K)
        tl.static_assert(w_desc.block_shape[0] == BLOCK_V)
        tl.static_assert(w_desc.block_shape[1] == BLOCK_K)
    pid_n, split = grouped_tile(tl.program_id(0), tl.cdiv(N, BLOCK_N), tl.cdiv(V, v_per_split), GROUP_N)
    row0 = pid_n * BLOCK_N
    rows = row0 + tl.arange(0, BLOCK_N)  # [BLOCK_N]
    row_mask = rows < N
    rows64 = rows.to(tl.int64)
    v_start = split * v_per_split
    v_end = tl.minimum(v_start + v_per_split, V)

    m = tl.full((BLOCK_N,), float("-inf"), dtype=tl.float32)
    s = tl.zeros((BLOCK_N,), dtype=tl.float32)
    t = tl.zeros((BLOCK_N,), dtype=tl.float32)
    q = tl.zeros((BLOCK_N,), dtype=tl.float32)
    sz = tl.zeros((BLOCK_N,), dtype=tl.float32)
    arg = tl.zeros((BLOCK_N,), dtype=tl.int32)
    # The target logit is not picked out of the tiles here (a [BLOCK_N, BLOCK_V] compare per tile costs registers
    # in the hot loop): the combine kernel computes it as one indexed dot per row.
    for v0 in range(v_start, v_end, BLOCK_V):
        cols = v0 + tl.arange(0, BLOCK_V)  # [BLOCK_V]
        col_mask = cols < v_end
        cols64 = cols.to(tl.int64)
        y = _logits_tile(
            x_ptr,
            w_ptr,
            b_ptr,
            x_desc,
            w_desc,
            row0,
            v0,
            rows64,
            row_mask,
            cols64,
            col_mask,
            H,
            stride_xn,
            stride_xh,
            stride_wv,
            stride_wh,
            HAS_BIAS,
            USE_TMA,
            DOT_DTYPE,
            DOT_PRECISION,
            BLOCK_N,
            BLOCK_V,
            BLOCK_K,
        )  # [BLOCK_N, BLOCK_V]
        z, dz_dy = logit_transform(y, transform, TRANSFORM)
        # Padded vocabulary columns, and with TMA the next split's columns, must not enter the logsumexp.
        if HAS_MEAN_LOGITS:
            sz += tl.sum(tl.where(col_mask[None, :], z, 0.0), axis=1)
        z = tl.where(col_mask[None, :], z, float("-inf"))
        m, s, t, q, arg, e, alpha = online_softmax_update(
            m, s, t, q, arg, z, v0, HAS_ENTROPY, HAS_LOG_SUM_SQ, HAS_IS_TOP1
        )
        if HAS_SOFTMAX_W:
            # acc = acc * alpha + (e * dz/dy) @ W[cols]: the rescaled running sum, kept in the split's fp32 slice.
            pe = (e * dz_dy).to(DOT_DTYPE)  # [BLOCK_N, BLOCK_V], 0 at masked columns
            # The previous tile stored the accumulator from other threads than the ones that load it below (the
            # layouts differ), and Triton orders only shared memory between threads: one block barrier per tile.
            tl.debug_barrier()
            for k0 in range(0, H, BLOCK_K):
                ks = k0 + tl.arange(0, BLOCK_K)
                k_mask = ks < H
                # [BLOCK_V, BLOCK_K]; with TMA, rows past the split's range are real weights, multiplied by pe == 0
                w = _w_tile(
                    w_ptr, w_desc, v0, k0, cols64, col_mask, H, stride_wv, stride_wh, USE_TMA, DOT_DTYPE, BLOCK_K
                )
                acc_ptrs = part_acc_ptr + (split * N + rows64)[:, None] * H + ks[None, :]
                io_mask = row_mask[:, None] & k_mask[None, :]
                old = tl.load(acc_ptrs, mask=io_mask, other=0.0)  # [BLOCK_N, BLOCK_K]
                old = tl.where(v0 > v_start, old, 0.0) * alpha[:, None]  # nothing written before the first tile
                new = tl.dot(pe, w, old, input_precision=DOT_PRECISION)
                tl.store(acc_ptrs, new, mask=io_mask)

    out = split * N + rows64
    tl.store(part_m_ptr + out, m, mask=row_mask)
    tl.store(part_s_ptr + out, s, mask=row_mask)
    tl.store(part_t_ptr + out, t, mask=row_mask)
    if HAS_LOG_SUM_SQ:
        tl.store(part_q_ptr + out, q, mask=row_mask)
    if HAS_MEAN_LOGITS:
        tl.store(part_sz_ptr + out, sz, mask=row_mask)
    if HAS_IS_TOP1:
        tl.store(part_arg_ptr + out, arg, mask=row_mask)


@triton.jit
def merge_split_statistics(
    part_m_ptr,
    part_s_ptr,
    part_t_ptr,
    part_q_ptr,
    part_sz_ptr,
    part_arg_ptr,
    rows64,  # [BLOCK_N] int64 rows
    row_mask,  # [BLOCK_N]
    N,
    SPLITS,
    HAS_LOG_SUM_SQ: tl.constexpr,
    HAS_MEAN_LOGITS: tl.constexpr,
    HAS_IS_TOP1: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    """The exact merge of SPLITS vocabulary slices' partial statistics ([SPLITS, N] buffers, slices in vocabulary
    order; see the module docstring), in a fixed order (bit-identical run to run). Returns
    ``(m_all, s, t, q, sz, arg)`` per row [BLOCK_N]; q / sz / arg are zeros unless their flag is set."""
    m_all = tl.full((BLOCK_N,), float("-inf"), dtype=tl.float32)
    for i in range(0, SPLITS):
        m_all = tl.maximum(m_all, tl.load(part_m_ptr + i * N + rows64, mask=row_mask, other=0.0))
    s = tl.zeros((BLOCK_N,), dtype=tl.float32)
    t = tl.zeros((BLOCK_N,), dtype=tl.float32)
    q = tl.zeros((BLOCK_N,), dtype=tl.float32)
    sz = tl.zeros((BLOCK_N,), dtype=tl.float32)
    arg = tl.zeros((BLOCK_N,), dtype=tl.int32)
    found = tl.zeros((BLOCK_N,), dtype=tl.int1)
    for i in range(0, SPLITS):
        idx = i * N + rows64
        m_i = tl.load(part_m_ptr + idx, mask=row_mask, other=0.0)
        scale, s_i, t_i = combine_partials(
            m_i,
            tl.load(part_s_ptr + idx, mask=row_mask, other=1.0),
            tl.load(part_t_ptr + idx, mask=row_mask, other=0.0),
            m_all,
        )
        s += s_i
        t += t_i
        if HAS_LOG_SUM_SQ:
            q += tl.load(part_q_ptr + idx, mask=row_mask, other=1.0) * (scale * scale)
        if HAS_MEAN_LOGITS:
            sz += tl.load(part_sz_ptr + idx, mask=row_mask, other=0.0)
        if HAS_IS_TOP1:
            # the first slice holding the global max: an equal max in a later slice has a higher column
            here = (m_i == m_all) & ~found
            arg = tl.where(here, tl.load(part_arg_ptr + idx, mask=row_mask, other=0), arg)
            found = found | here
    return m_all, s, t, q, sz, arg


@triton.jit
def combine_splits_kernel(
    part_m_ptr,  # [SPLITS, N] fp32, as written by linear_logprobs_fwd_kernel
    part_s_ptr,
    part_t_ptr,
    part_acc_ptr,  # [SPLITS, N, H] fp32, only with HAS_SOFTMAX_W
    part_q_ptr,  # [SPLITS, N] fp32, only with HAS_LOG_SUM_SQ
    part_sz_ptr,  # [SPLITS, N] fp32, only with HAS_MEAN_LOGITS
    part_arg_ptr,  # [SPLITS, N] int32, only with HAS_IS_TOP1
    x_ptr,  # [N, H]
    w_ptr,  # [V, H]
    b_ptr,  # [V]
    tgt_ptr,  # [N]
    logp_ptr,  # [N] fp32 outputs
    entropy_ptr,
    lse_ptr,
    softmax_w_ptr,  # [N, H] fp32, only with HAS_SOFTMAX_W (may alias part_acc_ptr when SPLITS == 1)
    target_scale_ptr,  # [N] fp32 dz/dy at the target, only with HAS_SOFTMAX_W
    log_sum_sq_ptr,  # [N] fp32, only with HAS_LOG_SUM_SQ
    mean_logits_ptr,  # [N] fp32, only with HAS_MEAN_LOGITS
    is_top1_ptr,  # [N] int8 (a torch.bool tensor's bytes), only with HAS_IS_TOP1
    row_max_ptr,  # [N] fp32 max z, only with HAS_ROW_ARGMAX
    argmax_ptr,  # [N] int32 first column of the max, only with HAS_ROW_ARGMAX
    N,
    H,
    V,
    SPLITS,
    ignore_index,
    stride_xn,
    stride_xh,
    stride_wv,
    stride_wh,
    transform,  # tuple of fp32: the logit transform's scalars (kernels/fastgrpo_kernels/common.py: transform_args)
    HAS_BIAS: tl.constexpr,
    TRANSFORM: tl.constexpr,  # tuple: the logit transform's compile-time flags
    HAS_ENTROPY: tl.constexpr,
    HAS_SOFTMAX_W: tl.constexpr,
    HAS_LOG_SUM_SQ: tl.constexpr,
    HAS_MEAN_LOGITS: tl.constexpr,
    HAS_IS_TOP1: tl.constexpr,
    HAS_ROW_ARGMAX: tl.constexpr,  # store m_all and arg (the forward kernel ran with HAS_IS_TOP1 to track arg)
    DOT_DTYPE: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    pid = tl.program_id(0)
    rows = pid * BLOCK_N + tl.arange(0, BLOCK_N)  # [BLOCK_N]
    row_mask = rows < N
    rows64 = rows.to(tl.int64)
    m_all, s, t, q, sz, arg = merge_split_statistics(
        part_m_ptr, part_s_ptr, part_t_ptr, part_q_ptr, part_sz_ptr, part_arg_ptr, rows64, row_mask, N, SPLITS,
        HAS_LOG_SUM_SQ, HAS_MEAN_LOGITS, HAS_IS_TOP1 or HAS_ROW_ARGMAX, BLOCK_N,
    )  # fmt: skip
    log_s = tl.log(s)
    lse = m_all + log_s

    # Target logit: an indexed dot x[row] . W[target] over H, with the operands rounded to the compute dtype as the
    # tiles saw them and fp32 accumulation. Ignored rows read row 0 and are zeroed below.
    tgt = tl.load(tgt_ptr + rows64, mask=row_mask, other=ignore_index)
    valid = (tgt != ignore_index) & row_mask
    safe = tl.where(valid & (tgt >= 0) & (tgt < V), tgt, 0).to(tl.int64)  # [BLOCK_N]
    y_t = tl.zeros((BLOCK_N,), dtype=tl.float32)
    for k0 in range(0, H, BLOCK_K):
        ks = k0 + tl.arange(0, BLOCK_K)  # [BLOCK_K]
        io_mask = row_mask[:, None] & (ks < H)[None, :]
        x = tl.load(x_ptr + rows64[:, None] * stride_xn + ks[None, :] * stride_xh, mask=io_mask, other=0.0)
        w = tl.load(w_ptr + safe[:, None] * stride_wv + ks[None, :] * stride_wh, mask=io_mask, other=0.0)
        y_t += tl.sum(x.to(DOT_DTYPE).to(tl.float32) * w.to(DOT_DTYPE).to(tl.float32), axis=1)  # [BLOCK_N]
    if HAS_BIAS:
        y_t += tl.load(b_ptr + safe, mask=row_mask, other=0.0).to(tl.float32)
    z_t, a_t = logit_transform(y_t, transform, TRANSFORM)

    tl.store(lse_ptr + rows64, lse, mask=row_mask)
    tl.store(logp_ptr + rows64, tl.where(valid, z_t - lse, 0.0), mask=row_mask)
    if HAS_ENTROPY:
        tl.store(entropy_ptr + rows64, tl.where(valid, log_s - t * LN2 / s, 0.0), mask=row_mask)
    if HAS_LOG_SUM_SQ:
        tl.store(log_sum_sq_ptr + rows64, tl.where(valid, tl.log(q) - 2.0 * log_s, 0.0), mask=row_mask)
    if HAS_MEAN_LOGITS:
        tl.store(mean_logits_ptr + rows64, tl.where(valid, sz / V, 0.0), mask=row_mask)
    if HAS_IS_TOP1:
        tl.store(is_top1_ptr + rows64, (valid & (arg.to(tl.int64) == tgt.to(tl.int64))).to(tl.int8), mask=row_mask)
    if HAS_ROW_ARGMAX:
        tl.store(row_max_ptr + rows64, m_all, mask=row_mask)
        tl.store(argmax_ptr + rows64, arg, mask=row_mask)
    if HAS_SOFTMAX_W:
        tl.store(target_scale_ptr + rows64, a_t, mask=row_mask)
        for k0 in range(0, H, BLOCK_K):
            ks = k0 + tl.arange(0, BLOCK_K)  # [BLOCK_K]
            io_mask = row_mask[:, None] & (ks < H)[None, :]
            acc = tl.zeros((BLOCK_N, BLOCK_K), dtype=tl.float32)
            for i in range(0, SPLITS):
                w_i = tl.exp2((tl.load(part_m_ptr + i * N + rows64, mask=row_mask, other=0.0) - m_all) * LOG2E) / s
                part = tl.load(part_acc_ptr + (i * N + rows64)[:, None] * H + ks[None, :], mask=io_mask, other=0.0)
                acc += part * w_i[:, None]
            # With one split, softmax_w may alias the partial: each element is read before it is written.
            tl.store(softmax_w_ptr + rows64[:, None] * H + ks[None, :], acc, mask=io_mask)
