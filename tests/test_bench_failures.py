"""The main job fails loudly: a missing peer is a skip with the reason, a broken installed one fails the run."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import pytest

from fastgrpo_benchmarks.harness.failures import failure_lines
from fastgrpo_benchmarks.peers.base import Unavailable, import_peer

ROOT = pathlib.Path(__file__).resolve().parents[1]

# Planted in a fresh interpreter through sitecustomize: trl (installed, metadata present) fails to import its head.
PLANT = """
import importlib.abc, sys

class _BrokenTrlHead(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "trl.kernels.chunked_logprob":
            raise ImportError("planted: trl.kernels.chunked_logprob cannot be imported")
        return None

sys.meta_path.insert(0, _BrokenTrlHead())
"""


def test_missing_distribution_is_unavailable():
    with pytest.raises(Unavailable, match="no-such-peer-dist not installed"):
        import_peer("no_such_peer_module", "no-such-peer-dist")


def test_installed_distribution_that_fails_to_import_is_not_unavailable():
    # pytest's metadata exists; a module of it that does not import raises the ImportError itself (a failure).
    with pytest.raises(ImportError) as info:
        import_peer("pytest.no_such_submodule", "pytest")
    assert not isinstance(info.value, Unavailable)


def test_failure_lines_name_each_failure():
    rows = [
        {
            "case": "op",
            "shape": "s",
            "mode": "fwd",
            "impl": "trl_chunked",
            "status": "failed",
            "reason": "ImportError: x",
        },
        {"case": "op", "shape": "s", "mode": "fwd", "impl": "cce", "status": "skipped", "reason": "CUDA only"},
        {"case": "op", "shape": "s", "mode": "fwd", "impl": "fastgrpo", "status": "ok"},
    ]
    lines = failure_lines(rows)
    assert lines[-1] == "FAILED: op s fwd trl_chunked: ImportError: x" and len(lines) == 2
    assert failure_lines(rows[1:]) == []


@pytest.mark.slow
def test_main_job_exits_nonzero_when_an_installed_peer_crashes(tmp_path):
    plant = tmp_path / "plant"
    plant.mkdir()
    (plant / "sitecustomize.py").write_text(PLANT)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONSAFEPATH", "TRITON_INTERPRET")}
    env["PYTHONPATH"] = str(plant)
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "benchmarks", "--suite", "cpu-tiny", "--no-trainer", "--no-plots", "--out", str(out),
           "--impl", "fastgrpo", "--impl", "trl_chunked", "--impl", "cce", "-k", "fwd and not bwd"]  # fmt: skip
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    text = proc.stdout + proc.stderr
    assert proc.returncode != 0, text[-3000:]
    # The closing lines: a count, then one line per crashed case (every forward mode's trl_chunked row), last.
    lines = proc.stderr.strip().splitlines()
    header = max(i for i, line in enumerate(lines) if line.startswith("FAILED: ") and "case(s) crashed" in line)
    named = lines[header + 1 :]
    assert lines[header].startswith(f"FAILED: {len(named)} case(s) crashed"), lines[header:]
    assert named and all(
        line.startswith("FAILED: op tiny-n64-h64-v4096 ") and " trl_chunked: ImportError: planted" in line
        for line in named
    ), named
    # fastgrpo still ran, and cce (CUDA only) is a skip with its reason, not a failure.
    assert "cut-cross-entropy's kernels run on CUDA only" in text
    assert f"{len(named)} failed" in text and " passed" in text, text[-3000:]
