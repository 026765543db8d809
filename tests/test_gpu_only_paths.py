"""Branches only a CUDA device takes, driven on CPU by injection (docs/gpu_only_paths.md lists them all).

Device checks are monkeypatched, CUDA queries answered by fakes that record what they were asked, torch's CUDA-only
GEMM overloads stood in for by a function mode that applies the checks each torch release makes (read in torch's
sources, see fastgrpo/gemm.py) and runs real torch ops on meta tensors for the argument parsing. The TF32 tests set
torch's real process-wide precision settings, as transformers does, and put them back.
"""

from __future__ import annotations

import contextlib
import logging

import pytest
import torch
import triton
import triton.language as tl
from _lp_helpers import make_case, rel_err
from torch.overrides import TorchFunctionMode

import fastgrpo
from fastgrpo import _log, api, gemm, launch_config, precision, tma, triton_backend
from fastgrpo.grpo import launch as grpo_launch
from fastgrpo.options import LogProbOptions
from fastgrpo.reference import reference_linear_logprobs
from fastgrpo_kernels import configs

NEW_PRECISION_API = hasattr(torch.backends, "fp32_precision")  # torch >= 2.9


# --- TF32: honour the user's setting through whichever API torch offers -----------------------------------------


def _precision_state() -> tuple:
    b = torch.backends
    if not NEW_PRECISION_API:
        return (b.cuda.matmul.allow_tf32,)
    return (b.fp32_precision, b.cuda.matmul.fp32_precision, b.mkldnn.matmul.fp32_precision)


_DEFAULT_STATE = ("none", "none", "none") if NEW_PRECISION_API else (False,)


@pytest.fixture
def torch_precision():
    """Starts from torch's default matmul precision and restores it: the settings are process-wide."""
    if _precision_state() != _DEFAULT_STATE:
        pytest.skip(f"matmul precision is not torch's default in this process: {_precision_state()}")
    try:
        yield
    finally:
        torch.set_float32_matmul_precision("highest")  # the legacy setting, and cuda/mkldnn matmul -> "ieee"
        if NEW_PRECISION_API:
            torch.backends.cuda.matmul.fp32_precision = "none"
            torch.backends.mkldnn.matmul.fp32_precision = "none"
            torch.backends.fp32_precision = "none"
        assert _precision_state() == _DEFAULT_STATE


@pytest.mark.skipif(not NEW_PRECISION_API, reason="torch < 2.9 has no fp32_precision settings")
def test_tf32_on_through_the_generic_new_api(torch_precision):
    # What transformers' enable_tf32(True) does on torch >= 2.9 (GRPOConfig(tf32=True) on Ampere+). Reading the
    # legacy flag now raises "mix of the legacy and new APIs": commit 1785a1e crashed here.
    torch.backends.fp32_precision = "tf32"
    assert precision.fp32_matmul_allows_tf32()
    assert triton_backend._dot_precision(torch.float32) == "tf32"


@pytest.mark.skipif(not NEW_PRECISION_API, reason="torch < 2.9 has no fp32_precision settings")
def test_tf32_off_through_the_new_api_after_the_legacy_one_turned_it_on(torch_precision):
    torch.set_float32_matmul_precision("high")
    torch.backends.cuda.matmul.fp32_precision = "ieee"  # the cuBLAS setting torch's own fp32 matmuls follow
    assert not precision.fp32_matmul_allows_tf32()
    assert triton_backend._dot_precision(torch.float32) == "ieee"


@pytest.mark.skipif(not NEW_PRECISION_API, reason="torch < 2.9 has no fp32_precision settings")
@pytest.mark.parametrize(
    "generic,cuda_matmul,expected",
    [("ieee", None, "ieee"), ("tf32", "ieee", "ieee"), ("ieee", "tf32", "tf32"), ("none", "tf32", "tf32")],
)
def test_tf32_cuda_matmul_setting_overrides_the_generic_one(torch_precision, generic, cuda_matmul, expected):
    torch.backends.fp32_precision = generic
    if cuda_matmul is not None:
        torch.backends.cuda.matmul.fp32_precision = cuda_matmul
    assert triton_backend._dot_precision(torch.float32) == expected


