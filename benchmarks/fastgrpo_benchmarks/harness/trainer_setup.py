"""Offline trl trainers for the trainer-step case: random Qwen2.5-shaped models, a tokenizer trained in-process,
synthetic batches (no generation, no collator), and one optimisation step through the trainer's own ``compute_loss``.

Trainer kinds (``TRAINER_KINDS``): ``grpo`` (``GRPOTrainer``, trl's defaults: dapo, beta = 0; row mode ``step``),
``sft`` (``SFTTrainer``, nll on the completion tokens; mode ``sft_step``) and ``dpo`` (``DPOTrainer``, sigmoid loss
with a reference model, ``completions // 2`` preference pairs so a step scores as many tokens as GRPO's; mode
``dpo_step``).

Variants: ``trl_chunked`` = the stock trl 1.16 trainer (its chunked head); ``eager`` (GRPO only) = the same trainer
with the materialized-logits op of trl <= 1.13 put in place of the chunked head (trl 1.10-1.14 cannot be installed
next to 1.16 in one environment; the device image has no registry to build a second one); ``fastgrpo`` =
``fastgrpo.FastGRPOTrainer`` for GRPO, and trl's own SFT / DPO trainer built while ``fastgrpo.patch_trl()`` is in
effect (undone when the runner closes). bf16 weights on GPU, gradient checkpointing on (as on small GPUs, so the
head's memory is what differs), AdamW.
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
TRAINER_KINDS = ("grpo", "sft", "dpo")
# The variants each kind runs, and its rows' ``mode``.
KIND_VARIANTS = {"grpo": TRAINER_VARIANTS, "sft": ("fastgrpo", "trl_chunked"), "dpo": ("fastgrpo", "trl_chunked")}
KIND_MODES = {"grpo": "step", "sft": "sft_step", "dpo": "dpo_step"}


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


def _common_args(device: str, out_dir: str, batch: int) -> dict[str, Any]:
    """TrainingArguments keywords every trainer step shares (GRPO, SFT, DPO): same precision, checkpointing, lr."""
    return dict(
        output_dir=out_dir,
        per_device_train_batch_size=batch,
        learning_rate=1e-6,
        bf16=device == "cuda",
        use_cpu=device != "cuda",
        gradient_checkpointing=True,
        report_to="none",
        save_strategy="no",
        logging_steps=1,
        disable_tqdm=True,
    )


def make_sft_dpo_trainer(kind: str, shape: TrainerShape, device: str, out_dir: str) -> Any:
    """trl's SFTTrainer / DPOTrainer around a fresh random model (DPO: a copy of it as the reference model)."""
    import copy

    from datasets import Dataset

    tokenizer = build_tokenizer()
    model = build_model(shape, device, tokenizer)
    if kind == "sft":
        from trl import SFTConfig, SFTTrainer

        args = SFTConfig(**_common_args(device, out_dir, shape.completions))
        dataset = Dataset.from_dict({"text": ["What is 2 + 3? The answer is 5."] * shape.completions})
        return SFTTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer)
    from trl import DPOConfig, DPOTrainer

    pairs = max(1, shape.completions // 2)
    args = DPOConfig(**_common_args(device, out_dir, pairs))
    dataset = Dataset.from_dict({"prompt": ["What is 2 + 3?"] * pairs, "chosen": [" 5"] * pairs,
                                 "rejected": [" 6"] * pairs})  # fmt: skip
    ref_model = copy.deepcopy(model).eval().requires_grad_(False)
    return DPOTrainer(model=model, ref_model=ref_model, args=args, train_dataset=dataset, processing_class=tokenizer)


def make_trainer(variant: str, shape: TrainerShape, device: str, out_dir: str, kind: str = "grpo") -> Any:
    """Construct the variant's trainer around a fresh random model (SFT / DPO: ``make_sft_dpo_trainer``)."""
    if kind != "grpo":
        return make_sft_dpo_trainer(kind, shape, device, out_dir)
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    if variant == "fastgrpo":
        from fastgrpo import FastGRPOTrainer as trainer_cls
    else:
        trainer_cls = GRPOTrainer
    tokenizer = build_tokenizer()
    model = build_model(shape, device, tokenizer)
    args = GRPOConfig(
        **_common_args(device, out_dir, shape.completions),
        num_generations=shape.completions,
        max_completion_length=shape.completion_len,
    )
    dataset = Dataset.from_dict({"prompt": ["What is 2 + 3?"] * shape.completions})
    return trainer_cls(
        model=model,
        reward_funcs=lambda completions, **kw: [0.0] * len(completions),
        args=args,
        train_dataset=dataset,
        processing_class=tokenizer,
    )


def synthetic_batch(
    shape: TrainerShape, completion_len: int, device: str, seed: int = 0, kind: str = "grpo"
) -> dict[str, torch.Tensor]:
    """What the trainer's data path would hand ``compute_loss``. GRPO (``_generate_and_score_completions``): ids,
    masks, advantages, token count. SFT (its collator, completion-only loss): ``input_ids``, ``attention_mask`` and
    ``labels`` at -100 on the prompt. DPO (its preference collator): chosen rows then rejected rows of ``input_ids``,
    ``attention_mask`` and ``completion_mask``."""
    gen = torch.Generator(device="cpu").manual_seed(seed)
    b = shape.completions
    if kind != "grpo":
        length = shape.prompt_len + completion_len
        rows = b if kind == "sft" else 2 * max(1, b // 2)
        ids = torch.randint(0, shape.vocab, (rows, length), generator=gen)
        completion = torch.zeros(rows, length, dtype=torch.int64)
        completion[:, shape.prompt_len :] = 1
        out = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
        if kind == "sft":
            out["labels"] = ids.masked_fill(completion == 0, -100)
        else:
            out["completion_mask"] = completion
        return {k: v.to(device) for k, v in out.items()}
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


def fastgrpo_backend(device: str) -> str:
    # On CPU the torch path, whatever TRITON_INTERPRET says (as the op cases: peers/fastgrpo.py).
    return "auto" if device == "cuda" else "torch"


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
    """One optimisation step (loss, backward, AdamW step, zero grads) of a trainer on a fixed batch."""

    def __init__(self, variant: str, shape: TrainerShape, device: str, kind: str = "grpo") -> None:
        if variant not in KIND_VARIANTS.get(kind, ()):
            raise ValueError(f"no {variant!r} variant of the {kind!r} trainer step; choose one of {KIND_VARIANTS}")
        self.variant, self.shape, self.device, self.kind = variant, shape, device, kind
        self._tmp = tempfile.TemporaryDirectory(prefix="fastgrpo-bench-")
        self._patched = False
        if kind != "grpo" and variant == "fastgrpo":
            import fastgrpo

            # trl's SFT / DPO trainers install their fused head at construction: patched then, unpatched in close().
            fastgrpo.patch_trl(backend=fastgrpo_backend(device))
            self._patched = True
        try:
            with variant_context(variant):
                self.trainer = make_trainer(variant, shape, device, self._tmp.name, kind)
            if self._patched:
                from fastgrpo.integration.head import fused_head_config

                # A fastgrpo row must time fastgrpo's head, never trl's under fastgrpo's name.
                if fused_head_config(self.trainer.model) is None:
                    raise RuntimeError(f"fastgrpo.patch_trl() did not put fastgrpo's head on trl's {kind} trainer")
        except BaseException:
            self._unpatch()
            raise
        self.model = self.trainer.model
        # Set by Trainer's training loop, which this step bypasses; read by trl's loss normalisation.
        self.trainer.current_gradient_accumulation_steps = 1
        self.model.train()
        if hasattr(self.model, "gradient_checkpointing_enable"):
            self.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=1e-6)

    def step(self, batch: dict[str, torch.Tensor]) -> float:
        with variant_context(self.variant):
            loss = self.trainer.compute_loss(self.model, dict(batch))  # SFT's compute_loss adds keys to its inputs
            loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return float(loss.detach())

    def _unpatch(self) -> None:
        if self._patched:
            import fastgrpo

            fastgrpo.unpatch_trl()
            self._patched = False

    def close(self) -> None:
        del self.trainer, self.model, self.optimizer
        self._unpatch()
        self._tmp.cleanup()
