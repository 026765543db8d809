"""Launchers for the Triton kernels: check what the kernels need, allocate outputs and workspaces, launch.

Same contract as ``torch_backend.forward`` / ``backward``; the custom ops pick one of the two.
"""

from __future__ import annotations

import contextlib

import torch
import triton
import triton.language as tl

from fastgrpo_kernels import configs
from fastgrpo_kernels.common import INTERPRET, transform_args
from fastgrpo_kernels.linear_logprobs_bwd import linear_logprobs_dlogits_kernel
from fastgrpo_kernels.linear_logprobs_fwd import combine_splits_kernel, linear_logprobs_fwd_kernel

from . import launch_config, precision, tma
from .gemm import mm_fp32 as _mm_fp32
from .options import LogProbOptions

_TL_DTYPES = {torch.float32: tl.float32, torch.bfloat16: tl.bfloat16, torch.float16: tl.float16}


def _check_dtype(compute_dtype: torch.dtype) -> None:
    if compute_dtype not in _TL_DTYPES:
        raise TypeError(
            f"backend='triton' computes in float32, bfloat16 or float16; hidden/weight give {compute_dtype} "
            "(use backend='torch' for float64)"
        )


def _dot_dtype(compute_dtype: torch.dtype):
    # The interpreter multiplies raw bf16 bit patterns in tl.dot: upcast there (free on the GPU: constexpr).
    return tl.float32 if INTERPRET else _TL_DTYPES[compute_dtype]


def _dot_precision(compute_dtype: torch.dtype, device: torch.device | None = None) -> str | None:
    # fp32 inputs: TF32 exactly when torch's own fp32 matmuls on that device may use it (fastgrpo/precision.py).
    # 16-bit inputs: None, Triton's default (the setting only concerns fp32 operands).
    if compute_dtype != torch.float32:
        return None
    return precision.fp32_dot_precision(device)


def _interpreter_operands(compute_dtype: torch.dtype, *tensors):
    """Under the interpreter the kernels upcast operands to fp32 (see ``_dot_dtype``), which would skip the rounding
    to the compute dtype that the GPU's in-kernel cast does; round here instead (torch rounds to nearest even, the
    interpreter's own casts truncate)."""
    if not INTERPRET:
        return tensors
    return tuple(t if t is None or t.dtype == compute_dtype else t.to(compute_dtype) for t in tensors)


def _descriptors(cfg: configs.KernelConfig, hidden: torch.Tensor, weight: torch.Tensor, compute_dtype: torch.dtype):
    """TMA descriptors for the config's tiles when it asks for them and they can be built, else (None, None)."""
    if not cfg.use_tma:
        return None, None
    exact_fp32 = _dot_precision(compute_dtype, hidden.device) == "ieee"
    return tma.descriptors(hidden, weight, cfg.block_n, cfg.block_v, cfg.block_k, exact_fp32)


# Poison for integer outputs: a value no kernel write leaves (is_top1 bytes are 0 / 1, columns are >= 0); floats: NaN.
_INT_POISON = {torch.uint8: 255, torch.int32: -(2**31)}


