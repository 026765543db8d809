"""torch.library custom ops wrapping the two backends, so the public functions trace under torch.compile.

``fastgrpo::linear_logprobs_fwd`` / ``fastgrpo::linear_logprobs_bwd`` take flat [N, H] inputs and the options as
scalars; the backend is chosen by the caller (``backend`` is a string argument).
"""

from __future__ import annotations

import torch

from . import torch_backend
from .backward import linear_logprobs_backward
from .options import LogProbOptions


def _opts(temperature: float, logit_scale: float, softcap: float | None, ignore_index: int, return_entropy: bool):
    return LogProbOptions(temperature, logit_scale, softcap, ignore_index, return_entropy)


def _impl(backend: str):
    if backend == "triton":
        from . import triton_backend

        return triton_backend
    return torch_backend


@torch.library.custom_op("fastgrpo::linear_logprobs_fwd", mutates_args=())
def linear_logprobs_fwd(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    targets: torch.Tensor,
    temperature: float,
    logit_scale: float,
    softcap: float | None,
    ignore_index: int,
    return_entropy: bool,
    accumulate_softmax_w: bool,
    compute_dtype: torch.dtype,
    backend: str,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    opts = _opts(temperature, logit_scale, softcap, ignore_index, return_entropy)
    # The caller resolved autocast into compute_dtype; inside, every op runs at the precision the backend chose.
    with torch.autocast(hidden.device.type, enabled=False):
        return _impl(backend).forward(hidden, weight, bias, targets, opts, compute_dtype, accumulate_softmax_w)


@linear_logprobs_fwd.register_fake
def _(
    hidden,
    weight,
    bias,
    targets,
    temperature,
    logit_scale,
    softcap,
    ignore_index,
    return_entropy,
    accumulate_softmax_w,
    compute_dtype,
    backend,
):
    n, h = hidden.shape
    f = lambda *shape: hidden.new_empty(shape, dtype=torch.float32)  # noqa: E731
    return (
        f(n),
        f(n if return_entropy else 0),
        f(n),
        f(n, h) if accumulate_softmax_w else f(0),
        f(n if accumulate_softmax_w else 0),
    )


@torch.library.custom_op("fastgrpo::linear_logprobs_bwd", mutates_args=())
def linear_logprobs_bwd(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    targets: torch.Tensor,
    lse: torch.Tensor,
    entropy: torch.Tensor,
    softmax_w: torch.Tensor,
    target_scale: torch.Tensor,
    grad_logp: torch.Tensor | None,
    grad_entropy: torch.Tensor | None,
    temperature: float,
    logit_scale: float,
    softcap: float | None,
    ignore_index: int,
    compute_dtype: torch.dtype,
    backend: str,
    needs_hidden_grad: bool,
    needs_weight_grad: bool,
    needs_bias_grad: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    opts = _opts(temperature, logit_scale, softcap, ignore_index, entropy.numel() > 0)
    with torch.autocast(hidden.device.type, enabled=False):
        gx, gw, gb = linear_logprobs_backward(
            _impl(backend),
            hidden,
            weight,
            bias,
            targets,
            lse,
            entropy,
            softmax_w,
            target_scale,
            grad_logp,
            grad_entropy,
            opts,
            compute_dtype,
            (needs_hidden_grad, needs_weight_grad, needs_bias_grad),
        )
    # Custom ops cannot return None: an empty tensor stands for "no gradient".
    # Each placeholder is its own tensor: custom op outputs may not alias one another.
    return tuple(hidden.new_empty(0) if g is None else g for g in (gx, gw, gb))


@linear_logprobs_bwd.register_fake
def _(
    hidden,
    weight,
    bias,
    targets,
    lse,
    entropy,
    softmax_w,
    target_scale,
    grad_logp,
    grad_entropy,
    temperature,
    logit_scale,
    softcap,
    ignore_index,
    compute_dtype,
    backend,
    needs_hidden_grad,
    needs_weight_grad,
    needs_bias_grad,
):
    return (
        torch.empty_like(hidden) if needs_hidden_grad else hidden.new_empty(0),
        torch.empty_like(weight) if needs_weight_grad else hidden.new_empty(0),
        torch.empty_like(bias) if needs_bias_grad and bias is not None else hidden.new_empty(0),
    )
