"""Runs the installed trl's own ``GRPOTrainer._compute_loss`` on given per-token tensors (no model, no trainer init).

``trl_loss`` builds a minimal stand-in ``self`` holding exactly the attributes ``_compute_loss`` reads, whose
``_get_per_token_logps_and_entropies`` returns the caller's tensors, and an identity accelerator (one process: its
``reduce``/``gather`` return their input, so the logged metrics are this rank's sums over counts).
"""

from __future__ import annotations

import functools
import types
from collections import defaultdict
from dataclasses import dataclass

import torch
from trl import GRPOTrainer


class _IdentityAccelerator:
    def __init__(self, num_processes: int):
        self.num_processes = num_processes
        self.sync_gradients = True

    def reduce(self, tensor, reduction="sum"):
        return tensor

    def gather(self, tensor):
        return tensor

    gather_for_metrics = gather

    def pad_across_processes(self, tensor, dim=0, pad_index=0):
        return tensor


@dataclass
class TrlResult:
    loss: torch.Tensor
    grad_logps: torch.Tensor
    grad_entropies: torch.Tensor | None
    metrics: dict[str, float]
    # The loss' error is measured against max(|loss|, |policy part|): with an entropy bonus the loss is a difference,
    # policy term - coef * entropy term, that can cancel (fp32 rounding of the parts then dominates its relative error).
    loss_scale: float = 0.0


def make_stand_in(opts, *, use_vllm: bool, top_entropy_quantile: float = 1.0):
    """A ``self`` for ``GRPOTrainer._compute_loss`` configured from a ``GRPOLossOptions``."""
    spg = opts.gradient_accumulation_steps if opts.steps_per_generation is None else opts.steps_per_generation
    args = types.SimpleNamespace(
        use_bias_correction_kl=opts.use_bias_correction_kl,
        delta=opts.delta,
        sapo_temperature_pos=opts.sapo_temperature_pos,
        sapo_temperature_neg=opts.sapo_temperature_neg,
        vespo_k_pos=opts.vespo_k_pos,
        vespo_lambda_pos=opts.vespo_lambda_pos,
        vespo_k_neg=opts.vespo_k_neg,
        vespo_lambda_neg=opts.vespo_lambda_neg,
        steps_per_generation=spg,
        entropy_target=0.2,
    )
    ns = types.SimpleNamespace(
        args=args,
        aux_loss_enabled=False,
        top_entropy_quantile=top_entropy_quantile,
        off_policy_mask_threshold=opts.off_policy_mask_threshold,
        importance_sampling_level=opts.importance_sampling_level,
        beta=opts.beta,
        loss_type=opts.loss_type,
        epsilon_low=opts.epsilon,
        epsilon_high=opts.epsilon if opts.epsilon_high is None else opts.epsilon_high,
        use_vllm=use_vllm,
        vllm_importance_sampling_correction=use_vllm,
        model=types.SimpleNamespace(training=True),
        current_gradient_accumulation_steps=opts.gradient_accumulation_steps,
        accelerator=_IdentityAccelerator(opts.num_processes),
        _entropy_bonus_enabled=opts.entropy_coef != 0.0,
        use_adaptive_entropy=False,
        entropy_coef=opts.entropy_coef,
        max_completion_length=opts.max_completion_length,
        _metrics={"train": defaultdict(list), "eval": defaultdict(list)},
        get_off_policy_mask=GRPOTrainer.get_off_policy_mask,
        get_gamma_weights=GRPOTrainer.get_gamma_weights,
    )
    ns.get_high_entropy_mask = functools.partial(GRPOTrainer.get_high_entropy_mask, ns)
    return ns


def trl_entropy_mask(entropies, mask, top_entropy_quantile: float) -> torch.Tensor:
    """trl's own high-entropy mask (one process)."""
    ns = types.SimpleNamespace(accelerator=_IdentityAccelerator(1))
    return GRPOTrainer.get_high_entropy_mask(ns, entropies, mask, 1 - top_entropy_quantile)


def run_trl_compute_loss(
    opts, logps, entropies, advantages, completion_mask, tensors, num_items_in_batch, top_entropy_quantile, dtype
):
    """``GRPOTrainer._compute_loss`` with ``_get_per_token_logps_and_entropies`` returning ``(logps, entropies)``
    (which may carry an autograd graph); returns ``(loss, stand_in)``, the logged metrics in ``stand_in._metrics``."""
    bsz = logps.shape[0]
    inputs = {
        "prompt_ids": torch.zeros(bsz, 1, dtype=torch.long),
        "prompt_mask": torch.ones(bsz, 1, dtype=torch.long),
        "completion_ids": torch.zeros_like(completion_mask, dtype=torch.long),
        "completion_mask": completion_mask,
        "advantages": advantages,
    }
    inputs.update({k: t for k, t in tensors.items() if t is not None})
    if num_items_in_batch is not None:
        inputs["num_items_in_batch"] = torch.as_tensor(num_items_in_batch, dtype=dtype)
    use_vllm = inputs.get("importance_sampling_ratio") is not None
    ns = make_stand_in(opts, use_vllm=use_vllm, top_entropy_quantile=top_entropy_quantile)
    ns._get_per_token_logps_and_entropies = lambda *args, **kwargs: (logps, entropies, None)
    return GRPOTrainer._compute_loss(ns, None, inputs), ns


