"""The GRPO loss for FastGRPOTrainer: fastgrpo's ``grpo_loss`` where it covers the configuration, else trl's math.

``compute_fused_loss`` is trl's ``_compute_loss`` (unchanged from 1.10 to 1.16) with the loss math replaced by one
:func:`fastgrpo.grpo_loss` call; the log-probs come from the trainer's ``_get_per_token_logps_and_entropies``
(fastgrpo's fused head), and the trainer-side bookkeeping trl does around the math (entropy-bonus controller, metric
reduction across ranks, the ``policy_loss`` / ``entropy_coef`` logs) is reproduced step for step, including every
collective, so ranks stay in lockstep.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch

from fastgrpo import env

LOSS_PATHS = ("auto", "trl")
LOSS_ENV = "FASTGRPO_LOSS"

# trl methods whose override by a subclass changes the objective the fused loss would compute.
_LOSS_HOOKS = ("_compute_loss", "get_high_entropy_mask", "get_off_policy_mask", "get_gamma_weights")
# What compute_fused_loss reads from a constructed trl trainer and its args (`current_gradient_accumulation_steps` is
# transformers' and set by train()): a trl without one of them takes trl's own loss.
TRAINER_ATTRIBUTES = (
    "_entropy_bonus_enabled",
    "_entropy_window_stats",
    "_get_per_token_logps_and_entropies",
    "_last_world_entropy",
    "_metrics",
    "accelerator",
    "args",
    "aux_loss_enabled",
    "beta",
    "entropy_coef",
    "epsilon_high",
    "epsilon_low",
    "get_high_entropy_mask",
    "importance_sampling_level",
    "loss_type",
    "max_completion_length",
    "model",
    "off_policy_mask_threshold",
    "ref_model",
    "router_aux_loss_coef",
    "temperature",
    "top_entropy_quantile",
    "use_adaptive_entropy",
    "use_vllm",
    "vllm_importance_sampling_correction",
)
ARGS_ATTRIBUTES = (
    "cast_lm_head_to_fp32",
    "delta",
    "entropy_coef_delta",
    "entropy_coef_max",
    "entropy_coef_min",
    "entropy_target",
    "sapo_temperature_neg",
    "sapo_temperature_pos",
    "steps_per_generation",
    "use_bias_correction_kl",
    "vespo_k_neg",
    "vespo_k_pos",
    "vespo_lambda_neg",
    "vespo_lambda_pos",
)


def missing_attributes(trainer: Any) -> list[str]:
    """The names in TRAINER_ATTRIBUTES / ARGS_ATTRIBUTES (as ``args.<name>``) that ``trainer`` lacks."""
    missing = [name for name in TRAINER_ATTRIBUTES if not hasattr(trainer, name)]
    args = getattr(trainer, "args", None)
    return missing + [f"args.{name}" for name in ARGS_ATTRIBUTES if not hasattr(args, name)]


def fused_loss_available() -> bool:
    try:
        from fastgrpo.grpo import LOSS_TYPES, grpo_loss  # noqa: F401
    except ImportError:
        return False
    return True


def resolve_loss_path(choice: str | None) -> str:
    source = "fastgrpo_loss"
    if choice is None:
        choice = env.get(LOSS_ENV) or "auto"
        source = f"${LOSS_ENV}"
    if choice not in LOSS_PATHS:
        raise ValueError(f"{source} must be one of {LOSS_PATHS}, got {choice!r}")
    return choice


def fallback_reasons(trainer: Any, trl_class: type, loss_path: str = "auto") -> list[str]:
    """Features of this trainer that fastgrpo's fused loss does not cover (empty: the fused loss is used)."""
    reasons: list[str] = []
    if loss_path == "trl":
        reasons.append("fastgrpo_loss='trl' was requested (argument or $FASTGRPO_LOSS)")
    if not fused_loss_available():
        reasons.append("fastgrpo.grpo (the fused GRPO loss) is not importable in this installation")
        return reasons
    from fastgrpo.grpo import LOSS_TYPES

    loss_type = getattr(trainer, "loss_type", None)
    if loss_type not in LOSS_TYPES:
        reasons.append(f"loss_type={loss_type!r} (the fused loss knows {LOSS_TYPES})")
    overridden = [
        name
        for name in _LOSS_HOOKS
        if inspect.getattr_static(type(trainer), name, None) is not inspect.getattr_static(trl_class, name, None)
    ]
    if overridden:
        reasons.append(f"{type(trainer).__name__} overrides {', '.join(overridden)}")
    if getattr(trainer, "_is_vlm", False):
        reasons.append("a vision-language model (processing_class is a processor; its inputs take trl's path)")
    return reasons


