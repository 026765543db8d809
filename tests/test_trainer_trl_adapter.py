"""The fail-safe trl adapter: fingerprints of the trl functions fastgrpo mirrors, the three verdicts they lead to,
unknown keywords passed through to trl, and training on a simulated future trl (a changed ``_compute_loss`` and a
log-prob method with a new keyword) that must follow trl's new loss, never fastgrpo's verified one.

Runs on whichever trl is installed (CI runs it under every verified release, tests/ci/stage-30-trl-eras.sh).
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

import pytest
import torch
from _parity import Case, base_config, compare, fastgrpo_only, make_model_dir, run_case
from _tiny import id_reward, prompt_dataset

ROOT = Path(__file__).resolve().parent.parent


def _fp() -> Any:
    # Imported in the tests that need it, so the training tests below also run (and fail) on an older fastgrpo.
    from fastgrpo.integration import fingerprints

    return fingerprints


def _build(tmp_path: Path, **kwargs: Any) -> Any:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from fastgrpo import FastGRPOTrainer

    path = make_model_dir(Case("adapter"), tmp_path)
    return FastGRPOTrainer(
        model=AutoModelForCausalLM.from_pretrained(str(path)),
        reward_funcs=id_reward,
        args=base_config(str(tmp_path / "out"), max_steps=1),
        train_dataset=prompt_dataset(4),
        processing_class=AutoTokenizer.from_pretrained(str(path)),
        fastgrpo_backend="torch",
        **kwargs,
    )


def test_normalised_source_ignores_comments_docstrings_and_blank_lines_only() -> None:
    fp = _fp()
    base = "def f(x):\n    '''Doc.'''\n    y = x + 1  # why\n\n    return y\n"
    same = (
        "    def f(x):\n        '''Other doc,\n        two lines.'''\n        # a comment\n"
        "        y = x + 1\n        return y\n"
    )
    changed = "def f(x):\n    y = x + 2\n    return y\n"
    assert fp.normalised_source(base) == fp.normalised_source(same) == "def f(x):\n    y = x + 1\n    return y"
    assert fp.normalised_source(changed) != fp.normalised_source(base)


def test_installed_trl_is_a_verified_release_with_the_recorded_fingerprints() -> None:
    """Fails on a trl that is not recorded, or whose recorded fingerprints are wrong (CI runs every verified one)."""
    fp = _fp()
    import trl

    from fastgrpo.integration.trainer import trl_support

    prints = fp.installed_fingerprints()
    assert fp.recorded(trl.__version__) is not None, fp.verified_line(trl.__version__, prints)
    assert fp.differing(prints, fp.recorded(trl.__version__)) == [], fp.verified_line(trl.__version__, prints)
    support = trl_support()
    assert support.logps_method and support.fused_head
    assert support.fused_loss == (trl.__version__ not in fp.LOSS_NOT_VERIFIED)


def _prints(version: str, changes: dict[str, str] | None = None) -> dict[str, str]:
    fp = _fp()
    return {**(fp.recorded(version) or {}), **(changes or {})}


def test_assess_gives_the_three_verdicts() -> None:
    fp = _fp()
    from packaging.version import Version

    newest = max(fp.VERIFIED, key=Version)
    assert fp.assess(newest, _prints(newest)).verified
    # A recorded release whose loss changed: trl's loss, fastgrpo's log-prob method, the function named.
    changed = fp.assess(newest, _prints(newest, {"GRPOTrainer._compute_loss": "0badc0de"}))
    assert (changed.fused_loss, changed.logps_method, changed.fused_head) == (False, True, True)
    assert "GRPOTrainer._compute_loss" in changed.reasons[0] and "recorded" in changed.reasons[0]
    assert changed.changed == ("GRPOTrainer._compute_loss",)
    # An unseen release: compared with the newest verified one below it.
    future = fp.assess("1.99.0", _prints(newest, {"GRPOTrainer._get_per_token_logps_and_entropies": "0badc0de"}))
    assert (future.fused_loss, future.logps_method, future.fused_head) == (False, False, True)
    assert "trl 1.99.0 is not a release fastgrpo verified" in future.reasons[0]
    assert f"differ from {newest}: GRPOTrainer._get_per_token_logps_and_entropies" in future.reasons[0]
    unchanged = fp.assess("1.99.0", _prints(newest))
    assert not unchanged.fused_loss and unchanged.logps_method and "differ from" in unchanged.reasons[0]
    head = fp.assess("1.99.0", _prints(newest, {"utils.add_fused_lm_head": "0badc0de"}))
    assert (head.fused_loss, head.logps_method, head.fused_head) == (False, False, False)
    # trl's head kernel (its optional outputs) changed: trl's own head in every trainer, GRPO's log-probs included.
    for name in ("kernels.ChunkedLogProbFunction", "kernels._forward_tile", "utils.FusedCausalLMOutput"):
        kernel = fp.assess("1.99.0", _prints(newest, {name: "0badc0de"}))
        assert not kernel.fused_head and not kernel.logps_method and kernel.changed == (name,), name
    # Unreadable source never matches.
    assert not fp.assess(newest, _prints(newest, {"GRPOTrainer.compute_loss": fp.NO_SOURCE})).fused_loss
    for version, why in fp.LOSS_NOT_VERIFIED.items():
        support = fp.assess(version, _prints(version))
        assert (support.fused_loss, support.logps_method) == (False, True) and why in support.reasons[0]


def test_declared_range_verified_releases_and_ci_agree() -> None:
    fp = _fp()
    from packaging.specifiers import SpecifierSet
    from packaging.version import Version

    from fastgrpo.integration._compat import MIN_TRL, SUPPORTED_RANGE

    pin = re.search(r'^\s*"trl([^"]*)",$', (ROOT / "pyproject.toml").read_text(), re.M)
    assert pin, "pyproject.toml must pin trl"
    assert SpecifierSet(pin.group(1)) == SpecifierSet(SUPPORTED_RANGE), (pin.group(1), SUPPORTED_RANGE)
    assert all(v in SpecifierSet(SUPPORTED_RANGE) for v in fp.VERIFIED)
    assert min(map(Version, fp.VERIFIED)) == MIN_TRL, "the lowest supported trl must be verified"
    script = (ROOT / "tests" / "run_trl_era_tests.sh").read_text()
    eras = re.search(r'^ERAS="\$\{FASTGRPO_TRL_ERAS:-([^}]*)\}"', script, re.M)
    assert eras, "tests/run_trl_era_tests.sh must define ERAS"
    tested = {era.split(":")[0] for era in eras.group(1).split()}
    main_venv = {"1.16.0"}  # the main test stage runs on the project's venv (trl 1.16.0)
    assert tested | main_venv == set(fp.VERIFIED), (tested, sorted(fp.VERIFIED))


def test_readme_trl_table_is_generated_from_the_fingerprints() -> None:
    fp = _fp()
    readme = (ROOT / "README.md").read_text()
    assert fp.version_table() in readme, "regenerate with `python -m fastgrpo.integration.fingerprints --table`"


def test_missing_trainer_attribute_gives_trl_loss_with_reason(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from fastgrpo.integration import loss

    monkeypatch.setattr(loss, "TRAINER_ATTRIBUTES", (*loss.TRAINER_ATTRIBUTES, "attribute_of_an_older_trl"))
    with caplog.at_level(logging.WARNING, logger="fastgrpo"):
        trainer = _build(tmp_path)
    assert not trainer._fastgrpo_trl.fused_loss
    assert "lacks attributes fastgrpo's fused loss reads: attribute_of_an_older_trl" in caplog.text


def test_unknown_keyword_goes_to_trls_own_method(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A verified trainer whose trl now sends a keyword fastgrpo does not know: that call runs trl's method."""
    from trl.trainer.grpo_trainer import GRPOTrainer

    trainer = _build(tmp_path)  # verified: fastgrpo's own log-prob method
    trl_method = GRPOTrainer.__dict__["_get_per_token_logps_and_entropies"]
    seen: list[Any] = []

    def future_method(self: Any, *args: Any, new_option: Any = None, **kwargs: Any) -> Any:
        seen.append(new_option)
        return trl_method(self, *args, **kwargs)

    monkeypatch.setattr(GRPOTrainer, "_get_per_token_logps_and_entropies", future_method)
    ids = torch.randint(0, 200, (2, 7))
    mask = torch.ones_like(ids)
    with torch.no_grad():
        logps, _, _ = trainer._get_per_token_logps_and_entropies(trainer.model, ids, mask, 3, new_option="x")
        ours, _, _ = trainer._get_per_token_logps_and_entropies(trainer.model, ids, mask, 3)
    assert seen == ["x"]
    torch.testing.assert_close(logps, ours, rtol=1e-5, atol=1e-6)


