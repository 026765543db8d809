"""The accelerate internals the distributed-engine tests use (tests/_dist_worker.py, tests/_dist_fsdp_cpu.py) exist
with the signatures they call, so a new accelerate that changes them fails here, in seconds and by name, instead of
as a crashed torchrun launch in the distributed stage.

Checked 2026-12-03: the distributed stage (tests/test_distributed_engines.py) passes on accelerate 1.16.0 and on
1.10.1, the oldest trl 1.16 accepts (a scratch venv with ``accelerate==1.10.1``; see CHANGELOG).
"""

from __future__ import annotations

import inspect

import pytest

accelerate_state = pytest.importorskip("accelerate.state")


def test_reset_state_keeps_the_process_group_on_request():
    """_dist_worker.py forgets one engine's state between runs: ``AcceleratorState._reset_state(False)``."""
    reset = inspect.signature(accelerate_state.AcceleratorState._reset_state)
    assert "reset_partial_state" in reset.parameters, reset
    assert reset.parameters["reset_partial_state"].default is False


def test_fsdp_on_cpu_shim_hooks_exist():
    """_dist_fsdp_cpu.py wraps ``AcceleratorState.__init__`` (keyword ``fsdp_plugin``) and writes the promoted type
    into ``PartialState._shared_state``; ``DistributedType`` has both types it switches between."""
    from accelerate.utils import DistributedType

    init = inspect.signature(accelerate_state.AcceleratorState.__init__)
    assert "fsdp_plugin" in init.parameters, init
    assert isinstance(accelerate_state.PartialState._shared_state, dict)
    assert {"MULTI_CPU", "FSDP"} <= set(DistributedType.__members__)