@pytest.mark.parametrize(
    "setting,expected",
    [("default", "ieee"), ("allow_tf32", "tf32"), ("high", "tf32"), ("medium", "tf32"), ("highest", "ieee")],
)
def test_tf32_legacy_settings(torch_precision, setting, expected):
    if setting == "allow_tf32":
        torch.backends.cuda.matmul.allow_tf32 = True
    elif setting != "default":
        torch.set_float32_matmul_precision(setting)
    assert triton_backend._dot_precision(torch.float32) == expected
    assert triton_backend._dot_precision(torch.bfloat16) is None  # the setting only concerns fp32 operands


class _LegacyCuBLAS:
    """``torch.backends.cuda.matmul`` as torch < 2.9 has it: no fp32_precision."""

    def __init__(self, allow_tf32: bool):
        self.allow_tf32 = allow_tf32

    def __getattr__(self, name):
        raise AttributeError("Unknown attribute " + name)  # what cuBLASModule.__getattr__ raises


@pytest.mark.parametrize("allow", [True, False])
def test_tf32_on_torch_without_the_new_api_reads_the_legacy_flag(monkeypatch, allow):
    monkeypatch.setattr(torch.backends.cuda, "matmul", _LegacyCuBLAS(allow))
    assert triton_backend._dot_precision(torch.float32) == ("tf32" if allow else "ieee")


@pytest.mark.interpreter
@pytest.mark.parametrize("tf32", [True, False])
def test_fp32_launch_after_transformers_enable_tf32(torch_precision, monkeypatch, tf32):
    """The user's path end to end: transformers sets TF32 (new API on torch >= 2.9), then an fp32 head runs the
    Triton kernels; the kernels get the precision the user chose and the config resolver its operand class."""
    enable_tf32 = getattr(pytest.importorskip("transformers.utils"), "enable_tf32", None)
    if enable_tf32 is None:
        pytest.skip("this transformers has no enable_tf32")
    enable_tf32(tf32)
    launches = []
    real = launch_config.LaunchConfigResolver.launch

    def spy(self, kind, run, **kw):
        launches.append(kw["precision"])
        return real(self, kind, run, **kw)

    monkeypatch.setattr(launch_config.LaunchConfigResolver, "launch", spy)
    case = make_case(9, 24, 70)
    out = fastgrpo.linear_logprobs(case.hidden, case.weight, case.targets, backend="triton")
    ref, _ = reference_linear_logprobs(case.hidden.double(), case.weight.double(), case.targets)
    assert rel_err(out.logp, ref) < 2e-5
    assert launches == ["tf32" if tf32 else "fp32"]  # exact fp32 dots (FMA configs) unless TF32 is allowed


# --- out_dtype GEMMs (fastgrpo/gemm.py) ---------------------------------------------------------------------------


class _CudaGemmsOf(TorchFunctionMode):
    """Stands in for torch's CUDA ``mm.dtype`` / ``addmm.dtype`` kernels on CPU tensors, with the dtype checks of
    torch ``version`` (fastgrpo/gemm.py cites where they were read); an fp32 ``self`` for ``addmm`` counts as
    accepted only where torch promises it (>= 2.10). Records each call's form."""

    def __init__(self, version: tuple[int, int]):
        super().__init__()
        self.version = version
        self.calls: list[str] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = dict(kwargs or {})
        if func not in (torch.mm, torch.addmm) or "out_dtype" not in kwargs:
            return func(*args, **kwargs)
        out_dtype, out = kwargs.pop("out_dtype"), kwargs.pop("out", None)
        if self.version < (2, 8):
            raise TypeError(f"torch {self.version} has no out_dtype overload of {func.__name__}")
        self_, a, b = (None, *args) if func is torch.mm else args
        assert not kwargs, kwargs  # alpha / beta: not used by fastgrpo
        assert a.dtype == b.dtype and a.dtype in (torch.bfloat16, torch.float16), (a.dtype, b.dtype)
        assert out_dtype == torch.float32
        assert out is None or out.dtype == out_dtype
        if self_ is not None:
            assert self.version >= (2, 10), "addmm with an fp32 self and 16-bit matrices: promised from torch 2.10"
            assert self_.dtype in (out_dtype, a.dtype)
        self.calls.append(f"{func.__name__}{'' if out is None else '_out'}")
        product = a.float() @ b.float()  # the mode is off inside its own handler
        result = product if self_ is None else self_.float() + product
        return result if out is None else out.copy_(result)


