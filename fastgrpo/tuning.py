"""Opt-in autotuning of the lm_head kernels' launch configs: timing, choices, and their cache file.

By default every launch uses a fixed config (``fastgrpo.launch_config``). With autotuning on, the first launch of
each shape class times every candidate config on the real inputs (outputs are fresh, inputs untouched, so re-running
is safe), keeps the fastest for the rest of the process, and logs the choice once::

    FASTGRPO_AUTOTUNE=1 python train.py            # or: fastgrpo.tuning.enable_autotune()
    FASTGRPO_AUTOTUNE_CACHE=tune.json python ...   # also reuse choices across runs

A shape class is (kernel, operand precision, H, V, N rounded up to a power of two, device name). Tuning costs a few
seconds per class. The cache file records a hash of the kernel sources (and the triton version): a file written for
other kernels is ignored and rewritten, never applied. Results are bit-identical run to run for a fixed choice;
different configs sum in different orders, so use the cache file (or none of this) when bit-identical results
across processes matter.

The state lives in an :class:`Autotuner` owned by the current ``LaunchConfigResolver``; the functions below act on
that one.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import pathlib
import statistics
import time
from collections.abc import Callable, Iterable

import torch

from fastgrpo_kernels import configs

from . import env
from ._log import log_once, logger

# Files whose code the kernels run: everything in the kernels package but the config data, which changes which
# config is chosen, not what a config computes.
_CONFIG_DATA = {"configs.py", "arch_configs.py"}


def kernel_sources() -> list[pathlib.Path]:
    root = pathlib.Path(configs.__file__).resolve().parent
    return sorted(p for p in root.glob("*.py") if p.name not in _CONFIG_DATA)


def kernel_source_hash(paths: Iterable[os.PathLike | str] | None = None) -> str:
    """Hex digest over the kernel source files (default: ``kernel_sources()``) and the triton version."""
    import triton

    digest = hashlib.sha256(f"triton {triton.__version__}\n".encode())
    for path in kernel_sources() if paths is None else paths:
        path = pathlib.Path(path)
        digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


@functools.cache
def _installed_source_hash() -> str:
    return kernel_source_hash()


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


def capturing(device: torch.device) -> bool:
    """Whether a CUDA graph is being captured on the current stream, where timing would break the capture. The
    launchers run under ``torch.cuda.device(tensor's device)``, so the current stream is the launch's."""
    if device.type == "cuda" and torch.cuda.is_current_stream_capturing():
        log_once("autotune-capture", "fastgrpo: not autotuning inside CUDA graph capture; using the fixed config")
        return True
    return False


def device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else device.type


class Autotuner:
    """Autotuning state: on/off, the cache file, the choices made. ``enabled`` None follows $FASTGRPO_AUTOTUNE;
    ``cache_path`` None follows $FASTGRPO_AUTOTUNE_CACHE; ``source_hash`` None: the installed kernels'."""

    def __init__(
        self,
        enabled: bool | None = None,
        cache_path: str | os.PathLike | None = None,
        *,
        source_hash: str | None = None,
    ) -> None:
        self._enabled = enabled
        self._cache_path = None if cache_path is None else os.fspath(cache_path)
        self._source_hash = source_hash
        self._choices: dict[str, object] = {}
        self._loaded: set[str] = set()

    @property
    def enabled(self) -> bool:
        return env.flag("FASTGRPO_AUTOTUNE") if self._enabled is None else self._enabled

    @property
    def source_hash(self) -> str:
        return self._source_hash or _installed_source_hash()

    def enable(self, cache_path: str | os.PathLike | None = None) -> None:
        self._enabled = True
        self._cache_path = None if cache_path is None else os.fspath(cache_path)

    def disable(self) -> None:
        """Back to the fixed configs (choices already made are kept for when autotuning is enabled again)."""
        self._enabled = False

    def clear(self) -> None:
        """Forget the choices (and which cache files were read)."""
        self._choices.clear()
        self._loaded.clear()

    def chosen(self) -> dict[str, object]:
        return dict(self._choices)

    @staticmethod
    def key(kind: str, precision: str, n: int, h: int, vocab: int, device: torch.device) -> str:
        n_class = 1 << max(n - 1, 0).bit_length()
        return f"{kind}|{precision}|n<={n_class}|h={h}|v={vocab}|{device_name(device)}"

    def choice(self, key: str):
        """The config chosen for a shape class (this process, or the cache file), else None."""
        self._load()
        return self._choices.get(key)

    def tune(self, key: str, run: Callable[[object], object], pool: list, device: torch.device):
        """Time every config in ``pool`` (the fixed config first) with ``run(config)``; keep and return the fastest.
        A candidate that fails is skipped (it does not fit this device); the fixed config failing is a bug: raised."""
        results: list[tuple[float, int, object]] = []
        failures = []
        for i, cfg in enumerate(dict.fromkeys(pool)):
            try:
                ms = measure_ms(lambda cfg=cfg: run(cfg), device)
            except Exception as err:  # shared memory, registers
                if i == 0:
                    raise
                failures.append(f"{cfg.label()}: {type(err).__name__}")
                continue
            results.append((ms, i, cfg))
        ms, _, best = min(results, key=lambda r: (r[0], r[1]))  # ties: the earlier (fixed config first)
        log_once(
            f"autotune|{key}",
            f"fastgrpo: autotuned {key}: {best.label()} {ms:.3f} ms (fixed config {results[0][0]:.3f} ms, "
            f"{len(results)} timed{', ' + str(len(failures)) + ' failed' if failures else ''})",
            logging.INFO,
        )
        if failures:
            logger.debug("fastgrpo: autotune candidates that failed for %s: %s", key, "; ".join(failures))
        self.record(key, best)
        return best

    def record(self, key: str, config) -> None:
        """Keep ``config`` as the choice for a shape class (and in the cache file, if any)."""
        self._choices[key] = config
        self._save()

    def _path(self) -> str | None:
        return self._cache_path or env.get("FASTGRPO_AUTOTUNE_CACHE") or None

    def _read(self, path: str) -> dict:
        """The cache file's choices when it was written for these kernel sources, else {} (said once)."""
        if not os.path.isfile(path):
            return {}
        with open(path) as f:
            stored = json.load(f)
        if not isinstance(stored, dict) or stored.get("kernel_sources") != self.source_hash:
            log_once(
                f"autotune-stale|{path}",
                f"fastgrpo: ignoring autotune cache {path}: written for other kernel sources or triton "
                f"(has {stored.get('kernel_sources') if isinstance(stored, dict) else None!r}, "
                f"these are {self.source_hash!r}); tuning again",
                logging.INFO,
            )
            return {}
        return stored.get("choices", {})

    def _load(self) -> None:
        path = self._path()
        if path is None or path in self._loaded:
            return
        self._loaded.add(path)
        for key, fields in self._read(path).items():
            self._choices.setdefault(key, configs.CONFIG_CLASSES[key.split("|")[0]].from_dict(fields))

    def _save(self) -> None:
        path = self._path()
        if path is None:
            return
        choices = self._read(path)  # other ranks' choices for the same kernels
        choices.update({key: cfg.to_dict() for key, cfg in self._choices.items()})
        tmp = f"{path}.{os.getpid()}.tmp"  # ranks may share the file: replace it whole, never half-written
        with open(tmp, "w") as f:
            json.dump({"kernel_sources": self.source_hash, "choices": choices}, f, indent=1, sort_keys=True)
        os.replace(tmp, path)


def _autotuner() -> Autotuner:
    from .launch_config import current

    return current().autotuner


def enable_autotune(cache_path: str | os.PathLike | None = None) -> None:
    """Autotune launch configs from now on in this process; ``cache_path`` (JSON) keeps choices across runs."""
    _autotuner().enable(cache_path)


def disable_autotune() -> None:
    """Back to the fixed configs (choices already made are kept for when autotuning is enabled again)."""
    _autotuner().disable()


def autotune_enabled() -> bool:
    return _autotuner().enabled


def clear_choices() -> None:
    """Forget this process's autotuned choices."""
    _autotuner().clear()


def chosen() -> dict[str, object]:
    """The autotuned choice per shape-class key so far."""
    return _autotuner().chosen()
