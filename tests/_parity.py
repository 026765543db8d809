"""Run stock trl's GRPOTrainer and FastGRPOTrainer on the same tiny model and data, and compare them."""

from __future__ import annotations

import atexit
import contextlib
import math
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from _tiny import build_model, build_tokenizer, id_reward, prompt_dataset

# Logged metrics compared between the two trainers (those present in the stock run).
COMPARED_METRICS = (
    "loss",
    "grad_norm",
    "kl",
    "entropy",
    "clip_ratio/low_mean",
    "clip_ratio/high_mean",
    "clip_ratio/region_mean",
    "clip_ratio/low_min",
    "clip_ratio/high_max",
    "cispo_clip_ratio",
    "vespo/phi_seq_mean",
    "policy_loss",
    "entropy_coef",
    "aux_loss",
    "reward",
    "eval_loss",
    "eval_kl",
    "eval_entropy",
)


@dataclass
class Case:
    """One parity configuration: GRPOConfig overrides plus how the model is built and adapted."""

    name: str
    config: dict[str, Any] = field(default_factory=dict)
    model: dict[str, Any] = field(default_factory=dict)
    lora: bool = False
    head_bias: bool = False
    eos_bias: float = 0.0
    eval: bool = False


@dataclass
class RunResult:
    logs: list[dict[str, float]]
    weights: dict[str, Any]
    loss_fallback: list[str] | None = None  # FastGRPOTrainer's reasons for trl's loss math (None: stock trl)


_TOKENIZER_DIR: dict[str, Any] = {}


def tokenizer_dir() -> tuple[Path, Any]:
    if "dir" not in _TOKENIZER_DIR:
        d = Path(tempfile.mkdtemp(prefix="fastgrpo-tok-"))
        # One per process (pytest, and each subprocess or torchrun worker that builds models): removed at its exit.
        atexit.register(shutil.rmtree, d, ignore_errors=True)
        _TOKENIZER_DIR["dir"], _TOKENIZER_DIR["tok"] = d, build_tokenizer(d)
    return _TOKENIZER_DIR["dir"], _TOKENIZER_DIR["tok"]


# TrainingArguments every CPU training test shares: fp32 on CPU, a log per step, nothing saved or reported. Plain
# SGD: Adam's g / sqrt(v) turns fp32 rounding differences in near-zero gradients into 1e-5 weight differences; SGD keeps
# the weights' difference proportional to the gradients' difference.
CPU_TRAINING_ARGS: dict[str, Any] = dict(
    optim="sgd",
    logging_steps=1,
    bf16=False,
    use_cpu=True,
    report_to="none",
    save_strategy="no",
    seed=7,
    disable_tqdm=True,
)


def base_kwargs(output_dir: str, **overrides: Any) -> dict[str, Any]:
    """The GRPO test runs' settings (every one of them an RLOOConfig field too)."""
    kwargs: dict[str, Any] = dict(
        output_dir=output_dir,
        per_device_train_batch_size=4,
        num_generations=4,
        max_completion_length=8,
        max_steps=3,
        learning_rate=1.0,
        beta=0.0,
        temperature=1.0,
        **CPU_TRAINING_ARGS,
    )
    kwargs.update(overrides)
    return kwargs


def base_config(output_dir: str, **overrides: Any) -> Any:
    from trl import GRPOConfig

    return GRPOConfig(**base_kwargs(output_dir, **overrides))


def make_model_dir(case: Case, root: Path) -> Path:
    _, tok = tokenizer_dir()
    path = root / f"model-{case.name}"
    if not path.exists():
        tok.save_pretrained(str(path))
        build_model(path, tok, **case.model)
    return path


