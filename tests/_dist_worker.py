"""Worker for test_distributed_engines.py: trains stock trl and fastgrpo under one engine, in one launch.

Usage: python -m torch.distributed.run --nproc_per_node 2 tests/_dist_worker.py LAUNCH MODELS_DIR OUT_DIR [RUNS]
LAUNCH is one of _dist_engines.LAUNCHES; every run of _dist_engines.RUNS[LAUNCH] trains stock trl, then fastgrpo
(fp32, SGD, 2 steps). GRPO runs: GRPOTrainer vs FastGRPOTrainer, dapo, num_iterations 2. SFT runs ("sft-..."): trl's
SFTTrainer, stock and built under ``fastgrpo.patch_trl()``. Rank 0 writes OUT_DIR/{kind}-{run}-{stock,fast}.pt with
the log history, the full (gathered) trained parameters and facts showing the engine was really active and whose
head ran.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))


def _engine_facts(trainer: Any, kind: str) -> dict[str, Any]:
    """What the engine did to the policy's (and the reference model's) lm_head, read after training."""
    from torch.distributed.tensor import DTensor

    accelerator = trainer.accelerator
    facts: dict[str, Any] = {
        "distributed_type": str(accelerator.distributed_type),
        "num_processes": accelerator.num_processes,
        "is_fsdp2": bool(getattr(accelerator, "is_fsdp2", False)),
    }
    models = {"policy": accelerator.unwrap_model(trainer.model)}
    if getattr(trainer, "ref_model", None) is not None:
        models["ref"] = accelerator.unwrap_model(trainer.ref_model)
    for role, model in models.items():
        weight = model.get_output_embeddings().weight
        facts[f"{role}_head_dtensor"] = isinstance(weight, DTensor)
        if isinstance(weight, DTensor):
            facts[f"{role}_head_placements"] = str(weight.placements)
            facts[f"{role}_head_local_rows"] = weight.to_local().shape[0]
        if hasattr(weight, "ds_id"):
            facts[f"{role}_head_ds_status"] = str(weight.ds_status)
            facts[f"{role}_head_local_numel"] = weight.numel()  # 0 while partitioned
            facts[f"{role}_head_ds_numel"] = weight.ds_numel
            facts[f"{role}_head_partition_numel"] = weight.ds_tensor.numel()
    if kind.startswith("zero"):
        facts["zero_stage"] = accelerator.state.deepspeed_plugin.zero_stage
    return facts


def _full_parameters(trainer: Any) -> dict[str, Any]:
    """Every trained parameter, whole (FSDP2 DTensors and ZeRO-3 partitions gathered; a collective on all ranks)."""
    import torch
    from torch.distributed.tensor import DTensor

    model = trainer.accelerator.unwrap_model(trainer.model)
    params = dict(model.named_parameters())
    if any(hasattr(p, "ds_id") for p in params.values()):
        import deepspeed

        with deepspeed.zero.GatheredParameters(list(params.values())):
            return {k: p.detach().clone() for k, p in params.items()}
    out = {}
    for k, p in params.items():
        out[k] = (p.full_tensor() if isinstance(p, DTensor) else p).detach().clone().to(torch.float32)
    return out


class _FullTensorCalls:
    """Counts ``DTensor.full_tensor`` calls on parameters (the fused heads gather a sharded FSDP2 head with it).

    Calls on other DTensors are not counted: accelerate >= 1.16 gathers the DTensor gradient norms of
    ``clip_grad_norm_`` with ``full_tensor()`` in every FSDP2 run.
    """

    def __init__(self) -> None:
        import torch
        from torch.distributed.tensor import DTensor

        self.count = 0
        self.grad_placements: list[str] = []
        self._original = DTensor.full_tensor
        counter = self

        def full_tensor(self: Any, *, grad_placements: Any = None) -> Any:
            if not isinstance(self, torch.nn.Parameter):
                return counter._original(self, grad_placements=grad_placements)
            counter.count += 1
            counter.grad_placements.append(str(grad_placements))
            return counter._original(self, grad_placements=grad_placements)

        DTensor.full_tensor = full_tensor  # type: ignore[method-assign]

    def close(self) -> None:
        from torch.distributed.tensor import DTensor

        DTensor.full_tensor = self._original  # type: ignore[method-assign]


class _count_own_gathers:  # noqa: N801 - used like a function
    """Counts fastgrpo's own ZeRO-3 gather path (a head not gathered by DeepSpeed when the fused head reads it)."""

    def __init__(self) -> None:
        import fastgrpo.integration.head as head

        self.count = 0
        self._original = head._GatheredLinearLogProbs.apply
        counter = self

        def apply(*args: Any) -> Any:
            counter.count += 1
            return counter._original(*args)

        head._GatheredLinearLogProbs.apply = apply  # type: ignore[method-assign]

    def close(self) -> None:
        import fastgrpo.integration.head as head

        head._GatheredLinearLogProbs.apply = self._original  # type: ignore[method-assign]


class _HeadCalls:
    """Counts calls of fastgrpo's head (``linear_logprobs`` as its fused head calls it) and, in stock runs only, of
    trl's chunked head (``trl.trainer.utils._ChunkedLogProbFunction``; not replaced in fastgrpo runs, whose trl
    fingerprints would see the stand-in): which head a run really used."""

    def __init__(self, count_trl: bool) -> None:
        import trl.trainer.utils as trl_utils

        import fastgrpo.integration.head as head

        self.trl = self.fastgrpo = 0
        self.count_trl = count_trl
        self._trl_fn, self._fast_fn = trl_utils._ChunkedLogProbFunction, head.linear_logprobs
        counter, trl_fn, fast_fn = self, self._trl_fn, self._fast_fn

        class CountingChunked:
            @staticmethod
            def apply(*args: Any) -> Any:
                counter.trl += 1
                return trl_fn.apply(*args)

        def counting_fast(*args: Any, **kwargs: Any) -> Any:
            counter.fastgrpo += 1
            return fast_fn(*args, **kwargs)

        if count_trl:
            trl_utils._ChunkedLogProbFunction = CountingChunked
        head.linear_logprobs = counting_fast

    def close(self) -> None:
        import trl.trainer.utils as trl_utils

        import fastgrpo.integration.head as head

        trl_utils._ChunkedLogProbFunction, head.linear_logprobs = self._trl_fn, self._fast_fn


