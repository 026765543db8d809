"""Opt-in autotuning (``fastgrpo.tuning``) through the launch-config resolver: selection, caching, the cache's
kernel-source hash, failing candidates, the CUDA-only timing and graph-capture branches (by injection), and every
candidate config checked against the float64 reference."""

from __future__ import annotations

import json
import logging
import shutil

import pytest
import torch
from _lp_helpers import make_case, rel_err

import fastgrpo
from fastgrpo import launch_config, triton_backend, tuning
from fastgrpo.launch_config import LaunchConfigResolver
from fastgrpo.options import LogProbOptions
from fastgrpo.reference import reference_linear_logprobs
from fastgrpo.tuning import Autotuner
from fastgrpo_kernels import configs

REL = 2e-5
interpreter = pytest.mark.interpreter


@pytest.fixture(autouse=True)
def resolver(monkeypatch):
    """A fresh resolver (own overrides and autotuning state) for each test."""
    monkeypatch.delenv("FASTGRPO_AUTOTUNE", raising=False)
    monkeypatch.delenv("FASTGRPO_AUTOTUNE_CACHE", raising=False)
    with launch_config.use(LaunchConfigResolver()) as r:
        yield r


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
    """Replace the timer: ``ms_of(config)`` gives each candidate's time. Returns (timed configs, configs run)."""
    timed, used, last = [], [], [None]

    def measure(fn, device):
        fn()  # still runs the candidate (and its kernels) once
        timed.append(last[0])
        return ms_of(last[0])

    def spy(kind, real):
        def run(cfg, *a):
            last[0] = cfg
            used.append((kind, cfg))
            return real(cfg, *a)

        return run

    monkeypatch.setattr(tuning, "measure_ms", measure)
    monkeypatch.setattr(triton_backend, "_forward", spy("fwd", triton_backend._forward))
    monkeypatch.setattr(triton_backend, "_backward", spy("bwd", triton_backend._backward))
    return timed, used


@interpreter
@pytest.mark.parametrize("kind", configs.TUNABLE_KINDS)
def test_every_interpreter_candidate_matches_reference(kind, resolver):
    """Each config the autotuner may pick computes the same function (forward and all gradients)."""
    case = make_case(37, 40, 301, bias=kind == "bwd")
    for cfg in resolver.candidates(kind):
        with launch_config.override(**{**cfg.to_dict(), "num_splits": 3, "poison": True}):
            _assert_matches(case, weight_grad=kind == "bwd", bias=kind == "bwd")


@interpreter
def test_autotune_picks_fastest_and_caches(monkeypatch, caplog, resolver):
    pool = resolver.candidates("fwd")
    assert len(pool) >= 3
    fastest = pool[2]
    timed, used = _fake_timer(monkeypatch, lambda cfg: 1.0 if cfg == fastest else 5.0)
    tuning.enable_autotune()
    with caplog.at_level(logging.INFO, logger="fastgrpo"):
        _assert_matches(make_case(37, 40, 301), weight_grad=True)
    assert set(timed) >= set(pool)
    n_timed = len(timed)
    chosen = tuning.chosen()
    (fwd_key,) = [k for k in chosen if k.startswith("fwd|")]
    (bwd_key,) = [k for k in chosen if k.startswith("bwd|")]
    assert chosen[fwd_key] == fastest and fwd_key.startswith("fwd|fp32|n<=64|h=40|v=301|")
    assert used[-1] == ("bwd", chosen[bwd_key])
    assert any("autotuned fwd|" in r.getMessage() for r in caplog.records)
    # Same shape class (N=40 rounds up to 64 like N=37): no more timing, and the tuned config is what runs.
    used.clear()
    _assert_matches(make_case(40, 40, 301), weight_grad=True)
    assert len(timed) == n_timed
    assert used[0] == ("fwd", fastest)
    # The choice is step 4 of the resolution: an override still wins over it.
    device = torch.device("cpu")
    assert resolver.resolve("fwd", "fp32", device=device, n=40, h=40, vocab=301) == fastest
    with launch_config.override(num_warps=2):
        assert resolver.resolve("fwd", "fp32", device=device, n=40, h=40, vocab=301).num_warps == 2


@interpreter
def test_autotune_off_by_default_never_times(monkeypatch):
    monkeypatch.setattr(tuning, "measure_ms", lambda fn, device: pytest.fail("timed with autotuning off"))
    _assert_matches(make_case(37, 40, 301), weight_grad=True)
    assert tuning.chosen() == {}


def test_autotune_env_var(monkeypatch):
    monkeypatch.setenv("FASTGRPO_AUTOTUNE", "1")
    assert tuning.autotune_enabled()
    monkeypatch.setenv("FASTGRPO_AUTOTUNE", "0")
    assert not tuning.autotune_enabled()
    tuning.enable_autotune()  # explicit state wins over the variable
    assert tuning.autotune_enabled()


@interpreter
def test_autotune_real_timer_gives_correct_results():
    """The real (host-clock) timer path under the interpreter: tunes fwd and bwd, results still exact."""
    tuning.enable_autotune()
    _assert_matches(make_case(21, 24, 150, bias=True), weight_grad=True, bias=True)
    assert {k.split("|")[0] for k in tuning.chosen()} == {"fwd", "bwd"}


