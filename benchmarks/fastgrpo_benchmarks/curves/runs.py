"""One GRPO training run on the counting task, with stock trl or FastGRPOTrainer, returning every logged metric."""

from __future__ import annotations

import logging
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import task

TRAINERS = ("trl", "fastgrpo")


@dataclass(frozen=True)
class RunConfig:
    """One configuration of the report: GRPOConfig overrides on top of ``BASE_ARGS`` and whether LoRA adapts it."""

    name: str
    overrides: dict[str, Any] = field(default_factory=dict)
    lora: bool = False
    model: dict[str, Any] = field(default_factory=dict)  # task.build_model keyword arguments (Qwen2Config fields)


# Shared by every configuration: Adam at a rate a 1-layer model learns the count with in ~200 steps; eight
# optimizer steps per generation batch, so seven of them are off-policy and the PPO clip is active (5-15% of tokens).
BASE_ARGS: dict[str, Any] = dict(
    per_device_train_batch_size=16,
    num_generations=8,
    steps_per_generation=8,
    max_completion_length=task.COUNT_LEN,
    learning_rate=1e-2,
    lr_scheduler_type="constant",
    logging_steps=1,
    bf16=False,
    use_cpu=True,
    report_to="none",
    save_strategy="no",
    temperature=1.0,
    disable_tqdm=True,
)


@dataclass
class RunResult:
    trainer: str
    config: str
    seed: int
    logs: list[dict[str, float]]  # one dict per optimizer step (trl's log_history entries with a "loss")
    samples: list[dict[str, Any]]  # sampled completions: step, prompt, completion, reward
    seconds: float
    loss_fallback: list[str] | None = None  # FastGRPOTrainer's reasons for trl's loss math (must be empty here)


def _model_dir(root: Path, seed: int, model: dict[str, Any]) -> Path:
    tag = "".join(f"-{k}{v}" for k, v in sorted(model.items()))
    path = root / f"model-seed{seed}{tag}"
    if not (path / "config.json").exists():
        tok = task.build_tokenizer(path)
        task.build_model(path, tok, seed=seed, **model)
    return path


def run(
    trainer_name: str, config: RunConfig, seed: int, steps: int, root: Path, sample_steps: tuple[int, ...]
) -> RunResult:
    """Train ``steps`` optimizer steps from the seed's model with ``trainer_name`` ("trl" or "fastgrpo")."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import GRPOConfig, GRPOTrainer

    if trainer_name not in TRAINERS:
        raise ValueError(f"trainer_name must be one of {TRAINERS}, got {trainer_name!r}")
    path = _model_dir(root, seed, config.model)
    tok = AutoTokenizer.from_pretrained(str(path))
    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32)
    samples: list[dict[str, Any]] = []
    calls = {"n": 0}
    generation_every = int(BASE_ARGS["steps_per_generation"])

    def reward(prompts: list, completions: list, completion_ids: list[list[int]], **kwargs: Any) -> list[float]:
        values = task.count_reward(prompts, completions, completion_ids)
        step = calls["n"] * generation_every + 1  # the optimizer step this generation batch starts
        calls["n"] += 1
        if any(s <= step < s + generation_every for s in sample_steps):
            every = int(BASE_ARGS["num_generations"])  # one completion per prompt, three prompts
            for p, ids, r in list(zip(prompts, completion_ids, values))[::every][:3]:
                samples.append({"step": step, "prompt": p, "completion": task.decode(ids), "reward": r})
        return values

    peft_config = None
    if config.lora:
        from peft import LoraConfig

        peft_config = LoraConfig(r=8, lora_alpha=16, target_modules="all-linear")
    out_dir = tempfile.mkdtemp(prefix=f"run-{trainer_name}-", dir=str(root))
    args = GRPOConfig(output_dir=out_dir, max_steps=steps, seed=seed, **{**BASE_ARGS, **config.overrides})
    kwargs: dict[str, Any] = {}
    cls: type = GRPOTrainer
    if trainer_name == "fastgrpo":
        from fastgrpo import FastGRPOTrainer

        cls, kwargs = FastGRPOTrainer, {"fastgrpo_backend": "torch"}
    torch.manual_seed(seed)  # peft's LoRA init runs before Trainer seeds the RNG
    logging.getLogger("fastgrpo").setLevel(logging.ERROR)
    trainer = cls(
        model=model,
        reward_funcs=reward,
        args=args,
        train_dataset=task.prompt_dataset(64, seed=seed),
        processing_class=tok,
        peft_config=peft_config,
        **kwargs,
    )
    from transformers import PrinterCallback

    trainer.remove_callback(PrinterCallback)  # the metrics are returned, not printed
    start = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - start
    logs = [dict(e) for e in trainer.state.log_history if "loss" in e and "train_runtime" not in e]
    fallback = getattr(trainer, "_fastgrpo_loss_fallback", None)
    if trainer_name == "fastgrpo" and fallback:
        raise RuntimeError(f"FastGRPOTrainer fell back to trl's loss math ({fallback}): the comparison would be moot")
    return RunResult(trainer_name, config.name, seed, logs, samples, seconds, fallback)
