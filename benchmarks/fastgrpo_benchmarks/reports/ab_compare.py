"""Interleaved A/B timing of two implementations at one shape: steadier ratios on a shared, noisy machine.

    python -m fastgrpo_benchmarks.reports.ab_compare --impl fastgrpo --impl trl_chunked \
        --tokens 512 --hidden 896 --rounds 7

The suite times each case in its own block, so a neighbour's load that comes and goes between two blocks moves their
ratio. Here the calls alternate (A B A B ...) on the same inputs, after one warm-up call each, so both see the same
load; the ratio of medians and of minimums are printed with the peak extra memory of each (``memory.py``). It is a
complement to the suite for CPU claims (fastgrpo's torch path against trl's CPU fallback), not a replacement.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from typing import Any

import torch

from ..harness.inputs import make_input_set, make_weight
from ..harness.memory import measure_memory
from ..harness.metrics import ratio
from ..harness.suites import MODES, OpShape
from ..harness.timing import time_once
from ..peers import build


def compare(impls: list[str], shape: OpShape, mode: str, rounds: int, device: str) -> dict[str, Any]:
    weight = make_weight(shape, torch.float32 if device == "cpu" else torch.bfloat16, device)
    s = make_input_set(shape, weight, mode, seed=0)
    runners = {name: build(name, mode, device) for name in impls}
    times: dict[str, list[float]] = {name: [] for name in impls}

    def call(name: str) -> float:
        s.clear_grads()
        return time_once(lambda: runners[name](s), device)

    for name in impls:  # warm-up
        call(name)
    for _ in range(rounds):
        for name in impls:
            times[name].append(call(name))
    memory = {}
    for name in impls:
        s.clear_grads()
        memory[name] = measure_memory(lambda name=name: runners[name](s), device)[0].peak_extra_bytes
    a, b = impls
    med = {n: statistics.median(t) for n, t in times.items()}
    best = {n: min(t) for n, t in times.items()}
    return {
        "shape": f"N={shape.tokens} H={shape.hidden} V={shape.vocab}",
        "mode": mode,
        "median_s": med,
        "min_s": best,
        "peak_extra_mib": {n: m / 2**20 for n, m in memory.items()},
        f"speedup_{a}_vs_{b}_median": ratio(med[b], med[a]),
        f"speedup_{a}_vs_{b}_min": ratio(best[b], best[a]),
        f"memory_ratio_{a}_vs_{b}": ratio(memory[b], memory[a]),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--impl", action="append", default=None, help="two implementations (default fastgrpo, trl)")
    parser.add_argument("--tokens", type=int, default=512)
    parser.add_argument("--hidden", type=int, default=896)
    parser.add_argument("--vocab", type=int, default=151936)
    parser.add_argument("--mode", action="append", default=None, choices=MODES)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args(argv)
    impls = args.impl or ["fastgrpo", "trl_chunked"]
    if len(impls) != 2:
        parser.error("give exactly two --impl")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    shape = OpShape("ab", args.tokens, args.hidden, vocab=args.vocab, seq_len=min(args.tokens, 1024))
    for mode in args.mode or ["fwd", "fwd_bwd", "fwd_bwd_frozen"]:
        print(json.dumps(compare(impls, shape, mode, args.rounds, device)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
