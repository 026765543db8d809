"""Launch-config resolution: tuned tables, the frozen-head route, and opt-in autotuning (selection, caching,
persistence, failing candidates), with every candidate config checked against the float64 reference."""

from __future__ import annotations

import json
import logging

import pytest
import torch
from _lp_helpers import make_case, rel_err

import fastgrpo
from fastgrpo import triton_backend, tuning
from fastgrpo.options import LogProbOptions
from fastgrpo.reference import reference_linear_logprobs
from fastgrpo_kernels import configs

pytestmark = pytest.mark.interpreter
REL = 2e-5


@pytest.fixture(autouse=True)
def _fresh_tuning(monkeypatch):
    monkeypatch.delenv("FASTGRPO_AUTOTUNE", raising=False)
    monkeypatch.delenv("FASTGRPO_AUTOTUNE_CACHE", raising=False)
    tuning.clear_choices()
    yield
    tuning.disable_autotune()
    tuning._enabled = None
    tuning._cache_path = None
    tuning.clear_choices()


def _grads(case, *, weight_grad: bool, bias: bool = False):
    """fastgrpo (triton backend) and float64 reference: logp, entropy and the gradients of a random loss."""
    h = case.hidden.clone().requires_grad_()
    w = case.weight.clone().requires_grad_(weight_grad)
    b = case.bias.clone().requires_grad_(weight_grad) if bias else None
    out = fastgrpo.linear_logprobs(h, w, case.targets, bias=b, return_entropy=True, backend="triton")
    g = torch.randn(case.targets.shape, dtype=torch.float64)
    leaves = [h, w] + ([b] if bias else []) if weight_grad else [h]
    ours = torch.autograd.grad((out.logp * g.float()).sum(), leaves)
    hr = case.hidden.double().requires_grad_()
    wr = case.weight.double().requires_grad_(weight_grad)
    br = case.bias.double().requires_grad_(weight_grad) if bias else None
    lp, ent = reference_linear_logprobs(hr, wr, case.targets, br, LogProbOptions(return_entropy=True))
    ref_leaves = [hr, wr] + ([br] if bias else []) if weight_grad else [hr]
    ref = torch.autograd.grad((lp * g).sum(), ref_leaves)
    return (out.logp, out.entropy, *ours), (lp, ent, *ref)


def _assert_matches(case, **kw):
    ours, ref = _grads(case, **kw)
    for a, b in zip(ours, ref):
        assert rel_err(a, b) < REL


def _fake_timer(monkeypatch, ms_of):
    """Replace the timer: ``ms_of(config)`` gives each candidate's time; returns the list of timed configs."""
    timed = []

    def measure(fn, device):
        fn()  # still runs the candidate (and its kernels) once
        cfg = timed_cfg[0]
        timed.append(cfg)
        return ms_of(cfg)

    timed_cfg = [None]
    real_forward, real_backward = triton_backend._forward, triton_backend._backward

    def spy_forward(cfg, *a):
        timed_cfg[0] = cfg
        used.append(("fwd", cfg))
        return real_forward(cfg, *a)

    def spy_backward(cfg, *a):
        timed_cfg[0] = cfg
        used.append(("bwd", cfg))
        return real_backward(cfg, *a)

    used = []
    monkeypatch.setattr(tuning, "measure_ms", measure)
    monkeypatch.setattr(triton_backend, "_forward", spy_forward)
    monkeypatch.setattr(triton_backend, "_backward", spy_backward)
    return timed, used


@pytest.mark.parametrize("kind", configs.KINDS)
def test_every_interpreter_candidate_matches_reference(kind):
    """Each config the autotuner may pick computes the same function (forward and all gradients)."""
    case = make_case(37, 40, 301, bias=kind == "bwd")
    for cfg in configs.candidates(kind):
        with configs.override(**{**cfg.to_dict(), "num_splits": 3, "poison": True}):
            _assert_matches(case, weight_grad=kind == "bwd", bias=kind == "bwd")


