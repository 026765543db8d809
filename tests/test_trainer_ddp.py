"""DDP on CPU: two gloo processes (torchrun) train stock trl and FastGRPOTrainer to the same losses and weights."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
import torch
from _parity import Case, RunResult, compare, make_model_dir
from _torchrun import torchrun_cmd

pytestmark = pytest.mark.slow
HERE = Path(__file__).resolve().parent


def test_ddp_two_gloo_processes_match_stock_trl(tmp_path: Path) -> None:
    model_dir = make_model_dir(Case("ddp"), tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "", "PYTHONPATH": str(HERE)}
    cmd = torchrun_cmd(str(HERE / "_ddp_worker.py"), str(model_dir), str(out))
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-8000:]
    runs = {
        (name, rank): torch.load(out / f"{name}-rank{rank}.pt", weights_only=False)
        for name in ("stock", "fast")
        for rank in (0, 1)
    }
    for rank in (0, 1):
        stock, fast = runs[("stock", rank)], runs[("fast", rank)]
        compare(RunResult(stock["logs"], stock["weights"]), RunResult(fast["logs"], fast["weights"]))
    # Gradients were all-reduced: both ranks end with the same weights although they trained on different samples.
    for key, w0 in runs[("fast", 0)]["weights"].items():
        torch.testing.assert_close(runs[("fast", 1)]["weights"][key], w0, rtol=0, atol=0)
