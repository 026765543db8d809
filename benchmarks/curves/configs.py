"""The configurations and the two modes of the curves report."""

from __future__ import annotations

from dataclasses import dataclass

from .runs import RunConfig

CONFIGS = {
    "dapo": RunConfig("dapo"),  # trl's defaults: loss_type="dapo", beta=0
    "dapo-beta0.1": RunConfig("dapo-beta0.1", {"beta": 0.1}),  # + k3 KL to the reference model
    "lora": RunConfig("lora", {"learning_rate": 3e-2}, lora=True),  # dapo, beta=0, LoRA r=8 (peft)
}


@dataclass(frozen=True)
class Mode:
    name: str
    configs: tuple[str, ...]
    seeds: tuple[int, ...]
    steps: int
    checked: tuple[str, ...]  # configurations the parity check runs on


MODES = {
    "full": Mode("full", ("dapo", "dapo-beta0.1", "lora"), (0, 1, 2, 3), 320, ("dapo", "dapo-beta0.1", "lora")),
    "quick": Mode("quick", ("dapo-beta0.1",), (0, 1, 2, 3, 4, 5, 6, 7), 160, ("dapo-beta0.1",)),
}
