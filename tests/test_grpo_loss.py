"""``fastgrpo.grpo_loss`` against the installed trl's own ``GRPOTrainer._compute_loss`` (run on a stand-in ``self``).

Every loss type is compared with trl in float64 (the reference) and in float32 on the same fp32 inputs: loss,
d loss / d per_token_logps, d loss / d entropies, and every metric trl logs, at relative error <= 1e-5, on the Triton
kernel (under the interpreter on CPU) and on the torch backend.
"""

from __future__ import annotations

import dataclasses
import itertools

import pytest
import torch
from _grpo_trl import compare_with_trl, rel_err, trl_entropy_mask, trl_loss

import fastgrpo
from fastgrpo.grpo import LOSS_TYPES, GRPOLossOptions, GRPOLossOutput, grpo_loss
from fastgrpo.grpo import layout as L
from fastgrpo.grpo import registry as R

# Triton kernels on CPU tensors: needs the interpreter (tests/conftest.py).
pytestmark = pytest.mark.interpreter


FP32_REL = 1e-5
BACKENDS = ("triton", "torch")

# Covering design: the 16 runs of a two-level orthogonal array OA(16, 15, 2, 2) (rows of the Sylvester Hadamard
# matrix). Each of the 15 switches below takes both its values in 8 runs, and every pair of switches meets in all
# four value combinations, so every loss type sees every value of every switch, and every pair of switch values,
# in 16 runs instead of 2**15.
SWITCHES = (
    "sequence_level",
    "beta",
    "delta",
    "no_bias_correction",
    "is_ratio",
    "off_policy_mask",
    "entropy_mask",
    "entropy_bonus",
    "no_old_logps",
    "sampling_logps",
    "advantages_2d",
    "is_ratio_per_seq",
    "grad_accum",
    "num_processes",
    "epsilon_high",
)
RUNS = [{name: bool(bin(run & (j + 1)).count("1") % 2) for j, name in enumerate(SWITCHES)} for run in range(16)]


