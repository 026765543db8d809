"""The matmul throughput every row's TFLOP/s is compared with, measured in the same run.

GPU: a bf16 ``torch.mm`` of 8192^3 (the landscape notes' H100 reading: about 800 TFLOP/s), median of 20 timed with
events. CPU: the suite's dtype (fp32) at 2048^3, since the CPU rows run in fp32, best of 5 (a shared CPU's median
moves with its neighbours' load; the best is the ceiling). The suite measures it before the first case and again
after the last, and keeps the higher reading.
"""

from __future__ import annotations

import statistics

import torch

from .metrics import matmul_flops, tflops
from .timing import time_once


def measure_matmul_tflops(device: str, dtype: torch.dtype, size: int | None = None, repeats: int = 5) -> float:
    size = size or (8192 if device == "cuda" else 2048)
    gen = torch.Generator(device=device).manual_seed(0)
    a = torch.randn(size, size, device=device, dtype=dtype, generator=gen)
    b = torch.randn(size, size, device=device, dtype=dtype, generator=gen)
    out = torch.empty(size, size, device=device, dtype=dtype)
    for _ in range(2):
        torch.mm(a, b, out=out)
    if device == "cuda":
        times = []
        for _ in range(repeats * 4):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            torch.mm(a, b, out=out)
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1000.0)
    else:
        times = [time_once(lambda: torch.mm(a, b, out=out), device) for _ in range(repeats)]
        return tflops(matmul_flops(size, size, size), min(times))
    return tflops(matmul_flops(size, size, size), statistics.median(times))
