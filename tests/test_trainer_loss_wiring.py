"""The fused-loss path against trl's own ``_compute_loss`` on the same trainer and batch, for inputs that CPU training
runs cannot produce: the vLLM importance-sampling ratio, vLLM sampling log-probs, tool masks, a stale old policy.

Both sides use fastgrpo's log-probs, so the comparison isolates the loss wiring (options, tensors, normalisers,
metrics). Loss, every parameter gradient and every metric trl logs must agree.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from _parity import Case, base_config, make_model_dir
from _tiny import id_reward, prompt_dataset

from fastgrpo.integration import loss as fused


def _trainer(tmp_path: Path, **config: Any) -> Any:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from fastgrpo import FastGRPOTrainer

    path = make_model_dir(Case("wiring"), tmp_path)
    return FastGRPOTrainer(
        model=AutoModelForCausalLM.from_pretrained(str(path)),
        reward_funcs=id_reward,
        args=base_config(str(tmp_path / "out"), **config),
        train_dataset=prompt_dataset(4),
        processing_class=AutoTokenizer.from_pretrained(str(path)),
        fastgrpo_backend="torch",
    )


def _batch(trainer: Any, *, vllm: bool, tools: bool) -> dict[str, Any]:
    trainer.model.train()
    trainer.current_gradient_accumulation_steps = 2  # set by Trainer.train(); 2 exercises the accumulation scaling
    rows = [{"prompt": p} for p in prompt_dataset(4)["prompt"]]
    inputs = trainer._generate_and_score_completions(rows)
    g = torch.Generator().manual_seed(5)
    mask = inputs["completion_mask"]
    shape = mask.shape
    with torch.no_grad():
        logps, _, _ = trainer._get_per_token_logps_and_entropies(
            trainer.model,
            torch.cat([inputs["prompt_ids"], inputs["completion_ids"]], 1),
            torch.cat([inputs["prompt_mask"], mask], 1),
            shape[1],
        )
    # a stale old policy, so ratios move away from 1 and clipping / masks have something to do
    inputs["old_per_token_logps"] = logps + 0.3 * torch.randn(shape, generator=g)
    if vllm:
        trainer.use_vllm = True
        trainer.vllm_importance_sampling_correction = True
        inputs["sampling_per_token_logps"] = logps + 0.2 * torch.randn(shape, generator=g)
        inputs["importance_sampling_ratio"] = torch.rand(shape, generator=g) + 0.5
    if tools:
        tool_mask = torch.ones_like(mask)
        tool_mask[:, 1:3] = 0
        inputs["tool_mask"] = tool_mask
    return inputs


def _run(trainer: Any, inputs: dict[str, Any], fn: Any) -> tuple[torch.Tensor, dict[str, torch.Tensor], dict]:
    trainer.model.zero_grad()
    for values in trainer._metrics["train"].values():
        values.clear()
    loss = fn(trainer.model, inputs)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in trainer.model.named_parameters() if p.grad is not None}
    metrics = {k: list(v) for k, v in trainer._metrics["train"].items() if v}
    return loss.detach(), grads, metrics


CONFIGS = [
    ("grpo", dict(loss_type="grpo", beta=0.04, off_policy_mask_threshold=0.05), True, True),
    ("dapo", dict(loss_type="dapo", epsilon_high=0.28, delta=1.2), True, False),
    ("cispo", dict(loss_type="cispo", epsilon_high=1.1), True, True),
    ("vespo", dict(loss_type="vespo"), True, False),
    ("sapo", dict(loss_type="sapo", beta=0.02, top_entropy_quantile=0.5), False, True),
    ("luspo", dict(loss_type="luspo", importance_sampling_level="sequence"), True, True),
    ("bnpo", dict(loss_type="bnpo", entropy_coef=0.1), False, True),
    ("dr_grpo", dict(loss_type="dr_grpo", use_bias_correction_kl=False, beta=0.04), True, False),
]


@pytest.mark.parametrize("name, config, vllm, tools", CONFIGS, ids=[c[0] for c in CONFIGS])
def test_fused_loss_matches_trl_compute_loss(tmp_path: Path, name: str, config: dict, vllm: bool, tools: bool) -> None:
    trainer = _trainer(tmp_path, gradient_accumulation_steps=2, **config)
    inputs = _batch(trainer, vllm=vllm, tools=tools)
    loss_f, grads_f, metrics_f = _run(trainer, inputs, lambda m, x: fused.compute_fused_loss(trainer, m, x))
    loss_t, grads_t, metrics_t = _run(trainer, inputs, trainer._compute_loss)
    torch.testing.assert_close(loss_f, loss_t, rtol=1e-5, atol=1e-7)
    assert grads_f.keys() == grads_t.keys() and grads_t
    for key in grads_t:
        torch.testing.assert_close(grads_f[key], grads_t[key], rtol=1e-4, atol=1e-7, msg=key)
    assert metrics_f.keys() == metrics_t.keys(), (metrics_f.keys(), metrics_t.keys())
    for key in metrics_t:
        assert metrics_f[key] == pytest.approx(metrics_t[key], rel=1e-5, abs=1e-7, nan_ok=True), key


def test_per_token_advantages_fall_back_to_trl_math(tmp_path: Path) -> None:
    trainer = _trainer(tmp_path, loss_type="grpo")
    inputs = _batch(trainer, vllm=False, tools=False)
    inputs["advantages"] = inputs["advantages"][:, None].expand_as(inputs["completion_mask"]).contiguous()
    assert fused.compute_fused_loss(trainer, trainer.model, inputs) is None
    loss = trainer.compute_loss(trainer.model, inputs)  # FastGRPOTrainer.compute_loss: trl's math for this batch
    torch.testing.assert_close(loss, trainer._compute_loss(trainer.model, inputs))
