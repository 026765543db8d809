"""The compile gate's AMD targets (tools/compile_report.py, "AMD targets"): its rules on AMDGCN resources, that it
fails on a planted bad AMD config, that CI compiles all three targets, and that the AMD tables' options reach the
compiler. The full AMD matrix (gfx90a, gfx942, gfx950 x every kernel x precision on the newest triton, gfx942 on
triton 3.6) runs in tests/ci/stage-20-compile.sh through ``--ci``."""

from __future__ import annotations

import dataclasses

import pytest
from test_kernel_compile import _run_report, cr

pytest.importorskip("triton.backends.amd")

GEMM = dict(block_n=128, block_v=128, block_k=64, group_n=8, num_warps=8, num_stages=2, use_tma=False)
CLEAN = cr.Result(regs=150, stack=0, local_ops=0, smem=32 << 10, n_async=0, mma="f32_16x16x16_bf16", tma=False)


def _job(arch="gfx942", precision="bf16", family="fwd", **fields):
    return cr.Job(arch, precision, family, "ptr", tuple(sorted({**GEMM, **fields}.items())))


@pytest.mark.parametrize(
    ("job", "result", "problem"),
    [
        (_job(), CLEAN, None),
        (_job(), dataclasses.replace(CLEAN, vgpr_spills=2, local_ops=2, stack=8), "spills"),
        (_job(), dataclasses.replace(CLEAN, sgpr_spills=17, local_ops=17), "spills (0 VGPR, 17 SGPR"),
        (_job(), dataclasses.replace(CLEAN, stack=16), "scratch"),  # scratch without a counted spill
        (_job(), dataclasses.replace(CLEAN, smem=65 << 10), "LDS 65.0 KiB > 64 KiB"),
        (_job(arch="gfx90a"), dataclasses.replace(CLEAN, smem=96 << 10, mma="f32_16x16x16bf16_1k"), "LDS"),
        (_job(arch="gfx950"), dataclasses.replace(CLEAN, smem=65 << 10, mma="f32_16x16x32_bf16"), None),
        (_job(arch="gfx950"), dataclasses.replace(CLEAN, smem=161 << 10), "LDS"),
        (_job(arch="gfx90a"), dataclasses.replace(CLEAN, mma="f32_16x16x16bf16_1k"), None),
        (_job(), dataclasses.replace(CLEAN, mma="-"), "MFMA"),  # a 16-bit GEMM on FMAs
        (_job(precision="fp16"), CLEAN, "MFMA"),  # a bf16 MFMA is not an fp16 one
        (_job(precision="fp16"), dataclasses.replace(CLEAN, mma="f32_16x16x16_f16"), None),
        (_job(precision="tf32", block_k=32), dataclasses.replace(CLEAN, mma="f32_32x32x2_f32"), "xf32"),
        (_job(precision="tf32", block_k=32), dataclasses.replace(CLEAN, mma="f32_32x32x4_xf32"), None),
        (_job(precision="fp32", block_k=32), dataclasses.replace(CLEAN, mma="-"), None),  # exact fp32: reported only
        (_job(block_v=32), CLEAN, "16-bit tile 128x32"),
        (_job(num_warps=2), CLEAN, "resident"),
        (_job(num_warps=8), dataclasses.replace(CLEAN, regs=312, agprs=92), "resident"),  # 312 regs: 1 wave per SIMD
        (_job(num_warps=4), dataclasses.replace(CLEAN, regs=312, agprs=92), None),  # 4 waves: 1 per SIMD is enough
        (_job(family="combine"), dataclasses.replace(CLEAN, mma="-"), None),  # no dot in the combine
        (_job(family="fwd_softmax_w_outputs"), dataclasses.replace(CLEAN, mma="-"), "MFMA"),  # all-outputs variant
        (_job(), "CompilationError: out of resources", "compile error"),
    ],
)
def test_amd_gate_rules(job, result, problem):
    found = cr.violations(job, result)
    if problem is None:
        assert found == []
    else:
        assert len(found) == 1 and problem in found[0], found


def test_ci_compiles_every_amd_target():
    assert {"gfx90a", "gfx942", "gfx950"} <= set(cr.CI_ARCHS["3.9"]) and "gfx942" in cr.CI_ARCHS["3.6"]
    jobs, not_compiled = cr.jobs_for(list(cr.arch_configs.AMD_FAMILIES), cr.PRECISIONS, cr.FAMILIES)
    assert {j.arch for j in jobs} == set(cr.arch_configs.AMD_FAMILIES) and all(j.load == "ptr" for j in jobs)
    # tf32 only on gfx942 (XF32 MFMA); elsewhere fp32 operands run the fp32 entry
    assert {(a, p) for a, p, _ in not_compiled} == {("gfx90a", "tf32"), ("gfx950", "tf32")}
    assert {j.family for j in jobs} == set(cr.FAMILIES)  # the all-outputs variants too
    for job in jobs:  # the AMD tables' options are compile options of the job
        table = cr.TABLE_FAMILY.get(job.family, job.family)
        amd = cr.configs.CONFIG_CLASSES[table].from_dict(cr.arch_configs.default(job.arch, table, job.precision))
        assert {k: v for k, v in job.fields.items() if k in cr.configs.AMD_OPTIONS} == amd.amd_options()
    assert cr.target("gfx942").backend == "hip" and cr.target("gfx942").warp_size == 64
    assert cr._arch_key("gfx942") == "gfx942" and cr._arch_key("sm_90") == cr._arch_key("90") == 90


def test_amd_gate_fails_on_a_planted_lds_overflow():
    """A 128x256x128 bf16 tile needs 96 KiB of LDS on gfx942 (64 KiB per workgroup): --check exits non-zero, and
    the table's options (16x16 MFMA, kpack 2) are what was compiled."""
    proc = _run_report(
        "--arch", "gfx942", "--dtype", "bf16", "--family", "fwd", "--block-v", "256", "--block-k", "128", "--check",
        timeout=300,
    )  # fmt: skip
    assert proc.returncode == 1, proc.stdout + proc.stderr[-3000:]
    row = next(line for line in proc.stdout.splitlines() if line.startswith("gfx942"))
    assert "128x256x128 w8 s2" in row and "kpack2 mfma16" in row and "16x16x16_bf16" in row, row
    assert "FAIL:" in row and "LDS 96.0 KiB > 64 KiB" in row, row
