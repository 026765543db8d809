"""A 151936-token vocabulary (Qwen2.5's) trains through FastGRPOTrainer without any [tokens, vocab] tensor, and
trl's SFT and DPO trainers patched by ``fastgrpo.patch_trl()`` produce no tensor as large as stock trl's largest.

Every tensor that any aten op produces during training (generation, old / ref / policy passes, backward, optimizer)
is watched with a TorchDispatchMode; the largest must stay well below the logits' size. A control run of the plain
model forward shows the watcher does see full logits.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from _parity import base_config, fastgrpo_only, tokenizer_dir
from _sft_dpo_data import dpo_config, dpo_dataset, sft_config, sft_dataset
from _tiny import build_model, id_reward, prompt_dataset
from torch.utils._python_dispatch import TorchDispatchMode

pytestmark = pytest.mark.slow
VOCAB = 151936


class LargestTensor(TorchDispatchMode):
    """Records the largest tensor (in elements) any op returns, and the op that returned it.

    A custom op (fastgrpo's ``fastgrpo::linear_logprobs_fwd`` / ``_bwd``) is one op to a dispatch mode, which would
    hide its temporaries; its Python implementation runs here under the mode instead, so every aten op inside it
    (the chunked torch path's tiles) is seen too.
    """

    def __init__(self) -> None:
        super().__init__()
        self.numel = 0
        self.op = ""

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        from torch._library.custom_ops import OPDEFS

        opdef = OPDEFS.get(f"{func.namespace}::{func._opname}") if func.namespace != "aten" else None
        if opdef is not None:
            with self:
                out = opdef._init_fn(*args, **(kwargs or {}))
        else:
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


# SFT / DPO: one micro-batch of 8 sequences truncated to 48 tokens (DPO: 4 pairs, chosen and rejected concatenated).
# On CPU, trl's head projects every position through a [rows, 32768] tile (rows = all 8 x 47 positions);
# fastgrpo's torch path keeps a tile within 2^22 elements whatever the rows, and projects only labelled rows. Hidden
# 16 keeps the [V, H] weight and its gradient (2.4M elements) below both tiles: what is compared is the head's
# workspace, at Qwen2.5's vocabulary.
SEQS, MAX_LEN = 8, 48


def _build_trainer(kind: str, path: Path, out: str, tok: Any) -> Any:
    from transformers import AutoModelForCausalLM
    from trl import DPOTrainer, SFTTrainer

    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32)
    if kind == "sft":
        args = sft_config(out, max_steps=1, per_device_train_batch_size=SEQS, max_length=MAX_LEN)
        return SFTTrainer(model=model, args=args, train_dataset=sft_dataset(SEQS), processing_class=tok)
    args = dpo_config(out, max_steps=1, per_device_train_batch_size=SEQS // 2, max_length=MAX_LEN)
    return DPOTrainer(model=model, args=args, train_dataset=dpo_dataset(SEQS // 2), processing_class=tok)


def _largest_in_training(kind: str, path: Path, out: str, tok: Any) -> tuple[LargestTensor, Any]:
    trainer = _build_trainer(kind, path, out, tok)
    before = {k: v.detach().clone() for k, v in trainer.model.named_parameters()}
    watcher = LargestTensor()
    with watcher:
        trainer.train()
    moved = max((p.detach() - before[k]).abs().max().item() for k, p in trainer.model.named_parameters())
    assert moved > 0, f"{kind}: training did not change any weight"
    return watcher, trainer


@pytest.mark.parametrize("kind", ["sft", "dpo"])
def test_151936_vocab_trl_trainer_step_below_stock(tmp_path: Path, kind: str) -> None:
    import fastgrpo

    _, tok = tokenizer_dir()
    path = tmp_path / "big-vocab"
    tok.save_pretrained(str(path))
    build_model(path, tok, vocab_size=VOCAB, hidden_size=16)

    stock, _ = _largest_in_training(kind, path, str(tmp_path / "stock"), tok)
    fastgrpo.patch_trl(backend="torch")
    try:
        with fastgrpo_only("torch") as calls:  # trl's own head raises if it runs
            fast, trainer = _largest_in_training(kind, path, str(tmp_path / "fast"), tok)
    finally:
        fastgrpo.unpatch_trl()
    assert calls["linear_logprobs"] > 0, "fastgrpo's head never ran"
    rows = SEQS * (MAX_LEN - 1)
    print(
        f"{kind}: largest tensor stock trl {stock.numel} elements ({stock.op}), "
        f"fastgrpo {fast.numel} ({fast.op}); ratio {fast.numel / stock.numel:.3f}; [rows, vocab] = {rows * VOCAB}"
    )
    # The control: stock trl's own tile is what this measures (at least [rows, 32768], above the weight's size).
    assert stock.numel >= rows * 32768 > VOCAB * 16, (stock.numel, stock.op)
    assert fast.numel < stock.numel, (
        f"{kind}: fastgrpo's largest tensor ({fast.numel} elements from {fast.op}) is not below stock trl's "
        f"({stock.numel} from {stock.op})"
    )
    assert fast.numel < rows * VOCAB / 4
    assert all(e.get("grad_norm", 1.0) > 0 for e in trainer.state.log_history if "grad_norm" in e)


def test_watcher_sees_inside_fastgrpo_custom_ops() -> None:
    """The chunked torch path's [rows, vocab-chunk] tile, produced inside fastgrpo's custom op, is what it records."""
    import fastgrpo

    h = torch.randn(376, 16, requires_grad=True)
    w = torch.randn(VOCAB, 16, requires_grad=True)
    watcher = LargestTensor()
    with watcher:
        fastgrpo.linear_logprobs(h, w, torch.randint(0, VOCAB, (376,)), backend="torch").logp.sum().backward()
    assert watcher.numel > VOCAB * 16, (watcher.numel, watcher.op)  # a tile larger than the weight's gradient
    assert watcher.op.startswith("aten."), watcher.op
