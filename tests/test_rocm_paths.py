"""The ROCm route (AMD Instinct GPUs), driven on CPU by injection as tests/test_gpu_only_paths.py drives the CUDA-only
branches: ``torch.version.hip`` set (a ROCm build reports AMD GPUs as ``device.type == "cuda"``), the device's
properties faked (``gcnArchName`` as ROCm reports it, e.g. ``"gfx942:sramecc+:xnack-"``), and a capability number
that collides with NVIDIA's (MI300X answers (9, 4)) to show it is never what picks the table.

Covered: the resolver's AMD families, the torch path for AMD GPUs without a table (RDNA, CDNA1), the fp32 / tf32
rule on ROCm, the AMD-only launch options reaching every kernel launch (and no NVIDIA launch), tuned tables with AMD
options, and the runtime triton floor that replaced the pip requirement (pyproject.toml).
"""

from __future__ import annotations

import json
import logging
import types

import pytest
import torch
from _lp_helpers import make_case, rel_err

import fastgrpo
from fastgrpo import _log, api, launch_config, precision, rocm, tma, triton_backend
from fastgrpo.grpo import grpo_loss
from fastgrpo.grpo import launch as grpo_launch
from fastgrpo.launch_config import LaunchConfigResolver
from fastgrpo.reference import reference_linear_logprobs
from fastgrpo_kernels import arch_configs, configs
from fastgrpo_kernels.configs import KernelConfig

CUDA = torch.device("cuda", 1)


def _rocm_device(monkeypatch, gcn_arch: str, hip: str | None = "6.4") -> list:
    """A ROCm torch with an AMD GPU named ``gcn_arch`` at every index; returns the indices whose properties were
    read. The capability answer is NVIDIA's sm_90 number: reading it would pick the wrong table."""
    asked = []

    def props(index):
        asked.append(index)
        return types.SimpleNamespace(gcnArchName=gcn_arch, multi_processor_count=304, name="AMD Instinct (fake)")

    monkeypatch.setattr(torch.version, "hip", hip)
    monkeypatch.setattr(torch.cuda, "get_device_properties", props)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "AMD Instinct (fake)")
    return asked


@pytest.fixture(autouse=True)
def _no_autotune_env(monkeypatch):
    monkeypatch.delenv("FASTGRPO_AUTOTUNE", raising=False)
    monkeypatch.delenv("FASTGRPO_AUTOTUNE_CACHE", raising=False)
    monkeypatch.delenv(precision.ROCM_TF32_ENV, raising=False)


# ---- the resolver picks AMD tables by gfx name ----------------------------------------------------------------


@pytest.mark.parametrize(
    "gcn_arch,family",
    [
        ("gfx90a:sramecc+:xnack-", "gfx90a"),  # MI250X
        ("gfx942:sramecc+:xnack-", "gfx942"),  # MI300X / MI325X
        ("gfx940", "gfx942"),  # early MI300 parts
        ("gfx950:sramecc+:xnack-", "gfx950"),  # MI355X
    ],
)
def test_rocm_resolver_picks_the_amd_family_from_the_gfx_name(monkeypatch, gcn_arch, family):
    asked = _rocm_device(monkeypatch, gcn_arch)
    r = LaunchConfigResolver(interpret=False)
    assert r.arch(CUDA) == family
    assert asked == [1]  # the tensors' device, not the current one
    assert r.unsupported_reason(CUDA) is None and r.unsupported_reason(CUDA, "bf16") is None
    for kind in arch_configs.KERNELS:
        for prec in ("bf16", "fp16", "fp32"):
            got = r.resolve(kind, prec, device=CUDA)
            assert got == configs.CONFIG_CLASSES[kind].from_dict(arch_configs.default(family, kind, prec))
            if kind in ("fwd", "fwd_softmax_w", "bwd"):
                assert got != KernelConfig(**arch_configs.default("sm90", kind, prec))  # not Hopper's tiles
    bf16 = r.resolve("fwd", "bf16", device=CUDA)
    assert bf16.amd_options()["matrix_instr_nonkdim"] == 16 and bf16.num_stages == 2
    assert bf16.amd_options().get("kpack", 1) == (1 if family == "gfx950" else 2)  # triton forces 1 on gfx950
    assert r.num_sms(CUDA) == 304  # compute units