def _gemm_operands(dtype):
    # Shaped like the backward's: dy a column slice of the [N, width] workspace, its transpose for dW.
    ws = torch.randn(13, 48, dtype=torch.float64).to(dtype)
    dy = ws[:, :37]
    w = torch.randn(37, 20, dtype=torch.float64).to(dtype)
    x = torch.randn(13, 20, dtype=torch.float64).to(dtype)
    return dy, w, x


@pytest.mark.parametrize("version", [(2, 7), (2, 8), (2, 9), (2, 10), (2, 13)])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_out_dtype_gemms_per_torch_version(monkeypatch, version, dtype):
    monkeypatch.setattr(gemm, "_TORCH", version)
    monkeypatch.setattr(gemm, "_on_cuda", lambda t: True)
    dy, w, x = _gemm_operands(dtype)
    grad_x = torch.randn(13, 20)
    grad_x0 = grad_x.double().clone()
    grad_w = torch.full((40, 20), float("nan"))
    with _CudaGemmsOf(version) as fake:
        gemm.mm_fp32(dy, w, out=grad_x, accumulate=True)  # dX += dY @ W
        gemm.mm_fp32(dy.T, x, out=grad_w[3:40])  # dW chunk, fp32, written in place
        returned = gemm.mm_fp32(dy.T, x)  # dW chunk for a 16-bit weight
    if version < (2, 8):
        assert fake.calls == [] and gemm.plan(dy, w, accumulate=True) == "upcast"
    elif version < (2, 10):  # no fp32 self for addmm yet: out.add_(mm(..., out_dtype))
        assert fake.calls == ["mm", "mm_out", "mm"] and gemm.plan(dy, w, accumulate=True) == "mm_out_dtype"
    else:
        assert fake.calls == ["addmm_out", "mm_out", "mm"] and gemm.plan(dy, w, accumulate=True) == "addmm_out_dtype"
    ref_dx = grad_x0 + dy.double() @ w.double()
    ref_dw = dy.double().T @ x.double()
    assert rel_err(grad_x, ref_dx) < 1e-6
    assert rel_err(grad_w[3:40], ref_dw) < 1e-6 and grad_w[:3].isnan().all()
    assert returned.dtype == torch.float32 and rel_err(returned, ref_dw) < 1e-6


def test_out_dtype_gemms_parse_on_this_torch(monkeypatch):
    """The calls themselves, through this torch's real op overloads, on meta tensors (shapes and dtypes only)."""
    if gemm._TORCH < (2, 8):
        pytest.skip("no out_dtype overloads before torch 2.8")
    monkeypatch.setattr(gemm, "_on_cuda", lambda t: True)
    meta = dict(device="meta", dtype=torch.bfloat16)
    dy, w, x = torch.empty(13, 48, **meta)[:, :37], torch.empty(37, 20, **meta), torch.empty(13, 20, **meta)
    for version in sorted({(2, 8), gemm._TORCH}):
        monkeypatch.setattr(gemm, "_TORCH", version)
        grad_x = torch.empty(13, 20, device="meta")
        assert gemm.mm_fp32(dy, w, out=grad_x, accumulate=True) is grad_x
        grad_w = torch.empty(40, 20, device="meta")
        assert gemm.mm_fp32(dy.T, x, out=grad_w[3:40]).shape == (37, 20)
        assert gemm.mm_fp32(dy.T, x).dtype == torch.float32


