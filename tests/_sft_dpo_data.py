"""Tiny offline datasets and configs for SFT and DPO runs (memory test, distributed stage): no hub access.

Texts are random words of ``_tiny``'s tokenizer corpus, long enough that ``max_length`` truncates them, so every
sequence of a batch has the same length and the token counts are known in advance.
"""

from __future__ import annotations

import random
from typing import Any

_WORDS = [
    *["what", "is", "the", "answer", "add", "numbers", "apples", "buys", "more", "how", "many", "does", "he", "have"],
    *["system", "user", "assistant", "respond", "in", "following", "format", "plus", "minus", "times"],
    *(str(i) for i in range(21)),
]


def _text(rng: random.Random, words: int) -> str:
    return " ".join(rng.choice(_WORDS) for _ in range(words))


def sft_dataset(n: int, words: int = 80, seed: int = 0) -> Any:
    """``n`` plain-text examples of ``words`` random corpus words (more tokens than a short ``max_length``)."""
    from datasets import Dataset

    rng = random.Random(seed)
    return Dataset.from_dict({"text": [_text(rng, words) for _ in range(n)]})


def dpo_dataset(n: int, prompt_words: int = 6, completion_words: int = 40, seed: int = 0) -> Any:
    """``n`` preference pairs: a short prompt, and chosen / rejected completions of random corpus words."""
    from datasets import Dataset

    rng = random.Random(seed)
    rows: dict[str, list[str]] = {"prompt": [], "chosen": [], "rejected": []}
    for _ in range(n):
        rows["prompt"].append(_text(rng, prompt_words))
        rows["chosen"].append(" " + _text(rng, completion_words))
        rows["rejected"].append(" " + _text(rng, completion_words))
    return Dataset.from_dict(rows)


def common_args(output_dir: str, **overrides: Any) -> dict[str, Any]:
    """TrainingArguments keywords shared by the SFT and DPO runs: fp32 on CPU, plain SGD, no saving."""
    from _parity import CPU_TRAINING_ARGS

    kwargs: dict[str, Any] = dict(output_dir=output_dir, learning_rate=1.0, dataset_num_proc=None, **CPU_TRAINING_ARGS)
    kwargs.update(overrides)
    return kwargs


def sft_config(output_dir: str, **overrides: Any) -> Any:
    from trl import SFTConfig

    return SFTConfig(**common_args(output_dir, **{"max_length": 48, "packing": False, **overrides}))


def dpo_config(output_dir: str, **overrides: Any) -> Any:
    from trl import DPOConfig

    return DPOConfig(**common_args(output_dir, **{"max_length": 48, **overrides}))
