"""linear_logprobs against the float64 eager reference, on the Triton kernels (interpreter on CPU) and the torch
path: log-probs, entropy, and every gradient, for awkward sizes and every option."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from _lp_helpers import AWKWARD, OPTION_CASES, kernel_overrides, make_case, rel_err

import fastgrpo
from fastgrpo.options import LogProbOptions
from fastgrpo.reference import reference_linear_logprobs

# Triton kernels on CPU tensors: needs the interpreter (tests/conftest.py).
pytestmark = pytest.mark.interpreter


BACKENDS = ["triton", "torch"]
# fp32 inputs: the kernels accumulate in fp32 (the interpreter's dot is exact fp32); errors come from summing
# O(V) exponentials and O(H) products in fp32, ~1e-6 relative at these sizes. 2e-5 leaves margin without hiding a
# wrong term (a missing or misplaced term gives errors of order 1).
FP32_REL = 2e-5


def _run(case, backend, opts, *, requires=("hidden",), grad_into=("logp",), upstream=None, overrides=None):
    """Run fastgrpo and the float64 reference on the same inputs; return (ours, ref) outputs and grads."""
    leaves = {"hidden": case.hidden, "weight": case.weight, "bias": case.bias}
    ours_in = {k: (None if v is None else v.clone().requires_grad_(k in requires)) for k, v in leaves.items()}
    ref_in = {k: (None if v is None else v.double().requires_grad_(k in requires)) for k, v in leaves.items()}
    with kernel_overrides(backend, **(overrides or {})):
        out = fastgrpo.linear_logprobs(
            ours_in["hidden"],
            ours_in["weight"],
            case.targets,
            bias=ours_in["bias"],
            backend=backend,
            options=dataclasses.replace(opts, return_entropy=True),  # every field, a new transform's included
        )
        ref = reference_linear_logprobs(
            ref_in["hidden"],
            ref_in["weight"],
            case.targets,
            ref_in["bias"],
            dataclasses.replace(opts, return_entropy=True),
        )
        grads = None
        if requires:
            if upstream is None:
                upstream = [torch.randn(case.targets.shape, dtype=torch.float64) for _ in range(2)]
            g_l, g_h = upstream

            def loss(lp, ent):
                total = 0
                if "logp" in grad_into:
                    total = total + (lp * g_l.to(lp.dtype)).sum()
                if "entropy" in grad_into:
                    total = total + (ent * g_h.to(ent.dtype)).sum()
                return total

            names = [k for k in requires if ours_in[k] is not None]
            g_ours = torch.autograd.grad(loss(out.logp, out.entropy), [ours_in[k] for k in names])
            g_ref = torch.autograd.grad(loss(*ref), [ref_in[k] for k in names])
            grads = {k: (a, b) for k, a, b in zip(names, g_ours, g_ref)}
    return out, ref, grads


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("opt_name", list(OPTION_CASES))
def test_forward_matches_reference(backend, opt_name):
    opts = OPTION_CASES[opt_name]
    case = make_case(*AWKWARD, bias=opt_name in ("softcap", "all"))
    with torch.no_grad():
        out, ref, _ = _run(case, backend, opts, requires=())
    assert out.logp.dtype == torch.float32 and out.entropy.dtype == torch.float32
    assert rel_err(out.logp, ref[0]) < FP32_REL
    assert rel_err(out.entropy, ref[1]) < FP32_REL
    ignored = case.targets == -100
    assert ignored.any() and (out.logp[ignored] == 0).all() and (out.entropy[ignored] == 0).all()
    assert (out.logp[~ignored] < 0).all()


# Every combination of requires_grad (bias present so all three leaves exist) x where the gradient flows.
REQUIRES = [
    ("hidden",),  # frozen head: the forward's softmax@W identity, no recompute (for logp-only gradients)
    ("weight",),
    ("bias",),
    ("hidden", "weight"),
    ("hidden", "bias"),
    ("weight", "bias"),
    ("hidden", "weight", "bias"),
]
GRAD_INTO = [("logp",), ("entropy",), ("logp", "entropy")]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("requires", REQUIRES, ids=lambda r: "+".join(r))
@pytest.mark.parametrize("grad_into", GRAD_INTO, ids=lambda g: "+".join(g))
def test_gradients_match_reference(backend, requires, grad_into):
    # Alternate option sets across the grid so each of them meets every requires_grad pattern somewhere.
    opt_name = list(OPTION_CASES)[(REQUIRES.index(requires) + GRAD_INTO.index(grad_into)) % len(OPTION_CASES)]
    case = make_case(*AWKWARD, bias=True)
    _, _, grads = _run(case, backend, OPTION_CASES[opt_name], requires=requires, grad_into=grad_into)
    assert set(grads) == set(requires)
    for name, (ours, ref) in grads.items():
        assert ours.dtype == getattr(case, name).dtype
        assert rel_err(ours, ref) < FP32_REL, (name, opt_name, rel_err(ours, ref))


@pytest.mark.parametrize("backend", BACKENDS)
def test_frozen_head_without_bias_and_leading_dims(backend):
    """Frozen head, no bias, [B, T, H] input: the identity path (triton) against autograd through the reference."""
    case = make_case(0, 24, 113, lead=(3, 5), bias=False)
    _, _, grads = _run(case, backend, OPTION_CASES["all"], requires=("hidden",))
    ours, ref = grads["hidden"]
    assert ours.shape == (3, 5, 24)
    assert rel_err(ours, ref) < FP32_REL


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shape", [(1, 24, 97), (5, 17, 20)], ids=["one-token", "vocab-below-one-block"])
def test_small_shapes(backend, shape):
    case = make_case(*shape, bias=True, n_ignored=0)
    out, ref, grads = _run(
        case, backend, OPTION_CASES["all"], requires=("hidden", "weight", "bias"), grad_into=("logp", "entropy")
    )
    assert rel_err(out.logp, ref[0]) < FP32_REL and rel_err(out.entropy, ref[1]) < FP32_REL
    for name, (ours, r) in grads.items():
        assert rel_err(ours, r) < FP32_REL, name


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("requires", [("hidden",), ("hidden", "weight", "bias")], ids=["frozen", "trainable"])
def test_all_targets_ignored(backend, requires):
    case = make_case(9, 24, 70, bias=True, n_ignored=9)
    out, _, grads = _run(case, backend, LogProbOptions(), requires=requires, grad_into=("logp", "entropy"))
    assert (out.logp == 0).all() and (out.entropy == 0).all()
    for name, (ours, _) in grads.items():
        assert torch.isfinite(ours).all() and (ours == 0).all(), name


def test_custom_ignore_index():
    case = make_case(11, 16, 50, n_ignored=3, ignore_index=-1)
    out, ref, grads = _run(case, "triton", LogProbOptions(ignore_index=-1), requires=("hidden", "weight"))
    assert rel_err(out.logp, ref[0]) < FP32_REL
    assert (out.logp[case.targets == -1] == 0).all()
    for name, (ours, r) in grads.items():
        assert rel_err(ours, r) < FP32_REL, name


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("requires", [("hidden",), ("hidden", "weight", "bias")], ids=["frozen", "trainable"])
def test_bf16_no_worse_than_eager_bf16(backend, requires):
    """bf16 inputs: our error against float64 must not exceed eager torch's at bf16 (materialized bf16 logits), with
    a small absolute floor for rounding of the fp32 outputs."""
    case = make_case(*AWKWARD, dtype=torch.bfloat16, bias=True)
    out, ref, grads = _run(case, backend, OPTION_CASES["softcap"], requires=requires, grad_into=("logp", "entropy"))
    leaves = {k: getattr(case, k).clone().requires_grad_(k in requires) for k in ("hidden", "weight", "bias")}
    e_lp, e_ent = reference_linear_logprobs(
        leaves["hidden"],
        leaves["weight"],
        case.targets,
        leaves["bias"],
        LogProbOptions(softcap=4.0, return_entropy=True),
        dtype=None,
    )
    assert rel_err(out.logp, ref[0]) <= max(rel_err(e_lp, ref[0]), 1e-3)
    assert rel_err(out.entropy, ref[1]) <= max(rel_err(e_ent, ref[1]), 1e-3)
    g_l, g_h = (torch.randn(case.targets.shape, dtype=torch.float64) for _ in range(2))
    # Eager bf16 gradients through autograd, with the same upstream gradients as ours.
    _, _, grads = _run(
        case, backend, OPTION_CASES["softcap"], requires=requires, grad_into=("logp", "entropy"), upstream=(g_l, g_h)
    )
    e_grads = torch.autograd.grad(
        (e_lp * g_l.float()).sum() + (e_ent * g_h.float()).sum(), [leaves[k] for k in requires]
    )
    for name, e_g in zip(requires, e_grads):
        ours, r = grads[name]
        assert ours.dtype == torch.bfloat16
        assert rel_err(ours, r) <= max(1.5 * rel_err(e_g, r), 1e-2), (name, rel_err(ours, r), rel_err(e_g, r))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("requires", [("hidden",), ("hidden", "weight", "bias")], ids=["frozen", "trainable"])
def test_deterministic(backend, requires):
    case = make_case(*AWKWARD, bias=True)
    upstream = [torch.randn(case.targets.shape, dtype=torch.float64) for _ in range(2)]
    runs = [
        _run(case, backend, OPTION_CASES["all"], requires=requires, grad_into=("logp", "entropy"), upstream=upstream)
        for _ in range(2)
    ]
    (o1, _, g1), (o2, _, g2) = runs
    assert torch.equal(o1.logp, o2.logp) and torch.equal(o1.entropy, o2.entropy)
    for name in requires:
        assert torch.equal(g1[name][0], g2[name][0]), name


def test_torch_path_qwen_vocabulary():
    """The chunked torch path at Qwen2.5's vocabulary (151936) and a small N, against float64."""
    case = make_case(6, 16, 151936, bias=False, n_ignored=1)
    out, ref, grads = _run(
        case, "torch", OPTION_CASES["temperature_scale"], requires=("hidden", "weight"), grad_into=("logp", "entropy")
    )
    assert rel_err(out.logp, ref[0]) < FP32_REL and rel_err(out.entropy, ref[1]) < FP32_REL
    for name, (ours, r) in grads.items():
        assert rel_err(ours, r) < FP32_REL, name