def test_out_dtype_gemms_not_used_off_nvidia_cuda(monkeypatch):
    dy, w, _ = _gemm_operands(torch.bfloat16)
    monkeypatch.setattr(gemm, "_TORCH", (2, 13))
    assert gemm.plan(dy, w, accumulate=True) == "upcast"  # a CPU tensor
    monkeypatch.setattr(gemm, "_on_cuda", lambda t: True)
    assert gemm.plan(dy, w, accumulate=True) == "addmm_out_dtype"
    assert gemm.plan(dy.float(), w.float(), accumulate=True) == "upcast"  # fp32 operands
    assert gemm.plan(dy, w.half(), accumulate=True) == "upcast"  # mixed 16-bit dtypes
    monkeypatch.setattr(torch.version, "hip", "6.4")  # ROCm reports device.type "cuda" too
    assert gemm.plan(dy, w, accumulate=True) == "upcast"


# --- SM count, device index, launch device ------------------------------------------------------------------------


class _DeviceGuard:
    """Stands in for torch.cuda.device: records the device entered and whether a launch is inside it."""

    entered: list = []
    depth = 0

    def __init__(self, device):
        self.device = device

    def __enter__(self):
        _DeviceGuard.entered.append(self.device)
        _DeviceGuard.depth += 1

    def __exit__(self, *exc):
        _DeviceGuard.depth -= 1


@pytest.mark.parametrize("kind", ["cuda", "xpu"])
def test_launch_device_guard_is_the_tensors_device(monkeypatch, kind):
    monkeypatch.setattr(_DeviceGuard, "entered", [])
    monkeypatch.setattr(getattr(torch, kind), "device", _DeviceGuard)
    with triton_backend._on_device(torch.device(kind, 1)):
        assert _DeviceGuard.depth == 1
    with triton_backend._on_device(torch.device("cpu")):
        assert _DeviceGuard.depth == 0
    assert _DeviceGuard.entered == [torch.device(kind, 1)]


@pytest.mark.interpreter
def test_forward_and_backward_launch_inside_the_device_guard(monkeypatch):
    """Triton launches on the current CUDA device: every lm_head launch must run inside the guard for the tensors'
    device (a cuda:1 tensor while cuda:0 is current)."""
    guard = {"depth": 0, "devices": []}

    @contextlib.contextmanager
    def on_device(device):
        guard["devices"].append(device)
        guard["depth"] += 1
        try:
            yield
        finally:
            guard["depth"] -= 1

    seen = []
    real = launch_config.LaunchConfigResolver.launch

    def launch(self, kind, run, **kw):
        seen.append((kind, guard["depth"], kw["device"]))
        return real(self, kind, run, **kw)

    monkeypatch.setattr(triton_backend, "_on_device", on_device)
    monkeypatch.setattr(launch_config.LaunchConfigResolver, "launch", launch)
    case = make_case(9, 24, 70)
    weight = case.weight.clone().requires_grad_(True)
    out = fastgrpo.linear_logprobs(case.hidden, weight, case.targets, backend="triton")
    out.logp.sum().backward()
    dev = case.hidden.device
    assert seen == [("fwd", 1, dev), ("bwd", 1, dev)]  # each launch inside a guard for the tensors' device
    assert guard == {"depth": 0, "devices": [dev, dev]}


@pytest.mark.parametrize("device", ["cuda", "cuda:1", "xpu"])
def test_gpu_tensors_resolve_to_triton_or_say_why_not(monkeypatch, caplog, device):
    dev = torch.device(device)
    assert api.resolve_backend("auto", dev) == "triton"
    assert api.resolve_backend("triton", dev) == "triton"
    monkeypatch.setattr(api, "_triton_importable", lambda: False)
    monkeypatch.setattr(_log, "_said", set())
    with caplog.at_level(logging.WARNING, logger="fastgrpo"):
        assert api.resolve_backend("auto", dev) == "torch"  # slower, correct, and said once
    assert "triton is not importable" in caplog.text
    with pytest.raises(ValueError, match="needs the triton package"):
        api.resolve_backend("triton", dev)


