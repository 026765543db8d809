"""trl's three non-differentiable head outputs (log_sum_sq_probs, mean_logits, is_top1) against float64, on the
torch path and the Triton kernels (interpreter): every logit transform, awkward sizes, a single token, fully masked
rows, NaN-poisoned outputs, and is_top1's tie rule with exact ties inside a tile, across tile boundaries and across
vocabulary splits."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from _lp_helpers import AWKWARD, OPTION_CASES, kernel_overrides, make_case, rel_err, tie_case

import fastgrpo
from fastgrpo.options import LogProbOptions
from fastgrpo.reference import reference_all_outputs, reference_logits

pytestmark = pytest.mark.interpreter

BACKENDS = ["torch", "triton"]
FP32_REL = 2e-5  # as tests/test_linear_logprobs.py: fp32 accumulation error ~1e-6 at these sizes
ALL = dict(return_entropy=True, return_log_sum_sq_probs=True, return_mean_logits=True, return_is_top1=True)
EXTRAS = ("log_sum_sq_probs", "mean_logits", "is_top1")
# Interpreter tiles are 32 columns wide; with num_splits=3 a 301-column vocabulary splits at columns 128 and 256
# (v_per_split rounds up to whole tiles: ceil(ceil(301 / 3) / 32) * 32 = 128).
SPLIT_EDGES = (128, 256)


@pytest.fixture(autouse=True)
def _small_torch_tiles(monkeypatch):
    """The torch path in 256-column tiles (its smallest): V=301 spans two, so its online rescaling and the carrying
    of the first argmax across tiles are exercised too."""
    from fastgrpo import torch_backend

    monkeypatch.setattr(torch_backend, "TILE_ELEMENTS", 1)


def _all_outputs(case, backend, opts, **overrides):
    with kernel_overrides(backend, **overrides), torch.no_grad():
        return fastgrpo.linear_logprobs(
            case.hidden, case.weight, case.targets, bias=case.bias, backend=backend, options=opts
        )


def _targets_hitting_the_argmax(case, opts):
    """Targets where a third of the rows hit the float64 argmax (else is_top1 would almost never be True), a third
    the runner-up, the rest random; ignored rows kept. Returns the targets and the rows whose top-2 gap exceeds 1e-4
    (where fp32 and float64 must agree on the argmax)."""
    z = reference_logits(case.hidden, case.weight, case.bias, opts)
    top2 = z.topk(2, dim=-1)
    targets = case.targets.clone()
    keep = targets != opts.ignore_index
    rows = torch.arange(targets.numel())
    targets = torch.where(keep & (rows % 3 == 0), top2.indices[:, 0], targets)
    targets = torch.where(keep & (rows % 3 == 1), top2.indices[:, 1], targets)
    clear = (top2.values[:, 0] - top2.values[:, 1]) > 1e-4
    return targets, clear


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("opt_name", list(OPTION_CASES))
def test_extra_outputs_match_float64(backend, opt_name):
    opts = dataclasses.replace(OPTION_CASES[opt_name], **ALL)
    case = make_case(*AWKWARD, bias=opt_name in ("softcap", "all"), n_ignored=4)
    case.targets, clear = _targets_hitting_the_argmax(case, opts)
    out = _all_outputs(case, backend, opts)
    ref = reference_all_outputs(case.hidden, case.weight, case.targets, case.bias, opts)
    ignored = case.targets == opts.ignore_index
    assert ignored.any() and clear.sum() > len(clear) // 2
    assert out.log_sum_sq_probs.dtype == out.mean_logits.dtype == torch.float32 and out.is_top1.dtype == torch.bool
    assert rel_err(out.logp, ref.logp) < FP32_REL and rel_err(out.entropy, ref.entropy) < FP32_REL
    assert rel_err(out.log_sum_sq_probs, ref.log_sum_sq_probs) < FP32_REL
    assert rel_err(out.mean_logits, ref.mean_logits) < FP32_REL
    assert out.is_top1.view(torch.uint8).max() <= 1  # every byte written (the launcher poisons them with 255)
    assert torch.equal(out.is_top1[clear], ref.is_top1[clear])
    assert ref.is_top1[clear].sum() >= 5 and (~ref.is_top1[clear & ~ignored]).sum() >= 5  # both answers occur
    # ignore_index: 0 / 0 / False, like logp and entropy
    assert (out.log_sum_sq_probs[ignored] == 0).all() and (out.mean_logits[ignored] == 0).all()
    assert not out.is_top1[ignored].any()
    # log sum p^2 is in [-log V, 0], strictly inside for a non-degenerate softmax
    lsq = out.log_sum_sq_probs[~ignored]
    assert (lsq < 0).all() and (lsq > -torch.log(torch.tensor(301.0))).all()


@pytest.mark.parametrize(("backend", "splits"), [("torch", None), ("triton", 1), ("triton", 3)])
def test_frozen_head_forward_extras_match_float64(backend, splits):
    """A frozen head with hidden requiring grad runs the frozen-head forward (softmax@W accumulated in the same
    pass), with one vocabulary split and with several; the extras ride along unchanged, and logp's gradient holds."""
    opts = LogProbOptions(temperature=1.3, logit_scale=0.8, softcap=6.0, **ALL)
    case = make_case(*AWKWARD, bias=True, n_ignored=3)
    case.targets, clear = _targets_hitting_the_argmax(case, opts)
    hidden = case.hidden.clone().requires_grad_()
    with kernel_overrides(backend, **({} if splits is None else {"num_splits": splits})):
        out = fastgrpo.linear_logprobs(hidden, case.weight, case.targets, bias=case.bias, backend=backend, options=opts)
        (grad,) = torch.autograd.grad(out.logp.sum(), hidden)
    ref_hidden = case.hidden.double().requires_grad_()
    ref = reference_all_outputs(ref_hidden, case.weight, case.targets, case.bias, opts)
    (ref_grad,) = torch.autograd.grad(ref.logp.sum(), ref_hidden)
    assert rel_err(grad, ref_grad) < FP32_REL
    for name in ("logp", "entropy", "log_sum_sq_probs", "mean_logits"):
        assert rel_err(getattr(out, name), getattr(ref, name)) < FP32_REL, name
    assert out.is_top1.view(torch.uint8).max() <= 1
    assert torch.equal(out.is_top1[clear], ref.is_top1[clear]) and ref.is_top1.any()


