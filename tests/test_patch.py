"""patch_trl() / unpatch_trl(): idempotent, reversible, effective on names imported before or after patching."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
from _parity import Case, compare, fastgrpo_only, run_case, trl_reasons

HERE = Path(__file__).resolve().parent
METHODS = ("__init__", "_get_per_token_logps_and_entropies", "compute_loss")


@pytest.fixture(autouse=True)
def _always_unpatch() -> Iterator[None]:
    yield
    from fastgrpo import unpatch_trl

    unpatch_trl()


def test_importing_fastgrpo_neither_imports_nor_patches_trl() -> None:
    code = "import sys, fastgrpo; assert 'trl' not in sys.modules, 'trl imported'; print('ok')"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and "ok" in proc.stdout, proc.stderr[-3000:]


def test_patch_round_trip_is_idempotent_and_reversible() -> None:
    from trl import GRPOTrainer  # imported before patching

    import fastgrpo
    from fastgrpo.integration import is_trl_patched

    originals = {name: GRPOTrainer.__dict__[name] for name in METHODS}
    assert not is_trl_patched()
    fastgrpo.patch_trl()
    patched = {name: GRPOTrainer.__dict__[name] for name in METHODS}
    assert all(patched[name] is not originals[name] for name in METHODS)
    assert all(patched[name] is fastgrpo.FastGRPOTrainer.__dict__[name] for name in METHODS)
    fastgrpo.patch_trl()  # idempotent
    assert {name: GRPOTrainer.__dict__[name] for name in METHODS} == patched
    from trl import GRPOTrainer as imported_after  # imported after patching: the same, patched class
    from trl.trainer.grpo_trainer import GRPOTrainer as from_module

    assert imported_after is GRPOTrainer is from_module
    assert is_trl_patched()
    fastgrpo.unpatch_trl()
    assert {name: GRPOTrainer.__dict__[name] for name in METHODS} == originals
    assert all(GRPOTrainer.__dict__[name] is originals[name] for name in METHODS)
    fastgrpo.unpatch_trl()  # no-op when not patched
    assert not is_trl_patched()


def test_patch_rejects_bad_backend_and_unsupported_trl(monkeypatch: pytest.MonkeyPatch) -> None:
    import trl

    import fastgrpo
    from fastgrpo.integration import is_trl_patched

    with pytest.raises(ValueError, match="backend"):
        fastgrpo.patch_trl(backend="cuda")
    monkeypatch.setattr(trl, "__version__", "1.9.2")
    with pytest.raises(RuntimeError, match=r"supports trl >=1\.10,<2, but trl 1\.9\.2 is installed"):
        fastgrpo.patch_trl()
    monkeypatch.setattr(trl, "__version__", "2.0.0")
    with pytest.raises(RuntimeError, match="trl 2.0.0 is installed"):
        fastgrpo.patch_trl()
    assert not is_trl_patched()


@pytest.mark.slow
def test_patched_grpo_trainer_trains_through_fastgrpo_then_unpatch_restores_stock(tmp_path: Path) -> None:
    from trl import GRPOTrainer

    import fastgrpo
    from fastgrpo.integration.head import fused_head_config

    class UserTrainer(GRPOTrainer):  # a subclass defined before patching is covered too
        pass

    case = Case("patched", config=dict(beta=0.04, num_iterations=2))
    stock = run_case(GRPOTrainer, case, tmp_path)
    fastgrpo.patch_trl(backend="torch")
    with fastgrpo_only("torch") as calls:
        patched = run_case(UserTrainer, case, tmp_path)
    assert calls["linear_logprobs"] > 0
    assert patched.loss_fallback == trl_reasons()
    compare(stock, patched)
    fastgrpo.unpatch_trl()
    from _parity import make_model_dir
    from _tiny import id_reward, prompt_dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = make_model_dir(case, tmp_path)
    model = AutoModelForCausalLM.from_pretrained(str(path))
    from _parity import base_config

    trainer = GRPOTrainer(
        model=model,
        reward_funcs=id_reward,
        args=base_config(str(tmp_path / "o")),
        train_dataset=prompt_dataset(4),
        processing_class=AutoTokenizer.from_pretrained(str(path)),
    )
    assert fused_head_config(trainer.model) is None
    assert not hasattr(trainer, "_fastgrpo_loss_fallback")


@pytest.mark.slow
def test_unmodified_script_patched_after_importing_grpo_trainer(tmp_path: Path) -> None:
    """A script that did ``from trl import GRPOTrainer`` first, then patch_trl(): its trainer uses fastgrpo."""
    script = tmp_path / "script.py"
    script.write_text(
        textwrap.dedent(
            f"""
            import sys
            sys.path.insert(0, {str(HERE)!r})
            from trl import GRPOTrainer, GRPOConfig
            import fastgrpo
            from fastgrpo.integration.head import fused_head_config
            from _parity import Case, make_model_dir, base_config, trl_reasons
            from _tiny import id_reward, prompt_dataset
            from pathlib import Path
            from transformers import AutoModelForCausalLM, AutoTokenizer

            fastgrpo.patch_trl(backend="torch")
            path = make_model_dir(Case("script"), Path({str(tmp_path)!r}))
            trainer = GRPOTrainer(
                model=AutoModelForCausalLM.from_pretrained(str(path)), reward_funcs=id_reward,
                args=base_config({str(tmp_path / "out")!r}, max_steps=1), train_dataset=prompt_dataset(4),
                processing_class=AutoTokenizer.from_pretrained(str(path)),
            )
            assert fused_head_config(trainer.model).backend == "torch"
            trainer.train()
            print("PATCHED-OK", trainer._fastgrpo_loss_fallback == trl_reasons())
            """
        )
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "PATCHED-OK True" in proc.stdout


@pytest.mark.slow
def test_unpatch_takes_fastgrpo_off_live_trainers(tmp_path: Path) -> None:
    """A trainer built while patched gets its models' previous forward back and trains as stock trl after unpatching;
    a FastGRPOTrainer keeps fastgrpo."""
    from _parity import base_config, make_model_dir
    from _tiny import id_reward, prompt_dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import GRPOTrainer

    import fastgrpo
    from fastgrpo.integration import head

    path = make_model_dir(Case("unpatch"), tmp_path)

    def build(cls: type, **kwargs: object) -> object:
        return cls(
            model=AutoModelForCausalLM.from_pretrained(str(path)),
            reward_funcs=id_reward,
            args=base_config(str(tmp_path / "o"), max_steps=1, beta=0.04),
            train_dataset=prompt_dataset(4),
            processing_class=AutoTokenizer.from_pretrained(str(path)),
            **kwargs,
        )

    stock = build(GRPOTrainer)
    stock_forwards = {name: m.__dict__.get("forward") for name, m in (("model", stock.model), ("ref", stock.ref_model))}
    fastgrpo.patch_trl(backend="torch")
    patched = build(GRPOTrainer)
    own = build(fastgrpo.FastGRPOTrainer, fastgrpo_backend="torch")
    models = {"model": patched.model, "ref": patched.ref_model}
    assert all(head.fused_head_config(m) is not None for m in models.values())
    fastgrpo.unpatch_trl()
    for name, model in models.items():
        assert head.fused_head_config(model) is None, name
        # the same kind of forward as a stock trainer's: trl's fused head (trl >= 1.15) or the class's forward
        assert (model.__dict__.get("forward") is None) == (stock_forwards[name] is None), name
    assert not [n for n in vars(patched) if n.startswith("_fastgrpo")]
    assert head.fused_head_config(own.model) is not None  # FastGRPOTrainer is not a patch
    calls = {"n": 0}
    real = head.linear_logprobs

    def counting(*args: object, **kwargs: object) -> object:
        calls["n"] += 1
        return real(*args, **kwargs)

    head.linear_logprobs = counting
    try:
        patched.train()
        assert calls["n"] == 0, "fastgrpo's head ran in a trainer after unpatch_trl()"
        own.train()
        assert calls["n"] > 0
    finally:
        head.linear_logprobs = real
