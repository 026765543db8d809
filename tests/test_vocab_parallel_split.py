"""The vocab-parallel split path in one process: the head cut into 2-3 vocabulary shards, each shard through the
fused op (torch path, and the Triton kernels under the interpreter), the statistics combined as the TP ranks combine
them, against float64 on the whole head. Forward outputs (is_top1 too, with exact ties across shard edges), every
gradient (dHidden summed over shards, each shard's dW / db rows), and the op's row max / first argmax that a shard
exchanges for is_top1."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from _lp_helpers import kernel_overrides, tie_case

from fastgrpo.ops import logprobs_forward
from fastgrpo.options import LogProbOptions
from fastgrpo.reference import reference_all_outputs, reference_logits
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


def _hit_the_argmax(hidden, weight, bias, targets, opts):
    """Targets where a third of the rows hit the float64 argmax (else is_top1 would almost never be True), a third
    the runner-up; ignored rows kept. Also the rows whose top-2 gap exceeds 1e-4, where fp32 must agree."""
    z = reference_logits(hidden.double(), weight.double(), None if bias is None else bias.double(), opts)
    top2 = z.topk(2, dim=-1)
    rows = torch.arange(targets.numel())
    keep = targets != opts.ignore_index
    targets = torch.where(keep & (rows % 3 == 0), top2.indices[:, 0], targets)
    targets = torch.where(keep & (rows % 3 == 1), top2.indices[:, 1], targets)
    return targets, (top2.values[:, 0] - top2.values[:, 1]) > 1e-4


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
        OPTIONS[opt_name],
        return_entropy=True,
        return_log_sum_sq_probs=True,
        return_mean_logits=True,
        return_is_top1=True,
    )
    targets, clear = _hit_the_argmax(hidden, weight, bias, targets, opts)
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
    logp, entropy, log_sum_sq, mean_logits, is_top1, lse, full_entropy = combine_statistics(stats, targets, opts, v)
    assert torch.equal(is_top1[clear], ref.is_top1[clear]) and not is_top1[targets == -100].any()
    assert ref.is_top1[clear].any() or n == 1
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
    logp, entropy, _, mean_logits, _, _, _ = combine_statistics(stats, targets, opts, 97)
    assert (logp - ref.logp).abs().max().item() < 1e-12
    assert (entropy - ref.entropy).abs().max().item() < 1e-12
    assert (mean_logits - ref.mean_logits).abs().max().item() < 1e-12


# Exact ties (logits small integers / 16) within a shard, across the 2-shard edge (151 | 152 of 301 columns), across
# the 3-shard edges (101 | 102, 202 | 203) and at the first and last columns.
SHARD_TIES = {
    "in_one_shard": (40, 45),
    "across_the_shard_edge": (150, 151),
    "in_different_shards": (100, 200, 290),
    "first_and_last_column": (0, 300),
}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shards", [2, 3])
@pytest.mark.parametrize("tie", list(SHARD_TIES))
def test_is_top1_ties_across_shards_go_to_the_lowest_index(backend: str, shards: int, tie: str) -> None:
    """trl's rule over the whole vocabulary: the target at the first tied column is top-1, at a later tied column
    (in a later shard too) it is not, nor at a column that is no maximum; False at ignored rows."""
    cols = SHARD_TIES[tie]
    hidden, weight = tie_case(9, 40, 301, cols)
    first, later = cols[0], cols[-1]
    not_max = 1 if first > 1 else 150
    targets = torch.tensor([first, later, not_max, first, -100, cols[1], first, later, 299])
    expected = torch.tensor([True, False, False, True, False, False, True, False, False])
    opts = LogProbOptions(temperature=0.8, softcap=4.0, return_is_top1=True)
    assert torch.equal(reference_all_outputs(hidden, weight, targets, None, opts).is_top1, expected)
    stats = torch.stack(
        [
            shard_statistics(hidden, weight[a:b], None, targets, a, opts, torch.float32, backend)
            for a, b in _split(301, shards)
        ]
    )
    is_top1 = combine_statistics(stats, targets, opts, 301)[4]
    assert torch.equal(is_top1, expected), (is_top1, expected)


@pytest.mark.parametrize(
    ("backend", "splits"),
    [("torch", None), *(pytest.param("triton", k, marks=pytest.mark.interpreter) for k in (1, 3, 10))],
)
@pytest.mark.parametrize("transform", list(OPTIONS))
def test_row_max_and_first_argmax_match_float64(backend: str, splits: int | None, transform: str) -> None:
    """The forward op's row max and first argmax (what a shard exchanges for is_top1) equal float64's ``z.max()``
    and ``z.argmax()`` at every row, ignored ones included, with or without is_top1 asked; empty when not asked.
    Triton: 1, 3 or 10 vocabulary splits; its launcher poisons both outputs, so an unwritten row fails."""
    hidden, weight, bias, targets = _case(9, 24, 301, bias=True, seed=7)
    hidden[5] = 0.0  # a row of zeros: its logits are the transformed bias alone
    opts = OPTIONS[transform]
    z = reference_logits(hidden.double(), weight.double(), bias.double(), opts)
    top2 = z.topk(2, dim=-1).values
    clear = (top2[:, 0] - top2[:, 1]) > 1e-4
    assert clear.sum() >= 7
    overrides = lambda: kernel_overrides(backend, **({} if splits is None else {"num_splits": splits}))  # noqa: E731
    for top1 in (False, True):
        with overrides():
            out = logprobs_forward(
                hidden, weight, bias, targets, opts.with_(return_is_top1=top1), False, torch.float32, backend, True
            )
        row_max, argmax = out[8], out[9]
        assert argmax.dtype == torch.int32 and row_max.shape == argmax.shape == (9,)
        assert (row_max.double() - z.amax(-1)).abs().max().item() < 1e-5
        assert torch.equal(argmax[clear].long(), z.argmax(-1)[clear])
        assert (out[7].numel() == 9) is top1
    with overrides():
        plain = logprobs_forward(hidden, weight, bias, targets, opts, False, torch.float32, backend)
    assert plain[8].numel() == plain[9].numel() == 0


def test_vocab_parallel_is_top1_needs_exact_column_ids() -> None:
    """Column ids travel in the fp32 statistics: a vocabulary past 2^24 is refused before any collective."""
    hidden, weight, _, targets = _case(4, 8, 20, bias=False)
    top1 = LogProbOptions(return_is_top1=True)
    kwargs = dict(vocab_start=0, group=None, options=top1)
    with pytest.raises(ValueError, match=r"vocab_size=16777217 exceeds 16777216"):
        vocab_parallel_linear_logprobs(hidden, weight[10:], targets, vocab_size=2**24 + 1, **kwargs)


def test_bad_input_is_refused_before_any_collective() -> None:
    hidden, weight, _, targets = _case(4, 8, 20, bias=False)
    kwargs = dict(vocab_start=10, vocab_size=20, group=None)
    with pytest.raises(ValueError, match="vocab_start=15 with 10 local rows does not fit vocab_size=20"):
        vocab_parallel_linear_logprobs(hidden, weight[10:], targets, **{**kwargs, "vocab_start": 15})
    bad = targets.clone()
    bad[0] = 20
    with pytest.raises(ValueError, match=r"targets must be in \[0, vocab_size=20\)"):
        vocab_parallel_linear_logprobs(hidden, weight[10:], bad, **kwargs)