def test_float64_torch_path_is_exact():
    """float64 inputs on the torch path accumulate in float64: the chunked statistics equal the reference's to
    rounding (1e-12), which checks the online rescaling of q = sum exp(2(z - m)) across vocabulary tiles."""
    from fastgrpo import torch_backend

    opts = LogProbOptions(temperature=0.9, logit_scale=1.3, softcap=5.0, **ALL)
    case = make_case(29, 24, 1000, dtype=torch.float64, bias=True, scale=3.0)
    assert torch_backend._chunks(29, 1000, 24) == (29, 256)  # 256-column tiles: three rescalings per row
    out = _all_outputs(case, "torch", opts)
    ref = reference_all_outputs(case.hidden, case.weight, case.targets, case.bias, opts)
    for name in ("logp", "entropy", "log_sum_sq_probs", "mean_logits"):
        assert rel_err(getattr(out, name), getattr(ref, name)) < 1e-12, name
    assert torch.equal(out.is_top1, ref.is_top1)


TIES = {
    "in_one_tile": (40, 45),
    "across_a_tile_edge": (31, 32),
    "across_a_split_edge": (SPLIT_EDGES[0] - 1, SPLIT_EDGES[0]),
    "in_different_splits": (100, 200, 290),
    "first_and_last_column": (0, 300),
    "across_the_torch_tile_edge": (255, 256),  # also a split edge with 3 splits, and a tile edge for Triton
}


@pytest.mark.parametrize(("backend", "splits"), [("torch", None), ("triton", 3), ("triton", 10)])
@pytest.mark.parametrize("tie", list(TIES))
@pytest.mark.parametrize("opt_name", ["plain", "all"])
def test_is_top1_ties_go_to_the_lowest_index(backend, splits, tie, opt_name):
    """Exact ties, the target at the first tied column (True), a later one (False), a column before the tie that is
    no maximum (False). Triton: 3 splits (edges at columns 128 and 256) or 10 (one 32-column tile each, so every
    tile edge is a split edge)."""
    cols = TIES[tie]
    opts = dataclasses.replace(OPTION_CASES[opt_name], **ALL)
    hidden, weight = tie_case(9, 40, 301, cols)
    first, later = cols[0], cols[-1]
    not_max_before = 1 if first > 1 else 150  # a column that is not a maximum
    targets = torch.tensor([first, later, not_max_before, first, -100, cols[1], first, later, 299])
    expected = torch.tensor([True, False, False, True, False, False, True, False, False])  # 299: never a maximum
    case = dataclasses.replace(make_case(9, 40, 301, n_ignored=0), hidden=hidden, weight=weight, targets=targets)
    ref = reference_all_outputs(hidden, weight, targets, None, opts)
    assert torch.equal(ref.is_top1, expected)  # the float64 reference applies trl's rule as written
    out = _all_outputs(case, backend, opts, **({} if splits is None else {"num_splits": splits}))
    assert torch.equal(out.is_top1, expected), (out.is_top1, expected)
    # the other outputs are unaffected by ties
    assert rel_err(out.log_sum_sq_probs, ref.log_sum_sq_probs) < FP32_REL
    assert rel_err(out.mean_logits, ref.mean_logits) < FP32_REL


@pytest.mark.parametrize("backend", BACKENDS)
def test_single_token_and_fully_masked_rows(backend):
    opts = LogProbOptions(temperature=0.8, softcap=3.0, **ALL)
    one = make_case(1, 40, 301, n_ignored=0)
    out = _all_outputs(one, backend, opts)
    ref = reference_all_outputs(one.hidden, one.weight, one.targets, None, opts)
    assert out.logp.shape == out.is_top1.shape == (1,)
    for name in ("log_sum_sq_probs", "mean_logits"):
        assert rel_err(getattr(out, name), getattr(ref, name)) < FP32_REL
    masked = make_case(3, 2, 5, lead=(2, 3), n_ignored=6)  # every row ignored, [2, 3] leading shape
    out = _all_outputs(masked, backend, opts)
    assert out.is_top1.shape == (2, 3) and not out.is_top1.any()
    for name in ("logp", "entropy", "log_sum_sq_probs", "mean_logits"):
        assert (getattr(out, name) == 0).all(), name