def compute_fused_loss(trainer: Any, model: Any, inputs: dict[str, Any]) -> torch.Tensor | None:
    """trl's ``_compute_loss`` with the loss from :func:`fastgrpo.grpo_loss`; None when this batch needs trl's path."""
    from fastgrpo.grpo import grpo_loss

    advantages = inputs["advantages"]
    if advantages.dim() == 2 and advantages.size(1) != 1:
        return None  # per-token advantages from a subclass: trl's math handles them
    if advantages.dim() == 1:
        advantages = advantages.unsqueeze(1)
    prompt_ids, prompt_mask = inputs["prompt_ids"], inputs["prompt_mask"]
    completion_ids, completion_mask = inputs["completion_ids"], inputs["completion_mask"]
    input_ids = torch.cat([prompt_ids, completion_ids], dim=1)
    attention_mask = torch.cat([prompt_mask, completion_mask], dim=1)
    logits_to_keep = completion_ids.size(1)
    mask = completion_mask if "tool_mask" not in inputs else completion_mask * inputs["tool_mask"]

    aux_enabled = bool(getattr(trainer, "aux_loss_enabled", False))
    per_token_logps, entropies, aux_loss = trainer._get_per_token_logps_and_entropies(
        model, input_ids, attention_mask, logits_to_keep, compute_entropy=True, compute_aux_loss=aux_enabled
    )
    entropy_mask = None
    if trainer.top_entropy_quantile < 1.0:
        # A collective across ranks (global quantile); trl's own method, as in trl's loss.
        entropy_mask = trainer.get_high_entropy_mask(entropies, mask, 1 - trainer.top_entropy_quantile)

    args = trainer.args
    mode = "train" if trainer.model.training else "eval"
    train = mode == "train"
    if trainer._entropy_bonus_enabled:
        if trainer.use_adaptive_entropy:
            coef = trainer.entropy_coef if trainer._last_world_entropy <= args.entropy_target else 0.0
        else:
            coef = trainer.entropy_coef
    else:
        coef = 0.0
    use_is_ratio = trainer.use_vllm and trainer.vllm_importance_sampling_correction
    if trainer.loss_type == "vespo":
        is_ratio = inputs.get("importance_sampling_ratio")
    else:
        is_ratio = inputs["importance_sampling_ratio"] if use_is_ratio else None
    from fastgrpo.grpo.registry import NUM_ITEMS_LOSSES

    num_items = inputs.get("num_items_in_batch") if trainer.loss_type in NUM_ITEMS_LOSSES else None
    old = inputs.get("old_per_token_logps")
    out = grpo_loss(
        per_token_logps,
        advantages,
        mask,
        old_per_token_logps=old,
        ref_per_token_logps=inputs["ref_per_token_logps"] if trainer.beta != 0.0 else None,
        importance_sampling_ratio=is_ratio,
        sampling_per_token_logps=inputs.get("sampling_per_token_logps", old),
        num_items_in_batch=num_items,
        entropies=entropies,
        entropy_mask=entropy_mask,
        backend=trainer._fastgrpo_backend,
        loss_type=trainer.loss_type,
        importance_sampling_level=trainer.importance_sampling_level,
        beta=float(trainer.beta),
        epsilon=float(trainer.epsilon_low),
        epsilon_high=float(trainer.epsilon_high),
        delta=args.delta,
        use_bias_correction_kl=bool(args.use_bias_correction_kl),
        max_completion_length=None if trainer.max_completion_length is None else int(trainer.max_completion_length),
        off_policy_mask_threshold=trainer.off_policy_mask_threshold,
        sapo_temperature_pos=float(args.sapo_temperature_pos),
        sapo_temperature_neg=float(args.sapo_temperature_neg),
        vespo_k_pos=float(args.vespo_k_pos),
        vespo_lambda_pos=float(args.vespo_lambda_pos),
        vespo_k_neg=float(args.vespo_k_neg),
        vespo_lambda_neg=float(args.vespo_lambda_neg),
        entropy_coef=float(coef),
        gradient_accumulation_steps=int(trainer.current_gradient_accumulation_steps) if train else 1,
        steps_per_generation=int(args.steps_per_generation) if train else 1,
        num_processes=int(trainer.accelerator.num_processes),
    )
    loss = out.loss
    metrics = trainer._metrics[mode]
    accelerator = trainer.accelerator
    if trainer._entropy_bonus_enabled:
        _entropy_controller(trainer, mode, out.policy_loss, entropies, mask, entropy_mask)
    if aux_enabled:
        # MoE load-balancing loss, scaled for gradient accumulation like the policy loss (as trl does).
        loss = loss + trainer.router_aux_loss_coef * aux_loss / (
            trainer.current_gradient_accumulation_steps if train else 1.0
        )
        metrics["aux_loss"].append(accelerator.gather_for_metrics(aux_loss).mean().item())

    def reduce_mean(pair: torch.Tensor) -> float:
        totals = accelerator.reduce(pair, reduction="sum")
        return (totals[0] / totals[1].clamp(min=1.0)).item()

    for name in ("kl", "entropy"):
        if name in out.metrics:
            metrics[name].append(reduce_mean(out.metrics[name]))
    if "clip_ratio/low_mean" in out.metrics:
        from trl.trainer.utils import nanmax, nanmin

        for name in ("clip_ratio/low_mean", "clip_ratio/high_mean", "clip_ratio/region_mean"):
            metrics[name].append(reduce_mean(out.metrics[name]))
        metrics["clip_ratio/low_min"].append(nanmin(accelerator.gather(out.clip_ratio_low_per_seq)).item())
        metrics["clip_ratio/high_max"].append(nanmax(accelerator.gather(out.clip_ratio_high_per_seq)).item())
    for name in ("cispo_clip_ratio", "vespo/phi_seq_mean"):
        if name in out.metrics:
            metrics[name].append(reduce_mean(out.metrics[name]))
    return loss