def test_grpo_loss_tiles_within_the_gpu_budget():
    """GRPO loss kernel tiles: at most 1024 elements per program with every architecture's default (2048 under the
    interpreter)."""
    from fastgrpo_kernels import arch_configs

    sizes = [(1, 1), (8, 300), (64, 7), (3, 4096), (256, 512), (5, 33)]
    interp = [configs.INTERPRETER_CONFIGS["grpo_loss"].blocks(b, t) for b, t in sizes]
    for family in arch_configs.DEFAULTS:  # NVIDIA and AMD families
        for prec in ("bf16", "fp16", "fp32"):
            entry = arch_configs.default(family, "grpo_loss", prec)
            if entry is None:
                continue
            tiles = [configs.GRPOLossConfig(**entry).blocks(b, t) for b, t in sizes]
            for (bsz, seqlen), (bb, bt) in zip(sizes, tiles):
                assert bb * bt <= 1024 and bt == min(triton.next_power_of_2(seqlen), 512)
                assert 1 <= bb <= triton.next_power_of_2(bsz) and bb & (bb - 1) == 0
            assert tiles != interp  # the GPU entry is the one checked


# --- compiled-path operand handling (INTERPRET off) ---------------------------------------------------------------


def test_compiled_path_keeps_16_bit_operands(monkeypatch):
    monkeypatch.setattr(triton_backend, "INTERPRET", False)
    assert triton_backend._dot_dtype(torch.bfloat16) == tl.bfloat16
    assert triton_backend._dot_dtype(torch.float16) == tl.float16
    assert triton_backend._dot_dtype(torch.float32) == tl.float32
    x, w = torch.randn(3, 4), torch.randn(5, 4, dtype=torch.bfloat16)
    ops = triton_backend._interpreter_operands(torch.bfloat16, x, w, None)
    assert ops[0] is x and ops[1] is w and ops[2] is None  # the kernels cast in-register on the GPU
    monkeypatch.setattr(triton_backend, "INTERPRET", True)
    assert triton_backend._dot_dtype(torch.bfloat16) == tl.float32
    assert triton_backend._interpreter_operands(torch.bfloat16, x, w)[0].dtype == torch.bfloat16


# The dL/dy kernel's pointer arguments (launched by keyword) under the short names used below.
_DLOGITS_ARGS = {
    "x_ptr": "x", "w_ptr": "w", "b_ptr": "b", "tgt_ptr": "targets", "lse_ptr": "lse", "entropy_ptr": "entropy",
    "g_logp_ptr": "g_l", "g_ent_ptr": "g_h", "dy_ptr": "ws", "db_part_ptr": "db_part",
}  # fmt: skip
_TORCH_OF = {tl.bfloat16: torch.bfloat16, tl.float16: torch.float16, tl.float32: torch.float32}


