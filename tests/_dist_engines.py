"""Engine configurations for the distributed tests: what a user passes to ``GRPOConfig`` for each engine.

Shared by the worker (``_dist_worker.py``, run under torchrun) and the tests that read its results
(``test_distributed_engines.py``). Model variants are tiny Qwen2 models (``_tiny.build_model`` keyword arguments).
"""

from __future__ import annotations

from typing import Any

LAUNCHES = ("ddp", "deepspeed", "fsdp2")

# Model variants: name -> build_model keyword arguments.
MODELS: dict[str, dict[str, Any]] = {
    "v4096": {"vocab_size": 4096},
    "v4096-tied": {"vocab_size": 4096, "tie_word_embeddings": True},
    "v151936": {"vocab_size": 151936},
}


def deepspeed_config(stage: int) -> dict[str, Any]:
    """The DeepSpeed config a user writes; ``auto`` values are filled in from GRPOConfig by transformers."""
    zero: dict[str, Any] = {"stage": stage}
    if stage == 3:
        # 0: every parameter is partitioned, the tiny test head included (the default, 1e5 elements, would keep a
        # small head whole on every rank and hide a missing gather).
        zero["stage3_param_persistence_threshold"] = 0
    return {
        "zero_optimization": zero,
        "train_micro_batch_size_per_gpu": "auto",
        "gradient_accumulation_steps": "auto",
        "gradient_clipping": "auto",
        "zero_allow_untested_optimizer": True,  # the tests train with torch's SGD
        "bf16": {"enabled": "auto"},
        "fp16": {"enabled": "auto"},
    }


def fsdp2_config(separate_head: bool) -> dict[str, Any]:
    """GRPOConfig keywords for FSDP2. accelerate wraps each decoder layer (the model's ``_no_split_modules``) and puts
    [final norm, lm_head] in one unit; listing ``Linear`` as well makes the lm_head a unit of its own, whose
    parameters stay sharded DTensors when the fused head reads them (its module is never called)."""
    fsdp_config: dict[str, Any] = {"version": 2, "reshard_after_forward": True}
    if separate_head:
        fsdp_config["transformer_layer_cls_to_wrap"] = ["Qwen2DecoderLayer", "Linear"]
    return {"fsdp": "full_shard", "fsdp_config": fsdp_config}


# Runs per launch: (run name, model variant, engine kind, beta). One torchrun launch per key; DDP trains every
# reference run the other kinds are compared with (same model and beta: see reference_run). Runs named "sft-..."
# train trl's SFTTrainer (stock, and built under fastgrpo.patch_trl()) instead of GRPO (beta unused).
RUNS: dict[str, list[tuple[str, str, str, float]]] = {
    "ddp": [
        ("v4096", "v4096", "ddp", 0.04),
        ("v4096-noref", "v4096", "ddp", 0.0),
        ("v4096-tied", "v4096-tied", "ddp", 0.04),
        ("v151936", "v151936", "ddp", 0.04),
        ("sft-v4096", "v4096", "ddp", 0.0),
    ],
    "deepspeed": [
        ("v4096", "v4096", "zero2", 0.04),
        ("v4096", "v4096", "zero3", 0.04),
        ("v4096-noref", "v4096", "zero3", 0.0),
        ("v4096-tied", "v4096-tied", "zero3", 0.04),
        ("v151936", "v151936", "zero3", 0.04),
        ("sft-v4096", "v4096", "zero3", 0.0),
    ],
    "fsdp2": [
        ("v4096", "v4096", "fsdp2", 0.04),
        ("v4096-head", "v4096", "fsdp2-head", 0.04),
        ("v4096-tied", "v4096-tied", "fsdp2", 0.04),
        ("v151936-head", "v151936", "fsdp2-head", 0.04),
        ("sft-v4096-head", "v4096", "fsdp2-head", 0.0),
    ],
}


def trainer_kind(run: str) -> str:
    """ "sft" for the SFTTrainer runs, "grpo" for the others."""
    return "sft" if run.startswith("sft-") else "grpo"


def engine_kwargs(kind: str) -> dict[str, Any]:
    if kind == "ddp":
        return {}
    if kind == "zero2":
        return {"deepspeed": deepspeed_config(2)}
    if kind == "zero3":
        return {"deepspeed": deepspeed_config(3)}
    if kind == "fsdp2":
        return fsdp2_config(separate_head=False)
    if kind == "fsdp2-head":
        return fsdp2_config(separate_head=True)
    raise ValueError(f"unknown engine kind {kind!r}")


def reference_run(run: str) -> str:
    """The DDP run a run is compared with (same model and beta)."""
    return run.removesuffix("-head") if run.endswith("-head") else run
