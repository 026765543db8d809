"""Compile fastgrpo's Triton kernels for GPU targets without a GPU, report their resources, and gate them in CI.

    python tools/compile_report.py                          # sm_90, bf16: every kernel family, its launch config
    python tools/compile_report.py --arch all --dtype all --check --jobs 2     # the CI gate (every arch x dtype)
    python tools/compile_report.py --ci --check             # the archs CI compiles on this triton (CI_ARCHS)
    python tools/compile_report.py --arch 80 --family fwd --block-n 64 ...     # try a tile before editing a table
    python tools/compile_report.py --candidates [--dtype fp32] --check         # every sm_90 autotuning candidate
    python tools/compile_report.py --support-matrix         # README's "GPU support" table, from the tables
    python tools/compile_report.py --arch gfx942 --dtype all --check          # an AMD target (gfx90a, gfx942, gfx950)

Each (architecture, operand precision, kernel family, load style) is compiled with the launch parameters a real
launch gets: the built-in table ``fastgrpo_kernels.arch_configs`` (``launch_params``), the specializations Triton's
JIT makes for contiguous inputs (unit inner strides, 16-divisible pointers and sizes), pointer loads everywhere and
TMA descriptor loads on sm_90+. ``--check`` exits 1 on any violation of ``violations``: register spills, shared
memory over the architecture's per-block limit, no resident block of >= 4 warps, no tensor-core MMA (or not the
architecture's own: wgmma on sm_90, tcgen05 on sm_100) for 16-bit / TF32 operands, 16-bit tiles under 64x64,
unpipelined loads, a TMA variant that lost its TMA copies. Table entries that are None (no Triton kernel: the torch
path) are listed, not compiled. Run without TRITON_INTERPRET.

AMD Instinct targets (``gfx90a``, ``gfx942``, ``gfx950``; the section "AMD targets" below) compile for Triton's HIP
backend (wave64) with the AMD tables' options (waves_per_eu, matrix_instr_nonkdim, kpack) and are read from the
AMDGCN assembly; the gate fails on VGPR or SGPR spills or scratch, LDS over the target's limit, a 16-bit GEMM
without MFMA (or a tf32 one without XF32 MFMA), and 16-bit tiles under 64x64.
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

# Compile targets (compute capability x 10 + minor; AMD: the gfx name) -> the family whose table entries they launch
# with.
ARCHS: dict[int | str, str] = {
    75: "sm75", 80: "sm80", 86: "sm86", 89: "sm86", 90: "sm90", 100: "sm100", 120: "sm120",
    **{gfx: gfx for gfx in arch_configs.AMD_FAMILIES},
}  # fmt: skip
GPUS: dict[int | str, str] = {
    75: "T4, RTX 20xx",
    80: "A100, A800",
    86: "RTX 30xx, A10, A40",
    89: "RTX 40xx, L4, L40S",
    90: "H100, H200",
    100: "B200, GB200",
    120: "RTX 50xx, RTX PRO 6000",
    **arch_configs.AMD_GPUS,
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
# AMD: all three targets on the newest triton, gfx942 (MI300X, the common AMD GRPO machine) on 3.6.
CI_ARCHS: dict[str, tuple[int | str, ...]] = {"3.9": tuple(ARCHS), "3.6": (80, 90, "gfx942")}
# Targets whose GPU tests passed on real hardware: arch -> "GPU, date". None yet.
RUN_ON_GPU: dict[int | str, str] = {}

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
_INDEX_PTRS = {"tgt_ptr": "*i64", "part_arg_ptr": "*i32", "is_top1_ptr": "*u8", "argmax_ptr": "*i32"}
# HAS_ROW_ARGMAX: the combine's row max / first argmax, which a vocabulary shard exchanges under TP.
_OUTPUT_FLAGS = ("HAS_LOG_SUM_SQ", "HAS_MEAN_LOGITS", "HAS_IS_TOP1", "HAS_ROW_ARGMAX")
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

    arch: int | str  # compute capability x 10 + minor, or an AMD gfx name
    precision: str
    family: str
    load: str  # "ptr" or "tma"
    params: tuple  # sorted (name, value) pairs: the launch config's fields that matter to the compiler

    @property
    def fields(self) -> dict:
        return dict(self.params)

    def label(self) -> str:
        p = self.fields
        amd = "".join(f" {_AMD_SHORT[k]}{v}" for k, v in p.items() if k in configs.AMD_OPTIONS)
        if is_gemm(self.family):
            return f"{p['block_n']}x{p['block_v']}x{p['block_k']} w{p['num_warps']} s{p['num_stages']}{amd}"
        if self.family == "combine":
            return f"{p['block_n']}x{p['block_k']} w{p['num_warps']}{amd}"
        return f"{p['block_b']}x{p['block_t']} w{p['num_warps']}{amd}"


@dataclasses.dataclass(frozen=True)
class Result:
    """What the compiled kernel uses (from its cubin, PTX and TTGIR)."""

    regs: int
    stack: int  # bytes of local memory per thread
    local_ops: int  # LDL/STL instructions in the SASS
    smem: int  # dynamic shared memory, bytes
    n_async: int  # software-pipelined copies in the TTGIR (async copies or TMA copies)
    mma: str  # "wgmma", "tcgen05", "mma.sync" or "-"; AMD: the MFMA instructions, e.g. "v_mfma_f32_16x16x16_bf16"
    tma: bool  # TMA copies (cp.async.bulk.tensor) in the PTX
    # AMD only (from the AMDGCN metadata; regs are the VGPRs there, arch + AGPRs, stack the scratch bytes per lane,
    # local_ops the spilled VGPRs + SGPRs):
    agprs: int = 0  # of regs, the accumulation VGPRs (gfx90a+: one 512-register file with the arch VGPRs)
    sgprs: int = 0
    vgpr_spills: int = 0
    sgpr_spills: int = 0


# ---- launch parameters: the one place that turns table entries into compile parameters ----


# The KernelConfig fields that reach the compiler.
_GEMM_PARAMS = ("block_n", "block_v", "block_k", "group_n", "num_warps", "num_stages", "use_tma", "enable_fp_fusion")


def launch_params(arch: int, family: str, precision: str, overrides: dict | None = None) -> dict | None:
    """The launch parameters of ``family`` for ``precision`` operands on target ``arch``, as the launchers use them
    (None: no Triton kernel, the torch path). GEMM families: ``KernelConfig`` fields; combine: block_n, block_k,
    num_warps (the launcher's num_stages: Triton's default); GRPO loss: the largest tile the launcher's block sizing
    gives (max_tile elements, rows of max_block_t tokens) and its warps. Every family: ``enable_fp_fusion``."""
    table = TABLE_FAMILY.get(family, family)
    fields = arch_configs.default(ARCHS[arch], table, precision)
    if fields is None:
        return None
    cfg = configs.CONFIG_CLASSES[table].from_dict(fields)  # the resolver's config object for this entry
    if is_gemm(family):
        cfg = dataclasses.replace(cfg, **(overrides or {}))
        if family in OUTPUT_FAMILIES:  # as fastgrpo/triton_backend.py's _forward
            cfg = dataclasses.replace(cfg, **arch_configs.output_tiles(ARCHS[arch], table, precision))
        return {**{k: getattr(cfg, k) for k in _GEMM_PARAMS}, **cfg.amd_options()}
    fusion = dict(enable_fp_fusion=cfg.enable_fp_fusion, **cfg.amd_options())
    if family == "combine":
        return dict(block_n=cfg.block_n, block_k=cfg.block_k, num_warps=cfg.num_warps, **fusion)
    block_b, block_t = cfg.blocks(1 << 20, 1 << 20)  # the launcher's sizing for a large batch: the largest tile
    return dict(block_b=block_b, block_t=block_t, num_warps=cfg.num_warps, **fusion)


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
                if is_gemm(family) and precision != "fp32" and not is_amd(arch) and arch >= TMA_MIN_ARCH:
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
    kernel,
    constexprs: dict,
    dtype: str = "bf16",
    arch: int | str = 90,
    num_warps: int = 8,
    num_stages: int = 3,
    enable_fp_fusion: bool = configs.FP_FUSION,
    amd_options: dict | None = None,
):
    """Compile one lm_head kernel (forward, dL/dy or combine) with ``dtype`` operand pointers for ``arch``, with the
    FP fusion setting a launch passes (the configs' default unless given) and, for an AMD target, its
    waves_per_eu / matrix_instr_nonkdim / kpack (``amd_options``)."""
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
    options = {"num_warps": num_warps, "num_stages": num_stages, "enable_fp_fusion": enable_fp_fusion}
    return triton.compile(src, target=target(arch), options={**options, **(amd_options or {})})


def target(arch: int | str) -> GPUTarget:
    """Triton's compile target: an NVIDIA compute capability (warps of 32) or an AMD gfx name (wavefronts of 64)."""
    return GPUTarget("hip", arch, 64) if is_amd(arch) else GPUTarget("cuda", arch, 32)


def is_amd(arch: int | str) -> bool:
    return isinstance(arch, str)


def arch_name(arch: int | str) -> str:
    return arch if is_amd(arch) else f"sm_{arch}"


def _by_index(params: list[str], values: dict) -> dict:
    return {(params.index(k),): v for k, v in values.items()}


def compile_grpo_loss(
    arch: int | str,
    precision: str,
    block_b: int,
    block_t: int,
    num_warps: int,
    loss_kind: int = 3,
    everything: bool = True,
    enable_fp_fusion: bool = configs.FP_FUSION,
    amd_options: dict | None = None,
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
    options = {"num_warps": num_warps, "enable_fp_fusion": enable_fp_fusion, **(amd_options or {})}
    return triton.compile(src, target=target(arch), options=options)


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
    fusion = p.get("enable_fp_fusion", configs.FP_FUSION)
    amd = {k: v for k, v in p.items() if k in configs.AMD_OPTIONS}
    if job.family == "grpo_loss":
        blocks = (p["block_b"], p["block_t"], p["num_warps"])
        return compile_grpo_loss(job.arch, job.precision, *blocks, enable_fp_fusion=fusion, amd_options=amd)
    const = _lm_head_constexprs(job.family, job.precision, p)
    # The combine launch passes no num_stages: Triton's default (3 on CUDA, 2 on HIP).
    stages = p.get("num_stages", 2 if is_amd(job.arch) else 3)
    kernel = _KERNELS[job.family]
    return compile_kernel(kernel, const, _PTR[job.precision], job.arch, p["num_warps"], stages, fusion, amd)


def inspect_compiled(compiled) -> Result:
    """Registers, stack and LDL/STL from the cubin (Triton's bundled cuobjdump), MMA and TMA from the PTX,
    pipelined copies from the TTGIR, shared memory from the metadata. AMD targets: ``inspect_amdgcn``."""
    if "amdgcn" in compiled.asm:
        return inspect_amdgcn(compiled)
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


# ---- AMD targets ----
# What an AMD target's compiled kernel uses is in its AMDGCN assembly's kernel metadata (``.vgpr_count``,
# ``.agpr_count``, ``.sgpr_count``, ``.vgpr_spill_count``, ``.sgpr_spill_count``, ``.private_segment_fixed_size``:
# scratch bytes per lane) and its instructions (``v_mfma_*``); LDS is the compiled metadata's ``shared`` (Triton
# allocates it dynamically, so ``.group_segment_fixed_size`` stays 0). ``.vgpr_count`` is the total of arch VGPRs
# and AGPRs (one 512-register file per SIMD lane on gfx90a/942/950, allocated in granules of 8); a workgroup's waves
# spread over the CU's 4 SIMDs.
_AMD_SHORT = {"waves_per_eu": "wpe", "matrix_instr_nonkdim": "mfma", "kpack": "kpack"}
AMD_VGPRS_PER_SIMD = 512
AMD_SIMDS_PER_CU = 4
AMD_MAX_WAVES_PER_SIMD = 8
# The MFMA operand type a dot of each precision must use (a substring of the instruction name: v_mfma_f32_32x32x8_bf16,
# v_mfma_f32_16x16x16bf16_1k, v_mfma_f32_16x16x16_f16 / f16, v_mfma_f32_32x32x4_xf32). Exact fp32 also gets fp32 MFMA
# (v_mfma_f32_32x32x2_f32) on every CDNA target; reported, not required.
AMD_MFMA_TYPE = {"bf16": "bf16", "fp16": "f16", "tf32": "xf32"}


def _amdgcn_field(asm: str, name: str) -> int:
    found = re.search(rf"\.{name}:\s+(\d+)", asm)
    if found is None:
        raise ValueError(f"no .{name} in the AMDGCN metadata")
    return int(found.group(1))


def inspect_amdgcn(compiled) -> Result:
    """An AMD target's resources: registers, spills and scratch from the AMDGCN metadata, MFMA from its
    instructions, LDS from the compiled metadata, pipelined copies (async copies to LDS, gfx950) from the TTGIR."""
    asm, ttgir = compiled.asm["amdgcn"], compiled.asm["ttgir"]
    vgpr_spills, sgpr_spills = _amdgcn_field(asm, "vgpr_spill_count"), _amdgcn_field(asm, "sgpr_spill_count")
    mfma = sorted(set(re.findall(r"\bv_mfma_\w+", asm)))
    return Result(
        regs=_amdgcn_field(asm, "vgpr_count"),
        stack=_amdgcn_field(asm, "private_segment_fixed_size"),
        local_ops=vgpr_spills + sgpr_spills,
        smem=compiled.metadata.shared,
        n_async=ttgir.count("async_copy_global_to_local") + ttgir.count("buffer_load_to_local"),
        mma=",".join(m.removeprefix("v_mfma_") for m in mfma) or "-",
        tma=False,
        agprs=_amdgcn_field(asm, "agpr_count"),
        sgprs=_amdgcn_field(asm, "sgpr_count"),
        vgpr_spills=vgpr_spills,
        sgpr_spills=sgpr_spills,
    )


def amd_waves_per_simd(result: Result) -> int:
    """Waves of this kernel one SIMD holds at once (by registers)."""
    per_wave = -(-result.regs // 8) * 8  # .vgpr_count is arch VGPRs + AGPRs on CDNA2+
    return min(AMD_MAX_WAVES_PER_SIMD, AMD_VGPRS_PER_SIMD // max(per_wave, 1))


def amd_violations(job: Job, result: Result) -> list[str]:
    """Why an AMD target's compiled kernel fails the gate (empty: it passes)."""
    p, out = job.fields, []
    if result.vgpr_spills or result.sgpr_spills or result.stack:
        out.append(f"spills ({result.vgpr_spills} VGPR, {result.sgpr_spills} SGPR, {result.stack} B scratch)")
    limit = shared_memory_limit(job.arch)
    if result.smem > limit:
        out.append(f"LDS {result.smem / 1024:.1f} KiB > {limit >> 10} KiB per workgroup")
    waves_per_simd_needed = -(-p["num_warps"] // AMD_SIMDS_PER_CU)
    if p["num_warps"] < MIN_WARPS or amd_waves_per_simd(result) < waves_per_simd_needed:
        out.append(f"no resident workgroup of >= {MIN_WARPS} waves")
    if is_gemm(job.family) and job.precision in AMD_MFMA_TYPE:
        want = AMD_MFMA_TYPE[job.precision]
        kinds = result.mma.split(",") if result.mma != "-" else []
        # the operand type ends the name ("f16" must not match "bf16"; gfx90a's bf16 MFMA end in "bf16_1k")
        ok = [m for m in kinds if re.search(rf"(?<!b){want}(_1k)?$", m)]
        if not ok:
            out.append(f"MFMA {result.mma}, expected a {want} MFMA")
        if job.precision != "tf32" and min(p["block_n"], p["block_v"]) < MIN_TILE_16:
            out.append(f"16-bit tile {p['block_n']}x{p['block_v']} under {MIN_TILE_16}x{MIN_TILE_16}")
    return out


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


def shared_memory_limit(arch: int | str) -> int:
    return arch_configs.SHARED_MEMORY_PER_BLOCK[ARCHS[arch]]


def violations(job: Job, result: Result | str) -> list[str]:
    """Why this compiled kernel fails the gate (empty: it passes)."""
    if isinstance(result, str):
        return [f"compile error: {result}"]
    if is_amd(job.arch):
        return amd_violations(job, result)
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
    head = f"{arch_name(job.arch):<8} {job.precision:<5} {job.family:<14} {job.load:<4} {job.label():<17}"
    if isinstance(result, str):
        return f"{head} FAIL: {'; '.join(problems)}"
    r = result
    mma = r.mma + ("+tma" if r.tma else "")
    verdict = "ok" if not problems else "FAIL: " + "; ".join(problems)
    if is_amd(job.arch):  # VGPR / AGPR / SGPR, scratch bytes, spilled registers, LDS, async copies, MFMA
        regs = f"{r.regs}/{r.agprs}/{r.sgprs}"
        spills = f"{r.vgpr_spills}+{r.sgpr_spills}"
        return f"{head} {regs:>11} {r.stack:>6} {spills:>7} {r.smem / 1024:>8.1f} {r.n_async:>5}  {mma:<12} {verdict}"
    return f"{head} {r.regs:>5} {r.stack:>6} {r.local_ops:>7} {r.smem / 1024:>8.1f} {r.n_async:>5}  {mma:<12} {verdict}"


HEADER = (
    f"{'arch':<8} {'prec':<5} {'kernel':<14} {'load':<4} {'config':<17} {'regs':>5} {'stack':>6} {'LDL/STL':>7} "
    f"{'smem KiB':>8} {'async':>5}  {'mma':<12} verdict"
)
AMD_HEADER = (  # AMD rows: VGPR/AGPR/SGPR, scratch bytes, spilled VGPRs+SGPRs, LDS
    f"{'arch':<8} {'prec':<5} {'kernel':<14} {'load':<4} {'config':<17} {'v/a/sgpr':>11} {'scratch':>6} {'spills':>7} "
    f"{'LDS KiB':>8} {'async':>5}  {'mfma':<12} verdict"
)


def gate(jobs: list[Job], n_jobs: int) -> list[str]:
    """Compile and print every job; returns the failing rows."""
    if any(not is_amd(j.arch) for j in jobs):
        print(HEADER, flush=True)
    if any(is_amd(j.arch) for j in jobs):
        print(AMD_HEADER, flush=True)
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
            p = {k: getattr(cfg, k) for k in _GEMM_PARAMS}
            jobs.append(Job(90, precision, family, "tma" if cfg.use_tma else "ptr", tuple(sorted(p.items()))))
    return list(dict.fromkeys(jobs))


# ---- the README support matrix ----


def _ci_tritons(arch: int | str) -> str:
    return ", ".join(v for v, archs in CI_ARCHS.items() if arch in archs)


def support_matrix() -> str:
    """README's "GPU support" table: per target and operand precision, which path runs and what was verified."""
    head = ["GPU", "GPUs", "table", *PRECISIONS, "GRPO loss", "compiled clean in CI (triton)", "run on a GPU"]
    lines = ["| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
    for arch, family in ARCHS.items():
        cells = [arch_name(arch), GPUS[arch], family]
        for precision in PRECISIONS:
            served = [f for f in GEMM_FAMILIES if arch_configs.default(family, f, precision) is not None]
            if not served and precision == "tf32" and family in arch_configs.AMD_FAMILIES:
                cells.append("Triton, as fp32")  # no XF32 here: fp32 operands stay exact (fastgrpo/precision.py)
                continue
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
    archs = _choose(args.arch, ["90"], ARCHS, _arch_key)
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
        if is_amd(arch) and precision == "tf32":
            print(f"{arch:<8} {precision:<5} {family:<14} -    no XF32 on {arch}: fp32 operands run the fp32 entry")
            continue
        print(f"{arch_name(arch):<8} {precision:<5} {family:<14} -    torch path (no Triton kernel in arch_configs)")
    if failed:
        print(f"\n{len(failed)} of {len(jobs)} kernels fail the gate", flush=True)
        if args.check:
            sys.exit(1)


def _arch_key(value: str) -> int | str:
    """A target as typed: ``90`` or ``sm_90`` (NVIDIA), ``gfx942`` (AMD)."""
    value = value.lower().removeprefix("sm_").removeprefix("sm")
    return int(value) if value.isdigit() else value


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
