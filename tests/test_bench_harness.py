"""The benchmark harness's arithmetic from known inputs, and a smoke run of the CPU suite on tiny shapes.

No timing is asserted anywhere: speed claims come from the suite's own output, never from CI.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fastgrpo import env
from fastgrpo_benchmarks.harness.memory import measure_memory
from fastgrpo_benchmarks.harness.metrics import (
    matmul_flops,
    max_abs_error,
    model_flops,
    peak_extra_bytes,
    peak_live_excluding,
    ratio,
    roofline_percent,
    tflops,
    timed_rounds,
)
from fastgrpo_benchmarks.harness.suites import FORWARD_MODES
from fastgrpo_benchmarks.peers import Outputs
from fastgrpo_benchmarks.reports.report import derive, table_lines
from fastgrpo_benchmarks.reports.summary import summary_lines

REPO = Path(__file__).resolve().parents[1]


def _load_tune():
    """``tools/tune.py`` (the tuner that writes ``kernels/fastgrpo_kernels/tuned/``; a script folder, not an
    installed package)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("fastgrpo_tools_tune", REPO / "tools" / "tune.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_model_flops_per_mode() -> None:
    n, h, v = 4096, 896, 151936
    gemm = 2 * n * h * v
    assert model_flops("fwd", n, h, v) == gemm
    assert model_flops("fwd_bwd", n, h, v) == 4 * gemm  # forward, recompute, dX, dW: the 8NHV of the targets
    assert model_flops("fwd_bwd_frozen", n, h, v) == 2 * gemm  # forward, dX
    assert model_flops("grpo", n, h, v) == 4 * gemm
    with pytest.raises(ValueError, match="unknown mode"):
        model_flops("bwd", n, h, v)


def test_tflops_and_roofline() -> None:
    assert matmul_flops(8192, 8192, 8192) == 2 * 8192**3
    assert tflops(2e12, 2.0) == pytest.approx(1.0)
    # The landscape's example: fwd at H=896, N=16384 is 4.46 TFLOP; at 5.6 ms that is ~797 TFLOP/s.
    f = model_flops("fwd", 16384, 896, 151936)
    assert tflops(f, 5.6e-3) == pytest.approx(f / 5.6e-3 / 1e12)
    assert roofline_percent(400.0, 800.0) == pytest.approx(50.0)
    assert roofline_percent(798.0, 760.0) == pytest.approx(105.0)  # over 100% is possible and reported
    assert math.isnan(tflops(1e12, 0.0))
    assert math.isnan(roofline_percent(1.0, 0.0))


def test_ratios_and_memory_arithmetic() -> None:
    assert ratio(10.0, 5.0) == pytest.approx(2.0)  # twice as fast as the baseline
    assert ratio(5.0, 10.0) == pytest.approx(0.5)
    assert math.isnan(ratio(None, 1.0)) and math.isnan(ratio(1.0, 0.0)) and math.isnan(ratio(1.0, None))
    assert peak_extra_bytes(peak=1000, baseline=300, retained=200) == 500
    assert peak_extra_bytes(peak=1000, baseline=900, retained=200) == 0  # never negative
    # (pointer, size) events: a 10-byte temporary peak before a 100-byte gradient is allocated and handed back.
    events = [(1, 10), (2, 5), (1, -10), (3, 100), (4, 7), (4, -7), (2, -5)]
    assert peak_live_excluding(events, handed_back={3}) == 15
    assert peak_live_excluding(events, handed_back=set()) == 112
    assert peak_extra_bytes(peak=112, baseline=0, retained=100) == 12  # the counter formula hides the earlier 15
    # A pointer freed as a temporary and reused by the returned tensor counts only while it was a temporary.
    assert peak_live_excluding([(1, 50), (1, -50), (1, 20)], handed_back={1}) == 50
    assert timed_rounds(0.1, 1.0, 3, 30) == 10
    assert timed_rounds(2.0, 1.0, 3, 30) == 3
    assert timed_rounds(1e-4, 1.0, 3, 30) == 30
    assert max_abs_error([1e-3, 2e-3]) == 2e-3
    assert math.isnan(max_abs_error([1e-3, float("nan")]))


def _row(impl: str, mode: str, median_s: float, peak: int, status: str = "ok") -> dict:
    return {
        "case": "op", "suite": "t", "shape": "s", "tokens": 1000, "hidden": 100, "vocab": 1000, "mode": mode,
        "impl": impl, "flops": model_flops(mode, 1000, 100, 1000), "median_s": median_s, "peak_extra_bytes": peak,
        "status": status, "reason": "" if status == "ok" else "not installed", "note": "",
    }  # fmt: skip


def test_derive_computes_ratios_against_trl_per_shape_and_mode() -> None:
    rows = [
        _row("trl_chunked", "fwd", 0.004, 8 * 2**20),
        _row("fastgrpo", "fwd", 0.002, 2 * 2**20),
        _row("fastgrpo", "fwd_bwd", 0.010, 2**20),  # no trl row for this mode: no ratio
        {**_row("cce", "fwd", 0.0, 0, status="skipped"), "median_s": None},
    ]
    out = {(r["impl"], r["mode"]): r for r in derive(rows, matmul_tflops=0.2)}
    fast = out[("fastgrpo", "fwd")]
    assert fast["tflops"] == pytest.approx(2 * 1000 * 100 * 1000 / 0.002 / 1e12)  # 0.1 TFLOP/s
    assert fast["roofline_pct"] == pytest.approx(50.0)
    assert fast["median_ms"] == pytest.approx(2.0)
    assert fast["peak_extra_mib"] == pytest.approx(2.0)
    assert fast["speedup_vs_trl"] == pytest.approx(2.0)
    assert fast["memory_ratio_vs_trl"] == pytest.approx(4.0)
    assert out[("trl_chunked", "fwd")]["speedup_vs_trl"] == pytest.approx(1.0)
    assert "speedup_vs_trl" not in out[("fastgrpo", "fwd_bwd")]
    assert "tflops" not in out[("cce", "fwd")]
    lines = table_lines(list(out.values()))
    assert any("skipped: not installed" in line for line in lines)


def test_trainer_rows_without_timing_and_summary() -> None:
    step = {**_row("fastgrpo", "fwd", 2.0, 3 * 2**20), "case": "trainer", "mode": "step", "flops": None}
    fit = {"case": "trainer", "shape": "s", "mode": "max_len@24GiB", "impl": "fastgrpo", "status": "ok",
           "reason": "", "note": "", "max_completion_len": 8192}  # fmt: skip
    sft = {**step, "mode": "sft_step", "median_s": 1.0}
    sft_trl = {**sft, "impl": "trl_chunked", "median_s": 3.0}
    rows = derive([step, fit, sft, sft_trl], matmul_tflops=1.0)
    assert rows[0]["median_ms"] == pytest.approx(2000.0) and "tflops" not in rows[0]
    assert rows[2]["speedup_vs_trl"] == pytest.approx(3.0)  # SFT step against trl's SFT step, not GRPO's
    assert any("8192" in line for line in table_lines(rows))
    payload = {"environment": {"device_name": "dev", "versions": {"torch": "x"}}, "matmul_tflops": 1.0, "rows": rows}
    text = "\n".join(summary_lines(payload))
    assert "| s | grpo | fastgrpo | 2000.0 | 3 | 8192 |" in text
    assert "| s | sft | fastgrpo | 1000.0 | 3 | - |" in text  # no memory-budget search for SFT


def test_retained_bytes_counts_each_storage_once() -> None:
    a = torch.zeros(10, dtype=torch.float32)
    g = torch.zeros(3, 4, dtype=torch.float64)
    assert Outputs(a, g, None, (a[:5], None)).retained_bytes() == 40 + 96


def test_cpu_peak_extra_memory_sees_temporaries() -> None:
    mib = 2**20

    def call() -> Outputs:
        tmp = torch.ones(4 * mib // 4)  # 4 MiB temporary, freed before returning
        out = tmp[: mib // 4].clone()  # 1 MiB returned
        del tmp
        return Outputs(out, None, None)

    reading, out = measure_memory(call, "cpu")
    assert out.retained_bytes() == mib
    assert reading.counter_bytes is None
    # 4 MiB temporary live next to the returned 1 MiB: the call's own peak is the 4 MiB (plus a few scalar bytes)
    assert 4 * mib <= reading.peak_extra_bytes < 4 * mib + 4096


@pytest.mark.skipif(env.flag("FASTGRPO_SKIP_BENCH_SMOKE"), reason="FASTGRPO_SKIP_BENCH_SMOKE=1")
def test_cpu_suite_smoke(tmp_path: Path) -> None:
    """`python -m benchmarks --suite cpu-tiny` end to end: every row present, ok or with a reason; files written."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["FASTGRPO_BACKEND"] = "torch"
    cmd = [
        sys.executable,
        "-m",
        "benchmarks",
        "--suite",
        "cpu-tiny",
        "--out",
        str(tmp_path),
        "--no-plots",
        "--no-trainer",
    ]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert "fastgrpo benchmark: suite cpu-tiny" in proc.stdout
    payload = json.loads((tmp_path / "results.json").read_text())
    env_info = payload["environment"]
    for key in ("device_name", "driver", "date_utc", "versions"):
        assert key in env_info
    assert {"torch", "triton", "trl", "liger-kernel", "cut-cross-entropy"} <= set(env_info["versions"])
    rows = payload["rows"]
    by_key = {(r["case"], r["mode"], r["impl"]): r for r in rows}
    for mode in ("fwd", "fwd_bwd", "fwd_bwd_frozen", "grpo"):
        for impl in ("fastgrpo", "trl_chunked", "eager"):
            assert (("op", mode, impl)) in by_key
    for mode in ("fwd_logp", "fwd_all"):  # trl's optional outputs: fastgrpo and trl only
        assert by_key[("op", mode, "fastgrpo")]["status"] == by_key[("op", mode, "trl_chunked")]["status"] == "ok"
        assert ("op", mode, "eager") not in by_key
    assert by_key[("op", "fwd", "cce")]["status"] == "skipped" and by_key[("op", "fwd", "cce")]["reason"]
    for r in rows:
        assert r["status"] in ("ok", "skipped", "failed")
        assert r["status"] == "ok" or r["reason"]
    ok_op = [r for r in rows if r["case"] == "op" and r["status"] == "ok"]
    assert all(r["tflops"] > 0 and r["peak_extra_bytes"] >= 0 for r in ok_op)
    # Every peer is wired to compute the same function: fp32 errors against the float64 reference stay tiny.
    for r in ok_op:
        assert r["err_value"] < 1e-4, r
        assert r["mode"] in FORWARD_MODES or (r["err_grad"] is not None and r["err_grad"] < 1e-4), r
    trl = by_key[("op", "fwd_bwd", "trl_chunked")]
    assert trl["speedup_vs_trl"] == pytest.approx(1.0) and trl["memory_ratio_vs_trl"] == pytest.approx(1.0)
    assert (tmp_path / "results.csv").is_file() and (tmp_path / "table.md").is_file()
    assert (tmp_path / "pytest-benchmark.json").is_file()


@pytest.mark.interpreter
def test_tune_script_smoke(tmp_path: Path, monkeypatch) -> None:
    """`python -m tools.tune` end to end on tiny shapes under the interpreter: every candidate timed and checked
    against the default config, a table the library reads back, the frozen route recorded."""
    tune = _load_tune()
    from fastgrpo_kernels import configs

    monkeypatch.setattr(configs, "TUNED_DIR", configs.TUNED_DIR)  # tune points the library at its output: undo
    argv = ["--device", "cpu", "--hidden", "24", "--tokens", "21", "--vocab", "150", "--out", str(tmp_path)]
    try:
        assert tune.main(argv) == 0
    finally:
        configs.tuned_table.cache_clear()
    table = json.loads((tmp_path / "cpu-interpreter.json").read_text())
    assert table["versions"]["triton"] and table["date_utc"]
    kinds = [e["kind"] for e in table["entries"]]
    assert kinds == ["fwd", "fwd_softmax_w", "bwd", "frozen_route"]
    log = [json.loads(line) for line in (tmp_path / "tune_log.jsonl").read_text().splitlines()]
    timed = [r for r in log if "ms" in r]
    assert len(timed) == 3 * len(configs.candidates("fwd"))
    assert all(r["max_rel_err"] < 1e-3 for r in timed)
    for e in table["entries"][:3]:
        configs.KernelConfig.from_dict(e["config"])  # loadable
        assert (e["n"], e["h"]) == (21, 24)
        # The table holds the fastest candidate the log timed, and the default config's own time from the log.
        rows = [r for r in timed if r["kind"] == e["kind"]]
        fastest = min(rows, key=lambda r: r["ms"])
        assert e["label"] == fastest["config"] and e["ms"] == pytest.approx(fastest["ms"], abs=1e-4)
        default = next(r for r in rows if r["config"] == configs.candidates(e["kind"])[0].label())
        assert e["default_ms"] == pytest.approx(default["ms"], abs=1e-4)
    assert "| frozen route | 21 | 24 |" in (tmp_path / "tune.md").read_text()


def _op_row(shape, mode, impl, ms, peak_mib, roofline=None, status="ok"):
    row = {"case": "op", "shape": shape, "mode": mode, "impl": impl, "status": status}
    if status == "ok":
        row |= {"median_s": ms / 1e3, "peak_extra_bytes": peak_mib * 2**20, "roofline_pct": roofline}
        row["speedup_vs_trl"] = None  # filled below from the trl row, as report.derive does
    return row


def test_targets_from_results() -> None:
    """Each target's figure comes from the rows; missing or failed rows are 'not measured', never 'met'."""
    from fastgrpo_benchmarks.reports.targets import evaluate, report_lines

    rows = [
        _op_row("s", "fwd", "fastgrpo", 8.0, 10, roofline=80.0),
        _op_row("s", "fwd", "trl_chunked", 10.0, 100),  # 1.25x, 10% memory: met
        _op_row("s", "fwd", "cce", 7.9, 5),  # CCE faster: missed
        _op_row("s", "fwd_bwd_frozen", "fastgrpo", 10.0, 30, roofline=69.9),
        _op_row("s", "fwd_bwd_frozen", "trl_chunked", 15.0, 100),  # 1.5x < 1.6x, 30% > 25%: missed
        _op_row("s", "grpo", "fastgrpo", 10.0, 10),
        _op_row("s", "grpo", "trl_chunked", 13.0, 100),
        _op_row("s", "grpo", "liger_fused", 31.0, 100),  # 3.1x: met
        _op_row("s", "grpo", "cce", 0, 0, status="skipped"),
    ]
    for r in rows:
        trl = next(t for t in rows if t["mode"] == r["mode"] and t["impl"] == "trl_chunked")
        if r["status"] == "ok":
            r["speedup_vs_trl"] = trl["median_s"] / r["median_s"]
    got = {(r["mode"], r["target"]): r for r in evaluate({"rows": rows})}
    assert got[("fwd", "speed-up vs trl 1.16")]["met"] and got[("fwd", "% of matmul (same run)")]["met"]
    assert got[("fwd", "extra memory / trl's")]["got"] == pytest.approx(0.1)
    assert not got[("fwd", "speed-up vs Cut Cross-Entropy")]["met"]
    assert got[("fwd_bwd_frozen", "speed-up vs trl 1.16")]["got"] == pytest.approx(1.5)
    assert not got[("fwd_bwd_frozen", "speed-up vs trl 1.16")]["met"]
    assert not got[("fwd_bwd_frozen", "% of matmul (same run)")]["met"]
    assert not got[("fwd_bwd_frozen", "extra memory / trl's")]["met"]
    assert got[("fwd_bwd_frozen", "speed-up vs Cut Cross-Entropy")]["got"] is None  # no CCE row: not measured
    assert got[("grpo", "speed-up vs Liger fused GRPO")]["got"] == pytest.approx(3.1)
    assert got[("grpo", "speed-up vs Liger fused GRPO")]["met"]
    assert got[("grpo", "speed-up vs Cut Cross-Entropy")] == {**got[("grpo", "speed-up vs Cut Cross-Entropy")],
                                                               "got": None, "met": False}  # fmt: skip
    text = "\n".join(report_lines({"rows": rows, "environment": {"device_name": "test"}}))
    assert (
        "MISSED" in text
        and "not measured" in text
        and "| s | fwd | speed-up vs trl 1.16 | >= 1.25x | 1.25x | met |" in text
    )


def test_readme_performance_section_is_generated_from_committed_results() -> None:
    from fastgrpo_benchmarks.reports import readme

    stale = "README's performance section is stale: run `python -m fastgrpo_benchmarks.reports.readme --write`"
    assert readme.current_section(REPO / "README.md") == readme.section(), stale
    folders = [folder.name for folder, _ in readme.committed_results()]
    assert folders and all(name not in readme.NOT_COMMITTED for name in folders)


def test_all_outputs_and_trainer_step_targets() -> None:
    """fwd_all against fastgrpo's own log-probs-alone forward (<= 1.05x); SFT / DPO steps against stock trl's."""
    from fastgrpo_benchmarks.reports.targets import evaluate, report_lines

    def step(shape, mode, impl, ms, status="ok"):
        return {**_op_row(shape, mode, impl, ms, 1, status=status), "case": "trainer"}

    rows = [
        _op_row("a", "fwd_logp", "fastgrpo", 10.0, 1),
        _op_row("a", "fwd_logp", "trl_chunked", 9.0, 1),  # trl's own log-probs alone are not the denominator
        _op_row("a", "fwd_all", "fastgrpo", 10.4, 1),  # 1.04x: met
        _op_row("b", "fwd_logp", "fastgrpo", 10.0, 1),
        _op_row("b", "fwd_all", "fastgrpo", 10.6, 1),  # 1.06x: missed
        _op_row("c", "fwd_all", "fastgrpo", 10.0, 1),  # no fwd_logp row: not measured
        step("t", "sft_step", "fastgrpo", 90.0),
        step("t", "sft_step", "trl_chunked", 100.0),  # 1.11x: met
        step("t", "dpo_step", "fastgrpo", 110.0),
        step("t", "dpo_step", "trl_chunked", 100.0),  # 0.91x: missed
        step("u", "sft_step", "fastgrpo", 0.0, status="failed"),
        step("u", "sft_step", "trl_chunked", 100.0),
        step("t", "step", "fastgrpo", 50.0),  # GRPO's step has no trainer target here
        step("t", "step", "trl_chunked", 100.0),
    ]
    got = {(r["shape"], r["mode"]): r for r in evaluate({"rows": rows})}
    assert got[("a", "fwd_all")]["got"] == pytest.approx(1.04) and got[("a", "fwd_all")]["met"]
    assert got[("b", "fwd_all")]["got"] == pytest.approx(1.06) and not got[("b", "fwd_all")]["met"]
    assert got[("c", "fwd_all")]["got"] is None and not got[("c", "fwd_all")]["met"]
    assert ("a", "fwd_logp") not in got
    assert got[("t", "sft_step")]["got"] == pytest.approx(100 / 90) and got[("t", "sft_step")]["met"]
    assert got[("t", "dpo_step")]["got"] == pytest.approx(100 / 110) and not got[("t", "dpo_step")]["met"]
    assert got[("u", "sft_step")]["got"] is None and not got[("u", "sft_step")]["met"]
    assert ("t", "step") not in got
    text = "\n".join(report_lines({"rows": rows, "environment": {"device_name": "test"}}))
    assert "| a | fwd_all | time / log-probs alone | <= 1.05x | 1.040x | met |" in text
    assert "| t | sft_step | trainer step speed-up vs trl 1.16 | > 1x | 1.11x | met |" in text


def _stage_record(stage: str, index: int, result: dict, status: str = "ok") -> dict:
    from fastgrpo_benchmarks.gpu.schema import SCHEMA

    triton = {"compile_s": 0.0, "compiles": 0, "cache_hits": 0, "cache_misses": 0, "cache_dir": "/tmp/c"}
    return {"schema": SCHEMA, "stage": stage, "index": index, "status": status, "dry_run": False,
            "started_utc": "2026-12-01T00:00:00Z", "wall_s": 1.0, "budget_s": 10.0, "triton": triton,
            "result": result, "error": None}  # fmt: skip


def _fake_lease(out: Path) -> None:
    from fastgrpo_benchmarks.gpu.lease import STAGES, stage_path, write_record

    rows = [_op_row("s", "fwd", "fastgrpo", 8.0, 10, roofline=80.0), _op_row("s", "fwd", "trl_chunked", 10.0, 100)]
    rows[0]["speedup_vs_trl"], rows[1]["speedup_vs_trl"] = 1.25, 1.0
    env = {"device_name": "H200", "device_type": "cuda", "date_utc": "2026-12-01T00:00:00Z", "versions": {}}
    results = {
        "provenance": {"device_name": "H200", "driver": "580", "clocks": {}, "versions": {"torch": "2.11"},
                       "git_commit": "abc", "wheels": [], "triton_cache": {}, "date_utc": env["date_utc"]},
        "correctness": {"checks": [], "passed": True},
        "ops": {"suite": "lease", "matmul_tflops": 800.0, "rows": rows, "targets": [], "environment": env},
        "trainer": {"suite": "lease", "rows": []},
        "tune": {"entries": [], "log": []},
    }  # fmt: skip
    for index, stage in enumerate(STAGES, 1):
        write_record(stage_path(out, index, stage), _stage_record(stage.name, index, results.get(stage.name, {})))


def test_lease_files_schema_and_targets(tmp_path: Path) -> None:
    """A lease's $OUT passes the schema check; a missing key, a bad status or a 9th file is reported; the targets
    and the README generator read the lease's files."""
    from fastgrpo_benchmarks.gpu.lease import STAGES
    from fastgrpo_benchmarks.gpu.schema import check_dir
    from fastgrpo_benchmarks.reports.readme import section_lines
    from fastgrpo_benchmarks.reports.results_io import load_payload
    from fastgrpo_benchmarks.reports.targets import report_lines

    _fake_lease(tmp_path)
    assert check_dir(tmp_path, STAGES, dry_run=False, require_ok=True) == []
    assert check_dir(tmp_path, STAGES, dry_run=True)  # the files say dry_run: false
    text = "\n".join(report_lines(load_payload(tmp_path)))
    assert "Targets on H200" in text and "| s | fwd | speed-up vs trl 1.16 | >= 1.25x | 1.25x | met |" in text
    assert load_payload(tmp_path / "03-ops.json")["matmul_tflops"] == 800.0
    (tmp_path.parent / "results").mkdir()
    (tmp_path.parent / "results" / "h200-2026-12-01").symlink_to(tmp_path)
    lines = section_lines(tmp_path.parent / "results", tmp_path.parent)
    assert "**H200**, 2026-12-01, GPU: `results/h200-2026-12-01/`" in lines
    assert not any("No GPU result" in line for line in lines)

    ops = tmp_path / "03-ops.json"
    record = json.loads(ops.read_text())
    del record["result"]["rows"]
    ops.write_text(json.dumps(record))
    assert any("03-ops: result.rows missing" in p for p in check_dir(tmp_path, STAGES))
    ops.write_text(json.dumps({**record, "status": "done"}))
    assert any("03-ops: status 'done'" in p for p in check_dir(tmp_path, STAGES))
    for i in range(4):
        (tmp_path / f"extra{i}.txt").write_text("x")
    assert any("9 files" in p for p in check_dir(tmp_path, STAGES))


def test_lease_stage_stopped_by_its_budget_keeps_its_partial_result(tmp_path: Path) -> None:
    """A stage killed mid-way: its last flushed result stays, the salvage adds the rows the suite had finished, and
    the file says 'timeout' and still passes the schema."""
    from fastgrpo_benchmarks.gpu.lease import STAGES, StageContext, _close_unfinished, stage_path, write_record
    from fastgrpo_benchmarks.gpu.schema import check_record

    stage = next(s for s in STAGES if s.name == "ops")
    index = STAGES.index(stage) + 1
    work = tmp_path / "work" / "ops"
    (work / "results").mkdir(parents=True)
    row = {**_row("fastgrpo", "fwd", 0.002, 2 * 2**20), "suite": "lease"}
    (work / "results" / "rows.partial.jsonl").write_text(json.dumps(row) + "\n")
    ctx = StageContext(stage, index, tmp_path, work, dry_run=False, budget_s=5.0)
    ctx.flush({"suite": "lease", "matmul_tflops": 0.2, "rows": [], "targets": []})
    assert json.loads(stage_path(tmp_path, index, stage).read_text())["status"] == "running"
    _close_unfinished(stage_path(tmp_path, index, stage), stage, index, tmp_path, work.parent, False, 5.0, 5.2, True)
    record = json.loads(stage_path(tmp_path, index, stage).read_text())
    assert record["status"] == "timeout" and "5 s budget" in record["error"] and record["wall_s"] == 5.2
    (got,) = record["result"]["rows"]
    assert got["impl"] == "fastgrpo" and got["roofline_pct"] == pytest.approx(50.0)  # derived with the 0.2 ceiling
    assert check_record(record, stage.result_keys, dry_run=False) == []
    write_record(stage_path(tmp_path, index, stage), {**record, "status": "running"})
    assert check_record(json.loads(stage_path(tmp_path, index, stage).read_text()), stage.result_keys)


def test_compile_timer_counts_time_hits_and_misses(tmp_path: Path, monkeypatch) -> None:
    """The lease's per-stage Triton compile figures: a compile that adds a cache entry is a miss, one that adds
    none is a hit (served from a carried cache); the wall time of every call is summed."""
    import time

    triton_compiler = pytest.importorskip("triton.compiler")
    from fastgrpo_benchmarks.gpu.compile_timer import CompileTimer

    monkeypatch.setenv("TRITON_CACHE_DIR", str(tmp_path))

    def fake_compile(src, target=None, options=None):
        time.sleep(0.01)
        (tmp_path / src).mkdir(exist_ok=True)  # Triton writes one folder per compiled kernel
        return f"kernel {src}"

    monkeypatch.setattr(triton_compiler, "compile", fake_compile)
    timer = CompileTimer().install()
    assert triton_compiler.compile is not fake_compile
    assert triton_compiler.compile("a") == "kernel a"
    triton_compiler.compile("b")
    triton_compiler.compile("a")  # already in the cache
    s = timer.summary()
    assert (s["compiles"], s["cache_misses"], s["cache_hits"]) == (3, 2, 1)
    assert s["compile_s"] >= 0.03 and s["cache_dir"] == str(tmp_path)


def test_lease_stage_that_raises_says_error_and_keeps_what_it_finished(tmp_path: Path, monkeypatch) -> None:
    from fastgrpo_benchmarks.gpu import lease
    from fastgrpo_benchmarks.gpu.schema import check_record

    triton_compiler = pytest.importorskip("triton.compiler")
    monkeypatch.setattr(triton_compiler, "compile", triton_compiler.compile)  # the stage's timer wraps it: undo after

    def broken(ctx):
        ctx.flush({"entries": [{"kind": "fwd"}]})
        raise RuntimeError("candidate 3 differs")

    funcs = {"x:run": broken, "x:salvage": lambda ctx, partial: {**partial, "log": ["salvaged"]}}
    monkeypatch.setattr(lease, "_resolve", funcs.__getitem__)
    stage = lease.Stage("tune", 1, 1, "x:run", ("entries", "log"), salvage="x:salvage")
    ctx = lease.StageContext(stage, 5, tmp_path, tmp_path / "work", dry_run=True, budget_s=1.0)
    assert lease.run_stage_here(ctx) == 1
    record = json.loads((tmp_path / "05-tune.json").read_text())
    assert record["status"] == "error" and "candidate 3 differs" in record["error"]
    assert record["result"] == {"entries": [{"kind": "fwd"}], "log": ["salvaged"]}
    assert check_record(record, stage.result_keys, dry_run=True) == []
