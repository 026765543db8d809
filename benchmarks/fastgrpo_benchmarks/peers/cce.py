"""Apple's Cut Cross-Entropy: ``linear_cross_entropy(..., reduction="none", filter_eps=None)`` (GPU only).

Gradient filtering is off (it would drop lm_head gradient terms that RL's mixed-sign per-token weights need). CCE
returns ``-log p`` and no entropy, so its rows do less work than the others: noted in the table.
"""

from __future__ import annotations

import torch

from .base import Runner, Unavailable, import_peer, logprob_runner, on_flat_tokens

NOTE = "no entropy (CCE cannot return it)"


def build(mode: str, device: str) -> Runner:
    if device != "cuda":
        raise Unavailable("cut-cross-entropy's kernels run on CUDA only (its torch_compile impl materializes logits)")
    linear_cross_entropy = import_peer("cut_cross_entropy", "cut-cross-entropy").linear_cross_entropy

    def op(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, None]:
        nll = linear_cross_entropy(hidden, weight, targets, reduction="none", filter_eps=None)
        return -nll.float(), None

    return logprob_runner(mode, on_flat_tokens(op))
