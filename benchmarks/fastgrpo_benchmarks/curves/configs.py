"""The configurations and the two modes of the curves report."""

from __future__ import annotations

from dataclasses import dataclass

from .runs import RunConfig

CONFIGS = {
    "dapo": RunConfig("dapo"),  # trl's defaults: loss_type="dapo", beta=0
    "dapo-beta0.1": RunConfig("dapo-beta0.1", {"beta": 0.1}),  # + k3 KL to the reference model
    # dapo, beta=0, LoRA r=8 on every linear layer but the (frozen) lm_head. The head is initialised at std 0.2, not
    # 0.02: behind the final RMSNorm a frozen 0.02 head caps the logits near 0.1 and no adapter can move the policy.
    "lora": RunConfig("lora", lora=True, model={"initializer_range": 0.2}),
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
    "quick": Mode("quick", ("dapo-beta0.1",), tuple(range(24)), 160, ("dapo-beta0.1",)),
}
