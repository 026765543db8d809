"""The compile gate (tools/compile_report.py), no GPU needed: its rules, that it fails on a spilling tile, that it
compiles what the launch table says, and README's support matrix.

The interpreter accepts code the compiler rejects, and a config that spills, overflows a GPU's shared memory or
misses the tensor cores would only show on that GPU as lost speed or a launch error: the gate catches them on CPU.
The full matrix (every target x precision x kernel family x load style, on the newest triton and on triton 3.6) runs
in tests/ci/stage-20-compile.sh, as do the tests marked ``stage`` here.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
pytest.importorskip("triton.backends.nvidia")


def _load_report():
    spec = importlib.util.spec_from_file_location("compile_report", ROOT / "tools" / "compile_report.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("compile_report", module)  # dataclasses look their module up while it executes
    spec.loader.exec_module(module)
    return module


cr = _load_report()


def _run_report(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    """tools/compile_report.py in a subprocess without TRITON_INTERPRET (the compiler must see the kernels)."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_DEFAULT_FP_FUSION"] = "1"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "compile_report.py"), *args],
        env=env, capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip
    if proc.returncode != 0 and "ptxas" in proc.stderr and "not found" in proc.stderr.lower():
        pytest.skip("Triton's ptxas is not available")
    return proc


GEMM = dict(block_n=128, block_v=128, block_k=64, group_n=8, num_warps=8, num_stages=3, use_tma=False)
CLEAN = cr.Result(regs=212, stack=0, local_ops=0, smem=96 << 10, n_async=6, mma="wgmma", tma=False)


def _job(arch=90, precision="bf16", family="fwd", load="ptr", **fields):
    return cr.Job(arch, precision, family, load, tuple(sorted({**GEMM, **fields}.items())))


@pytest.mark.parametrize(
    ("job", "result", "problem"),
    [
        (_job(), CLEAN, None),
        (_job(), dataclasses.replace(CLEAN, stack=8, local_ops=4), "spills"),
        (_job(), dataclasses.replace(CLEAN, local_ops=2), "spills"),
        (_job(), dataclasses.replace(CLEAN, smem=228 << 10), "shared memory"),
        (_job(arch=80), dataclasses.replace(CLEAN, mma="mma.sync", smem=160 << 10), None),
        (_job(arch=86), dataclasses.replace(CLEAN, mma="mma.sync", smem=100 << 10), "shared memory"),
        (_job(arch=120), dataclasses.replace(CLEAN, mma="mma.sync", smem=99 << 10), None),
        (_job(), dataclasses.replace(CLEAN, mma="mma.sync"), "MMA"),  # sm_90 must use wgmma
        (_job(arch=100), CLEAN, "MMA"),  # sm_100: tcgen05, not wgmma
        (_job(arch=100), dataclasses.replace(CLEAN, mma="tcgen05"), None),
        (_job(precision="fp16"), dataclasses.replace(CLEAN, mma="-"), "MMA"),
        (_job(precision="tf32"), dataclasses.replace(CLEAN, mma="-"), "MMA"),
        (_job(precision="fp32", block_n=64, block_v=64, block_k=16), dataclasses.replace(CLEAN, mma="-"), None),
        (_job(block_n=32), CLEAN, "16-bit tile"),
        (_job(block_v=32), CLEAN, "16-bit tile"),
        (_job(), dataclasses.replace(CLEAN, n_async=0), "pipelined"),
        (_job(load="tma"), CLEAN, "TMA"),
        (_job(load="tma"), dataclasses.replace(CLEAN, tma=True), None),
        (_job(num_warps=2), CLEAN, "resident"),
        (_job(num_warps=16), dataclasses.replace(CLEAN, regs=255), "resident"),  # 16 x 8192 registers > 64K
        (_job(), "CompilationError: out of resources", "compile error"),
    ],
)
def test_gate_rules(job, result, problem):
    """Each rule fires on its own violation, and a clean kernel passes."""
    found = cr.violations(job, result)
    if problem is None:
        assert found == []
    else:
        assert len(found) == 1 and problem in found[0], found


