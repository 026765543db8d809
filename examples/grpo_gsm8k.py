"""GRPO on GSM8K with fastgrpo: the classic recipe (Qwen2.5-1.5B-Instruct, XML answer format, format and
correctness rewards), trained by ``FastGRPOTrainer`` instead of trl's ``GRPOTrainer``: the same config and results,
with the lm_head log-probs, entropy, KL and GRPO loss computed without materializing ``[tokens, vocab]`` logits.

    python examples/grpo_gsm8k.py                      # full run: Qwen2.5-1.5B-Instruct on openai/gsm8k (GPU)
    python examples/grpo_gsm8k.py --tiny               # offline smoke run on CPU in about a minute
    accelerate launch examples/grpo_gsm8k.py           # multi-GPU

``--tiny`` builds a tiny random Qwen2 model, a byte-level BPE tokenizer and a few arithmetic prompts in-process, so
it needs neither the Hub nor a GPU. For an existing trl script, the one-line switch is ``fastgrpo.patch_trl()``
before the trainer is built.
"""

from __future__ import annotations

import argparse
import os
import re
import tempfile
from typing import Any

SYSTEM_PROMPT = """Respond in the following format:
<reasoning>
...
</reasoning>
<answer>
...
</answer>"""


# ----------------------------------------------------------------------------------------------------- data
def extract_xml_answer(text: str) -> str:
    answer = text.split("<answer>")[-1]
    answer = answer.split("</answer>")[0]
    return answer.strip()


def extract_hash_answer(text: str) -> str | None:
    if "####" not in text:
        return None
    return text.split("####")[1].strip().replace(",", "")


