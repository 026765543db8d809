"""Public function ``grpo_loss``: trl's GRPO loss over per-token log-probs, with fused forward and gradient."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import torch

from ..api import Backend, resolve_backend
from .autograd import GRPOLossFunction
from .checks import check_grpo_inputs
from .finalize import metrics_from_stats
from .options import GRPOLossOptions
from .output import GRPOLossOutput


def make_options(options: GRPOLossOptions | None, option_kwargs: dict[str, Any]) -> GRPOLossOptions:
    """``options`` updated with ``option_kwargs`` (trl's option names); unknown names raise a TypeError."""
    valid = GRPOLossOptions.names()
    unknown = sorted(set(option_kwargs) - set(valid))
    if unknown:
        raise TypeError(f"unknown GRPO loss option(s) {unknown}; valid options: {valid}")
    if options is None:
        return GRPOLossOptions(**option_kwargs)
    if not isinstance(options, GRPOLossOptions):
        raise TypeError(f"options must be a GRPOLossOptions or None, got {type(options).__name__}")
    return replace(options, **option_kwargs) if option_kwargs else options


def grpo_loss(
    per_token_logps: torch.Tensor,
    advantages: torch.Tensor,
    completion_mask: torch.Tensor,
    *,
    old_per_token_logps: torch.Tensor | None = None,
    ref_per_token_logps: torch.Tensor | None = None,
    importance_sampling_ratio: torch.Tensor | None = None,
    sampling_per_token_logps: torch.Tensor | None = None,
    num_items_in_batch: torch.Tensor | int | float | None = None,
    entropies: torch.Tensor | None = None,
    entropy_mask: torch.Tensor | None = None,
    options: GRPOLossOptions | None = None,
    backend: Backend = "auto",
    **option_kwargs: Any,
) -> GRPOLossOutput:
    """trl's ``GRPOTrainer._compute_loss`` on given per-token log-probs: loss, gradients and logged statistics.

    Options are :class:`GRPOLossOptions` fields, as keywords (trl's ``GRPOConfig`` names) or as ``options=``.
    Only ``per_token_logps`` and ``entropies`` receive gradients; every other tensor is a constant. Pass
    ``importance_sampling_ratio`` only when trl would use it (``use_vllm`` with ``vllm_importance_sampling_correction``)
    and ``completion_mask * tool_mask`` as ``completion_mask`` when there is a tool mask.

    Equivalent torch (trl >= 1.10; ``A = advantages[:, None]``, ``m = completion_mask``, ``B`` rows, ``gas`` =
    ``gradient_accumulation_steps``, ``spg`` = ``steps_per_generation``)::

        old = old_per_token_logps if given else per_token_logps.detach()
        log_ratio = per_token_logps - old
        log_w = log_ratio                                                   # importance_sampling_level="token"
        log_w = ((log_ratio * m).sum(-1) / m.sum(-1).clamp(min=1))[:, None]  # "sequence" (GSPO)
        coef_1 = exp(log_w)
        kl = exp(ref - logp) - (ref - logp) - 1;  kl = kl * coef_1 if use_bias_correction_kl   # when beta != 0
        # policy term per loss_type
        grpo/bnpo/dr_grpo/dapo/luspo: coef_2 = clamp(coef_1, 1 - epsilon, 1 + epsilon_high)
                                      coef_1 = clamp(coef_1, max=delta) if delta is not None
                                      ptl = -min(coef_1 * A, coef_2 * A)
        cispo: ptl = -clamp(coef_1, max=epsilon_high).detach() * A * per_token_logps
        sapo:  tau = where(A > 0, sapo_temperature_pos, sapo_temperature_neg)
               ptl = -sigmoid(tau * (coef_1 - 1)) * 4 / tau * A
        vespo: log_w = clamp(sum_t clamp(log_ratio, -20, 20) * m [+ sum_t clamp(log(isr), log(1e-8), 20)],
                             log(1e-8), 20)
               k, lam = (vespo_k_pos, vespo_lambda_pos) if A >= 0 else (vespo_k_neg, vespo_lambda_neg)
               phi = exp(lam + k * log_w - lam * exp(log_w)).nan_to_num(0, 0, 0).detach()
               ptl = -phi * A * per_token_logps
        # off-policy sequence mask (sampling defaults to old); masked_mean(x) = (x * m).sum(-1) / m.sum(-1).clamp(min=1)
        ptl = ptl * ((A >= 0) | (masked_mean(nan_to_num(sampling - logp.detach(), nan=0)) <= off_policy_mask_threshold))
        ptl = ptl * entropy_mask                         # if given
        ptl = ptl * importance_sampling_ratio            # if given, except for vespo (it enters phi instead)
        ptl = ptl + beta * kl
        # normalisation
        grpo/sapo:          policy = ((ptl * m).sum(-1) / m.sum(-1).clamp(min=1)).mean();  loss = policy / gas
        bnpo:               policy = (ptl * m).sum() / m.sum().clamp(min=1);                  loss = policy / gas
        dr_grpo:            policy = (ptl * m).sum() / (B * max_completion_length);          loss = policy / gas
        dapo/cispo/vespo:   loss = policy = (ptl * m).sum()
                                   / (num_items_in_batch.clamp(min=1) / num_processes * gas / spg)
        luspo:              policy = (ptl * m).sum(-1).mean();                                 loss = policy / gas
        e = m * entropy_mask (or m);  loss -= entropy_coef * (entropies * e).sum() / e.sum().clamp(min=1) / gas

    Returns a :class:`GRPOLossOutput` (loss, policy_loss, metrics as ``[local_sum, local_count]``). All math runs in
    fp32 (float64 inputs stay float64 on the torch backend). ``backend``: "triton", "torch" or "auto" (Triton on a
    GPU, or on CPU under ``TRITON_INTERPRET=1``). Deterministic: no atomics, fixed reduction order.
    """
    opts = make_options(options, option_kwargs)
    x = check_grpo_inputs(
        opts,
        per_token_logps,
        advantages,
        completion_mask,
        old_per_token_logps=old_per_token_logps,
        ref_per_token_logps=ref_per_token_logps,
        importance_sampling_ratio=importance_sampling_ratio,
        sampling_per_token_logps=sampling_per_token_logps,
        num_items_in_batch=num_items_in_batch,
        entropies=entropies,
        entropy_mask=entropy_mask,
    )
    impl = resolve_backend(backend, per_token_logps.device)
    ent_grad = entropies is not None and entropies.requires_grad and opts.has_entropy_bonus
    compute_grad = torch.is_grad_enabled() and (per_token_logps.requires_grad or ent_grad)
    loss, policy_loss, stats = GRPOLossFunction.apply(per_token_logps, entropies, x, opts, impl, compute_grad)
    metrics, low, high = metrics_from_stats(stats, opts, entropies is not None)
    return GRPOLossOutput(loss, policy_loss, metrics, low, high)
