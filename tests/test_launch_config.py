"""The launch-config resolver (``fastgrpo.launch_config``): its order of resolution, the per-architecture defaults
(``fastgrpo_kernels.arch_configs``), the CUDA-only branches (compute capability, SM count, device index) driven on
CPU by injection, and guards that every Triton launch takes its config from the resolver."""

from __future__ import annotations

import ast
import dataclasses
import json
import logging
import pathlib

import pytest
import torch
from _lp_helpers import make_case

import fastgrpo
from fastgrpo import api, launch_config, triton_backend
from fastgrpo.grpo import launch as grpo_launch
from fastgrpo.launch_config import LaunchConfigResolver
from fastgrpo_kernels import arch_configs, configs
from fastgrpo_kernels.configs import CombineConfig, FrozenRoute, GRPOLossConfig, KernelConfig

ROOT = pathlib.Path(__file__).resolve().parents[1]
CUDA = torch.device("cuda", 0)


@pytest.fixture(autouse=True)
def _no_autotune_env(monkeypatch):
    monkeypatch.delenv("FASTGRPO_AUTOTUNE", raising=False)
    monkeypatch.delenv("FASTGRPO_AUTOTUNE_CACHE", raising=False)


def _capability(monkeypatch, capability: tuple[int, int]) -> list:
    """Fake CUDA device of ``capability``; returns the devices the resolver asked about."""
    asked = []
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: asked.append(device) or capability)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: f"fake sm_{capability[0]}{capability[1]}")
    return asked


# ---- architecture families ----

FAMILIES = {
    (7, 5): "sm75",
    (8, 0): "sm80",
    (8, 6): "sm86",
    (8, 7): "sm80",  # Jetson Orin: A100's shared memory per SM
    (8, 9): "sm86",  # Ada: the same shared memory as sm_86
    (9, 0): "sm90",
    (10, 0): "sm100",
    (10, 3): "sm100",
    (11, 0): "sm100",
    (12, 0): "sm120",
    (12, 1): "sm120",
    (13, 0): "sm120",  # newer than any family: the newest
}


@pytest.mark.parametrize("capability,family", FAMILIES.items(), ids=[f"sm{a}{b}" for a, b in FAMILIES])
def test_arch_family_from_the_device_capability(monkeypatch, capability, family):
    assert arch_configs.arch_family(capability) == family
    asked = _capability(monkeypatch, capability)
    r = LaunchConfigResolver(interpret=False)
    assert r.arch(torch.device("cuda", 1)) == family
    assert asked == [torch.device("cuda", 1)]  # the tensor's device, not the current one
    assert r.arch(torch.device("cpu")) is None


def test_every_family_has_its_own_defaults_in_use(monkeypatch):
    """The resolver reads each family's entry (a distinctive value put in one family shows up only there)."""
    for capability, family in FAMILIES.items():
        if family in arch_configs.TORCH_PATH:  # no Triton kernel there (test_kernel_compile.py covers it)
            continue
        table = {f: {k: dict(v) for k, v in kinds.items()} for f, kinds in arch_configs.DEFAULTS.items()}
        table[family]["bwd"] = {**table[family]["bwd"], "bf16": {"block_n": 32, "num_warps": 2}}
        monkeypatch.setattr(arch_configs, "DEFAULTS", table)
        _capability(monkeypatch, capability)
        r = LaunchConfigResolver(interpret=False)
        assert r.resolve("bwd", "bf16", device=CUDA) == KernelConfig(block_n=32, num_warps=2), capability
        assert r.resolve("bwd", "fp16", device=CUDA) != KernelConfig(block_n=32, num_warps=2)


def test_older_than_sm75_is_unsupported_torch_path_or_clear_error(monkeypatch, caplog):
    """sm_70 (V100) and older: backend='auto' takes the torch path and says so once; backend='triton' raises."""
    with pytest.raises(arch_configs.UnsupportedArchitecture, match="older than sm_75"):
        arch_configs.arch_family((7, 0))
    _capability(monkeypatch, (7, 0))
    with launch_config.use(LaunchConfigResolver(interpret=False)):
        with caplog.at_level(logging.WARNING, logger="fastgrpo"):
            assert api.resolve_backend("auto", CUDA) == "torch"
        assert any("older than sm_75" in r.getMessage() for r in caplog.records)
        with pytest.raises(ValueError, match="backend='triton'.*older than sm_75"):
            api.resolve_backend("triton", CUDA)
        _capability(monkeypatch, (8, 0))
        assert api.resolve_backend("auto", CUDA) == "triton"


