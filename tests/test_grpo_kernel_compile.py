"""The GRPO loss kernel compiles for a real GPU (sm_90 cubin via Triton's bundled ptxas), no GPU needed.

The interpreter accepts Python the compiler rejects, so CI without a GPU compiles a few flag combinations in a
subprocess without TRITON_INTERPRET (the decorator must not see it).
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

SCRIPT = textwrap.dedent(
    """
    import inspect
    import triton
    import triton.language as tl
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    from fastgrpo.grpo.registry import KernelKind
    from fastgrpo_kernels.grpo_loss import grpo_loss_fwd_kernel as kernel


    @triton.jit
    def policy(coef_1, lp, adv, params):  # a POLICY_FN loss type's term, as a test-only type would supply it
        return -adv * coef_1 * params[0], -adv * params[0] + tl.zeros_like(lp), -params[1] * adv + tl.zeros_like(lp)


    params = list(inspect.signature(kernel.fn).parameters)
    flags = [p for p in params if p.startswith("HAS_") or p in ("SEQ_LEVEL", "COMPUTE_GRAD")]
    low = ("lp_ptr", "old_ptr", "ref_ptr", "samp_ptr", "ent_ptr")
    for kind in KernelKind:
        for everything in (True, False):
            n_params = 2 if kind == KernelKind.POLICY_FN else 1
            sig = {}
            for p in params:
                if p.endswith("_ptr"):
                    sig[p] = "*bf16" if p in low and kind % 2 else "*i64" if p == "mask_ptr" else "*fp32"
                elif p in ("B", "T", "stride_isr_b", "stride_isr_t"):
                    sig[p] = "i32"
                elif p == "policy_params":
                    sig[p] = ("fp32",) * n_params
                elif p.isupper():
                    sig[p] = "constexpr"
                else:
                    sig[p] = "fp32"
            const = {f: everything for f in flags}
            seq = everything and kind != KernelKind.CISPO
            const.update(SEQ_LEVEL=seq, COMPUTE_GRAD=True, LOSS_KIND=int(kind), BLOCK_B=4, BLOCK_T=128)
            const.update(POLICY=policy if kind == KernelKind.POLICY_FN else None)
            src = ASTSource(fn=kernel, signature=sig, constexprs={(params.index(n),): v for n, v in const.items()})
            assert "cubin" in triton.compile(src, target=GPUTarget("cuda", 90, 32)).asm
    print("compiled")
    """
)


def test_grpo_kernel_compiles_for_sm90(tmp_path):
    pytest.importorskip("triton.backends.nvidia")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_DEFAULT_FP_FUSION"] = "1"
    script = tmp_path / "compile_grpo.py"  # a file, not -c: @triton.jit reads the policy function's source
    script.write_text(SCRIPT)
    proc = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=300)
    if proc.returncode != 0 and "ptxas" in proc.stderr and "not found" in proc.stderr.lower():
        pytest.skip("Triton's ptxas is not available")
    assert proc.returncode == 0 and "compiled" in proc.stdout, proc.stderr[-4000:]
