"""``patch_trl()``'s head seam: trl's trainers build fastgrpo's fused head where they would build trl's.

From trl 1.15 on, every trl trainer scores tokens through ``trl.trainer.utils.add_fused_lm_head``, and each trainer
module imports that name itself. ``patch_trl()`` replaces the name in each of those modules' namespaces (listed in
:data:`HEAD_MODULES`; no edit to trl's source) with a stand-in that installs trl's own head and then fastgrpo's on top
of it (:func:`fastgrpo.add_fused_lm_head`). The fused calls (``fused_lm_head=True``) then run fastgrpo's kernels; the
loss stays the trainer's own. trl's head underneath is what makes the seam reversible and fail-safe:

* ``unpatch_trl()`` puts trl's name back in every module and takes fastgrpo's head off the models it was installed on,
  so trainers built while patched score through trl's head again (stock trl);
* on a trl whose fused head (``add_fused_lm_head``, ``FusedCausalLMOutput``, ``ChunkedLogProbFunction`` and its tile
  folds: :data:`.fingerprints.HEAD_FUNCTIONS`) differs from the verified release's, fastgrpo's head is not installed:
  trl's own head runs in every trainer, and one WARNING names the functions that differ.

Generation seeds under tensor parallelism: ``RLOOTrainer`` seeds every process differently at the end of its
``__init__`` (``set_seed(seed, device_specific=True)``), so TP ranks would sample different completions. The trainers
of :data:`RESEEDED` get an ``__init__`` that reseeds per data-parallel rank afterwards
(:func:`.tensor_parallel.seed_generation`, a no-op without TP), as ``GRPOTrainer``'s patch does; restored by
``unpatch_trl()``. (The async GRPO trainer seeds alike on every process and samples with vLLM.)

``GRPOTrainer`` is not in :data:`HEAD_MODULES`: ``patch_trl()`` patches its class (:mod:`.trainer`), which installs the
same head on the policy and reference models and also owns the loss. Trainers built before ``patch_trl()`` keep trl's
head: they built it at construction, when the name was still trl's.
"""

from __future__ import annotations

import functools
import importlib
import logging
import weakref
from collections.abc import Callable
from typing import Any

from .._log import log_once
from .head import add_fused_lm_head, uninstall_fused_head

logger = logging.getLogger("fastgrpo")

# trl module -> the trainer in it that calls `add_fused_lm_head` (trl >= 1.15; on older trl they do not import it).
HEAD_MODULES: dict[str, str] = {
    "trl.trainer.sft_trainer": "SFTTrainer",
    "trl.trainer.dpo_trainer": "DPOTrainer",
    "trl.trainer.kto_trainer": "KTOTrainer",
    "trl.trainer.rloo_trainer": "RLOOTrainer",
    "trl.experimental.async_grpo.async_grpo_trainer": "AsyncGRPOTrainer",
}
# Trainers that generate with per-process seeds: their __init__ is wrapped to reseed per data-parallel rank under TP.
RESEEDED = ("RLOOTrainer",)
_NAME = "add_fused_lm_head"
_state: dict[str, Any] = {"originals": {}, "backend": None, "inits": {}}
# Models whose fastgrpo head a patched trainer module installed: unpatch_trl() takes it off again.
_models: weakref.WeakSet[Any] = weakref.WeakSet()


def _trl_utils_head() -> Callable[..., Any] | None:
    import trl.trainer.utils as trl_utils

    return getattr(trl_utils, _NAME, None)


def _stand_in(trainer: str, trl_head: Callable[..., Any]) -> Callable[..., None]:
    """The function a patched module calls in place of trl's ``add_fused_lm_head`` (same signature)."""

    @functools.wraps(trl_head)
    def stand_in(
        model: Any,
        temperature: float = 1.0,
        cast_lm_head_to_fp32: bool = False,
        outputs: tuple[str, ...] = ("log_probs",),
    ) -> None:
        trl_head(model, temperature=temperature, cast_lm_head_to_fp32=cast_lm_head_to_fp32, outputs=outputs)
        from .trainer import trl_support

        support = trl_support()
        if not support.fused_head:
            changed = ", ".join(support.changed)
            log_once(
                f"trl-head-changed|{support.version}|{changed}",
                f"fastgrpo: trl {support.version}'s fused head differs from the one fastgrpo verified ({changed}): "
                f"trl's own head runs in {', '.join(sorted(HEAD_MODULES.values()))} and GRPOTrainer",
            )
            return
        backend = _state["backend"]
        add_fused_lm_head(
            model, temperature, cast_lm_head_to_fp32, outputs, backend=backend
        )  # on top of trl's: reversible
        _models.add(model)
        log_once(
            f"trl-head|{trainer}",
            f"fastgrpo: {trainer} scores through fastgrpo's fused head (trl {support.version}; loss: trl's own)",
            logging.INFO,
        )

    stand_in.__wrapped__ = trl_head  # type: ignore[attr-defined]
    stand_in._fastgrpo_stand_in = True  # type: ignore[attr-defined]
    return stand_in


def patch_heads(backend: str | None) -> list[str]:
    """Put the stand-in behind every trainer module of :data:`HEAD_MODULES` that imports trl's head; idempotent.

    Returns the trainers covered (none on trl < 1.15). ``backend`` is read by each later construction.
    """
    _state["backend"] = backend
    trl_head = _trl_utils_head()
    if trl_head is None:  # trl < 1.15: no fused head to stand in for
        return []
    covered = []
    for module_name, trainer in HEAD_MODULES.items():
        if module_name in _state["originals"]:
            covered.append(trainer)
            continue
        try:
            module = importlib.import_module(module_name)
        except ImportError as err:  # e.g. a trl without trl.experimental.async_grpo
            logger.debug("fastgrpo: %s not patched: %s", module_name, err)
            continue
        current = getattr(module, _NAME, None)
        if current is not trl_head:  # the module does not score through trl's head (or has its own)
            logger.debug("fastgrpo: %s does not import trl.trainer.utils.%s; not patched", module_name, _NAME)
            continue
        _state["originals"][module_name] = current
        setattr(module, _NAME, _stand_in(trainer, current))
        if trainer in RESEEDED:
            cls = getattr(module, trainer)
            _state["inits"][cls] = cls.__dict__["__init__"]
            cls.__init__ = _reseeding_init(cls.__dict__["__init__"])
        covered.append(trainer)
    return covered


def _reseeding_init(init: Callable[..., None]) -> Callable[..., None]:
    """``init``, then the TP generation reseed (see the module docstring)."""

    @functools.wraps(init)
    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        init(self, *args, **kwargs)
        from .tensor_parallel import seed_generation

        seed_generation(self)

    return __init__


def unpatch_heads() -> None:
    """Put trl's ``add_fused_lm_head`` back in every patched module and take fastgrpo's head off the models the
    stand-in installed it on (their forward is trl's head again). A no-op when nothing is patched."""
    for module_name, original in _state["originals"].items():
        module = importlib.import_module(module_name)
        if getattr(getattr(module, _NAME, None), "_fastgrpo_stand_in", False):
            setattr(module, _NAME, original)
    _state["originals"] = {}
    for cls, init in _state["inits"].items():
        cls.__init__ = init
    _state["inits"] = {}
    _state["backend"] = None
    for model in list(_models):
        uninstall_fused_head(model)
    _models.clear()


def patched_trainers() -> list[str]:
    """The trainers whose module currently calls fastgrpo's stand-in."""
    return [HEAD_MODULES[name] for name in _state["originals"]]
