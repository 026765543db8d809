"""No folder of the checkout shadows an installed package, whatever the working directory.

``python -m ...``, ``python -c``, a REPL or a notebook started in the checkout put it first on ``sys.path``. Its
top-level ``kernels/``, ``benchmarks/``, ``tools/`` and ``tests/`` folders have no ``__init__.py``: they are at most
PEP 420 namespace portions there, and a regular package anywhere on the path wins over those. transformers >= 5.25
imports Hugging Face's ``kernels`` whenever trl's trainers load, so a checkout ``kernels`` package broke every import.
"""

from __future__ import annotations

import importlib.metadata
import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
# Names that must never be importable from the checkout root, installed today or not (CI may lack some of them).
DENYLIST = ("kernels", "tools", "tests", "benchmarks")
OWN = {"fastgrpo"}  # the one top-level package the checkout root offers


def checkout_top_level_names(root: pathlib.Path) -> set[str]:
    """Every regular top-level import name the checkout root offers: folders with ``__init__.py``, and modules."""
    names = set()
    for entry in root.iterdir():
        if entry.name.startswith("."):
            continue
        if entry.is_dir() and (entry / "__init__.py").is_file():
            names.add(entry.name)
        elif entry.is_file() and entry.suffix in (".py", ".pyc", ".so", ".pyd"):
            names.add(entry.name.split(".")[0])
    return names


def installed_top_level_names() -> dict[str, list[str]]:
    """Top-level import name -> the distributions (other than fastgrpo) that install it."""
    out: dict[str, list[str]] = {}
    for name, dists in importlib.metadata.packages_distributions().items():
        others = [d for d in dists if d.lower() != "fastgrpo"]
        if others:
            out[name] = others
    return out


def test_no_checkout_name_shadows_an_installed_or_denylisted_package():
    names = checkout_top_level_names(ROOT)
    installed = installed_top_level_names()
    clashes = {n: installed[n] for n in names if n in installed}
    assert not clashes, f"checkout names that shadow installed distributions: {clashes}"
    denied = sorted(names & set(DENYLIST))
    assert not denied, f"checkout folders importable as {denied}: remove their __init__.py"
    assert names == OWN, f"unexpected top-level import names in the checkout: {sorted(names - OWN)}"


def test_the_check_sees_a_shadowing_folder(tmp_path):
    """The name check above is not vacuous: a folder with __init__.py named like a denylisted package is found."""
    (tmp_path / "kernels").mkdir()
    (tmp_path / "kernels" / "__init__.py").write_text("")
    (tmp_path / "tools").mkdir()  # a namespace portion only: not a name
    (tmp_path / "torch.py").write_text("")
    assert checkout_top_level_names(tmp_path) == {"kernels", "torch"}
    assert "torch" in installed_top_level_names()


def _run_in_checkout(code: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONSAFEPATH")}
    env.update(HF_HUB_OFFLINE="1", HF_HUB_DISABLE_TELEMETRY="1")
    # `python -c` puts the working directory (the checkout root) first on sys.path, as a user's shell there does.
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


def test_trl_and_fastgrpo_import_from_the_checkout_root():
    try:
        dist = importlib.metadata.distribution("kernels")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("Hugging Face's kernels is not installed here (see the test below for that case)")
    code = (
        "import fastgrpo, kernels; from trl import GRPOTrainer; fastgrpo.patch_trl(); fastgrpo.unpatch_trl(); "
        "print(kernels.__file__)"
    )
    proc = _run_in_checkout(code)
    assert proc.returncode == 0, proc.stderr[-3000:]
    kernels_file = pathlib.Path(proc.stdout.strip().splitlines()[-1]).resolve()
    expected = pathlib.Path(dist.locate_file("kernels/__init__.py")).resolve()
    # The distribution's own file (CI's venv may live inside the checkout, so no "not under ROOT" check).
    assert kernels_file == expected, f"`import kernels` in the checkout found {kernels_file}, not {expected}"
    assert kernels_file.parent != ROOT / "kernels"


def test_transformers_sees_no_kernels_package_in_the_checkout_when_none_is_installed():
    """Without Hugging Face's kernels, the checkout's kernels/ folder must not look like it to transformers."""
    try:
        importlib.metadata.distribution("kernels")
    except importlib.metadata.PackageNotFoundError:
        pass
    else:
        pytest.skip("Hugging Face's kernels is installed here (the test above covers that case)")
    code = (
        "import kernels, fastgrpo; from trl import GRPOTrainer\n"
        "from transformers.utils.import_utils import is_kernels_available\n"
        "print(getattr(kernels, '__file__', None), is_kernels_available())"
    )
    proc = _run_in_checkout(code)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.split()[-2:] == ["None", "False"], proc.stdout