def run_case(trainer_cls: type, case: Case, root: Path, **trainer_kwargs: Any) -> RunResult:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = make_model_dir(case, root)
    tok = AutoTokenizer.from_pretrained(str(path))
    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32)
    if case.head_bias:
        head = model.get_output_embeddings()
        new_head = torch.nn.Linear(head.in_features, head.out_features, bias=True)
        with torch.no_grad():
            new_head.weight.copy_(head.weight)
            g = torch.Generator().manual_seed(3)
            new_head.bias.copy_(torch.randn(head.out_features, generator=g))
            new_head.bias[tok.eos_token_id] += case.eos_bias
        model.set_output_embeddings(new_head)
    peft_config = None
    if case.lora:
        from peft import LoraConfig

        peft_config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], lora_dropout=0.0)
    config_overrides = dict(case.config)
    eval_dataset = None
    if case.eval:
        eval_dataset = prompt_dataset(4)
        config_overrides.setdefault("eval_strategy", "steps")
        config_overrides.setdefault("eval_steps", 2)
        config_overrides.setdefault("per_device_eval_batch_size", 4)
    out_dir = tempfile.mkdtemp(prefix="fastgrpo-run-", dir=str(root))
    args = base_config(out_dir, **config_overrides)
    # trl < 1.16 builds the PEFT model (random LoRA A init) before Trainer seeds the RNG: seed it here.
    torch.manual_seed(1234)
    trainer = trainer_cls(
        model=model,
        reward_funcs=id_reward,
        args=args,
        train_dataset=prompt_dataset(8),
        eval_dataset=eval_dataset,
        processing_class=tok,
        peft_config=peft_config,
        **trainer_kwargs,
    )
    trainer.train()
    logs = [dict(entry) for entry in trainer.state.log_history]
    trained = trainer.model
    weights = {k: v.detach().clone() for k, v in trained.state_dict().items()}
    return RunResult(logs=logs, weights=weights, loss_fallback=getattr(trainer, "_fastgrpo_loss_fallback", None))


def compare(stock: RunResult, fast: RunResult, *, rtol: float = 1e-4, wtol: float = 1e-5, atol: float = 1e-6) -> None:
    """Assert the two runs logged the same metrics (rtol) and ended with the same weights (wtol)."""
    import torch

    assert len(stock.logs) == len(fast.logs), (len(stock.logs), len(fast.logs))
    compared = 0
    for step, (s, f) in enumerate(zip(stock.logs, fast.logs)):
        for key in COMPARED_METRICS:
            if key not in s:
                continue
            assert key in f, f"step {step}: {key} missing from the fastgrpo run"
            a, b = s[key], f[key]
            if a is None or b is None or (isinstance(a, float) and math.isnan(a)):
                assert (a is None or math.isnan(a)) == (b is None or math.isnan(b)), (step, key, a, b)
                continue
            assert abs(a - b) <= rtol * abs(a) + atol, f"step {step}: {key} stock={a!r} fastgrpo={b!r}"
            compared += 1
    assert compared >= 3, "nothing was compared"
    assert stock.weights.keys() == fast.weights.keys()
    moved = False
    for name, w in stock.weights.items():
        v = fast.weights[name]
        torch.testing.assert_close(v, w, rtol=wtol, atol=wtol, msg=lambda m, n=name: f"{n}: {m}")
    for name in stock.weights:
        moved = moved or name.endswith("weight")
    assert moved


class _Forbidden:
    def __init__(self, name: str) -> None:
        self.name = name

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise AssertionError(f"trl's own log-prob code ({self.name}) ran inside a FastGRPOTrainer run")

    def apply(self, *args: Any, **kwargs: Any) -> Any:
        return self(*args, **kwargs)


@contextlib.contextmanager
def fastgrpo_only(backend: str = "torch") -> Iterator[dict[str, int]]:
    """Make trl's own log-prob code raise and count fastgrpo's lm_head calls (checking the backend they use)."""
    import trl.trainer.grpo_trainer as grpo_module
    import trl.trainer.utils as trl_utils

    import fastgrpo.integration.head as head

    calls = {"linear_logprobs": 0}
    real = head.linear_logprobs

    def counting(*args: Any, **kwargs: Any) -> Any:
        assert kwargs.get("backend") == backend, kwargs.get("backend")
        calls["linear_logprobs"] += 1
        return real(*args, **kwargs)

    saved: list[tuple[Any, str, Any]] = []
    targets = [(trl_utils, "_ChunkedLogProbFunction")] + [
        (grpo_module, name)
        for name in ("_ChunkedLogProbFunction", "selective_log_softmax", "selective_log_softmax_and_entropy")
    ]
    for module, name in targets:
        if hasattr(module, name):
            saved.append((module, name, getattr(module, name)))
            setattr(module, name, _Forbidden(f"{module.__name__}.{name}"))
    head.linear_logprobs = counting
    try:
        yield calls
    finally:
        head.linear_logprobs = real
        for module, name, value in saved:
            setattr(module, name, value)


def trl_reasons() -> list[str]:
    """Why the installed trl alone makes FastGRPOTrainer use trl's loss (empty on a release verified for it)."""
    from fastgrpo.integration.trainer import trl_support

    return list(trl_support().reasons)
