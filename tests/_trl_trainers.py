"""Stock trl trainers (SFT, DPO, KTO, RLOO) against the same trainers under ``fastgrpo.patch_trl()``, on a tiny model.

Each run: 3 SGD steps from the same seeds; it returns every logged metric, the weights before and after, and (patched
runs) how often fastgrpo's head ran and the smallest gap, over every scored row where ``is_top1`` was asked for,
between the target's logit and the largest other logit (so ``is_top1`` cannot flip on rounding).
"""

from __future__ import annotations

import contextlib
import math
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from _parity import CPU_TRAINING_ARGS, Case, make_model_dir
from _tiny import id_reward

# Logged keys that measure time or throughput, not training.
_UNTIMED = ("runtime", "per_second", "time", "step_s", "_s/")


@dataclass
class TrainerRun:
    logs: list[dict[str, float]]
    before: dict[str, Any]
    after: dict[str, Any]
    head_calls: int = 0
    min_top1_gap: float = math.inf
    top1_rows: int = 0


@dataclass
class TrainerCase:
    name: str
    trainer: str  # "sft" | "dpo" | "kto" | "rloo"
    config: dict[str, Any] = field(default_factory=dict)
    lora: bool = False
    modules_to_save: bool = False
    # Metrics that are a difference of much larger log-prob sums (KTO's `kl` and `rewards/*`: beta x (policy minus
    # reference summed log-probs)): compared within rtol of factor x the scale of those sums (the logged metrics
    # named here), since one fp32 ulp of the sums is already more than 1e-5 of their difference.
    cancellation: dict[str, tuple[tuple[str, ...], float]] = field(default_factory=dict)


def _texts(n: int, offset: int = 0) -> list[str]:
    return [f"What is {i + offset} + {i + 3}?" for i in range(n)]


_SHARED: dict[str, Any] = {}


def model_path() -> Path:
    """One tiny model directory per test process (every case starts from these weights; trainers never write it)."""
    if "root" not in _SHARED:
        _SHARED["root"] = Path(tempfile.mkdtemp(prefix="fastgrpo-trl-trainers-"))
    return make_model_dir(Case("trl-trainers"), _SHARED["root"])


def greedy_completions(path: Path, prompts: list[str], n_tokens: int = 6) -> list[str]:
    """The initial model's greedy continuation of each prompt: a fixture whose tokens are often the model's top-1."""
    key = f"greedy|{path}|{prompts}|{n_tokens}"
    if key not in _SHARED:
        _SHARED[key] = _greedy(path, prompts, n_tokens)
    return list(_SHARED[key])


def _greedy(path: Path, prompts: list[str], n_tokens: int) -> list[str]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(path))
    model = AutoModelForCausalLM.from_pretrained(str(path)).eval()
    out = []
    for prompt in prompts:
        ids = tok(prompt, return_tensors="pt").input_ids
        with torch.no_grad():
            gen = model.generate(ids, max_new_tokens=n_tokens, do_sample=False, pad_token_id=tok.pad_token_id)
        out.append(tok.decode(gen[0, ids.shape[1] :], skip_special_tokens=True) or " 5")
    return out


def dataset(case: TrainerCase, path: Path) -> Any:
    from datasets import Dataset

    prompts = _texts(8)
    if case.trainer == "sft":
        return Dataset.from_dict({"prompt": prompts, "completion": greedy_completions(path, prompts)})
    if case.trainer == "dpo":
        chosen = greedy_completions(path, prompts)
        return Dataset.from_dict({"prompt": prompts, "chosen": chosen, "rejected": [" 12 plus 7"] * 8})
    if case.trainer == "kto":
        completions = greedy_completions(path, prompts)
        return Dataset.from_dict(
            {"prompt": prompts, "completion": completions, "label": [i % 2 == 0 for i in range(8)]}
        )
    return Dataset.from_dict({"prompt": prompts})


_COMMON: dict[str, Any] = dict(per_device_train_batch_size=4, max_steps=3, learning_rate=0.5, **CPU_TRAINING_ARGS)


