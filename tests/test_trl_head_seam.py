"""fastgrpo.add_fused_lm_head against trl's add_fused_lm_head, and patch_trl()'s head seam (trl >= 1.15).

Same outputs as trl's head for every per-token output, shifted and pre-shifted labels, num_items_in_batch, an
all-masked batch, softcap / temperature; gradients too. patch_trl() replaces the name in each trainer module (not in
trl.trainer.utils), reversibly; a changed head on the installed trl means trl's own head, with one WARNING; trainers
built before patch_trl() keep trl's head, trainers built while patched get trl's head back on unpatch_trl().
"""

from __future__ import annotations

import copy
import importlib
import logging
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from _parity import tokenizer_dir
from _tiny import build_model

import fastgrpo
from fastgrpo.integration import head as head_module
from fastgrpo.integration._compat import trl_has_fused_head
from fastgrpo.integration.head import HEAD_OUTPUTS, fused_head_config

pytestmark = pytest.mark.skipif(not trl_has_fused_head(), reason="trl < 1.15 has no add_fused_lm_head")


@pytest.fixture(autouse=True)
def _always_unpatch() -> Iterator[None]:
    yield
    fastgrpo.unpatch_trl()


def _model(tmp_path: Path, **kwargs: Any) -> Any:
    _, tok = tokenizer_dir()
    return build_model(tmp_path / "m", tok, **kwargs)


