"""Non-tensor options of the fused lm_head log-prob op, passed as one frozen dataclass."""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class LogProbOptions:
    """How logits are formed from the projection, and what the op returns.

    The logits are ``z = softcap * tanh(logit_scale * (hidden @ weight.T + bias) / softcap) / temperature``
    (no tanh when ``softcap`` is None): the order of operations of trl's fused head.

    ``return_entropy`` asks for the differentiable entropy; ``return_log_sum_sq_probs`` (``log sum_v p_v^2``),
    ``return_mean_logits`` (``sum_v z_v / V``) and ``return_is_top1`` (the target is the first argmax of ``z``) for
    trl's three non-differentiable outputs. Each is computed in the same pass, only when asked.
    """

    temperature: float = 1.0
    logit_scale: float = 1.0
    softcap: float | None = None
    ignore_index: int = -100
    return_entropy: bool = False
    return_log_sum_sq_probs: bool = False
    return_mean_logits: bool = False
    return_is_top1: bool = False

    def __post_init__(self) -> None:
        for name in ("temperature", "logit_scale"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise TypeError(f"{name} must be a Python float, got {type(value).__name__}")
            if not math.isfinite(value):
                raise ValueError(f"{name} must be finite, got {value}")
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        if self.softcap is not None:
            if isinstance(self.softcap, bool) or not isinstance(self.softcap, (int, float)):
                raise TypeError(f"softcap must be a positive float or None, got {type(self.softcap).__name__}")
            if not (math.isfinite(self.softcap) and self.softcap > 0):
                raise ValueError(f"softcap must be a positive finite float or None, got {self.softcap}")
        for name in ("return_log_sum_sq_probs", "return_mean_logits", "return_is_top1"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"{name} must be a bool, got {type(getattr(self, name)).__name__}")
        if isinstance(self.ignore_index, bool) or not isinstance(self.ignore_index, int):
            raise TypeError(f"ignore_index must be an int, got {type(self.ignore_index).__name__}")

    @property
    def has_softcap(self) -> bool:
        return self.softcap is not None

    @property
    def has_extras(self) -> bool:
        """Any of the three non-differentiable outputs is asked for."""
        return self.return_log_sum_sq_probs or self.return_mean_logits or self.return_is_top1

    @property
    def inv_temperature(self) -> float:
        return 1.0 / float(self.temperature)