def test_triton_one_split_and_one_backward_chunk():
    """The launch shape used at large N (one vocabulary split, the whole vocabulary in one backward chunk)."""
    case = make_case(*AWKWARD, bias=True)
    out, ref, grads = _run(
        case,
        "triton",
        OPTION_CASES["all"],
        requires=("hidden", "weight", "bias"),
        grad_into=("logp", "entropy"),
        overrides=dict(num_splits=1, workspace_bytes=1 << 30),
    )
    assert rel_err(out.logp, ref[0]) < FP32_REL and rel_err(out.entropy, ref[1]) < FP32_REL
    for name, (ours, r) in grads.items():
        assert rel_err(ours, r) < FP32_REL, name
    _, _, grads = _run(case, "triton", OPTION_CASES["all"], requires=("hidden",), overrides=dict(num_splits=1))
    assert rel_err(*grads["hidden"]) < FP32_REL


@pytest.mark.parametrize("backend", BACKENDS)
def test_autocast_computes_in_autocast_dtype(backend):
    """Under autocast (fp32 master weights, bf16 compute, as trl's bf16 training), the projection runs in bf16: the
    same result as bf16 inputs, with gradients returned in the inputs' fp32."""
    case = make_case(*AWKWARD, bias=False)
    leaves = [case.hidden.clone().requires_grad_(), case.weight.clone().requires_grad_()]
    with kernel_overrides(backend), torch.autocast("cpu", dtype=torch.bfloat16):
        out = fastgrpo.linear_logprobs(*leaves, case.targets, backend=backend)
    gx, gw = torch.autograd.grad(out.logp.sum(), leaves)
    assert gx.dtype == torch.float32 and gw.dtype == torch.float32
    with kernel_overrides(backend):
        bf16 = fastgrpo.linear_logprobs(case.hidden.bfloat16(), case.weight.bfloat16(), case.targets, backend=backend)
    assert torch.equal(out.logp, bf16.logp)
    with kernel_overrides(backend):
        fp32 = fastgrpo.linear_logprobs(case.hidden, case.weight, case.targets, backend=backend)
    assert not torch.equal(out.logp, fp32.logp)  # the autocast dtype was really used