@pytest.mark.parametrize("backend", BACKENDS)
def test_extras_are_only_returned_when_asked(backend):
    case = make_case(*AWKWARD)
    base = _all_outputs(case, backend, LogProbOptions())
    assert base.entropy is None and all(getattr(base, name) is None for name in EXTRAS)
    for name in EXTRAS:
        out = _all_outputs(case, backend, LogProbOptions(**{f"return_{name}": True}))
        assert getattr(out, name) is not None and all(getattr(out, o) is None for o in EXTRAS if o != name)
        assert torch.equal(out.logp, base.logp)  # asking for an extra output changes nothing else
    kw = fastgrpo.linear_logprobs(case.hidden, case.weight, case.targets, backend=backend, return_mean_logits=True)
    assert kw.mean_logits is not None and kw.is_top1 is None


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("requires", [("hidden",), ("hidden", "weight", "bias")], ids="+".join)
def test_extras_are_non_differentiable_and_leave_gradients_unchanged(backend, requires):
    """The extras carry no grad_fn; the gradients of logp and entropy are bit-identical with and without them
    (frozen head: the forward's softmax@W identity; trainable head: the recompute backward)."""
    case = make_case(*AWKWARD, bias=True)
    g = torch.randn(2, case.targets.numel())
    grads = []
    for extras in (False, True):
        leaves = {k: getattr(case, k).clone().requires_grad_(k in requires) for k in ("hidden", "weight", "bias")}
        opts = LogProbOptions(softcap=5.0, **(ALL if extras else {"return_entropy": True}))
        with kernel_overrides(backend):
            out = fastgrpo.linear_logprobs(
                leaves["hidden"], leaves["weight"], case.targets, bias=leaves["bias"], backend=backend, options=opts
            )
            if extras:
                assert not any(getattr(out, name).requires_grad for name in EXTRAS)
                assert out.logp.requires_grad and out.entropy.requires_grad
            loss = (out.logp * g[0]).sum() + (out.entropy * g[1]).sum()
            grads.append(torch.autograd.grad(loss, [leaves[k] for k in requires]))
    for a, b in zip(*grads):
        assert torch.equal(a, b)


def test_options_keyword_conflict_and_types():
    case = make_case(4, 8, 9)
    with pytest.raises(TypeError, match="not both"):
        fastgrpo.linear_logprobs(
            case.hidden, case.weight, case.targets, return_is_top1=True, options=LogProbOptions(), backend="torch"
        )
    with pytest.raises(TypeError, match="return_is_top1 must be a bool"):
        LogProbOptions(return_is_top1=1)
    out = fastgrpo.linear_logprobs(
        case.hidden, case.weight, case.targets, options=LogProbOptions(return_is_top1=True), backend="torch"
    )
    assert out.is_top1 is not None and out.log_sum_sq_probs is None


def test_frozen_head_forward_with_outputs_takes_its_own_tiles(monkeypatch):
    """The frozen-head forward with any optional output launches the resolved config updated by
    ``arch_configs.output_tiles`` (what tools/compile_report.py gates as fwd_softmax_w_outputs); without outputs,
    the config itself."""
    from fastgrpo import launch_config, triton_backend
    from fastgrpo_kernels import arch_configs

    assert arch_configs.output_tiles("sm90", "fwd_softmax_w", "bf16") == {"block_n": 64}
    assert arch_configs.output_tiles(None, "fwd", "bf16") == {} == arch_configs.output_tiles("sm90", "fwd", "bf16")
    launched = []
    real = triton_backend.linear_logprobs_fwd_kernel
    monkeypatch.setattr(launch_config.LaunchConfigResolver, "arch", lambda self, device: "sm90")
    monkeypatch.setattr(arch_configs, "OUTPUT_TILES", {"sm90": {"fwd_softmax_w": {"fp32": {"block_n": 32}}}})

    class Spy:
        def __getitem__(self, grid):
            def launch(**kw):
                launched.append(kw["BLOCK_N"])
                return real[grid](**kw)

            return launch

    monkeypatch.setattr(triton_backend, "linear_logprobs_fwd_kernel", Spy())
    case = make_case(*AWKWARD)
    hidden = case.hidden.clone().requires_grad_()
    with kernel_overrides("triton"):
        out = fastgrpo.linear_logprobs(hidden, case.weight, case.targets, backend="triton", return_entropy=True)
        assert launched == [16]  # the interpreter's config
        out = fastgrpo.linear_logprobs(hidden, case.weight, case.targets, backend="triton", return_is_top1=True)
    assert launched == [16, 32]
    ref = reference_all_outputs(case.hidden, case.weight, case.targets)
    assert rel_err(out.logp, ref.logp) < FP32_REL and torch.equal(out.is_top1, ref.is_top1)
