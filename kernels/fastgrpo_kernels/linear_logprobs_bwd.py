"""Backward kernel of the fused lm_head log-prob op for a trainable head (or a frozen head with an entropy gradient).

For one vocabulary chunk ``[c0, c0 + width)`` it recomputes the logit tiles and writes ``dL/dy`` into a bounded
``[N, width]`` workspace; the launcher then accumulates ``dX += dY @ W[chunk]`` (fp32) and writes
``dW[chunk] = dY.T @ X`` once, with cuBLAS-class GEMMs. Math, with ``g`` the incoming gradients (0 at ignored
rows), ``p = softmax(z)``, ``log_p = z - lse``::

    dz = g_logp * (onehot(target) - p) - g_entropy * p * (log_p + entropy)
    dy = dz * dz/dy                      # d bias = dy.sum(0), summed per row block here, then in fixed order
"""

from __future__ import annotations

import triton
import triton.language as tl

from .common import LOG2E, grouped_tile, logit_transform
from .linear_logprobs_fwd import _logits_tile


@triton.jit
def linear_logprobs_dlogits_kernel(
    x_ptr,
    w_ptr,
    b_ptr,
    x_desc,  # TensorDescriptor over x, block [BLOCK_N, BLOCK_K], or None without USE_TMA
    w_desc,  # TensorDescriptor over the whole w (not the chunk), block [BLOCK_V, BLOCK_K], or None
    tgt_ptr,
    lse_ptr,
    entropy_ptr,
    g_logp_ptr,
    g_ent_ptr,  # [N, H], [V, H], [V], [N] x5
    dy_ptr,  # [N, width] workspace
    db_part_ptr,  # [cdiv(N, BLOCK_N), >= width] fp32 column sums per row block, only with HAS_BIAS_GRAD
    N,
    H,
    c0,
    width,
    stride_xn,
    stride_xh,
    stride_wv,
    stride_wh,
    stride_dyn,
    stride_dbn,
    transform,  # tuple of fp32: the logit transform's scalars (kernels/fastgrpo_kernels/common.py: transform_args)
    HAS_BIAS: tl.constexpr,
    TRANSFORM: tl.constexpr,  # tuple: the logit transform's compile-time flags
    HAS_LOGP_GRAD: tl.constexpr,
    HAS_ENTROPY_GRAD: tl.constexpr,
    HAS_BIAS_GRAD: tl.constexpr,
    USE_TMA: tl.constexpr,
    DOT_DTYPE: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_V: tl.constexpr,
    BLOCK_K: tl.constexpr,
    GROUP_N: tl.constexpr,
):
    # Grouped order: GROUP_N row blocks sweep the chunk's vocabulary blocks together (X blocks and the chunk's
    # weight tiles stay in L2).
    if USE_TMA:  # the descriptors' boxes are compiled in: they must be the tiles
        tl.static_assert(x_desc.block_shape[0] == BLOCK_N)
        tl.static_assert(x_desc.block_shape[1] == BLOCK_K)
        tl.static_assert(w_desc.block_shape[0] == BLOCK_V)
        tl.static_assert(w_desc.block_shape[1] == BLOCK_K)
    pid_n, pid_v = grouped_tile(tl.program_id(0), tl.cdiv(N, BLOCK_N), tl.cdiv(width, BLOCK_V), GROUP_N)
    row0 = pid_n * BLOCK_N
    rows = row0 + tl.arange(0, BLOCK_N)  # [BLOCK_N]
    row_mask = rows < N
    rows64 = rows.to(tl.int64)
    local = pid_v * BLOCK_V + tl.arange(0, BLOCK_V)  # [BLOCK_V] column within the chunk
    col_mask = local < width
    cols64 = c0 + local.to(tl.int64)
    y = _logits_tile(
        x_ptr,
        w_ptr,
        b_ptr,
        x_desc,
        w_desc,
        row0,
        c0 + pid_v * BLOCK_V,
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
    lse = tl.load(lse_ptr + rows64, mask=row_mask, other=0.0)
    p = tl.exp2(z * LOG2E - (lse * LOG2E)[:, None])  # one FFMA + ex2 (common.py: cheaper than tl.exp)
    dz = tl.zeros((BLOCK_N, BLOCK_V), dtype=tl.float32)
    if HAS_LOGP_GRAD:
        g = tl.load(g_logp_ptr + rows64, mask=row_mask, other=0.0)
        tgt = tl.load(tgt_ptr + rows64, mask=row_mask, other=-1).to(tl.int64)
        hit = (cols64[None, :] == tgt[:, None]).to(tl.float32)
        dz += g[:, None] * (hit - p)
    if HAS_ENTROPY_GRAD:
        g_h = tl.load(g_ent_ptr + rows64, mask=row_mask, other=0.0)
        ent = tl.load(entropy_ptr + rows64, mask=row_mask, other=0.0)
        dz -= g_h[:, None] * p * ((z - lse[:, None]) + ent[:, None])
    mask = row_mask[:, None] & col_mask[None, :]
    # Columns past the chunk (with TMA: the next chunk's real logits, finite) are dropped here.
    dy = tl.where(mask, dz * dz_dy, 0.0)
    tl.store(dy_ptr + rows64[:, None] * stride_dyn + local[None, :], dy.to(dy_ptr.dtype.element_ty), mask=mask)
    if HAS_BIAS_GRAD:
        tl.store(db_part_ptr + pid_n.to(tl.int64) * stride_dbn + local, tl.sum(dy, axis=0), mask=col_mask)