def test_no_kernel_for_a_precision_is_said_before_launch(monkeypatch):
    """An arch table entry of None (no Triton kernel for that precision there) is a clear error, not a guess."""
    table = {f: {k: dict(v) for k, v in kinds.items()} for f, kinds in arch_configs.DEFAULTS.items()}
    table["sm80"]["fwd"]["bf16"] = None
    monkeypatch.setattr(arch_configs, "DEFAULTS", table)
    _capability(monkeypatch, (8, 0))
    r = LaunchConfigResolver(interpret=False)
    assert "no Triton kernel for bf16 operands on sm80" in r.unsupported_reason(CUDA, "bf16")
    assert r.unsupported_reason(CUDA, "fp16") is None
    with pytest.raises(ValueError, match="no Triton fwd kernel for bf16 operands on sm80"):
        r.resolve("fwd", "bf16", device=CUDA)


def test_arch_table_layout():
    """Every family x kernel x precision has an entry whose fields belong to that kernel's config."""
    nvidia, amd = set(arch_configs.ARCH_FAMILIES), set(arch_configs.AMD_FAMILIES)
    assert nvidia == set(arch_configs.CAPABILITY) and not nvidia & amd
    assert set(arch_configs.DEFAULTS) == set(arch_configs.SHARED_MEMORY_PER_BLOCK) == nvidia | amd
    assert set(arch_configs.KERNELS) == set(configs.KINDS) - {"frozen_route"}
    assert set(arch_configs.PRECISIONS) == set(configs.PRECISIONS)
    for family, kernels in arch_configs.DEFAULTS.items():
        if family in amd:  # keyed by gfx name (tests/test_rocm_paths.py drives the ROCm route)
            assert arch_configs.amd_family(f"{family}:sramecc+:xnack-") == family
        else:
            assert arch_configs.arch_family(arch_configs.CAPABILITY[family]) == family
        for kernel, entries in kernels.items():  # only AMD tables set AMD launch options
            fields = [f for f in entries.values() if f is not None]
            assert all(not set(f) & set(configs.AMD_OPTIONS) for f in fields) or family in amd, (family, kernel)
        assert set(kernels) == set(arch_configs.KERNELS), family
        for kernel, entries in kernels.items():
            assert set(entries) == set(arch_configs.PRECISIONS), (family, kernel)
            for fields in entries.values():
                if fields is not None:
                    configs.CONFIG_CLASSES[kernel].from_dict(fields)  # raises on a misspelt field


def test_fp_fusion_is_pinned_for_every_kernel_launch(monkeypatch):
    """Every kernel family's config carries FP fusion (``LaunchOptions``), and every launch config the resolver
    gives (each family x kernel x precision, the interpreter's, the autotuning candidates) has the pinned setting:
    none leaves it to Triton, whose default changes in 3.10. A tuned entry or an override may still set it."""
    kernel_classes = {configs.CONFIG_CLASSES[k] for k in arch_configs.KERNELS}
    assert all(issubclass(cls, configs.LaunchOptions) for cls in kernel_classes)
    assert not issubclass(FrozenRoute, configs.LaunchOptions)  # a route, not a launch
    assert isinstance(configs.FP_FUSION, bool)
    resolved = []
    for capability, family in FAMILIES.items():
        if family in arch_configs.TORCH_PATH:
            continue
        _capability(monkeypatch, capability)
        r = LaunchConfigResolver(interpret=False)
        for kind in arch_configs.KERNELS:
            for precision in arch_configs.PRECISIONS:
                resolved.append(r.resolve(kind, precision, device=CUDA))
                resolved += r.candidates(kind, precision)
    interp = LaunchConfigResolver(interpret=True)
    resolved += [interp.resolve(kind, "bf16", device=CUDA) for kind in arch_configs.KERNELS]
    assert {c.enable_fp_fusion for c in resolved} == {configs.FP_FUSION}
    flipped = KernelConfig.from_dict({"enable_fp_fusion": not configs.FP_FUSION})
    assert flipped.to_dict() == {"enable_fp_fusion": not configs.FP_FUSION} and "fp_fusion=" in flipped.label()
    assert KernelConfig(64, 64) == KernelConfig(block_n=64, block_v=64)  # the field is keyword-only