def _empty(shape, device, dtype, poison: bool) -> torch.Tensor:
    t = torch.empty(shape, device=device, dtype=dtype)
    return t.fill_(_INT_POISON.get(dtype, float("nan"))) if poison and t.numel() else t


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
    argmax)``, as ``torch_backend.forward`` does: fp32 (is_top1 bool, argmax int32), empty unless asked."""
    _check_dtype(compute_dtype)
    hidden, weight = _interpreter_operands(compute_dtype, hidden, weight)
    kind = "fwd_softmax_w" if accumulate_softmax_w else "fwd"
    run = lambda cfg: _forward(  # noqa: E731
        cfg, hidden, weight, bias, targets, opts, compute_dtype, accumulate_softmax_w, return_row_argmax
    )
    with _on_device(hidden.device):
        return launch_config.current().launch(kind, run, **_launch_shape(hidden, weight, compute_dtype))


def _on_device(device: torch.device):
    """Triton launches on the current device (``driver.active.get_current_device()``): make it the tensors' (e.g.
    cuda:1 while cuda:0 is current). ``torch.xpu.device`` exists from torch 2.4 on, like ``torch.cuda.device``."""
    if device.type == "cuda":
        return torch.cuda.device(device)
    if device.type == "xpu":
        return torch.xpu.device(device)
    return contextlib.nullcontext()


def _launch_shape(hidden: torch.Tensor, weight: torch.Tensor, compute_dtype: torch.dtype) -> dict:
    """What selects a launch config: operand precision ("tf32" for fp32 operands on tensor cores), sizes, device."""
    tf32 = _dot_precision(compute_dtype, hidden.device) == "tf32"
    precision = "tf32" if tf32 else launch_config.dtype_precision(compute_dtype)
    return dict(
        precision=precision,
        n=hidden.shape[0],
        h=hidden.shape[1],
        vocab=weight.shape[0],
        device=hidden.device,
    )


def _forward(cfg, hidden, weight, bias, targets, opts, compute_dtype, accumulate_softmax_w, row_argmax=False):
    track_arg = opts.return_is_top1 or row_argmax  # the forward kernel tracks each split's first argmax
    # The outputs' registers: smaller tiles where the table's spill (arch_configs.OUTPUT_TILES)
    if opts.has_extras or row_argmax:
        precision = _launch_shape(hidden, weight, compute_dtype)["precision"]
        kind = "fwd_softmax_w" if accumulate_softmax_w else "fwd"
        cfg = launch_config.current().with_outputs(cfg, kind, precision, hidden.device)
    n, h = hidden.shape
    vocab = weight.shape[0]
    dev = hidden.device
    f32 = torch.float32
    logp = _empty(n, dev, f32, cfg.poison)
    entropy = _empty(n if opts.return_entropy else 0, dev, f32, cfg.poison)
    lse = _empty(n, dev, f32, cfg.poison)
    target_scale = _empty(n if accumulate_softmax_w else 0, dev, f32, cfg.poison)
    log_sum_sq = _empty(n if opts.return_log_sum_sq_probs else 0, dev, f32, cfg.poison)
    mean_logits = _empty(n if opts.return_mean_logits else 0, dev, f32, cfg.poison)
    # is_top1: the kernel writes 0 / 1 bytes, returned as a bool view; poisoned with 255, which no write leaves
    is_top1 = _empty(n if opts.return_is_top1 else 0, dev, torch.uint8, cfg.poison)
    row_max = _empty(n if row_argmax else 0, dev, f32, cfg.poison)
    argmax = _empty(n if row_argmax else 0, dev, torch.int32, cfg.poison)
    extras = (log_sum_sq, mean_logits, is_top1.view(torch.bool), row_max, argmax)
    if n == 0:
        return logp, entropy, lse, torch.empty((0, h) if accumulate_softmax_w else 0, device=dev), target_scale, *extras

    resolver = launch_config.current()
    shape = _launch_shape(hidden, weight, compute_dtype)
    combine = resolver.resolve("combine", shape.pop("precision"), **shape)
    row_blocks = triton.cdiv(n, cfg.block_n)
    splits = configs.num_splits(cfg, n, h, vocab, resolver.num_sms(dev), accumulate_softmax_w)
    v_per_split = triton.cdiv(triton.cdiv(vocab, splits), cfg.block_v) * cfg.block_v
    splits = triton.cdiv(vocab, v_per_split)  # every split non-empty
    part = _empty((3 + opts.return_log_sum_sq_probs + opts.return_mean_logits, splits, n), dev, f32, cfg.poison)
    part_q = part[3] if opts.return_log_sum_sq_probs else part[0]  # m, s, t, then q and sum z when asked
    part_sz = part[-1] if opts.return_mean_logits else part[0]
    part_arg = _empty((splits, n) if track_arg else 1, dev, torch.int32, cfg.poison)
    part_acc = _empty((splits, n, h) if accumulate_softmax_w else 1, dev, f32, cfg.poison)
    if not accumulate_softmax_w:
        softmax_w = torch.empty(0, device=dev, dtype=f32)
    elif splits == 1:
        softmax_w = part_acc[0]  # the combine rescales it in place
    else:
        softmax_w = _empty((n, h), dev, f32, cfg.poison)

    b_arg = bias if bias is not None else hidden  # any valid pointer; unread without HAS_BIAS
    # Shared keyword arguments of both launches: sizes, strides, the logit transform (options flattened there).
    common = dict(
        x_ptr=hidden, w_ptr=weight, b_ptr=b_arg, N=n, H=h, V=vocab,
        stride_xn=hidden.stride(0), stride_xh=hidden.stride(1), stride_wv=weight.stride(0), stride_wh=weight.stride(1),
        **transform_args(opts), HAS_BIAS=bias is not None, HAS_SOFTMAX_W=accumulate_softmax_w,
        HAS_ENTROPY=opts.return_entropy, DOT_DTYPE=_dot_dtype(compute_dtype),
        part_q_ptr=part_q, part_sz_ptr=part_sz, part_arg_ptr=part_arg, HAS_LOG_SUM_SQ=opts.return_log_sum_sq_probs,
        HAS_MEAN_LOGITS=opts.return_mean_logits, HAS_IS_TOP1=track_arg,
    )  # fmt: skip
    x_desc, w_desc = _descriptors(cfg, hidden, weight, compute_dtype)
    linear_logprobs_fwd_kernel[(row_blocks * splits,)](
        x_desc=x_desc, w_desc=w_desc, part_m_ptr=part[0], part_s_ptr=part[1], part_t_ptr=part[2],
        part_acc_ptr=part_acc, v_per_split=v_per_split, **common,
        USE_TMA=x_desc is not None, DOT_PRECISION=_dot_precision(compute_dtype, dev),
        BLOCK_N=cfg.block_n, BLOCK_V=cfg.block_v, BLOCK_K=cfg.block_k, GROUP_N=cfg.group_n,
        num_warps=cfg.num_warps, num_stages=cfg.num_stages, enable_fp_fusion=cfg.enable_fp_fusion,
        **cfg.amd_options(),
    )  # fmt: skip
    combine_splits_kernel[(triton.cdiv(n, combine.block_n),)](
        part_m_ptr=part[0], part_s_ptr=part[1], part_t_ptr=part[2], part_acc_ptr=part_acc, tgt_ptr=targets,
        logp_ptr=logp, entropy_ptr=entropy if opts.return_entropy else logp, lse_ptr=lse,
        softmax_w_ptr=softmax_w if accumulate_softmax_w else logp,
        target_scale_ptr=target_scale if accumulate_softmax_w else logp,
        log_sum_sq_ptr=log_sum_sq if opts.return_log_sum_sq_probs else logp,
        mean_logits_ptr=mean_logits if opts.return_mean_logits else logp,
        is_top1_ptr=is_top1 if opts.return_is_top1 else logp,
        row_max_ptr=row_max if row_argmax else logp, argmax_ptr=argmax if row_argmax else logp,
        SPLITS=splits, ignore_index=opts.ignore_index, **{**common, "HAS_IS_TOP1": opts.return_is_top1},
        HAS_ROW_ARGMAX=row_argmax,
        BLOCK_N=combine.block_n, BLOCK_K=combine.block_k, num_warps=combine.num_warps,
        enable_fp_fusion=combine.enable_fp_fusion, **combine.amd_options(),
    )  # fmt: skip
    return logp, entropy, lse, softmax_w, target_scale, *extras


def backward(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    targets: torch.Tensor,
    lse: torch.Tensor,
    entropy: torch.Tensor,
    g_l: torch.Tensor | None,  # [N] fp32, 0 at ignored rows
    g_h: torch.Tensor | None,  # [N] fp32, 0 at ignored rows
    opts: LogProbOptions,
    compute_dtype: torch.dtype,
    needs: tuple[bool, bool, bool],
) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
    """Recompute-path gradients for (hidden, weight, bias), each None when not needed. Never allocates [N, V]. The
    frozen-head and no-gradient cases are handled before this (``fastgrpo.backward``)."""
    _check_dtype(compute_dtype)
    out_dtypes = (hidden.dtype, weight.dtype)
    hidden, weight = _interpreter_operands(compute_dtype, hidden, weight)
    args = (hidden, weight, bias, targets, lse, entropy, g_l, g_h, opts, compute_dtype, needs, out_dtypes)
    with _on_device(hidden.device):
        shape = _launch_shape(hidden, weight, compute_dtype)
        return launch_config.current().launch("bwd", lambda cfg: _backward(cfg, *args), **shape)


def _backward(cfg, hidden, weight, bias, targets, lse, entropy, g_l, g_h, opts, compute_dtype, needs, out_dtypes):
    need_x, need_w, need_b = needs
    n, h = hidden.shape
    vocab = weight.shape[0]
    dev = hidden.device
    # dL/dy workspace in the compute dtype (what the gradient GEMMs read); fp32 under the interpreter, whose bf16
    # stores truncate instead of rounding.
    ws_dtype = torch.float32 if INTERPRET else compute_dtype
    elt = torch.finfo(ws_dtype).bits // 8
    # Chunk width: the [N, width] workspace within workspace_bytes, and so are the per-chunk [width, H] temporaries
    # (an fp32 dW chunk unless dW is fp32 and written in place; a cast copy of the weight chunk), which at small N
    # would otherwise grow to a copy of the whole head.
    per_col = n * elt
    if (need_w and out_dtypes[1] != torch.float32) or (need_x and weight.dtype != ws_dtype):
        per_col = max(per_col, h * 4)
    width = max(cfg.block_v, (cfg.workspace_bytes // max(per_col, 1)) // cfg.block_v * cfg.block_v)
    width = min(width, triton.cdiv(vocab, cfg.block_v) * cfg.block_v)
    ws = _empty((n, width), dev, ws_dtype, cfg.poison)
    row_blocks = triton.cdiv(n, cfg.block_n)
    db_part = _empty((row_blocks, width) if need_b else 1, dev, torch.float32, cfg.poison)
    grad_x = torch.zeros((n, h), device=dev, dtype=torch.float32) if need_x else None
    grad_w = _empty(weight.shape, dev, out_dtypes[1], cfg.poison) if need_w else None
    grad_b = _empty(bias.shape, dev, bias.dtype, cfg.poison) if need_b else None
    x_gemm = hidden.to(ws_dtype) if need_w else None
    x_desc, w_desc = _descriptors(cfg, hidden, weight, compute_dtype)
    for c0 in range(0, vocab, width):
        wd = min(width, vocab - c0)
        linear_logprobs_dlogits_kernel[(row_blocks * triton.cdiv(wd, cfg.block_v),)](
            x_ptr=hidden,
            w_ptr=weight,
            b_ptr=bias if bias is not None else hidden,
            x_desc=x_desc,
            w_desc=w_desc,
            tgt_ptr=targets,
            lse_ptr=lse,
            entropy_ptr=entropy if g_h is not None else lse,
            g_logp_ptr=g_l if g_l is not None else lse,
            g_ent_ptr=g_h if g_h is not None else lse,
            dy_ptr=ws,
            db_part_ptr=db_part,
            N=n,
            H=h,
            c0=c0,
            width=wd,
            stride_xn=hidden.stride(0),
            stride_xh=hidden.stride(1),
            stride_wv=weight.stride(0),
            stride_wh=weight.stride(1),
            stride_dyn=ws.stride(0),
            stride_dbn=db_part.stride(0),
            **transform_args(opts),
            HAS_BIAS=bias is not None,
            HAS_LOGP_GRAD=g_l is not None,
            HAS_ENTROPY_GRAD=g_h is not None,
            HAS_BIAS_GRAD=need_b,
            USE_TMA=x_desc is not None,
            DOT_DTYPE=_dot_dtype(compute_dtype),
            DOT_PRECISION=_dot_precision(compute_dtype, dev),
            BLOCK_N=cfg.block_n,
            BLOCK_V=cfg.block_v,
            BLOCK_K=cfg.block_k,
            GROUP_N=cfg.group_n,
            num_warps=cfg.num_warps,
            num_stages=cfg.num_stages,
            enable_fp_fusion=cfg.enable_fp_fusion,
            **cfg.amd_options(),
        )
        dy = ws[:, :wd]
        if need_x:
            _mm_fp32(dy, weight[c0 : c0 + wd].to(ws_dtype), out=grad_x, accumulate=True)
        if need_w and grad_w.dtype == torch.float32:
            _mm_fp32(dy.T, x_gemm, out=grad_w[c0 : c0 + wd])
        elif need_w:
            grad_w[c0 : c0 + wd] = _mm_fp32(dy.T, x_gemm)
        if need_b:
            grad_b[c0 : c0 + wd] = db_part[:, :wd].sum(0)
    return (None if grad_x is None else grad_x.to(out_dtypes[0])), grad_w, grad_b