@interpreter
def test_autotune_cache_file_round_trip(monkeypatch, tmp_path, resolver):
    path = tmp_path / "tune.json"
    pool = resolver.candidates("fwd")
    _fake_timer(monkeypatch, lambda cfg: 0.5 if cfg == pool[1] else 2.0)
    tuning.enable_autotune(cache_path=path)
    _assert_matches(make_case(37, 40, 301), weight_grad=True)
    stored = json.loads(path.read_text())
    assert stored["kernel_sources"] == tuning.kernel_source_hash()
    (key,) = [k for k in stored["choices"] if k.startswith("fwd|")]
    assert configs.KernelConfig.from_dict(stored["choices"][key]) == pool[1]
    # A new process (forgotten choices) reads the file instead of timing again.
    tuning.clear_choices()
    monkeypatch.setattr(tuning, "measure_ms", lambda fn, device: pytest.fail("timed despite the cache file"))
    _assert_matches(make_case(37, 40, 301), weight_grad=True)
    assert tuning.chosen()[key] == pool[1]


@interpreter
def test_stale_cache_from_other_kernel_sources_is_ignored(monkeypatch, tmp_path, caplog):
    """A cache written for other kernel sources is never applied: the shape is tuned again and the file rewritten."""
    path = tmp_path / "tune.json"
    case = make_case(21, 24, 150)
    forward = lambda: fastgrpo.linear_logprobs(case.hidden, case.weight, case.targets, backend="triton")  # noqa: E731
    old = Autotuner(enabled=True, cache_path=path, source_hash="old-kernels")
    with launch_config.use(LaunchConfigResolver(autotuner=old)) as r:
        pool = r.candidates("fwd")
        _fake_timer(monkeypatch, lambda cfg: 0.5 if cfg == pool[1] else 2.0)
        forward()
    assert json.loads(path.read_text())["kernel_sources"] == "old-kernels"

    timed, _ = _fake_timer(monkeypatch, lambda cfg: 0.5 if cfg == pool[2] else 2.0)
    new = Autotuner(enabled=True, cache_path=path, source_hash="edited-kernels")
    with launch_config.use(LaunchConfigResolver(autotuner=new)), caplog.at_level(logging.INFO, logger="fastgrpo"):
        forward()
    assert timed, "the stale cache was applied instead of tuning again"
    assert [c for k, c in new.chosen().items() if k.startswith("fwd|")] == [pool[2]]
    assert any("ignoring autotune cache" in r.getMessage() for r in caplog.records)
    stored = json.loads(path.read_text())
    assert stored["kernel_sources"] == "edited-kernels"
    assert [c for k, c in stored["choices"].items() if k.startswith("fwd|")] == [pool[2].to_dict()]


def test_kernel_source_hash_follows_the_kernel_files(tmp_path):
    """Editing any kernel source changes the hash; the config data files are not kernel sources."""
    names = {p.name for p in tuning.kernel_sources()}
    assert {"common.py", "linear_logprobs_fwd.py", "linear_logprobs_bwd.py", "grpo_loss.py"} <= names
    assert not names & {"configs.py", "arch_configs.py"}
    copies = []
    for p in tuning.kernel_sources():
        shutil.copy(p, tmp_path / p.name)
        copies.append(tmp_path / p.name)
    before = tuning.kernel_source_hash(copies)
    assert before == tuning.kernel_source_hash()  # same bytes, same hash
    for copy in copies:
        text = copy.read_text()
        copy.write_text(text + "\n# edited\n")
        assert tuning.kernel_source_hash(copies) != before, copy.name
        copy.write_text(text)
    assert tuning.kernel_source_hash(copies) == before


@interpreter
def test_failing_candidate_is_skipped_but_failing_default_raises(monkeypatch, resolver):
    pool = resolver.candidates("fwd")

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


# ---- CUDA-only branches, driven on CPU by injection ----


def test_measure_ms_uses_cuda_event_timing_on_cuda(monkeypatch):
    """On a CUDA device the timer is triton's do_bench (CUDA events, median); elsewhere the host clock."""
    import triton.testing

    calls = []
    monkeypatch.setattr(triton.testing, "do_bench", lambda fn, **kw: calls.append((fn, kw)) or 1.25)
    fn = lambda: None  # noqa: E731
    assert tuning.measure_ms(fn, torch.device("cuda", 0)) == 1.25
    assert calls == [(fn, {"warmup": 10, "rep": 40, "return_mode": "median"})]
    runs = []
    assert tuning.measure_ms(lambda: runs.append(1), torch.device("cpu")) >= 0
    assert len(runs) == 4 and len(calls) == 1  # a warm-up and three timed runs, no CUDA timing


def _fake_cuda(monkeypatch, capability=(9, 0), name="NVIDIA H200"):
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: name)


@pytest.mark.parametrize("capturing", [True, False])
def test_no_timing_inside_cuda_graph_capture(monkeypatch, caplog, capturing):
    """Inside a CUDA graph capture, timing would break the capture: the fixed config runs, untimed, said once."""
    _fake_cuda(monkeypatch)
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: capturing)
    measured = []
    monkeypatch.setattr(tuning, "measure_ms", lambda fn, device: measured.append(fn()) or 1.0)
    r = LaunchConfigResolver(interpret=False, autotuner=Autotuner(enabled=True))
    device = torch.device("cuda", 0)
    fixed = r.resolve("fwd", "bf16", device=device, n=4096, h=896, vocab=151936)
    ran = []
    with caplog.at_level(logging.INFO, logger="fastgrpo"):
        out = r.launch("fwd", lambda cfg: ran.append(cfg) or cfg, precision="bf16", n=4096, h=896, vocab=151936,
                       device=device)  # fmt: skip
    assert out == fixed  # ties keep the fixed config
    if capturing:
        assert ran == [fixed] and not measured and r.autotuner.chosen() == {}
        assert any("CUDA graph capture" in rec.getMessage() for rec in caplog.records)
    else:
        assert len(measured) == len(set(r.candidates("fwd", "bf16")) | {fixed})
        (key,) = r.autotuner.chosen()
        assert key == "fwd|bf16|n<=4096|h=896|v=151936|NVIDIA H200"
