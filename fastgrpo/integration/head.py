"""A fused lm_head on a causal LM's forward: ``model(..., labels=..., fused_lm_head=True)`` -> per-token outputs.

This is fastgrpo's counterpart of trl's ``add_fused_lm_head`` (trl >= 1.15), with the same call contract, so every trl
trainer that calls trl's fused head (SFT, DPO, KTO, RLOO, GRPO, async GRPO in 1.15/1.16) and fastgrpo's own GRPO
log-prob method (1.10-1.14) can call it. :func:`add_fused_lm_head` is the public entry point, with trl's signature; the
backbone runs as usual and only the positions whose next-token label is not -100 go through
:func:`fastgrpo.linear_logprobs`, which computes every per-token output asked for (log-probs, entropy, log sum p^2,
mean logit, is-top-1) in the same pass, so no ``[tokens, vocab]`` logits are ever formed. Because the projection runs
inside the model's forward, DDP's gradient hooks, DeepSpeed's parameter hooks and FSDP's pre-forward gathering fire as
they do for the model's own forward.
"""

from __future__ import annotations

import functools
import types
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any

import torch
from transformers.utils import ModelOutput

from ..api import LogProbs, linear_logprobs
from ..options import LogProbOptions

_ATTR = "_fastgrpo_fused_head"
# Per-token outputs of trl's fused head (``trl.kernels.chunked_logprob.OPTIONAL_OUTPUTS`` plus the log-probs, which are
# always computed). The last three carry no gradient.
OPTIONAL_OUTPUTS = ("entropy", "log_sum_sq_probs", "mean_logits", "is_top1")
HEAD_OUTPUTS = ("log_probs", *OPTIONAL_OUTPUTS)


@dataclass
class FusedHeadConfig:
    """How a model's fused head forms its logits, which per-token outputs it returns, and which backend runs it.

    ``outputs``: names from :data:`HEAD_OUTPUTS` (``log_probs`` is always computed, as in trl). ``disabled``: set by
    :func:`uninstall_fused_head` when something wrapped the model's forward after the head was installed, so the head
    cannot be unhooked: every call then goes to the forward the head replaced.
    """

    temperature: float = 1.0
    cast_lm_head_to_fp32: bool = False
    outputs: tuple[str, ...] = ("log_probs",)
    backend: str = "auto"
    softcap: float | None = None
    logit_scale: float = 1.0
    disabled: bool = False

    @property
    def entropy(self) -> bool:
        return "entropy" in self.outputs


def check_outputs(outputs: Any) -> tuple[str, ...]:
    """``outputs`` as a tuple of known per-token output names, or a ValueError naming the unknown ones."""
    if isinstance(outputs, str) or not all(isinstance(name, str) for name in outputs):
        raise TypeError(f"outputs must be a tuple of output names from {HEAD_OUTPUTS}, got {outputs!r}")
    outputs = tuple(outputs)
    unknown = [name for name in outputs if name not in HEAD_OUTPUTS]
    if unknown:
        raise ValueError(f"outputs: unknown per-token output(s) {unknown}; expected names from {HEAD_OUTPUTS}")
    return outputs


@dataclass
class FusedHeadOutput(ModelOutput):
    """The fields of trl's ``FusedCausalLMOutput``, in its order, with its dtypes: ``log_probs``, ``entropy``,
    ``log_sum_sq_probs`` and ``mean_logits`` fp32, ``is_top1`` bool, all 0 (False) where the label is -100 and None
    when not asked for; ``label_mask`` bool; ``loss`` the label-masked mean NLL (or sum / ``num_items_in_batch``).

    A ``ModelOutput`` (a dict) as trl's is, not a plain dataclass: DeepSpeed ZeRO-3 finds the tensors of a module's
    output only in tuples, lists and dicts, and hooks them to gather that module's parameters again before its
    backward. The head weight is gathered for the forward as an external parameter of the causal LM; without those
    hooks the backward would read it partitioned (0 elements).
    """

    loss: torch.Tensor | None = None
    log_probs: torch.Tensor | None = None
    entropy: torch.Tensor | None = None
    log_sum_sq_probs: torch.Tensor | None = None
    mean_logits: torch.Tensor | None = None
    is_top1: torch.Tensor | None = None
    label_mask: torch.Tensor | None = None
    aux_loss: torch.Tensor | None = None