def test_without_hip_the_capability_picks_the_nvidia_table(monkeypatch):
    """The same fakes without torch.version.hip: an NVIDIA build, where the capability is the key."""
    asked = _rocm_device(monkeypatch, "gfx942", hip=None)
    r = LaunchConfigResolver(interpret=False)
    assert r.arch(CUDA) == "sm90" and asked == []
    assert r.resolve("fwd", "bf16", device=CUDA).amd_options() == {}


@pytest.mark.parametrize(
    "gcn_arch,what",
    [("gfx1100", "RDNA"), ("gfx1201:xnack-", "RDNA"), ("gfx1030", "RDNA"), ("gfx908:sramecc+:xnack-", "AMD GPU")],
)
def test_amd_gpu_without_a_table_takes_the_torch_path_and_says_so_once(monkeypatch, caplog, gcn_arch, what):
    """RDNA (gfx10/11/12, wave32) and CDNA1 (MI100): no table; backend='auto' takes the torch path and logs why once
    (as sm_75 does), backend='triton' raises with the reason."""
    _rocm_device(monkeypatch, gcn_arch)
    monkeypatch.setattr(_log, "_said", set())
    name = gcn_arch.split(":")[0]
    with arch_configs_raises(name):
        arch_configs.amd_family(gcn_arch)
    with launch_config.use(LaunchConfigResolver(interpret=False)):
        with caplog.at_level(logging.WARNING, logger="fastgrpo"):
            picks = {api.resolve_backend("auto", CUDA) for _ in range(3)}
        said = [rec.getMessage() for rec in caplog.records if name in rec.getMessage()]
        assert picks == {"torch"}
        assert len(said) == 1 and what in said[0] and "torch path" in said[0], said
        with pytest.raises(ValueError, match=f"backend='triton': {name} is .* without a fastgrpo launch table"):
            api.resolve_backend("triton", CUDA)


def arch_configs_raises(name: str):
    return pytest.raises(arch_configs.UnsupportedArchitecture, match=f"{name} is .* without a fastgrpo launch table")


def test_tma_stays_off_on_rocm_even_for_an_amd_table(monkeypatch):
    _rocm_device(monkeypatch, "gfx942:sramecc+:xnack-")
    assert not tma.tma_capable(CUDA)
    assert all(not arch_configs.default(f, k, "bf16").get("use_tma") for f in arch_configs.AMD_FAMILIES for k in
               ("fwd", "fwd_softmax_w", "bwd"))  # fmt: skip


# ---- fp32 / tf32 on ROCm -----------------------------------------------------------------------------------------


@pytest.fixture
def tf32_setting(monkeypatch):
    """Sets what torch's TF32 setting reads (fastgrpo.precision.fp32_matmul_allows_tf32) without touching torch's
    process-wide state (tests/test_gpu_only_paths.py covers how that setting is read)."""
    return lambda on: monkeypatch.setattr(precision, "fp32_matmul_allows_tf32", lambda: on)


@pytest.mark.parametrize("gcn_arch", ["gfx90a:sramecc+:xnack-", "gfx942:sramecc+:xnack-", "gfx950", "gfx941"])
@pytest.mark.parametrize("torch_tf32", [True, False])
@pytest.mark.parametrize("env", [None, "1", "0", "true"])
def test_rocm_tf32_only_on_gfx942_with_torch_tf32_and_hipblaslt_allow_tf32(
    monkeypatch, tf32_setting, gcn_arch, torch_tf32, env
):
    """tf32 exactly when torch's own fp32 matmuls on that device would use XF32: gfx942 (MI300), torch's TF32 setting
    on, HIPBLASLT_ALLOW_TF32=1; exact fp32 ("ieee") otherwise. The launch's config class follows."""
    _rocm_device(monkeypatch, gcn_arch)
    tf32_setting(torch_tf32)
    if env is not None:
        monkeypatch.setenv(precision.ROCM_TF32_ENV, env)
    expected = "tf32" if (torch_tf32 and env == "1" and gcn_arch.startswith(("gfx942", "gfx941"))) else "ieee"
    assert precision.fp32_dot_precision(CUDA) == expected
    assert triton_backend._dot_precision(torch.float32, CUDA) == expected
    assert triton_backend._dot_precision(torch.bfloat16, CUDA) is None  # the rule only concerns fp32 operands
    hidden = types.SimpleNamespace(shape=(40, 64), device=CUDA)
    shape = triton_backend._launch_shape(hidden, types.SimpleNamespace(shape=(300, 64)), torch.float32)
    assert shape["precision"] == ("tf32" if expected == "tf32" else "fp32")
    r = LaunchConfigResolver(interpret=False)
    cfg = r.resolve("fwd", shape.pop("precision"), **shape)  # the tf32 entry exists exactly where it is asked for
    assert cfg == KernelConfig(**arch_configs.default(arch_configs.amd_family(gcn_arch), "fwd", "fp32"))


