"""GPU checks at real sizes (skipped without CUDA): Qwen2.5's vocabulary, bf16 and fp32, every gradient path,
pointer and TMA loads, every autotuning candidate.

Run on a lent GPU with ``python -m pytest -q -m gpu tests/test_gpu_linear_logprobs.py``.
"""

from __future__ import annotations

import pytest
import torch
from _lp_helpers import rel_err

import fastgrpo
from fastgrpo import launch_config, tuning
from fastgrpo.options import LogProbOptions
from fastgrpo.reference import reference_linear_logprobs
from fastgrpo_kernels import configs

pytestmark = pytest.mark.gpu
V = 151936


def _inputs(n, h, dtype, bias=False):
    g = torch.Generator(device="cuda").manual_seed(n * 7 + h)
    x = torch.randn(n, h, device="cuda", generator=g)
    w = torch.randn(V, h, device="cuda", generator=g) * (3.0 / h**0.5)
    b = torch.randn(V, device="cuda", generator=g) if bias else None
    t = torch.randint(0, V, (n,), device="cuda", generator=g)
    t[:: max(n // 7, 1)] = -100
    return x.to(dtype), w.to(dtype), None if b is None else b.to(dtype), t


def _grads(fn, leaves, requires, g_l, g_h):
    """Outputs and gradients of sum(logp * g_l + entropy * g_h); ``g_h=None``: no entropy term (for a frozen head,
    the forward's softmax@W identity then serves the backward)."""
    use = [leaf.detach().clone().requires_grad_(r) if leaf is not None else None for leaf, r in zip(leaves, requires)]
    lp, ent = fn(*use)
    loss = (lp * g_l.to(lp.dtype)).sum()
    if g_h is not None:
        loss = loss + (ent * g_h.to(ent.dtype)).sum()
    wrt = [u for u, r in zip(use, requires) if r and u is not None]
    return (lp.detach(), ent.detach()), torch.autograd.grad(loss, wrt)


MODES = {  # requires_grad of (hidden, weight, bias), and whether an entropy gradient flows
    "frozen-identity": ((True, False, False), False),
    "frozen-recompute": ((True, False, False), True),
    "trainable": ((True, True, True), True),
}


@pytest.mark.parametrize("h", [896, 1536])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=["bf16", "fp32"])
@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize("tma", [False, True], ids=["ptr", "tma"])
def test_real_sizes_against_float64(h, dtype, mode, tma):
    with launch_config.override(use_tma=tma, poison=True):
        _check_against_float64(h, dtype, mode)


def _check_against_float64(h, dtype, mode, n=333):
    requires, entropy_grad = MODES[mode]
    x, w, b, t = _inputs(n, h, dtype, bias=True)
    opts = LogProbOptions(temperature=0.9, softcap=30.0, return_entropy=True)
    g_l = torch.randn(n, device="cuda", dtype=torch.float64)
    g_h = torch.randn(n, device="cuda", dtype=torch.float64) if entropy_grad else None

    def ours(x, w, b):
        o = fastgrpo.linear_logprobs(
            x, w, t, bias=b, temperature=0.9, softcap=30.0, return_entropy=True, backend="triton"
        )
        return o.logp, o.entropy

    (lp, ent), g_ours = _grads(ours, (x, w, b), requires, g_l, g_h)
    (r_lp, r_ent), g_ref = _grads(
        lambda x, w, b: reference_linear_logprobs(x, w, t, b, opts),
        (x.double(), w.double(), b.double()),
        requires,
        g_l,
        g_h,
    )
    (e_lp, e_ent), g_eager = _grads(
        lambda x, w, b: reference_linear_logprobs(x, w, t, b, opts, dtype=None), (x, w, b), requires, g_l, g_h
    )
    if dtype == torch.float32:
        assert rel_err(lp, r_lp) < 1e-4 and rel_err(ent, r_ent) < 1e-4
        for a, r in zip(g_ours, g_ref):
            assert rel_err(a, r) < 1e-4
    else:  # no worse than eager torch at bf16 (materialized bf16 logits)
        assert rel_err(lp, r_lp) <= max(rel_err(e_lp, r_lp), 1e-3)
        assert rel_err(ent, r_ent) <= max(rel_err(e_ent, r_ent), 1e-3)
        for a, r, e in zip(g_ours, g_ref, g_eager):
            assert rel_err(a, r) <= max(1.5 * rel_err(e, r), 1e-2)


@pytest.mark.parametrize("n", [1, 4096])
def test_deterministic_and_memory_bounded(n):
    x, w, _, t = _inputs(n, 896, torch.bfloat16)
    x.requires_grad_()
    w.requires_grad_()
    results = []
    for i in range(3):  # the first run warms up (kernel compiles, cuBLAS workspace), outside the measured runs
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        o = fastgrpo.linear_logprobs(x, w, t, return_entropy=True)
        gx, gw = torch.autograd.grad(o.logp.sum() + o.entropy.sum(), [x, w])
        peak_extra = torch.cuda.max_memory_allocated() - base - gx.numel() * 2 - gw.numel() * 2
        results.append((o.logp, o.entropy, gx, gw))
        # Never an [N, V] tensor (1.2 GB of bf16 logits at N=4096) nor a copy of the head at small N: the workspace
        # and the per-chunk fp32 dW both stay within workspace_bytes (64 MiB), plus the fp32 dX and some slack.
        if i:
            assert peak_extra < 2 * 64 * 2**20 + n * 896 * 4 + 16 * 2**20, peak_extra / 2**20
    for a, b in zip(results[1], results[2]):
        assert torch.equal(a, b)


@pytest.mark.parametrize("kind", configs.TUNABLE_KINDS)
def test_every_autotune_candidate_on_gpu(kind):
    """Every config the opt-in autotuner may pick (they were compiled, never run, on the machine that chose them)."""
    mode = {"fwd": "trainable", "fwd_softmax_w": "frozen-identity", "bwd": "trainable"}[kind]
    for cfg in configs.candidates(kind):
        with launch_config.override(**cfg.to_dict(), poison=True):
            _check_against_float64(896, torch.bfloat16, mode, n=1000)


def test_autotune_end_to_end_on_gpu(tmp_path):
    tuning.enable_autotune(cache_path=tmp_path / "tune.json")
    try:
        for mode in MODES:
            _check_against_float64(896, torch.bfloat16, mode, n=700)
        assert {k.split("|")[0] for k in tuning.chosen()} == set(configs.TUNABLE_KINDS)
    finally:
        tuning.disable_autotune()
        tuning.clear_choices()
