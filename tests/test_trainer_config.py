"""FastGRPOTrainer construction: backend / loss-path choice, fallback logging, and clear errors on bad configuration."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest
from _parity import Case, base_config, make_model_dir, trl_reasons
from _tiny import id_reward, prompt_dataset


def _build(tmp_path: Path, cls: Any = None, *, peft_config: Any = None, **kwargs: Any) -> Any:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from fastgrpo import FastGRPOTrainer

    path = make_model_dir(Case("config"), tmp_path)
    return (cls or FastGRPOTrainer)(
        model=AutoModelForCausalLM.from_pretrained(str(path)),
        reward_funcs=id_reward,
        args=base_config(str(tmp_path / "out"), max_steps=1, **kwargs.pop("config", {})),
        train_dataset=prompt_dataset(4),
        processing_class=AutoTokenizer.from_pretrained(str(path)),
        peft_config=peft_config,
        **kwargs,
    )


def test_backend_from_argument_env_and_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from fastgrpo.integration.head import fused_head_config

    monkeypatch.delenv("FASTGRPO_BACKEND", raising=False)
    assert fused_head_config(_build(tmp_path).model).backend == "auto"
    monkeypatch.setenv("FASTGRPO_BACKEND", "torch")
    trainer = _build(tmp_path, config=dict(beta=0.04))
    assert fused_head_config(trainer.model).backend == "torch"
    assert fused_head_config(trainer.ref_model).backend == "torch"
    assert fused_head_config(trainer.ref_model).entropy is False
    assert fused_head_config(_build(tmp_path, fastgrpo_backend="triton").model).backend == "triton"


def test_bad_backend_and_loss_path_fail_at_construction(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValueError, match=r"fastgrpo_backend must be one of \('auto', 'triton', 'torch'\), got 'gpu'"):
        _build(tmp_path, fastgrpo_backend="gpu")
    monkeypatch.setenv("FASTGRPO_BACKEND", "cuda")
    with pytest.raises(ValueError, match=r"\$FASTGRPO_BACKEND must be one of"):
        _build(tmp_path)
    monkeypatch.delenv("FASTGRPO_BACKEND")
    with pytest.raises(ValueError, match=r"fastgrpo_loss must be one of \('auto', 'trl'\)"):
        _build(tmp_path, fastgrpo_loss="liger")


def test_unsupported_trl_fails_at_construction(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import trl

    for version in ("1.9.2", "2.0.0", "0.29.1"):
        monkeypatch.setattr(trl, "__version__", version)
        with pytest.raises(RuntimeError, match=rf"supports trl >=1\.10,<2, but trl {version} is installed"):
            _build(tmp_path)


def test_lm_head_adapter_is_rejected(tmp_path: Path) -> None:
    from peft import LoraConfig

    config = LoraConfig(r=2, target_modules=["q_proj", "lm_head"], lora_dropout=0.0)
    with pytest.raises(ValueError, match="lm_head"):
        _build(tmp_path, peft_config=config, fastgrpo_backend="torch")


def test_frozen_head_under_lora_gets_no_gradient(tmp_path: Path) -> None:
    from peft import LoraConfig

    trainer = _build(tmp_path, peft_config=LoraConfig(r=2, target_modules=["q_proj"]), fastgrpo_backend="torch")
    head = trainer.model.get_base_model().get_output_embeddings()
    assert not head.weight.requires_grad
    trainer.train()
    assert head.weight.grad is None


def test_subclass_overriding_compute_loss_falls_back_and_says_why(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from fastgrpo import FastGRPOTrainer

    calls = []

    class Custom(FastGRPOTrainer):
        def _compute_loss(self, model: Any, inputs: Any) -> Any:
            calls.append(1)
            return super()._compute_loss(model, inputs)

    with caplog.at_level(logging.WARNING, logger="fastgrpo"):
        trainer = _build(tmp_path, Custom, fastgrpo_backend="torch")
    assert trainer._fastgrpo_loss_fallback == ["Custom overrides _compute_loss", *trl_reasons()]
    assert "because of: Custom overrides _compute_loss" in caplog.text
    trainer.train()
    assert calls, "the subclass's _compute_loss must be used"


def test_default_configuration_uses_fused_loss_without_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="fastgrpo"):
        trainer = _build(tmp_path, fastgrpo_backend="torch")
    assert trainer._fastgrpo_loss_fallback == trl_reasons()  # [] on a release verified for the fused loss
    if not trl_reasons():
        assert not [r.getMessage() for r in caplog.records if r.name == "fastgrpo"]
