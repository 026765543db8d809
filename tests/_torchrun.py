"""What the multi-process CPU tests share: a free loopback port, and a 2-process gloo torchrun command line."""

from __future__ import annotations

import socket
import sys


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun_cmd(*script_and_args: str, nproc: int = 2) -> list[str]:
    """``python -m torch.distributed.run`` on the loopback address and a free port, then the script and its args."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc), "--master_addr", "127.0.0.1"]
    return cmd + ["--master_port", str(free_port()), *script_and_args]
