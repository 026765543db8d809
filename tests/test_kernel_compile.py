"""The lm_head kernels compile for sm_90 with the shipped GPU launch table, no GPU needed: software-pipelined
(async-copy) loads and no register spills, for bf16 (on wgmma tensor-core instructions) and exact fp32 operands.

The interpreter accepts code the compiler rejects, and a config that spills or loses pipelining would only show on a
GPU as lost speed: this catches both on CPU CI. Runs tools/compile_report.py without TRITON_INTERPRET.
"""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("what", ["table", "candidates"])
@pytest.mark.parametrize("dtype", ["bf16", "fp32"])
def test_kernels_compile_for_sm90_without_spills(dtype, what):
    """``table``: the shipped default configs; ``candidates``: every config the opt-in autotuner may pick."""
    pytest.importorskip("triton.backends.nvidia")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_DEFAULT_FP_FUSION"] = "1"
    extra = ["--candidates"] if what == "candidates" else []
    proc = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "compile_report.py"), "--dtype", dtype, "--check", *extra],
        env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    if proc.returncode != 0 and "ptxas" in proc.stderr and "not found" in proc.stderr.lower():
        pytest.skip("Triton's ptxas is not available")
    assert proc.returncode == 0, proc.stdout + proc.stderr[-4000:]
    assert dtype == "fp32" or "wgmma" in proc.stdout
    if what == "candidates":  # every kind reported, more than one config each
        for kind in ("fwd ", "fwd_softmax_w ", "bwd "):
            assert sum(line.startswith(kind) for line in proc.stdout.splitlines()) >= 2, proc.stdout
