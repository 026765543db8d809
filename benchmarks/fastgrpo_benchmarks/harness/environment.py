"""Provenance of a run: device, driver, library versions, date, commit."""

from __future__ import annotations

import datetime as dt
import importlib
import importlib.metadata
import json
import platform
import subprocess
from typing import Any

import torch

from fastgrpo import env

PACKAGES = (
    "fastgrpo",
    "torch",
    "triton",
    "trl",
    "transformers",
    "liger-kernel",
    "cut-cross-entropy",
    "pytest-benchmark",
)


def package_version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        pass
    try:  # importable without being installed (e.g. the source tree on the device machine)
        module = importlib.import_module(name.replace("-", "_"))
        return f"{getattr(module, '__version__', '?')} (not installed: source)"
    except ImportError:
        return "not installed"


def _run(cmd: list[str]) -> str:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=20, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def describe(device: str) -> dict[str, Any]:
    """Everything a results file must carry to be trusted later."""
    info: dict[str, Any] = {
        "date_utc": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "device_type": device,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu": cpu_name(),
        "cpu_threads": torch.get_num_threads(),
        "versions": {name: package_version(name) for name in PACKAGES},
        "torch_cuda": torch.version.cuda,
        "git_commit": env.get("FASTGRPO_BENCH_COMMIT") or _run(["git", "rev-parse", "--short", "HEAD"]),
        "git_dirty": bool(_run(["git", "status", "--porcelain", "--untracked-files=no"])),
    }
    info["launch_configs"] = launch_configs()
    if device == "cuda":
        props = torch.cuda.get_device_properties(0)
        info["device_name"] = props.name
        info["device_memory_gib"] = round(props.total_memory / 2**30, 1)
        info["multiprocessors"] = props.multi_processor_count
        info["driver"] = _run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"]) or "unknown"
    else:
        info["device_name"] = info["cpu"]
        info["driver"] = "n/a (CPU)"
    return info


def launch_configs() -> dict[str, Any]:
    """Which launch configs the kernels ran with: the tuned tables present (with their provenance) and autotuning."""
    from fastgrpo import tuning
    from fastgrpo_kernels import configs

    tables = {}
    for path in sorted(configs.TUNED_DIR.glob("*.json")):
        try:
            data = json.loads(path.read_text())
            tables[path.stem] = {k: data.get(k) for k in ("device", "date_utc", "git_commit")}
        except (OSError, ValueError) as err:
            tables[path.stem] = {"error": str(err)}
    return {"tuned_tables": tables, "autotune": tuning.autotune_enabled()}
