"""torch.library custom ops wrapping the two backends, so the public functions trace under torch.compile.

``fastgrpo::linear_logprobs_fwd`` / ``fastgrpo::linear_logprobs_bwd`` take flat [N, H] inputs; the backend is chosen
by the caller (``backend`` is a string argument). A custom op's schema holds only tensors and scalars, so this module
is the one place a :class:`LogProbOptions` is flattened (one schema argument per dataclass field, the schema text
generated from the fields) and rebuilt: :func:`logprobs_forward` / :func:`logprobs_backward` take the options object
from ``autograd.py``, and the backends receive it again. A new ``LogProbOptions`` field needs no change here.
"""

from __future__ import annotations

import dataclasses
import typing

import torch

from . import torch_backend
from .backward import linear_logprobs_backward
from .options import LogProbOptions

OPTION_FIELDS = tuple(f.name for f in dataclasses.fields(LogProbOptions))
_SCHEMA_TYPES = {float: "float", int: "SymInt", bool: "bool"}


def _schema_type(hint: object) -> str:
    """The schema type of one ``LogProbOptions`` field: float / int / bool, optionally ``| None``."""
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    base = args[0] if args else hint
    if base not in _SCHEMA_TYPES or len(args) > 1:
        raise TypeError(f"LogProbOptions fields must be float, int or bool (optionally | None), got {hint}")
    return _SCHEMA_TYPES[base] + ("?" if typing.get_args(hint) else "")


_HINTS = typing.get_type_hints(LogProbOptions)
OPTIONS_SCHEMA = ", ".join(f"{_schema_type(_HINTS[name])} {name}" for name in OPTION_FIELDS)


def _flatten(opts: LogProbOptions) -> tuple:
    return tuple(getattr(opts, name) for name in OPTION_FIELDS)


def _rebuild(values: tuple) -> LogProbOptions:
    return LogProbOptions(**dict(zip(OPTION_FIELDS, values)))


def _impl(backend: str):
    if backend == "triton":
        from . import triton_backend

        return triton_backend
    return torch_backend


# ---- forward: (hidden, weight, bias, targets, *options, accumulate_softmax_w, return_row_argmax, compute_dtype,
#                backend). return_row_argmax: the row max and its first column, which a vocabulary shard exchanges
#                for is_top1 under tensor parallelism (vocab_parallel.py); internal, not a LogProbOptions field.
_FWD_TENSORS = 4
_FWD_OUTPUTS = 10
_FWD_SCHEMA = (
    f"(Tensor hidden, Tensor weight, Tensor? bias, Tensor targets, {OPTIONS_SCHEMA}, bool accumulate_softmax_w, "
    f"bool return_row_argmax, ScalarType compute_dtype, str backend) -> ({', '.join(['Tensor'] * _FWD_OUTPUTS)})"
)


def _fwd_args(args: tuple) -> tuple:
    """(tensors, options, accumulate_softmax_w, return_row_argmax, compute_dtype, backend) from the op's flat
    arguments."""
    k = _FWD_TENSORS + len(OPTION_FIELDS)
    return args[:_FWD_TENSORS], _rebuild(args[_FWD_TENSORS:k]), *args[k:]


@torch.library.custom_op("fastgrpo::linear_logprobs_fwd", mutates_args=(), schema=_FWD_SCHEMA)
def linear_logprobs_fwd(*args):
    (hidden, weight, bias, targets), opts, accumulate_softmax_w, row_argmax, compute_dtype, backend = _fwd_args(args)
    # The caller resolved autocast into compute_dtype; inside, every op runs at the precision the backend chose.
    with torch.autocast(hidden.device.type, enabled=False):
        return _impl(backend).forward(
            hidden, weight, bias, targets, opts, compute_dtype, accumulate_softmax_w, return_row_argmax=row_argmax
        )


