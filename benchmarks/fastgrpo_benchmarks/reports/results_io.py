"""One reader for every kind of results folder or file, into the suite's payload shape
(``{"environment", "matmul_tflops", "rows"}``):

- a suite run's ``results.json`` (``python -m benchmarks``), or the folder holding it;
- a GPU lease's ``$OUT`` (``benchmarks/fastgrpo_benchmarks/gpu/lease.py``: ``NN-<stage>.json`` files), or one of its
stage files: the
  op rows of the ``ops`` stage and the trainer rows of the ``trainer`` stage, the environment from ``provenance``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def _lease_stage(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if str(data.get("schema", "")).startswith("fastgrpo-lease/") else None


def is_lease(path: Path) -> bool:
    return (path.is_dir() and any(path.glob("[0-9][0-9]-ops.json"))) or (
        path.is_file() and _lease_stage(path) is not None
    )


def load_lease(folder: Path) -> dict[str, Any]:
    stages = {}
    for p in sorted(folder.glob("[0-9][0-9]-*.json")):
        record = _lease_stage(p)
        if record is not None:
            stages[record["stage"]] = record
    ops = stages.get("ops", {}).get("result", {})
    trainer = stages.get("trainer", {}).get("result", {})
    prov = stages.get("provenance", {}).get("result", {})
    env = {**ops.get("environment", {}), **{k: v for k, v in prov.items() if k in _ENV_KEYS}}
    env.setdefault("matmul_dtype", "bfloat16")
    env["lease_status"] = {name: r.get("status") for name, r in stages.items()}
    env["dry_run"] = any(r.get("dry_run") for r in stages.values())
    return {
        "environment": env,
        "matmul_tflops": ops.get("matmul_tflops"),
        "rows": list(ops.get("rows", [])) + list(trainer.get("rows", [])),
        "correctness": stages.get("correctness", {}).get("result", {}),
    }


_ENV_KEYS = ("device_name", "driver", "date_utc", "versions", "git_commit", "device_type", "clocks")


def load_payload(path: Path) -> dict[str, Any]:
    """The payload of a results.json, a suite's results folder, a lease's $OUT or one of its stage files."""
    if path.is_file() and _lease_stage(path) is not None:
        return load_lease(path.parent)
    if path.is_dir():
        if (path / "results.json").is_file():
            path = path / "results.json"
        elif is_lease(path):
            return load_lease(path)
        else:
            raise FileNotFoundError(f"{path} holds neither results.json nor a lease's NN-ops.json")
    return json.loads(path.read_text())