@pytest.mark.parametrize("env", [None, "1"])
def test_nvidia_tf32_rule_ignores_the_rocm_variable(monkeypatch, tf32_setting, env):
    monkeypatch.setattr(torch.version, "hip", None)
    tf32_setting(True)
    if env is not None:
        monkeypatch.setenv(precision.ROCM_TF32_ENV, env)
    assert precision.fp32_dot_precision(CUDA) == "tf32"
    assert precision.fp32_dot_precision(torch.device("cpu")) == "tf32"  # the interpreter follows the setting


def test_rocm_fp32_rule_off_cuda_devices(monkeypatch, tf32_setting):
    monkeypatch.setattr(torch.version, "hip", "6.4")
    monkeypatch.setenv(precision.ROCM_TF32_ENV, "1")
    tf32_setting(True)
    assert precision.fp32_dot_precision(torch.device("cpu")) == "ieee"  # no gfx name to read: exact


def test_gfx_arch_strips_target_features_and_reads_the_current_device(monkeypatch):
    asked = _rocm_device(monkeypatch, "GFX942:sramecc+:xnack-")
    assert rocm.gfx_arch(torch.device("cuda")) == "gfx942" and asked == [0]
    assert rocm.gfx_arch(None) == "gfx942" and rocm.is_rocm()


# ---- AMD launch options reach every launch, and no NVIDIA one ----------------------------------------------------


class _Recorder:
    """Stands in for a @triton.jit kernel: records each launch's keywords and runs the real kernel (the interpreter
    drops launch options it does not know, as Triton's HIP backend takes them)."""

    def __init__(self, kernel):
        self.kernel, self.launches = kernel, []

    def __getitem__(self, grid):
        def run(**kw):
            self.launches.append(kw)
            return self.kernel[grid](**kw)

        return run


AMD = dict(waves_per_eu=2, matrix_instr_nonkdim=16, kpack=2)


@pytest.mark.interpreter
@pytest.mark.parametrize("amd", [True, False])
def test_amd_launch_options_reach_the_lm_head_launches(monkeypatch, amd):
    rec = {n: _Recorder(getattr(triton_backend, n)) for n in
           ("linear_logprobs_fwd_kernel", "combine_splits_kernel", "linear_logprobs_dlogits_kernel")}  # fmt: skip
    for name, r in rec.items():
        monkeypatch.setattr(triton_backend, name, r)
    resolver = LaunchConfigResolver()
    case = make_case(9, 24, 70)
    weight = case.weight.clone().requires_grad_(True)
    gemm_options = resolver.override(**(AMD if amd else {}))
    with launch_config.use(resolver), gemm_options, resolver.override(["combine"], waves_per_eu=2 if amd else 0):
        out = fastgrpo.linear_logprobs(case.hidden, weight, case.targets, backend="triton")
        out.logp.sum().backward()
    ref, _ = reference_linear_logprobs(case.hidden.double(), case.weight.double(), case.targets)
    assert rel_err(out.logp, ref) < 2e-5
    gemm_keys = {k for r in (rec["linear_logprobs_fwd_kernel"], rec["linear_logprobs_dlogits_kernel"])
                 for launch in r.launches for k in launch if k in configs.AMD_OPTIONS}  # fmt: skip
    combine_keys = {k for launch in rec["combine_splits_kernel"].launches for k in launch if k in configs.AMD_OPTIONS}
    assert all(r.launches for r in rec.values())
    if amd:
        for launch in rec["linear_logprobs_fwd_kernel"].launches + rec["linear_logprobs_dlogits_kernel"].launches:
            assert {k: launch[k] for k in AMD} == AMD
        assert [launch["waves_per_eu"] for launch in rec["combine_splits_kernel"].launches] == [2]
    else:  # an NVIDIA launch: Triton's CUDA backend rejects unknown launch keywords
        assert gemm_keys == set() and combine_keys == set()