def head_logit_transform(text_config: Any) -> tuple[float | None, float]:
    """(softcap, logit_scale) of a model's logits, read from its (text) config the way trl 1.16 reads them."""
    softcap = getattr(text_config, "final_logit_softcapping", None)
    logit_scale = getattr(text_config, "logit_scale", None)
    if logit_scale is None:
        logit_scale = getattr(text_config, "output_multiplier", None)
    if logit_scale is None:
        logit_scale = getattr(text_config, "lm_head_multiplier", None)
    if logit_scale is None and getattr(text_config, "logits_scaling", None) is not None:
        scaling = text_config.logits_scaling
        logit_scale = scaling if getattr(text_config, "model_type", None) == "hyperclovax" else 1 / scaling
    return (None if softcap is None else float(softcap)), (1.0 if logit_scale is None else float(logit_scale))


def maybe_gather_params(*params: torch.Tensor | None) -> AbstractContextManager[Any] | None:
    """A DeepSpeed ZeRO-3 gather context for partitioned ``params``, or None when nothing needs gathering.

    Same rule as trl's ``maybe_gather_lm_head_ctx``: parameters already AVAILABLE (e.g. a tied embedding inside its
    own module's forward) are not gathered again; duplicates are gathered once.
    """
    try:
        from transformers.integrations.deepspeed import is_deepspeed_zero3_enabled
    except ImportError:  # pragma: no cover - transformers always has it in the supported range
        return None
    if not is_deepspeed_zero3_enabled():
        return None
    import deepspeed  # noqa: PLC0415 - only under ZeRO-3
    from deepspeed.runtime.zero.partition_parameters import ZeroParamStatus

    todo = {
        id(p): p
        for p in params
        if p is not None and hasattr(p, "ds_status") and p.ds_status != ZeroParamStatus.AVAILABLE
    }
    if not todo:
        return None
    return deepspeed.zero.GatheredParameters(list(todo.values()))


_FLAGS = {
    "entropy": "return_entropy",
    "log_sum_sq_probs": "return_log_sum_sq_probs",
    "mean_logits": "return_mean_logits",
    "is_top1": "return_is_top1",
}


def _head_logprobs(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    targets: torch.Tensor,
    config: FusedHeadConfig,
    want: tuple[str, ...],
) -> LogProbs:
    """``linear_logprobs`` with the head's logit options and backend, computing the outputs named in ``want``."""
    flags = {_FLAGS[name]: True for name in want if name in _FLAGS}
    options = LogProbOptions(
        temperature=config.temperature, logit_scale=config.logit_scale, softcap=config.softcap, **flags
    )
    backend = config.backend
    return linear_logprobs(hidden, weight, targets, bias=bias, options=options, backend=backend)  # type: ignore[arg-type]


def _extras(out: LogProbs) -> tuple[torch.Tensor | None, ...]:
    """The non-differentiable outputs of ``out`` (None where not computed)."""
    return tuple(getattr(out, name, None) for name in OPTIONAL_OUTPUTS[1:])


