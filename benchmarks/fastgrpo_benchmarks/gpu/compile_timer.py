"""Triton compile time of one lease stage, and whether each compile hit the on-disk cache.

Wraps ``triton.compiler.compile`` (what every ``@triton.jit`` kernel calls on a cache miss in its in-memory table):
its wall time is the stage's compile time, and a call that leaves no new entry in ``TRITON_CACHE_DIR`` was served
from the disk cache (a hit: e.g. a carried cache compiled for the same GPU, Triton and kernel sources). Under the
Triton interpreter nothing is compiled and every figure stays 0.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any


def cache_dir() -> Path:
    return Path(os.environ.get("TRITON_CACHE_DIR") or Path.home() / ".triton" / "cache")


def cache_entries(path: Path | None = None) -> int:
    path = path or cache_dir()
    try:
        return sum(1 for _ in path.iterdir())
    except OSError:
        return 0


class CompileTimer:
    def __init__(self) -> None:
        self.seconds = 0.0
        self.compiles = 0
        self.hits = 0
        self.misses = 0
        self.installed = False

    def install(self) -> CompileTimer:
        try:
            import triton.compiler as compiler
        except ImportError:
            return self
        original = compiler.compile

        def timed_compile(*args: Any, **kwargs: Any) -> Any:
            before = cache_entries()
            start = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                self.seconds += time.perf_counter() - start
                self.compiles += 1
                if cache_entries() > before:
                    self.misses += 1
                else:
                    self.hits += 1

        compiler.compile = timed_compile  # JITFunction binds triton.compiler.compile when it first runs
        self.installed = True
        return self

    def summary(self) -> dict[str, Any]:
        return {
            "compile_s": round(self.seconds, 3),
            "compiles": self.compiles,
            "cache_hits": self.hits,
            "cache_misses": self.misses,
            "cache_dir": str(cache_dir()),
            "hooked": self.installed,
        }