def to_chat(question: str, answer: str) -> dict[str, Any]:
    return {
        "prompt": [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": question}],
        "answer": answer,
    }


def gsm8k_dataset(split: str = "train") -> Any:
    from datasets import load_dataset

    data = load_dataset("openai/gsm8k", "main")[split]
    return data.map(lambda x: to_chat(x["question"], extract_hash_answer(x["answer"])))


def arithmetic_dataset(n: int = 16) -> Any:
    """A few GSM8K-style word problems with their answers, made in-process (``--tiny``)."""
    from datasets import Dataset

    rows = []
    for i in range(n):
        a, b = 3 + i, 2 * i + 1
        rows.append(to_chat(f"Tom has {a} apples and buys {b} more. How many apples does he have?", str(a + b)))
    return Dataset.from_list(rows)


# -------------------------------------------------------------------------------------------------- rewards
def _texts(completions: list[Any]) -> list[str]:
    return [c[0]["content"] if isinstance(c, list) else c for c in completions]


def correctness_reward_func(completions: list[Any], answer: list[str], **kwargs: Any) -> list[float]:
    return [2.0 if extract_xml_answer(r) == a else 0.0 for r, a in zip(_texts(completions), answer)]


def int_reward_func(completions: list[Any], **kwargs: Any) -> list[float]:
    return [0.5 if extract_xml_answer(r).isdigit() else 0.0 for r in _texts(completions)]


def strict_format_reward_func(completions: list[Any], **kwargs: Any) -> list[float]:
    pattern = r"^<reasoning>\n.*?\n</reasoning>\n<answer>\n.*?\n</answer>\n$"
    return [0.5 if re.match(pattern, r, flags=re.DOTALL) else 0.0 for r in _texts(completions)]


def soft_format_reward_func(completions: list[Any], **kwargs: Any) -> list[float]:
    pattern = r"<reasoning>.*?</reasoning>\s*<answer>.*?</answer>"
    return [0.5 if re.match(pattern, r, flags=re.DOTALL) else 0.0 for r in _texts(completions)]


def count_xml(text: str) -> float:
    count = 0.0
    if text.count("<reasoning>\n") == 1:
        count += 0.125
    if text.count("\n</reasoning>\n") == 1:
        count += 0.125
    if text.count("\n<answer>\n") == 1:
        count += 0.125
        count -= len(text.split("\n</answer>\n")[-1]) * 0.001
    if text.count("\n</answer>") == 1:
        count += 0.125
        count -= (len(text.split("\n</answer>")[-1]) - 1) * 0.001
    return count


def xmlcount_reward_func(completions: list[Any], **kwargs: Any) -> list[float]:
    return [count_xml(r) for r in _texts(completions)]


def digit_reward_func(completions: list[Any], **kwargs: Any) -> list[float]:
    """``--tiny`` only: the share of digits in the completion, so that a random model gets non-constant rewards."""
    return [sum(ch.isdigit() for ch in r) / max(len(r), 1) for r in _texts(completions)]


REWARD_FUNCS = [
    xmlcount_reward_func,
    soft_format_reward_func,
    strict_format_reward_func,
    int_reward_func,
    correctness_reward_func,
]


# ------------------------------------------------------------------------------------------------ tiny mode
CHAT_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def build_tiny_model(directory: str) -> str:
    """A byte-level BPE tokenizer trained in-process and a random 2-layer Qwen2, saved to ``directory``."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

    corpus = [SYSTEM_PROMPT, *(r["prompt"][1]["content"] for r in arithmetic_dataset(8)), "0123456789 <answer>"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(
        corpus,
        trainer=trainers.BpeTrainer(
            vocab_size=400,
            special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        ),
    )
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.padding_side = "left"
    tokenizer.save_pretrained(directory)
    torch.manual_seed(0)
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.eos_token_id,
    )
    model = Qwen2ForCausalLM(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.save_pretrained(directory)
    return directory


# --------------------------------------------------------------------------------------------------- main
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="offline CPU smoke run with a tiny random model")
    parser.add_argument("--model", default="Qwen/Qwen2.5-1.5B-Instruct")
    parser.add_argument("--output-dir", default=None)
    parser.add_argument("--max-steps", type=int, default=None)
    parser.add_argument(
        "--backend",
        default=None,
        choices=["auto", "triton", "torch"],
        help="fastgrpo kernel backend (default: $FASTGRPO_BACKEND or auto)",
    )
    parser.add_argument("--loss-type", default="grpo")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, float]:
    args = parse_args(argv)
    if args.tiny:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    from trl import GRPOConfig

    from fastgrpo import FastGRPOTrainer

    output_dir = args.output_dir or tempfile.mkdtemp(prefix="grpo-gsm8k-")
    if args.tiny:
        model = build_tiny_model(os.path.join(output_dir, "tiny-model"))
        dataset = arithmetic_dataset(16)
        config = GRPOConfig(
            output_dir=output_dir,
            learning_rate=1e-3,
            per_device_train_batch_size=4,
            num_generations=4,
            max_completion_length=24,
            max_steps=args.max_steps or 4,
            logging_steps=1,
            beta=0.04,
            loss_type=args.loss_type,
            use_cpu=True,
            bf16=False,
            report_to="none",
            save_strategy="no",
            seed=0,
            temperature=1.0,
        )
    else:
        model = args.model
        dataset = gsm8k_dataset()
        config = GRPOConfig(
            output_dir=output_dir,
            learning_rate=5e-6,
            adam_beta1=0.9,
            adam_beta2=0.99,
            weight_decay=0.1,
            warmup_ratio=0.1,
            lr_scheduler_type="cosine",
            logging_steps=1,
            bf16=True,
            per_device_train_batch_size=16,
            gradient_accumulation_steps=4,
            num_generations=16,
            max_completion_length=786,
            num_train_epochs=1,
            max_steps=args.max_steps or -1,
            save_steps=100,
            max_grad_norm=0.1,
            loss_type=args.loss_type,
            report_to="none",
            model_init_kwargs={"dtype": "bfloat16"},
        )
    reward_funcs = REWARD_FUNCS + [digit_reward_func] if args.tiny else REWARD_FUNCS
    trainer = FastGRPOTrainer(
        model=model, reward_funcs=reward_funcs, args=config, train_dataset=dataset, fastgrpo_backend=args.backend
    )
    result = trainer.train()
    grad_norms = [entry["grad_norm"] for entry in trainer.state.log_history if "grad_norm" in entry]
    print(
        f"fastgrpo GRPO GSM8K: {result.global_step} steps, train_loss={result.training_loss:.6f}, "
        f"max grad_norm={max(grad_norms, default=0.0):.6f}, loss path: "
        + (
            "fused"
            if not trainer._fastgrpo_loss_fallback
            else "trl (" + "; ".join(trainer._fastgrpo_loss_fallback) + ")"
        )
    )
    return {"train_loss": float(result.training_loss), "max_grad_norm": float(max(grad_norms, default=0.0))}


if __name__ == "__main__":
    main()
