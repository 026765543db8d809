"""A head weight released between forward and backward (ZeRO-3 partitions it to 0 elements) raises, never returns
wrong gradients; and the fused head's output is a dict DeepSpeed can hook."""

from __future__ import annotations

import pytest
import torch

from fastgrpo import linear_logprobs
from fastgrpo.integration.head import FusedHeadOutput


@pytest.mark.parametrize("backend", ["torch", pytest.param("triton", marks=pytest.mark.interpreter)])
def test_backward_with_a_released_weight_raises(backend: str) -> None:
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(5, 8, generator=g, requires_grad=True)
    weight = torch.nn.Parameter(torch.randn(24, 8, generator=g))
    targets = torch.randint(0, 24, (5,), generator=g)
    out = linear_logprobs(hidden, weight, targets, backend=backend)
    weight.data = torch.empty(0)  # what ZeRO-3 does to a partitioned parameter outside a gather
    with pytest.raises(ValueError, match=r"weight has shape \(0,\) in the backward"):
        out.logp.sum().backward()


def test_fused_head_output_is_a_dict_of_its_tensors() -> None:
    # DeepSpeed ZeRO-3 looks for a module's output tensors in tuples, lists and dicts only.
    logp = torch.zeros(2, 3)
    out = FusedHeadOutput(loss=logp.sum(), log_probs=logp)
    assert isinstance(out, dict)
    assert list(out.keys()) == ["loss", "log_probs"]
    assert out.log_probs is logp and out["log_probs"] is logp and out.entropy is None
