"""Compile fastgrpo's lm_head kernels for a GPU target without a GPU and report registers, spills, shared memory.

    python tools/compile_report.py [--arch 90] [--dtype bf16] [--block-n 128 --block-v 128 --block-k 64 ...] [--check]
    python tools/compile_report.py --candidates [--dtype fp32] [--check]   # every autotuning candidate

Run without TRITON_INTERPRET. Useful to choose block shapes before a GPU session, and as a smoke test that the
kernels lower for sm_90 (tests/test_kernel_compile.py runs it on a few variants).
"""

from __future__ import annotations

import argparse
import inspect
import os
import re
import subprocess
import sys
import tempfile

from fastgrpo.env import triton_interpret  # noqa: E402

if triton_interpret():
    sys.exit("unset TRITON_INTERPRET: the compiler must see the kernels")

import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

from fastgrpo.options import LogProbOptions  # noqa: E402
from fastgrpo_kernels import configs  # noqa: E402
from fastgrpo_kernels.common import transform_args  # noqa: E402
from fastgrpo_kernels.linear_logprobs_bwd import linear_logprobs_dlogits_kernel  # noqa: E402
from fastgrpo_kernels.linear_logprobs_fwd import combine_splits_kernel, linear_logprobs_fwd_kernel  # noqa: E402

_INT_ARGS = {"N", "H", "V", "v_per_split", "c0", "width", "SPLITS", "ignore_index"}
# The logit transform's arguments with every transform on (softcap included): a tuple of fp32 and a constexpr tuple.
_TRANSFORM = transform_args(LogProbOptions(softcap=30.0))
_TL = {"bf16": triton.language.bfloat16, "fp16": triton.language.float16, "fp32": triton.language.float32}


def _signature(kernel, dtype: str, ws_dtype: str, boxes: dict) -> dict:
    sig = {}
    for p in inspect.signature(kernel.fn).parameters:
        if p.endswith("_desc"):
            # A host TensorDescriptor's JIT signature; without USE_TMA the launch passes None (a constexpr).
            sig[p] = f"tensordesc<{dtype}[{', '.join(map(str, boxes[p]))}]>" if p in boxes else "constexpr"
        elif p.endswith("_ptr"):
            if p in ("x_ptr", "w_ptr", "b_ptr"):
                sig[p] = f"*{dtype}"
            elif p == "tgt_ptr":
                sig[p] = "*i64"
            elif p == "dy_ptr":
                sig[p] = f"*{ws_dtype}"
            else:
                sig[p] = "*fp32"
        elif p.startswith("stride_") or p in _INT_ARGS:
            sig[p] = "i64" if p.startswith("stride_") else "i32"
        elif p == "transform":
            sig[p] = tuple("fp32" for _ in _TRANSFORM["transform"])
        else:
            sig[p] = "constexpr"
    return sig


# What Triton's JIT specializes at a real launch with contiguous Qwen-shaped inputs: unit inner strides become the
# constant 1, and pointers and integers divisible by 16 carry that divisibility (which vectorized, pipelined async
# copies need). Without this, the compiled code is not what a launch runs.
_UNIT_STRIDES = {"stride_xh", "stride_wh"}
_DIV16_INTS = {"H", "V", "v_per_split", "stride_xn", "stride_wv", "stride_dyn", "stride_dbn", "c0"}


def compile_kernel(
    kernel, constexprs: dict, dtype: str = "bf16", arch: int = 90, num_warps: int = 8, num_stages: int = 3
):
    params = list(inspect.signature(kernel.fn).parameters)
    boxes = {}
    if constexprs.get("USE_TMA"):
        boxes = {
            "x_desc": [constexprs["BLOCK_N"], constexprs["BLOCK_K"]],
            "w_desc": [constexprs["BLOCK_V"], constexprs["BLOCK_K"]],
        }
    unused_desc = {p: None for p in params if p.endswith("_desc") and p not in boxes}
    constexprs = {**{p: 1 for p in params if p in _UNIT_STRIDES}, **unused_desc, **constexprs}
    signature = _signature(kernel, dtype, dtype, boxes)
    signature.update({p: "constexpr" for p in params if p in _UNIT_STRIDES})
    attrs = {(i,): [["tt.divisibility", 16]] for i, p in enumerate(params) if p.endswith("_ptr") or p in _DIV16_INTS}
    src = ASTSource(
        fn=kernel,
        signature=signature,
        constexprs={(params.index(k),): v for k, v in constexprs.items()},
        attrs=attrs,
    )
    return triton.compile(
        src, target=GPUTarget("cuda", arch, 32), options={"num_warps": num_warps, "num_stages": num_stages}
    )


def variants(dtype: str, block_n: int, block_v: int, block_k: int, group_n: int, use_tma: bool = False):
    dot = _TL[dtype]
    precision = "ieee" if dtype == "fp32" else None
    blocks = dict(BLOCK_N=block_n, BLOCK_V=block_v, BLOCK_K=block_k, GROUP_N=group_n, USE_TMA=use_tma)
    for softmax_w in (False, True):
        yield (
            f"fwd softmax_w={softmax_w}",
            linear_logprobs_fwd_kernel,
            dict(
                HAS_BIAS=True,
                TRANSFORM=_TRANSFORM["TRANSFORM"],
                HAS_SOFTMAX_W=softmax_w,
                HAS_ENTROPY=True,
                DOT_DTYPE=dot,
                DOT_PRECISION=precision,
                **blocks,
            ),
        )
    yield (
        "dlogits",
        linear_logprobs_dlogits_kernel,
        dict(
            HAS_BIAS=True,
            TRANSFORM=_TRANSFORM["TRANSFORM"],
            HAS_LOGP_GRAD=True,
            HAS_ENTROPY_GRAD=True,
            HAS_BIAS_GRAD=True,
            DOT_DTYPE=dot,
            DOT_PRECISION=precision,
            **blocks,
        ),
    )
    yield (
        "combine",
        combine_splits_kernel,
        dict(
            HAS_BIAS=True,
            TRANSFORM=_TRANSFORM["TRANSFORM"],
            HAS_ENTROPY=True,
            HAS_SOFTMAX_W=True,
            DOT_DTYPE=dot,
            BLOCK_N=64,
            BLOCK_K=128,
        ),
    )


