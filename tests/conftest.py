"""Test session setup: without a GPU, Triton kernels run under the interpreter.

TRITON_INTERPRET must be set before any ``@triton.jit`` decorator runs, so it is set here, before the tests import
fastgrpo's kernels. With the interpreter on, ``backend="auto"`` resolves to Triton on CPU; tests that want the
chunked torch path ask for ``backend="torch"``.
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


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


def pytest_collection_modifyitems(config, items):
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords and not ON_GPU:
            item.add_marker(skip_gpu)
