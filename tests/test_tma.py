"""TMA tensor-descriptor tile loads (``KernelConfig.use_tma``): same function as the pointer loads.

Under the interpreter a descriptor load is a masked load at the descriptor's coordinates with zero fill, so these
tests check the coordinates, the boxes and the masking of columns a box reads past its range (the next split's or
chunk's real weights); the hardware path is checked by the GPU tests.
"""

from __future__ import annotations

import logging

import pytest
import torch
from _lp_helpers import make_case, rel_err

import fastgrpo
from fastgrpo import launch_config, tma
from fastgrpo.options import LogProbOptions
from fastgrpo.reference import reference_linear_logprobs

pytestmark = pytest.mark.interpreter
REL = 2e-5


@pytest.fixture
def built(monkeypatch):
    """Counts descriptors actually built (a silent fallback to pointer loads would leave it at 0)."""
    count = []
    real = tma.TensorDescriptor
    monkeypatch.setattr(tma, "TensorDescriptor", lambda *a, **k: count.append(1) or real(*a, **k))
    return count


def _run(case, *, requires, overrides, softcap=None, entropy_grad=False):
    leaves = {"hidden": case.hidden, "weight": case.weight, "bias": case.bias}
    ours = {k: None if v is None else v.clone().requires_grad_(k in requires) for k, v in leaves.items()}
    with launch_config.override(poison=True, **overrides):
        out = fastgrpo.linear_logprobs(
            ours["hidden"], ours["weight"], case.targets, bias=ours["bias"], softcap=softcap, return_entropy=True
        )
    g = torch.randn(case.targets.shape, dtype=torch.float64)
    g_h = torch.randn(case.targets.shape, dtype=torch.float64) if entropy_grad else torch.zeros_like(g)
    names = [k for k in requires if ours[k] is not None]
    loss = (out.logp * g.float()).sum() + ((out.entropy * g_h.float()).sum() if entropy_grad else 0)
    with launch_config.override(poison=True, **overrides):
        grads = torch.autograd.grad(loss, [ours[k] for k in names])
    return [out.logp, out.entropy, *grads], names, (g, g_h)


def _reference(case, names, upstream, softcap=None):
    leaves = {
        k: None if v is None else v.double().requires_grad_(k in names)
        for k, v in {"hidden": case.hidden, "weight": case.weight, "bias": case.bias}.items()
    }
    opts = LogProbOptions(softcap=softcap, return_entropy=True)
    lp, ent = reference_linear_logprobs(leaves["hidden"], leaves["weight"], case.targets, leaves["bias"], opts)
    g, g_h = upstream
    grads = torch.autograd.grad((lp * g + ent * g_h).sum(), [leaves[k] for k in names])
    return [lp, ent, *grads]


@pytest.mark.parametrize(
    "requires,entropy_grad",
    [(("hidden",), False), (("hidden",), True), (("hidden", "weight", "bias"), True)],
    ids=["frozen-identity", "frozen-recompute", "trainable"],
)
@pytest.mark.parametrize("splits", [1, 3])
def test_tma_matches_reference_and_pointer_loads(requires, entropy_grad, splits, built):
    # H = 40: an fp32 row pitch of 160 bytes, a multiple of 16 (descriptors can be built); V = 301 leaves a
    # partial last box, and 3 splits / a small backward workspace make boxes read past their range inside V.
    case = make_case(37, 40, 301, bias=True)
    small_ws = dict(num_splits=splits, workspace_bytes=37 * 4 * 96)
    tma_out, names, upstream = _run(
        case, requires=requires, overrides={**small_ws, "use_tma": True}, softcap=5.0, entropy_grad=entropy_grad
    )
    assert len(built) == (2 if requires == ("hidden",) and not entropy_grad else 4)  # forward (+ backward)
    torch.manual_seed(1)
    ptr_out, _, _ = _run(case, requires=requires, overrides=small_ws, softcap=5.0, entropy_grad=entropy_grad)
    torch.manual_seed(0)
    ref = _reference(case, names, upstream, softcap=5.0)
    for a, r in zip(tma_out, ref):
        assert rel_err(a, r) < REL
    for a, b in zip(tma_out[:2], ptr_out[:2]):  # same loads, same order: bit-identical forward
        assert torch.equal(a, b)


def test_tma_bf16_matches_pointer_loads(built):
    case = make_case(37, 64, 301, dtype=torch.bfloat16)
    with launch_config.override(num_splits=3, use_tma=True, poison=True):
        a = fastgrpo.linear_logprobs(case.hidden, case.weight, case.targets, return_entropy=True)
    assert len(built) == 2
    with launch_config.override(num_splits=3, poison=True):
        b = fastgrpo.linear_logprobs(case.hidden, case.weight, case.targets, return_entropy=True)
    assert torch.equal(a.logp, b.logp) and torch.equal(a.entropy, b.entropy)


def test_tma_unusable_falls_back_to_pointer_loads_and_says_so(caplog, built):
    # bf16 with H = 36: a 72-byte row pitch, not a multiple of 16, so no descriptor can be built.
    case = make_case(21, 36, 150, dtype=torch.bfloat16)
    assert "row pitch" in tma.unsupported_reason(case.hidden, (16, 16))
    tma_requested = dict(use_tma=True, poison=True)
    with caplog.at_level(logging.INFO, logger="fastgrpo"), launch_config.override(**tma_requested):
        out = fastgrpo.linear_logprobs(case.hidden, case.weight, case.targets)
    assert any("use_tma requested but" in r.getMessage() and "row pitch" in r.getMessage() for r in caplog.records)
    assert not built
    ref, _ = reference_linear_logprobs(case.hidden.float(), case.weight.float(), case.targets)
    assert rel_err(out.logp, ref) < 2e-5


def test_unsupported_reason_cases():
    t = torch.randn(64, 64)
    assert tma.unsupported_reason(t, (16, 16)) is None
    assert "contiguous" in tma.unsupported_reason(t.T, (16, 16))
    assert "16-byte aligned" in tma.unsupported_reason(t.view(-1)[1:4033].view(63, 64), (16, 16))
    assert "box" in tma.unsupported_reason(t, (16, 2))  # 8-byte box side
    assert "box" in tma.unsupported_reason(t, (512, 16))
    assert "box" in tma.unsupported_reason(t, (24, 16))
    assert "2-D" in tma.unsupported_reason(torch.randn(4), (16, 16))