@pytest.mark.interpreter
@pytest.mark.parametrize("amd", [True, False])
def test_amd_launch_options_reach_the_grpo_loss_launch(monkeypatch, amd):
    rec = _Recorder(grpo_launch.grpo_loss_fwd_kernel)
    monkeypatch.setattr(grpo_launch, "grpo_loss_fwd_kernel", rec)
    g = torch.Generator().manual_seed(0)
    lp = -torch.rand(3, 11, generator=g) * 3
    mask = torch.ones(3, 11, dtype=torch.long)
    adv = torch.randn(3, generator=g)
    resolver = LaunchConfigResolver()
    with launch_config.use(resolver), resolver.override(["grpo_loss"], waves_per_eu=2 if amd else 0):
        got = grpo_loss(lp, adv, mask, loss_type="grpo", backend="triton").loss
    want = grpo_loss(lp, adv, mask, loss_type="grpo", backend="torch").loss
    assert rel_err(got, want) < 1e-5
    assert rec.launches and all(("waves_per_eu" in launch) is amd for launch in rec.launches)


# ---- tuned tables with AMD options -------------------------------------------------------------------------------


def test_tuned_table_for_an_amd_family(monkeypatch, tmp_path):
    entry = {"kind": "fwd", "dtype": "bf16", "n": 4096, "h": 896,
             "config": {"block_n": 256, "block_v": 128, "num_stages": 2, "waves_per_eu": 2, "kpack": 2}}  # fmt: skip
    (tmp_path / "gfx942.json").write_text(json.dumps({"device": "test", "entries": [entry]}))
    _rocm_device(monkeypatch, "gfx942:sramecc+:xnack-")
    r = LaunchConfigResolver(interpret=False, tuned_dir=tmp_path)
    cfg = r.resolve("fwd", "bf16", device=CUDA, n=4000, h=900)
    assert (cfg.block_n, cfg.amd_options()) == (256, {"waves_per_eu": 2, "kpack": 2})
    assert "wpe2" in cfg.label() and KernelConfig.from_dict(cfg.to_dict()) == cfg  # the tuned tables' format
    (tmp_path / "sm90.json").write_text(json.dumps({"device": "test", "entries": [entry]}))
    with pytest.raises(ValueError, match="AMD-only options"):
        configs.tuned_table("sm90", tmp_path)


# ---- triton: torch's, checked at run time ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "version,ok", [("3.6.0", True), ("3.9.0", True), ("3.6.0+rocm7.1.0.git1234abcd", True), ("3.5.1", False)]
)
def test_triton_floor_is_checked_at_run_time(monkeypatch, caplog, version, ok):
    """pyproject.toml no longer requires triton (ROCm's pytorch-triton-rocm provides it): an older triton takes the
    torch path and says why once; backend='triton' raises with the reason."""
    import triton

    monkeypatch.setattr(triton, "__version__", version)
    monkeypatch.setattr(_log, "_said", set())
    monkeypatch.setattr(torch.version, "hip", None)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    with launch_config.use(LaunchConfigResolver(interpret=False)):
        if ok:
            assert api.resolve_backend("auto", CUDA) == api.resolve_backend("triton", CUDA) == "triton"
            return
        with caplog.at_level(logging.WARNING, logger="fastgrpo"):
            assert {api.resolve_backend("auto", CUDA) for _ in range(2)} == {"torch"}
        said = [rec.getMessage() for rec in caplog.records if "older than 3.6" in rec.getMessage()]
        assert len(said) == 1 and "pytorch-triton-rocm" in said[0]
        with pytest.raises(ValueError, match="backend='triton': triton 3.5.1 is older than 3.6"):
            api.resolve_backend("triton", CUDA)
