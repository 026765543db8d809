"""``FastGRPOTrainer`` and ``patch_trl()``: trl's GRPOTrainer with every log-prob pass through fastgrpo.

``patch_trl()`` is the one entry point for trl scripts: besides GRPO (below) it puts fastgrpo's fused head behind
every other trl trainer that calls trl's ``add_fused_lm_head`` (trl >= 1.15; see :mod:`.trl_head`).

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

Fail-safe on an unseen trl: at construction the installed trl's functions that fastgrpo replaces or mirrors are
fingerprinted (:mod:`.fingerprints`). Only on a verified release does the fused loss run; on any other release in the
supported range trl's own ``compute_loss`` computes the loss (and trl's own log-prob method is used when the log-prob
functions changed), with one WARNING naming the functions that differ. A keyword trl sends that fastgrpo does not know
goes to trl's own method for that call.
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
import trl.trainer.grpo_trainer as _grpo_module
from trl.trainer.grpo_trainer import GRPOTrainer as _TRLGRPOTrainer

from . import loss as _loss
from ._compat import (
    SUPPORTED_RANGE,
    check_trl_version,
    installed_trl_version,
    resolve_backend_choice,
    trl_has_fused_head,
)
from .head import (
    FusedHeadConfig,
    check_lm_head_not_adapted,
    fused_head_config,
    install_fused_head,
    uninstall_fused_head,
)

if TYPE_CHECKING:
    from .fingerprints import TrlSupport

logger = logging.getLogger("fastgrpo")

_PATCHED_METHODS = ("__init__", "_get_per_token_logps_and_entropies", "compute_loss")


def _trl_own(name: str) -> Any:
    """trl's own GRPOTrainer attribute ``name`` as it is now (not fastgrpo's patch_trl() replacement), or None.

    Looked up on each call, so whatever trl (or a monkeypatch of trl's class) defines is what fastgrpo defers to.
    """
    method = _TRLGRPOTrainer.__dict__.get(name)
    if method is not None and method is _REPLACEMENTS.get(name):
        method = (_patch_state["originals"] or {}).get(name)
    return method


def _trl(name: str) -> Callable[..., Any]:
    method = _trl_own(name)
    if method is None:  # only on a trl outside the supported range, which construction rejects first
        raise RuntimeError(f"the installed trl's GRPOTrainer has no {name}; fastgrpo supports trl {SUPPORTED_RANGE}")
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
# Trainers of trl's own (patched) class that fastgrpo set up: unpatch_trl() takes fastgrpo off their models again.
_patched_trainers: weakref.WeakSet[Any] = weakref.WeakSet()


def _is_peft_model(model: Any) -> bool:
    from accelerate.utils import is_peft_model

    return is_peft_model(model)


def _unwrap(model: Any) -> Any:
    # DeepSpeed engines and DDP keep the model in `.module`; FSDP2 modules are the model itself.
    while hasattr(model, "module") and isinstance(model.module, torch.nn.Module):
        model = model.module
    return model


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


def trl_support(trainer: Any = None) -> TrlSupport:
    """Whether the installed trl is one fastgrpo verified (see :mod:`.fingerprints`), for ``trainer`` if given
    (a constructed trainer lacking an attribute the fused loss reads also takes trl's loss)."""
    from . import fingerprints as _fingerprints  # here, so `python -m fastgrpo.integration.fingerprints` runs cleanly

    version = str(installed_trl_version())
    support = _fingerprints.assess(version, _fingerprints.installed_fingerprints(_trl_own))
    missing = [] if trainer is None else _loss.missing_attributes(trainer)
    if missing:
        reason = f"the trainer lacks attributes fastgrpo's fused loss reads: {', '.join(missing)}"
        support = _fingerprints.TrlSupport(
            version,
            fused_loss=False,
            logps_method=support.logps_method,
            fused_head=support.fused_head,
            reasons=(*support.reasons, reason),
            changed=support.changed,
        )
    return support


def _setup_fastgrpo(self: Any, backend: str, loss_path: str = "auto") -> None:
    """Put fastgrpo's fused head on the policy and reference models and choose the loss path (logged once)."""
    support = trl_support(self)
    policy = _unwrap(self.model)
    policy = policy.get_base_model() if _is_peft_model(policy) else policy
    check_lm_head_not_adapted(policy)
    cast = bool(getattr(self.args, "cast_lm_head_to_fp32", False))
    models = [(policy, True)]
    if self.ref_model is not None:
        ref = _unwrap(self.ref_model)
        check_lm_head_not_adapted(ref)
        models.append((ref, False))
    self._fastgrpo_head = None
    self._fastgrpo_models = []
    if support.fused_head:
        for model, is_policy in models:
            config = install_fused_head(
                model,
                FusedHeadConfig(
                    temperature=float(self.temperature),
                    cast_lm_head_to_fp32=cast,
                    outputs=("log_probs", "entropy") if is_policy else ("log_probs",),  # what trl asks for
                    backend=backend,
                ),
            )
            self._fastgrpo_models.append(model)
            if is_policy:
                self._fastgrpo_head = config
    self._fastgrpo_backend = backend
    self._fastgrpo_trl = support
    if not isinstance(self, FastGRPOTrainer):
        _patched_trainers.add(self)
    if getattr(self.args, "use_liger_kernel", False) and not trl_has_fused_head():
        _log_once(
            "liger",
            "fastgrpo: use_liger_kernel=True: Liger's GRPO loss and log-prob path are not used; fastgrpo computes the "
            "log-probs and the loss (trl's objective)",
        )
    reasons = _loss.fallback_reasons(self, _TRLGRPOTrainer, loss_path) + list(support.reasons)
    self._fastgrpo_loss_fallback = reasons
    if not support.fused_head:
        logps = "trl's own (fastgrpo's fused head is not installed: trl's add_fused_lm_head changed)"
    elif not support.logps_method:
        logps = f"trl's own _get_per_token_logps_and_entropies (it scores through fastgrpo's head, backend={backend!r})"
    else:
        logps = f"through fastgrpo (backend={backend!r})"
    if not reasons:
        loss = "fastgrpo's fused GRPO loss"
    else:
        entry = "compute_loss" if "GRPOTrainer.compute_loss" in support.changed else "_compute_loss"
        loss = f"trl's own {entry} (trl's loss math), because of: " + "; ".join(reasons)
    verdict = "verified" if support.verified else "not verified for the fused loss"
    message = f"fastgrpo: trl {support.version} ({verdict}); log-probs: {logps}; loss: {loss}"
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
    unknown = sorted(set(extra) - set(_MULTIMODAL_KEYS))
    if unknown:
        _log_once(
            f"unknown-kwargs:{unknown}",
            f"fastgrpo: trl passed {unknown} to _get_per_token_logps_and_entropies, which fastgrpo does not know: "
            "those calls run trl's own method",
        )
    # A trainer constructed before patch_trl() has no fastgrpo head on its models: trl's own path. So do
    # vision-language inputs (in trl >= 1.15 that path lands in fastgrpo's fused head too).
    multimodal = any(extra.get(key) is not None for key in _MULTIMODAL_KEYS)
    if multimodal and not trl_has_fused_head():
        _log_once("vlm-logits", "fastgrpo: vision-language inputs use trl's full-logits log-prob path on trl<1.15")
    support = getattr(self, "_fastgrpo_trl", None)
    if multimodal or unknown or support is None or not support.logps_method:
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
    support = getattr(self, "_fastgrpo_trl", None)
    if support is None or "GRPOTrainer.compute_loss" in support.changed:
        # A trainer built before patch_trl() (or by a subclass that skipped __init__), or a trl whose loss entry point
        # is not the verified one: trl's own (on fastgrpo's log-probs where its head is installed).
        return _trl("compute_loss")(self, model, inputs, return_outputs, num_items_in_batch)
    if return_outputs:
        raise ValueError("The GRPOTrainer does not support returning outputs")
    if support.fused_loss and not self._fastgrpo_loss_fallback:
        loss = _loss.compute_fused_loss(self, model, inputs)
        if loss is not None:
            return loss
        _log_once("per-token-advantages", "fastgrpo: per-token advantages [B, T]: this batch uses trl's loss math")
    # trl's loss math, always on fastgrpo's log-probs: `_compute_loss` directly, not trl's (verified) `compute_loss`,
    # which in trl < 1.15 sends `use_liger_kernel=True` to Liger's loss (its own log-probs) instead.
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
    """Put fastgrpo behind trl's trainers: the one entry point for existing trl scripts. Idempotent, reversible.

    * Every trainer that scores through trl's fused head (trl >= 1.15: ``SFTTrainer``, ``DPOTrainer``,
      ``KTOTrainer``, ``RLOOTrainer``, ``trl.experimental.async_grpo.AsyncGRPOTrainer``) builds
      :func:`fastgrpo.add_fused_lm_head` where it would build trl's ``add_fused_lm_head`` (the name is replaced in
      each trainer module, see :mod:`.trl_head`): its log-probs and the other per-token outputs come from fastgrpo's
      kernels, its loss stays trl's.
    * ``GRPOTrainer`` (trl >= 1.10) gets fastgrpo's ``__init__``, ``_get_per_token_logps_and_entropies`` and
      ``compute_loss`` on trl's class itself: the same head on the policy and reference models, and fastgrpo's fused
      GRPO loss on a verified trl. On trl < 1.15 only GRPO is covered.

    Covers names imported before or after patching, and subclasses that do not override the patched methods. Takes
    effect for trainers constructed afterwards: a trainer built before ``patch_trl()`` keeps trl's head (and, for
    GRPO, trl's loss). On a trl whose fused head differs from the verified release's, trl's own head runs in every
    trainer, with one WARNING naming the functions that differ. ``backend``: "auto", "triton" or "torch" (default:
    ``$FASTGRPO_BACKEND`` or "auto"); patching again only updates it, for trainers built afterwards. Undo with
    :func:`unpatch_trl`.

    Raises RuntimeError on a trl outside the supported range, ValueError on an unknown backend.
    """
    from .trl_head import patch_heads

    check_trl_version()
    if backend is not None:
        resolve_backend_choice(backend)
    cls = _grpo_module.GRPOTrainer
    _patch_state["backend"] = backend
    patch_heads(backend)
    if _patch_state["originals"] is not None:
        return
    originals = {name: cls.__dict__.get(name) for name in _PATCHED_METHODS}
    for name, fn in _REPLACEMENTS.items():
        setattr(cls, name, fn)
    _patch_state["originals"] = originals
    _patch_state["cls"] = cls


def unpatch_trl() -> None:
    """Restore trl's own ``add_fused_lm_head`` in every trainer module and trl's ``GRPOTrainer`` methods, and take
    fastgrpo off the live trainers built while patched.

    Those trainers (SFT, DPO, KTO, RLOO, async GRPO; GRPO instances of trl's class or its subclasses, not of
    :class:`FastGRPOTrainer`) get their models' previous forward back (trl's fused head on trl >= 1.15; when something
    wrapped the forward afterwards, fastgrpo's head is disabled in place and passes every call to trl's) and lose
    fastgrpo's state, so they train as stock trl. What stays: :class:`FastGRPOTrainer` instances (fastgrpo's own
    class, not a patch), models given a head by calling :func:`fastgrpo.add_fused_lm_head` directly, and the
    once-only log memory. A no-op when not patched.
    """
    from .trl_head import unpatch_heads

    unpatch_heads()
    originals = _patch_state["originals"]
    if originals is None:
        return
    for trainer in list(_patched_trainers):
        for model in getattr(trainer, "_fastgrpo_models", ()):
            uninstall_fused_head(model)
        for name in [n for n in vars(trainer) if n.startswith("_fastgrpo_")]:
            delattr(trainer, name)
    _patched_trainers.clear()
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


__all__ = ["FastGRPOTrainer", "fused_head_config", "is_trl_patched", "patch_trl", "trl_support", "unpatch_trl"]
