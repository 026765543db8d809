"""The curves task: a tiny Qwen2 model learns to count, built in-process (no hub access).

Vocabulary: the digits 0-9, a few filler words, and the pad / eos specials (a word-level tokenizer built from a
fixed vocabulary). A prompt is a short run of consecutive digits ("3 4 5"); the reward is the fraction of the
completion's first ``COUNT_LEN`` tokens that continue the count (each token is the previous one plus one, mod 10,
the first one the prompt's last digit plus one; a non-digit breaks the chain). A random policy scores about
1/len(VOCAB) per token; the rule is a bigram (token -> next token), so a one-layer model learns it within a few
hundred GRPO steps on a CPU. The reward reads the completion ids, never the decoded text.
"""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")

PAD, EOS = "<pad>", "<eos>"
DIGITS = [str(d) for d in range(10)]
FILLERS = ["+", "=", "count", "next", "a", "b"]
VOCAB = [PAD, EOS, *DIGITS, *FILLERS]
DIGIT_ID0 = VOCAB.index("0")  # ids of "0".."9" are DIGIT_ID0 .. DIGIT_ID0 + 9
COUNT_LEN = 6  # tokens of the completion that are scored (= max_completion_length)


def build_tokenizer(path: str | Path) -> Any:
    """A word-level tokenizer over ``VOCAB`` (whitespace-split), saved to ``path`` as a fast HF tokenizer."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(VOCAB)}, unk_token=PAD))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    hf_tok = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS, pad_token=PAD, bos_token=None)
    hf_tok.padding_side = "left"
    hf_tok.save_pretrained(str(path))
    return hf_tok


def build_model(
    path: str | Path, tokenizer: Any, *, hidden: int = 32, layers: int = 1, seed: int = 0, **config_kwargs: Any
) -> Any:
    """A random-weight fp32 Qwen2 causal LM over ``VOCAB``, saved to ``path`` (trl re-creates the reference from it)."""
    import torch
    import transformers

    config = transformers.Qwen2Config(
        vocab_size=len(VOCAB),
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=64,
        tie_word_embeddings=False,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.eos_token_id,
        **config_kwargs,
    )
    torch.manual_seed(seed)
    model = transformers.Qwen2ForCausalLM(config).to(torch.float32)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.save_pretrained(str(path))
    tokenizer.save_pretrained(str(path))
    return model


def prompt_dataset(n: int = 64, seed: int = 0) -> Any:
    """``n`` prompts of 2-4 consecutive digits (mod 10), e.g. "7 8 9"."""
    from datasets import Dataset

    rng = random.Random(seed)
    prompts = []
    for _ in range(n):
        start, length = rng.randrange(10), rng.randint(2, 4)
        prompts.append(" ".join(str((start + i) % 10) for i in range(length)))
    return Dataset.from_dict({"prompt": prompts})


def decode(ids: list[int]) -> str:
    """The completion as words (special tokens shown), independent of the tokenizer's decoder."""
    return " ".join(VOCAB[i] if 0 <= i < len(VOCAB) else f"<{i}>" for i in ids)


def count_reward(prompts: list, completions: list, completion_ids: list[list[int]], **kwargs: Any) -> list[float]:
    """Fraction of the first ``COUNT_LEN`` completion tokens that continue the count (previous token + 1, mod 10).

    The chain starts at the prompt's last digit; a non-digit scores 0 and breaks it (the next token cannot score).
    """
    out = []
    for prompt, ids in zip(prompts, completion_ids):
        prev: int | None = int(prompt.split()[-1])
        hits = 0
        for tid in ids[:COUNT_LEN]:
            digit = tid - DIGIT_ID0 if 0 <= tid - DIGIT_ID0 <= 9 else None
            hits += int(digit is not None and prev is not None and digit == (prev + 1) % 10)
            prev = digit
        out.append(hits / COUNT_LEN)
    return out