def _fastgrpo_head_installed(trainer: Any) -> bool:
    from fastgrpo.integration.head import fused_head_config

    return fused_head_config(trainer.accelerator.unwrap_model(trainer.model)) is not None


def _make_sft(variant: str, kind: str, models_dir: Path, output_dir: str) -> Any:
    """trl's SFTTrainer on 16 truncated texts (4 per rank and step); built under patch_trl() for fastgrpo."""
    import torch
    from _dist_engines import engine_kwargs
    from _sft_dpo_data import sft_config, sft_dataset
    from trl import SFTTrainer

    args = sft_config(
        output_dir,
        max_steps=2,
        ddp_backend="gloo",
        per_device_train_batch_size=4,
        model_init_kwargs={"dtype": torch.float32},
        **engine_kwargs(kind),
    )
    return SFTTrainer(model=str(models_dir / variant), args=args, train_dataset=sft_dataset(16))


def _train(run: str, variant: str, kind: str, beta: float, trainer_name: str, models_dir: Path, out: Path) -> None:
    import torch
    from _dist_engines import engine_kwargs, trainer_kind
    from _parity import base_config
    from _tiny import id_reward, prompt_dataset
    from accelerate.state import AcceleratorState
    from trl import GRPOTrainer

    import fastgrpo
    from fastgrpo import FastGRPOTrainer

    output_dir = str(out / f"run-{kind}-{run}-{trainer_name}")
    sft = trainer_kind(run) == "sft"
    cls, extra = (GRPOTrainer, {}) if trainer_name == "stock" else (FastGRPOTrainer, {"fastgrpo_backend": "torch"})
    args = (
        None
        if sft
        else base_config(
            output_dir,
            loss_type="dapo",
            beta=beta,
            num_iterations=2,
            max_steps=2,
            ddp_backend="gloo",
            per_device_train_batch_size=4,
            num_generations=4,
            model_init_kwargs={"dtype": torch.float32},
            **engine_kwargs(kind),
        )
    )
    began = time.monotonic()
    calls = _FullTensorCalls()
    own_gathers = _count_own_gathers()
    heads = _HeadCalls(count_trl=trainer_name == "stock")
    patched = sft and trainer_name == "fast"
    if patched:
        fastgrpo.patch_trl(backend="torch")
    try:
        # The model goes in as a path, as a user's hub id would: under ZeRO-3 trl loads it inside zero.Init.
        if sft:
            trainer = _make_sft(variant, kind, models_dir, output_dir)
        else:
            trainer = cls(
                model=str(models_dir / variant),
                reward_funcs=id_reward,
                args=args,
                train_dataset=prompt_dataset(8),
                **extra,
            )
        trainer.train()
        fused_head_installed = _fastgrpo_head_installed(trainer)
    finally:
        calls.close()
        own_gathers.close()
        heads.close()
        if patched:
            fastgrpo.unpatch_trl()
    facts = _engine_facts(trainer, kind)
    facts["full_tensor_calls"] = calls.count
    facts["fastgrpo_zero3_gathers"] = own_gathers.count
    facts["full_tensor_grad_placements"] = sorted(set(calls.grad_placements))
    facts["trl_head_calls"], facts["fastgrpo_head_calls"] = heads.trl, heads.fastgrpo
    facts["fastgrpo_head_installed"] = fused_head_installed
    facts["wall_s"] = round(time.monotonic() - began, 2)  # this run's cost inside the launch (CI time)
    weights = _full_parameters(trainer)
    if int(os.environ["RANK"]) == 0:
        record = {"logs": trainer.state.log_history, "weights": weights, "facts": facts}
        torch.save(record, out / f"{kind}-{run}-{trainer_name}.pt")
    del trainer
    # Each run builds its own Accelerator: forget the previous engine's state, keep the process group.
    AcceleratorState._reset_state(reset_partial_state=False)
    if kind.startswith("zero"):
        from transformers.integrations.deepspeed import unset_hf_deepspeed_config

        unset_hf_deepspeed_config()


def main() -> None:
    import transformers
    from _dist_engines import RUNS

    transformers.logging.set_verbosity_error()
    launch, models_dir, out = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
    out.mkdir(parents=True, exist_ok=True)
    if launch == "fsdp2":
        import _dist_fsdp_cpu

        _dist_fsdp_cpu.install()
    if launch == "deepspeed":
        import deepspeed.ops

        # DeepSpeed JIT-builds its shared-memory all-reduce op on the first CPU launch (minutes of g++); only inference
        # tensor parallelism uses it (`inference_all_reduce`), training collectives go through torch.distributed.
        deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
    only = sys.argv[4] if len(sys.argv) > 4 else ""  # optional: comma-separated KIND-RUN names, to debug one run
    for run, variant, kind, beta in RUNS[launch]:
        if only and f"{kind}-{run}" not in only.split(","):
            continue
        for trainer_name in ("stock", "fast"):
            _train(run, variant, kind, beta, trainer_name, models_dir, out)


if __name__ == "__main__":
    main()
