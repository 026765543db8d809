"""Compile fastgrpo's Triton kernels for GPU targets without a GPU, report their resources, and gate them in CI.

    python tools/compile_report.py                          # sm_90, bf16: every kernel family, its launch config
    python tools/compile_report.py --arch all --dtype all --check --jobs 2     # the CI gate (every arch x dtype)
    python tools/compile_report.py --ci --check             # the archs CI compiles on this triton (CI_ARCHS)
    python tools/compile_report.py --arch 80 --family fwd --block-n 64 ...     # try a tile before editing a table
    python tools/compile_report.py --candidates [--dtype fp32] --check         # every sm_90 autotuning candidate
    python tools/compile_report.py --support-matrix         # README's "GPU support" table, from the tables

Each (architecture, operand precision, kernel family, load style) is compiled with the launch parameters a real
launch gets: the built-in table ``fastgrpo_kernels.arch_configs`` (``launch_params``), the specializations Triton's
JIT makes for contiguous inputs (unit inner strides, 16-divisible pointers and sizes), pointer loads everywhere and
TMA descriptor loads on sm_90+. ``--check`` exits 1 on any violation of ``violations``: register spills, shared
memory over the architecture's per-block limit, no resident block of >= 4 warps, no tensor-core MMA (or not the
architecture's own: wgmma on sm_90, tcgen05 on sm_100) for 16-bit / TF32 operands, 16-bit tiles under 64x64,
unpipelined loads, a TMA variant that lost its TMA copies. Table entries that are None (no Triton kernel: the torch
path) are listed, not compiled. Run without TRITON_INTERPRET.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import inspect
import os
import pathlib
import re
import subprocess
import sys
import tempfile
from collections.abc import Iterator

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from fastgrpo.env import triton_interpret
from fastgrpo_kernels import arch_configs, configs
from fastgrpo_kernels.grpo_loss import grpo_loss_fwd_kernel
from fastgrpo_kernels.linear_logprobs_bwd import linear_logprobs_dlogits_kernel
from fastgrpo_kernels.linear_logprobs_fwd import combine_splits_kernel, linear_logprobs_fwd_kernel

# Compile targets (compute capability x 10 + minor) -> the family whose table entries they launch with.
ARCHS: dict[int, str] = {75: "sm75", 80: "sm80", 86: "sm86", 89: "sm86", 90: "sm90", 100: "sm100", 120: "sm120"}
GPUS: dict[int, str] = {
    75: "T4, RTX 20xx",
    80: "A100, A800",
    86: "RTX 30xx, A10, A40",
    89: "RTX 40xx, L4, L40S",
    90: "H100, H200",
    100: "B200, GB200",
    120: "RTX 50xx, RTX PRO 6000",
}
PRECISIONS = ("bf16", "fp16", "fp32", "tf32")  # fp32: exact fp32 operands on FMAs; tf32: fp32 on tensor cores
GEMM_FAMILIES = ("fwd", "fwd_softmax_w", "bwd")
# The forwards with every optional output (log_sum_sq_probs, mean_logits, is_top1): the same kernel as fwd and
# fwd_softmax_w, launched with that family's table entry updated by ``arch_configs.output_tiles``. fwd and
# fwd_softmax_w themselves compile without outputs; combine with every output on (the most registers).
OUTPUT_FAMILIES = {"fwd_outputs": "fwd", "fwd_softmax_w_outputs": "fwd_softmax_w"}  # -> the table family
TABLE_FAMILY = OUTPUT_FAMILIES
FAMILIES = (*GEMM_FAMILIES, *OUTPUT_FAMILIES, "combine", "grpo_loss")
# What Triton emits for 16-bit / TF32 dots per target (read from the PTX: triton 3.6 and 3.9 alike). sm_75 gets
# FMAs for every dtype (Triton has no MMA lowering there), which is why the sm75 GEMM entries are the torch path.
MMA: dict[int, str] = {80: "mma.sync", 86: "mma.sync", 89: "mma.sync", 90: "wgmma", 100: "tcgen05", 120: "mma.sync"}
TMA_MIN_ARCH = 90
PIPELINE_MIN_ARCH = 80  # cp.async (software-pipelined loads) exists from sm_80 on
MIN_WARPS = 4
MIN_TILE_16 = 64  # 16-bit operands: BLOCK_N and BLOCK_V at least this (small tiles compile clean and run slowly)
# Per SM, every target here: 64K 32-bit registers, allocated per warp in units of 256; resident warps.
REGISTERS_PER_SM = 65536
MAX_WARPS_PER_SM: dict[int, int] = {75: 32, 80: 64, 86: 48, 89: 48, 90: 64, 100: 64, 120: 48}

# What CI compiles (tests/ci/stage-20-compile.sh, `--ci`): every target on the newest triton, and the two most used
# data-center targets on triton 3.6 (torch 2.10 / 2.11's pin, the oldest triton the declared floor allows).
CI_ARCHS: dict[str, tuple[int, ...]] = {"3.9": tuple(ARCHS), "3.6": (80, 90)}
# Targets whose GPU tests passed on real hardware: arch -> "GPU, date". None yet.
RUN_ON_GPU: dict[int, str] = {}

_TL = {
    "bf16": triton.language.bfloat16,
    "fp16": triton.language.float16,
    "fp32": triton.language.float32,
    "tf32": triton.language.float32,
}
_PTR = {"bf16": "bf16", "fp16": "fp16", "fp32": "fp32", "tf32": "fp32"}  # operand pointer element types
_INT_ARGS = {"N", "H", "V", "v_per_split", "c0", "width", "SPLITS", "ignore_index"}
_FLOAT_ARGS = {"logit_scale", "softcap", "inv_t"}
# What Triton's JIT specializes at a real launch with contiguous Qwen-shaped inputs: unit inner strides become the
# constant 1, and pointers and integers divisible by 16 carry that divisibility (which vectorized, pipelined async
# copies need). Without this, the compiled code is not what a launch runs.
_UNIT_STRIDES = {"stride_xh", "stride_wh"}
_DIV16_INTS = {"H", "V", "v_per_split", "stride_xn", "stride_wv", "stride_dyn", "stride_dbn", "c0"}
# The forward's optional per-token outputs besides entropy: compiled on (fastgrpo_kernels.linear_logprobs_fwd).
# Pointers to other than fp32 / operand data, as a launch passes them.
_INDEX_PTRS = {"tgt_ptr": "*i64", "part_arg_ptr": "*i32", "is_top1_ptr": "*u8"}
_OUTPUT_FLAGS = ("HAS_LOG_SUM_SQ", "HAS_MEAN_LOGITS", "HAS_IS_TOP1")
_KERNELS = {
    "fwd": linear_logprobs_fwd_kernel,
    "fwd_softmax_w": linear_logprobs_fwd_kernel,
    "fwd_outputs": linear_logprobs_fwd_kernel,
    "fwd_softmax_w_outputs": linear_logprobs_fwd_kernel,
    "bwd": linear_logprobs_dlogits_kernel,
    "combine": combine_splits_kernel,
}


@dataclasses.dataclass(frozen=True)
class Job:
    """One kernel to compile: target, operand precision, kernel family, load style and launch parameters."""

    arch: int
    precision: str
    family: str
    load: str  # "ptr" or "tma"
    params: tuple  # sorted (name, value) pairs: the launch config's fields that matter to the compiler

    @property
    def fields(self) -> dict:
        return dict(self.params)

    def label(self) -> str:
        p = self.fields
        if is_gemm(self.family):
            return f"{p['block_n']}x{p['block_v']}x{p['block_k']} w{p['num_warps']} s{p['num_stages']}"
        if self.family == "combine":
            return f"{p['block_n']}x{p['block_k']} w{p['num_warps']}"
        return f"{p['block_b']}x{p['block_t']} w{p['num_warps']}"


@dataclasses.dataclass(frozen=True)
class Result:
    """What the compiled kernel uses (from its cubin, PTX and TTGIR)."""

    regs: int
    stack: int  # bytes of local memory per thread
    local_ops: int  # LDL/STL instructions in the SASS
    smem: int  # dynamic shared memory, bytes
    n_async: int  # software-pipelined copies in the TTGIR (async copies or TMA copies)
    mma: str  # "wgmma", "tcgen05", "mma.sync" or "-"
    tma: bool  # TMA copies (cp.async.bulk.tensor) in the PTX


# ---- launch parameters: the one place that turns table entries into compile parameters ----


def launch_params(arch: int, family: str, precision: str, overrides: dict | None = None) -> dict | None:
    """The launch parameters of ``family`` for ``precision`` operands on target ``arch``, as the launchers use them
    (None: no Triton kernel, the torch path). GEMM families: ``KernelConfig`` fields; combine: block_n, block_k,
    num_warps (the launcher's num_stages: Triton's default); GRPO loss: the largest tile the launcher's block sizing
    gives (max_tile elements, rows of max_block_t tokens) and its warps."""
    table = TABLE_FAMILY.get(family, family)
    fields = arch_configs.default(ARCHS[arch], table, precision)
    if fields is None:
        return None
    cfg = configs.CONFIG_CLASSES[table].from_dict(fields)  # the resolver's config object for this entry
    if is_gemm(family):
        cfg = dataclasses.replace(cfg, **(overrides or {}))
        if family in OUTPUT_FAMILIES:  # as fastgrpo/triton_backend.py's _forward
            cfg = dataclasses.replace(cfg, **arch_configs.output_tiles(ARCHS[arch], table, precision))
        keep = ("block_n", "block_v", "block_k", "group_n", "num_warps", "num_stages", "use_tma")
        return {k: getattr(cfg, k) for k in keep}
    if family == "combine":
        return dict(block_n=cfg.block_n, block_k=cfg.block_k, num_warps=cfg.num_warps)
    block_b, block_t = cfg.blocks(1 << 20, 1 << 20)  # the launcher's sizing for a large batch: the largest tile
    return dict(block_b=block_b, block_t=block_t, num_warps=cfg.num_warps)


def is_gemm(family: str) -> bool:
    return family in GEMM_FAMILIES or family in OUTPUT_FAMILIES


def jobs_for(
    archs, precisions, families, overrides: dict | None = None
) -> tuple[list[Job], list[tuple[int, str, str]]]:
    """The compile jobs (deduplicated) and the (arch, precision, family) entries served by the torch path."""
    jobs, torch_path = [], []
    for arch in archs:
        for precision in precisions:
            for family in families:
                if family == "grpo_loss" and precision == "tf32":
                    continue  # elementwise kernel: fp32 inputs either way
                params = launch_params(arch, family, precision, overrides if is_gemm(family) else None)
                if params is None:
                    torch_path.append((arch, precision, family))
                    continue
                loads = ["ptr"]
                if is_gemm(family) and precision != "fp32" and arch >= TMA_MIN_ARCH:
                    loads.append("tma")  # the launcher falls back to pointer loads: both must be clean
                for load in loads:
                    p = dict(params)
                    if "use_tma" in p:
                        p["use_tma"] = load == "tma"
                    jobs.append(Job(arch, precision, family, load, tuple(sorted(p.items()))))
    return list(dict.fromkeys(jobs)), torch_path


# ---- compiling ----


def _signature(kernel, dtype: str, boxes: dict) -> dict:
    sig = {}
    for p in inspect.signature(kernel.fn).parameters:
        if p.endswith("_desc"):
            # A host TensorDescriptor's JIT signature; without USE_TMA the launch passes None (a constexpr).
            sig[p] = f"tensordesc<{dtype}[{', '.join(map(str, boxes[p]))}]>" if p in boxes else "constexpr"
        elif p.endswith("_ptr"):
            operand = p in ("x_ptr", "w_ptr", "b_ptr", "dy_ptr")
            sig[p] = f"*{dtype}" if operand else _INDEX_PTRS.get(p, "*fp32")
        elif p.startswith("stride_"):
            sig[p] = "i64"
        elif p in _INT_ARGS:
            sig[p] = "i32"
        elif p in _FLOAT_ARGS:
            sig[p] = "fp32"
        elif p == "transform":  # the logit transform as one tuple (logit_scale, softcap, inv_t), if so declared
            sig[p] = ("fp32", "fp32", "fp32")
        else:
            sig[p] = "constexpr"
    return sig


def compile_kernel(
    kernel, constexprs: dict, dtype: str = "bf16", arch: int = 90, num_warps: int = 8, num_stages: int = 3
):
    """Compile one lm_head kernel (forward, dL/dy or combine) with ``dtype`` operand pointers for ``arch``."""
    params = list(inspect.signature(kernel.fn).parameters)
    boxes = {}
    if constexprs.get("USE_TMA"):
        boxes = {
            "x_desc": [constexprs["BLOCK_N"], constexprs["BLOCK_K"]],
            "w_desc": [constexprs["BLOCK_V"], constexprs["BLOCK_K"]],
        }
    unused_desc = {p: None for p in params if p.endswith("_desc") and p not in boxes}
    constexprs = {**{p: 1 for p in params if p in _UNIT_STRIDES}, **unused_desc, **constexprs}
    signature = _signature(kernel, dtype, boxes)
    signature.update({p: "constexpr" for p in params if p in _UNIT_STRIDES})
    attrs = {(i,): [["tt.divisibility", 16]] for i, p in enumerate(params) if p.endswith("_ptr") or p in _DIV16_INTS}
    src = ASTSource(
        fn=kernel,
        signature=signature,
        constexprs=_by_index(params, constexprs),
        attrs=attrs,
    )
    return triton.compile(
        src, target=GPUTarget("cuda", arch, 32), options={"num_warps": num_warps, "num_stages": num_stages}
    )


def _by_index(params: list[str], values: dict) -> dict:
    return {(params.index(k),): v for k, v in values.items()}


def compile_grpo_loss(
    arch: int, precision: str, block_b: int, block_t: int, num_warps: int, loss_kind: int = 3, everything: bool = True
):
    """Compile the GRPO loss kernel as ``fastgrpo/grpo/launch.py`` launches it. By default every optional input is
    present (the most registers): vespo (``loss_kind`` 3, the longest loss), sequence-level ratios, KL with bias
    correction, entropy bonus; ``everything=False``: none of them. ``precision``: the dtype of the log-prob and
    entropy inputs (the kernel computes in fp32)."""
    kernel = grpo_loss_fwd_kernel
    params = list(inspect.signature(kernel.fn).parameters)
    low = ("lp_ptr", "old_ptr", "ref_ptr", "samp_ptr", "ent_ptr")
    sig = {}
    for p in params:
        if p.endswith("_ptr"):
            sig[p] = f"*{_PTR[precision]}" if p in low else "*u8" if p in ("mask_ptr", "emask_ptr") else "*fp32"
        elif p in ("B", "T", "stride_isr_b", "stride_isr_t"):
            sig[p] = "i32"
        elif p == "policy_params":  # a registry-defined loss type's parameters (unused by the built-in kinds)
            sig[p] = ("fp32",)
        elif p.isupper():
            sig[p] = "constexpr"
        else:
            sig[p] = "fp32"
    flags = {p: everything for p in params if p.startswith("HAS_")}
    seq = everything and loss_kind != 1  # cispo (1) has no sequence-level ratios
    const = dict(flags, SEQ_LEVEL=seq, LOSS_KIND=loss_kind, COMPUTE_GRAD=True, BLOCK_B=block_b, BLOCK_T=block_t)
    if "POLICY" in params:  # the registry's policy-function slot: unused by the built-in kinds
        const["POLICY"] = None
    attrs = {(i,): [["tt.divisibility", 16]] for i, p in enumerate(params) if p.endswith("_ptr")}
    src = ASTSource(fn=kernel, signature=sig, constexprs=_by_index(params, const), attrs=attrs)
    return triton.compile(src, target=GPUTarget("cuda", arch, 32), options={"num_warps": num_warps})


def _lm_head_constexprs(family: str, precision: str, p: dict) -> dict:
    """Every optional feature on (the most registers): bias, softcap, entropy and its gradient, bias gradient, and
    every optional output (log_sum_sq_probs, mean_logits, is_top1: the all-outputs variant), except for fwd and
    fwd_softmax_w, whose all-outputs variants are the OUTPUT_FAMILIES (their own launch configs)."""
    dot = dict(DOT_DTYPE=_TL[precision])
    kernel_params = inspect.signature(_KERNELS[family].fn).parameters
    # softcap on: a HAS_SOFTCAP flag, or the first flag of a TRANSFORM tuple where the kernels take one
    common = dict(HAS_BIAS=True, **({"TRANSFORM": (True,)} if "TRANSFORM" in kernel_params else {"HAS_SOFTCAP": True}))
    outputs = family not in OUTPUT_FAMILIES.values()  # their launches with outputs take the *_outputs configs
    common.update({flag: outputs for flag in _OUTPUT_FLAGS if flag in kernel_params})
    if family == "combine":
        return dict(common, HAS_ENTROPY=True, HAS_SOFTMAX_W=True, BLOCK_N=p["block_n"], BLOCK_K=p["block_k"], **dot)
    dot["DOT_PRECISION"] = {"fp32": "ieee", "tf32": "tf32"}.get(precision)
    blocks = dict(
        BLOCK_N=p["block_n"], BLOCK_V=p["block_v"], BLOCK_K=p["block_k"], GROUP_N=p["group_n"], USE_TMA=p["use_tma"]
    )
    if family == "bwd":
        grads = dict(HAS_LOGP_GRAD=True, HAS_ENTROPY_GRAD=True, HAS_BIAS_GRAD=True)
        return dict(common, **grads, **dot, **blocks)
    frozen = TABLE_FAMILY.get(family, family) == "fwd_softmax_w"
    return dict(common, HAS_SOFTMAX_W=frozen, HAS_ENTROPY=True, **dot, **blocks)


def compile_job(job: Job):
    p = job.fields
    if job.family == "grpo_loss":
        return compile_grpo_loss(job.arch, job.precision, p["block_b"], p["block_t"], p["num_warps"])
    const = _lm_head_constexprs(job.family, job.precision, p)
    stages = p.get("num_stages", 3)  # the combine launch passes none: Triton's default, 3
    return compile_kernel(_KERNELS[job.family], const, _PTR[job.precision], job.arch, p["num_warps"], stages)


def inspect_compiled(compiled) -> Result:
    """Registers, stack and LDL/STL from the cubin (Triton's bundled cuobjdump), MMA and TMA from the PTX,
    pipelined copies from the TTGIR, shared memory from the metadata."""
    tools = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin")
    with tempfile.NamedTemporaryFile("wb", suffix=".cubin", delete=False) as f:
        f.write(compiled.asm["cubin"])
    try:
        run = lambda *a: subprocess.run([f"{tools}/cuobjdump", *a, f.name], capture_output=True, text=True, check=True)  # noqa: E731
        usage, sass = run("--dump-resource-usage").stdout, run("-sass").stdout
    finally:
        os.unlink(f.name)
    ptx, ttgir = compiled.asm["ptx"], compiled.asm["ttgir"]
    mma = next((name for name, op in _MMA_OPS if op in ptx), "-")
    return Result(
        regs=int(re.search(r"REG:(\d+)", usage).group(1)),
        stack=int(re.search(r"STACK:(\d+)", usage).group(1)),
        local_ops=sum(("LDL" in line or "STL" in line) for line in sass.splitlines()),
        smem=compiled.metadata.shared,
        n_async=ttgir.count("async_copy_global_to_local") + ttgir.count("async_tma_copy_global_to_local"),
        mma=mma,
        tma="cp.async.bulk.tensor" in ptx,
    )


_MMA_OPS = (("tcgen05", "tcgen05.mma"), ("wgmma", "wgmma.mma_async"), ("mma.sync", "mma.sync"))


def _run(job: Job) -> tuple[Job, Result | str]:
    try:
        return job, inspect_compiled(compile_job(job))
    except Exception as err:  # a compile error is a gate failure, reported with the job
        return job, f"{type(err).__name__}: {str(err).strip().splitlines()[-1] if str(err).strip() else ''}"


# ---- the gate ----


def blocks_per_sm(arch: int, regs: int, smem: int, num_warps: int) -> int:
    """Blocks of this kernel one SM holds at once (registers, warps, shared memory)."""
    per_warp = -(-regs * 32 // 256) * 256
    by_regs = REGISTERS_PER_SM // max(per_warp * num_warps, 1)
    by_warps = MAX_WARPS_PER_SM[arch] // num_warps
    by_smem = 1 << 30 if smem == 0 else shared_memory_limit(arch) // smem
    return min(by_regs, by_warps, by_smem)


def shared_memory_limit(arch: int) -> int:
    return arch_configs.SHARED_MEMORY_PER_BLOCK[ARCHS[arch]]


def violations(job: Job, result: Result | str) -> list[str]:
    """Why this compiled kernel fails the gate (empty: it passes)."""
    if isinstance(result, str):
        return [f"compile error: {result}"]
    p, arch, out = job.fields, job.arch, []
    if result.stack or result.local_ops:
        out.append(f"spills ({result.stack} B stack, {result.local_ops} LDL/STL)")
    limit = shared_memory_limit(arch)
    if result.smem > limit:
        out.append(f"shared memory {result.smem / 1024:.1f} KiB > {limit >> 10} KiB per block")
    smem = min(result.smem, limit)  # over the limit is its own violation
    if p["num_warps"] < MIN_WARPS or blocks_per_sm(arch, result.regs, smem, p["num_warps"]) < 1:
        out.append(f"no resident block of >= {MIN_WARPS} warps")
    if is_gemm(job.family):
        tensor_cores = job.precision != "fp32"
        if tensor_cores and result.mma != MMA.get(arch):
            out.append(f"MMA {result.mma}, expected {MMA.get(arch, 'none: no Triton MMA on this target')}")
        if tensor_cores and job.precision != "tf32" and min(p["block_n"], p["block_v"]) < MIN_TILE_16:
            out.append(f"16-bit tile {p['block_n']}x{p['block_v']} under {MIN_TILE_16}x{MIN_TILE_16}")
        if arch >= PIPELINE_MIN_ARCH and result.n_async == 0:
            out.append("loads not pipelined")
        if job.load == "tma" and not result.tma:
            out.append("TMA variant without TMA copies")
    return out


def run_jobs(jobs: list[Job], n_jobs: int) -> Iterator[tuple[Job, Result | str]]:
    """Compile every job (``n_jobs`` processes), yielding results in job order."""
    if n_jobs <= 1 or len(jobs) <= 1:
        yield from map(_run, jobs)
        return
    with concurrent.futures.ProcessPoolExecutor(max_workers=n_jobs) as pool:
        yield from pool.map(_run, jobs)


def _row(job: Job, result: Result | str, problems: list[str]) -> str:
    head = f"sm_{job.arch:<4} {job.precision:<5} {job.family:<14} {job.load:<4} {job.label():<17}"
    if isinstance(result, str):
        return f"{head} FAIL: {'; '.join(problems)}"
    r = result
    mma = r.mma + ("+tma" if r.tma else "")
    verdict = "ok" if not problems else "FAIL: " + "; ".join(problems)
    return f"{head} {r.regs:>5} {r.stack:>6} {r.local_ops:>7} {r.smem / 1024:>8.1f} {r.n_async:>5}  {mma:<12} {verdict}"


HEADER = (
    f"{'arch':<8} {'prec':<5} {'kernel':<14} {'load':<4} {'config':<17} {'regs':>5} {'stack':>6} {'LDL/STL':>7} "
    f"{'smem KiB':>8} {'async':>5}  {'mma':<12} verdict"
)


def gate(jobs: list[Job], n_jobs: int) -> list[str]:
    """Compile and print every job; returns the failing rows."""
    print(HEADER, flush=True)
    failed = []
    for job, result in run_jobs(jobs, n_jobs):
        problems = violations(job, result)
        row = _row(job, result, problems)
        print(row, flush=True)
        if problems:
            failed.append(row)
    return failed


# ---- candidates (sm_90 autotuning) ----


def candidate_jobs(precision: str) -> list[Job]:
    """Every autotuning candidate of every GEMM family, for sm_90 (the tuner runs only where it is enabled)."""
    jobs = []
    for family in GEMM_FAMILIES:
        for cfg in configs.candidates(family, precision, interpret=False):
            keep = ("block_n", "block_v", "block_k", "group_n", "num_warps", "num_stages", "use_tma")
            p = {k: getattr(cfg, k) for k in keep}
            jobs.append(Job(90, precision, family, "tma" if cfg.use_tma else "ptr", tuple(sorted(p.items()))))
    return list(dict.fromkeys(jobs))


# ---- the README support matrix ----


def _ci_tritons(arch: int) -> str:
    return ", ".join(v for v, archs in CI_ARCHS.items() if arch in archs)


def support_matrix() -> str:
    """README's "GPU support" table: per target and operand precision, which path runs and what was verified."""
    head = ["GPU", "GPUs", "table", *PRECISIONS, "GRPO loss", "compiled clean in CI (triton)", "run on a GPU"]
    lines = ["| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
    for arch, family in ARCHS.items():
        cells = [f"sm_{arch}", GPUS[arch], family]
        for precision in PRECISIONS:
            served = [f for f in GEMM_FAMILIES if arch_configs.default(family, f, precision) is not None]
            cells.append("Triton" if len(served) == len(GEMM_FAMILIES) else "torch path" if not served else "mixed")
        cells.append("Triton" if arch_configs.default(family, "grpo_loss", "fp32") is not None else "torch path")
        triton_served = any(c == "Triton" for c in cells[3:])
        cells += [_ci_tritons(arch) if triton_served else "n/a", RUN_ON_GPU.get(arch, "never")]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n\nMinimum versions: " + ", ".join(f"{k} >= {v}" for k, v in floors().items()) + "."


def floors() -> dict[str, str]:
    """pyproject.toml's declared floors for torch and triton."""
    text = (pathlib.Path(__file__).resolve().parents[1] / "pyproject.toml").read_text()
    return {name: re.search(rf'"{name}>=([0-9.]+)"', text).group(1) for name in ("torch", "triton")}


def _parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", action="append", help="target(s), e.g. 90 (default), or 'all'; repeatable")
    ap.add_argument("--dtype", action="append", help=f"operand precision(s) {PRECISIONS} or 'all'; default bf16")
    ap.add_argument("--family", action="append", choices=FAMILIES, help="kernel families (default: all)")
    ap.add_argument("--ci", action="store_true", help="the targets CI compiles on this triton (CI_ARCHS), all dtypes")
    ap.add_argument("--jobs", type=int, default=1, help="compile in this many processes")
    ap.add_argument("--check", action="store_true", help="exit 1 if any kernel violates the gate")
    ap.add_argument("--candidates", action="store_true", help="every sm_90 autotuning candidate instead")
    ap.add_argument("--support-matrix", action="store_true", help="print README's GPU support table and exit")
    for name in ("block-n", "block-v", "block-k", "group-n", "num-warps", "num-stages"):
        ap.add_argument(f"--{name}", type=int, help="override the table's GEMM launch config")
    return ap.parse_args(argv)


def main(argv=None) -> None:
    args = _parse_args(argv)
    if args.support_matrix:
        print(support_matrix())
        return
    if triton_interpret():  # the kernels were imported as interpreted functions (tests may import this module so)
        sys.exit("unset TRITON_INTERPRET: the compiler must see the kernels")
    archs = _choose(args.arch, ["90"], ARCHS, int)
    precisions = _choose(args.dtype, ["bf16"], PRECISIONS, str)
    if args.ci:
        version = ".".join(triton.__version__.split(".")[:2])
        if version not in CI_ARCHS:
            sys.exit(f"--ci: triton {triton.__version__} is not in CI_ARCHS {sorted(CI_ARCHS)}")
        archs, precisions = list(CI_ARCHS[version]), list(PRECISIONS)
    names = ("block_n", "block_v", "block_k", "group_n", "num_warps", "num_stages")
    overrides = {k: getattr(args, k) for k in names if getattr(args, k) is not None}
    if args.candidates:
        jobs, torch_path = [], []
        for precision in precisions:
            jobs += candidate_jobs(precision)
    else:
        jobs, torch_path = jobs_for(archs, precisions, args.family or FAMILIES, overrides)
    print(f"triton {triton.__version__}: {len(jobs)} kernels", flush=True)
    failed = gate(jobs, args.jobs)
    for arch, precision, family in torch_path:
        print(f"sm_{arch:<4} {precision:<5} {family:<14} -    torch path (no Triton kernel in arch_configs)")
    if failed:
        print(f"\n{len(failed)} of {len(jobs)} kernels fail the gate", flush=True)
        if args.check:
            sys.exit(1)


def _choose(values, default, allowed, cast):
    values = values or default
    if values == ["all"]:
        return list(allowed)
    out = [cast(v) for v in values]
    bad = [v for v in out if v not in allowed]
    if bad:
        sys.exit(f"unknown {bad}; choose from {list(allowed)} or 'all'")
    return out


if __name__ == "__main__":
    main()
