"""``FastGRPOTrainer`` and ``patch_trl()``: trl's GRPOTrainer with every log-prob pass through fastgrpo.

The same functions serve both: ``FastGRPOTrainer`` defines them as its methods, ``patch_trl()`` sets them on trl's
``GRPOTrainer`` class itself (so a name imported before patching is covered too) and ``unpatch_trl()`` puts trl's
own back. Each calls trl's original methods explicitly, never through ``super()``, so the two can be combined.

Seams used, per trl era:

* every era: after trl's ``__init__``, the policy (the base model under PEFT) and the reference model get fastgrpo's
  fused head on their forward (``model(..., labels=..., fused_lm_head=True)``, see :mod:`.head`), which replaces
  trl's own fused head in 1.15/1.16;
* ``_get_per_token_logps_and_entropies`` calls that head, inside the wrapped (DDP / DeepSpeed / FSDP) model's
  forward, for the policy pass with gradients, the old-policy pass and the reference pass, in training and eval;
  in 1.10-1.14 it replaces trl's full-logits path;
* ``compute_loss`` owns the loss entry point (a subclass overriding only ``_compute_loss`` is still honoured): it
  computes the loss with fastgrpo's GRPO loss when that supports the configuration, else it runs trl's
  ``_compute_loss`` (trl's loss math, on fastgrpo's log-probs).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import torch
import trl.trainer.grpo_trainer as _grpo_module
from trl.trainer.grpo_trainer import GRPOTrainer as _TRLGRPOTrainer

from . import loss as _loss
from ._compat import check_trl_version, resolve_backend_choice, trl_has_fused_head
from .head import FusedHeadConfig, fused_head_config, install_fused_head

logger = logging.getLogger("fastgrpo")

_PATCHED_METHODS = ("__init__", "_get_per_token_logps_and_entropies", "compute_loss")
# trl's own methods, captured when this module is first imported (before anything here can patch them).
# (`.get`: on a trl outside the supported range a method may be missing; construction then fails with a clear message.)
_TRL_METHODS: dict[str, Callable[..., Any] | None] = {
    name: _TRLGRPOTrainer.__dict__.get(name) for name in _PATCHED_METHODS
}


def _trl(name: str) -> Callable[..., Any]:
    method = _TRL_METHODS[name]
    if method is None:  # only on a trl outside the supported range, which construction rejects first
        raise RuntimeError(f"the installed trl's GRPOTrainer has no {name}; fastgrpo supports trl >=1.10,<2")
    return method


_MULTIMODAL_KEYS = (
    "pixel_values",
    "image_grid_thw",
    "num_images",
    "pixel_attention_mask",
    "spatial_shapes",
    "num_tiles",
    "image_sizes",
    "token_type_ids",
    "mm_token_type_ids",
    "image_position_ids",
)
_patch_state: dict[str, Any] = {"originals": None, "backend": None}
_logged_once: set[str] = set()


def _is_peft_model(model: Any) -> bool:
    from accelerate.utils import is_peft_model

    return is_peft_model(model)


def _unwrap(model: Any) -> Any:
    # DeepSpeed engines and DDP keep the model in `.module`; FSDP2 modules are the model itself.
    while hasattr(model, "module") and isinstance(model.module, torch.nn.Module):
        model = model.module
    return model


def _check_lm_head_not_adapted(model: Any) -> None:
    head = model.get_output_embeddings()
    try:
        from peft.tuners.tuners_utils import BaseTunerLayer
    except ImportError:  # no peft, no adapters
        return
    if isinstance(head, BaseTunerLayer) or any(isinstance(m, BaseTunerLayer) for m in head.modules()):
        raise ValueError(
            "fastgrpo does not support a PEFT adapter on the lm_head (the model's output embeddings are a "
            f"{type(head).__module__}.{type(head).__name__}): the fused head projects with `lm_head.weight` directly "
            "and would ignore the adapter. Remove 'lm_head' from the adapter's `target_modules`."
        )


def _fastgrpo_init(
    self: Any, *args: Any, fastgrpo_backend: str | None = None, fastgrpo_loss: str | None = None, **kwargs: Any
) -> None:
    check_trl_version()
    if fastgrpo_backend is None:
        fastgrpo_backend = _patch_state["backend"]
    backend = resolve_backend_choice(fastgrpo_backend)
    loss_path = _loss.resolve_loss_path(fastgrpo_loss)
    _trl("__init__")(self, *args, **kwargs)
    _setup_fastgrpo(self, backend, loss_path)


def _setup_fastgrpo(self: Any, backend: str, loss_path: str = "auto") -> None:
    """Put fastgrpo's fused head on the policy and reference models and choose the loss path (logged once)."""
    policy = _unwrap(self.model)
    policy = policy.get_base_model() if _is_peft_model(policy) else policy
    _check_lm_head_not_adapted(policy)
    cast = bool(getattr(self.args, "cast_lm_head_to_fp32", False))
    self._fastgrpo_head = install_fused_head(
        policy,
        FusedHeadConfig(temperature=float(self.temperature), cast_lm_head_to_fp32=cast, entropy=True, backend=backend),
    )
    if self.ref_model is not None:
        ref = _unwrap(self.ref_model)
        _check_lm_head_not_adapted(ref)
        install_fused_head(
            ref,
            FusedHeadConfig(
                temperature=float(self.temperature), cast_lm_head_to_fp32=cast, entropy=False, backend=backend
            ),
        )
    self._fastgrpo_backend = backend
    if getattr(self.args, "use_liger_kernel", False) and not trl_has_fused_head():
        _log_once(
            "liger",
            "fastgrpo: use_liger_kernel=True: Liger's GRPO loss and log-prob path are not used; fastgrpo computes the "
            "log-probs and the loss (trl's objective)",
        )
    reasons = _loss.fallback_reasons(self, _TRLGRPOTrainer, loss_path)
    self._fastgrpo_loss_fallback = reasons
    message = f"fastgrpo: log-probs through fastgrpo (backend={backend!r}); loss: " + (
        "fastgrpo's fused GRPO loss"
        if not reasons
        else "trl's loss math on fastgrpo's log-probs, because of: " + "; ".join(reasons)
    )
    key = f"{type(self).__name__}:{message}"
    if key not in _logged_once:
        _logged_once.add(key)
        logger.warning(message) if reasons else logger.info(message)
    else:
        logger.debug(message)


