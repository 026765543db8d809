"""Parity with stock trl for every trainer patch_trl() routes through fastgrpo's fused head (trl >= 1.15).

Tiny model, same seeds, 3 SGD steps each, stock trl against the same trainer under ``fastgrpo.patch_trl()`` (trl's
own head made to raise, so every fused call is fastgrpo's): every logged metric within 1e-5 relative,
``mean_token_accuracy`` exactly equal on fixtures whose scored rows all have a target-vs-best-other logit gap
> 1e-4, per-weight updates within 1e-4 of that weight's max|dw|.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from _trl_trainers import TrainerCase, check_case

trl = pytest.importorskip("trl")
from fastgrpo.integration._compat import trl_has_fused_head  # noqa: E402

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not trl_has_fused_head(), reason="trl < 1.15 has no fused head for these trainers"),
]

# KTO's kl and rewards are differences of summed log-probs ~1e4 x larger (see _trl_trainers.TrainerCase).
_LOGPS = ("logps/chosen", "logps/rejected")
KTO_CANCELLATION = {
    "kl": (_LOGPS, 1.0),
    **{f"rewards/{k}": (_LOGPS, 0.1) for k in ("chosen", "rejected", "margins")},  # x KTOConfig.beta
}

CASES = [
    TrainerCase("sft", "sft"),
    TrainerCase("sft_lora_frozen_head_gc", "sft", lora=True, config=dict(gradient_checkpointing=True)),
    TrainerCase("sft_lora_modules_to_save_head", "sft", lora=True, modules_to_save=True),
    TrainerCase("sft_packing_padding_free", "sft", config=dict(packing=True, per_device_train_batch_size=2)),
    TrainerCase("dpo_sigmoid_ref", "dpo", config=dict(loss_type=["sigmoid"], beta=0.1)),
    TrainerCase("dpo_wpo", "dpo", config=dict(use_weighting=True)),
    TrainerCase("kto", "kto", cancellation=KTO_CANCELLATION),
    TrainerCase("rloo_beta", "rloo", config=dict(beta=0.05)),
]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_trainer_parity_with_stock_trl(case: TrainerCase, tmp_path: Path) -> None:
    check_case(case, tmp_path)


def test_patch_after_build_keeps_trls_head_and_unpatch_restores_live_trainers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A trainer built before patch_trl() keeps trl's head (it built it when the name was trl's); one built while
    patched scores through fastgrpo's, and through trl's again after unpatch_trl()."""
    import trl.trainer.utils as trl_utils
    from _trl_trainers import build

    import fastgrpo
    import fastgrpo.integration.head as head
    from fastgrpo.integration.head import fused_head_config

    calls = {"trl": 0, "fastgrpo": 0}
    real_trl, real_fast = trl_utils._ChunkedLogProbFunction, head.linear_logprobs

    class CountingTrl:
        @staticmethod
        def apply(*args: object) -> object:
            calls["trl"] += 1
            return real_trl.apply(*args)

    def counting_fast(*args: object, **kwargs: object) -> object:
        calls["fastgrpo"] += 1
        return real_fast(*args, **kwargs)

    monkeypatch.setattr(trl_utils, "_ChunkedLogProbFunction", CountingTrl)
    monkeypatch.setattr(head, "linear_logprobs", counting_fast)
    case = TrainerCase("lifecycle", "sft", config=dict(max_steps=1))
    before = build(case, tmp_path)
    fastgrpo.patch_trl(backend="torch")
    try:
        during = build(case, tmp_path)
        assert fused_head_config(before.model) is None and fused_head_config(during.model) is not None
        before.train()
        assert calls == {"trl": 1, "fastgrpo": 0}, calls
        during.train()
        assert calls == {"trl": 1, "fastgrpo": 1}, calls
    finally:
        fastgrpo.unpatch_trl()
    assert fused_head_config(during.model) is None
    during.train()
    assert calls == {"trl": 2, "fastgrpo": 1}, calls
