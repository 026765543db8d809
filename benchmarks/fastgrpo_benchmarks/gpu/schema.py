"""The lease's files and their schema, and the check the CPU dry run (and the lease itself) applies to them.

Every stage file ``NN-<stage>.json`` is one JSON object:

| key | type | meaning |
|---|---|---|
| schema | str | ``fastgrpo-lease/1`` |
| stage, index | str, int | the stage's name and its place in the lease (the file name's NN) |
| status | str | ``ok``; ``failed`` (a check failed); ``timeout`` (stopped by its budget: partial result); ``error`` |
| dry_run | bool | true for the CPU dry run (Triton interpreter, tiny shapes): its figures are not measurements |
| started_utc, wall_s, budget_s | str, float, float | when it started, how long it ran, its budget |
| triton | dict | ``compile_s``, ``compiles``, ``cache_hits``, ``cache_misses``, ``cache_dir`` of this stage |
| result | dict | the stage's own keys (``Stage.result_keys`` in ``lease.py``; a timeout may leave some out) |
| error | str or null | what stopped it |

Rows of the ``ops`` and ``trainer`` results are the benchmark suite's rows (as in its results.json): ``case``,
``shape``, ``mode``, ``impl``, ``status``, and ``median_s`` / ``peak_extra_bytes`` when ``status == "ok"``.

    python -m fastgrpo_benchmarks.gpu.schema OUT_DIR [--dry-run]     # exit 1 and one line per problem
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

SCHEMA = "fastgrpo-lease/1"
MAX_FILES = 8  # what the device tool brings back from $OUT
STATUSES = ("ok", "failed", "timeout", "error")
COMMON: dict[str, type | tuple[type, ...]] = {
    "schema": str,
    "stage": str,
    "index": int,
    "status": str,
    "dry_run": bool,
    "started_utc": str,
    "wall_s": (int, float),
    "budget_s": (int, float),
    "triton": dict,
    "result": dict,
    "error": (str, type(None)),
}
TRITON_KEYS = ("compile_s", "compiles", "cache_hits", "cache_misses", "cache_dir")
ROW_KEYS = ("case", "shape", "mode", "impl", "status")
CHECK_KEYS = ("hidden", "tokens", "vocab", "dtype", "mode", "impl", "err_value", "err_grad", "passed")


def _rows_problems(rows: Any, where: str) -> list[str]:
    if not isinstance(rows, list):
        return [f"{where}: rows is not a list"]
    out = []
    for i, row in enumerate(rows):
        missing = [k for k in ROW_KEYS if k not in row]
        if missing:
            out.append(f"{where}: row {i} lacks {missing}")
        elif row["status"] == "ok" and row["case"] == "op" and not isinstance(row.get("median_s"), (int, float)):
            out.append(f"{where}: ok row {i} has no median_s")
    return out


def check_record(record: dict[str, Any], result_keys: tuple[str, ...], dry_run: bool | None = None) -> list[str]:
    """Problems with one stage file's content (empty: it conforms). A finished stage must have every result key."""
    where = f"{record.get('index', '?'):>02}-{record.get('stage', '?')}"
    out = [f"{where}: {k} missing or not {t}" for k, t in COMMON.items() if not isinstance(record.get(k), t)]
    if out:
        return out
    if record["schema"] != SCHEMA:
        out.append(f"{where}: schema {record['schema']!r} != {SCHEMA!r}")
    if record["status"] not in STATUSES:
        out.append(f"{where}: status {record['status']!r} not in {STATUSES}")
    if dry_run is not None and record["dry_run"] != dry_run:
        out.append(f"{where}: dry_run is {record['dry_run']}")
    out += [f"{where}: triton.{k} missing" for k in TRITON_KEYS if k not in record["triton"]]
    result = record["result"]
    if record["status"] in ("ok", "failed"):
        out += [f"{where}: result.{k} missing" for k in result_keys if k not in result]
    if "rows" in result:
        out += _rows_problems(result["rows"], where)
    for i, check in enumerate(result.get("checks", [])):
        missing = [k for k in CHECK_KEYS if k not in check]
        if missing:
            out.append(f"{where}: check {i} lacks {missing}")
    return out


def check_dir(out: Path, stages: list[Any] | None = None, dry_run: bool | None = None,
              require_ok: bool = False) -> list[str]:  # fmt: skip
    """Problems with a lease's $OUT: at most MAX_FILES files, one conforming file per stage, nothing deeper."""
    if stages is None:
        from .lease import STAGES as stages
    files = sorted(p for p in out.rglob("*") if p.is_file())
    problems = (
        [f"{len(files)} files under {out} (the device tool returns {MAX_FILES})"] if len(files) > MAX_FILES else []
    )
    for index, stage in enumerate(stages, 1):
        path = out / f"{index:02d}-{stage.name}.json"
        if not path.is_file():
            problems.append(f"{path.name} missing")
            continue
        try:
            record = json.loads(path.read_text())
        except ValueError as exc:
            problems.append(f"{path.name}: not JSON ({exc})")
            continue
        problems += check_record(record, stage.result_keys, dry_run)
        if require_ok and record.get("status") != "ok":
            problems.append(f"{path.name}: status {record.get('status')} ({record.get('error')})")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Check a lease's $OUT against the schema")
    parser.add_argument("out", type=Path)
    parser.add_argument("--dry-run", action="store_true", help="the files must say dry_run: true")
    parser.add_argument("--require-ok", action="store_true", help="every stage must have finished with status ok")
    args = parser.parse_args(argv)
    problems = check_dir(args.out, dry_run=args.dry_run, require_ok=args.require_ok)
    for p in problems:
        print(p)
    print(f"{args.out}: {'OK' if not problems else f'{len(problems)} problems'}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
