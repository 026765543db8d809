"""Tensor parallelism in the fused head: a vocab-sharded lm_head is scored shard by shard, never gathered.

transformers' TP plans (``tp_plan="auto"``, and accelerate's ``ParallelismConfig(tp_size=N)``, which trl's trainers
accept) shard ``lm_head.weight`` by vocabulary: a DTensor ``Shard(0)`` on the mesh dimension named ``"tp"`` (the name
both libraries give it). FSDP2 also shards parameters ``Shard(0)``, on a dimension named ``dp_shard`` / ``fsdp`` /
``dp_shard_cp`` (or an unnamed one): those heads keep the gather path of :mod:`.head`. The dimension's name, not the
placement, tells them apart.

Generation: TP ranks hold one model between them, so they must sample the same completions. trl seeds every rank
differently (``set_seed(seed, device_specific=True)``); :func:`seed_generation` reseeds so that ranks sharing a batch
(the same data-parallel rank) share a seed, and different data-parallel ranks still differ.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from ..options import LogProbOptions
from ..vocab_parallel import vocab_parallel_linear_logprobs

# Mesh dimension names of tensor parallelism in accelerate (ParallelismConfig) and transformers (DistributedConfig).
TP_DIM_NAMES = ("tp",)


def tp_dim(param: Any) -> int | None:
    """The index of the TP mesh dimension ``param`` (a DTensor) is sharded over by vocabulary, else None.

    None for a plain tensor, a DTensor without a TP dimension (FSDP2), or one replicated over it. Raises
    NotImplementedError for TP shardings the vocab-parallel head does not cover: a head sharded on another dimension
    over TP, or also sharded over a second mesh dimension (FSDP x TP with the head as an FSDP unit of its own).
    """
    if not torch.distributed.is_available():
        return None
    from torch.distributed.tensor import DTensor, Replicate, Shard

    if not isinstance(param, DTensor):
        return None
    names = tuple(param.device_mesh.mesh_dim_names or ())
    dims = [i for i, name in enumerate(names) if name in TP_DIM_NAMES]
    if not dims or isinstance(param.placements[dims[0]], Replicate):
        return None
    tp = dims[0]
    if param.placements[tp] != Shard(0):
        raise NotImplementedError(
            f"lm_head parameter placed {param.placements[tp]} on the TP mesh dimension {names[tp]!r}: fastgrpo's "
            "vocab-parallel head needs Shard(0) (rows = vocabulary), as transformers' TP plans place it"
        )
    others = [f"{names[i] or i!r}: {p}" for i, p in enumerate(param.placements) if i != tp and not p.is_replicate()]
    if others:
        raise NotImplementedError(
            f"lm_head parameter sharded over TP ({names[tp]!r}) and also over {', '.join(others)} (mesh "
            f"{dict(zip(names, param.device_mesh.shape))}, placements {param.placements}): a head sharded by FSDP "
            "and TP at once is not supported by fastgrpo's fused head; keep the lm_head in the FSDP unit of the "
            "final norm (accelerate's default wrap) so FSDP unshards it before the head reads it"
        )
    return tp


def _local_rows(param: Any, tp: int) -> tuple[torch.Tensor, int]:
    """This rank's rows of a TP-sharded head parameter (differentiable: its gradient is a DTensor of the same
    placement) and the global index of the first one."""
    from torch.distributed.tensor._utils import compute_local_shape_and_global_offset

    _, offset = compute_local_shape_and_global_offset(param.shape, param.device_mesh, param.placements)
    return param.to_local(), int(offset[0])


def vocab_parallel_projection(weight: Any, bias: Any) -> Callable[..., tuple[torch.Tensor | None, ...]] | None:
    """A replacement for :func:`.head.project_logprobs` when ``weight`` is a TP-sharded head, else None."""
    tp = tp_dim(weight)
    if tp is None:
        return None
    if bias is not None and tp_dim(bias) != tp:
        raise NotImplementedError(
            "lm_head.weight is sharded by vocabulary over TP but lm_head.bias is not sharded the same way "
            f"({type(bias).__name__} {getattr(bias, 'placements', '')}); fastgrpo's vocab-parallel head needs both "
            "Shard(0) on the TP dimension"
        )
    group = weight.device_mesh.get_group(tp)
    vocab_size = weight.shape[0]

    def project(
        hidden: torch.Tensor,
        weight: Any,
        bias: Any,
        targets: torch.Tensor,
        config: Any,
        want: bool | tuple[str, ...],
    ) -> tuple[torch.Tensor | None, ...]:
        # ``want``: whether to return the entropy (today's head: returns (logp, entropy)), or the names of the head
        # outputs to compute (the trainer-wide head: returns (logp, entropy, log_sum_sq_probs, mean_logits, is_top1)).
        names = ("log_probs", "entropy") if want is True else ("log_probs",) if want is False else tuple(want)
        w_local, start = _local_rows(weight, tp)
        b_local = None if bias is None else _local_rows(bias, tp)[0]
        options = LogProbOptions(
            temperature=config.temperature,
            logit_scale=config.logit_scale,
            softcap=config.softcap,
            return_entropy="entropy" in names,
            return_log_sum_sq_probs="log_sum_sq_probs" in names,
            return_mean_logits="mean_logits" in names,
            return_is_top1="is_top1" in names,
        )
        out = vocab_parallel_linear_logprobs(
            hidden,
            w_local,
            targets,
            vocab_start=start,
            vocab_size=vocab_size,
            group=group,
            bias=b_local,
            options=options,
            backend=config.backend,
        )
        if isinstance(want, bool):
            return out.logp, out.entropy
        return tuple(out)

    return project


def data_parallel_rank(accelerator: Any) -> tuple[int, int]:
    """(data-parallel rank, TP size) of this process under accelerate's ParallelismConfig; (process index, 1)
    without TP."""
    config = getattr(accelerator, "parallelism_config", None)
    tp_size = int(getattr(config, "tp_size", 1) or 1) if config is not None else 1
    if tp_size <= 1:
        return accelerator.process_index, 1
    mesh = accelerator.torch_device_mesh
    dp_dims = list(getattr(config, "dp_dim_names", []) or [])
    if not dp_dims:
        return 0, tp_size
    return mesh["dp"].get_local_rank() if len(dp_dims) > 1 else mesh.get_local_rank(dp_dims[0]), tp_size


def seed_generation(trainer: Any) -> int | None:
    """Reseed a trainer's processes per data-parallel rank when TP is on; returns the seed set, or None (no TP)."""
    from accelerate.utils import set_seed

    dp_rank, tp_size = data_parallel_rank(trainer.accelerator)
    if tp_size <= 1:
        return None  # trl's per-process seeds are per data-parallel rank already
    seed = int(trainer.args.seed) + dp_rank
    set_seed(seed)
    return seed
