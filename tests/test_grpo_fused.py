"""``fastgrpo.fused_linear_grpo_loss`` against the composition eager-reference log-probs -> trl's own loss code."""

from __future__ import annotations

import pytest
import torch
from _grpo_trl import rel_err, run_trl_compute_loss
from torch.profiler import ProfilerActivity, profile

import fastgrpo.grpo.fused as fused_mod
from fastgrpo.grpo import GRPOLossOptions, fused_linear_grpo_loss
from fastgrpo.options import LogProbOptions
from fastgrpo.reference import reference_linear_logprobs

# Triton kernels on CPU tensors: needs the interpreter (tests/conftest.py).
pytestmark = pytest.mark.interpreter


BACKENDS = ("triton", "torch")
# The loss and the head gradients inherit the fp32 log-prob kernels' error: linear_logprobs' own bound, 2e-5.
FP32_REL = 2e-5
GRAD_REL = 2e-5
MAX_ERR: dict[tuple[str, str], dict[str, float]] = {}

CONFIGS = {
    "grpo_sequence_kl_bonus_offpolicy": (
        dict(
            loss_type="grpo",
            importance_sampling_level="sequence",
            beta=0.04,
            entropy_coef=0.01,
            off_policy_mask_threshold=0.05,
        ),
        dict(temperature=0.7, bias=True),
    ),
    "dapo_token_isr_delta_softcap": (
        dict(loss_type="dapo", delta=1.4, epsilon_high=0.28),
        dict(softcap=5.0, isr=True),
    ),
    "vespo_kl_isr_scale": (
        dict(loss_type="vespo", beta=0.04, gradient_accumulation_steps=2, steps_per_generation=4),
        dict(logit_scale=1.3, isr=True, bias=True),
    ),
    "luspo_sequence_no_old": (
        dict(loss_type="luspo", importance_sampling_level="sequence", beta=0.04, use_bias_correction_kl=False),
        dict(no_old=True),
    ),
}


def make_problem(seed: int, bsz=3, seqlen=7, hidden_size=24, vocab=80, *, bias=False):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(bsz, seqlen, hidden_size, generator=g, dtype=torch.float64)
    weight = torch.randn(vocab, hidden_size, generator=g, dtype=torch.float64) * (3.0 / hidden_size**0.5)
    b = torch.randn(vocab, generator=g, dtype=torch.float64) if bias else None
    ids = torch.randint(0, vocab, (bsz, seqlen), generator=g)
    lengths = torch.tensor([seqlen, 0, 4])[:bsz]  # a full row, an empty row, a padded row
    mask = (torch.arange(seqlen)[None, :] < lengths[:, None]).long()
    ids = ids.masked_fill(mask == 0, -100)  # never a valid id: proves padding never reaches the lm_head
    noise = lambda: 0.3 * torch.randn(bsz, seqlen, generator=g, dtype=torch.float64)
    return dict(
        hidden=hidden,
        weight=weight,
        bias=b,
        completion_ids=ids,
        completion_mask=mask,
        advantages=torch.randn(bsz, generator=g, dtype=torch.float64),
        noise=noise,
    )


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("config", list(CONFIGS))
def test_fused_matches_reference_logprobs_then_trl(config, backend):
    loss_kwargs, head = CONFIGS[config]
    p = make_problem(3, bias=head.get("bias", False))
    opts = GRPOLossOptions(max_completion_length=7, **loss_kwargs)
    lp_opts = LogProbOptions(
        temperature=head.get("temperature", 1.0), logit_scale=head.get("logit_scale", 1.0), softcap=head.get("softcap")
    )
    mask = p["completion_mask"]

    # Reference: float64 eager log-probs (materialized logits), then trl's _compute_loss, autograd to the head.
    h64 = p["hidden"].clone().requires_grad_(True)
    w64 = p["weight"].clone().requires_grad_(True)
    b64 = None if p["bias"] is None else p["bias"].clone().requires_grad_(True)
    ref_logp, ref_ent = reference_linear_logprobs(h64, w64, p["completion_ids"], b64, lp_opts, dtype=torch.float64)
    detached = ref_logp.detach()
    tensors = {
        "old_per_token_logps": None if head.get("no_old") else detached + p["noise"](),
        "ref_per_token_logps": detached + p["noise"]() if opts.beta else None,
        "importance_sampling_ratio": torch.exp(p["noise"]()) if head.get("isr") else None,
    }
    num_items = int(mask.sum()) * 2 if opts.needs_num_items else None
    ref_loss, ns = run_trl_compute_loss(
        opts, ref_logp, ref_ent, p["advantages"], mask, tensors, num_items, 1.0, torch.float64
    )
    leaves = [t for t in (h64, w64, b64) if t is not None]
    ref_grads = torch.autograd.grad(ref_loss, leaves)

    # Ours: fp32 inputs, fused head + GRPO loss.
    hidden = p["hidden"].float().requires_grad_(True)
    weight = p["weight"].float().requires_grad_(True)
    bias = None if p["bias"] is None else p["bias"].float().requires_grad_(True)
    out = fused_linear_grpo_loss(
        hidden,
        weight,
        p["completion_ids"],
        mask,
        p["advantages"].float(),
        bias=bias,
        temperature=lp_opts.temperature,
        logit_scale=lp_opts.logit_scale,
        softcap=lp_opts.softcap,
        backend=backend,
        options=opts,
        num_items_in_batch=num_items,
        **{k: None if t is None else t.float() for k, t in tensors.items()},
    )
    grads = torch.autograd.grad(out.loss, [t for t in (hidden, weight, bias) if t is not None])

    errs = {"loss": rel_err(out.loss, ref_loss)}
    assert errs["loss"] <= FP32_REL, (out.loss.item(), ref_loss.item())
    for name, ours, ref in zip(("hidden", "weight", "bias"), grads, ref_grads):
        assert torch.isfinite(ours).all(), name
        errs[name] = rel_err(ours, ref)
        assert errs[name] <= GRAD_REL, (name, errs[name])
    MAX_ERR[(config, backend)] = errs
    assert hidden.grad is None and torch.count_nonzero(grads[0][1]) == 0  # the empty row gets no gradient
    for name, values in ns._metrics["train"].items():
        if name in out.metrics:
            assert rel_err(out.local_mean(name), torch.tensor(values[-1])) <= 1e-5, name


