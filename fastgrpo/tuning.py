"""Opt-in autotuning of the lm_head kernels' launch configs, and the config resolution the launchers use.

By default every launch uses a fixed config: the tuned table for the device's architecture when one ships
(``fastgrpo_kernels/tuned/<arch>.json``), else the built-in default. With autotuning on, the first launch of each
shape class times every candidate config on the real inputs (outputs are fresh, inputs untouched, so re-running is
safe), keeps the fastest for the rest of the process, and logs the choice once::

    FASTGRPO_AUTOTUNE=1 python train.py            # or: fastgrpo.tuning.enable_autotune()
    FASTGRPO_AUTOTUNE_CACHE=tune.json python ...   # also reuse choices across runs

A shape class is (kernel, operand dtype, H, V, N rounded up to a power of two, device). Tuning costs a few seconds
per class. Results are bit-identical run to run for a fixed choice; different configs sum in different orders, so
use the cache file (or none of this) when bit-identical results across processes matter.
"""

from __future__ import annotations

import json
import logging
import os
import statistics
import time
from collections.abc import Callable
from typing import TypeVar

import torch

from fastgrpo_kernels import configs
from fastgrpo_kernels.configs import KernelConfig, Kind

from . import env
from ._log import log_once, logger

T = TypeVar("T")

_enabled: bool | None = None  # None: follow FASTGRPO_AUTOTUNE
_cache_path: str | None = None
_choices: dict[str, KernelConfig] = {}
_loaded_paths: set[str] = set()


def enable_autotune(cache_path: str | os.PathLike | None = None) -> None:
    """Autotune launch configs from now on in this process; ``cache_path`` (JSON) keeps choices across runs."""
    global _enabled, _cache_path
    _enabled = True
    _cache_path = None if cache_path is None else os.fspath(cache_path)


def disable_autotune() -> None:
    """Back to the fixed configs (choices already made are kept for when autotuning is enabled again)."""
    global _enabled
    _enabled = False


def autotune_enabled() -> bool:
    if _enabled is not None:
        return _enabled
    return env.flag("FASTGRPO_AUTOTUNE")


def clear_choices() -> None:
    """Forget this process's autotuned choices (tests; or after changing kernels)."""
    _choices.clear()
    _loaded_paths.clear()


def chosen() -> dict[str, KernelConfig]:
    """The autotuned choice per shape-class key so far."""
    return dict(_choices)


def device_arch(device: torch.device) -> str | None:
    """``"sm90"`` for an H100/H200, None off CUDA: the tuned-table name for the device."""
    if device.type != "cuda" or not torch.cuda.is_available():
        return None
    major, minor = torch.cuda.get_device_capability(device)
    return f"sm{major}{minor}"


def shape_key(kind: Kind, dtype: str, n: int, h: int, vocab: int, device: torch.device) -> str:
    n_class = 1 << max(n - 1, 0).bit_length()
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else device.type
    return f"{kind}|{dtype}|n<={n_class}|h={h}|v={vocab}|{name}"


def launch(
    kind: Kind,
    run: Callable[[KernelConfig], T],
    *,
    fp32_operands: bool,
    dtype: str,
    n: int,
    h: int,
    vocab: int,
    device: torch.device,
) -> T:
    """``run(config)`` with the config for this launch: fixed (table, default, overrides) or autotuned."""
    arch = device_arch(device)
    fixed = configs.get_config(kind, fp32_operands, n=n, h=h, arch=arch, dtype=dtype)
    if not autotune_enabled() or n == 0 or _capturing(device):
        return run(fixed)
    key = shape_key(kind, dtype, n, h, vocab, device)
    _load_cache()
    cfg = _choices.get(key)
    if cfg is None:
        cfg = _tune(key, run, [fixed] + configs.candidates(kind, fp32_operands), device)
        _choices[key] = cfg
        _save_cache()
    return run(configs.apply_overrides(cfg))


def measure_ms(fn: Callable[[], object], device: torch.device) -> float:
    """Median time of ``fn`` in milliseconds: CUDA events through ``triton.testing.do_bench`` on a GPU, the host
    clock elsewhere (the interpreter: only useful to exercise the mechanism)."""
    if device.type == "cuda":
        import triton.testing

        return float(triton.testing.do_bench(fn, warmup=10, rep=40, return_mode="median"))
    fn()
    times = []
    for _ in range(3):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def _tune(
    key: str, run: Callable[[KernelConfig], object], pool: list[KernelConfig], device: torch.device
) -> KernelConfig:
    results: list[tuple[float, int, KernelConfig]] = []
    failures = []
    for i, cfg in enumerate(dict.fromkeys(pool)):
        try:
            ms = measure_ms(lambda cfg=cfg: run(cfg), device)
        except Exception as err:  # a candidate that does not fit this device (shared memory, registers)
            if i == 0:  # the fixed config must work: that is a bug, not a tuning outcome
                raise
            failures.append(f"{cfg.label()}: {type(err).__name__}")
            continue
        results.append((ms, i, cfg))
    ms, _, best = min(results, key=lambda r: (r[0], r[1]))  # ties: the earlier (fixed config first)
    fixed_ms = results[0][0]
    log_once(
        f"autotune|{key}",
        f"fastgrpo: autotuned {key}: {best.label()} {ms:.3f} ms (fixed config {fixed_ms:.3f} ms, "
        f"{len(results)} timed{', ' + str(len(failures)) + ' failed' if failures else ''})",
        logging.INFO,
    )
    if failures:
        logger.debug("fastgrpo: autotune candidates that failed for %s: %s", key, "; ".join(failures))
    return best


def _capturing(device: torch.device) -> bool:
    """Timing inside a CUDA graph capture would break it: use the fixed config there (and say so once)."""
    if device.type == "cuda" and torch.cuda.is_current_stream_capturing():
        log_once("autotune-capture", "fastgrpo: not autotuning inside CUDA graph capture; using the fixed config")
        return True
    return False


def _path() -> str | None:
    return _cache_path or env.get("FASTGRPO_AUTOTUNE_CACHE") or None


def _load_cache() -> None:
    path = _path()
    if path is None or path in _loaded_paths:
        return
    _loaded_paths.add(path)
    if not os.path.isfile(path):
        return
    with open(path) as f:
        stored = json.load(f)
    for key, fields in stored.items():
        _choices.setdefault(key, KernelConfig.from_dict(fields))


def _save_cache() -> None:
    path = _path()
    if path is None:
        return
    stored = {}
    if os.path.isfile(path):
        with open(path) as f:
            stored = json.load(f)
    stored.update({key: cfg.to_dict() for key, cfg in _choices.items()})
    tmp = f"{path}.{os.getpid()}.tmp"  # ranks may share the file: replace it whole, never half-written
    with open(tmp, "w") as f:
        json.dump(stored, f, indent=1, sort_keys=True)
    os.replace(tmp, path)
