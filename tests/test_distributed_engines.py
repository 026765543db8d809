"""DeepSpeed ZeRO-2/3 and FSDP2 on CPU (2 gloo processes): FastGRPOTrainer, and trl's SFTTrainer under
``fastgrpo.patch_trl()``, end where DDP ends.

One torchrun launch per engine family (``_dist_engines.LAUNCHES``) trains stock trl and fastgrpo for every run in
sequence (``_dist_worker.py``); the tests read what rank 0 saved. Each run is compared with the DDP run of the same
trainer, model and beta (stock trl under DDP: gradients all-reduced and averaged): trained weights within 1e-5
absolute and logged grad_norm within 1e-4 relative. Stock trl under the same engine is measured against DDP too and
reported, not asserted (with the lm_head in an FSDP unit of its own, trl's head gradients are not averaged over
ranks). Each test also asserts that its engine really ran (FSDP2 on with DTensor heads, ZeRO-3 heads partitioned)
and, for the SFT runs, whose head ran (trl's in the stock run, fastgrpo's in the patched one).
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
import torch
from _dist_engines import LAUNCHES, MODELS, RUNS, reference_run, trainer_kind
from _parity import tokenizer_dir
from _torchrun import torchrun_cmd

pytestmark = pytest.mark.stage
HERE = Path(__file__).resolve().parent
WEIGHT_ATOL = 1e-5
GRAD_NORM_RTOL = 1e-4
_LAUNCHED: dict[str, str] = {}  # launch -> why it failed ("" when it did not)


@pytest.fixture(scope="module")
def work_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from _tiny import build_model

    root = tmp_path_factory.mktemp("dist")
    _, tok = tokenizer_dir()
    for name, kwargs in MODELS.items():
        tok.save_pretrained(str(root / "models" / name))
        build_model(root / "models" / name, tok, **kwargs)
    return root


def _launch(launch: str, root: Path) -> Path:
    """Run one torchrun launch (once per session) and return the folder its rank 0 wrote to."""
    if launch not in _LAUNCHED:
        _LAUNCHED[launch] = _run_launch(launch, root)
    return root / "out" / launch


def _load(root: Path, launch: str, kind: str, run: str, trainer: str) -> dict[str, Any]:
    """One run's record; rank 0 saves each run as it ends, so runs before a crash still count (and no more)."""
    path = _launch(launch, root) / f"{kind}-{run}-{trainer}.pt"
    if not path.exists():
        pytest.fail(f"no result for {kind}-{run}-{trainer}: {_LAUNCHED[launch] or 'the launch did not save it'}")
    return torch.load(path, weights_only=False)


def _run_launch(launch: str, root: Path) -> str:
    """Why the launch failed ("" when it did not)."""
    out = root / "out" / launch
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "CUDA_VISIBLE_DEVICES": "",
        "DS_ACCELERATOR": "cpu",
        "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]),
    }
    cmd = torchrun_cmd(str(HERE / "_dist_worker.py"), launch, str(root / "models"), str(out))
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    if proc.returncode != 0:
        return f"{launch} launch failed (rc={proc.returncode}):\n" + proc.stdout[-3000:] + proc.stderr[-12000:]
    return ""


def _grad_norms(record: dict[str, Any]) -> list[float]:
    return [entry["grad_norm"] for entry in record["logs"] if "grad_norm" in entry]


def _differences(record: dict[str, Any], ref: dict[str, Any]) -> tuple[float, float]:
    """(max |weight - DDP weight| over all parameters, max relative grad_norm difference over the steps)."""
    assert record["weights"].keys() == ref["weights"].keys()
    weight_diff = max((record["weights"][k] - w).abs().max().item() for k, w in ref["weights"].items())
    norms, ref_norms = _grad_norms(record), _grad_norms(ref)
    assert len(norms) == len(ref_norms) == 2, (norms, ref_norms)
    grad_diff = max(abs(a - b) / abs(b) for a, b in zip(norms, ref_norms))
    return weight_diff, grad_diff