def test_masked_tokens_cost_no_matmul_work(monkeypatch):
    """Only the rows where completion_mask != 0 reach linear_logprobs."""
    seen = []
    real = fused_mod.linear_logprobs

    def spy(hidden, *args, **kwargs):
        seen.append(hidden.shape[0])
        return real(hidden, *args, **kwargs)

    monkeypatch.setattr(fused_mod, "linear_logprobs", spy)
    p = make_problem(5)
    fused_linear_grpo_loss(
        p["hidden"].float(),
        p["weight"].float(),
        p["completion_ids"],
        p["completion_mask"],
        p["advantages"].float(),
        loss_type="grpo",
        backend="torch",
    )
    assert seen == [int(p["completion_mask"].sum())] and seen[0] < p["completion_mask"].numel()


def test_bad_inputs_raise_before_the_head_runs(monkeypatch):
    def boom(*args, **kwargs):
        raise AssertionError("linear_logprobs ran before the input error was raised")

    monkeypatch.setattr(fused_mod, "linear_logprobs", boom)
    p = make_problem(6)
    args = (p["hidden"].float(), p["weight"].float(), p["completion_ids"], p["completion_mask"])
    adv = p["advantages"].float()
    with pytest.raises(ValueError, match="loss_type must be one of"):
        fused_linear_grpo_loss(*args, adv, loss_type="ppo")
    with pytest.raises(ValueError, match="advantages must have shape"):
        fused_linear_grpo_loss(*args, adv[:2], loss_type="grpo")
    with pytest.raises(ValueError, match="num_items_in_batch"):
        fused_linear_grpo_loss(*args, adv, loss_type="vespo")
    with pytest.raises(ValueError, match="completion_ids must have shape"):
        fused_linear_grpo_loss(args[0], args[1], args[2][:, 1:], args[3], adv, loss_type="grpo")
    with pytest.raises(ValueError, match="hidden must be a"):
        fused_linear_grpo_loss(args[0][0], *args[1:], adv, loss_type="grpo")
    with pytest.raises(TypeError, match="do not pass entropies"):
        fused_linear_grpo_loss(*args, adv, loss_type="grpo", entropies=torch.zeros(3, 7))


def _largest_allocation(fn) -> int:
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    return max((e.cpu_memory_usage for e in prof.events() if e.cpu_memory_usage > 0), default=0)


def test_fused_torch_path_never_allocates_tokens_by_vocab():
    """torch.profiler memory events: no single allocation reaches the size of the [N, V] fp32 logits, forward and
    backward included, while the eager composition (the check's control) does allocate it."""
    bsz, seqlen, hidden_size, vocab = 4, 256, 32, 16384  # N = 896 valid tokens; their logits would be 56 MiB
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(bsz, seqlen, hidden_size, generator=g).requires_grad_(True)
    weight = (torch.randn(vocab, hidden_size, generator=g) / hidden_size**0.5).requires_grad_(True)
    ids = torch.randint(0, vocab, (bsz, seqlen), generator=g)
    mask = torch.ones(bsz, seqlen, dtype=torch.long)
    mask[-1, seqlen // 2 :] = 0  # padding: the gather / scatter path
    adv = torch.randn(bsz, generator=g)
    logits_bytes = int(mask.sum()) * vocab * 4

    def fused():
        out = fused_linear_grpo_loss(hidden, weight, ids, mask, adv, loss_type="grpo", beta=0.0, backend="torch")
        out.loss.backward()

    def eager():
        logp = (hidden @ weight.T).log_softmax(-1).gather(-1, ids[..., None])[..., 0]
        (-(logp * adv[:, None]).mean()).backward()

    assert _largest_allocation(eager) >= logits_bytes  # the profiler does see a logits-sized allocation
    largest = _largest_allocation(fused)
    assert largest < logits_bytes // 2, f"largest allocation {largest} B vs logits {logits_bytes} B"


def test_zz_report_fused_errors():
    """Prints the relative errors of the composition tests above (run with -rP to see them)."""
    if not MAX_ERR:
        pytest.skip("run together with test_fused_matches_reference_logprobs_then_trl")
    for (config, backend), errs in sorted(MAX_ERR.items()):
        print(f"{config:36s} {backend:6s} " + "  ".join(f"{k} {v:.1e}" for k, v in errs.items()))
