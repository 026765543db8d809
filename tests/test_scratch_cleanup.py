"""Test helpers leave no scratch folders behind in $TMPDIR."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

HERE = pathlib.Path(__file__).resolve().parent


def test_tokenizer_dir_is_removed_when_the_process_exits(tmp_path):
    """``_parity.tokenizer_dir()`` (the tiny tokenizer every trainer test and torchrun worker saves) is gone once the
    process that made it ends."""
    env = {
        **os.environ,
        "TMPDIR": str(tmp_path),
        "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]),
    }
    code = "from _parity import tokenizer_dir; d, _ = tokenizer_dir(); print(d, (d / 'tokenizer.json').is_file())"
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    made, saved = proc.stdout.split()[-2:]
    assert saved == "True" and pathlib.Path(made).parent == tmp_path, proc.stdout  # it was made, in $TMPDIR
    assert not pathlib.Path(made).exists(), f"{made} outlived its process"
    assert list(tmp_path.glob("fastgrpo-tok-*")) == []