# ---- options travel whole: one LogProbOptions from the public function to the kernels' transform helper


def test_custom_ops_flatten_exactly_the_options_fields():
    """The custom ops are the one place a LogProbOptions becomes scalars: their schema holds one argument per field,
    in field order, generated from the dataclass (a new field appears here with no edit to ops.py)."""
    import fastgrpo.ops as ops

    names = [f.name for f in dataclasses.fields(LogProbOptions)]
    for op in (torch.ops.fastgrpo.linear_logprobs_fwd, torch.ops.fastgrpo.linear_logprobs_bwd):
        args = [a.name for a in op.default._schema.arguments]
        start = args.index(names[0])
        assert args[start : start + len(names)] == names, (op, args)
        assert not set(names) & set(args[:start] + args[start + len(names) :]), args
    opts = LogProbOptions(temperature=0.7, logit_scale=1.3, softcap=5.0, ignore_index=-1, return_entropy=True)
    assert ops._rebuild(ops._flatten(opts)) == opts


def _params(fn) -> list[str]:
    import inspect

    return list(inspect.signature(getattr(fn, "fn", fn)).parameters)


def test_every_layer_takes_the_options_object():
    """Above and below the custom ops, every layer passes the LogProbOptions object, never its fields; the kernels
    take the logit transform as the ``transform`` / ``TRANSFORM`` tuples that only ``logit_transform`` reads."""
    from fastgrpo import autograd, backward, ops, reference, torch_backend, triton_backend
    from fastgrpo_kernels import common, linear_logprobs_bwd, linear_logprobs_fwd

    fields = {"temperature", "logit_scale", "softcap", "return_entropy", "inv_t", "inv_temperature", "HAS_SOFTCAP"}
    layers = [
        autograd.LinearLogProbsFunction.forward,
        ops.logprobs_forward,
        ops.logprobs_backward,
        backward.linear_logprobs_backward,
        backward.softmax_w_backward,
        torch_backend.forward,
        torch_backend.backward,
        triton_backend.forward,
        triton_backend.backward,
        reference.reference_linear_logprobs,
        reference.transform_logits,
    ]
    for fn in layers:
        params = _params(fn)
        assert "opts" in params or "options" in params, fn
        assert not fields & set(params) and "ignore_index" not in params, (fn, params)
    kernels = [
        linear_logprobs_fwd.linear_logprobs_fwd_kernel,
        linear_logprobs_fwd.combine_splits_kernel,
        linear_logprobs_bwd.linear_logprobs_dlogits_kernel,
    ]
    for kernel in kernels:
        params = _params(kernel)
        assert {"transform", "TRANSFORM"} <= set(params) and not fields & set(params), (kernel, params)
    assert _params(common.logit_transform) == ["y", "transform", "TRANSFORM"]
    # The host half of the helper builds both tuples from the options object alone.
    args = common.transform_args(LogProbOptions(temperature=0.5, logit_scale=2.0, softcap=3.0))
    assert args == {"transform": (2.0, 3.0, 2.0), "TRANSFORM": (True,)}