class _GatheredLinearLogProbs(torch.autograd.Function):
    """linear_logprobs for a ZeRO-3 partitioned head: gathers the head again in backward and recomputes there.

    fastgrpo's own autograd function keeps the weight it saw in forward; under ZeRO-3 that storage is released when
    the gather context exits, so backward re-enters the gather and differentiates a recomputed forward (log-probs and
    entropy only: the other outputs carry no gradient).
    """

    @staticmethod
    def forward(
        ctx: Any,
        hidden: torch.Tensor,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        targets: torch.Tensor,
        config: FusedHeadConfig,
        want: tuple[str, ...],
    ) -> tuple[torch.Tensor, ...]:
        ctx.set_materialize_grads(False)
        with torch.no_grad():
            out = _head_logprobs(hidden, weight, bias, targets, config, want)
        ctx.save_for_backward(hidden, weight, bias, targets)
        ctx.config, ctx.want_entropy = config, "entropy" in want
        empty = out.logp.new_zeros(0)
        entropy = out.entropy if out.entropy is not None else empty
        extras = tuple(empty if x is None else x for x in _extras(out))
        ctx.mark_non_differentiable(*extras)
        return (out.logp, entropy, *extras)

    @staticmethod
    def backward(
        ctx: Any, grad_logp: torch.Tensor | None, grad_entropy: torch.Tensor | None, *_: Any
    ) -> tuple[Any, ...]:
        hidden, weight, bias, targets = ctx.saved_tensors
        needs = ctx.needs_input_grad
        if not ctx.want_entropy:
            grad_entropy = None
        if grad_logp is None and grad_entropy is None:
            return None, None, None, None, None, None
        gather = maybe_gather_params(weight, bias) or nullcontext()
        config: FusedHeadConfig = ctx.config
        with gather, torch.enable_grad():
            h = hidden.detach().requires_grad_(needs[0])
            w = weight.detach().requires_grad_(needs[1])
            b = None if bias is None else bias.detach().requires_grad_(needs[2])
            want = ("log_probs", "entropy") if grad_entropy is not None else ("log_probs",)
            out = _head_logprobs(h, w, b, targets, config, want)
            outputs = [out.logp] if grad_logp is not None else []
            grads = [grad_logp] if grad_logp is not None else []
            if grad_entropy is not None:
                outputs.append(out.entropy)
                grads.append(grad_entropy)
            inputs = [t for t, need in ((h, needs[0]), (w, needs[1]), (b, needs[2])) if t is not None and need]
            computed = iter(torch.autograd.grad(outputs, inputs, grads, allow_unused=True)) if inputs else iter(())
            gh = next(computed) if needs[0] else None
            gw = next(computed) if needs[1] else None
            gb = next(computed) if b is not None and needs[2] else None
        return gh, gw, gb, None, None, None


def project_logprobs(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    targets: torch.Tensor,
    config: FusedHeadConfig,
    want: tuple[str, ...],
) -> tuple[torch.Tensor | None, ...]:
    """The per-token outputs of :data:`HEAD_OUTPUTS` for ``targets`` [N] from ``hidden`` [N, H] (None where not in
    ``want``), gathering a ZeRO-3 head as needed."""
    gather = maybe_gather_params(weight, bias)
    if gather is None:
        out = _head_logprobs(hidden, weight, bias, targets, config, want)
        return (out.logp, out.entropy, *_extras(out))
    # Under ZeRO-3 the head is applied inside the gather so autograd records its full shape (as trl does).
    with gather:
        results = _GatheredLinearLogProbs.apply(hidden, weight, bias, targets, config, want)
    return tuple(x if name in want else None for name, x in zip(HEAD_OUTPUTS, results))


def _gather_sharded_head(param: torch.Tensor | None) -> torch.Tensor | None:
    """An FSDP2 head parameter still sharded (a DTensor) when the fused head reads it, gathered whole.

    That happens when the lm_head is an FSDP unit of its own: the fused head reads ``lm_head.weight`` without calling
    the lm_head module, so the unit's hooks never unshard it and never reduce its gradient. ``full_tensor()``'s
    default backward keeps each rank's own gradient for its shard; ``Partial("avg")`` makes the backward a
    reduce-scatter averaging over ranks, as FSDP2's own reduction (and DDP's all-reduce) does. A head gathered by its
    unit (accelerate puts [final norm, lm_head] and a tied embedding in one unit, unsharded during the forward) is a
    plain tensor here and is reduced by FSDP2 alone, so no gradient is averaged twice.
    """
    from torch.distributed.tensor import DTensor, Partial

    if not isinstance(param, DTensor):
        return param
    return param.full_tensor(grad_placements=[Partial("avg")] * len(param.placements))


