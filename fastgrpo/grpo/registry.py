"""One declaration per GRPO loss type: every layer reads what it needs to know about a loss type from here.

A :class:`LossType` says which kernel kind computes its policy term, how the per-row losses become the scalar loss
(its :class:`Normaliser`), which metrics it logs, and which tensors and options it needs. The launcher
(``launch.py``), the torch path (``torch_math.py``), finalisation (``finalize.py``), the option and input checks
(``options.py``, ``checks.py``), the trainer integration and the tests all look a loss type up with :func:`get`;
none of them names a loss type. ``docs/adding_a_loss_type.md`` walks through adding one.

This module imports neither torch nor triton: the Triton kernel imports its kind numbers and vespo's clamps from here,
so each exists once.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from enum import IntEnum
from typing import Any


class KernelKind(IntEnum):
    """Which branch of ``fastgrpo_kernels.grpo_loss`` (and of ``torch_math``) computes the policy term.

    The kernel receives the value as its ``LOSS_KIND`` constexpr and compares it with ``KIND_*`` constants built from
    these numbers. A kind is a shape of computation, not a loss type: several loss types share ``PPO_CLIP``.
    """

    PPO_CLIP = 0  # -min(r A, clip(r, 1 - eps_low, 1 + eps_high) A), optional delta clamp; clip-ratio statistics
    CISPO = 1  # -clamp(r, max=eps_high).detach() A logp; cispo's clip statistic
    SAPO = 2  # soft clip -sigmoid(tau (r - 1)) 4 / tau A
    VESPO = 3  # -phi(w).detach() A logp with a per-row gamma weight phi from a pass over the row
    POLICY_FN = 4  # a token-level policy term supplied by the entry: ``kernel_policy`` and ``torch_policy``


# trl's vespo clamps (``GRPOTrainer.get_gamma_weights``): token log-ratios to [-20, 20], log-weights to
# [log(1e-8), 20], lambda to >= 1e-4. The kernel and the torch path both read these.
VESPO_LOG_RATIO_CLAMP = 20.0
VESPO_LOG_W_MIN = math.log(1e-8)
VESPO_LAMBDA_MIN = 1e-4

# Statistics the kernel writes per kind, as trl's metric names (``finalize.METRIC_COLUMNS`` maps them to columns).
KIND_METRICS: dict[KernelKind, tuple[str, ...]] = {
    KernelKind.PPO_CLIP: ("clip_ratio/low_mean", "clip_ratio/high_mean", "clip_ratio/region_mean"),
    KernelKind.CISPO: ("cispo_clip_ratio",),
    KernelKind.SAPO: (),
    KernelKind.VESPO: ("vespo/phi_seq_mean",),
    KernelKind.POLICY_FN: (),
}


@dataclass(frozen=True)
class Normaliser:
    """How ``row_loss[b] = sum_t per_token_loss * mask`` becomes the loss (``finalize.NORMALISERS`` has the math).

    ``divisor`` is the prose used in error messages; ``tensors`` / ``options`` are the inputs it reads beyond the
    row statistics; ``per_micro_batch``: the loss is further divided by ``gradient_accumulation_steps``.
    """

    name: str
    divisor: str
    tensors: tuple[str, ...] = ()
    options: tuple[str, ...] = ()
    per_micro_batch: bool = True


PER_ROW_MEAN = Normaliser("per_row_mean", "each sequence's token count, then the batch size")
TOKEN_MEAN = Normaliser("token_mean", "the micro-batch's token count")
MAX_LENGTH = Normaliser("max_length", "batch_size * max_completion_length", options=("max_completion_length",))
NUM_ITEMS = Normaliser(
    "num_items",
    "num_items_in_batch (the number of completion tokens in the generation batch, over all processes)",
    tensors=("num_items_in_batch",),
    per_micro_batch=False,
)
ROW_SUM_MEAN = Normaliser("row_sum_mean", "the batch size (after a per-sequence sum)")
NORMALISERS = (PER_ROW_MEAN, TOKEN_MEAN, MAX_LENGTH, NUM_ITEMS, ROW_SUM_MEAN)


@dataclass(frozen=True)
class LossType:
    """Everything fastgrpo needs to know about one ``loss_type``.

    Attributes:
        name: trl's ``GRPOConfig.loss_type`` value.
        kind: the kernel branch computing the policy term.
        normaliser: how per-row losses become the loss.
        metrics: trl's metric names this type logs besides ``kl`` / ``entropy`` (a subset of ``KIND_METRICS[kind]``).
        options: the :class:`GRPOLossOptions` fields its policy term reads (tests perturb each one on both backends).
        nonzero_options: options that must not be 0 (the policy term divides by them).
        sequence_level: whether ``importance_sampling_level="sequence"`` is defined for it.
        isr_per_sequence: whether a ``[B, 1]`` ``importance_sampling_ratio`` is accepted (else ``[B, T]`` only).
        kernel_policy / torch_policy / policy_params: only for ``KernelKind.POLICY_FN``. ``kernel_policy`` is a
            ``@triton.jit`` function (or ``"module:attribute"`` naming one, imported at launch) and ``torch_policy``
            the same math in torch, both ``(coef_1, logp, adv, params) -> (policy, d_policy/d_coef_1,
            d_policy/d_logp)`` on ``[B, T]`` tiles (``adv`` is ``[B, 1]``); ``params`` is the tuple of floats
            ``tuple(float(getattr(options, n)) for n in policy_params)``.
    """

    name: str
    kind: KernelKind
    normaliser: Normaliser
    metrics: tuple[str, ...] = ()
    options: tuple[str, ...] = ()
    nonzero_options: tuple[str, ...] = ()
    sequence_level: bool = True
    isr_per_sequence: bool = True
    kernel_policy: Any = None
    torch_policy: Callable[..., Any] | None = None
    policy_params: tuple[str, ...] = ()

    @property
    def tensors(self) -> tuple[str, ...]:
        """Tensor arguments of ``grpo_loss`` this type requires (beyond the three positional ones)."""
        return self.normaliser.tensors

    @property
    def required_options(self) -> tuple[str, ...]:
        """Options that have no usable default for this type (``None`` is an error)."""
        return self.normaliser.options

    @property
    def clips(self) -> bool:
        """PPO-style clipping: trl also logs the per-sequence ``clip_ratio/low_min`` and ``clip_ratio/high_max``."""
        return "clip_ratio/low_mean" in self.metrics

    def policy_values(self, opts: Any) -> tuple[float, ...]:
        """The ``params`` tuple of a ``POLICY_FN`` type: ``policy_params`` read from ``opts`` by name."""
        return tuple(float(getattr(opts, name)) for name in self.policy_params)


_REGISTRY: dict[str, LossType] = {}


def register(entry: LossType) -> LossType:
    """Add (or, by the same name, replace) a loss type; returns it. Checks the entry is self-consistent."""
    if not isinstance(entry, LossType):
        raise TypeError(f"register expects a LossType, got {type(entry).__name__}")
    unknown = set(entry.metrics) - set(KIND_METRICS[entry.kind])
    if unknown:
        raise ValueError(f"loss type {entry.name!r}: kind {entry.kind.name} does not produce metrics {sorted(unknown)}")
    has_fn = entry.kernel_policy is not None and entry.torch_policy is not None
    if (entry.kind == KernelKind.POLICY_FN) != has_fn:
        raise ValueError(
            f"loss type {entry.name!r}: kernel_policy and torch_policy are required with KernelKind.POLICY_FN "
            "and only there"
        )
    _REGISTRY[entry.name] = entry
    return entry


def unregister(name: str) -> None:
    """Remove a loss type (tests use it to clean up a test-only type)."""
    _REGISTRY.pop(name, None)


def names() -> tuple[str, ...]:
    """Every registered loss type, in registration order."""
    return tuple(_REGISTRY)


def get(name: str) -> LossType:
    """The entry of ``name``; a ValueError listing the registered types if there is none."""
    entry = _REGISTRY.get(name) if isinstance(name, str) else None
    if entry is None:
        raise ValueError(f"loss_type must be one of {names()}, got {name!r}")
    return entry


def names_where(predicate: Callable[[LossType], bool]) -> tuple[str, ...]:
    """Registered loss types whose entry satisfies ``predicate`` (for error messages and tests)."""
    return tuple(n for n, e in _REGISTRY.items() if predicate(e))


# trl 1.16's eight loss types (``GRPOTrainer._compute_loss``).
_CLIP_METRICS = KIND_METRICS[KernelKind.PPO_CLIP]
_CLIP_OPTIONS = ("epsilon", "epsilon_high", "delta")
register(LossType("grpo", KernelKind.PPO_CLIP, PER_ROW_MEAN, _CLIP_METRICS, _CLIP_OPTIONS))
register(LossType("bnpo", KernelKind.PPO_CLIP, TOKEN_MEAN, _CLIP_METRICS, _CLIP_OPTIONS))
register(LossType("dr_grpo", KernelKind.PPO_CLIP, MAX_LENGTH, _CLIP_METRICS, _CLIP_OPTIONS))
register(LossType("dapo", KernelKind.PPO_CLIP, NUM_ITEMS, _CLIP_METRICS, _CLIP_OPTIONS))
register(
    LossType(
        "cispo", KernelKind.CISPO, NUM_ITEMS, KIND_METRICS[KernelKind.CISPO], ("epsilon_high",), sequence_level=False
    )
)
register(
    LossType(
        "sapo",
        KernelKind.SAPO,
        PER_ROW_MEAN,
        options=("sapo_temperature_pos", "sapo_temperature_neg"),
        nonzero_options=("sapo_temperature_pos", "sapo_temperature_neg"),
    )
)
register(LossType("luspo", KernelKind.PPO_CLIP, ROW_SUM_MEAN, _CLIP_METRICS, _CLIP_OPTIONS))
register(
    LossType(
        "vespo",
        KernelKind.VESPO,
        NUM_ITEMS,
        KIND_METRICS[KernelKind.VESPO],
        ("vespo_k_pos", "vespo_lambda_pos", "vespo_k_neg", "vespo_lambda_neg"),
        isr_per_sequence=False,
    )
)

# Snapshots of the built-in types for callers outside the loss (the trainer integration, the public API). Code
# inside the loss calls get() instead, so a type registered later is seen everywhere.
TRL_LOSS_TYPES = names()
DEFAULT_LOSS_TYPE = "dapo"  # trl's GRPOConfig.loss_type default
NUM_ITEMS_LOSSES = names_where(lambda e: e.normaliser is NUM_ITEMS)
