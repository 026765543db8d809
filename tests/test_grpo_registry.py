"""The loss-type registry is the one place a loss type is declared (docs/adding_a_loss_type.md).

A test-only loss type, registered here and nowhere else, runs end to end through the Triton kernel (interpreter) and
the torch path and matches an independent float64 autograd reference: any layer that kept its own list of loss types
(option checks, input checks, launcher, torch path, finalisation) rejects or mis-handles it and fails these tests.
"""

from __future__ import annotations

import pathlib
import re

import pytest
import torch
import triton
import triton.language as tl
from _grpo_trl import rel_err

from fastgrpo.grpo import GRPOLossOptions, grpo_loss
from fastgrpo.grpo import registry as R

pytestmark = pytest.mark.interpreter

ROOT = pathlib.Path(__file__).resolve().parents[1]
TEST_TYPE = "test_linear_pg"


# ---- the test-only loss type: per-token loss -A * coef_1 - epsilon * A * logp, both partial derivatives non-zero


@triton.jit
def _linear_pg_policy(coef_1, lp, adv, params):
    """[BLOCK_B, BLOCK_T] tiles (``adv`` [BLOCK_B, 1]) -> (policy, d policy / d coef_1, d policy / d logp)."""
    eps = params[0]
    policy = -adv * coef_1 - eps * adv * lp
    return policy, -adv + tl.zeros_like(lp), -eps * adv + tl.zeros_like(lp)


def _linear_pg_policy_torch(coef_1, lp, adv, params):
    (eps,) = params
    return -adv * coef_1 - eps * adv * lp, (-adv).expand_as(lp), (-eps * adv).expand_as(lp)


def _reference(lp, old, ref, adv, mask, opts, normaliser):
    """float64 autograd of the test type's loss, written from its formula (no fastgrpo code)."""
    lp = lp.double().detach().requires_grad_(True)
    old, ref, adv, m = old.double(), ref.double(), adv.double()[:, None], mask.double()
    log_ratio = lp - old
    if opts.importance_sampling_level == "sequence":
        log_ratio = ((log_ratio * m).sum(-1) / m.sum(-1).clamp(min=1))[:, None]
    coef_1 = torch.exp(log_ratio)
    ptl = -adv * coef_1 - opts.epsilon * adv * lp
    if opts.beta:
        kl = torch.exp(ref - lp) - (ref - lp) - 1
        ptl = ptl + opts.beta * kl * coef_1  # use_bias_correction_kl
    gas = opts.gradient_accumulation_steps
    if normaliser is R.PER_ROW_MEAN:
        loss = ((ptl * m).sum(-1) / m.sum(-1).clamp(min=1)).mean() / gas
    else:  # NUM_ITEMS, num_items_in_batch = 40, one process, steps_per_generation = gas
        loss = (ptl * m).sum() / 40.0
    (grad,) = torch.autograd.grad(loss, [lp])
    return loss.detach(), grad


@pytest.fixture(params=[R.PER_ROW_MEAN, R.NUM_ITEMS], ids=["per_row_mean", "num_items"])
def test_type(request):
    entry = R.register(
        R.LossType(
            TEST_TYPE,
            R.KernelKind.POLICY_FN,
            request.param,
            options=("epsilon",),
            kernel_policy=_linear_pg_policy,
            torch_policy=_linear_pg_policy_torch,
            policy_params=("epsilon",),
        )
    )
    yield entry
    R.unregister(TEST_TYPE)


def _inputs(seed=0, bsz=5, seqlen=11):
    g = torch.Generator().manual_seed(seed)
    lp = -torch.rand(bsz, seqlen, generator=g) * 3
    lengths = torch.randint(1, seqlen + 1, (bsz,), generator=g)
    lengths[0], lengths[2] = seqlen, 0  # a full row and a row without completion tokens
    mask = (torch.arange(seqlen)[None, :] < lengths[:, None]).long()
    old = lp + 0.3 * torch.randn(bsz, seqlen, generator=g)
    ref = lp + 0.3 * torch.randn(bsz, seqlen, generator=g)
    return lp, old, ref, torch.randn(bsz, generator=g), mask


@pytest.mark.parametrize("backend", ["triton", "torch"])
@pytest.mark.parametrize("level", ["token", "sequence"])
@pytest.mark.parametrize("beta", [0.0, 0.04])
def test_test_only_loss_type_runs_end_to_end(test_type, backend, level, beta):
    lp, old, ref, adv, mask = _inputs()
    opts = GRPOLossOptions(
        loss_type=TEST_TYPE, importance_sampling_level=level, beta=beta, epsilon=0.3, gradient_accumulation_steps=2
    )
    x = lp.clone().requires_grad_(True)
    out = grpo_loss(
        x,
        adv,
        mask,
        old_per_token_logps=old,
        ref_per_token_logps=ref if beta else None,
        num_items_in_batch=40 if opts.needs_num_items else None,
        options=opts,
        backend=backend,
    )
    (grad,) = torch.autograd.grad(out.loss, [x])
    want_loss, want_grad = _reference(lp, old, ref, adv, mask, opts, test_type.normaliser)
    assert rel_err(out.loss, want_loss) <= 1e-5 and rel_err(grad, want_grad) <= 1e-5
    assert set(out.metrics) == ({"kl"} if beta else set())  # the kind produces no metric of its own


