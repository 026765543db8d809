"""Non-tensor options of the GRPO loss, carried as one frozen dataclass whose names mirror trl's ``GRPOConfig``."""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

from . import registry

LOSS_TYPES = registry.TRL_LOSS_TYPES  # trl's loss types; fastgrpo.grpo.registry may hold more
IMPORTANCE_SAMPLING_LEVELS = ("token", "sequence")


def _check_number(name: str, value: object, *, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        kind = "a float or None" if allow_none else "a float"
        raise TypeError(f"{name} must be {kind}, got {type(value).__name__}")
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")


def _check_positive_int(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < 1:
        raise ValueError(f"{name} must be >= 1, got {value}")


@dataclass(frozen=True)
class GRPOLossOptions:
    """Every non-tensor option of :func:`fastgrpo.grpo_loss`; defaults are trl's ``GRPOConfig`` defaults.

    Exceptions: ``max_completion_length`` has no default (only ``dr_grpo`` reads it and it must match the trainer's),
    and ``steps_per_generation=None`` means ``gradient_accumulation_steps``, as trl resolves it. ``entropy_coef`` is the
    coefficient applied this step (trl's adaptive controller, if used, is the caller's business). For an evaluation
    step pass ``gradient_accumulation_steps=1`` and ``steps_per_generation=1`` (trl's eval mode).
    """

    loss_type: str = registry.DEFAULT_LOSS_TYPE
    importance_sampling_level: str = "token"
    beta: float = 0.0
    epsilon: float = 0.2
    epsilon_high: float | None = None
    delta: float | None = None
    use_bias_correction_kl: bool = True
    max_completion_length: int | None = None
    off_policy_mask_threshold: float | None = None
    sapo_temperature_pos: float = 1.0
    sapo_temperature_neg: float = 1.05
    vespo_k_pos: float = 2.0
    vespo_lambda_pos: float = 3.0
    vespo_k_neg: float = 3.0
    vespo_lambda_neg: float = 2.0
    entropy_coef: float = 0.0
    gradient_accumulation_steps: int = 1
    steps_per_generation: int | None = None
    num_processes: int = 1

    def __post_init__(self) -> None:
        entry = registry.get(self.loss_type)  # ValueError naming the registered types
        if self.importance_sampling_level not in IMPORTANCE_SAMPLING_LEVELS:
            raise ValueError(
                f"importance_sampling_level must be one of {IMPORTANCE_SAMPLING_LEVELS}, "
                f"got {self.importance_sampling_level!r}"
            )
        if self.importance_sampling_level == "sequence" and not entry.sequence_level:
            raise ValueError(
                f"loss_type={self.loss_type!r} is defined on token-level ratios only, not with "
                "importance_sampling_level='sequence'; use importance_sampling_level='token', or a loss_type in "
                f"{registry.names_where(lambda e: e.sequence_level)} for sequence-level (GSPO) ratios"
            )
        for name in (
            "beta",
            "epsilon",
            "sapo_temperature_pos",
            "sapo_temperature_neg",
            "vespo_k_pos",
            "vespo_lambda_pos",
            "vespo_k_neg",
            "vespo_lambda_neg",
            "entropy_coef",
        ):
            _check_number(name, getattr(self, name))
        for name in ("epsilon_high", "delta", "off_policy_mask_threshold"):
            _check_number(name, getattr(self, name), allow_none=True)
        if not isinstance(self.use_bias_correction_kl, bool):
            raise TypeError(f"use_bias_correction_kl must be a bool, got {type(self.use_bias_correction_kl).__name__}")
        zero = [name for name in entry.nonzero_options if getattr(self, name) == 0]
        if zero:
            raise ValueError(
                f"{' and '.join(entry.nonzero_options)} must be non-zero (loss_type={self.loss_type!r} divides by "
                f"them), got {', '.join(f'{n}=0' for n in zero)}"
            )
        if self.max_completion_length is not None:
            _check_positive_int("max_completion_length", self.max_completion_length)
        for name in entry.required_options:
            if getattr(self, name) is None:
                raise ValueError(
                    f"loss_type={self.loss_type!r} divides by {entry.normaliser.divisor}: pass {name} "
                    f"(trl's GRPOConfig.{name})"
                )
        _check_positive_int("gradient_accumulation_steps", self.gradient_accumulation_steps)
        if self.steps_per_generation is not None:
            _check_positive_int("steps_per_generation", self.steps_per_generation)
        _check_positive_int("num_processes", self.num_processes)

    @classmethod
    def names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls))

    @property
    def epsilon_low(self) -> float:
        return float(self.epsilon)

    @property
    def resolved_epsilon_high(self) -> float:
        """trl: ``epsilon_high if epsilon_high is not None else epsilon``."""
        return float(self.epsilon if self.epsilon_high is None else self.epsilon_high)

    @property
    def resolved_steps_per_generation(self) -> int:
        return self.gradient_accumulation_steps if self.steps_per_generation is None else self.steps_per_generation

    @property
    def has_kl(self) -> bool:
        return self.beta != 0.0

    @property
    def has_entropy_bonus(self) -> bool:
        return self.entropy_coef != 0.0

    @property
    def entry(self) -> registry.LossType:
        """This loss type's declaration in ``fastgrpo.grpo.registry``."""
        return registry.get(self.loss_type)

    @property
    def needs_num_items(self) -> bool:
        return "num_items_in_batch" in self.entry.tensors
