"""How the suite tells a skip from a failure.

A peer that is not installed, or cannot run on this device, is skipped with the reason (``peers.Unavailable``), and so
is a case the device has no memory for. Anything else (an ImportError from an installed distribution, a crash in a
call or a trainer step) fails its case: the row says why, the run's last lines name it, and the exit code is non-zero.
"""

from __future__ import annotations

import importlib.metadata
from typing import Any

import torch


def failure_reason(exc: BaseException) -> str:
    """``Type: first line of the message`` (at most 200 characters), for the results row and the closing lines."""
    text = str(exc)
    return f"{type(exc).__name__}: {text.splitlines()[0][:200] if text else ''}"


def is_out_of_memory(exc: BaseException) -> bool:
    return isinstance(exc, torch.OutOfMemoryError)


def distribution_installed(name: str) -> bool:
    try:
        importlib.metadata.distribution(name)
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


def failure_lines(rows: list[dict[str, Any]]) -> list[str]:
    """The closing lines: one per failed row (empty when nothing failed)."""
    failed = [r for r in rows if r.get("status") == "failed"]
    if not failed:
        return []
    lines = [f"FAILED: {len(failed)} case(s) crashed; the run exits non-zero"]
    for r in failed:
        lines.append(f"FAILED: {r['case']} {r['shape']} {r['mode']} {r['impl']}: {r.get('reason', '')}")
    return lines
