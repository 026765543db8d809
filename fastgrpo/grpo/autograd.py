"""``torch.autograd.Function`` of the GRPO loss: the backends compute per-token gradients in the forward pass."""

from __future__ import annotations

import torch

from .finalize import finalize_loss
from .options import GRPOLossOptions
from .tensors import GRPOTensors
from .torch_math import grpo_rows_torch


def grpo_rows(x: GRPOTensors, opts: GRPOLossOptions, compute_grad: bool, backend: str):
    """Dispatch to the Triton launcher or the torch math; both return ``(stats, grad_logp, grad_entropies)``."""
    if backend == "triton":
        from .launch import grpo_rows_triton

        return grpo_rows_triton(x, opts, compute_grad)
    return grpo_rows_torch(x, opts, compute_grad)


class GRPOLossFunction(torch.autograd.Function):
    """(per_token_logps [B, T], entropies [B, T] | None, other tensors) -> (loss, policy_loss, row_stats).

    The loss is a sum of per-token terms weighted per row, so its gradient is ``grad_loss * row_weight[b] *
    g[b, t]`` with ``g = d row_loss[b] / d logps[b, t]`` computed by the forward kernel; backward only rescales.
    """

    @staticmethod
    def forward(
        ctx, per_token_logps, entropies, x: GRPOTensors, opts: GRPOLossOptions, backend: str, compute_grad: bool
    ):
        stats, grad_logp, grad_ent = grpo_rows(x, opts, compute_grad, backend)
        fin = finalize_loss(stats, opts, x.num_items_in_batch)
        ctx.logp_dtype = per_token_logps.dtype
        ctx.ent_dtype = None if entropies is None else entropies.dtype
        ctx.save_for_backward(grad_logp, grad_ent, fin.row_weight, fin.entropy_weight)
        ctx.mark_non_differentiable(fin.policy_loss, stats)
        return fin.loss, fin.policy_loss, stats

    @staticmethod
    def backward(ctx, grad_loss, _grad_policy, _grad_stats):
        grad_logp, grad_ent, row_weight, entropy_weight = ctx.saved_tensors
        out_logp = out_ent = None
        if ctx.needs_input_grad[0]:
            if grad_logp is None:
                raise RuntimeError("grpo_loss: gradients were not computed in forward (called under no_grad?)")
            out_logp = (grad_logp * (grad_loss * row_weight)[:, None]).to(ctx.logp_dtype)
        if ctx.needs_input_grad[1]:
            # Without an entropy bonus the entropies only feed metrics: they do not move the loss.
            out_ent = None if grad_ent is None else (grad_ent * (grad_loss * entropy_weight)).to(ctx.ent_dtype)
        return out_logp, out_ent, None, None, None, None