def _backbone_attr(model: Any) -> str:
    import transformers
    from packaging.version import Version

    text_config = model.config.get_text_config()
    if text_config is not model.config and Version(transformers.__version__) < Version("5.0.0"):
        return "model"
    return "base_model"


def install_fused_head(model: Any, config: FusedHeadConfig) -> FusedHeadConfig:
    """Make ``model(..., labels=..., fused_lm_head=True)`` score labels with fastgrpo; idempotent.

    The forward without ``fused_lm_head=True`` is the model's previous forward (generation is unchanged). Installing
    again updates the configuration in place. Returns the configuration object the forward reads on each call.
    """
    config.outputs = check_outputs(config.outputs)
    text_config = model.config.get_text_config()
    config.softcap, config.logit_scale = head_logit_transform(text_config)
    existing = getattr(model, _ATTR, None)
    if existing is not None:
        existing_config: FusedHeadConfig = existing[0]
        existing_config.__dict__.update(config.__dict__)
        return existing_config
    backbone_attr = _backbone_attr(model)
    previous_instance_forward = model.__dict__.get("forward")
    original_forward = model.forward

    @functools.wraps(type(model).forward)
    def _fastgrpo_forward(
        self: Any,
        *args: Any,
        fused_lm_head: bool = False,
        labels: torch.Tensor | None = None,
        shift_labels: torch.Tensor | None = None,
        num_items_in_batch: Any = None,
        fastgrpo_entropy: bool | None = None,
        **kwargs: Any,
    ) -> Any:
        if not fused_lm_head or config.disabled:
            if labels is not None:
                kwargs["labels"] = labels
            if shift_labels is not None:
                kwargs["shift_labels"] = shift_labels
            if num_items_in_batch is not None:
                kwargs["num_items_in_batch"] = num_items_in_batch
            if fused_lm_head:  # uninstalled while wrapped: the head this one replaced (trl's, under patch_trl())
                kwargs["fused_lm_head"] = True
            return original_forward(*args, **kwargs)
        want = config.outputs
        if fastgrpo_entropy is not None:  # fastgrpo's GRPO log-prob method asks per call
            want = tuple(n for n in want if n != "entropy") + (("entropy",) if fastgrpo_entropy else ())
        return _fused_forward(
            self, config, backbone_attr, args, kwargs, labels, shift_labels, num_items_in_batch, ("log_probs", *want)
        )

    model.forward = types.MethodType(_fastgrpo_forward, model)
    setattr(model, _ATTR, (config, previous_instance_forward, model.__dict__["forward"]))
    return config


def uninstall_fused_head(model: Any) -> bool:
    """Restore the forward ``install_fused_head`` replaced; returns whether there was one.

    When something wrapped the model's forward after the head was installed (accelerate's autocast wrapper under
    mixed precision, for one), that wrapper is kept: the head is disabled instead, so every call goes to the forward
    it replaced.
    """
    existing = getattr(model, _ATTR, None)
    if existing is None:
        return False
    config, previous, installed = existing
    if model.__dict__.get("forward") is installed:
        if previous is None:
            model.__dict__.pop("forward", None)
        else:
            model.forward = previous
    else:
        config.disabled = True
    delattr(model, _ATTR)
    return True


def fused_head_config(model: Any) -> FusedHeadConfig | None:
    existing = getattr(model, _ATTR, None)
    return None if existing is None else existing[0]


@functools.cache
def _peft_tuner_layer() -> Any:
    try:
        from peft.tuners.tuners_utils import BaseTunerLayer
    except ImportError:
        return None
    return BaseTunerLayer


