"""The vocab-parallel split path in one process: the head cut into 2-3 vocabulary shards, each shard through the
fused op (torch path, and the Triton kernels under the interpreter), the statistics combined as the TP ranks combine
them, against float64 on the whole head. Forward outputs and every gradient (dHidden summed over shards, each
shard's dW / db rows)."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from fastgrpo.options import LogProbOptions
from fastgrpo.reference import reference_all_outputs
from fastgrpo.vocab_parallel import combine_statistics, shard_backward, shard_statistics, vocab_parallel_linear_logprobs

BACKENDS = ["torch", pytest.param("triton", marks=pytest.mark.interpreter)]
OPTIONS = {
    "plain": LogProbOptions(),
    "transform": LogProbOptions(temperature=0.7, logit_scale=1.3, softcap=2.5),
}


def _case(n: int, h: int, v: int, bias: bool, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(n, h, generator=g)
    weight = torch.randn(v, h, generator=g) * 0.6
    b = torch.randn(v, generator=g) if bias else None
    targets = torch.randint(0, v, (n,), generator=g)
    if n > 3:
        targets[1], targets[2], targets[3] = -100, 0, v - 1  # an ignored row; the first and last columns
    return hidden, weight, b, targets


def _split(v: int, shards: int) -> list[tuple[int, int]]:
    """Uneven contiguous shards, torch.chunk-style as DTensor Shard(0) cuts them."""
    size = -(-v // shards)
    return [(s, min(s + size, v)) for s in range(0, v, size)]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shards", [2, 3])
@pytest.mark.parametrize("opt_name", list(OPTIONS))
@pytest.mark.parametrize("n", [1, 9])
def test_split_path_matches_float64(backend: str, shards: int, opt_name: str, n: int) -> None:
    h, v = 24, 203
    hidden, weight, bias, targets = _case(n, h, v, bias=opt_name == "transform")
    opts = dataclasses.replace(
        OPTIONS[opt_name], return_entropy=True, return_log_sum_sq_probs=True, return_mean_logits=True
    )
    # float64 ground truth on the whole head, with its gradients for random upstream gradients
    g = torch.Generator().manual_seed(5)
    g_l, g_h = torch.randn(n, generator=g), torch.randn(n, generator=g)
    h64 = hidden.double().requires_grad_(True)
    w64 = weight.double().requires_grad_(True)
    b64 = None if bias is None else bias.double().requires_grad_(True)
    ref = reference_all_outputs(h64, w64, targets, b64, opts)
    valid = (targets != -100).double()
    ((ref.logp * g_l.double() * valid).sum() + (ref.entropy * g_h.double() * valid).sum()).backward()

    parts = _split(v, shards)
    assert len(parts) == shards
    compute = torch.float32
    shard_bias = lambda a, b: None if bias is None else bias[a:b]  # noqa: E731
    stats = torch.stack(
        [shard_statistics(hidden, weight[a:b], shard_bias(a, b), targets, a, opts, compute, backend) for a, b in parts]
    )
    logp, entropy, log_sum_sq, mean_logits, lse, full_entropy = combine_statistics(stats, targets, opts, v)
    for name, got, want in (
        ("logp", logp, ref.logp),
        ("entropy", entropy, ref.entropy),
        ("log_sum_sq_probs", log_sum_sq, ref.log_sum_sq_probs),
        ("mean_logits", mean_logits, ref.mean_logits),
    ):
        err = (got.double() - want.detach()).abs().max().item()
        assert err < 2e-5, (name, err)
    assert torch.all(logp[targets == -100] == 0) and torch.all(entropy[targets == -100] == 0)

    gx = torch.zeros(n, h, dtype=torch.float64)
    gws, gbs = [], []
    for a, b in parts:
        dx, dw, db = shard_backward(
            hidden,
            weight[a:b],
            shard_bias(a, b),
            targets,
            a,
            lse,
            full_entropy,
            g_l,
            g_h,
            opts,
            compute,
            backend,
            (True, True, bias is not None),
        )
        gx += dx.double()  # what the all-reduce sums
        gws.append(dw)
        gbs.append(db)
    scale = lambda t: t.abs().max().item() + 1e-3  # noqa: E731
    assert (gx - h64.grad).abs().max().item() < 2e-5 * scale(h64.grad)
    gw = torch.cat(gws).double()
    assert (gw - w64.grad).abs().max().item() < 2e-5 * scale(w64.grad)
    if bias is not None:
        gb = torch.cat(gbs).double()
        assert (gb - b64.grad).abs().max().item() < 2e-5 * scale(b64.grad)


def test_float64_torch_split_is_exact() -> None:
    """In float64 the torch split path agrees with the whole head to rounding (1e-12): nothing is approximated."""
    hidden, weight, bias, targets = _case(11, 16, 97, bias=True, seed=3)
    hidden, weight, bias = hidden.double(), weight.double(), bias.double()
    opts = LogProbOptions(temperature=1.4, softcap=3.0, return_entropy=True, return_mean_logits=True)
    ref = reference_all_outputs(hidden, weight, targets, bias, opts)
    stats = torch.stack(
        [
            shard_statistics(hidden, weight[a:b], bias[a:b], targets, a, opts, torch.float64, "torch")
            for a, b in _split(97, 3)
        ]
    )
    logp, entropy, _, mean_logits, _, _ = combine_statistics(stats, targets, opts, 97)
    assert (logp - ref.logp).abs().max().item() < 1e-12
    assert (entropy - ref.entropy).abs().max().item() < 1e-12
    assert (mean_logits - ref.mean_logits).abs().max().item() < 1e-12


def test_is_top1_and_bad_input_are_refused_before_any_collective() -> None:
    hidden, weight, _, targets = _case(4, 8, 20, bias=False)
    kwargs = dict(vocab_start=10, vocab_size=20, group=None)
    with pytest.raises(NotImplementedError, match="return_is_top1 under tensor parallelism"):
        top1 = LogProbOptions(return_is_top1=True)
        vocab_parallel_linear_logprobs(hidden, weight[10:], targets, options=top1, **kwargs)
    with pytest.raises(ValueError, match="vocab_start=15 with 10 local rows does not fit vocab_size=20"):
        vocab_parallel_linear_logprobs(hidden, weight[10:], targets, **{**kwargs, "vocab_start": 15})
    bad = targets.clone()
    bad[0] = 20
    with pytest.raises(ValueError, match=r"targets must be in \[0, vocab_size=20\)"):
        vocab_parallel_linear_logprobs(hidden, weight[10:], bad, **kwargs)