def _assert_engine_active(kind: str, run: str, facts: dict[str, Any], vocab: int, hidden: int, ref: bool) -> None:
    assert facts["num_processes"] == 2, facts
    roles = ("policy", "ref") if ref else ("policy",)
    if kind == "ddp":
        assert facts["distributed_type"] == "DistributedType.MULTI_CPU", facts
    elif kind.startswith("zero"):
        assert facts["distributed_type"] == "DistributedType.DEEPSPEED", facts
        assert facts["zero_stage"] == int(kind[-1]), facts
        if kind == "zero3":
            for role in roles:  # partitioned: nothing whole on a rank, half of the head in each rank's partition
                assert facts[f"{role}_head_local_numel"] == 0, (role, facts)
                assert facts[f"{role}_head_ds_numel"] == vocab * hidden, (role, facts)
                assert facts[f"{role}_head_partition_numel"] == vocab * hidden // 2, (role, facts)
    else:
        assert facts["is_fsdp2"] and facts["distributed_type"] == "DistributedType.FSDP", facts
        for role in roles:
            assert facts[f"{role}_head_dtensor"], (role, facts)
            assert facts[f"{role}_head_placements"] == "(Shard(dim=0),)", (role, facts)
            assert facts[f"{role}_head_local_rows"] == vocab // 2, (role, facts)
        if kind == "fsdp2-head":
            # The head stayed sharded when the fused heads read it: they gathered it with full_tensor().
            assert facts["full_tensor_calls"] > 0, facts
        else:  # accelerate's unit [final norm, lm_head (, tied embedding)] had the head unsharded already
            assert facts["full_tensor_calls"] == 0, facts


def _assert_heads(run: str, stock: dict[str, Any], fast: dict[str, Any]) -> None:
    """SFT runs: the stock run used trl's head only, the patched run fastgrpo's (GRPO: FastGRPOTrainer's own)."""
    if trainer_kind(run) != "sft":
        return
    assert stock["facts"]["trl_head_calls"] > 0 and stock["facts"]["fastgrpo_head_calls"] == 0, stock["facts"]
    assert fast["facts"]["fastgrpo_head_installed"] and fast["facts"]["fastgrpo_head_calls"] > 0, fast["facts"]


_CASES = [(launch, kind, run) for launch in LAUNCHES if launch != "ddp" for run, _, kind, _ in RUNS[launch]]


@pytest.mark.parametrize(("launch", "kind", "run"), _CASES, ids=[f"{k}-{r}" for _, k, r in _CASES])
def test_engine_matches_ddp(work_dir: Path, launch: str, kind: str, run: str) -> None:
    variant, beta = next((v, b) for r, v, k, b in RUNS[launch] if (r, k) == (run, kind))
    ref = _load(work_dir, "ddp", "ddp", reference_run(run), "stock")
    stock, fast = _load(work_dir, launch, kind, run, "stock"), _load(work_dir, launch, kind, run, "fast")
    vocab = MODELS[variant]["vocab_size"]
    for record in (stock, fast):
        _assert_engine_active(kind, run, record["facts"], vocab, 16, ref=beta > 0)
    _assert_heads(run, stock, fast)
    fast_w, fast_g = _differences(fast, ref)
    stock_w, stock_g = _differences(stock, ref)
    line = {"kind": kind, "run": run, "fast_vs_ddp": [fast_w, fast_g], "stock_vs_ddp": [stock_w, stock_g]}
    print("DIST-DIFF " + json.dumps(line))
    assert fast_w <= WEIGHT_ATOL, f"fastgrpo vs DDP: max |weight difference| {fast_w:.3g} > {WEIGHT_ATOL}"
    assert fast_g <= GRAD_NORM_RTOL, f"fastgrpo vs DDP: grad_norm relative difference {fast_g:.3g} > {GRAD_NORM_RTOL}"
    if kind == "fsdp2-head":  # how: the sharded head was gathered with an averaging backward
        assert fast["facts"]["full_tensor_grad_placements"] == ["[Partial(avg)]"], fast["facts"]
    # The comparison means something: training moved the weights by far more than the tolerance.
    from safetensors.torch import load_file

    initial = load_file(str(work_dir / "models" / variant / "model.safetensors"))
    moved = max((fast["weights"][k] - w).abs().max().item() for k, w in initial.items() if k in fast["weights"])
    assert moved > 100 * WEIGHT_ATOL, moved


@pytest.mark.parametrize("run", [r for r, *_ in RUNS["ddp"]])
def test_ddp_references(work_dir: Path, run: str) -> None:
    """The DDP references themselves: fastgrpo equals stock trl there, on the same tolerances."""
    stock, fast = _load(work_dir, "ddp", "ddp", run, "stock"), _load(work_dir, "ddp", "ddp", run, "fast")
    variant, beta = next((v, b) for r, v, _, b in RUNS["ddp"] if r == run)
    for record in (stock, fast):
        _assert_engine_active("ddp", run, record["facts"], MODELS[variant]["vocab_size"], 16, ref=beta > 0)
    _assert_heads(run, stock, fast)
    weight_diff, grad_diff = _differences(fast, stock)
    print("DIST-DIFF " + json.dumps({"kind": "ddp", "run": run, "fast_vs_ddp": [weight_diff, grad_diff]}))
    assert weight_diff <= WEIGHT_ATOL and grad_diff <= GRAD_NORM_RTOL, (weight_diff, grad_diff)
