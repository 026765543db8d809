"""Public functional API: ``linear_logprobs``."""

from __future__ import annotations

from dataclasses import fields
from typing import Literal, NamedTuple

import torch

from . import env
from ._log import log_once
from .autograd import LinearLogProbsFunction
from .checks import check_linear_logprobs_inputs, compute_dtype_for
from .options import LogProbOptions

Backend = Literal["auto", "triton", "torch"]
BACKENDS = ("auto", "triton", "torch")


class LogProbs(NamedTuple):
    """Per-token outputs of :func:`linear_logprobs`, each of the targets' shape and None unless asked for.

    ``logp`` (always), ``entropy``, ``log_sum_sq_probs`` and ``mean_logits`` are fp32, 0 at ``ignore_index``;
    ``is_top1`` is bool, False there. Only ``logp`` and ``entropy`` are differentiable.
    """

    logp: torch.Tensor
    entropy: torch.Tensor | None
    log_sum_sq_probs: torch.Tensor | None = None
    mean_logits: torch.Tensor | None = None
    is_top1: torch.Tensor | None = None


def triton_interpreter_enabled() -> bool:
    return env.triton_interpret()


def _triton_importable() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def _unsupported_reason(device: torch.device) -> str | None:
    from .launch_config import unsupported_reason  # imports triton

    return unsupported_reason(device)


def _unless_unsupported(device: torch.device) -> str:
    """The Triton backend, or the torch path (said once) on a GPU the kernels do not support (older than sm_75)."""
    reason = _unsupported_reason(device)
    if reason is None:
        return "triton"
    log_once(f"unsupported-gpu|{reason}", f"fastgrpo: {reason}; using the slower chunked torch path")
    return "torch"


def resolve_backend(backend: str, device: torch.device) -> str:
    """Map ``backend`` to "triton" or "torch" for tensors on ``device``, or raise a ValueError saying why not."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    gpu = device.type in ("cuda", "xpu")
    if backend == "torch":
        return "torch"
    if backend == "triton":
        if not _triton_importable():
            raise ValueError("backend='triton' needs the triton package, which is not importable")
        if not gpu and not triton_interpreter_enabled():
            raise ValueError(
                f"backend='triton' on a {device.type} tensor needs TRITON_INTERPRET=1 set before triton is imported; "
                "use backend='torch' or 'auto' on CPU"
            )
        if (reason := _unsupported_reason(device)) is not None:
            raise ValueError(f"backend='triton': {reason}")
        return "triton"
    if gpu or (device.type == "cpu" and triton_interpreter_enabled()):
        if _triton_importable():
            return _unless_unsupported(device)
        log_once("no-triton", "fastgrpo: triton is not importable; using the slower chunked torch path")
    return "torch"


def linear_logprobs(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    *,
    bias: torch.Tensor | None = None,
    temperature: float = 1.0,
    logit_scale: float = 1.0,
    softcap: float | None = None,
    ignore_index: int = -100,
    return_entropy: bool = False,
    return_log_sum_sq_probs: bool = False,
    return_mean_logits: bool = False,
    return_is_top1: bool = False,
    backend: Backend = "auto",
    options: LogProbOptions | None = None,
) -> LogProbs:
    """Log-probabilities of ``targets`` under ``softmax(z)``, ``z`` the lm_head logits, without materializing them.

    Equivalent torch (materializing ``[..., V]``)::

        y = hidden @ weight.T + bias
        z = softcap * tanh(logit_scale * y / softcap) / temperature   # no tanh when softcap is None
        logp = z.log_softmax(-1).gather(-1, targets[..., None])[..., 0]
        entropy = -(z.softmax(-1) * z.log_softmax(-1)).sum(-1)
        log_sum_sq_probs = (2 * z.log_softmax(-1)).logsumexp(-1)       # log sum_v p_v^2 (DPO's WPO weights)
        mean_logits = z.mean(-1)                                          # of the transformed logits z
        is_top1 = z.argmax(-1) == targets                                 # first maximum: ties go to the lowest index
        # fp32 (is_top1 bool), and 0 (False) where targets == ignore_index

    Args:
        hidden: ``[..., H]`` float32 / bfloat16 / float16.
        weight: ``[V, H]`` lm_head weight.
        targets: integer tensor of shape ``hidden.shape[:-1]``, values in ``[0, V)`` or ``ignore_index``.
        bias: ``[V]`` or None.
        return_entropy, return_log_sum_sq_probs, return_mean_logits, return_is_top1: also return that output
            (computed in the same pass over the vocabulary; None in the result otherwise). The last three are
            non-differentiable, as in trl.
        backend: "triton" (GPU, or CPU under TRITON_INTERPRET=1), "torch" (chunked pure torch), or "auto".
        options: a :class:`LogProbOptions` holding every option at once, instead of the option keywords (which
            must then keep their defaults); the object travels unchanged to both backends.

    Differentiable with respect to hidden, weight and bias; gradients are computed only for inputs that require
    them, and a frozen head (weight and bias not requiring grad) costs no backward matmul for ``logp``.
    """
    keywords = LogProbOptions(
        temperature=temperature,
        logit_scale=logit_scale,
        softcap=softcap,
        ignore_index=ignore_index,
        return_entropy=return_entropy,
        return_log_sum_sq_probs=return_log_sum_sq_probs,
        return_mean_logits=return_mean_logits,
        return_is_top1=return_is_top1,
    )
    opts = keywords if options is None else _options_alone(options, keywords)
    # Data-dependent range check needs a host sync; under torch.compile it would break the graph.
    check_linear_logprobs_inputs(
        hidden, weight, targets, bias, opts.ignore_index, check_target_range=not torch.compiler.is_compiling()
    )
    impl = resolve_backend(backend, hidden.device)
    compute_dtype = compute_dtype_for(hidden, weight)
    lead = hidden.shape[:-1]
    flat_hidden = hidden.reshape(-1, hidden.shape[-1])
    flat_targets = targets.reshape(-1)
    frozen_head = not weight.requires_grad and (bias is None or not bias.requires_grad)
    accumulate_softmax_w = torch.is_grad_enabled() and hidden.requires_grad and frozen_head
    if accumulate_softmax_w and impl == "triton":
        from . import launch_config  # a tuned table may route this shape to the recompute backward

        accumulate_softmax_w = launch_config.current().frozen_head_identity(flat_hidden, compute_dtype)
    logp, entropy, log_sum_sq, mean_logits, is_top1 = LinearLogProbsFunction.apply(
        flat_hidden, weight, bias, flat_targets, opts, compute_dtype, impl, accumulate_softmax_w
    )
    asked = lambda t, flag: t.view(lead) if flag else None  # noqa: E731
    return LogProbs(
        logp.view(lead),
        asked(entropy, opts.return_entropy),
        asked(log_sum_sq, opts.return_log_sum_sq_probs),
        asked(mean_logits, opts.return_mean_logits),
        asked(is_top1, opts.return_is_top1),
    )


def _options_alone(options: LogProbOptions, keywords: LogProbOptions) -> LogProbOptions:
    """``options``, after checking that no option keyword was also changed from its default."""
    if not isinstance(options, LogProbOptions):
        raise TypeError(f"options must be a LogProbOptions or None, got {type(options).__name__}")
    changed = [f.name for f in fields(LogProbOptions) if getattr(keywords, f.name) != f.default]
    if changed:
        raise TypeError(f"pass either options= or option keywords, not both (also got {changed})")
    return options