def check_lm_head_not_adapted(model: Any) -> None:
    """Raise a ValueError when a PEFT adapter sits on ``model``'s lm_head (a LoRA or trainable-tokens layer).

    The fused head projects with ``lm_head.weight`` and never calls the head module, so an adapter's delta would be
    ignored. PEFT's ``modules_to_save=["lm_head"]`` is fine: its wrapper's ``weight`` is the active adapter's trained
    copy (the original one while adapters are disabled, as for DPO's and KTO's reference pass), exactly the module its
    forward calls.
    """
    head = model.get_output_embeddings()
    if head is None:
        raise ValueError(f"{type(model).__name__} has no output embeddings (lm_head) for the fused head to use")
    tuner_layer = _peft_tuner_layer()
    if tuner_layer is None:  # no peft, no adapters
        return
    if isinstance(head, tuner_layer) or any(isinstance(m, tuner_layer) for m in head.modules()):
        raise ValueError(
            "fastgrpo does not support a PEFT adapter on the lm_head (the model's output embeddings are a "
            f"{type(head).__module__}.{type(head).__name__}): the fused head projects with `lm_head.weight` directly "
            "and would ignore the adapter. Remove 'lm_head' from the adapter's `target_modules` (modules_to_save "
            "is supported)."
        )


def add_fused_lm_head(
    model: Any,
    temperature: float = 1.0,
    cast_lm_head_to_fp32: bool = False,
    outputs: tuple[str, ...] = ("log_probs",),
    *,
    backend: str | None = None,
) -> None:
    """trl's ``add_fused_lm_head`` (trl >= 1.15), on fastgrpo's kernels: same signature, call contract and outputs.

    Afterwards ``model(..., labels=labels, fused_lm_head=True)`` runs the backbone and returns a
    :class:`FusedHeadOutput` (the fields of trl's ``FusedCausalLMOutput``) without materializing ``[tokens, vocab]``
    logits: ``log_probs`` (always), and the ``outputs`` asked for among ``entropy``, ``log_sum_sq_probs`` (log sum
    p^2, no gradient), ``mean_logits`` (mean temperature-scaled logit, no gradient), ``is_top1`` (bool: the label is
    the first argmax, trl's tie rule); all 0 / False where the label is -100. ``shift_labels`` are scored unshifted,
    ``loss`` is the NLL summed over labelled tokens divided by ``num_items_in_batch`` (their count when not given),
    plus the MoE load-balancing loss when router logits are requested. Without ``fused_lm_head=True`` the forward is
    the previous one (generation is unchanged). Logits follow the model's config as trl reads it (Gemma 2 soft-capping,
    Cohere / Granite / Falcon-H1 logit scaling), then ``/ temperature``; ``cast_lm_head_to_fp32`` projects in fp32
    outside autocast.

    Differences from trl's: calling it again on the same model updates the head in place instead of stacking a second
    one; unknown ``outputs`` names raise a ValueError; a PEFT adapter on the lm_head raises a ValueError (here and on
    each call, so a model wrapped with PEFT afterwards is covered too). ``backend`` (keyword only): "auto", "triton" or
    "torch" (default: ``$FASTGRPO_BACKEND`` or "auto"). :func:`fastgrpo.patch_trl` puts this function behind every trl
    trainer that calls trl's own. Undo with :func:`uninstall_fused_head`.
    """
    from ._compat import resolve_backend_choice

    chosen = resolve_backend_choice(backend)
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not temperature > 0:
        raise ValueError(f"temperature must be a positive float, got {temperature!r}")
    check_lm_head_not_adapted(model)
    config = FusedHeadConfig(
        temperature=float(temperature),
        cast_lm_head_to_fp32=bool(cast_lm_head_to_fp32),
        outputs=check_outputs(outputs),
        backend=chosen,
    )
    install_fused_head(model, config)


def _scatter(mask: torch.Tensor, values: torch.Tensor | None) -> torch.Tensor | None:
    """``values`` [n_valid] placed at ``mask``'s True positions, 0 (False) elsewhere; connected to the graph."""
    return None if values is None else values.new_zeros(mask.shape).masked_scatter(mask, values)