@linear_logprobs_fwd.register_fake
def _(*args):
    (hidden, _, _, _), opts, accumulate_softmax_w, row_argmax, _, _ = _fwd_args(args)
    n, h = hidden.shape
    f = lambda *shape: hidden.new_empty(shape, dtype=torch.float32)  # noqa: E731
    return (
        f(n),
        f(n if opts.return_entropy else 0),
        f(n),
        f(n, h) if accumulate_softmax_w else f(0),
        f(n if accumulate_softmax_w else 0),
        f(n if opts.return_log_sum_sq_probs else 0),
        f(n if opts.return_mean_logits else 0),
        hidden.new_empty(n if opts.return_is_top1 else 0, dtype=torch.bool),
        f(n if row_argmax else 0),
        hidden.new_empty(n if row_argmax else 0, dtype=torch.int32),
    )


def logprobs_forward(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    targets: torch.Tensor,
    opts: LogProbOptions,
    accumulate_softmax_w: bool,
    compute_dtype: torch.dtype,
    backend: str,
    return_row_argmax: bool = False,
) -> tuple[torch.Tensor, ...]:
    """``(logp, entropy, lse, softmax_w, target_scale, log_sum_sq_probs, mean_logits, is_top1, row_max, argmax)``
    through the forward custom op (see ``torch_backend.forward``)."""
    return linear_logprobs_fwd(
        hidden, weight, bias, targets, *_flatten(opts), accumulate_softmax_w, return_row_argmax, compute_dtype, backend
    )


# ---- backward: (hidden, weight, bias, targets, lse, entropy, softmax_w, target_scale, grad_logp, grad_entropy,
#                 *options, compute_dtype, backend, needs_hidden_grad, needs_weight_grad, needs_bias_grad)
_BWD_TENSORS = 10
_BWD_SCHEMA = (
    "(Tensor hidden, Tensor weight, Tensor? bias, Tensor targets, Tensor lse, Tensor entropy, Tensor softmax_w, "
    f"Tensor target_scale, Tensor? grad_logp, Tensor? grad_entropy, {OPTIONS_SCHEMA}, ScalarType compute_dtype, "
    "str backend, bool needs_hidden_grad, bool needs_weight_grad, bool needs_bias_grad) -> (Tensor, Tensor, Tensor)"
)


def _bwd_args(args: tuple) -> tuple:
    """(tensors, options, compute_dtype, backend, needs) from the op's flat arguments."""
    k = _BWD_TENSORS + len(OPTION_FIELDS)
    compute_dtype, backend, *needs = args[k:]
    return args[:_BWD_TENSORS], _rebuild(args[_BWD_TENSORS:k]), compute_dtype, backend, tuple(needs)


@torch.library.custom_op("fastgrpo::linear_logprobs_bwd", mutates_args=(), schema=_BWD_SCHEMA)
def linear_logprobs_bwd(*args):
    tensors, opts, compute_dtype, backend, needs = _bwd_args(args)
    hidden = tensors[0]
    with torch.autocast(hidden.device.type, enabled=False):
        gx, gw, gb = linear_logprobs_backward(_impl(backend), *tensors, opts, compute_dtype, needs)
    # Custom ops cannot return None: an empty tensor stands for "no gradient".
    # Each placeholder is its own tensor: custom op outputs may not alias one another.
    return tuple(hidden.new_empty(0) if g is None else g for g in (gx, gw, gb))


@linear_logprobs_bwd.register_fake
def _(*args):
    (hidden, weight, bias, *_), _, _, _, (need_x, need_w, need_b) = _bwd_args(args)
    return (
        torch.empty_like(hidden) if need_x else hidden.new_empty(0),
        torch.empty_like(weight) if need_w else hidden.new_empty(0),
        torch.empty_like(bias) if need_b and bias is not None else hidden.new_empty(0),
    )


def logprobs_backward(
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
    opts: LogProbOptions,
    compute_dtype: torch.dtype,
    backend: str,
    needs: tuple[bool, bool, bool],
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients for (hidden, weight, bias) through the backward custom op; an empty tensor where not needed."""
    tensors = (hidden, weight, bias, targets, lse, entropy, softmax_w, target_scale, grad_logp, grad_entropy)
    return linear_logprobs_bwd(*tensors, *_flatten(opts), compute_dtype, backend, *needs)