class _FakeDlogits:
    """The dL/dy kernel as the compiled launch runs it, computed in fp64 here: operands cast to DOT_DTYPE in
    registers, dL/dy of columns [c0, c0 + wd) stored in the workspace's dtype, per-row-block bias sums in fp32."""

    def __init__(self):
        self.chunks = []

    def __getitem__(self, grid):
        return self.run

    def run(self, *args, **kw):
        assert not args  # keyword launches only
        a = {short: kw[name] for name, short in _DLOGITS_ARGS.items()}
        c0, wd = kw["c0"], kw["width"]
        logit_scale, _, inv_t = kw["transform"]
        assert kw["TRANSFORM"] == (False,) and not kw["USE_TMA"]  # no softcap
        op = _TORCH_OF[kw["DOT_DTYPE"]]
        x, w = a["x"].to(op).double(), a["w"][c0 : c0 + wd].to(op).double()
        scale = logit_scale * inv_t
        y = x @ w.T + (a["b"][c0 : c0 + wd].double() if kw["HAS_BIAS"] else 0.0)
        log_p = y * scale - a["lse"].double()[:, None]
        p = log_p.exp()
        dz = torch.zeros_like(p)
        if kw["HAS_LOGP_GRAD"]:
            g = a["g_l"].double()[:, None]
            dz -= g * p
            local = a["targets"] - c0
            rows = ((local >= 0) & (local < wd)).nonzero().squeeze(1)
            dz[rows, local[rows]] += g[rows, 0]
        if kw["HAS_ENTROPY_GRAD"]:
            dz -= a["g_h"].double()[:, None] * p * (log_p + a["entropy"].double()[:, None])
        dy = dz * scale
        a["ws"][:, :wd] = dy.to(a["ws"].dtype)
        if kw["HAS_BIAS_GRAD"]:
            block_n = kw["BLOCK_N"]
            for rb in range(a["db_part"].shape[0]):
                a["db_part"][rb, :wd] = dy[rb * block_n : (rb + 1) * block_n].sum(0).float()
        self.chunks.append((c0, wd, a["ws"].dtype))


@pytest.mark.parametrize("weight_dtype", [torch.bfloat16, torch.float32])
def test_compiled_backward_with_a_16_bit_workspace(monkeypatch, weight_dtype):
    """On a GPU the backward keeps dL/dy in the compute dtype (bf16) and feeds it to the gradient GEMMs; under the
    interpreter it is fp32. Drive the GPU branch with the kernel faked (fp64, stored as bf16)."""
    fake = _FakeDlogits()
    monkeypatch.setattr(triton_backend, "INTERPRET", False)
    monkeypatch.setattr(triton_backend, "linear_logprobs_dlogits_kernel", fake)
    case = make_case(21, 24, 150, dtype=torch.bfloat16, bias=True)
    weight = case.weight.to(weight_dtype)
    opts = LogProbOptions(temperature=0.7, return_entropy=True)
    leaves = [case.hidden.double(), weight.to(torch.bfloat16).double(), case.bias.double()]
    leaves = [t.requires_grad_() for t in leaves]
    logp, ent = reference_linear_logprobs(*leaves[:2], case.targets, leaves[2], opts)
    valid = (case.targets != -100).double()
    g_l, g_h = torch.randn(21, dtype=torch.float64) * valid, torch.randn(21, dtype=torch.float64) * valid
    ref = torch.autograd.grad((logp * g_l + ent * g_h).sum(), leaves)
    z = (leaves[0] @ leaves[1].T + leaves[2]) / 0.7
    lse = z.logsumexp(-1).detach().float()
    # 64-column chunks, three of them: per column, the larger of the [N] bf16 dL/dy column and an fp32 [H] row of
    # the per-chunk temporaries (the bf16 dW chunk, or the cast weight chunk)
    with launch_config.override(workspace_bytes=24 * 4 * 64, poison=True):
        grads = triton_backend.backward(
            case.hidden, weight, case.bias, case.targets, lse, ent.detach().float(), g_l.float(), g_h.float(),
            opts, torch.bfloat16, (True, True, True),
        )  # fmt: skip
    assert [c[:2] for c in fake.chunks] == [(0, 64), (64, 64), (128, 22)]
    assert all(c[2] == torch.bfloat16 for c in fake.chunks)  # the compute dtype, not the interpreter's fp32
    assert [g.dtype for g in grads] == [torch.bfloat16, weight_dtype, torch.bfloat16]
    for got, want in zip(grads, ref):
        assert rel_err(got, want) < 1e-2  # dL/dy rounded to bf16 once


# --- TMA descriptors (fastgrpo/tma.py) ----------------------------------------------------------------------------