def resource_usage(compiled) -> tuple[int, int, int, int]:
    """(registers, stack bytes, local-memory instructions, dynamic shared-memory bytes) from the cubin, read with
    Triton's bundled cuobjdump. Stack bytes and LDL/STL instructions mean register spills."""
    tools = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin")
    with tempfile.NamedTemporaryFile("wb", suffix=".cubin", delete=False) as f:
        f.write(compiled.asm["cubin"])
    try:
        usage = subprocess.run(
            [f"{tools}/cuobjdump", "--dump-resource-usage", f.name], capture_output=True, text=True, check=True
        ).stdout
        sass = subprocess.run([f"{tools}/cuobjdump", "-sass", f.name], capture_output=True, text=True, check=True)
    finally:
        os.unlink(f.name)
    regs = int(re.search(r"REG:(\d+)", usage).group(1))
    stack = int(re.search(r"STACK:(\d+)", usage).group(1))
    local = sum(("LDL" in line or "STL" in line) for line in sass.stdout.splitlines())
    return regs, stack, local, compiled.metadata.shared


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", type=int, default=90)
    ap.add_argument("--dtype", choices=sorted(_TL), default="bf16")
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--dtype", choices=sorted(_TL), default="bf16")
    # defaults: the shipped GPU launch table for that operand dtype
    gpu = configs.GPU_CONFIG_FP32 if pre.parse_known_args()[0].dtype == "fp32" else configs.GPU_CONFIG
    ap.add_argument("--block-n", type=int, default=gpu.block_n)
    ap.add_argument("--block-v", type=int, default=gpu.block_v)
    ap.add_argument("--block-k", type=int, default=gpu.block_k)
    ap.add_argument("--group-n", type=int, default=gpu.group_n)
    ap.add_argument("--num-warps", type=int, default=gpu.num_warps)
    ap.add_argument("--num-stages", type=int, default=gpu.num_stages)
    ap.add_argument("--tma", action="store_true", default=gpu.use_tma, help="TMA descriptor loads (sm_90)")
    ap.add_argument("--check", action="store_true", help="exit 1 if a GEMM kernel spills, or misses wgmma/async copies")
    ap.add_argument(
        "--candidates", action="store_true", help="report every autotuning candidate (configs.candidates) instead"
    )
    args = ap.parse_args()
    failures = []
    print(f"{'kernel':<44} {'regs':>5} {'stack':>6} {'LDL/STL':>8} {'smem KiB':>9} {'async':>6}  mma")
    if args.candidates:
        # The kernel each kind launches: fwd -> forward, fwd_softmax_w -> forward + softmax@W, bwd -> dL/dy.
        index = {"fwd": 0, "fwd_softmax_w": 1, "bwd": 2}
        jobs = []
        for kind in configs.TUNABLE_KINDS:
            for cfg in configs.candidates(kind, args.dtype):
                todo = variants(args.dtype, cfg.block_n, cfg.block_v, cfg.block_k, cfg.group_n, cfg.use_tma)
                todo = list(todo)[index[kind]]
                jobs.append((f"{kind} {cfg.label()}", *todo[1:], cfg.num_warps, cfg.num_stages))
    else:
        jobs = [
            (name, kernel, const, args.num_warps, args.num_stages)
            for name, kernel, const in variants(
                args.dtype, args.block_n, args.block_v, args.block_k, args.group_n, args.tma
            )
        ]
    for name, kernel, const, num_warps, num_stages in jobs:
        c = compile_kernel(kernel, const, args.dtype, args.arch, num_warps, num_stages)
        ptx = c.asm["ptx"]
        mma = "wgmma" if "wgmma" in ptx else "mma" if "mma.sync" in ptx else "-"
        tma = "cp.async.bulk.tensor" in ptx
        mma += "+tma" if tma else ""
        regs, stack, local, smem = resource_usage(c)
        ttgir = c.asm["ttgir"]  # software-pipelined loads: async copies, or TMA copies with TMA descriptors
        n_async = ttgir.count("async_copy_global_to_local") + ttgir.count("async_tma_copy_global_to_local")
        print(f"{name:<44} {regs:>5} {stack:>6} {local:>8} {smem / 1024:>9.1f} {n_async:>6}  {mma}", flush=True)
        want_wgmma = args.dtype != "fp32"  # exact fp32 (no TF32) runs on FMAs
        lost_tma = " tma" in name and not tma  # a TMA config whose loads did not lower to TMA copies
        if name != "combine" and (stack or local or (want_wgmma and "wgmma" not in mma) or n_async == 0 or lost_tma):
            failures.append(name)
    if args.check and failures:
        sys.exit(f"spills, no wgmma or no pipelined loads in: {', '.join(failures)}")


if __name__ == "__main__":
    main()
