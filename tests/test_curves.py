"""The training-curves report's parts (benchmarks/fastgrpo_benchmarks/curves/): reward, statistics, mutants. The
quick training run
itself is CI stage tests/ci/stage-50-curves.sh."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from pathlib import Path

import pytest

from fastgrpo_benchmarks.curves import mutants, stats, task, tdist


def _ids(*words: str) -> list[int]:
    return [task.VOCAB.index(w) for w in words]


def test_count_reward_scores_the_continued_count() -> None:
    prompts = ["7 8", "7 8", "7 8", "1 2 3"]
    completions = [
        _ids("9", "0", "1", "2", "3", "4"),  # the whole count, wrapping at 9 -> 0
        _ids("9", "0", "count", "2", "3", "4"),  # a filler breaks the chain: "2" cannot score after it, "3", "4" can
        _ids("5", "6", "7"),  # a count, but not from the prompt's last digit; short
        _ids(task.EOS),
    ]
    assert task.count_reward(prompts, [""] * 4, completions) == [1.0, 4 / 6, 2 / 6, 0.0]


def test_decode_and_tokenizer_round_trip(tmp_path: Path) -> None:
    tok = task.build_tokenizer(tmp_path)
    ids = tok("3 4 5")["input_ids"]
    assert ids == _ids("3", "4", "5")
    assert task.decode(ids) == "3 4 5"
    assert len(tok) == len(task.VOCAB)


@pytest.mark.parametrize("df", [1.0, 2.5, 7.0, 13.7, 200.0])
def test_t_distribution_against_scipy(df: float) -> None:
    scipy_stats = pytest.importorskip("scipy.stats")
    for t in (0.0, 0.4, 1.7, 3.2, 9.0):
        assert tdist.two_sided_p(t, df) == pytest.approx(2 * scipy_stats.t.sf(t, df), rel=1e-9, abs=1e-14)
    for q in (0.9, 0.99, 0.999):
        assert tdist.ppf(q, df) == pytest.approx(scipy_stats.t.ppf(q, df), rel=1e-9)


def test_welch_against_scipy() -> None:
    scipy_stats = pytest.importorskip("scipy.stats")
    rng = random.Random(0)
    a, b = [rng.gauss(0, 1) for _ in range(6)], [rng.gauss(0.7, 2) for _ in range(9)]
    ref = scipy_stats.ttest_ind(b, a, equal_var=False)
    t, p = tdist.welch(a, b)
    assert t == pytest.approx(ref.statistic, rel=1e-10)
    assert p == pytest.approx(ref.pvalue, rel=1e-9)


@dataclass
class _Run:
    logs: list[dict[str, float]]


def _runs(rng: random.Random, n: int, gain: float, kl: float, spread: float = 0.05) -> list[_Run]:
    out = []
    for _ in range(n):
        logs = [
            {"reward": 0.1 + gain * s / 99 + rng.gauss(0, spread), "kl": kl + rng.gauss(0, spread)} for s in range(100)
        ]
        out.append(_Run(logs))
    return out


def test_checks_pass_same_distribution_and_fail_a_shift_or_no_learning() -> None:
    rng = random.Random(1)
    a, b = _runs(rng, 8, gain=0.5, kl=1.0), _runs(rng, 8, gain=0.5, kl=1.0)
    assert stats.learn_check("x", a).ok and stats.learn_check("y", b).ok
    assert all(r.ok for r in stats.parity_check(a, b))
    shifted = _runs(rng, 8, gain=0.5, kl=1.2)
    bad = {r.metric: r for r in stats.parity_check(a, shifted)}
    assert not bad["kl"].ok and bad["kl"].p_value < bad["kl"].alpha == stats.FAMILY_ALPHA / 2
    assert bad["kl"].gap == pytest.approx(0.2, abs=0.05)
    assert not stats.learn_check("flat", _runs(rng, 8, gain=0.0, kl=1.0)).ok


def test_window_mean_uses_the_logged_steps_only() -> None:
    logs = [{"reward": 1.0}, {}, {"reward": 3.0}, {}, {}, {}, {}, {}, {"reward": 5.0}, {"reward": 7.0}]
    assert stats.window_mean(logs, "reward", "first") == 1.0  # first 20% = 2 steps, one logged value
    assert stats.window_mean(logs, "reward", "last") == 6.0
    assert math.isnan(stats.window_mean(logs, "kl", "last"))


@pytest.mark.parametrize("name", sorted(mutants.MUTANTS))
def test_each_mutant_applies_to_the_current_loss_code(name: str, tmp_path: Path) -> None:
    # A refactor of fastgrpo/grpo that moves the mutated lines makes this fail: update mutants.py with it.
    dest = mutants.make_scratch_copy(name, tmp_path)
    import fastgrpo

    source = Path(fastgrpo.__file__).parent / "grpo"
    for rel, old, new, _count in mutants.MUTANTS[name]:
        assert new in (dest / "fastgrpo" / "grpo" / rel).read_text()
        assert old in (source / rel).read_text()  # the source tree itself is left alone
