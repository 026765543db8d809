"""The backward's shared front: mask the upstream gradients, then either the frozen-head identity, zeros, or the
chosen backend's recompute path. One place for what both backends would otherwise repeat."""

from __future__ import annotations

import logging

import torch

from ._log import log_once
from .options import LogProbOptions
from .torch_backend import acc_dtype, check_weight_in_backward


def linear_logprobs_backward(
    backend,  # module with backward(hidden, weight, bias, targets, lse, entropy, g_l, g_h, opts, dtype, needs)
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
    check_weight_in_backward(hidden, weight)  # before any path, the Triton backend's included
    need_x, need_w, need_b = needs[0], needs[1], needs[2] and bias is not None
    acc = acc_dtype(compute_dtype)
    valid = (targets != opts.ignore_index).to(acc)
    g_l = None if grad_logp is None else grad_logp.to(acc) * valid
    g_h = None if grad_entropy is None else grad_entropy.to(acc) * valid
    if uses_softmax_w(softmax_w, g_h, need_w, need_b):
        return softmax_w_backward(hidden, weight, targets, softmax_w, target_scale, g_l, opts, compute_dtype, need_x)
    note_recompute(softmax_w)
    if (g_l is None and g_h is None) or hidden.shape[0] == 0:
        return zero_grads(hidden, weight, bias, need_x, need_w, need_b)
    return backend.backward(
        hidden, weight, bias, targets, lse, entropy, g_l, g_h, opts, compute_dtype, (need_x, need_w, need_b)
    )


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
    """Frozen head: d logp_t / dx = a_t * W_t - sum_v p_v a_v W_v (a = dz/dy), with no recompute: the forward
    accumulated the vocabulary sum ``softmax_w`` in its online-softmax pass, since it does not depend on ``g_l``."""
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