@pytest.mark.parametrize("capability,expected", [((7, 5), False), ((8, 9), False), ((9, 0), True), ((12, 0), True)])
def test_tma_capability_is_the_tensors_device(monkeypatch, capability, expected):
    asked = []
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda d=None: asked.append(d) or capability)
    monkeypatch.setattr(torch.version, "hip", None)
    assert tma.tma_capable(torch.device("cuda", 1)) is expected
    assert asked == [torch.device("cuda", 1)]
    assert not tma.tma_capable(torch.device("cpu")) and len(asked) == 1


def test_tma_not_on_rocm(monkeypatch):
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda d=None: (9, 4))  # MI300 (gfx942)
    monkeypatch.setattr(torch.version, "hip", "6.4")
    assert not tma.tma_capable(torch.device("cuda", 0))


@pytest.fixture
def compiled_tma(monkeypatch, caplog):
    """tma.descriptors as on a GPU (INTERPRET off), with the device's TMA support injected."""
    monkeypatch.setattr(tma, "INTERPRET", False)
    caplog.set_level(logging.INFO, logger="fastgrpo")
    monkeypatch.setattr(_log, "_said", set())  # each test sees its own once-per-process message
    return lambda capable: monkeypatch.setattr(tma, "tma_capable", lambda device: capable)


def _bf16_operands():
    return torch.randn(64, 64).to(torch.bfloat16), torch.randn(256, 64).to(torch.bfloat16)


def test_tma_descriptors_built_on_an_sm90_device(compiled_tma):
    compiled_tma(True)
    x, w = _bf16_operands()
    x_desc, w_desc = tma.descriptors(x, w, 64, 128, 32, exact_fp32=False)
    assert x_desc is not None and w_desc is not None
    assert x_desc.base is x and list(x_desc.block_shape) == [64, 32] and list(x_desc.shape) == [64, 64]
    assert w_desc.base is w and list(w_desc.block_shape) == [128, 32] and list(w_desc.strides) == [64, 1]


@pytest.mark.parametrize("why", ["older GPU", "exact fp32", "old triton"])
def test_tma_falls_back_to_pointer_loads_and_says_why(compiled_tma, monkeypatch, caplog, why):
    compiled_tma(why != "older GPU")
    if why == "old triton":
        monkeypatch.setattr(tma, "TensorDescriptor", None)
    x, w = _bf16_operands()
    assert tma.descriptors(x, w, 64, 128, 32, exact_fp32=why == "exact fp32") == (None, None)
    said = {"older GPU": "sm_90", "exact fp32": "exact fp32", "old triton": "triton >= 3.4"}[why]
    assert any("use_tma requested but" in r.getMessage() and said in r.getMessage() for r in caplog.records)


def test_tma_descriptor_for_fp32_only_with_tf32(compiled_tma, torch_precision):
    """fp32 operands get TMA tiles only when TF32 is on (the launcher's exact_fp32 follows the user's setting)."""
    compiled_tma(True)
    cfg = configs.KernelConfig(block_n=64, block_v=64, block_k=32, use_tma=True)
    x, w = torch.randn(64, 64), torch.randn(128, 64)
    assert triton_backend._descriptors(cfg, x, w, torch.float32) == (None, None)
    torch.set_float32_matmul_precision("high")
    x_desc, w_desc = triton_backend._descriptors(cfg, x, w, torch.float32)
    assert x_desc is not None and w_desc is not None


# --- the same branches on a real GPU (marked gpu: skipped without CUDA) -------------------------------------------


