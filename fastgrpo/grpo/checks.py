"""Input validation for ``grpo_loss``: every check runs before any kernel launches."""

from __future__ import annotations

import torch

from . import registry
from .options import GRPOLossOptions
from .tensors import GRPOTensors

_FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16, torch.float64)


def _check_tensor(name: str, t: object, *, floating: bool = True) -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if floating and t.dtype not in _FLOAT_DTYPES:
        raise TypeError(f"{name} must be a float32, bfloat16, float16 or float64 tensor, got {t.dtype}")
    if not floating and (t.dtype.is_complex):
        raise TypeError(f"{name} must be a bool, integer or float tensor, got {t.dtype}")
    return t


def _check_same_shape(name: str, t: torch.Tensor, shape: tuple[int, ...], what: str = "per_token_logps") -> None:
    if tuple(t.shape) != shape:
        raise ValueError(f"{name} must have the shape of {what} [B, T] = {shape}, got {tuple(t.shape)}")


def check_grpo_inputs(
    opts: GRPOLossOptions,
    per_token_logps: torch.Tensor,
    advantages: torch.Tensor,
    completion_mask: torch.Tensor,
    *,
    old_per_token_logps: torch.Tensor | None,
    ref_per_token_logps: torch.Tensor | None,
    importance_sampling_ratio: torch.Tensor | None,
    sampling_per_token_logps: torch.Tensor | None,
    num_items_in_batch: torch.Tensor | int | float | None,
    entropies: torch.Tensor | None,
    entropy_mask: torch.Tensor | None,
) -> GRPOTensors:
    """Raise TypeError/ValueError naming the argument, or return the inputs bundled (num_items as a 0-d tensor)."""
    _check_tensor("per_token_logps", per_token_logps)
    if per_token_logps.dim() != 2:
        raise ValueError(f"per_token_logps must have shape [B, T], got {tuple(per_token_logps.shape)}")
    bsz, seqlen = per_token_logps.shape
    if bsz == 0 or seqlen == 0:
        raise ValueError(f"per_token_logps must be non-empty [B, T], got {tuple(per_token_logps.shape)}")
    shape = (bsz, seqlen)
    device = per_token_logps.device

    _check_tensor("advantages", advantages)
    if tuple(advantages.shape) not in ((bsz,), (bsz, 1)):
        raise ValueError(
            f"advantages must have shape [B] = ({bsz},) or [B, 1] = ({bsz}, 1) to match per_token_logps [B, T] = "
            f"{shape}, got {tuple(advantages.shape)} (per-token advantages are not supported)"
        )
    _check_tensor("completion_mask", completion_mask, floating=False)
    _check_same_shape("completion_mask", completion_mask, shape)

    optional = {
        "old_per_token_logps": old_per_token_logps,
        "ref_per_token_logps": ref_per_token_logps,
        "sampling_per_token_logps": sampling_per_token_logps,
        "entropies": entropies,
    }
    for name, t in optional.items():
        if t is not None:
            _check_tensor(name, t)
            _check_same_shape(name, t, shape)
    if entropy_mask is not None:
        _check_tensor("entropy_mask", entropy_mask, floating=False)
        _check_same_shape("entropy_mask", entropy_mask, shape)
    if importance_sampling_ratio is not None:
        _check_tensor("importance_sampling_ratio", importance_sampling_ratio)
        per_seq = opts.entry.isr_per_sequence
        allowed = [(bsz, seqlen), (bsz, 1)] if per_seq else [(bsz, seqlen)]
        if tuple(importance_sampling_ratio.shape) not in allowed:
            why = " or per sequence [B, 1]" if per_seq else f"; {opts.loss_type} needs token-level ratios"
            raise ValueError(
                f"importance_sampling_ratio must have shape {' or '.join(str(s) for s in allowed)} (per token [B, T]"
                f"{why}), got {tuple(importance_sampling_ratio.shape)}"
            )

    if opts.has_kl and ref_per_token_logps is None:
        raise ValueError(f"beta={opts.beta} adds a KL term: pass ref_per_token_logps ([B, T] reference log-probs)")
    if opts.has_entropy_bonus and entropies is None:
        raise ValueError(f"entropy_coef={opts.entropy_coef} adds an entropy bonus: pass entropies ([B, T])")
    num_items = None
    if opts.needs_num_items:
        if num_items_in_batch is None:
            others = registry.names_where(lambda e: "num_items_in_batch" not in e.tensors)
            raise ValueError(
                f"loss_type={opts.loss_type!r} divides by {opts.entry.normaliser.divisor}: pass num_items_in_batch; "
                f"loss types that do not need it: {others}"
            )
        if isinstance(num_items_in_batch, torch.Tensor):
            if num_items_in_batch.numel() != 1:
                raise ValueError(
                    f"num_items_in_batch must be a number or a one-element tensor, got shape "
                    f"{tuple(num_items_in_batch.shape)}"
                )
            num_items = num_items_in_batch.reshape(()).to(device=device, dtype=torch.float32)
        elif isinstance(num_items_in_batch, (int, float)) and not isinstance(num_items_in_batch, bool):
            num_items = torch.tensor(float(num_items_in_batch), dtype=torch.float32, device=device)
        else:
            raise TypeError(f"num_items_in_batch must be a number or a tensor, got {type(num_items_in_batch).__name__}")

    everything = {
        "advantages": advantages,
        "completion_mask": completion_mask,
        **optional,
        "entropy_mask": entropy_mask,
        "importance_sampling_ratio": importance_sampling_ratio,
    }
    for name, t in everything.items():
        if t is not None and t.device != device:
            raise ValueError(f"{name} ({t.device}) must be on per_token_logps' device ({device})")
    return GRPOTensors(
        per_token_logps,
        advantages,
        completion_mask,
        old_per_token_logps,
        ref_per_token_logps,
        importance_sampling_ratio,
        sampling_per_token_logps,
        entropies,
        entropy_mask,
        num_items,
    )