def make_inputs(seed: int, bsz: int = 5, seqlen: int = 13, *, empty_row: bool = True, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    rand = lambda *shape: torch.randn(*shape, generator=g, dtype=torch.float64)
    logps = -torch.rand(bsz, seqlen, generator=g, dtype=torch.float64) * 3
    lengths = torch.randint(1, seqlen + 1, (bsz,), generator=g)
    lengths[0] = seqlen
    if empty_row and bsz > 2:
        lengths[2] = 0  # a sequence without completion tokens
    mask = (torch.arange(seqlen)[None, :] < lengths[:, None]).long()
    sampling = logps + 0.3 * rand(bsz, seqlen)
    sampling[0, -1] = float("nan")  # vLLM could not score this token: trl's off-policy mask ignores it
    tensors = dict(
        per_token_logps=logps,
        advantages=rand(bsz),
        completion_mask=mask,
        old_per_token_logps=logps + 0.3 * rand(bsz, seqlen),
        ref_per_token_logps=logps + 0.3 * rand(bsz, seqlen),
        sampling_per_token_logps=sampling,
        importance_sampling_ratio=torch.exp(0.2 * rand(bsz, seqlen)),
        entropies=torch.rand(bsz, seqlen, generator=g, dtype=torch.float64) * 2,
    )
    return {k: v.to(dtype) if v.is_floating_point() else v for k, v in tensors.items()}


def case_from_run(loss_type: str, run: dict[str, bool], seed: int):
    """(options, tensors for both sides, top_entropy_quantile) for one run of the covering design."""
    x = make_inputs(seed)
    bsz, seqlen = x["per_token_logps"].shape
    level = "sequence" if run["sequence_level"] and R.get(loss_type).sequence_level else "token"
    eps_high = {"cispo": (1.2, None)}.get(loss_type, (None, 0.28))[run["epsilon_high"]]
    opts = GRPOLossOptions(
        loss_type=loss_type,
        importance_sampling_level=level,
        beta=0.04 if run["beta"] else 0.0,
        epsilon_high=eps_high,
        delta=1.25 if run["delta"] else None,  # between 1 + 0.2 and 1 + 0.28: the clip metrics read the clamped ratio
        use_bias_correction_kl=not run["no_bias_correction"],
        max_completion_length=seqlen + 4,
        off_policy_mask_threshold=0.05 if run["off_policy_mask"] else None,
        entropy_coef=0.01 if run["entropy_bonus"] else 0.0,
        gradient_accumulation_steps=2 if run["grad_accum"] else 1,
        steps_per_generation=4 if run["grad_accum"] else None,
        num_processes=2 if run["num_processes"] else 1,
    )
    tensors = {
        "per_token_logps": x["per_token_logps"],
        "advantages": x["advantages"][:, None] if run["advantages_2d"] else x["advantages"],
        "completion_mask": x["completion_mask"],
        "entropies": x["entropies"],
        "num_items_in_batch": int(x["completion_mask"].sum()) * opts.num_processes * 2
        if opts.needs_num_items
        else None,
    }
    if not run["no_old_logps"]:
        tensors["old_per_token_logps"] = x["old_per_token_logps"]
    if opts.beta:
        tensors["ref_per_token_logps"] = x["ref_per_token_logps"]
    if run["sampling_logps"]:
        tensors["sampling_per_token_logps"] = x["sampling_per_token_logps"]
    if run["is_ratio"]:
        isr = x["importance_sampling_ratio"]
        per_seq = run["is_ratio_per_seq"] and R.get(loss_type).isr_per_sequence  # trl: vespo needs [B, T]
        tensors["importance_sampling_ratio"] = isr[:, :1].contiguous() if per_seq else isr
    quantile = 0.6 if run["entropy_mask"] else 1.0
    return opts, tensors, quantile


def run_ours(opts, tensors, quantile, backend):
    """grpo_loss on fp32 copies; returns (output, d/d logps, d/d entropies)."""
    logps = tensors["per_token_logps"].float().clone().requires_grad_(True)
    ents = tensors["entropies"].float().clone().requires_grad_(True)
    others = {
        k: v.float() if isinstance(v, torch.Tensor) and v.is_floating_point() else v
        for k, v in tensors.items()
        if k not in ("per_token_logps", "entropies", "advantages", "completion_mask")
    }
    if quantile < 1.0:
        others["entropy_mask"] = trl_entropy_mask(ents.detach().double(), tensors["completion_mask"], quantile)
    out = grpo_loss(
        logps,
        tensors["advantages"].float(),
        tensors["completion_mask"],
        entropies=ents,
        options=opts,
        backend=backend,
        **others,
    )
    grads = torch.autograd.grad(out.loss, [logps, ents], allow_unused=True)
    return out, grads[0], grads[1]


def check_against_trl(opts, tensors, quantile, backend, label, *, fp32_trl=True):
    """Compare with trl in float64 (the reference) and, unless ``fp32_trl=False``, with trl in float32."""
    out, g_lp, g_ent = run_ours(opts, tensors, quantile, backend)
    for dtype in (torch.float64, torch.float32) if fp32_trl else (torch.float64,):
        ref = trl_loss(opts, **tensors, top_entropy_quantile=quantile, dtype=dtype)
        errs = compare_with_trl(out, g_lp, g_ent, ref)
        bad = {k: v for k, v in errs.items() if not v <= FP32_REL}
        assert not bad, f"{label} vs trl in {dtype}: {bad}"
    return out


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("run_index", range(16))
@pytest.mark.parametrize("loss_type", LOSS_TYPES)
def test_matches_trl_compute_loss(loss_type, run_index, backend):
    run = RUNS[run_index]
    opts, tensors, quantile = case_from_run(loss_type, run, seed=1000 + run_index)
    on = sorted(k for k, v in run.items() if v)
    check_against_trl(opts, tensors, quantile, backend, f"{loss_type} run {run_index} {on} [{backend}]")


def test_covering_design_is_pairwise():
    """Every pair of switches takes all four value combinations (the design claim above)."""
    for a, b in itertools.combinations(SWITCHES, 2):
        assert {(r[a], r[b]) for r in RUNS} == {(False, False), (False, True), (True, False), (True, True)}, (a, b)


@pytest.mark.parametrize("loss_type", ["grpo", "dapo", "sapo", "vespo", "luspo"])
def test_matches_trl_several_programs_and_token_blocks(loss_type):
    """B=9 and T=600: several programs of whole rows, and two token blocks per row (BLOCK_T = 512)."""
    x = make_inputs(7, bsz=9, seqlen=600)
    opts = GRPOLossOptions(
        loss_type=loss_type,
        importance_sampling_level="sequence" if loss_type == "grpo" else "token",
        beta=0.04,
        delta=1.4,
        off_policy_mask_threshold=0.05,
        entropy_coef=0.01,
        max_completion_length=600,
    )
    tensors = {k: x[k] for k in ("per_token_logps", "advantages", "completion_mask", "entropies")}
    tensors.update(
        old_per_token_logps=x["old_per_token_logps"],
        ref_per_token_logps=x["ref_per_token_logps"],
        importance_sampling_ratio=x["importance_sampling_ratio"],
        num_items_in_batch=int(x["completion_mask"].sum()) if opts.needs_num_items else None,
    )
    for backend in BACKENDS:
        check_against_trl(opts, tensors, 1.0, backend, f"{loss_type} B=9 T=600 [{backend}]")


# ---------------------------------------------------------------------------------------------------- edge cases


def _edge_tensors(x, **overrides):
    tensors = {k: x[k] for k in ("per_token_logps", "advantages", "completion_mask", "entropies")}
    tensors.update(
        old_per_token_logps=x["old_per_token_logps"],
        ref_per_token_logps=x["ref_per_token_logps"],
        sampling_per_token_logps=x["sampling_per_token_logps"],
    )
    tensors.update(overrides)
    return tensors


def _edge_opts(loss_type, level, seqlen):
    return GRPOLossOptions(
        loss_type=loss_type,
        importance_sampling_level=level,
        beta=0.04,
        delta=1.25,
        epsilon_high=0.28,
        off_policy_mask_threshold=0.05,
        entropy_coef=0.01,
        max_completion_length=seqlen,
    )


EDGE_CASES = (
    "all_rows_masked",
    "zero_advantages",
    "b1_t1",
    "ratio_exactly_one",
    "extreme_log_ratios",
    "unscorable_tokens",
    "sequence_clipping",
)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("edge", EDGE_CASES)
def test_edge_cases_match_trl(edge, backend):
    """Each edge case for every loss type and both importance levels (an empty row is in every parity run)."""
    x = make_inputs(11)
    lp = x["per_token_logps"]
    if edge == "all_rows_masked":
        x["completion_mask"] = torch.zeros_like(x["completion_mask"])
    elif edge == "zero_advantages":
        x["advantages"] = torch.zeros_like(x["advantages"])
    elif edge == "b1_t1":
        x = {k: v[:1, :1] if v.dim() == 2 else v[:1] for k, v in make_inputs(12, bsz=1, seqlen=1).items()}
    elif edge == "ratio_exactly_one":
        x["old_per_token_logps"] = lp.clone()
        x["sampling_per_token_logps"] = lp.clone()
    elif edge == "extreme_log_ratios":  # |log-ratio| up to 30: exp overflows nothing, vespo's clamps at 20 bite
        signs = torch.where(torch.rand(lp.shape, generator=torch.Generator().manual_seed(3)) < 0.5, -1.0, 1.0)
        x["old_per_token_logps"] = lp - 30 * signs
        x["ref_per_token_logps"] = lp + 25 * signs
    elif edge == "unscorable_tokens":  # NaN sampling log-probs (vLLM), inside and outside the mask
        x["advantages"] = -x["advantages"].abs()  # negative advantages: the off-policy mask decides every row
        samp = lp.clone()  # zero KL: kept ...
        samp[0] += 0.5  # ... except row 0 (KL 0.5 > threshold): dropped, unless its NaN turns into something else
        samp[0, 3] = samp[1, 3] = samp[1, -1] = float("nan")
        x["sampling_per_token_logps"] = samp
    elif edge == "sequence_clipping":  # sequence ratios on both sides of the clip range and of delta, both signs of A
        shifts = torch.tensor([0.5, -0.5, 0.1, 0.3, 0.24], dtype=lp.dtype)
        x["old_per_token_logps"] = lp - shifts[:, None]
        x["advantages"] = torch.tensor([1.0, -1.0, 0.5, -0.7, 0.9], dtype=lp.dtype)
    seqlen = x["per_token_logps"].shape[1]
    for loss_type in LOSS_TYPES:
        for level in ("token", "sequence"):
            if level == "sequence" and not R.get(loss_type).sequence_level:
                continue
            opts = _edge_opts(loss_type, level, seqlen)
            n_items = int(x["completion_mask"].sum()) if opts.needs_num_items else None
            tensors = _edge_tensors(x, num_items_in_batch=n_items)
            # At |ref - logp| = 25 trl's own fp32 KL gradient, (1 - e^d) * r + (e^d - d - 1) * r, cancels to noise;
            # ours uses the exact -d * r, so the extreme case is compared with trl in float64 only.
            label = f"{edge} {loss_type} {level} [{backend}]"
            fp32_trl = edge != "extreme_log_ratios"
            out = check_against_trl(opts, tensors, 1.0, backend, label, fp32_trl=fp32_trl)
            assert torch.isfinite(out.loss)


@pytest.mark.parametrize("backend", BACKENDS)
def test_non_default_sapo_and_vespo_parameters_match_trl(backend):
    """Temperatures and gamma parameters reach the kernel; lambda = 0 hits trl's clamp(min=1e-4)."""
    x = make_inputs(31)
    tensors = _edge_tensors(x, num_items_in_batch=50)
    for opts in (
        GRPOLossOptions(loss_type="sapo", sapo_temperature_pos=0.5, sapo_temperature_neg=2.0),
        GRPOLossOptions(
            loss_type="vespo", vespo_k_pos=1.5, vespo_lambda_pos=0.0, vespo_k_neg=0.5, vespo_lambda_neg=4.0
        ),
    ):
        check_against_trl(opts, tensors, 1.0, backend, f"{opts} [{backend}]")


# ----------------------------------------------------------------------------------------- properties of the op


@pytest.mark.parametrize("loss_type", LOSS_TYPES)
def test_deterministic_and_backends_agree(loss_type):
    """Bit-identical run to run on the Triton kernel; the two backends agree to fp32 rounding."""
    opts, tensors, quantile = case_from_run(loss_type, RUNS[13], seed=5)
    first = run_ours(opts, tensors, quantile, "triton")
    second = run_ours(opts, tensors, quantile, "triton")
    for a, b in zip((first[0].loss, first[1], first[2]), (second[0].loss, second[1], second[2])):
        assert (a is None and b is None) or torch.equal(a, b)
    for name in first[0].metrics:
        assert torch.equal(first[0].metrics[name], second[0].metrics[name]), name
    torch_out = run_ours(opts, tensors, quantile, "torch")
    assert rel_err(first[0].loss, torch_out[0].loss) <= FP32_REL
    assert rel_err(first[1], torch_out[1]) <= FP32_REL


@pytest.mark.parametrize("backend", BACKENDS)
def test_no_grad_and_low_precision_inputs(backend):
    x = make_inputs(21)
    kwargs = dict(old_per_token_logps=x["old_per_token_logps"], num_items_in_batch=40)
    with torch.no_grad():
        ref = grpo_loss(x["per_token_logps"], x["advantages"], x["completion_mask"], backend=backend, **kwargs)
    assert ref.loss.grad_fn is None and torch.isfinite(ref.loss)
    lp16 = x["per_token_logps"].bfloat16().requires_grad_(True)
    out = grpo_loss(lp16, x["advantages"], x["completion_mask"], backend=backend, **kwargs)
    (grad,) = torch.autograd.grad(out.loss, [lp16])
    assert out.loss.dtype == torch.float32 and grad.dtype == torch.bfloat16 and torch.isfinite(grad).all()
    # bf16 rounding of the log-probs (at most 2^-9 relative each) moves this loss by 8.2e-4 relative (measured, both
    # backends); 2e-3 leaves a 2.4x margin. Relative error alone is seed-dependent (a loss near 0 cancels: 1e-4 to
    # 5e-2 over seeds 21-40), so also check that the change is the first-order effect of the rounding, nothing else:
    # |dloss - g . d| <= 1e-2 * sum |g| |d| (measured <= 4.2e-3 over seeds 21-40, d = lp_bf16 - lp, g = fp32 grad).
    assert rel_err(out.loss, ref.loss) < 2e-3
    lp32 = x["per_token_logps"].clone().requires_grad_(True)
    (g,) = torch.autograd.grad(
        grpo_loss(lp32, x["advantages"], x["completion_mask"], backend=backend, **kwargs).loss, [lp32]
    )
    d = lp16.detach().float() - x["per_token_logps"]
    first_order = (g * d).sum()
    assert (out.loss.detach() - ref.loss - first_order).abs() <= 1e-2 * (g.abs() * d.abs()).sum()


def test_kernel_stats_layout_matches_python_layout():
    import fastgrpo_kernels.grpo_loss as K

    for name in (
        "ROW_LOSS",
        "ROW_COUNT",
        "KL_SUM",
        "ENTROPY_SUM",
        "ENTROPY_BONUS_SUM",
        "ENTROPY_BONUS_COUNT",
        "CLIP_LOW",
        "CLIP_HIGH",
        "CLIP_REGION",
        "CISPO_CLIP",
        "PHI_SEQ",
        "NUM_STATS",
    ):
        assert getattr(K, name).value == getattr(L, name), name


def test_public_exports_and_options_object():
    assert fastgrpo.grpo_loss is grpo_loss and fastgrpo.GRPOLossOutput is GRPOLossOutput
    assert fastgrpo.GRPOLossOptions is GRPOLossOptions and callable(fastgrpo.fused_linear_grpo_loss)
    opts = GRPOLossOptions()
    with pytest.raises(dataclasses.FrozenInstanceError):
        opts.beta = 1.0  # type: ignore[misc]
    # keywords override an options object; trl's defaults otherwise
    x = make_inputs(2)
    a = grpo_loss(x["per_token_logps"], x["advantages"], x["completion_mask"], options=opts, loss_type="grpo")
    b = grpo_loss(x["per_token_logps"], x["advantages"], x["completion_mask"], loss_type="grpo")
    assert torch.equal(a.loss, b.loss) and opts.loss_type == "dapo" and opts.epsilon == 0.2


# --------------------------------------------------------------------------------------------------- bad inputs


def _base():
    x = make_inputs(3)
    return x["per_token_logps"], x["advantages"], x["completion_mask"]


@pytest.fixture
def no_kernel(monkeypatch):
    """Any launch fails the test: every input error must be raised before the kernels run."""

    def boom(*args, **kwargs):
        raise AssertionError("a kernel ran before the input error was raised")

    import fastgrpo.grpo.autograd as autograd_mod

    monkeypatch.setattr(autograd_mod, "grpo_rows", boom)


BAD_INPUTS = [
    (dict(loss_type="ppo"), ValueError, r"loss_type must be one of \('grpo', 'bnpo', 'dr_grpo', 'dapo', 'cispo'"),
    (dict(importance_sampling_level="row"), ValueError, r"importance_sampling_level must be one of \('token', 'seq"),
    (dict(loss_type="cispo", importance_sampling_level="sequence"), ValueError, r"cispo.*importance_sampling_level"),
    (dict(loss_type="vespo"), ValueError, r"num_items_in_batch.*loss types that do not need it"),
    (dict(loss_type="dapo"), ValueError, r"pass num_items_in_batch"),
    (dict(loss_type="dr_grpo"), ValueError, r"max_completion_length"),
    (dict(loss_type="grpo", beta=0.04), ValueError, r"ref_per_token_logps"),
    (dict(loss_type="grpo", entropy_coef=0.1), ValueError, r"pass entropies"),
    (dict(loss_type="grpo", epsilonn=0.1), TypeError, r"unknown GRPO loss option.*epsilonn.*valid options"),
    (dict(loss_type="grpo", beta="0.1"), TypeError, r"beta must be a float"),
    (dict(loss_type="grpo", gradient_accumulation_steps=0), ValueError, r"gradient_accumulation_steps must be >= 1"),
]


@pytest.mark.parametrize(("kwargs", "exc", "match"), BAD_INPUTS)
def test_bad_options_raise_clear_errors(kwargs, exc, match, no_kernel):
    lp, adv, mask = _base()
    with pytest.raises(exc, match=match):
        grpo_loss(lp, adv, mask, **kwargs)


def test_bad_tensors_raise_clear_errors(no_kernel):
    lp, adv, mask = _base()
    bsz, seqlen = lp.shape
    cases = [
        (dict(advantages=adv[:-1]), r"advantages must have shape \[B\] = \(5,\) or \[B, 1\]"),
        (dict(advantages=adv[:, None].expand(bsz, seqlen)), r"advantages must have shape .*per-token advantages"),
        (dict(completion_mask=mask[:, :-1]), r"completion_mask must have the shape of per_token_logps"),
        (dict(per_token_logps=lp[0]), r"per_token_logps must have shape \[B, T\]"),
        (dict(old_per_token_logps=lp[:, 1:]), r"old_per_token_logps must have the shape"),
        (dict(entropies=lp[1:]), r"entropies must have the shape"),
        (dict(loss_type="vespo", num_items_in_batch=3, importance_sampling_ratio=lp[:, :1].exp()), r"vespo needs"),
        (dict(importance_sampling_ratio=lp[:, :2].exp()), r"importance_sampling_ratio must have shape"),
        (dict(num_items_in_batch=torch.ones(2)), r"num_items_in_batch must be a number or a one-element tensor"),
    ]
    for override, match in cases:
        args = dict(per_token_logps=lp, advantages=adv, completion_mask=mask, loss_type="dapo", num_items_in_batch=9)
        args.update(override)
        with pytest.raises(ValueError, match=match):
            grpo_loss(args.pop("per_token_logps"), args.pop("advantages"), args.pop("completion_mask"), **args)
    with pytest.raises(TypeError, match=r"per_token_logps must be a float32, bfloat16, float16 or float64 tensor"):
        grpo_loss(lp.long(), adv, mask, loss_type="grpo")
    with pytest.raises(TypeError, match=r"advantages must be a torch.Tensor"):
        grpo_loss(lp, [1.0] * bsz, mask, loss_type="grpo")


def test_report_max_errors():
    """Largest relative error vs trl per loss type, over one covering-design run per type on both backends (run with
    -rP to see the table). Self-contained: it measures what it prints, whatever else ran before it."""
    worst: dict[tuple[str, str], float] = {}
    for i, loss_type in enumerate(LOSS_TYPES):
        opts, tensors, quantile = case_from_run(loss_type, RUNS[(3 * i + 5) % 16], seed=2000 + i)
        for backend in BACKENDS:
            out, g_lp, g_ent = run_ours(opts, tensors, quantile, backend)
            for dtype in (torch.float64, torch.float32):
                ref = trl_loss(opts, **tensors, top_entropy_quantile=quantile, dtype=dtype)
                key = (loss_type, str(dtype).removeprefix("torch."))
                worst[key] = max(worst.get(key, 0.0), *compare_with_trl(out, g_lp, g_ent, ref).values())
    print("largest relative error vs trl's _compute_loss (loss, grads, metrics), per loss type:")
    for loss_type in LOSS_TYPES:
        f64, f32 = worst[(loss_type, "float64")], worst[(loss_type, "float32")]
        print(f"  {loss_type:8s} vs trl float64 {f64:.2e}   vs trl float32 {f32:.2e}")
    assert max(worst.values()) <= FP32_REL
