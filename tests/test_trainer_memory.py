"""A 151936-token vocabulary (Qwen2.5's) trains through FastGRPOTrainer without any [tokens, vocab] tensor.

Every tensor that any aten op produces during training (generation, old / ref / policy passes, backward, optimizer)
is watched with a TorchDispatchMode; the largest must stay well below the logits' size. A control run of the plain
model forward shows the watcher does see full logits.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from _parity import base_config, tokenizer_dir
from _tiny import build_model, id_reward, prompt_dataset
from torch.utils._python_dispatch import TorchDispatchMode

pytestmark = pytest.mark.slow
VOCAB = 151936


class LargestTensor(TorchDispatchMode):
    """Records the largest tensor (in elements) any op returns, and the op that returned it."""

    def __init__(self) -> None:
        super().__init__()
        self.numel = 0
        self.op = ""

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor) and t.numel() > self.numel:
                self.numel, self.op = t.numel(), str(func)
        return out


def test_151936_vocab_trains_without_token_by_vocab_tensor(tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM

    from fastgrpo import FastGRPOTrainer

    _, tok = tokenizer_dir()
    path = tmp_path / "big-vocab"
    tok.save_pretrained(str(path))
    build_model(path, tok, vocab_size=VOCAB, hidden_size=16)
    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32)
    completion_len = 48
    args = base_config(
        str(tmp_path / "out"),
        max_steps=2,
        max_completion_length=completion_len,
        beta=0.04,
        num_iterations=2,
        per_device_train_batch_size=4,
        num_generations=4,
    )
    trainer = FastGRPOTrainer(
        model=model,
        reward_funcs=id_reward,
        args=args,
        train_dataset=prompt_dataset(8),
        processing_class=tok,
        fastgrpo_backend="torch",
    )
    before = trainer.model.model.embed_tokens.weight.detach().clone()
    watcher = LargestTensor()
    with watcher:
        trainer.train()
    tokens = 4 * completion_len  # at least this many positions per micro-batch (prompt positions come on top)
    logits_numel = tokens * VOCAB
    print(f"largest tensor: {watcher.numel} elements ({watcher.op}); logits: {logits_numel}")
    assert watcher.numel < logits_numel / 4, (
        f"largest tensor during training: {watcher.numel} elements from {watcher.op}; [tokens, vocab] logits of one "
        f"micro-batch would be >= {logits_numel}"
    )
    assert not torch.equal(trainer.model.model.embed_tokens.weight, before)  # it did train
    assert all(entry.get("grad_norm", 1.0) > 0 for entry in trainer.state.log_history if "grad_norm" in entry)

    # Control: the watcher sees the full logits of a plain forward at the same shape.
    control = LargestTensor()
    ids = torch.randint(0, 300, (4, completion_len))
    with control, torch.no_grad():
        trainer.model(input_ids=ids)
    assert control.numel >= logits_numel