class _Count:
    """Counts calls of trl's ChunkedLogProbFunction (trl's head) and fastgrpo's linear_logprobs (fastgrpo's head)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        import trl.trainer.utils as trl_utils

        self.trl = self.fastgrpo = 0
        real_trl, real_fast = trl_utils._ChunkedLogProbFunction, head_module.linear_logprobs
        count = self

        class CountingTrl:
            @staticmethod
            def apply(*args: Any) -> Any:
                count.trl += 1
                return real_trl.apply(*args)

        def counting_fast(*args: Any, **kwargs: Any) -> Any:
            count.fastgrpo += 1
            return real_fast(*args, **kwargs)

        monkeypatch.setattr(trl_utils, "_ChunkedLogProbFunction", CountingTrl)
        monkeypatch.setattr(head_module, "linear_logprobs", counting_fast)


def _batch(vocab: int, *, all_masked: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(5)
    ids = torch.randint(0, vocab, (3, 9), generator=g)
    mask = torch.ones_like(ids)
    mask[0, :3] = 0  # left padding
    labels = ids.masked_fill(mask == 0, -100)
    labels[:, :4] = -100
    if all_masked:
        labels[:] = -100
    return ids, mask, labels


@pytest.mark.parametrize(
    "family, model_kwargs, temperature, cast, backend",
    [
        ("qwen2", {}, 0.7, False, "torch"),
        ("gemma2", {"final_logit_softcapping": 2.0, "tie_word_embeddings": True}, 1.0, True, "torch"),
        pytest.param("cohere", {"logit_scale": 0.3}, 0.8, False, "triton", marks=pytest.mark.interpreter),
    ],
    ids=["qwen2-torch", "gemma2-softcap-fp32-torch", "cohere-scale-triton"],
)
@pytest.mark.parametrize("shifted", [False, True], ids=["labels", "shift_labels"])
def test_every_output_matches_trls_head(
    tmp_path: Path, family: str, model_kwargs: dict, temperature: float, cast: bool, backend: str, shifted: bool
) -> None:
    import trl.trainer.utils as trl_utils

    stock = _model(tmp_path, family=family, **model_kwargs)
    ours = copy.deepcopy(stock)
    trl_utils.add_fused_lm_head(stock, temperature=temperature, cast_lm_head_to_fp32=cast, outputs=HEAD_OUTPUTS)
    fastgrpo.add_fused_lm_head(ours, temperature, cast, HEAD_OUTPUTS, backend=backend)
    ids, mask, labels = _batch(stock.config.vocab_size)
    with torch.no_grad():  # every other label is the model's own argmax (a top-1 target), with a clear margin
        z = stock(input_ids=ids, attention_mask=mask).logits[:, :-1].double()
    top2 = z.topk(2, dim=-1).values
    pick = (labels[:, 1:] != -100) & (torch.arange(8) % 2 == 0) & (top2[..., 0] - top2[..., 1] > 1e-4)
    labels[:, 1:][pick] = z.argmax(-1)[pick]
    target = z.gather(-1, labels[:, 1:].clamp(min=0)[..., None])[..., 0]
    gap = (target - z.scatter(-1, labels[:, 1:].clamp(min=0)[..., None], -torch.inf).amax(-1)).abs()
    assert pick.any() and (gap[labels[:, 1:] != -100] > 1e-4).all()  # is_top1 cannot flip on rounding
    kwargs: dict[str, Any] = {"input_ids": ids, "attention_mask": mask, "num_items_in_batch": torch.tensor(13)}
    if shifted:
        kwargs["shift_labels"] = torch.cat([labels[:, 1:], torch.full_like(labels[:, :1], -100)], 1)
    else:
        kwargs["labels"] = labels
    a = stock(**kwargs, fused_lm_head=True)
    b = ours(**kwargs, fused_lm_head=True)
    assert type(b).__name__ == "FusedHeadOutput" and list(b.keys()) == list(a.keys())
    for name in ("loss", *HEAD_OUTPUTS, "label_mask"):
        x, y = getattr(a, name), getattr(b, name)
        assert x.dtype == y.dtype and x.shape == y.shape, (name, x.dtype, y.dtype, x.shape, y.shape)
        if x.dtype == torch.bool:
            assert torch.equal(x, y), name
        else:
            torch.testing.assert_close(y, x, rtol=1e-5, atol=1e-6, msg=name)
    assert not b.is_top1[~b.label_mask].any() and (b.log_sum_sq_probs[~b.label_mask] == 0).all()
    assert b.is_top1.any() and not b.is_top1[b.label_mask].all()
    for out in (b.log_sum_sq_probs, b.mean_logits):
        assert not out.requires_grad
    (a.loss + a.entropy.sum()).backward()
    (b.loss + b.entropy.sum()).backward()
    for (name, p), q in zip(stock.named_parameters(), ours.parameters()):
        torch.testing.assert_close(q.grad, p.grad, rtol=1e-5, atol=1e-6, msg=name)


def test_all_masked_batch_and_outputs_not_asked(tmp_path: Path) -> None:
    import trl.trainer.utils as trl_utils

    stock = _model(tmp_path)
    ours = copy.deepcopy(stock)
    trl_utils.add_fused_lm_head(stock, outputs=("log_probs", "entropy", "is_top1"))
    fastgrpo.add_fused_lm_head(ours, outputs=("log_probs", "entropy", "is_top1"), backend="torch")
    ids, mask, labels = _batch(stock.config.vocab_size, all_masked=True)
    a = stock(input_ids=ids, attention_mask=mask, labels=labels, fused_lm_head=True)
    b = ours(input_ids=ids, attention_mask=mask, labels=labels, fused_lm_head=True)
    assert b.log_sum_sq_probs is None and b.mean_logits is None and a.mean_logits is None
    assert b.is_top1.dtype == torch.bool and not b.is_top1.any() and (b.log_probs == 0).all()
    assert float(b.loss) == float(a.loss) == 0.0
    b.loss.backward()  # connected to the graph: an all-masked micro-batch backpropagates a zero
    assert all(p.grad is None or (p.grad == 0).all() for p in ours.parameters())


def test_add_fused_lm_head_checks_its_arguments(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model = _model(tmp_path)
    with pytest.raises(ValueError, match=r"outputs: unknown per-token output\(s\) \['logits'\]"):
        fastgrpo.add_fused_lm_head(model, outputs=("log_probs", "logits"))
    with pytest.raises(TypeError, match="outputs must be a tuple"):
        fastgrpo.add_fused_lm_head(model, outputs="entropy")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="temperature must be a positive float"):
        fastgrpo.add_fused_lm_head(model, temperature=0.0)
    with pytest.raises(ValueError, match="fastgrpo_backend must be one of"):
        fastgrpo.add_fused_lm_head(model, backend="cuda")
    assert fused_head_config(model) is None
    monkeypatch.setenv("FASTGRPO_BACKEND", "torch")
    fastgrpo.add_fused_lm_head(model, outputs=("entropy",))
    config = fused_head_config(model)
    assert config.backend == "torch" and config.outputs == ("entropy",)
    fastgrpo.add_fused_lm_head(model, temperature=0.5, backend="triton")  # again: updated in place, not stacked
    assert fused_head_config(model) is config and (config.temperature, config.backend) == (0.5, "triton")


def test_lm_head_adapter_is_rejected_modules_to_save_scores_the_active_copy(tmp_path: Path) -> None:
    peft = pytest.importorskip("peft")
    base = _model(tmp_path)
    lora = peft.get_peft_model(copy.deepcopy(base), peft.LoraConfig(r=2, target_modules=["q_proj", "lm_head"]))
    with pytest.raises(ValueError, match="PEFT adapter on the lm_head"):
        fastgrpo.add_fused_lm_head(lora.get_base_model())
    # An adapter added after the head (async GRPO wraps with PEFT after add_fused_lm_head) is caught on the call.
    late = copy.deepcopy(base)
    fastgrpo.add_fused_lm_head(late, backend="torch")
    late = peft.get_peft_model(late, peft.LoraConfig(r=2, target_modules=["lm_head"]))
    ids, mask, labels = _batch(base.config.vocab_size)
    with pytest.raises(ValueError, match="PEFT adapter on the lm_head"):
        late(input_ids=ids, attention_mask=mask, labels=labels, fused_lm_head=True)

    saved = peft.get_peft_model(
        copy.deepcopy(base), peft.LoraConfig(r=2, target_modules=["q_proj"], modules_to_save=["lm_head"])
    )
    fastgrpo.add_fused_lm_head(saved.get_base_model(), outputs=("log_probs",), backend="torch")
    with torch.no_grad():
        saved.get_base_model().get_output_embeddings().weight.add_(0.5)  # the trained copy moves, not the original
    for adapters in (True, False):
        ctx = saved.disable_adapter() if not adapters else torch.enable_grad()
        with ctx, torch.no_grad():
            logits = saved(input_ids=ids, attention_mask=mask).logits[:, :-1]
            expected = logits.log_softmax(-1).gather(-1, ids[:, 1:, None])[..., 0] * (labels[:, 1:] != -100)
            out = saved(input_ids=ids, attention_mask=mask, labels=labels, fused_lm_head=True)
        torch.testing.assert_close(out.log_probs, expected, rtol=1e-5, atol=1e-5, msg=f"adapters={adapters}")


def _module(name: str) -> types.ModuleType:
    return importlib.import_module(name)


def test_patch_replaces_the_name_in_every_trainer_module_and_unpatch_restores_it() -> None:
    import trl.trainer.utils as trl_utils

    from fastgrpo.integration.trl_head import HEAD_MODULES, patched_trainers

    modules = {}
    for name in HEAD_MODULES:
        try:
            modules[name] = _module(name)
        except ImportError:  # async GRPO's optional dependencies (aiohttp): patch_trl() skips the module too
            assert name.startswith("trl.experimental."), name
    assert len(modules) >= 4
    trl_head = trl_utils.add_fused_lm_head
    assert all(module.add_fused_lm_head is trl_head for module in modules.values())
    fastgrpo.patch_trl(backend="torch")
    fastgrpo.patch_trl(backend="torch")  # idempotent
    stand_ins = {name: module.add_fused_lm_head for name, module in modules.items()}
    assert all(fn is not trl_head and fn.__wrapped__ is trl_head for fn in stand_ins.values())
    assert trl_utils.add_fused_lm_head is trl_head  # trl's own module keeps trl's function
    assert sorted(patched_trainers()) == sorted(HEAD_MODULES[name] for name in modules)
    fastgrpo.unpatch_trl()
    assert all(module.add_fused_lm_head is trl_head for module in modules.values())
    assert patched_trainers() == []


def test_rloo_init_reseeds_under_tp_while_patched(monkeypatch: pytest.MonkeyPatch) -> None:
    """patch_trl() wraps RLOOTrainer.__init__ (trl seeds per process at its end) so that it reseeds per data-parallel
    rank afterwards; unpatch_trl() restores trl's __init__. Training under TP: tests/test_tensor_parallel.py."""
    from trl.trainer.rloo_trainer import RLOOTrainer

    import fastgrpo.integration.tensor_parallel as tensor_parallel

    original = RLOOTrainer.__dict__["__init__"]
    calls: list[str] = []
    monkeypatch.setattr(tensor_parallel, "seed_generation", lambda trainer: calls.append(trainer.order[-1]))
    fastgrpo.patch_trl(backend="torch")
    fastgrpo.patch_trl(backend="torch")  # idempotent: wrapped once
    wrapped = RLOOTrainer.__dict__["__init__"]
    assert wrapped is not original and wrapped.__wrapped__ is original

    def fake_init(self: Any, *args: Any, **kwargs: Any) -> None:
        self.order = ["trl's __init__ (seeds per process last)"]

    from fastgrpo.integration.trl_head import _reseeding_init

    _reseeding_init(fake_init)(types.SimpleNamespace())
    assert calls == ["trl's __init__ (seeds per process last)"]  # the reseed ran after trl's __init__ finished
    fastgrpo.unpatch_trl()
    assert RLOOTrainer.__dict__["__init__"] is original


