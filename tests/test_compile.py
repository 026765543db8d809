"""linear_logprobs inside torch.compile(fullgraph=True): no graph breaks, same results as eager."""

from __future__ import annotations

import pytest
import torch
from _lp_helpers import make_case

import fastgrpo


@pytest.mark.parametrize("frozen", [False, True], ids=["trainable", "frozen"])
def test_compiled_matches_eager(frozen):
    torch._dynamo.reset()
    case = make_case(13, 16, 90, bias=True)
    g_l, g_h = torch.randn(13), torch.randn(13)

    def step(x, w, b):
        out = fastgrpo.linear_logprobs(
            x, w, case.targets, bias=b, temperature=0.9, softcap=5.0, return_entropy=True, backend="torch",
            return_log_sum_sq_probs=True, return_mean_logits=True, return_is_top1=True,
        )  # fmt: skip
        extras = (out.log_sum_sq_probs, out.mean_logits, out.is_top1)  # non-differentiable, through the custom op
        return (out.logp * g_l).sum() + (out.entropy * g_h).sum(), out.logp, extras

    results = []
    for fn in (step, torch.compile(step, fullgraph=True)):
        leaves = [
            case.hidden.clone().requires_grad_(),
            case.weight.clone().requires_grad_(not frozen),
            case.bias.clone().requires_grad_(not frozen),
        ]
        loss, logp, extras = fn(*leaves)
        loss.backward()
        assert extras[2].dtype == torch.bool and not any(e.requires_grad for e in extras)
        results.append((loss.detach(), logp.detach(), [leaf.grad for leaf in leaves], extras))
    (l1, lp1, g1, e1), (l2, lp2, g2, e2) = results
    for a, b in zip(e1, e2):
        torch.testing.assert_close(b, a, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(l2, l1, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(lp2, lp1, rtol=1e-6, atol=1e-6)
    for a, b in zip(g1, g2):
        assert (a is None) == (b is None)
        if a is not None:
            torch.testing.assert_close(b, a, rtol=1e-6, atol=1e-6)