def build(case: TrainerCase, root: Path) -> Any:
    import torch
    import trl
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = model_path()
    tok = AutoTokenizer.from_pretrained(str(path))
    out_dir = tempfile.mkdtemp(prefix=f"{case.name}-", dir=str(root))
    peft_config = None
    if case.lora:
        from peft import LoraConfig

        peft_config = LoraConfig(
            r=4,
            lora_alpha=8,
            target_modules=["q_proj", "v_proj"],
            lora_dropout=0.0,
            modules_to_save=["lm_head"] if case.modules_to_save else None,
        )
    data = dataset(case, path)
    torch.manual_seed(1234)  # PEFT's LoRA init, before Trainer seeds
    model: Any = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32)
    kwargs: dict[str, Any] = dict(model=model, args=None, train_dataset=data, processing_class=tok)
    options = {**_COMMON, **case.config}
    if case.trainer == "sft":
        kwargs["args"] = trl.SFTConfig(out_dir, max_length=64, **options)
    elif case.trainer == "dpo":
        kwargs["args"] = trl.DPOConfig(out_dir, max_length=64, **options)
    elif case.trainer == "kto":
        kwargs["args"] = trl.KTOConfig(out_dir, max_length=64, **options)
    elif case.trainer == "rloo":
        kwargs.update(reward_funcs=id_reward)
        kwargs["args"] = trl.RLOOConfig(out_dir, num_generations=4, max_completion_length=6, temperature=1.0, **options)
    else:
        raise ValueError(case.trainer)
    cls = {"sft": trl.SFTTrainer, "dpo": trl.DPOTrainer, "kto": trl.KTOTrainer, "rloo": trl.RLOOTrainer}[case.trainer]
    return cls(peft_config=peft_config, **kwargs)


def _weights(model: Any) -> dict[str, Any]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _gap(hidden: Any, weight: Any, bias: Any, targets: Any, options: Any) -> Any:
    """Per row: |target logit - largest other logit| under the head's logit transform (float64)."""
    import torch

    z = hidden.detach().double() @ weight.detach().double().T
    if bias is not None:
        z = z + bias.detach().double()
    z = z * options.logit_scale
    if options.softcap is not None:
        z = options.softcap * torch.tanh(z / options.softcap)
    z = z / options.temperature
    t = targets.long()
    target = z.gather(-1, t[:, None])[:, 0]
    others = z.scatter(-1, t[:, None], -math.inf).amax(-1)
    return (target - others).abs()


@contextlib.contextmanager
def fastgrpo_head_only(run: TrainerRun, backend: str = "torch") -> Iterator[None]:
    """trl's chunked head raises; fastgrpo's head calls are counted and their is_top1 gaps recorded in ``run``."""
    import trl.trainer.utils as trl_utils

    import fastgrpo.integration.head as head

    real = head.linear_logprobs

    def watched(hidden: Any, weight: Any, targets: Any, **kwargs: Any) -> Any:
        assert kwargs.get("backend") == backend, kwargs.get("backend")
        run.head_calls += 1
        options = kwargs["options"]
        if options.return_is_top1 and targets.numel():
            gaps = _gap(hidden, weight, kwargs.get("bias"), targets, options)
            run.min_top1_gap = min(run.min_top1_gap, float(gaps.min()))
            run.top1_rows += int(targets.numel())
        return real(hidden, weight, targets, **kwargs)

    class Forbidden:
        @staticmethod
        def apply(*args: Any, **kwargs: Any) -> Any:
            raise AssertionError("trl's own fused head (ChunkedLogProbFunction) ran under patch_trl()")

    saved = trl_utils._ChunkedLogProbFunction
    trl_utils._ChunkedLogProbFunction = Forbidden
    head.linear_logprobs = watched
    try:
        yield
    finally:
        head.linear_logprobs = real
        trl_utils._ChunkedLogProbFunction = saved


def train(trainer: Any) -> TrainerRun:
    run = TrainerRun(logs=[], before=_weights(trainer.model), after={})
    trainer.train()
    run.logs = [dict(entry) for entry in trainer.state.log_history]
    run.after = _weights(trainer.model)
    return run


def run_stock(case: TrainerCase, root: Path) -> TrainerRun:
    return train(build(case, root))


