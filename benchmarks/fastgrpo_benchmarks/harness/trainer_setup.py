"""Offline GRPO trainers for the trainer-step case: random Qwen2.5-shaped models, a tokenizer trained in-process,
synthetic completions (no generation), and one optimisation step through the trainer's own ``compute_loss``.

Variants: ``trl_chunked`` = stock trl 1.16 ``GRPOTrainer`` (its chunked head); ``eager`` = the same trainer with the
materialized-logits op of trl <= 1.13 put in place of the chunked head (trl 1.10-1.14 cannot be installed next to
1.16 in one environment; the device image has no registry to build a second one); ``fastgrpo`` =
``fastgrpo.FastGRPOTrainer``. trl's defaults (dapo, beta = 0), bf16 weights on GPU, gradient checkpointing on (as on
small GPUs, so the head's memory is what differs), AdamW.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from typing import Any

import torch

from ..peers.eager import entropy_from_logits, selective_log_softmax
from .suites import TrainerShape

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

TRAINER_VARIANTS = ("fastgrpo", "trl_chunked", "eager")


def build_tokenizer() -> Any:
    """A byte-level BPE tokenizer with ChatML specials, trained on a few words (the trainer never decodes here)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())  # fmt: skip
    tok.train_from_iterator(["What is 2 + 3? The answer is 5.", "apples and pears"], trainer=trainer)
    hf = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    hf.padding_side = "left"
    return hf


def build_model(shape: TrainerShape, device: str, tokenizer: Any, seed: int = 0) -> torch.nn.Module:
    import transformers

    config = transformers.Qwen2Config(
        vocab_size=shape.vocab,
        hidden_size=shape.hidden,
        intermediate_size=shape.intermediate,
        num_hidden_layers=shape.layers,
        num_attention_heads=shape.heads,
        num_key_value_heads=shape.kv_heads,
        max_position_embeddings=1 << 18,  # room for the longest length the memory-budget search tries
        tie_word_embeddings=shape.tied,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    torch.manual_seed(seed)
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    with torch.device(device):
        model = transformers.Qwen2ForCausalLM(config).to(dtype)
    return model


def make_trainer(variant: str, shape: TrainerShape, device: str, out_dir: str) -> Any:
    """Construct the variant's trainer around a fresh random model; raises ImportError if the variant is missing."""
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    if variant == "fastgrpo":
        from fastgrpo import FastGRPOTrainer as trainer_cls
    else:
        trainer_cls = GRPOTrainer
    tokenizer = build_tokenizer()
    model = build_model(shape, device, tokenizer)
    args = GRPOConfig(
        output_dir=out_dir,
        per_device_train_batch_size=shape.completions,
        num_generations=shape.completions,
        max_completion_length=shape.completion_len,
        learning_rate=1e-6,
        bf16=device == "cuda",
        use_cpu=device != "cuda",
        gradient_checkpointing=True,
        report_to="none",
        save_strategy="no",
        logging_steps=1,
        disable_tqdm=True,
    )
    dataset = Dataset.from_dict({"prompt": ["What is 2 + 3?"] * shape.completions})
    return trainer_cls(
        model=model,
        reward_funcs=lambda completions, **kw: [0.0] * len(completions),
        args=args,
        train_dataset=dataset,
        processing_class=tokenizer,
    )


def synthetic_batch(shape: TrainerShape, completion_len: int, device: str, seed: int = 0) -> dict[str, torch.Tensor]:
    """What ``_generate_and_score_completions`` would hand ``compute_loss``: ids, masks, advantages, token count."""
    gen = torch.Generator(device="cpu").manual_seed(seed)
    b = shape.completions
    completion_mask = torch.ones(b, completion_len, dtype=torch.int64)
    return {
        "prompt_ids": torch.randint(0, shape.vocab, (b, shape.prompt_len), generator=gen).to(device),
        "prompt_mask": torch.ones(b, shape.prompt_len, dtype=torch.int64, device=device),
        "completion_ids": torch.randint(0, shape.vocab, (b, completion_len), generator=gen).to(device),
        "completion_mask": completion_mask.to(device),
        "advantages": torch.randn(b, generator=gen).to(device),
        "num_items_in_batch": completion_mask.sum().to(device),
    }


class EagerLogProbs:
    """Stands in for ``trl.trainer.utils._ChunkedLogProbFunction``: materialized logits, trl <= 1.13's math."""

    @staticmethod
    def apply(hidden, weight, bias, targets, temperature, chunk_size, softcap, logit_scale, outputs):  # noqa: ANN001, ANN205
        del chunk_size
        logits = hidden @ weight.to(hidden.dtype).T
        if bias is not None:
            logits = logits + bias
        logits = logits * logit_scale
        if softcap is not None:
            logits = softcap * torch.tanh(logits / softcap)
        if temperature != 1.0:
            logits = logits / temperature
        # trl <= 1.13 looped over sequences of [T, V]; 1024-row pieces stand in for them (rows arrive flattened).
        logp = torch.cat(
            [selective_log_softmax(z[None], t[None])[0] for z, t in zip(logits.split(1024), targets.split(1024))]
        ).float()
        entropy = None
        if "entropy" in outputs:
            with torch.no_grad():
                entropy = entropy_from_logits(logits).float()
        return logp, entropy, None, None, None


@contextlib.contextmanager
def variant_context(variant: str) -> Iterator[None]:
    """Put the eager op in place of trl's chunked head for the ``eager`` variant, and restore it afterwards."""
    if variant != "eager":
        yield
        return
    import trl.trainer.utils as trl_utils

    saved = trl_utils._ChunkedLogProbFunction
    trl_utils._ChunkedLogProbFunction = EagerLogProbs
    try:
        yield
    finally:
        trl_utils._ChunkedLogProbFunction = saved


class StepRunner:
    """One GRPO optimisation step (loss, backward, AdamW step, zero grads) of a trainer on a fixed batch."""

    def __init__(self, variant: str, shape: TrainerShape, device: str) -> None:
        self.variant, self.shape, self.device = variant, shape, device
        self._tmp = tempfile.TemporaryDirectory(prefix="fastgrpo-bench-")
        with variant_context(variant):
            self.trainer = make_trainer(variant, shape, device, self._tmp.name)
        self.model = self.trainer.model
        # Set by Trainer's training loop, which this step bypasses; read by trl's loss normalisation.
        self.trainer.current_gradient_accumulation_steps = 1
        self.model.train()
        if hasattr(self.model, "gradient_checkpointing_enable"):
            self.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=1e-6)

    def step(self, batch: dict[str, torch.Tensor]) -> float:
        with variant_context(self.variant):
            loss = self.trainer.compute_loss(self.model, batch)
            loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return float(loss.detach())

    def close(self) -> None:
        del self.trainer, self.model, self.optimizer
        self._tmp.cleanup()
