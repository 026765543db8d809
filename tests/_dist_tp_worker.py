"""Worker for test_tensor_parallel.py: the vocab-parallel head and GRPO training under tensor parallelism.

Usage:
    python -m torch.distributed.run --nproc_per_node 2 tests/_dist_tp_worker.py tp MODELS_DIR OUT_DIR
    python tests/_dist_tp_worker.py single MODELS_DIR OUT_DIR      # the one-process references

``tp`` (2 gloo processes, a 1-D mesh named "tp"): op-level checks of the vocab-parallel head against the whole head
in the same process (options, bias, frozen head, uneven shards, the 2-D (1, 2) meshes, an FSDP-named mesh), then
2-step SGD GRPO runs with ``tp_plan="auto"`` (fastgrpo through FastGRPOTrainer and through patch_trl(), and stock
trl), each under a dispatch mode recording every tensor of V*H elements or more that a rank creates. ``single``
trains FastGRPOTrainer in one process on the same models: the references. Rank 0 writes OUT_DIR/*.pt.
"""

from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

# (run name, model variant, trainer): the GRPO runs under TP.
TP_RUNS = (
    ("fast", "v4096", "fast"),
    ("patched", "v4096", "patched"),
    ("stock", "v4096", "stock"),
    ("fast-tied", "v4096-tied", "fast"),
    ("rloo-patched", "v4096", "rloo-patched"),  # trl's RLOOTrainer under patch_trl(): its head and its reseed
)
# Not in CI, on request (the optional RUNS argument): stock trl reseeded as fastgrpo reseeds, to measure what the TP
# backbone alone contributes to the difference from one process.
EXTRA_RUNS = (("stock-seeded", "v4096", "stock-seeded"),)
# One-process references: (model variant, trainer).
SINGLE_RUNS = (("v4096", "fast"), ("v4096-tied", "fast"), ("v4096", "rloo-patched"))
# SFT and DPO under patch_trl(): their heads ask for is_top1 (trl's mean_token_accuracy / reward accuracies), which the
# vocab-parallel head combines from each shard's row max and first argmax. Run under TP and in one process alike.
TRAINER_WIDE_RUNS = ("sft", "dpo")
MODEL_VARIANTS = {
    "v4096": {"vocab_size": 4096},
    "v4096-tied": {"vocab_size": 4096, "tie_word_embeddings": True},
}
# 2 key-value heads: TP shards attention by head, so each of the 2 ranks needs one.
HIDDEN = 32  # V*H = 131072: above every new [tokens, V / 2] tensor of fastgrpo under TP here (32 x 2048)


class BigTensorRecorder:
    """A TorchDispatchMode recording each op output of ``limit`` elements or more (a DTensor counted by its local
    shard): a gathered head or a whole-head gradient is one."""

    def __init__(self, limit: int) -> None:
        from torch.utils._python_dispatch import TorchDispatchMode

        recorder = self
        self.limit = limit
        self.hits: list[str] = []
        self.largest = 0

        class _Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
                out = func(*args, **(kwargs or {}))
                recorder._see(func, out)
                return out

        self.mode = _Mode()

    def _see(self, func: Any, out: Any) -> None:
        import torch

        if any(r.alias_info is not None for r in func._schema.returns):
            return  # a view or an in-place result: no new memory
        from torch.distributed.tensor import DTensor
        from torch.utils._pytree import tree_leaves

        for t in tree_leaves(out):
            if not isinstance(t, torch.Tensor):
                continue
            n = t._local_tensor.numel() if isinstance(t, DTensor) else t.numel()
            self.largest = max(self.largest, n)
            hit = f"{func} -> {tuple(t.shape)}"
            if n >= self.limit and hit not in self.hits:
                self.hits.append(hit)

    def __enter__(self) -> BigTensorRecorder:
        self.mode.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.mode.__exit__(*exc)


def _rank() -> int:
    return int(os.environ.get("RANK", "0"))


# ---------------------------------------------------------------------------------------------------- op level
def _loss(logp: Any, entropy: Any, targets: Any, g_l: Any, g_h: Any, case: dict[str, Any]) -> Any:
    """A scalar reaching logp and entropy: random weights, or fastgrpo's GRPO loss with an entropy bonus."""
    import torch

    from fastgrpo.grpo import grpo_loss

    if case.get("grpo"):
        adv = torch.linspace(-1, 1, logp.shape[0], dtype=torch.float64)[:, None]
        mask = (targets != -100).to(torch.float64)[:, None]
        out = grpo_loss(logp[:, None], adv, mask, loss_type="grpo", entropies=entropy[:, None], entropy_coef=0.05)
        return out.loss
    total = (logp * g_l).sum()
    return total + (entropy * g_h).sum() if entropy is not None else total