def _fused_forward(
    model: Any,
    config: FusedHeadConfig,
    backbone_attr: str,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    labels: torch.Tensor | None,
    shift_labels: torch.Tensor | None,
    num_items_in_batch: Any,
    want: tuple[str, ...],
) -> FusedHeadOutput:
    if labels is None and shift_labels is None:
        raise ValueError("fused_lm_head=True needs `labels` (or pre-shifted `shift_labels`) to score")
    check_lm_head_not_adapted(model)
    text_config = model.config.get_text_config()
    kwargs["use_cache"] = False
    if getattr(text_config, "output_router_logits", False):
        kwargs.setdefault("output_router_logits", True)
    backbone_outputs = getattr(model, backbone_attr)(*args, **kwargs)
    if shift_labels is None:
        hidden_states = backbone_outputs.last_hidden_state[:, :-1]
        labels = labels[:, 1:]  # type: ignore[index]
    else:
        hidden_states = backbone_outputs.last_hidden_state
        labels = shift_labels
    lm_head = model.get_output_embeddings()
    weight, bias = lm_head.weight, lm_head.bias
    hidden_states = hidden_states.to(weight.device)
    labels = labels.to(weight.device)
    mask = labels != -100
    autocast_ctx: AbstractContextManager[Any] = nullcontext()
    if config.cast_lm_head_to_fp32:
        hidden_states = hidden_states.float()
        autocast_ctx = torch.autocast(hidden_states.device.type, enabled=False)
    weight, bias = _gather_sharded_head(weight), _gather_sharded_head(bias)
    # Only labelled positions are projected: prompt and padding rows cost no matmul work.
    n_valid = int(mask.sum())
    if n_valid == 0:
        # Keep the result connected to the graph so an all-masked micro-batch backpropagates a zero.
        zero = hidden_states.sum() * 0.0
        log_probs = zero.float() + hidden_states.new_zeros(mask.shape, dtype=torch.float32)

        def empty(name: str) -> torch.Tensor | None:
            if name not in want:
                return None
            if name == "is_top1":
                return torch.zeros_like(mask)
            return log_probs.clone() if name == "entropy" else log_probs.detach().clone()

        per_token: tuple[torch.Tensor | None, ...] = (log_probs, *(empty(name) for name in OPTIONAL_OUTPUTS))
    else:
        with autocast_ctx:
            valid = project_logprobs(hidden_states[mask], weight, bias, labels[mask], config, want)
        per_token = tuple(_scatter(mask, x) for x in valid)
    log_probs, entropy, log_sum_sq_probs, mean_logits, is_top1 = per_token
    denom = mask.sum().clamp(min=1) if num_items_in_batch is None else num_items_in_batch
    loss = -log_probs.sum() / denom  # type: ignore[union-attr]
    aux_loss = None
    if kwargs.get("output_router_logits"):
        aux_loss = _router_aux_loss(model, text_config, backbone_outputs, kwargs.get("attention_mask"))
        loss = loss + getattr(text_config, "router_aux_loss_coef", 0.0) * aux_loss
    return FusedHeadOutput(
        loss=loss,
        log_probs=log_probs,
        entropy=entropy,
        log_sum_sq_probs=log_sum_sq_probs,
        mean_logits=mean_logits,
        is_top1=is_top1,
        label_mask=mask,
        aux_loss=aux_loss,
    )


def _router_aux_loss(model: Any, text_config: Any, backbone_outputs: Any, attention_mask: Any) -> torch.Tensor:
    """MoE load-balancing loss, as the model's own forward (and trl's fused head) computes it."""
    from transformers.models.mixtral.modeling_mixtral import load_balancing_loss_func

    num_experts = (
        getattr(text_config, "num_experts", None)
        or getattr(text_config, "num_local_experts", None)
        or getattr(model, "num_experts", None)
    )
    num_experts_per_tok = getattr(text_config, "num_experts_per_tok", None) or getattr(
        model, "num_experts_per_tok", None
    )
    if num_experts is None or num_experts_per_tok is None:
        raise ValueError(
            "fused_lm_head with output_router_logits needs num_experts and num_experts_per_tok in the config"
        )
    return load_balancing_loss_func(backbone_outputs.router_logits, num_experts, num_experts_per_tok, attention_mask)