def test_test_only_loss_type_needs_what_its_normaliser_declares(test_type):
    lp, old, _, adv, mask = _inputs()
    if test_type.normaliser is R.NUM_ITEMS:
        with pytest.raises(ValueError, match=rf"loss_type='{TEST_TYPE}' divides by num_items_in_batch.*grpo"):
            grpo_loss(lp, adv, mask, loss_type=TEST_TYPE)
    else:
        assert torch.isfinite(grpo_loss(lp, adv, mask, loss_type=TEST_TYPE, backend="triton").loss)
    R.unregister(TEST_TYPE)
    with pytest.raises(ValueError, match=rf"loss_type must be one of .*got '{TEST_TYPE}'"):
        GRPOLossOptions(loss_type=TEST_TYPE)


def test_register_rejects_inconsistent_entries():
    with pytest.raises(ValueError, match="does not produce metrics"):
        R.register(R.LossType("bad", R.KernelKind.SAPO, R.PER_ROW_MEAN, metrics=("cispo_clip_ratio",)))
    with pytest.raises(ValueError, match="kernel_policy and torch_policy are required"):
        R.register(R.LossType("bad", R.KernelKind.POLICY_FN, R.PER_ROW_MEAN))
    assert "bad" not in R.names()


def test_builtin_declarations_match_trl():
    """trl 1.16's eight types and what trl's _compute_loss reads for each (landscape notes, section 4)."""
    assert R.TRL_LOSS_TYPES == ("grpo", "bnpo", "dr_grpo", "dapo", "cispo", "sapo", "luspo", "vespo")
    assert R.NUM_ITEMS_LOSSES == ("dapo", "cispo", "vespo")
    assert R.names_where(lambda e: e.required_options == ("max_completion_length",)) == ("dr_grpo",)
    assert R.names_where(lambda e: e.clips) == ("grpo", "bnpo", "dr_grpo", "dapo", "luspo")
    assert R.names_where(lambda e: not e.sequence_level) == ("cispo",)
    assert R.names_where(lambda e: not e.isr_per_sequence) == ("vespo",)
    assert R.names_where(lambda e: e.normaliser.per_micro_batch) == ("grpo", "bnpo", "dr_grpo", "sapo", "luspo")


# Files of the loss that must not name a loss type: they read the registry instead.
LAYERS = [
    "fastgrpo/grpo/launch.py",
    "fastgrpo/grpo/torch_math.py",
    "fastgrpo/grpo/finalize.py",
    "fastgrpo/grpo/checks.py",
    "fastgrpo/grpo/options.py",
    "fastgrpo/grpo/autograd.py",
    "fastgrpo/grpo/api.py",
    "fastgrpo/grpo/fused.py",
    "kernels/fastgrpo_kernels/grpo_loss.py",
]


@pytest.mark.parametrize("path", LAYERS)
def test_no_layer_names_a_loss_type(path):
    code = "\n".join(
        line.split("#")[0] for line in (ROOT / path).read_text().splitlines() if not line.lstrip().startswith("#")
    )
    code = re.sub(r'"""(.|\n)*?"""', "", code)  # docstrings may describe trl's math by name
    named = [t for t in R.TRL_LOSS_TYPES if re.search(rf"""["']{t}["']""", code)]
    assert not named, f"{path} names loss type(s) {named}: read fastgrpo.grpo.registry instead"
    if path.startswith("kernels/"):
        assert not re.search(r"LOSS_KIND\s*==\s*\d", code), "compare LOSS_KIND with the named KIND_* constants"


def test_kernel_kinds_and_vespo_clamps_come_from_the_registry():
    import fastgrpo_kernels.grpo_loss as K

    for kind in R.KernelKind:
        assert getattr(K, f"KIND_{kind.name}").value == int(kind)
    assert K.VESPO_LOG_RATIO_CLAMP.value == R.VESPO_LOG_RATIO_CLAMP
    assert K.VESPO_LOG_W_MIN.value == R.VESPO_LOG_W_MIN
    assert K.VESPO_LAMBDA_MIN.value == R.VESPO_LAMBDA_MIN
    source = (ROOT / "kernels/fastgrpo_kernels/grpo_loss.py").read_text() + (
        ROOT / "fastgrpo/grpo/torch_math.py"
    ).read_text()
    assert "1e-8" not in source and "18.42" not in source and "1e-4" not in source, "a vespo clamp written again"


