"""fastgrpo: ``linear_logprobs`` (Triton on GPU, the chunked torch path on CPU) and, for the GRPO mode,
``fused_linear_grpo_loss``."""

from __future__ import annotations

import torch

from ..harness.grpo_math import SETTINGS
from ..harness.inputs import InputSet
from .base import Outputs, Runner, logprob_runner, on_flat_tokens

# The outputs each forward mode asks for (the others: log-probs and entropy): log-probs alone, or all five.
MODE_OUTPUTS: dict[str, dict[str, bool]] = {
    "fwd_logp": {"return_entropy": False},
    "fwd_all": {"return_entropy": True, "return_log_sum_sq_probs": True, "return_mean_logits": True,
                "return_is_top1": True},
}  # fmt: skip


def backend_for(device: str) -> str:
    # On CPU the torch path, whatever TRITON_INTERPRET says: the interpreter is a correctness tool, not a peer.
    return "auto" if device == "cuda" else "torch"


def build(mode: str, device: str, backend: str | None = None) -> Runner:
    """``backend``: None = the suite's choice (``backend_for``); the lease's correctness stage asks for "triton"."""
    import fastgrpo

    backend = backend or backend_for(device)
    if mode == "grpo":
        return _grpo_runner(backend)

    flags = MODE_OUTPUTS.get(mode, {"return_entropy": True})

    def op(h: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        out = fastgrpo.linear_logprobs(h, weight, targets, backend=backend, **flags)  # type: ignore[arg-type]
        return out.logp, out.entropy

    return logprob_runner(mode, on_flat_tokens(op))


def _grpo_runner(backend: str) -> Runner:
    from fastgrpo import fused_linear_grpo_loss

    def run(s: InputSet) -> Outputs:
        out = fused_linear_grpo_loss(
            s.hidden,
            s.weight,
            s.targets,
            s.mask,
            s.advantages,
            backend=backend,  # type: ignore[arg-type]
            beta=SETTINGS.beta,
            epsilon=SETTINGS.epsilon_low,
            epsilon_high=SETTINGS.epsilon_high,
            loss_type=SETTINGS.loss_type,
            use_bias_correction_kl=SETTINGS.use_bias_correction_kl,
            ref_per_token_logps=s.ref_logp,
            num_items_in_batch=int(s.mask.sum()),
        )
        out.loss.backward()
        return Outputs(out.loss.detach(), s.hidden.grad, s.weight.grad)

    return run
