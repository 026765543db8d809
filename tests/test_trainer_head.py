"""fastgrpo's fused head on a causal LM: same log-probs as the model's own logits, install/uninstall, gather paths."""

from __future__ import annotations

import contextlib
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from _parity import tokenizer_dir
from _tiny import build_model
from _torchrun import free_port

from fastgrpo.integration import head as head_module
from fastgrpo.integration.head import FusedHeadConfig, fused_head_config, install_fused_head, uninstall_fused_head

HERE = Path(__file__).resolve().parent


@pytest.mark.parametrize(
    "family, kwargs",
    [
        ("qwen2", {}),
        ("gemma2", {"final_logit_softcapping": 2.0, "tie_word_embeddings": True}),
        ("cohere", {"logit_scale": 0.3}),
    ],
)
def test_fused_head_matches_model_logits(tmp_path: Path, family: str, kwargs: dict) -> None:
    _, tok = tokenizer_dir()
    model = build_model(tmp_path, tok, family=family, **kwargs).eval()
    ids = torch.randint(0, len(tok), (3, 10))
    mask = torch.ones_like(ids)
    mask[0, :3] = 0  # left padding
    labels = ids.masked_fill(mask == 0, -100)
    labels[:, :4] = -100
    temperature = 0.8
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1] / temperature
    expected = logits.log_softmax(-1).gather(-1, ids[:, 1:, None])[..., 0] * (labels[:, 1:] != -100)
    config = install_fused_head(
        model, FusedHeadConfig(temperature=temperature, outputs=("log_probs", "entropy"), backend="torch")
    )
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=mask, labels=labels, fused_lm_head=True)
    torch.testing.assert_close(out.log_probs, expected, rtol=1e-5, atol=1e-5)
    entropy = -(logits.softmax(-1) * logits.log_softmax(-1)).sum(-1) * (labels[:, 1:] != -100)
    torch.testing.assert_close(out.entropy, entropy, rtol=1e-5, atol=1e-5)
    assert (config.softcap, config.logit_scale) == (kwargs.get("final_logit_softcapping"), kwargs.get("logit_scale", 1))
    again = install_fused_head(model, FusedHeadConfig(temperature=temperature, backend="torch"))  # idempotent
    assert again is config and (again.softcap, again.logit_scale, again.entropy) == (
        kwargs.get("final_logit_softcapping"),
        kwargs.get("logit_scale", 1),
        False,
    )
    with torch.no_grad():
        assert (
            model(input_ids=ids, attention_mask=mask, labels=labels, fused_lm_head=True, fastgrpo_entropy=False).entropy
            is None
        )


def test_install_is_idempotent_and_uninstall_restores_forward(tmp_path: Path) -> None:
    _, tok = tokenizer_dir()
    model = build_model(tmp_path, tok)
    assert "forward" not in model.__dict__
    first = install_fused_head(model, FusedHeadConfig(backend="torch"))
    forward = model.forward
    second = install_fused_head(model, FusedHeadConfig(backend="triton", temperature=0.5))
    assert second is first and first.backend == "triton" and first.temperature == 0.5
    assert model.forward == forward  # not wrapped twice
    ids = torch.randint(0, len(tok), (2, 5))
    with torch.no_grad():
        plain = model(input_ids=ids).logits  # without fused_lm_head: the model's own forward
    assert plain.shape == (2, 5, len(tok))
    assert uninstall_fused_head(model)
    assert "forward" not in model.__dict__ and fused_head_config(model) is None
    assert not uninstall_fused_head(model)


def test_fused_head_needs_labels(tmp_path: Path) -> None:
    _, tok = tokenizer_dir()
    model = build_model(tmp_path, tok)
    install_fused_head(model, FusedHeadConfig(backend="torch"))
    with pytest.raises(ValueError, match="needs `labels`"):
        model(input_ids=torch.zeros(1, 3, dtype=torch.long), fused_lm_head=True)


@contextlib.contextmanager
def _counting_gather(entries: list[int]) -> Iterator[None]:
    entries.append(1)
    yield


def test_zero3_style_gather_recomputes_in_backward(monkeypatch: pytest.MonkeyPatch) -> None:
    """The ZeRO-3 path (gather in forward, gather again and recompute in backward) gives the plain path's grads."""
    torch.manual_seed(0)
    hidden = torch.randn(7, 8, requires_grad=True)
    weight = torch.randn(40, 8, requires_grad=True)
    bias = torch.randn(40, requires_grad=True)
    targets = torch.randint(0, 40, (7,))
    config = FusedHeadConfig(temperature=0.7, softcap=3.0, logit_scale=1.3, backend="torch")
    grads_out = torch.randn(7), torch.randn(7)

    def run() -> tuple[torch.Tensor, ...]:
        for t in (hidden, weight, bias):
            t.grad = None
        logp, entropy, *extras = head_module.project_logprobs(
            hidden, weight, bias, targets, config, ("log_probs", "entropy")
        )
        assert extras == [None, None, None]
        torch.autograd.backward([logp, entropy], list(grads_out))
        return logp.detach(), entropy.detach(), hidden.grad.clone(), weight.grad.clone(), bias.grad.clone()

    plain = run()
    entries: list[int] = []
    monkeypatch.setattr(head_module, "maybe_gather_params", lambda *p: _counting_gather(entries))
    gathered = run()
    assert len(entries) == 2  # forward and backward
    for a, b in zip(plain, gathered):
        torch.testing.assert_close(b, a, rtol=1e-6, atol=1e-6)


@pytest.mark.slow
def test_fsdp2_dtensor_head_is_gathered(tmp_path: Path) -> None:
    """A head whose weight is a DTensor (FSDP2) is gathered with full_tensor(); grads flow back to the DTensor."""
    script = tmp_path / "dtensor.py"
    script.write_text(
        textwrap.dedent(
            f"""
            import os, sys, torch, torch.distributed as dist
            sys.path.insert(0, {str(HERE)!r})
            from torch.distributed.device_mesh import init_device_mesh
            from torch.distributed.tensor import DTensor, Shard, distribute_tensor
            from _parity import tokenizer_dir
            from _tiny import build_model
            from fastgrpo.integration.head import FusedHeadConfig, install_fused_head

            os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT={str(free_port())!r}, RANK="0", WORLD_SIZE="1")
            dist.init_process_group("gloo")
            _, tok = tokenizer_dir()
            model = build_model({str(tmp_path / "m")!r}, tok)
            ids = torch.randint(0, len(tok), (2, 6))
            labels = ids.clone()
            labels[:, :2] = -100
            install_fused_head(model, FusedHeadConfig(backend="torch"))
            expected = model(input_ids=ids, labels=labels, fused_lm_head=True).log_probs
            expected.sum().backward()
            grad = model.lm_head.weight.grad.clone()
            model.zero_grad()
            mesh = init_device_mesh("cpu", (1,))
            model.lm_head.weight = torch.nn.Parameter(distribute_tensor(model.lm_head.weight.data, mesh, [Shard(0)]))
            out = model(input_ids=ids, labels=labels, fused_lm_head=True).log_probs
            assert not isinstance(out, DTensor)
            out.sum().backward()
            assert isinstance(model.lm_head.weight.grad, DTensor)
            torch.testing.assert_close(out, expected)
            torch.testing.assert_close(model.lm_head.weight.grad.full_tensor(), grad)
            dist.destroy_process_group()
            print("DTENSOR-OK")
            """
        )
    )
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and "DTENSOR-OK" in proc.stdout, proc.stderr[-4000:]