# ---- the order of resolution ----


def _write_table(tmp_path, family, entries):
    (tmp_path / f"{family}.json").write_text(json.dumps({"device": "test", "entries": entries}))


def test_resolution_order(monkeypatch, tmp_path):
    """interpreter -> tuned table (nearest shape) -> arch default -> autotune choice -> override."""
    _capability(monkeypatch, (9, 0))
    small = {"block_n": 64, "block_v": 256, "num_warps": 8}
    large = {"block_n": 128, "block_v": 64, "num_stages": 4}
    _write_table(
        tmp_path,
        "sm90",
        [
            {"kind": "fwd", "dtype": "bf16", "n": 4096, "h": 896, "config": small},
            {"kind": "fwd", "dtype": "bf16", "n": 4096, "h": 3584, "config": large},
            {"kind": "bwd", "dtype": "bf16", "n": 4096, "h": 3584, "config": {"workspace_bytes": 1 << 28}},
            {"kind": "combine", "dtype": "bf16", "n": 4096, "h": 3584, "config": {"block_n": 32}},
            {"kind": "grpo_loss", "dtype": "fp32", "n": 64, "h": 1024, "config": {"max_tile": 2048}},
            {"kind": "frozen_route", "dtype": "bf16", "n": 16384, "h": 3584, "identity": False},
            {"kind": "frozen_route", "dtype": "bf16", "n": 16384, "h": 896, "identity": True},
        ],
    )
    r = LaunchConfigResolver(interpret=False, tuned_dir=tmp_path)
    get = lambda kind, precision="bf16", **shape: r.resolve(kind, precision, device=CUDA, **shape)  # noqa: E731
    # 1. the interpreter's configs, whatever the tables say
    interp = LaunchConfigResolver(interpret=True, tuned_dir=tmp_path)
    for kind in configs.KINDS:
        assert interp.resolve(kind, "bf16", device=CUDA, n=4096, h=896) == configs.INTERPRETER_CONFIGS[kind]
    # 2. the tuned entry nearest in H, then N
    assert get("fwd", n=8192, h=1024) == KernelConfig(**small)
    assert get("fwd", n=100, h=4096) == KernelConfig(**large)
    assert get("bwd", n=100, h=896).workspace_bytes == 1 << 28
    assert get("combine", n=100, h=896) == CombineConfig(block_n=32)
    assert get("grpo_loss", "fp32", n=8, h=700) == GRPOLossConfig(max_tile=2048)
    assert get("frozen_route", n=16384, h=3584) == FrozenRoute(softmax_w_identity=False)
    assert get("frozen_route", n=4096, h=1024) == FrozenRoute(softmax_w_identity=True)
    # 3. no entry for this kind / precision / family, or no shape: the family's built-in default
    sm90 = lambda kind, p: configs.CONFIG_CLASSES[kind](**arch_configs.default("sm90", kind, p))  # noqa: E731
    assert get("fwd_softmax_w", n=4096, h=896) == sm90("fwd_softmax_w", "bf16")
    assert get("fwd", "fp32", n=4096, h=896) == sm90("fwd", "fp32") == configs.GPU_CONFIG_FP32
    assert get("fwd", "tf32", n=4096, h=896) == sm90("fwd", "tf32")
    assert get("fwd") == sm90("fwd", "bf16")
    _capability(monkeypatch, (8, 0))  # no sm80 table
    assert get("fwd", n=4096, h=896) == KernelConfig(**arch_configs.default("sm80", "fwd", "bf16"))
    assert get("frozen_route", n=16384, h=3584) == FrozenRoute()
    _capability(monkeypatch, (9, 0))
    # 4. an autotuned choice replaces the table's entry (only while autotuning is on)
    r.autotuner.enable()
    choice = KernelConfig(block_n=32, block_v=32, block_k=32)
    r.autotuner.record(r.autotuner.key("fwd", "bf16", 4096, 896, 1000, CUDA), choice)
    assert get("fwd", n=4096, h=896, vocab=1000) == choice
    assert get("fwd", n=4096, h=896, vocab=999) == KernelConfig(**small)  # another shape class
    # 5. overrides win over everything, for the kinds named (default: the lm_head GEMM kernels)
    with r.override(num_warps=2):
        assert get("fwd", n=4096, h=896, vocab=1000) == dataclasses.replace(choice, num_warps=2)
        assert get("bwd", n=100, h=896).num_warps == 2
        assert get("combine", n=100, h=896) == CombineConfig(block_n=32)
        with r.override(kinds=("combine", "grpo_loss"), num_warps=1):
            assert get("combine", n=100, h=896) == CombineConfig(block_n=32, num_warps=1)
            assert get("grpo_loss", "fp32", n=8, h=700).num_warps == 1
        assert get("combine", n=100, h=896).num_warps == 4
    with r.override(kinds="frozen_route", softmax_w_identity=True):
        assert get("frozen_route", n=16384, h=3584) == FrozenRoute(softmax_w_identity=True)
    r.autotuner.disable()
    assert get("fwd", n=4096, h=896, vocab=1000) == KernelConfig(**small)