def test_changed_loss_entry_point_runs_trls_own(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A trl whose compute_loss changed: FastGRPOTrainer's compute_loss hands every call to trl's new one."""
    from trl.trainer.grpo_trainer import GRPOTrainer

    def compute_loss(self: Any, model: Any, inputs: Any, return_outputs: bool = False, num_items_in_batch: Any = None):
        return torch.tensor(42.0)  # a future entry point

    monkeypatch.setattr(GRPOTrainer, "compute_loss", compute_loss)
    trainer = _build(tmp_path)
    assert trainer.compute_loss(trainer.model, {}).item() == 42.0
    assert trainer._fastgrpo_trl.changed == ("GRPOTrainer.compute_loss",)


@pytest.fixture
def future_trl(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """trl's GRPOTrainer as a future release might be: ``_compute_loss`` doubles the loss and first scores the batch
    with a new keyword of ``_get_per_token_logps_and_entropies``. Returns the keyword values seen."""
    from trl.trainer.grpo_trainer import GRPOTrainer

    compute_loss = GRPOTrainer.__dict__["_compute_loss"]
    logps_method = GRPOTrainer.__dict__["_get_per_token_logps_and_entropies"]
    seen: list[Any] = []

    def _get_per_token_logps_and_entropies(self: Any, *args: Any, score_mode: Any = None, **kwargs: Any) -> Any:
        seen.append(score_mode)
        return logps_method(self, *args, **kwargs)

    def _compute_loss(self: Any, model: Any, inputs: dict[str, Any]) -> torch.Tensor:
        ids = torch.cat([inputs["prompt_ids"], inputs["completion_ids"]], dim=1)
        mask = torch.cat([inputs["prompt_mask"], inputs["completion_mask"]], dim=1)
        with torch.no_grad():
            self._get_per_token_logps_and_entropies(
                model, ids, mask, inputs["completion_ids"].size(1), score_mode="new"
            )
        return 2.0 * compute_loss(self, model, inputs)

    monkeypatch.setattr(GRPOTrainer, "_compute_loss", _compute_loss)
    monkeypatch.setattr(GRPOTrainer, "_get_per_token_logps_and_entropies", _get_per_token_logps_and_entropies)
    return seen


@pytest.mark.slow
def test_simulated_future_trl_trains_with_trls_new_loss(
    future_trl: list[Any], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from trl import GRPOTrainer

    from fastgrpo import FastGRPOTrainer
    from fastgrpo.integration._compat import trl_has_fused_head

    case = Case("future", config=dict(beta=0.04, num_iterations=2))
    stock = run_case(GRPOTrainer, case, tmp_path)
    assert future_trl and set(future_trl) == {None, "new"}
    future_trl.clear()
    with caplog.at_level(logging.WARNING, logger="fastgrpo"):
        if trl_has_fused_head():  # trl's own log-prob method then still lands in fastgrpo's head
            with fastgrpo_only("torch") as calls:
                fast = run_case(FastGRPOTrainer, case, tmp_path, fastgrpo_backend="torch")
            assert calls["linear_logprobs"] > 0
        else:
            fast = run_case(FastGRPOTrainer, case, tmp_path, fastgrpo_backend="torch")
    # The loss is not zero, so the doubled loss differs from the verified one, and this comparison can fail.
    assert max(abs(entry.get("loss", 0.0)) for entry in stock.logs) > 1e-4
    compare(stock, fast)  # the logged loss is trl's new (doubled) loss
    assert "new" in future_trl, "the new keyword never reached trl's method"
    assert fast.loss_fallback and "GRPOTrainer._compute_loss" in fast.loss_fallback[-1]
    assert "GRPOTrainer._get_per_token_logps_and_entropies" in fast.loss_fallback[-1]
    assert "loss: trl's own _compute_loss (trl's loss math), because of: trl 1." in caplog.text
