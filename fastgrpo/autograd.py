"""``torch.autograd.Function`` tying the forward and backward custom ops together."""

from __future__ import annotations

import torch

from .ops import logprobs_backward, logprobs_forward
from .options import LogProbOptions


class LinearLogProbsFunction(torch.autograd.Function):
    """(hidden [N, H], weight [V, H], bias [V] | None, targets [N]) -> (logp [N], entropy [N], log_sum_sq_probs [N],
    mean_logits [N], is_top1 [N] bool), each but logp empty unless asked. The last three are non-differentiable."""

    @staticmethod
    def forward(
        ctx,
        hidden,
        weight,
        bias,
        targets,
        opts: LogProbOptions,
        compute_dtype,
        backend: str,
        accumulate_softmax_w: bool,
    ):
        # Entropy is often returned for logging only: keep its incoming gradient None rather than zeros.
        ctx.set_materialize_grads(False)
        logp, entropy, lse, softmax_w, target_scale, log_sum_sq, mean_logits, is_top1, _, _ = logprobs_forward(
            hidden, weight, bias, targets, opts, accumulate_softmax_w, compute_dtype, backend
        )
        ctx.save_for_backward(hidden, weight, bias, targets, lse, entropy, softmax_w, target_scale)
        ctx.opts, ctx.compute_dtype, ctx.backend = opts, compute_dtype, backend
        ctx.mark_non_differentiable(targets, log_sum_sq, mean_logits, is_top1)
        return logp, entropy, log_sum_sq, mean_logits, is_top1

    @staticmethod
    def backward(ctx, grad_logp, grad_entropy, *_non_differentiable):
        hidden, weight, bias, targets, lse, entropy, softmax_w, target_scale = ctx.saved_tensors
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        if not (need_x or need_w or need_b) or (grad_logp is None and grad_entropy is None):
            return None, None, None, None, None, None, None, None
        if entropy.numel() == 0:
            grad_entropy = None
        gx, gw, gb = logprobs_backward(
            hidden,
            weight,
            bias,
            targets,
            lse,
            entropy,
            softmax_w,
            target_scale,
            None if grad_logp is None else grad_logp.contiguous(),
            None if grad_entropy is None else grad_entropy.contiguous(),
            ctx.opts,
            ctx.compute_dtype,
            ctx.backend,
            (need_x, need_w, need_b and bias is not None),
        )
        return (
            gx if need_x else None,
            gw if need_w else None,
            gb if need_b and bias is not None else None,
            None,
            None,
            None,
            None,
            None,
        )
