"""examples/grpo_gsm8k.py --tiny: the GSM8K recipe runs offline on CPU through FastGRPOTrainer and trains."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "grpo_gsm8k.py"


def test_gsm8k_example_tiny_mode(tmp_path: Path) -> None:
    env = {**os.environ, "FASTGRPO_BACKEND": "torch", "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, str(EXAMPLE), "--tiny", "--max-steps", "3", "--output-dir", str(tmp_path)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    match = re.search(
        r"fastgrpo GRPO GSM8K: (\d+) steps, train_loss=(\S+), max grad_norm=(\S+), loss path: (\w+)", proc.stdout
    )
    assert match, proc.stdout[-3000:]
    steps, _, grad_norm, path = match.groups()
    assert int(steps) == 3
    assert float(grad_norm) > 0.0  # the tiny rewards are not constant: something was learned
    assert path == "fused"