def test_stand_in_puts_fastgrpo_on_trls_head_and_unpatch_takes_it_off(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import trl.trainer.sft_trainer as sft_module

    count = _Count(monkeypatch)
    fastgrpo.patch_trl(backend="torch")
    plain, wrapped = _model(tmp_path), None
    wrapped = copy.deepcopy(plain)
    for model in (plain, wrapped):
        sft_module.add_fused_lm_head(model, outputs=("log_probs", "entropy", "is_top1"))  # as SFTTrainer does
        assert fused_head_config(model).outputs == ("log_probs", "entropy", "is_top1")
    # Something (accelerate's autocast, say) wraps one model's forward after the head was installed.
    inner = wrapped.forward
    wrapped.forward = types.MethodType(lambda self, *a, **k: inner(*a, **k), wrapped)
    ids, mask, labels = _batch(plain.config.vocab_size)
    expected = plain(input_ids=ids, attention_mask=mask, labels=labels, fused_lm_head=True)
    wrapped(input_ids=ids, attention_mask=mask, labels=labels, fused_lm_head=True)
    assert (count.fastgrpo, count.trl) == (2, 0)
    fastgrpo.unpatch_trl()
    for model in (plain, wrapped):
        assert fused_head_config(model) is None
        out = model(input_ids=ids, attention_mask=mask, labels=labels, fused_lm_head=True)
        torch.testing.assert_close(out.log_probs, expected.log_probs, rtol=1e-5, atol=1e-6)
        assert torch.equal(out.is_top1, expected.is_top1)
    assert (count.fastgrpo, count.trl) == (2, 2)  # trl's head, underneath, runs again
    assert "forward" in wrapped.__dict__  # the later wrapper is kept
    assert plain(input_ids=ids).logits.shape[-1] == plain.config.vocab_size  # generation path unchanged


def test_changed_head_runs_trls_own_with_one_warning(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import trl
    import trl.trainer.dpo_trainer as dpo_module
    import trl.trainer.kto_trainer as kto_module

    from fastgrpo import _log
    from fastgrpo.integration import fingerprints as fp

    line = fp.VERIFIED[trl.__version__].split()
    line[fp.FINGERPRINTED.index("kernels._forward_tile")] = "00000000"  # trl's optional-output fold "changed"
    monkeypatch.setitem(fp.VERIFIED, trl.__version__, " ".join(line))
    monkeypatch.setattr(_log, "_said", set())
    count = _Count(monkeypatch)
    fastgrpo.patch_trl(backend="torch")
    models = [_model(tmp_path / str(i)) for i in range(2)]
    with caplog.at_level(logging.WARNING, logger="fastgrpo"):
        dpo_module.add_fused_lm_head(models[0], outputs=("log_probs", "mean_logits"))
        kto_module.add_fused_lm_head(models[1])
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "kernels._forward_tile" in warnings[0] and "trl's own head" in warnings[0], warnings
    ids, mask, labels = _batch(models[0].config.vocab_size)
    for model in models:
        assert fused_head_config(model) is None
        model(input_ids=ids, attention_mask=mask, labels=labels, fused_lm_head=True)
    assert (count.fastgrpo, count.trl) == (0, 2)


def test_async_grpo_head_call_packed_rows(tmp_path: Path) -> None:
    """AsyncGRPOTrainer needs a vLLM server and CUDA tree attention to train, so its head call is tested directly:
    its module's add_fused_lm_head under patch_trl(), called as its compute_loss calls the model (one packed row,
    position_ids restarting per sequence, pre-shifted labels)."""
    async_module = pytest.importorskip("trl.experimental.async_grpo.async_grpo_trainer")
    import trl.trainer.utils as trl_utils

    stock = _model(tmp_path)
    ours = copy.deepcopy(stock)
    trl_utils.add_fused_lm_head(stock, temperature=0.9, outputs=("log_probs", "entropy"))
    fastgrpo.patch_trl(backend="torch")
    async_module.add_fused_lm_head(ours, temperature=0.9, outputs=("log_probs", "entropy"))
    assert fused_head_config(ours).outputs == ("log_probs", "entropy")
    g = torch.Generator().manual_seed(3)
    ids = torch.randint(0, stock.config.vocab_size, (1, 14), generator=g)
    position_ids = torch.tensor([[0, 1, 2, 3, 4, 5, 0, 1, 2, 3, 4, 5, 6, 7]])
    shift_labels = torch.cat([ids[:, 1:], ids[:, :1]], 1)
    shift_labels[:, [0, 1, 5, 6, 7, 13]] = -100  # prompts and sequence ends
    kwargs = dict(input_ids=ids, position_ids=position_ids, shift_labels=shift_labels, fused_lm_head=True)
    a, b = stock(**kwargs), ours(**kwargs)
    torch.testing.assert_close(b.log_probs, a.log_probs, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(b.entropy, a.entropy, rtol=1e-5, atol=1e-6)
    (a.log_probs.sum() - 0.1 * a.entropy.sum()).backward()
    (b.log_probs.sum() - 0.1 * b.entropy.sum()).backward()
    for (name, p), q in zip(stock.named_parameters(), ours.parameters()):
        torch.testing.assert_close(q.grad, p.grad, rtol=1e-5, atol=1e-6, msg=name)
