"""``fused_linear_grpo_loss``: hidden states -> fused lm_head log-probs -> GRPO loss, never materializing logits."""

from __future__ import annotations

from typing import Any

import torch

from ..api import Backend, linear_logprobs
from ..options import LogProbOptions
from .api import grpo_loss, make_options
from .checks import check_grpo_inputs
from .output import GRPOLossOutput

_TENSOR_ARGS = (
    "old_per_token_logps",
    "ref_per_token_logps",
    "importance_sampling_ratio",
    "sampling_per_token_logps",
    "num_items_in_batch",
    "entropy_mask",
)


def fused_linear_grpo_loss(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    completion_ids: torch.Tensor,
    completion_mask: torch.Tensor,
    advantages: torch.Tensor,
    *,
    bias: torch.Tensor | None = None,
    temperature: float = 1.0,
    logit_scale: float = 1.0,
    softcap: float | None = None,
    compute_entropy: bool = True,
    backend: Backend = "auto",
    **grpo_loss_options: Any,
) -> GRPOLossOutput:
    """GRPO loss of trl's ``GRPOTrainer`` straight from the policy's hidden states at the completion positions.

    Equivalent to (without ever forming the ``[B, T, V]`` logits)::

        out = linear_logprobs(hidden, weight, completion_ids, bias=bias, temperature=temperature,
                              logit_scale=logit_scale, softcap=softcap, return_entropy=True)
        return grpo_loss(out.logp, advantages, completion_mask, entropies=out.entropy, **grpo_loss_options)

    Only the tokens where ``completion_mask != 0`` go through the lm_head (gathered into one ``[n, H]`` block, their
    log-probs scattered back into ``[B, T]``; masked positions hold 0 and carry no weight in any loss type), so padding
    costs no matmul work; the loss then sees whole rows, as the per-row sums of sequence-level ratios, vespo, the
    off-policy mask and grpo's per-row mean require.

    Args:
        hidden: ``[B, T, H]``: the hidden state that predicts completion token ``t`` at position ``t``.
        weight, bias: lm_head ``[V, H]`` and ``[V]`` (or None); gradients flow into hidden, weight and bias.
        completion_ids: ``[B, T]`` integer token ids (any value where the mask is 0).
        completion_mask: ``[B, T]`` (bool, integer or float; ``completion_mask * tool_mask`` with a tool mask).
        advantages: ``[B]`` or ``[B, 1]``.
        compute_entropy: also compute per-token entropies (trl's ``entropy`` metric; always on when
            ``entropy_coef != 0``, where the bonus back-propagates through them).
        grpo_loss_options: the keyword arguments of :func:`fastgrpo.grpo_loss` other than ``entropies``: option
            names of :class:`GRPOLossOptions` (or ``options=``) and the tensors ``old_per_token_logps``,
            ``ref_per_token_logps``, ``importance_sampling_ratio``, ``sampling_per_token_logps``,
            ``num_items_in_batch``, ``entropy_mask``.
    """
    if "entropies" in grpo_loss_options:
        raise TypeError("fused_linear_grpo_loss computes the entropies itself: do not pass entropies")
    tensors = {k: grpo_loss_options.pop(k) for k in _TENSOR_ARGS if k in grpo_loss_options}
    opts = make_options(grpo_loss_options.pop("options", None), grpo_loss_options)
    if not isinstance(hidden, torch.Tensor) or hidden.dim() != 3:
        shape = tuple(hidden.shape) if isinstance(hidden, torch.Tensor) else type(hidden).__name__
        raise ValueError(f"hidden must be a [B, T, H] tensor, got {shape}")
    bsz, seqlen, h = hidden.shape
    if not isinstance(completion_ids, torch.Tensor) or tuple(completion_ids.shape) != (bsz, seqlen):
        shape = tuple(completion_ids.shape) if isinstance(completion_ids, torch.Tensor) else None
        raise ValueError(f"completion_ids must have shape [B, T] = {(bsz, seqlen)} (hidden's [B, T]), got {shape}")
    # Validate the loss inputs up front, before the lm_head kernels run (a [B, T] placeholder stands for the logps).
    placeholder = torch.empty(bsz, seqlen, dtype=torch.float32, device=hidden.device)
    check_grpo_inputs(
        opts,
        placeholder,
        advantages,
        completion_mask,
        entropies=placeholder if opts.has_entropy_bonus else None,
        **{k: tensors.get(k) for k in _TENSOR_ARGS},
    )

    # The head's options, as one object from here to the kernels (validated on construction, before any launch).
    logprob_options = LogProbOptions(
        temperature=temperature,
        logit_scale=logit_scale,
        softcap=softcap,
        return_entropy=compute_entropy or opts.has_entropy_bonus,
    )
    index = (completion_mask.reshape(-1) != 0).nonzero().squeeze(1)  # [n] (one host sync: the valid-token count)
    dense = index.numel() == bsz * seqlen  # no padding: skip the gather / scatter copies
    flat_hidden, flat_ids = hidden.reshape(-1, h), completion_ids.reshape(-1)
    res = linear_logprobs(
        flat_hidden if dense else flat_hidden.index_select(0, index),
        weight,
        flat_ids if dense else flat_ids.index_select(0, index),
        bias=bias,
        options=logprob_options,
        backend=backend,
    )

    def scatter(values: torch.Tensor | None) -> torch.Tensor | None:
        """[n] values of the valid tokens -> [B, T], 0 at masked positions (differentiable)."""
        if values is None or dense:
            return None if values is None else values.view(bsz, seqlen)
        zeros = torch.zeros(bsz * seqlen, dtype=values.dtype, device=values.device)
        return zeros.index_copy(0, index, values).view(bsz, seqlen)

    return grpo_loss(
        scatter(res.logp),
        advantages,
        completion_mask,
        entropies=scatter(res.entropy),
        options=opts,
        backend=backend,
        **tensors,
    )
