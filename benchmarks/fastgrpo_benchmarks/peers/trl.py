"""trl 1.16's chunked lm_head: ``trl.kernels.chunked_logprob.ChunkedLogProbFunction``, the baseline of every ratio.

Called as trl's fused head calls it (``vocab chunk = 32768``, outputs = entropy only; ``fwd_logp``: none,
``fwd_all``: all four optional outputs, as DPO with WPO weighting asks for them). On CUDA it folds each
``[4096, 32768]`` cuBLAS tile with Triton; on CPU with torch ops (its own fallback). The GRPO mode puts trl's loss
math (eager torch, ``grpo_math``) on top, as the trainer does.
"""

from __future__ import annotations

import importlib.metadata

import torch
from packaging.version import Version

from .base import Runner, Unavailable, import_peer, logprob_runner, on_flat_tokens

TRL_CHUNK_SIZE = 32768  # trl.trainer.utils._CHUNKED_LOGPROB_CHUNK_SIZE in trl 1.16
ALL_OUTPUTS = ("log_probs", "entropy", "log_sum_sq_probs", "mean_logits", "is_top1")
# The optional outputs each mode asks trl's head for.
MODE_OUTPUTS = {"fwd_logp": ("log_probs",), "fwd_all": ALL_OUTPUTS}


def build(mode: str, device: str) -> Runner:
    del device
    try:
        version = Version(importlib.metadata.version("trl"))
    except importlib.metadata.PackageNotFoundError as exc:
        raise Unavailable("trl not installed") from exc
    if version < Version("1.15"):
        raise Unavailable(f"trl {version} has no chunked head (trl.kernels.chunked_logprob); needs trl >= 1.15")
    ChunkedLogProbFunction = import_peer("trl.kernels.chunked_logprob", "trl").ChunkedLogProbFunction

    outputs = MODE_OUTPUTS.get(mode, ("log_probs", "entropy"))

    def op(h: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        logp, entropy, *_ = ChunkedLogProbFunction.apply(
            h, weight, None, targets, 1.0, TRL_CHUNK_SIZE, None, 1.0, outputs
        )
        return logp, entropy

    return logprob_runner(mode, on_flat_tokens(op))
