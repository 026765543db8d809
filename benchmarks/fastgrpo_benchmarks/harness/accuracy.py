"""Max error of each implementation against the float64 eager reference, at the suite's small accuracy shape.

Inputs in the suite's dtype; the reference sees the same values upcast to float64 (``fastgrpo.reference``).
``err_value``: max |log p - ref| in nats for the op modes; |loss - ref| / |ref| for the GRPO mode.
``err_grad``: max over the gradients the mode produces (hidden, and weight for a trainable head) of
max |g - g_ref| / max |g_ref|: an error relative to the gradient's scale.
"""

from __future__ import annotations

import torch

from fastgrpo.options import LogProbOptions
from fastgrpo.reference import reference_linear_logprobs

from ..peers.base import Outputs, Runner
from .grpo_math import grpo_loss_from_logps
from .inputs import InputSet, make_input_set, make_weight
from .metrics import max_abs_error
from .suites import FORWARD_MODES, OpShape


def _scaled_error(got: torch.Tensor | None, ref: torch.Tensor | None) -> float:
    if got is None or ref is None:
        return float("nan") if (got is None) != (ref is None) else 0.0
    scale = ref.abs().max().item() or 1.0
    return (got.double() - ref).abs().max().item() / scale


def reference_outputs(s: InputSet, mode: str) -> Outputs:
    """The float64 ground truth of one call of ``mode`` on ``s``."""
    h = s.hidden.detach().double().requires_grad_(mode not in FORWARD_MODES)
    w = s.weight.detach().double().requires_grad_(mode in ("fwd_bwd", "grpo"))
    logp, _ = reference_linear_logprobs(
        h.reshape(-1, h.shape[-1]), w, s.targets.reshape(-1), None, LogProbOptions(), torch.float64
    )
    logp = logp.view(s.targets.shape)
    if mode in FORWARD_MODES:
        return Outputs(logp.detach(), None, None)
    if mode == "grpo":
        loss = grpo_loss_from_logps(logp, s.ref_logp.double(), s.advantages.double(), s.mask)
        loss.backward()
        return Outputs(loss.detach(), h.grad, w.grad)
    logp.backward(s.grad_logp.double())
    return Outputs(logp.detach(), h.grad, w.grad)


def measure_errors(runner: Runner, mode: str, shape: OpShape, dtype: torch.dtype, device: str) -> tuple[float, float]:
    """(err_value, err_grad) of ``runner`` in ``mode`` at ``shape`` (NaN grad error in the forward-only mode)."""
    weight = make_weight(shape, dtype, device, seed=7)
    s = make_input_set(shape, weight, mode, seed=7)
    got = runner(s)
    ref = reference_outputs(s, mode)
    if mode == "grpo":
        err_value = abs(got.value.double().item() - ref.value.item()) / (abs(ref.value.item()) or 1.0)
    else:
        err_value = (got.value.double() - ref.value).abs().max().item()
    if mode in FORWARD_MODES:
        return err_value, float("nan")
    grads = [_scaled_error(got.grad_hidden, ref.grad_hidden)]
    if mode in ("fwd_bwd", "grpo"):
        grads.append(_scaled_error(got.grad_weight, ref.grad_weight))
    return err_value, max_abs_error(grads)