def _entropy_controller(
    trainer: Any,
    mode: str,
    policy_loss: torch.Tensor,
    entropies: torch.Tensor,
    mask: torch.Tensor,
    entropy_mask: torch.Tensor | None,
) -> None:
    """trl's bookkeeping for the entropy bonus: policy_loss log, adaptive coefficient update, entropy_coef log."""
    args = trainer.args
    metrics = trainer._metrics[mode]
    metrics["policy_loss"].append(trainer.accelerator.gather(policy_loss).nanmean().item())
    if trainer.use_adaptive_entropy and mode == "train":
        effective_mask = mask if entropy_mask is None else mask * entropy_mask
        stats = torch.stack([(entropies * effective_mask).sum(), effective_mask.sum()]).detach()
        window = trainer._entropy_window_stats
        trainer._entropy_window_stats = stats if window is None else window + stats
        if trainer.accelerator.sync_gradients:
            totals = trainer.accelerator.reduce(trainer._entropy_window_stats, reduction="sum")
            world_entropy = (totals[0] / totals[1].clamp(min=1.0)).item()
            if world_entropy <= args.entropy_target:
                trainer.entropy_coef = min(trainer.entropy_coef + args.entropy_coef_delta, args.entropy_coef_max)
            else:
                trainer.entropy_coef = max(trainer.entropy_coef - args.entropy_coef_delta, args.entropy_coef_min)
            trainer._last_world_entropy = world_entropy
            trainer._entropy_window_stats = None
    if mode == "train" and trainer.accelerator.sync_gradients:
        metrics["entropy_coef"].append(trainer.entropy_coef)