def test_autotune_picks_fastest_and_caches(monkeypatch, caplog):
    pool = configs.candidates("fwd")
    assert len(pool) >= 3
    fastest = pool[2]
    timed, used = _fake_timer(monkeypatch, lambda cfg: 1.0 if cfg == fastest else 5.0)
    tuning.enable_autotune()
    case = make_case(37, 40, 301)
    with caplog.at_level(logging.INFO, logger="fastgrpo"):
        _assert_matches(case, weight_grad=True)
    assert set(timed) >= set(pool)
    n_timed = len(timed)
    fwd_key = [k for k in tuning.chosen() if k.startswith("fwd|")]
    assert len(fwd_key) == 1 and tuning.chosen()[fwd_key[0]] == fastest
    assert used[-2] == ("bwd", tuning.chosen()[[k for k in tuning.chosen() if k.startswith("bwd|")][0]])
    assert any("autotuned fwd|" in r.getMessage() for r in caplog.records)
    # Same shape class (N=40 rounds up to 64 like N=37): no more timing, and the tuned config is what runs.
    used.clear()
    _assert_matches(make_case(40, 40, 301), weight_grad=True)
    assert len(timed) == n_timed
    assert used[0] == ("fwd", fastest)


def test_autotune_off_by_default_never_times(monkeypatch):
    monkeypatch.setattr(tuning, "measure_ms", lambda fn, device: pytest.fail("timed with autotuning off"))
    _assert_matches(make_case(37, 40, 301), weight_grad=True)
    assert tuning.chosen() == {}


def test_autotune_env_var(monkeypatch):
    monkeypatch.setenv("FASTGRPO_AUTOTUNE", "1")
    assert tuning.autotune_enabled()
    monkeypatch.setenv("FASTGRPO_AUTOTUNE", "0")
    assert not tuning.autotune_enabled()


def test_autotune_real_timer_gives_correct_results():
    """The real (host-clock) timer path under the interpreter: tunes fwd and bwd, results still exact."""
    tuning.enable_autotune()
    _assert_matches(make_case(21, 24, 150, bias=True), weight_grad=True, bias=True)
    assert {k.split("|")[0] for k in tuning.chosen()} == {"fwd", "bwd"}


def test_autotune_cache_file_round_trip(monkeypatch, tmp_path):
    path = tmp_path / "tune.json"
    pool = configs.candidates("fwd")
    _fake_timer(monkeypatch, lambda cfg: 0.5 if cfg == pool[1] else 2.0)
    tuning.enable_autotune(cache_path=path)
    _assert_matches(make_case(37, 40, 301), weight_grad=True)
    stored = json.loads(path.read_text())
    (key,) = [k for k in stored if k.startswith("fwd|")]
    assert configs.KernelConfig.from_dict(stored[key]) == pool[1]
    # A new process (forgotten choices) reads the file instead of timing again.
    tuning.clear_choices()
    monkeypatch.setattr(tuning, "measure_ms", lambda fn, device: pytest.fail("timed despite the cache file"))
    _assert_matches(make_case(37, 40, 301), weight_grad=True)
    assert tuning.chosen()[key] == pool[1]


def test_failing_candidate_is_skipped_but_failing_default_raises(monkeypatch):
    pool = configs.candidates("fwd")

    def ms_of(cfg):
        if cfg == pool[1]:
            raise RuntimeError("out of shared memory")
        return 1.0 if cfg == pool[2] else 3.0

    _fake_timer(monkeypatch, ms_of)
    tuning.enable_autotune()
    _assert_matches(make_case(37, 40, 301), weight_grad=True)
    assert [c for k, c in tuning.chosen().items() if k.startswith("fwd|")] == [pool[2]]

    tuning.clear_choices()
    _fake_timer(monkeypatch, lambda cfg: (_ for _ in ()).throw(RuntimeError("broken default")))
    with pytest.raises(RuntimeError, match="broken default"):
        fastgrpo.linear_logprobs(torch.randn(5, 40), torch.randn(301, 40), torch.zeros(5, dtype=torch.long))


