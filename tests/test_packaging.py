"""The wheel installs the kernels as ``fastgrpo_kernels`` and nothing as a top-level ``kernels``; it ships no test
files, and pytest-benchmark is needed only by the ``bench`` / ``test`` extras."""

from __future__ import annotations

import os
import pathlib
import re
import subprocess
import sys
import zipfile

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_import_names():
    import fastgrpo_kernels.linear_logprobs_fwd as fwd

    assert pathlib.Path(fwd.__file__).parent == ROOT / "kernels" / "fastgrpo_kernels"  # editable: the source folder
    # No side effects on import: trl (and the kernels) load only when used.
    code = "import sys, fastgrpo; print(sorted(m for m in ('trl', 'triton') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]", out


def test_pytest_benchmark_is_not_a_base_requirement():
    tomllib = pytest.importorskip("tomllib")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert not [d for d in project["dependencies"] if d.startswith(("pytest", "matplotlib"))], project["dependencies"]
    assert any(d.startswith("pytest-benchmark") for d in project["optional-dependencies"]["bench"])


@pytest.mark.slow
def test_wheel_layout(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(ROOT)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    (wheel,) = tmp_path.glob("fastgrpo-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names}
    assert "fastgrpo_kernels" in tops and "fastgrpo" in tops
    assert "kernels" not in tops and "benchmarks" not in tops
    assert "fastgrpo_kernels/linear_logprobs_fwd.py" in names
    assert "fastgrpo_kernels/linear_logprobs_bwd.py" in names
    # No test files: the benchmark CLI ships, its pytest-benchmark cases (fastgrpo_benchmarks/cases/) and results
    # do not.
    base = [n.rsplit("/", 1)[-1] for n in names]
    tests = [n for n, b in zip(names, base) if b.startswith("test_") or b == "conftest.py" or "/cases/" in n]
    assert not tests, tests
    assert "fastgrpo_benchmarks/__main__.py" in names and "fastgrpo_benchmarks/gpu/run.sh" in names
    assert not [n for n in names if "/results/" in n]
    metadata = next(n for n in names if n.endswith(".dist-info/METADATA"))
    requires = [
        line
        for line in zipfile.ZipFile(wheel).read(metadata).decode().splitlines()
        if line.startswith("Requires-Dist:")
    ]
    base_requires = [line for line in requires if "extra ==" not in line]
    assert base_requires and not [line for line in base_requires if "pytest" in line], base_requires
    _check_triton_left_to_torch(requires)
    assert any("pytest-benchmark" in line and 'extra == "bench"' in line for line in requires), requires
    # Installed from the wheel (not the source tree), the package and its kernels import and run.
    target = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)], check=True
    )
    code = (
        "import fastgrpo, fastgrpo_kernels.linear_logprobs_fwd as k, torch; "
        f"assert fastgrpo.__file__.startswith({str(target)!r}) and k.__file__.startswith({str(target)!r}); "
        "o = fastgrpo.linear_logprobs(torch.randn(3, 4), torch.randn(5, 4), torch.tensor([0, 4, -100]), "
        "backend='torch'); assert o.logp.shape == (3,); print('ok')"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = str(target)
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert out.stdout.strip() == "ok", out.stderr[-2000:]


def _check_triton_left_to_torch(requires: list[str]) -> None:
    """No base requirement names the ``triton`` distribution: torch brings its own Triton (``triton==<pin>`` on
    Linux, ``pytorch-triton-rocm`` on ROCm, which provides the same module under another name), and a ``triton``
    requirement would make pip install the NVIDIA build over ROCm's. Only the ``triton`` and ``test`` extras (CPU-only
    torch) ask for it, at the floor CI compiles with."""
    names = {}
    for line in requires:
        spec = line.removeprefix("Requires-Dist:").strip()
        name = spec.split(";")[0].strip()
        names.setdefault(re.split(r"[ <>=!~\[(]", name, maxsplit=1)[0].lower(), []).append(spec)
    assert "torch" in names and all("extra ==" not in s for s in names["torch"]), names.get("torch")
    triton = names.get("triton", [])
    assert triton and all(re.search(r'extra == "(triton|test)"', s) for s in triton), triton
    assert all("triton>=3.6" in s.replace(" ", "") for s in triton), triton
    assert not [n for n in names if "triton" in n and n != "triton"], names  # nor pytorch-triton(-rocm)
