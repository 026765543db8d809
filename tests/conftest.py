"""Test session setup: without a GPU, Triton kernels run under the interpreter.

TRITON_INTERPRET must be set before any ``@triton.jit`` decorator runs, so it is set here, before the tests import
fastgrpo's kernels. With the interpreter on, ``backend="auto"`` resolves to Triton on CPU; tests that want the
chunked torch path ask for ``backend="torch"``.

Markers: ``interpreter`` tests launch Triton kernels on CPU tensors and need the interpreter; ``gpu`` tests need a
CUDA device and the real compiler. On a GPU machine run both halves:
``TRITON_INTERPRET=1 python -m pytest -m "not gpu"`` and ``python -m pytest -m gpu``.
"""

from __future__ import annotations

import os
import shutil


def _has_cuda_driver() -> bool:
    # Cheap check that does not import torch (torch.cuda would be fine too, but keep conftest import-light).
    return shutil.which("nvidia-smi") is not None or os.path.exists("/dev/nvidiactl")


if not _has_cuda_driver():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

ON_GPU = torch.cuda.is_available()
INTERPRET = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


def pytest_collection_modifyitems(config, items):
    skip_gpu = pytest.mark.skip(
        reason="needs a CUDA device" if not ON_GPU else "GPU tests need the compiler: run without TRITON_INTERPRET"
    )
    skip_interp = pytest.mark.skip(reason="launches Triton kernels on CPU tensors: run with TRITON_INTERPRET=1")
    for item in items:
        if "gpu" in item.keywords and (not ON_GPU or INTERPRET):
            item.add_marker(skip_gpu)
        if "interpreter" in item.keywords and not INTERPRET:
            item.add_marker(skip_interp)