def _op_checks(out: Path) -> None:
    """The fused head's projection on a DTensor head vs the whole head, in float64; errors go to op.pt."""
    import torch
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Replicate, Shard, distribute_tensor

    from fastgrpo import linear_logprobs
    from fastgrpo.integration.head import FusedHeadConfig
    from fastgrpo.integration.tensor_parallel import tp_dim, vocab_parallel_projection
    from fastgrpo.options import LogProbOptions

    mesh = init_device_mesh("cpu", (2,), mesh_dim_names=("tp",))
    results: dict[str, Any] = {}
    cases = {
        "plain": dict(v=1000, bias=False, config={}),
        "uneven-bias-softcap": dict(
            v=1001, bias=True, config=dict(temperature=0.7, softcap=3.0, logit_scale=1.3), entropy=True
        ),
        "entropy-temperature": dict(v=998, bias=False, config=dict(temperature=1.5), entropy=True),
        "frozen": dict(v=1000, bias=False, config={}, frozen=True, entropy=True),
        "grpo": dict(v=1000, bias=False, config=dict(temperature=0.9), entropy=True, grpo=True),
    }
    for name, case in cases.items():
        g = torch.Generator().manual_seed(11)  # the same tensors on every rank, as TP ranks see them
        n, h, v = 37, 24, case["v"]
        hidden = torch.randn(n, h, generator=g, dtype=torch.float64)
        weight = torch.randn(v, h, generator=g, dtype=torch.float64) * 0.5
        bias = torch.randn(v, generator=g, dtype=torch.float64) if case["bias"] else None
        targets = torch.randint(0, v, (n,), generator=g)
        targets[3] = -100
        targets[5] = 0
        targets[6] = v - 1  # the first and last rows, on different shards
        g_l, g_h = torch.randn(n, generator=g, dtype=torch.float64), torch.randn(n, generator=g, dtype=torch.float64)
        want_entropy = bool(case.get("entropy"))
        frozen = bool(case.get("frozen"))
        config = FusedHeadConfig(backend="torch", **case["config"])

        # Reference: the whole head in this process.
        hr = hidden.clone().requires_grad_(True)
        wr = weight.clone().requires_grad_(not frozen)
        br = None if bias is None else bias.clone().requires_grad_(True)
        opts = LogProbOptions(
            temperature=config.temperature,
            logit_scale=config.logit_scale,
            softcap=config.softcap,
            return_entropy=want_entropy,
        )
        ref = linear_logprobs(hr, wr, targets, bias=br, options=opts, backend="torch")
        _loss(ref.logp, ref.entropy, targets, g_l, g_h, case).backward()
        # TP: the head as transformers shards it.
        wd = torch.nn.Parameter(distribute_tensor(weight.clone(), mesh, [Shard(0)]), requires_grad=not frozen)
        bd = None if bias is None else torch.nn.Parameter(distribute_tensor(bias.clone(), mesh, [Shard(0)]))
        ht = hidden.clone().requires_grad_(True)
        project = vocab_parallel_projection(wd, bd)
        with BigTensorRecorder(v * h) as rec:
            logp, entropy = project(ht, wd, bd, targets, config, want_entropy)
            _loss(logp, entropy, targets, g_l, g_h, case).backward()
        err = {
            "logp": (logp - ref.logp).abs().max().item(),
            "hidden_grad": (ht.grad - hr.grad).abs().max().item(),
            "big_tensors": rec.hits,
            "projection_found": project is not None,
        }
        if want_entropy:
            err["entropy"] = (entropy - ref.entropy).abs().max().item()
        if not frozen:
            local = wd.grad.to_local()
            lo = mesh.get_local_rank() * ((v + 1) // 2)
            err["weight_grad"] = (local - wr.grad[lo : lo + local.shape[0]]).abs().max().item()
            err["weight_grad_placements"] = str(wd.grad.placements)
            err["weight_grad_local_rows"] = local.shape[0]
        else:
            err["weight_grad_is_none"] = wd.grad is None
        if bd is not None:
            local = bd.grad.to_local()
            lo = mesh.get_local_rank() * ((v + 1) // 2)
            err["bias_grad"] = (local - br.grad[lo : lo + local.shape[0]]).abs().max().item()
        results[name] = err

    # The trainer-wide head's form (a tuple of output names): every output against float64 on the whole head.
    from _lp_helpers import tie_case

    from fastgrpo.reference import reference_all_outputs, reference_logits

    g = torch.Generator().manual_seed(4)
    hidden = torch.randn(13, 24, generator=g, dtype=torch.float64)
    weight = torch.randn(999, 24, generator=g, dtype=torch.float64)
    config = FusedHeadConfig(backend="torch", temperature=0.8, softcap=4.0)
    opts = LogProbOptions(
        temperature=0.8,
        softcap=4.0,
        return_entropy=True,
        return_log_sum_sq_probs=True,
        return_mean_logits=True,
        return_is_top1=True,
    )
    top2 = reference_logits(hidden, weight, None, opts).topk(2, dim=-1).indices
    targets = torch.randint(0, 999, (13,), generator=g)
    targets[::3] = top2[::3, 0]  # rows whose target is the argmax (a third), else is_top1 is almost never True
    targets[1::3] = top2[1::3, 1]  # and the runner-up
    targets[0] = -100
    wd = distribute_tensor(weight, mesh, [Shard(0)])
    want = ("log_probs", "entropy", "log_sum_sq_probs", "mean_logits", "is_top1")
    got = vocab_parallel_projection(wd, None)(hidden, wd, None, targets, config, want)  # type: ignore[misc]
    ref = reference_all_outputs(hidden, weight, targets, None, opts)
    results["extras"] = {name: (x - r).abs().max().item() for name, x, r in zip(want[:4], got, ref)}
    results["extras"]["is_top1_equal"] = torch.equal(got[4], ref.is_top1)
    results["extras"]["is_top1_true"] = int(ref.is_top1.sum())
    # exact ties (logits small integers / 16): at the shard edge (rows 499 | 500 of 999) and across the two shards
    for name, cols in (("tie_at_the_edge", (499, 500)), ("tie_across_shards", (10, 900))):
        th, tw = tie_case(6, 40, 999, cols, dtype=torch.float64)
        tt = torch.tensor([cols[0], cols[1], 498, -100, cols[0], 0])
        twd = distribute_tensor(tw, mesh, [Shard(0)])
        top1 = vocab_parallel_projection(twd, None)(th, twd, None, tt, config, ("log_probs", "is_top1"))[4]  # type: ignore[misc]
        results["extras"][name] = top1.tolist()

    # Meshes: a 2-D (1, 2) mesh, replicated over a data-parallel dim (supported) or also FSDP-sharded (refused); a
    # 1-D FSDP-named mesh keeps the gather path.
    weight = torch.randn(64, 8, generator=torch.Generator().manual_seed(1))
    mesh2 = init_device_mesh("cpu", (1, 2), mesh_dim_names=("dp_replicate", "tp"))
    replicated = distribute_tensor(weight, mesh2, [Replicate(), Shard(0)])
    results["mesh-dp_replicate-tp"] = {"tp_dim": tp_dim(replicated)}
    hidden = torch.randn(5, 8, generator=torch.Generator().manual_seed(2), dtype=torch.float32)
    targets = torch.tensor([0, 63, 31, 32, 5])
    logp, _ = vocab_parallel_projection(replicated, None)(  # type: ignore[misc]
        hidden, replicated, None, targets, FusedHeadConfig(backend="torch"), False
    )
    ref = linear_logprobs(hidden, weight, targets, backend="torch")
    results["mesh-dp_replicate-tp"]["logp"] = (logp - ref.logp).abs().max().item()
    mesh3 = init_device_mesh("cpu", (1, 2), mesh_dim_names=("dp_shard", "tp"))
    both = distribute_tensor(weight, mesh3, [Shard(0), Shard(0)])
    try:
        tp_dim(both)
        results["mesh-dp_shard-tp"] = {"error": None}
    except NotImplementedError as e:
        results["mesh-dp_shard-tp"] = {"error": str(e)}
    fsdp = init_device_mesh("cpu", (2,), mesh_dim_names=("dp_shard",))
    results["mesh-fsdp"] = {"tp_dim": tp_dim(distribute_tensor(weight, fsdp, [Shard(0)]))}
    # The recorder sees a gathered head.
    wd = distribute_tensor(torch.randn(1000, 24, dtype=torch.float64), mesh, [Shard(0)])
    with BigTensorRecorder(1000 * 24) as rec:
        wd.full_tensor()
    results["recorder-sensitivity"] = rec.hits
    if _rank() == 0:
        torch.save(results, out / "op.pt")


# ---------------------------------------------------------------------------------------------------- training
def _train(run: str, variant: str, trainer_name: str, models_dir: Path, out: Path, tp: bool) -> None:
    import torch
    import torch.distributed as dist
    from _parity import base_config, base_kwargs
    from _tiny import id_reward, prompt_dataset
    from torch.distributed.tensor import DTensor
    from trl import GRPOTrainer

    import fastgrpo
    from fastgrpo import FastGRPOTrainer

    model_kwargs: dict[str, Any] = {"dtype": torch.float32}
    if tp:
        model_kwargs["tp_plan"] = "auto"
    shared: dict[str, Any] = dict(
        max_steps=2,
        per_device_train_batch_size=4,
        num_generations=4,
        model_init_kwargs=model_kwargs,
        # No clipping: under TP the clipped norm differs from one process's by ~1.6e-5 relative (stock trl too),
        # which moves every weight by that fraction of its update; the head's own error is what is measured here.
        max_grad_norm=float(os.environ.get("FASTGRPO_TP_MAX_GRAD_NORM", "0")),
        ddp_backend="gloo" if tp else None,
    )
    extra: dict[str, Any] = {}
    cls = GRPOTrainer
    if trainer_name == "rloo-patched":
        from trl import RLOOConfig, RLOOTrainer

        args, cls = RLOOConfig(**base_kwargs(str(out / f"run-{run}"), **shared)), RLOOTrainer  # GRPO's settings
    else:
        args = base_config(str(out / f"run-{run}"), loss_type="dapo", entropy_coef=0.01, **shared)
    if trainer_name == "fast":
        cls, extra = FastGRPOTrainer, {"fastgrpo_backend": "torch"}
    elif trainer_name in ("patched", "rloo-patched"):
        fastgrpo.patch_trl(backend="torch")
    completions: list[list[list[int]]] = []
    try:
        trainer = cls(
            model=str(models_dir / variant),
            reward_funcs=id_reward,
            args=args,
            train_dataset=prompt_dataset(8),
            **extra,
        )
        if trainer_name == "stock-seeded":  # stock trl with fastgrpo's TP seeding only: the backbone's own TP error
            from fastgrpo.integration.tensor_parallel import seed_generation

            seed_generation(trainer)
        original = trainer._generate_and_score_completions

        def record(inputs: Any) -> Any:
            result = original(inputs)
            completions.append(result["completion_ids"].tolist())
            return result

        trainer._generate_and_score_completions = record
        weight = trainer.model.get_output_embeddings().weight
        vocab, hidden = weight.shape
        calls = _count_full_tensor()
        rec = BigTensorRecorder(vocab * hidden)
        with rec if not os.environ.get("NO_MODE") else contextlib.nullcontext():
            trainer.train()
        full_tensor_shapes = calls.close()
    finally:
        if trainer_name in ("patched", "rloo-patched"):
            fastgrpo.unpatch_trl()
    facts = {
        "head_dtensor": isinstance(weight, DTensor),
        "head_placements": str(getattr(weight, "placements", None)),
        "head_local_rows": weight.to_local().shape[0] if isinstance(weight, DTensor) else weight.shape[0],
        "head_grad_placements": None,
        "big_tensors": rec.hits,
        "largest_tensor": rec.largest,
        "head_elements": vocab * hidden,
        "full_tensor_shapes": full_tensor_shapes,
        "tied": trainer.model.get_input_embeddings().weight is weight,
        "seed_state": torch.initial_seed(),
    }
    all_completions = [completions]
    if tp:
        all_completions = [None] * dist.get_world_size()  # type: ignore[list-item]
        dist.all_gather_object(all_completions, completions)
    _save_run(trainer, {"facts": facts, "completions": all_completions}, out / f"{run}.pt")


def _save_run(trainer: Any, record: dict[str, Any], path: Path) -> None:
    """``record`` with the run's logs and every weight whole (a TP DTensor gathered), saved by rank 0; then
    accelerate's state is reset for the next run in this process."""
    import torch
    from accelerate.state import AcceleratorState
    from torch.distributed.tensor import DTensor

    record["logs"] = trainer.state.log_history
    record["weights"] = {
        k: (p.full_tensor() if isinstance(p, DTensor) else p).detach().clone()
        for k, p in trainer.model.named_parameters()
    }
    if _rank() == 0:
        torch.save(record, path)
    AcceleratorState._reset_state(reset_partial_state=False)


def _train_trainer_wide(kind: str, models_dir: Path, out: Path, tp: bool) -> None:
    """2 SGD steps of trl's SFTTrainer / DPOTrainer under ``patch_trl()``: logs (accuracy and entropy metrics come
    from is_top1 / entropy), weights, and what the head allocated."""
    import torch
    import trl
    from _sft_dpo_data import dpo_config, dpo_dataset, sft_config, sft_dataset
    from torch.distributed.tensor import DTensor

    import fastgrpo

    model_kwargs: dict[str, Any] = {"dtype": torch.float32, **({"tp_plan": "auto"} if tp else {})}
    common = dict(
        max_steps=2,
        per_device_train_batch_size=2,
        max_length=24,  # 2 x 24 tokens: the torch path's [tokens, V / 2] logits stay under the recorder's V * H
        model_init_kwargs=model_kwargs,
        max_grad_norm=0.0,  # as the GRPO runs: TP's own gradient-norm error is not the head's
        ddp_backend="gloo" if tp else None,
    )
    run_dir = str(out / f"run-{kind}-{'tp' if tp else 'single'}")
    if kind == "sft":
        cls, args, data = trl.SFTTrainer, sft_config(run_dir, **common), sft_dataset(8)
    else:
        cls, args, data = trl.DPOTrainer, dpo_config(run_dir, **common), dpo_dataset(8)
    fastgrpo.patch_trl(backend="torch")
    try:
        trainer = cls(model=str(models_dir / "v4096"), args=args, train_dataset=data)
        weight = trainer.model.get_output_embeddings().weight
        rec = BigTensorRecorder(weight.shape[0] * weight.shape[1])
        calls = _count_full_tensor()
        with rec:
            trainer.train()
        full_tensor_shapes = calls.close()
    finally:
        fastgrpo.unpatch_trl()
    facts = {
        "head_dtensor": isinstance(weight, DTensor),
        "big_tensors": rec.hits,
        "full_tensor_shapes": full_tensor_shapes,
    }
    _save_run(trainer, {"facts": facts}, out / f"{kind}-{'tp' if tp else 'single'}.pt")


class _count_full_tensor:  # noqa: N801 - used like a function
    def __init__(self) -> None:
        from torch.distributed.tensor import DTensor

        self.shapes: list[tuple[int, ...]] = []
        self._original = DTensor.full_tensor
        counter = self

        def full_tensor(self: Any, *, grad_placements: Any = None) -> Any:
            counter.shapes.append(tuple(self.shape))
            return counter._original(self, grad_placements=grad_placements)

        DTensor.full_tensor = full_tensor  # type: ignore[method-assign]

    def close(self) -> list[tuple[int, ...]]:
        from torch.distributed.tensor import DTensor

        DTensor.full_tensor = self._original  # type: ignore[method-assign]
        return sorted(set(self.shapes))


def build_models(models_dir: Path) -> None:
    from _parity import tokenizer_dir
    from _tiny import build_model

    _, tok = tokenizer_dir()
    for name, kwargs in MODEL_VARIANTS.items():
        tok.save_pretrained(str(models_dir / name))
        build_model(models_dir / name, tok, hidden_size=HIDDEN, num_key_value_heads=2, **kwargs)


def main() -> None:
    import transformers

    transformers.logging.set_verbosity_error()
    mode, models_dir, out = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
    out.mkdir(parents=True, exist_ok=True)
    only = sys.argv[4].split(",") if len(sys.argv) > 4 else None
    if mode == "single":
        for variant, trainer_name in SINGLE_RUNS:
            run = f"single-{trainer_name}-{variant}"
            if only is None or run in only:
                _train(run, variant, trainer_name, models_dir, out, tp=False)
        for kind in TRAINER_WIDE_RUNS:
            if only is None or f"{kind}-single" in only:
                _train_trainer_wide(kind, models_dir, out, tp=False)
        return
    import _dist_tp_cpu
    import torch.distributed as dist

    dist.init_process_group("gloo")
    if only is None or "op" in only:
        _op_checks(out)
    _dist_tp_cpu.install()
    for run, variant, trainer_name in TP_RUNS + EXTRA_RUNS:
        if (only is None and (run, variant, trainer_name) in TP_RUNS) or (only is not None and run in only):
            _train(run, variant, trainer_name, models_dir, out, tp=True)
    for kind in TRAINER_WIDE_RUNS:
        if only is None or f"{kind}-tp" in only:
            _train_trainer_wide(kind, models_dir, out, tp=True)


if __name__ == "__main__":
    main()