def test_malformed_tuned_table_and_bad_arguments_are_rejected(monkeypatch, tmp_path):
    _capability(monkeypatch, (9, 0))
    _write_table(tmp_path, "sm90", [{"kind": "fwd", "dtype": "bf16", "n": 1, "h": 1, "config": {"blok_n": 64}}])
    r = LaunchConfigResolver(interpret=False, tuned_dir=tmp_path)
    with pytest.raises(ValueError, match="blok_n"):
        r.resolve("fwd", "bf16", device=CUDA, n=1, h=1)
    with pytest.raises(ValueError, match="kind must be one of"):
        r.resolve("forward", "bf16", device=CUDA)
    with pytest.raises(ValueError, match="precision must be one of"):
        r.resolve("fwd", "float32", device=CUDA)
    with pytest.raises(ValueError, match="blok_v"), r.override(blok_v=3):
        pass
    bad = r.override(kinds=("grpo_loss",), block_v=3)
    with pytest.raises(ValueError, match="GRPOLossConfig fields for grpo_loss.*block_v"), bad:
        pass


def test_tuned_table_is_reread_when_rewritten(monkeypatch, tmp_path):
    """The tuner rewrites its table while a run reads it: a changed file is read again, never a stale copy."""
    _capability(monkeypatch, (9, 0))
    r = LaunchConfigResolver(interpret=False, tuned_dir=tmp_path)
    _write_table(tmp_path, "sm90", [{"kind": "fwd", "dtype": "bf16", "n": 64, "h": 64, "config": {"block_n": 64}}])
    assert r.resolve("fwd", "bf16", device=CUDA, n=64, h=64).block_n == 64
    _write_table(tmp_path, "sm90", [{"kind": "fwd", "dtype": "bf16", "n": 64, "h": 64, "config": {"block_n": 256}}])
    assert r.resolve("fwd", "bf16", device=CUDA, n=64, h=64).block_n == 256


# ---- GPU-only branches by injection ----


def test_sm_count_per_device_index(monkeypatch):
    """Splits fill the tensor's device: its own SM count (index None: the current device), read once per index."""
    asked = []

    class Props:
        def __init__(self, index):
            self.multi_processor_count = {0: 132, 1: 108, 3: 84}[index]

    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda index: asked.append(index) or Props(index))
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 3)
    r = LaunchConfigResolver(interpret=False)
    assert r.num_sms(torch.device("cuda", 1)) == 108
    assert r.num_sms(torch.device("cuda", 0)) == 132
    assert r.num_sms(torch.device("cuda")) == 84
    assert r.num_sms(torch.device("cuda", 1)) == 108
    assert asked == [1, 0, 3]
    assert r.num_sms(torch.device("cpu")) == 4
    cfg = KernelConfig(min_splits=1)  # 1 row block: splits = 2 programs per SM, within the vocabulary's tiles
    assert configs.num_splits(cfg, 100, 896, 151936, r.num_sms(torch.device("cuda", 1)), False) == 216
    assert configs.num_splits(cfg, 100, 896, 151936, r.num_sms(torch.device("cuda", 0)), False) == 264


