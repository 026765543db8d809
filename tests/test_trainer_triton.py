"""FastGRPOTrainer on the Triton kernels (the interpreter on CPU, the real kernels on a GPU) matches stock trl."""

from __future__ import annotations

from pathlib import Path

import pytest
from _parity import Case, compare, fastgrpo_only, run_case

pytestmark = [pytest.mark.slow, pytest.mark.interpreter]


def test_triton_backend_parity_with_stock_trl(tmp_path: Path) -> None:
    import torch
    from trl import GRPOTrainer

    from fastgrpo import FastGRPOTrainer
    from fastgrpo.api import resolve_backend

    try:
        resolve_backend("triton", torch.device("cpu"))
    except ValueError as err:  # no GPU and no TRITON_INTERPRET (conftest sets it on CPU machines)
        pytest.skip(str(err))
    case = Case("triton", config=dict(loss_type="grpo", beta=0.04, num_iterations=2, max_completion_length=6))
    stock = run_case(GRPOTrainer, case, tmp_path)
    with fastgrpo_only("triton") as calls:
        fast = run_case(FastGRPOTrainer, case, tmp_path, fastgrpo_backend="triton")
    assert calls["linear_logprobs"] > 0
    assert fast.loss_fallback == []
    compare(stock, fast)
