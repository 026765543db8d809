"""Tiny offline models, tokenizers and datasets for trainer tests (no hub access).

Everything here is built in-process: a byte-level BPE tokenizer trained on a few sentences with ChatML special tokens
and a chat template, and tiny random-weight causal LMs (Qwen2, and Gemma 2 / Cohere for logit softcapping and logit
scaling) saved to a directory so that trl can re-create the reference model from the path, as it does for hub ids.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")

CHAT_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
_CORPUS = [
    "What is 2 + 3? The answer is 5.",
    "<reasoning> add the numbers </reasoning> <answer> 12 </answer>",
    "Tom has 4 apples and buys 7 more. How many apples does he have?",
    "system user assistant Respond in the following format",
    "0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20 plus minus times",
]


def build_tokenizer(path: str | Path) -> Any:
    """Train a byte-level BPE tokenizer in-process, wrap it as a fast HF tokenizer and save it to ``path``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=320, special_tokens=SPECIAL_TOKENS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(_CORPUS, trainer=trainer)
    hf_tok = PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>", bos_token=None, unk_token=None
    )
    hf_tok.chat_template = CHAT_TEMPLATE
    hf_tok.padding_side = "left"
    hf_tok.save_pretrained(str(path))
    return hf_tok


def build_model(
    path: str | Path,
    tokenizer: Any,
    *,
    family: str = "qwen2",
    vocab_size: int | None = None,
    hidden_size: int = 16,
    tie_word_embeddings: bool = False,
    seed: int = 0,
    **config_kwargs: Any,
) -> Any:
    """Build a tiny random causal LM (``family``: qwen2 / gemma2 / cohere / mixtral) in fp32, saved to ``path``."""
    import torch
    import transformers

    vocab = vocab_size if vocab_size is not None else len(tokenizer)
    common = dict(
        vocab_size=vocab,
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=config_kwargs.pop("num_key_value_heads", 1),
        max_position_embeddings=256,
        tie_word_embeddings=tie_word_embeddings,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.eos_token_id,
    )
    if family == "qwen2":
        config = transformers.Qwen2Config(**common, **config_kwargs)
        cls = transformers.Qwen2ForCausalLM
    elif family == "gemma2":
        config = transformers.Gemma2Config(head_dim=hidden_size // 2, **common, **config_kwargs)
        cls = transformers.Gemma2ForCausalLM
    elif family == "cohere":
        config = transformers.CohereConfig(**common, **config_kwargs)
        cls = transformers.CohereForCausalLM
    elif family == "mixtral":  # MoE: router load-balancing loss
        config = transformers.MixtralConfig(num_local_experts=2, num_experts_per_tok=1, **common, **config_kwargs)
        cls = transformers.MixtralForCausalLM
    else:
        raise ValueError(f"unknown family {family!r}")
    torch.manual_seed(seed)
    model = cls(config).to(torch.float32)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.save_pretrained(str(path))
    return model


def prompt_dataset(n: int = 8, conversational: bool = False) -> Any:
    """A few short arithmetic prompts, plain text or conversational."""
    from datasets import Dataset

    prompts = [f"What is {i} + {i + 3}?" for i in range(n)]
    if conversational:
        return Dataset.from_dict({"prompt": [[{"role": "user", "content": p}] for p in prompts]})
    return Dataset.from_dict({"prompt": prompts})


def id_reward(completions: list, completion_ids: list[list[int]], **kwargs: Any) -> list[float]:
    """A reward computed from the sampled ids (text rewards can be constant for random models)."""
    return [float(sum(ids) % 13) / 13.0 + 0.1 * len(ids) for ids in completion_ids]


def parity_reward(completions: list, completion_ids: list[list[int]], **kwargs: Any) -> list[float]:
    return [float(sum(1 for t in ids if t % 2 == 0)) for ids in completion_ids]