def test_jobs_cover_the_matrix_with_the_tables_launch_parameters():
    """Every target x precision x kernel family is compiled (or listed as the torch path) with the launch table's
    parameters, TMA loads besides pointer loads exactly where the launcher may take them."""
    jobs, torch_path = cr.jobs_for(list(cr.ARCHS), cr.PRECISIONS, cr.FAMILIES)
    seen = {(j.arch, j.precision, j.family) for j in jobs} | set(torch_path)
    expected = {
        (a, p, f) for a in cr.ARCHS for p in cr.PRECISIONS for f in cr.FAMILIES if (f, p) != ("grpo_loss", "tf32")
    }
    assert seen == expected
    for job in jobs:
        table = cr.arch_configs.default(cr.ARCHS[job.arch], cr.TABLE_FAMILY.get(job.family, job.family), job.precision)
        if job.family in cr.OUTPUT_FAMILIES:  # a forward with outputs: the table's fields, some replaced
            kernel = cr.OUTPUT_FAMILIES[job.family]
            table = {**table, **cr.arch_configs.output_tiles(cr.ARCHS[job.arch], kernel, job.precision)}
        fields = job.fields
        if job.family == "grpo_loss":
            assert fields["block_b"] * fields["block_t"] == table["max_tile"]
            assert (fields["block_t"], fields["num_warps"]) == (table["max_block_t"], table["num_warps"])
        else:  # the launcher's values, e.g. the combine's warps (4 today, not compile_report's old 8)
            assert all(fields[k] == v for k, v in table.items() if k in fields and k != "use_tma"), (job, table)
        tma_allowed = cr.is_gemm(job.family) and job.precision != "fp32" and job.arch >= 90
        assert job.load == "ptr" or tma_allowed
    tma = {(j.arch, j.precision, j.family) for j in jobs if j.load == "tma"}
    ptr = {(j.arch, j.precision, j.family) for j in jobs if j.load == "ptr"}
    assert tma and tma <= ptr


def test_torch_path_families_have_no_triton_entry():
    """A family in arch_configs.TORCH_PATH (sm75) has no Triton entry at all, every other family has all of them."""
    for family, kernels in cr.arch_configs.DEFAULTS.items():
        entries = [e for by_precision in kernels.values() for e in by_precision.values()]
        if family in cr.arch_configs.TORCH_PATH:
            assert all(e is None for e in entries), family
        else:
            assert all(e is not None for e in entries), family
    _, torch_path = cr.jobs_for([75], cr.PRECISIONS, cr.FAMILIES)
    assert {f for _, _, f in torch_path} == set(cr.FAMILIES)


@pytest.mark.parametrize("capability", [(7, 5), (8, 0)])
def test_sm75_takes_the_torch_path_and_says_so_once(monkeypatch, caplog, capability):
    """On a T4 (capability injected: no GPU here), backend='auto' picks the torch path for the lm_head and the GRPO
    loss and logs why once; backend='triton' raises with the reason. An A100 keeps Triton."""
    import logging

    import torch

    from fastgrpo import _log, api, launch_config

    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    monkeypatch.setattr(_log, "_said", set())
    cuda = torch.device("cuda", 0)
    with launch_config.use(launch_config.LaunchConfigResolver(interpret=False)):
        with caplog.at_level(logging.WARNING, logger="fastgrpo"):
            picks = {api.resolve_backend("auto", cuda) for _ in range(3)}
        said = [r.getMessage() for r in caplog.records if "tensor cores on sm_75" in r.getMessage()]
        if capability == (8, 0):
            assert picks == {"triton"} and not said
            assert api.resolve_backend("triton", cuda) == "triton"
            return
        assert picks == {"torch"}
        assert len(said) == 1 and "torch path" in said[0], caplog.records
        with pytest.raises(ValueError, match="backend='triton'.*sm_75"):
            api.resolve_backend("triton", cuda)


def test_gate_fails_on_a_spilling_tile():
    """An oversized tile (128x256 with the softmax@W accumulator on sm_80) spills, and --check exits non-zero."""
    proc = _run_report(
        "--arch", "80", "--dtype", "bf16", "--family", "fwd_softmax_w", "--block-v", "256", "--check", timeout=300
    )
    assert proc.returncode == 1, proc.stdout + proc.stderr[-3000:]
    assert "FAIL: spills" in proc.stdout and "128x256x64" in proc.stdout, proc.stdout


def test_readme_support_matrix_is_generated():
    """README's "GPU support" table is ``compile_report.py --support-matrix`` (generated from the tables)."""
    proc = _run_report("--support-matrix", timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    table = proc.stdout.strip()
    assert table.count("\n|") == len(cr.ARCHS) + 1 and "Minimum versions: torch >= " in table
    assert table in (ROOT / "README.md").read_text(), f"regenerate README's GPU support table:\n{table}"


@pytest.mark.stage
@pytest.mark.parametrize("dtype", ["bf16", "fp32"])
def test_autotuning_candidates_compile_for_sm90_without_spills(dtype):
    """Every config the opt-in autotuner may pick passes the gate on sm_90."""
    proc = _run_report("--candidates", "--dtype", dtype, "--check", "--jobs", str(os.cpu_count() or 1))
    assert proc.returncode == 0, proc.stdout + proc.stderr[-4000:]
    for kind in ("fwd ", "fwd_softmax_w ", "bwd "):  # every kind reported, more than one config each
        assert sum(f" {kind}" in line for line in proc.stdout.splitlines()) >= 2, proc.stdout