def trl_loss(
    opts,
    per_token_logps,
    advantages,
    completion_mask,
    *,
    entropies,
    old_per_token_logps=None,
    ref_per_token_logps=None,
    importance_sampling_ratio=None,
    sampling_per_token_logps=None,
    num_items_in_batch=None,
    top_entropy_quantile: float = 1.0,
    dtype=torch.float64,
) -> TrlResult:
    """trl's loss, d loss / d per_token_logps and / d entropies, and its logged metrics, computed in ``dtype``."""
    cast = lambda t: None if t is None else t.detach().to(dtype) if t.is_floating_point() else t
    logps = cast(per_token_logps).requires_grad_(True)
    ents = cast(entropies).requires_grad_(True)
    tensors = dict(
        old_per_token_logps=old_per_token_logps,
        ref_per_token_logps=ref_per_token_logps,
        importance_sampling_ratio=importance_sampling_ratio,
        sampling_per_token_logps=sampling_per_token_logps,
    )
    loss, ns = run_trl_compute_loss(
        opts,
        logps,
        ents,
        cast(advantages),
        completion_mask,
        {k: cast(t) for k, t in tensors.items()},
        num_items_in_batch,
        top_entropy_quantile,
        dtype,
    )
    grad_logps, grad_ents = torch.autograd.grad(loss, [logps, ents], allow_unused=True)
    metrics = {name: values[-1] for name, values in ns._metrics["train"].items()}
    scale = abs(loss.item())
    if "policy_loss" in metrics:  # logged with the entropy bonus: the policy part of the loss, before / gas
        per_step = opts.gradient_accumulation_steps if opts.entry.normaliser.per_micro_batch else 1
        scale = max(scale, abs(metrics["policy_loss"]) / per_step)
    return TrlResult(loss.detach(), grad_logps, grad_ents, metrics, scale)


def rel_err(actual, expected) -> float:
    """max |actual - expected| / max |expected| (absolute when the reference is all zero); NaN must match NaN."""
    actual = torch.as_tensor(actual).detach().double()
    expected = torch.as_tensor(expected).detach().double()
    nan_a, nan_e = torch.isnan(actual), torch.isnan(expected)
    if not torch.equal(nan_a, nan_e) or torch.isinf(actual).any():
        return float("inf")
    actual, expected = actual[~nan_e], expected[~nan_e]
    if actual.numel() == 0:
        return 0.0
    num = (actual - expected).abs().max().item()
    denom = expected.abs().max().item()
    return num / denom if denom > 0 else num


def compare_with_trl(out, grad_logps, grad_entropies, ref: TrlResult) -> dict[str, float]:
    """Relative error of every quantity trl produces: loss, both gradients, every logged metric."""
    loss_err = (out.loss.double() - ref.loss.double()).abs().item()
    errs = {
        "loss": loss_err / ref.loss_scale if ref.loss_scale > 0 else loss_err,
        "grad_logps": rel_err(grad_logps, ref.grad_logps),
    }
    if ref.grad_entropies is not None:
        errs["grad_entropies"] = rel_err(grad_entropies, ref.grad_entropies)
    elif grad_entropies is not None:
        errs["grad_entropies"] = rel_err(grad_entropies, torch.zeros_like(grad_entropies))
    for name, value in ref.metrics.items():
        if name == "entropy_coef":  # the coefficient itself, an input
            continue
        if name == "policy_loss":
            ours = out.policy_loss
        elif name == "clip_ratio/low_min":
            ours = _nan_extreme(out.clip_ratio_low_per_seq, torch.min)
        elif name == "clip_ratio/high_max":
            ours = _nan_extreme(out.clip_ratio_high_per_seq, torch.max)
        else:
            assert name in out.metrics, f"metric {name!r} missing from GRPOLossOutput.metrics"
            ours = out.local_mean(name)
        errs[name] = rel_err(ours, torch.tensor(value))
    extra = set(out.metrics) - set(ref.metrics)
    assert not extra, f"metrics trl does not log: {extra}"
    return errs


def _nan_extreme(x, reduce):
    x = x[~torch.isnan(x)]
    return reduce(x) if x.numel() else torch.tensor(float("nan"))