def test_grpo_loss_config_blocks(monkeypatch):
    """The GRPO loss kernel's blocks: whole rows, powers of two, 512 tokens and 1024 elements per tile on a GPU
    (2048 under the interpreter); what the launcher passes is what the resolver says."""
    _capability(monkeypatch, (9, 0))
    gpu = LaunchConfigResolver(interpret=False)
    interp = LaunchConfigResolver(interpret=True)
    for (bsz, seqlen), on_gpu, on_interp in [
        ((3, 700), (2, 512), (4, 512)),
        ((8, 100), (8, 128), (8, 128)),
        ((64, 40), (16, 64), (32, 64)),
        ((1, 1), (1, 1), (1, 1)),
    ]:
        logps = torch.empty(bsz, seqlen)
        assert gpu.resolve("grpo_loss", "fp32", device=CUDA, n=bsz, h=seqlen).blocks(bsz, seqlen) == on_gpu
        assert interp.grpo_loss_config(logps).blocks(bsz, seqlen) == on_interp
        with launch_config.use(interp):
            assert grpo_launch._launch_config(logps) == (*on_interp, 4, configs.FP_FUSION, ())  # no AMD options


# ---- nothing bypasses the resolver ----

LAUNCHERS = [ROOT / "fastgrpo" / "triton_backend.py", ROOT / "fastgrpo" / "grpo" / "launch.py"]


def test_no_layer_builds_or_hard_codes_a_launch_config():
    """Only the resolver constructs configs and reads the tables; launchers pass no literal block size or warps."""
    owners = {ROOT / "fastgrpo" / "launch_config.py", ROOT / "fastgrpo" / "tuning.py"}
    built = ("KernelConfig", "CombineConfig", "GRPOLossConfig", "FrozenRoute")
    read = ("arch_configs", "tuned_table", "GPU_CONFIG", "GPU_CONFIG_FP32", "INTERPRETER_CONFIG", "INTERPRETER_CONFIGS")
    offenders = []
    for path in sorted((ROOT / "fastgrpo").rglob("*.py")):
        if path in owners:
            continue
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.alias) and node.name.split(".")[-1] in read:
                offenders.append(f"{path.relative_to(ROOT)}:{node.lineno} imports {node.name}")
            name = node.attr if isinstance(node, ast.Attribute) else node.id if isinstance(node, ast.Name) else None
            if name in read:
                offenders.append(f"{path.relative_to(ROOT)}:{node.lineno} reads {name}")
            if isinstance(node, ast.Call):
                func = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", None)
                dc_replace = func == "replace" and getattr(getattr(node.func, "value", None), "id", "") == "dataclasses"
                if func in built or func == "from_dict" or dc_replace:
                    offenders.append(f"{path.relative_to(ROOT)}:{node.lineno} builds a config with {func}(...)")
            if path in LAUNCHERS and isinstance(node, ast.Call) and isinstance(node.func, ast.Subscript):
                # a kernel launch, kernel[grid](...): FP fusion from its config, never Triton's default
                fusion = [k.value for k in node.keywords if k.arg == "enable_fp_fusion"]
                if not fusion or isinstance(fusion[0], ast.Constant):
                    offenders.append(f"{path.relative_to(ROOT)}:{node.lineno} launches without the config's FP fusion")
            if path in LAUNCHERS and isinstance(node, ast.keyword) and node.arg is not None:
                launch_arg = node.arg in ("num_warps", "num_stages", "enable_fp_fusion") or node.arg.startswith(
                    "BLOCK_"
                )
                if launch_arg and isinstance(node.value, ast.Constant):
                    offenders.append(f"{path.relative_to(ROOT)}:{node.lineno} passes {node.arg}={node.value.value}")
    assert not offenders, offenders


class _KernelSpy:
    """Stands in for a @triton.jit kernel: records each launch's block sizes and warps, then launches it."""

    def __init__(self, name, kernel, launches):
        self.name, self.kernel, self.launches = name, kernel, launches

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            launch = ("num_warps", "num_stages", "enable_fp_fusion")
            meta = {k: v for k, v in kwargs.items() if k.startswith("BLOCK_") or k in launch}
            self.launches.append((self.name, meta))
            return self.kernel[grid](*args, **kwargs)

        return launch