def _write_table(tmp_path, monkeypatch, entries):
    (tmp_path / "sm90.json").write_text(json.dumps({"device": "test", "entries": entries}))
    monkeypatch.setattr(configs, "TUNED_DIR", tmp_path)
    monkeypatch.setattr(configs, "INTERPRET", False)  # the table only applies to compiled launches
    configs.tuned_table.cache_clear()


def test_tuned_table_nearest_entry_and_overrides(tmp_path, monkeypatch):
    small = {"block_n": 64, "block_v": 256, "num_warps": 8}
    large = {"block_n": 128, "block_v": 64, "num_stages": 4}
    _write_table(
        tmp_path,
        monkeypatch,
        [
            {"kind": "fwd", "dtype": "bf16", "n": 4096, "h": 896, "config": small},
            {"kind": "fwd", "dtype": "bf16", "n": 4096, "h": 3584, "config": large},
            {"kind": "bwd", "dtype": "bf16", "n": 4096, "h": 3584, "config": {"workspace_bytes": 1 << 28}},
            {"kind": "frozen_route", "dtype": "bf16", "n": 16384, "h": 3584, "identity": False},
            {"kind": "frozen_route", "dtype": "bf16", "n": 16384, "h": 896, "identity": True},
        ],
    )
    try:
        assert configs.get_config("fwd", n=8192, h=1024, arch="sm90") == configs.KernelConfig(**small)
        assert configs.get_config("fwd", n=100, h=4096, arch="sm90") == configs.KernelConfig(**large)
        assert configs.get_config("bwd", n=100, h=896, arch="sm90").workspace_bytes == 1 << 28
        # No entry for this kind / dtype / architecture: the built-in defaults.
        assert configs.get_config("fwd_softmax_w", n=4096, h=896, arch="sm90") == configs.GPU_CONFIG
        assert configs.get_config("fwd", True, n=4096, h=896, arch="sm90") == configs.GPU_CONFIG_FP32
        assert configs.get_config("fwd", n=4096, h=896, arch="sm80") == configs.GPU_CONFIG
        with configs.override(num_warps=4):
            got = configs.get_config("fwd", n=4096, h=896, arch="sm90")
            assert got == configs.KernelConfig(**{**small, "num_warps": 4})
        assert configs.frozen_head_identity(16384, 3584, "sm90") is False
        assert configs.frozen_head_identity(4096, 1024, "sm90") is True
        assert configs.frozen_head_identity(4096, 3584, None) is True
        with configs.override(frozen_identity=True):
            assert configs.frozen_head_identity(16384, 3584, "sm90") is True
    finally:
        configs.tuned_table.cache_clear()


def test_malformed_tuned_table_is_rejected(tmp_path, monkeypatch):
    _write_table(tmp_path, monkeypatch, [{"kind": "fwd", "dtype": "bf16", "n": 1, "h": 1, "config": {"blok_n": 64}}])
    try:
        with pytest.raises(ValueError, match="blok_n"):
            configs.get_config("fwd", n=1, h=1, arch="sm90")
    finally:
        configs.tuned_table.cache_clear()


def test_unknown_kind_and_override_field_rejected():
    with pytest.raises(ValueError, match="kind must be one of"):
        configs.get_config("forward")
    with pytest.raises(ValueError, match="blok_v"), configs.override(blok_v=3):
        pass


def test_frozen_head_recompute_route(monkeypatch):
    """Routing a frozen head away from the softmax@W identity: forward without the accumulator, same gradients."""
    kinds = []
    real = tuning.launch
    monkeypatch.setattr(tuning, "launch", lambda kind, run, **kw: kinds.append(kind) or real(kind, run, **kw))
    case = make_case(37, 40, 301)
    _assert_matches(case, weight_grad=False)
    assert kinds == ["fwd_softmax_w"]  # the identity: no backward launch
    kinds.clear()
    with configs.override(frozen_identity=False):
        _assert_matches(case, weight_grad=False)
    assert kinds == ["fwd", "bwd"]