@pytest.mark.gpu
@pytest.mark.parametrize("tf32", [False, True])
def test_gpu_fp32_head_follows_the_tf32_setting(torch_precision, tf32):
    """The setting as transformers writes it, on the device: the fp32 launch runs (commit 1785a1e raised with TF32
    on) and is as close to fp64 as torch's own fp32 matmul under the same setting."""
    if NEW_PRECISION_API:
        torch.backends.fp32_precision = "tf32" if tf32 else "ieee"
    else:
        torch.backends.cuda.matmul.allow_tf32 = tf32
    g = torch.Generator(device="cuda").manual_seed(0)
    x = torch.randn(333, 1024, device="cuda", generator=g)
    w = torch.randn(32000, 1024, device="cuda", generator=g) * (3.0 / 32)
    t = torch.randint(0, 32000, (333,), device="cuda", generator=g)
    out = fastgrpo.linear_logprobs(x, w, t, backend="triton")
    ref, _ = reference_linear_logprobs(x.double(), w.double(), t)
    eager = torch.log_softmax(x @ w.T, -1).gather(-1, t[:, None])[:, 0]
    assert rel_err(out.logp, ref) <= max(3 * rel_err(eager, ref), 1e-4)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_gpu_out_dtype_gemms_on_this_torch(dtype):
    dy, w, x = (t.cuda() for t in _gemm_operands(dtype))
    expected = "addmm_out_dtype" if gemm._TORCH >= (2, 10) else "mm_out_dtype" if gemm._TORCH >= (2, 8) else "upcast"
    assert gemm.plan(dy, w, accumulate=True) == ("upcast" if torch.version.hip else expected)
    grad_x = torch.randn(13, 20, device="cuda")
    ref_dx = grad_x.double() + dy.double() @ w.double()
    gemm.mm_fp32(dy, w, out=grad_x, accumulate=True)
    grad_w = torch.full((40, 20), float("nan"), device="cuda")
    gemm.mm_fp32(dy.T, x, out=grad_w[3:40])
    returned = gemm.mm_fp32(dy.T, x)
    ref_dw = dy.double().T @ x.double()
    assert rel_err(grad_x, ref_dx) < 1e-5
    assert rel_err(grad_w[3:40], ref_dw) < 1e-5 and grad_w[:3].isnan().all()
    assert returned.dtype == torch.float32 and rel_err(returned, ref_dw) < 1e-5


@pytest.mark.gpu
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs")
def test_gpu_launch_on_a_device_that_is_not_current():
    case = make_case(37, 64, 301, dtype=torch.bfloat16)
    hidden, weight = case.hidden.to("cuda:1").requires_grad_(), case.weight.to("cuda:1").requires_grad_()
    with torch.cuda.device(0):
        out = fastgrpo.linear_logprobs(hidden, weight, case.targets.to("cuda:1"), backend="triton")
        gx, gw = torch.autograd.grad(out.logp.sum(), [hidden, weight])
    leaves = [case.hidden.double().requires_grad_(), case.weight.double().requires_grad_()]
    ref, _ = reference_linear_logprobs(*leaves, case.targets)
    ref_gx, ref_gw = torch.autograd.grad(ref.sum(), leaves)
    assert rel_err(out.logp.cpu(), ref) < 1e-2
    assert rel_err(gx.cpu(), ref_gx) < 2e-2 and rel_err(gw.cpu(), ref_gw) < 2e-2


@pytest.mark.interpreter
def test_grpo_loss_launches_inside_the_device_guard(monkeypatch):
    """The GRPO loss kernel, like the lm_head kernels, launches inside the guard for its tensors' device."""
    entered, depth = [], {"now": 0, "at_launch": []}

    @contextlib.contextmanager
    def on_device(device):
        entered.append(device)
        depth["now"] += 1
        try:
            yield
        finally:
            depth["now"] -= 1

    real = grpo_launch.grpo_loss_fwd_kernel

    class Spy:
        def __getitem__(self, grid):
            depth["at_launch"].append(depth["now"])
            return real[grid]

    monkeypatch.setattr(grpo_launch, "_on_device", on_device)
    monkeypatch.setattr(grpo_launch, "grpo_loss_fwd_kernel", Spy())
    lp = torch.randn(3, 5, requires_grad=True)
    out = fastgrpo.grpo_loss(lp, torch.randn(3), torch.ones(3, 5), loss_type="grpo", backend="triton")
    out.loss.backward()
    assert entered == [lp.device] and depth["at_launch"] == [1]
