"""Lease stage 2: the Triton kernels with the shipped launch configs at real sizes (V=151936, H=896 and 3584, bf16)
against float64, on a subsample of a batch (N=2048 tokens: the float64 reference materializes [N, V] logits).

Per hidden size and mode (forward; backward with a trainable head; with a frozen head; the whole GRPO loss), the
errors of ``harness.accuracy.measure_errors`` (log-probs in nats, or the loss's relative error; gradients relative to
their largest element) for fastgrpo and for eager torch on the same bf16 inputs (materialized bf16 logits, what trl
did up to 1.13). Pass: fastgrpo no worse than eager torch, or under a floor (1e-3 value, 1e-2 gradients) -- the
rule of the GPU tests (tests/test_gpu_linear_logprobs.py).
"""

from __future__ import annotations

import math
from typing import Any

from ..harness.suites import QWEN_VOCAB, OpShape

MODES = ("fwd", "fwd_bwd", "fwd_bwd_frozen", "grpo")
VALUE_FLOOR, GRAD_FLOOR, GRAD_SLACK = 1e-3, 1e-2, 1.5


def shapes(dry_run: bool) -> list[OpShape]:
    if dry_run:
        return [OpShape(f"dry-n32-h{h}-v512", 32, h, vocab=512, seq_len=16) for h in (16, 24)]
    return [OpShape(f"real-n2048-h{h}", 2048, h, vocab=QWEN_VOCAB, seq_len=1024) for h in (896, 3584)]


def _bound(eager: float, floor: float, slack: float = 1.0) -> float:
    return floor if math.isnan(eager) else max(slack * eager, floor)


def _le(value: float, bound: float) -> bool:
    return not math.isnan(value) and value <= bound


def run(ctx: Any) -> dict[str, Any]:
    import torch

    from ..harness.accuracy import measure_errors
    from ..peers import eager, fastgrpo

    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16
    checks: list[dict[str, Any]] = []
    for shape in shapes(ctx.dry_run):
        for mode in MODES:
            base = {"hidden": shape.hidden, "tokens": shape.tokens, "vocab": shape.vocab, "dtype": "bfloat16",
                    "mode": mode}  # fmt: skip
            e_val, e_grad = measure_errors(eager.build(mode, device), mode, shape, dtype, device)
            f_val, f_grad = measure_errors(fastgrpo.build(mode, device, backend="triton"), mode, shape, dtype, device)
            limit_value = _bound(e_val, VALUE_FLOOR)
            limit_grad = None if mode == "fwd" else _bound(e_grad, GRAD_FLOOR, GRAD_SLACK)
            passed = _le(f_val, limit_value) and (limit_grad is None or _le(f_grad, limit_grad))
            checks.append({**base, "impl": "eager", "err_value": e_val, "err_grad": e_grad, "passed": None})
            checks.append({**base, "impl": "fastgrpo", "err_value": f_val, "err_grad": f_grad,
                           "limit_value": limit_value, "limit_grad": limit_grad, "passed": passed})  # fmt: skip
            print(f"[correctness] H={shape.hidden} {mode}: fastgrpo {f_val:.2e} / {f_grad:.2e}, eager {e_val:.2e} / "
                  f"{e_grad:.2e}: {'pass' if passed else 'FAIL'}", flush=True)  # fmt: skip
            ctx.flush({"checks": checks})
            if device == "cuda":
                torch.cuda.empty_cache()
    ours = [c for c in checks if c["impl"] == "fastgrpo"]
    from ..harness.environment import launch_configs

    return {"checks": checks, "passed": all(c["passed"] for c in ours), "backend": "triton",
            "launch_configs": launch_configs()}  # fmt: skip