@pytest.mark.interpreter
def test_every_launch_uses_the_resolved_config(monkeypatch):
    """Distinctive overrides for every kernel family: each launch (forward, combine, dL/dy, GRPO loss) carries
    exactly the block sizes, warps and FP fusion setting the resolver returned for its kind."""
    from fastgrpo.grpo import grpo_loss

    launches = []
    for module, name in [
        (triton_backend, "linear_logprobs_fwd_kernel"),
        (triton_backend, "combine_splits_kernel"),
        (triton_backend, "linear_logprobs_dlogits_kernel"),
        (grpo_launch, "grpo_loss_fwd_kernel"),
    ]:
        monkeypatch.setattr(module, name, _KernelSpy(name, getattr(module, name), launches))
    flip = not configs.FP_FUSION  # the GEMMs and the loss flipped, the combine as configured: each launch its own
    gemm = dict(block_n=32, block_v=16, block_k=32, num_warps=2, num_stages=2, enable_fp_fusion=flip)
    combine = dict(block_n=32, block_k=32, num_warps=1)
    loss = dict(max_block_t=16, max_tile=64, num_warps=2, enable_fp_fusion=flip)
    r = LaunchConfigResolver()
    resolved = []
    real_resolve = r.resolve
    monkeypatch.setattr(r, "resolve", lambda kind, *a, **k: resolved.append(kind) or real_resolve(kind, *a, **k))
    overrides = r.override(**gemm), r.override(kinds="combine", **combine), r.override(kinds="grpo_loss", **loss)
    with launch_config.use(r), overrides[0], overrides[1], overrides[2]:
        case = make_case(37, 40, 301)
        hidden, weight = case.hidden.requires_grad_(), case.weight.requires_grad_()
        out = fastgrpo.linear_logprobs(hidden, weight, case.targets, backend="triton")
        out.logp.sum().backward()
        logps = torch.randn(3, 40, requires_grad=True)
        mask = torch.ones(3, 40)
        grpo_loss(logps, torch.randn(3), mask, loss_type="grpo", backend="triton").loss.backward()
    want_gemm = dict(BLOCK_N=32, BLOCK_V=16, BLOCK_K=32, num_warps=2, num_stages=2, enable_fp_fusion=flip)
    block_b, block_t = GRPOLossConfig(**loss).blocks(3, 40)
    assert [n for n, _ in launches] == [
        "linear_logprobs_fwd_kernel",
        "combine_splits_kernel",
        *["linear_logprobs_dlogits_kernel"] * (len(launches) - 3),
        "grpo_loss_fwd_kernel",
    ]
    for name, meta in launches:
        want = {
            "linear_logprobs_fwd_kernel": want_gemm,
            "linear_logprobs_dlogits_kernel": want_gemm,
            "combine_splits_kernel": dict(BLOCK_N=32, BLOCK_K=32, num_warps=1, enable_fp_fusion=configs.FP_FUSION),
            "grpo_loss_fwd_kernel": dict(BLOCK_B=block_b, BLOCK_T=block_t, num_warps=2, enable_fp_fusion=flip),
        }[name]
        assert meta == want, name
    assert {"fwd", "combine", "bwd", "grpo_loss"} <= set(resolved)


@pytest.mark.interpreter
def test_frozen_head_route_is_decided_by_the_resolver(monkeypatch):
    """The API asks the resolver which frozen-head route runs: the identity (one forward launch with softmax@W, no
    backward pass over V) or the recompute backward; both give the same gradient."""
    case = make_case(37, 40, 301)
    r = LaunchConfigResolver()
    kinds = []
    real_launch = r.launch
    monkeypatch.setattr(r, "launch", lambda kind, run, **kw: kinds.append(kind) or real_launch(kind, run, **kw))
    grads = {}
    with launch_config.use(r):
        for identity in (True, False):
            kinds.clear()
            hidden = case.hidden.clone().requires_grad_()
            with r.override(kinds="frozen_route", softmax_w_identity=identity):
                out = fastgrpo.linear_logprobs(hidden, case.weight, case.targets, backend="triton")
                (grads[identity],) = torch.autograd.grad(out.logp.sum(), [hidden])
            assert kinds == (["fwd_softmax_w"] if identity else ["fwd", "bwd"])
    torch.testing.assert_close(grads[True], grads[False], rtol=1e-5, atol=1e-6)
