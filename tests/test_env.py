"""Environment variables: one table, one parser, each variable read in one place, README in sync."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from fastgrpo import env

ROOT = Path(__file__).resolve().parents[1]
# Reading an environment variable anywhere but fastgrpo/env.py (writes, e.g. for subprocesses, are fine).
_READ = re.compile(r"""os\.environ\.get\(\s*["'](FASTGRPO_\w+|TRITON_INTERPRET)|os\.getenv\(\s*["'](FASTGRPO_\w+)""")
_SOURCES = ("fastgrpo", "kernels", "benchmarks", "tools")


@pytest.mark.parametrize(
    "text,expected",
    [
        ("1", True),
        ("TRUE", True),
        (" on ", True),
        ("yes", True),
        ("0", False),
        ("", False),
        ("off", False),
        ("No", False),
    ],
)
def test_parse_bool(text, expected):
    assert env.parse_bool(text, name="X") is expected


def test_parse_bool_rejects_garbage_naming_the_variable():
    with pytest.raises(ValueError, match=r"\$FASTGRPO_AUTOTUNE"):
        env.parse_bool("maybe", name="FASTGRPO_AUTOTUNE")


def test_flag_reads_the_environment(monkeypatch):
    monkeypatch.setenv("FASTGRPO_AUTOTUNE", "true")
    assert env.flag("FASTGRPO_AUTOTUNE") is True
    monkeypatch.setenv("FASTGRPO_AUTOTUNE", "off")
    assert env.flag("FASTGRPO_AUTOTUNE") is False
    monkeypatch.delenv("FASTGRPO_AUTOTUNE")
    assert env.flag("FASTGRPO_AUTOTUNE", default=True) is True


def test_unknown_variable_is_an_error():
    with pytest.raises(KeyError, match="VARIABLES"):
        env.get("FASTGRPO_NOT_A_THING")


def test_no_module_reads_a_variable_itself():
    offenders = []
    for top in _SOURCES:
        for path in (ROOT / top).rglob("*.py"):
            if path == ROOT / "fastgrpo" / "env.py":
                continue
            for lineno, line in enumerate(path.read_text().splitlines(), 1):
                if _READ.search(line):
                    offenders.append(f"{path.relative_to(ROOT)}:{lineno}: {line.strip()}")
    assert not offenders, "read through fastgrpo.env instead:\n" + "\n".join(offenders)


def test_every_fastgrpo_variable_named_in_code_is_in_the_table():
    names = set()
    for top in _SOURCES:
        for path in (ROOT / top).rglob("*.py"):
            names |= set(re.findall(r"\bFASTGRPO_[A-Z0-9_]+\b", path.read_text()))
    known = {v.name for v in env.VARIABLES}
    assert names <= known, f"add to fastgrpo.env.VARIABLES: {sorted(names - known)}"


def test_readme_lists_every_variable():
    readme = (ROOT / "README.md").read_text()
    stale = "README's environment-variable table is stale: paste `python -m fastgrpo.env`"
    assert env.markdown_table() in readme, stale
