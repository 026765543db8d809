"""Print the resolved versions of the packages a CI stage tests with, one line, so every stage log says what it ran.

    python tests/ci/versions.py [LABEL]

Reads installed distributions' metadata only (imports none of them: fast, and works where one is broken). "kernels"
is Hugging Face's distribution (transformers >= 5.25 requires it), not the checkout's ``kernels/`` folder.
"""

from __future__ import annotations

import importlib.metadata
import platform
import sys

PACKAGES = ("torch", "triton", "transformers", "trl", "accelerate", "peft", "deepspeed", "kernels", "numpy")


def version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def line(label: str = "") -> str:
    parts = [f"python {platform.python_version()}"] + [f"{name} {version(name)}" for name in PACKAGES]
    head = f"== versions{f' ({label})' if label else ''}:"
    return f"{head} {' | '.join(parts)}  [{sys.executable}]"


if __name__ == "__main__":
    print(line(" ".join(sys.argv[1:])), flush=True)
