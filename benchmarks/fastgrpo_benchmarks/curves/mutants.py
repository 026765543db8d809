"""Deliberately broken GRPO losses, in a scratch copy of fastgrpo (never in the source tree), to test the check.

Each mutant is a list of exact text replacements in the copy's ``fastgrpo/grpo`` files: the torch-backend math that
``FastGRPOTrainer(fastgrpo_backend="torch")`` runs on CPU (``grpo_loss`` -> ``autograd.grpo_rows`` ->
``torch_math.grpo_rows_torch``, then ``finalize.finalize_loss``). A replacement whose text is not found exactly the
expected number of times raises, so a refactor of those files makes this fail loudly rather than test nothing.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

# Set in the re-run (so it does not copy again) and read only here: internal, not user settings.
ACTIVE_ENV = "BENCH_CURVES_MUTANT"
COPY_ENV = "BENCH_CURVES_MUTANT_COPY"

# name -> [(file under fastgrpo/grpo, old text, new text, expected count)]
MUTANTS: dict[str, list[tuple[str, str, str, int]]] = {
    # KL term x2: every use of beta in the KL block (loss value and both gradient branches).
    "kl-x2": [("torch_math.py", "opts.beta", "(2 * opts.beta)", 5)],
    # dapo normaliser x2 (num_items_in_batch-normalised losses: dapo, cispo, vespo).
    "dapo-norm-x2": [
        ("finalize.py", "normalizer = normalizer * gas /", "normalizer = 2 * normalizer * gas /", 1),
    ],
    # Clip on the wrong side: the PPO objective takes the max of the clipped and unclipped terms instead of the
    # min (the optimistic bound), with the matching gradient weights.
    "clip-wrong-side": [
        (
            "torch_math.py",
            "policy = -torch.minimum(coef_1d * adv, coef_2 * adv)",
            "policy = -torch.maximum(coef_1d * adv, coef_2 * adv)",
            1,
        ),
        (
            "torch_math.py",
            "wa, wb = _min_weights(coef_1d * adv, coef_2 * adv)",
            "wb, wa = _min_weights(coef_1d * adv, coef_2 * adv)",
            1,
        ),
    ],
}


def make_scratch_copy(name: str, dest: Path) -> Path:
    """Copy the imported fastgrpo package to ``dest/fastgrpo`` and apply mutant ``name``; returns ``dest``."""
    import fastgrpo

    src = Path(fastgrpo.__file__).resolve().parent
    shutil.copytree(src, dest / "fastgrpo", ignore=shutil.ignore_patterns("__pycache__"))
    for rel, old, new, count in MUTANTS[name]:
        path = dest / "fastgrpo" / "grpo" / rel
        text = path.read_text()
        found = text.count(old)
        if found != count:
            raise RuntimeError(f"mutant {name}: expected {count} x {old!r} in {path.name}, found {found}")
        path.write_text(text.replace(old, new))
    return dest


def rerun_in_scratch_copy(name: str, argv: list[str]) -> int:
    """Run ``python -m fastgrpo_benchmarks.curves argv`` with the mutated copy first on the import path."""
    dest = make_scratch_copy(name, Path(tempfile.mkdtemp(prefix=f"fastgrpo-mutant-{name}-")))
    # The copy goes first on the path, and the run starts in it: `python -m` puts the working directory before
    # PYTHONPATH, and the repository root holds the real fastgrpo.
    root = Path(__file__).resolve().parents[3]
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(dest), *filter(None, [env.get("PYTHONPATH")]), str(root)])
    env[ACTIVE_ENV] = name
    env[COPY_ENV] = str(dest / "fastgrpo")
    print(f"curves: mutant {name}: scratch copy {dest / 'fastgrpo'}", flush=True)
    return subprocess.call([sys.executable, "-m", f"{__package__}", *argv], env=env, cwd=str(dest))


def check_imported_copy() -> None:
    """In the re-run: fail unless ``fastgrpo`` was imported from the scratch copy (else the mutant tests nothing)."""
    import fastgrpo

    expected = Path(os.environ[COPY_ENV]).resolve()
    actual = Path(fastgrpo.__file__).resolve().parent
    if actual != expected:
        raise RuntimeError(f"mutant run imported fastgrpo from {actual}, not from the scratch copy {expected}")