def run_patched(case: TrainerCase, root: Path, backend: str = "torch") -> TrainerRun:
    import fastgrpo

    fastgrpo.patch_trl(backend=backend)
    try:
        trainer = build(case, root)
        run = TrainerRun(logs=[], before=_weights(trainer.model), after={})
        with fastgrpo_head_only(run, backend):
            trainer.train()
        run.logs = [dict(entry) for entry in trainer.state.log_history]
        run.after = _weights(trainer.model)
    finally:
        fastgrpo.unpatch_trl()
    return run


def metric_keys(entry: dict[str, Any]) -> list[str]:
    return [k for k, v in entry.items() if isinstance(v, (int, float)) and not any(u in k for u in _UNTIMED)]


def compare_runs(
    stock: TrainerRun,
    fast: TrainerRun,
    *,
    rtol: float = 1e-5,
    atol: float = 1e-7,
    wtol: float = 1e-4,
    cancellation: dict[str, tuple[tuple[str, ...], float]] | None = None,
) -> dict[str, Any]:
    """Assert the issue's parity criteria; return the worst figures seen (for the report)."""
    worst: dict[str, Any] = {"metric_rel": 0.0, "worst_metric": None, "weight_rel": 0.0, "metrics": 0}
    cancellation = cancellation or {}
    assert len(stock.logs) == len(fast.logs), (len(stock.logs), len(fast.logs))
    for step, (s, f) in enumerate(zip(stock.logs, fast.logs)):
        keys = metric_keys(s)
        assert set(keys) == set(metric_keys(f)), (step, sorted(set(keys) ^ set(metric_keys(f))))
        for key in keys:
            a, b = float(s[key]), float(f[key])
            if math.isnan(a) or math.isnan(b):
                assert math.isnan(a) and math.isnan(b), (step, key, a, b)
                continue
            if "token_accuracy" in key:
                assert a == b, f"step {step}: {key} stock={a!r} fastgrpo={b!r} (must be exactly equal)"
            scale = abs(a)
            if key in cancellation:
                terms, factor = cancellation[key]
                scale = max([scale] + [factor * abs(float(s[k])) for k in terms])
                worst[f"{key}_rel_to_terms"] = max(worst.get(f"{key}_rel_to_terms", 0.0), abs(a - b) / scale)
            assert abs(a - b) <= rtol * scale + atol, f"step {step}: {key} stock={a!r} fastgrpo={b!r}"
            if key not in cancellation and abs(a - b) / max(abs(a), 1e-30) > worst["metric_rel"]:
                worst["metric_rel"], worst["worst_metric"] = abs(a - b) / max(abs(a), 1e-30), key
            worst["metrics"] += 1
    assert worst["metrics"] >= 6, "too few metrics compared"
    assert stock.before.keys() == fast.before.keys() == stock.after.keys() == fast.after.keys()
    moved = 0
    for name in stock.before:
        assert (stock.before[name] == fast.before[name]).all(), f"{name}: different initial weights"
        ds = stock.after[name].double() - stock.before[name].double()
        df = fast.after[name].double() - fast.before[name].double()
        scale = float(ds.abs().max())
        err = float((df - ds).abs().max())
        if scale == 0:
            assert err == 0, f"{name}: frozen in stock trl, moved by {err} under fastgrpo"
            continue
        moved += 1
        assert err <= wtol * scale, f"{name}: update differs by {err:.3g}, {err / scale:.3g} of max|dw| {scale:.3g}"
        worst["weight_rel"] = max(worst["weight_rel"], err / scale)
    assert moved > 0, "no weight moved"
    return worst


def check_case(case: TrainerCase, root: Path, report: Callable[[str], None] = print) -> dict[str, float]:
    stock = run_stock(case, root)
    fast = run_patched(case, root)
    assert fast.head_calls > 0, "fastgrpo's head never ran"
    worst = compare_runs(stock, fast, cancellation=case.cancellation)
    accuracy = [e[k] for e in stock.logs for k in e if "token_accuracy" in k]
    if accuracy:
        assert fast.top1_rows > 0 and fast.min_top1_gap > 1e-4, (fast.top1_rows, fast.min_top1_gap)
        assert any(a > 0 for a in accuracy), f"mean_token_accuracy is 0 at every step: {accuracy}"
        worst["min_top1_gap"] = fast.min_top1_gap
    report(f"{case.name}: {worst}")
    return worst