def _fastgrpo_get_per_token_logps_and_entropies(
    self: Any,
    model: Any,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    logits_to_keep: int,
    batch_size: int | None = None,
    compute_entropy: bool = False,
    compute_aux_loss: bool = False,
    **extra: Any,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """Per-token log-probs (and entropies, and the MoE aux loss) of the completion tokens, through fastgrpo.

    Same contract as trl's method. Text inputs are scored here; vision-language inputs go through trl's own method,
    which in trl >= 1.15 also lands in fastgrpo's fused head (in 1.10-1.14 it builds full logits).
    """
    unknown = set(extra) - set(_MULTIMODAL_KEYS)
    if unknown:
        raise TypeError(f"_get_per_token_logps_and_entropies got unexpected arguments {sorted(unknown)}")
    # A trainer constructed before patch_trl() has no fastgrpo head on its models: trl's own path. So do
    # vision-language inputs (in trl >= 1.15 that path lands in fastgrpo's fused head too).
    multimodal = any(extra.get(key) is not None for key in _MULTIMODAL_KEYS)
    if multimodal and not trl_has_fused_head():
        _log_once("vlm-logits", "fastgrpo: vision-language inputs use trl's full-logits log-prob path on trl<1.15")
    if multimodal or not hasattr(self, "_fastgrpo_backend"):
        return _trl("_get_per_token_logps_and_entropies")(
            self,
            model,
            input_ids,
            attention_mask,
            logits_to_keep,
            batch_size=batch_size,
            compute_entropy=compute_entropy,
            compute_aux_loss=compute_aux_loss,
            **extra,
        )
    batch_size = batch_size or input_ids.size(0)
    all_logps, all_entropies, all_aux = [], [], []
    for start in range(0, input_ids.size(0), batch_size):
        ids = input_ids[start : start + batch_size]
        mask = attention_mask[start : start + batch_size]
        model_inputs: dict[str, Any] = {"input_ids": ids, "attention_mask": mask}
        if compute_aux_loss:
            model_inputs["output_router_logits"] = True
        # Only the completion tokens are scored.
        labels = ids.masked_fill(mask == 0, -100)
        labels[:, :-logits_to_keep] = -100
        with self.accelerator.autocast():
            outputs = model(**model_inputs, labels=labels, fused_lm_head=True, fastgrpo_entropy=compute_entropy)
        all_logps.append(outputs.log_probs[:, -logits_to_keep:])
        if compute_entropy:
            all_entropies.append(outputs.entropy[:, -logits_to_keep:])
        if compute_aux_loss:
            all_aux.append(outputs.aux_loss)
    logps = torch.cat(all_logps, dim=0)
    entropies = torch.cat(all_entropies, dim=0) if compute_entropy else None
    aux_loss = torch.stack(all_aux).mean() if compute_aux_loss else None
    return logps, entropies, aux_loss


def _fastgrpo_compute_loss(
    self: Any, model: Any, inputs: dict[str, Any], return_outputs: bool = False, num_items_in_batch: Any = None
) -> torch.Tensor:
    if not hasattr(self, "_fastgrpo_loss_fallback"):
        # A trainer built before patch_trl() (or by a subclass that skipped __init__): trl's own path.
        return _trl("compute_loss")(self, model, inputs, return_outputs, num_items_in_batch)
    if return_outputs:
        raise ValueError("The GRPOTrainer does not support returning outputs")
    if not self._fastgrpo_loss_fallback:
        loss = _loss.compute_fused_loss(self, model, inputs)
        if loss is not None:
            return loss
        _log_once("per-token-advantages", "fastgrpo: per-token advantages [B, T]: this batch uses trl's loss math")
    # trl's loss math, always on fastgrpo's log-probs: `_compute_loss` directly, not trl's `compute_loss`, which in
    # trl < 1.15 sends `use_liger_kernel=True` to Liger's loss (its own log-probs) instead.
    return self._compute_loss(model, inputs)


def _log_once(key: str, message: str) -> None:
    if key not in _logged_once:
        _logged_once.add(key)
        logger.warning(message)


class FastGRPOTrainer(_TRLGRPOTrainer):
    """trl's ``GRPOTrainer`` with fastgrpo's kernels: same constructor and ``GRPOConfig``.

    Extra keyword arguments: ``fastgrpo_backend`` ("auto", "triton" or "torch"; default: ``$FASTGRPO_BACKEND`` or
    "auto") picks the kernel backend; ``fastgrpo_loss`` ("auto" or "trl"; default ``$FASTGRPO_LOSS`` or "auto")
    can force trl's loss math on fastgrpo's log-probs.

    Every log-prob pass (policy with gradients, old policy, reference; train and eval) runs through
    :func:`fastgrpo.linear_logprobs` without materializing ``[tokens, vocab]`` logits; the loss uses fastgrpo's GRPO
    loss where it supports the configuration and trl's own loss math otherwise (logged once at construction, naming
    the features responsible).
    """

    __init__ = _fastgrpo_init
    _get_per_token_logps_and_entropies = _fastgrpo_get_per_token_logps_and_entropies
    compute_loss = _fastgrpo_compute_loss


_REPLACEMENTS: dict[str, Callable[..., Any]] = {
    "__init__": _fastgrpo_init,
    "_get_per_token_logps_and_entropies": _fastgrpo_get_per_token_logps_and_entropies,
    "compute_loss": _fastgrpo_compute_loss,
}


def patch_trl(backend: str | None = None) -> None:
    """Make trl's ``GRPOTrainer`` use fastgrpo, including in scripts that already did ``from trl import GRPOTrainer``.

    Sets fastgrpo's ``__init__``, ``_get_per_token_logps_and_entropies`` and ``compute_loss`` on trl's class itself
    (no edits to trl's source); subclasses that do not override them are covered too. Idempotent: patching again only
    updates ``backend``. Trainers constructed before patching keep trl's behaviour. Undo with :func:`unpatch_trl`.

    Raises RuntimeError on a trl outside the supported range, ValueError on an unknown backend.
    """
    check_trl_version()
    if backend is not None:
        resolve_backend_choice(backend)
    cls = _grpo_module.GRPOTrainer
    _patch_state["backend"] = backend
    if _patch_state["originals"] is not None:
        return
    originals = {name: cls.__dict__.get(name) for name in _PATCHED_METHODS}
    for name, fn in _REPLACEMENTS.items():
        setattr(cls, name, fn)
    _patch_state["originals"] = originals
    _patch_state["cls"] = cls


def unpatch_trl() -> None:
    """Restore trl's own ``GRPOTrainer`` methods; a no-op when not patched."""
    originals = _patch_state["originals"]
    if originals is None:
        return
    cls = _patch_state.pop("cls")
    for name, fn in originals.items():
        if fn is None:
            delattr(cls, name)
        else:
            setattr(cls, name, fn)
    _patch_state["originals"] = None
    _patch_state["backend"] = None


def is_trl_patched() -> bool:
    return _patch_state["originals"] is not None


__all__ = ["FastGRPOTrainer", "fused_head_config", "is_trl_patched", "patch_trl", "unpatch_trl"]