LAUNCHERS = ["fastgrpo/triton_backend.py", "fastgrpo/grpo/launch.py"]


@pytest.mark.parametrize("path", LAUNCHERS)
def test_kernels_are_launched_with_keyword_arguments(path):
    """``kernel[grid](...)`` calls pass no positional argument: a reordered or swapped scalar cannot go unnoticed."""
    import ast
    import pathlib

    tree = ast.parse((pathlib.Path(__file__).resolve().parents[1] / path).read_text())
    launches = [n for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Subscript)]
    assert launches, f"no kernel launch found in {path}"
    for call in launches:
        assert not call.args, f"{path}:{call.lineno}: a kernel launched with positional arguments"


@pytest.mark.parametrize("backend", BACKENDS)
def test_options_object_equals_option_keywords(backend):
    case = make_case(6, 16, 37)
    kw = dict(temperature=0.7, logit_scale=1.3, softcap=4.0, return_entropy=True)
    a = fastgrpo.linear_logprobs(case.hidden, case.weight, case.targets, backend=backend, **kw)
    b = fastgrpo.linear_logprobs(case.hidden, case.weight, case.targets, backend=backend, options=LogProbOptions(**kw))
    assert torch.equal(a.logp, b.logp) and torch.equal(a.entropy, b.entropy)
    with pytest.raises(TypeError, match=r"either options= or option keywords.*temperature"):
        fastgrpo.linear_logprobs(case.hidden, case.weight, case.targets, temperature=0.5, options=LogProbOptions())