# ---- options travel whole: the launcher flattens GRPOLossOptions once, by name; no two scalars can swap places

# A value for every float option a kernel branch reads, away from its default and from every other option's value.
DISTINCT = dict(
    epsilon=0.1,
    epsilon_high=0.45,
    delta=1.3,
    sapo_temperature_pos=0.5,
    sapo_temperature_neg=2.0,
    vespo_k_pos=1.5,
    vespo_lambda_pos=0.7,
    vespo_k_neg=0.4,
    vespo_lambda_neg=4.0,
    beta=0.04,
    off_policy_mask_threshold=0.05,
    entropy_coef=0.01,
)
EVERY_TYPE = ("beta", "off_policy_mask_threshold", "entropy_coef")


def _run(opts, x, backend):
    lp = x["per_token_logps"].clone().requires_grad_(True)
    ents = x["entropies"].clone().requires_grad_(True)
    others = {k: v for k, v in x.items() if k not in ("per_token_logps", "entropies", "advantages", "completion_mask")}
    out = grpo_loss(lp, x["advantages"], x["completion_mask"], entropies=ents, options=opts, backend=backend, **others)
    return out.loss.detach(), torch.autograd.grad(out.loss, [lp])[0]


@pytest.mark.parametrize("loss_type", R.TRL_LOSS_TYPES)
def test_every_option_reaches_the_kernel_under_its_own_name(loss_type):
    """Each option the loss type reads, set alone to a distinct value: the kernel (fed by launch.option_arguments)
    agrees with the torch path (which reads the options object by name), and the option changes the result.
    Swapping sapo_temperature_pos / _neg, a vespo k / lambda pair, or any two scalars in the launcher fails here."""
    g = torch.Generator().manual_seed(4)
    lp, _, _, _, mask = _inputs(4)
    adv = torch.tensor([0.8, -1.2, 0.5, -0.4, 1.1])  # both signs: each side's parameters matter
    noise = lambda: 0.6 * torch.randn(lp.shape, generator=g)  # noqa: E731 - wide ratios: every clip binds somewhere
    x = dict(
        per_token_logps=lp,
        advantages=adv,
        completion_mask=mask,
        entropies=torch.rand(lp.shape, generator=g) * 2,
        # vespo sums a row's log-ratios into one weight: keep it near 1, where phi depends on k and lambda
        old_per_token_logps=lp + noise() * (0.1 if R.get(loss_type).kind == R.KernelKind.VESPO else 1.0),
        ref_per_token_logps=lp + noise(),
        sampling_per_token_logps=lp + 0.2 + noise(),  # off-policy KL around the threshold
        num_items_in_batch=40,
    )
    base = GRPOLossOptions(loss_type=loss_type, max_completion_length=lp.shape[1])
    default = _run(base, x, "torch")
    for name in R.get(loss_type).options + EVERY_TYPE:
        opts = base.__class__(**{**base.__dict__, name: DISTINCT[name]})
        ours, want = _run(opts, x, "triton"), _run(opts, x, "torch")
        # fp32 on both sides (a swapped pair is off by > 0.1); the small vespo loss cancels to ~1e-5 relative
        assert rel_err(ours[0], want[0]) <= 1e-4 and rel_err(ours[1], want[1]) <= 1e-4, name
        moved = max(rel_err(want[0], default[0]), rel_err(want[1], default[1]))
        assert moved > 1e-3, f"{name} does not change the {loss_type} loss or gradient"


def test_launch_config_is_chosen_in_one_function(monkeypatch):
    """The launcher takes block sizes and warps from launch._launch_config only: pointing it elsewhere (as a
    launch-config resolver does) changes the launch, not the result."""
    import fastgrpo.grpo.launch as launch

    lp, old, _, adv, mask = _inputs(6, bsz=7, seqlen=37)
    kwargs = dict(old_per_token_logps=old, loss_type="grpo", importance_sampling_level="sequence", backend="triton")
    x = lp.clone().requires_grad_(True)
    out = grpo_loss(x, adv, mask, **kwargs)
    want = (out.loss, torch.autograd.grad(out.loss, [x])[0])
    seen = []

    def tiny(per_token_logps):
        seen.append((*per_token_logps.shape, per_token_logps.device.type))
        # 4 programs, 5 token tiles per row
        return launch.LaunchConfig(block_b=2, block_t=8, num_warps=1, enable_fp_fusion=True)

    monkeypatch.setattr(launch, "_launch_config", tiny)
    out = grpo_loss(x, adv, mask, **kwargs)
    assert seen == [(7, 37, "cpu")]
    assert rel_err(out.loss, want[0]) <= 1e-6 and rel_err(torch.autograd.grad(out.loss, [x])[0], want[1]) <= 1e-6
