"""Input validation for the public ops: every check runs before any kernel launches."""

from __future__ import annotations

import torch

_FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16, torch.float64)
_LOW_PRECISION = (torch.bfloat16, torch.float16)


def compute_dtype_for(hidden: torch.Tensor, weight: torch.Tensor) -> torch.dtype:
    """The dtype the projection runs in: autocast's when it is on (as in trl), else the promoted input dtype."""
    if torch.is_autocast_enabled(hidden.device.type):
        return torch.get_autocast_dtype(hidden.device.type)
    return torch.promote_types(hidden.dtype, weight.dtype)


def check_linear_logprobs_inputs(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    bias: torch.Tensor | None,
    ignore_index: int,
    *,
    check_target_range: bool = True,
) -> None:
    """Raise TypeError/ValueError naming the argument when the inputs do not fit ``linear_logprobs``."""
    for name, t in (("hidden", hidden), ("weight", weight), ("targets", targets)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if hidden.dtype not in _FLOAT_DTYPES:
        raise TypeError(f"hidden must be float32, bfloat16, float16 or float64, got {hidden.dtype}")
    if weight.dtype not in _FLOAT_DTYPES:
        raise TypeError(f"weight must be float32, bfloat16, float16 or float64, got {weight.dtype}")
    if hidden.dtype in _LOW_PRECISION and weight.dtype in _LOW_PRECISION and hidden.dtype != weight.dtype:
        raise TypeError(
            f"hidden ({hidden.dtype}) and weight ({weight.dtype}) are different 16-bit formats and cannot be mixed; "
            "cast one of them"
        )
    if hidden.dim() < 1:
        raise ValueError("hidden must have shape [..., H], got a 0-d tensor")
    if weight.dim() != 2:
        raise ValueError(f"weight must have shape [V, H], got {tuple(weight.shape)} ({weight.dim()}-d)")
    vocab, h = weight.shape
    if hidden.shape[-1] != h:
        raise ValueError(
            f"hidden's last dimension ({hidden.shape[-1]}) must equal weight's hidden size H={h} "
            f"(weight has shape [V, H] = {tuple(weight.shape)})"
        )
    if vocab == 0 or h == 0:
        raise ValueError(f"weight must be non-empty, got shape {tuple(weight.shape)}")
    if targets.dtype.is_floating_point or targets.dtype.is_complex or targets.dtype == torch.bool:
        raise TypeError(f"targets must be an integer tensor (token ids), got {targets.dtype}")
    if tuple(targets.shape) != tuple(hidden.shape[:-1]):
        raise ValueError(
            f"targets must have shape hidden.shape[:-1] = {tuple(hidden.shape[:-1])}, got {tuple(targets.shape)}"
        )
    if weight.device != hidden.device:
        raise ValueError(f"hidden ({hidden.device}) and weight ({weight.device}) must be on the same device")
    if targets.device != hidden.device:
        raise ValueError(f"targets ({targets.device}) must be on hidden's device ({hidden.device})")
    if bias is not None:
        if not isinstance(bias, torch.Tensor):
            raise TypeError(f"bias must be a torch.Tensor or None, got {type(bias).__name__}")
        if bias.dtype not in _FLOAT_DTYPES:
            raise TypeError(f"bias must be a float tensor, got {bias.dtype}")
        if tuple(bias.shape) != (vocab,):
            raise ValueError(f"bias must have shape [V] = ({vocab},), got {tuple(bias.shape)}")
        if bias.device != hidden.device:
            raise ValueError(f"bias ({bias.device}) must be on hidden's device ({hidden.device})")
    if check_target_range and targets.numel() > 0:
        # One reduction and one sync: cheap next to the projection, and it turns an out-of-bounds read into an error.
        valid = targets != ignore_index
        bad = valid & ((targets < 0) | (targets >= vocab))
        if bool(bad.any()):
            first = targets[bad][0].item()
            raise ValueError(f"targets must be in [0, V={vocab}) or ignore_index={ignore_index}; found {first}")
