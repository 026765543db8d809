"""Vocab-parallel ``linear_logprobs``: each rank holds rows ``[vocab_start, vocab_start + V_local)`` of the head.

Tensor parallelism shards the lm_head by vocabulary; every rank of the TP group sees the same tokens. Instead of
gathering the ``[V, H]`` head, each rank runs the same fused op (either backend) on its own slice and keeps a few
statistics per token; one all-gather of those scalars combines them. Equivalent torch, with ``z_r`` the logits of
rank r's slice and ``z = cat(z_0, ..., z_{n-1})``::

    lse_r = logsumexp(z_r);  mean_r = sum(softmax(z_r) * z_r)         # shard statistics, from the fused forward
    lse = logsumexp(stack(lse_r));  w_r = exp(lse_r - lse)           # combine, identical on every rank
    logp = z[target] - lse                                           # z[target] from the rank that owns it
    entropy = lse - sum_r w_r * mean_r                               # = -(softmax(z) * log_softmax(z)).sum()
    log_sum_sq_probs = logsumexp(stack(lse2_r)) - 2 * lse            # lse2_r = logsumexp(2 z_r), when asked
    mean_logits = sum_r sum(z_r) / V                                 # when asked
    is_top1 = arg_r* == target   with r* the first r where max_r == max(stack(max_r)), arg_r = z_r.argmax() + start_r

Each shard statistic comes from the shard's own fused outputs (``lse2_r = log_sum_sq_probs_r + 2 lse_r``,
``sum(z_r) = mean_logits_r * V_r``; ``max_r`` and ``arg_r`` from the op's row max and first argmax, asked only for
is_top1). Shards are in vocabulary order, so taking the first shard that holds the maximum keeps trl's tie rule: the
lowest column wins. ``arg_r`` travels in the statistics' float dtype, exact for vocabularies under 2^24 (fp32).

The backward is the fused backward of each slice, run with the combined ``lse`` and ``entropy`` (its softmax is then
the global one): it yields that slice's dW (and db) and a partial dHidden, summed over the group by one all-reduce.
"""

from __future__ import annotations

from typing import Any

import torch

from .api import Backend, LogProbs, resolve_backend
from .checks import check_linear_logprobs_inputs, compute_dtype_for
from .ops import logprobs_backward, logprobs_forward
from .options import LogProbOptions
from .torch_backend import acc_dtype

# Statistics gathered per token and rank: lse and the owned target logit (0 elsewhere), then those asked for.
_LSE, _ZT = 0, 1


def _columns(opts: LogProbOptions) -> dict[str, int]:
    asked = [
        ("mean", opts.return_entropy),
        ("lse2", opts.return_log_sum_sq_probs),
        ("sum", opts.return_mean_logits),
        ("max", opts.return_is_top1),
        ("arg", opts.return_is_top1),
    ]
    names = ["lse", "z_t"] + [name for name, flag in asked if flag]
    return {name: i for i, name in enumerate(names)}


def _shard_options(opts: LogProbOptions, entropy: bool) -> LogProbOptions:
    # Every row of a shard is scored: -1 never occurs among the shard's (clamped or sentinel) targets.
    return opts.with_(ignore_index=-1, return_entropy=entropy, return_is_top1=False)


def shard_targets(targets: torch.Tensor, vocab_start: int, vocab_local: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(local target ids, whether this shard owns the row's target): ids outside the shard map to ``vocab_local``."""
    local = targets.long() - vocab_start
    owned = (local >= 0) & (local < vocab_local)
    return torch.where(owned, local, torch.full_like(local, vocab_local)), owned


def shard_statistics(
    hidden: torch.Tensor,  # [N, H]
    weight: torch.Tensor,  # [V_local, H]
    bias: torch.Tensor | None,  # [V_local]
    targets: torch.Tensor,  # [N] global ids or ignore_index
    vocab_start: int,
    opts: LogProbOptions,
    compute_dtype: torch.dtype,
    backend: str,
) -> torch.Tensor:
    """[N, k] statistics of one vocabulary shard (see the module docstring; columns as ``_columns(opts)``), from the
    backend's fused forward over the shard (targets outside it scored at a clamped id, and that logit dropped)."""
    local, owned = shard_targets(targets, vocab_start, weight.shape[0])
    clamped = local.clamp(max=weight.shape[0] - 1)
    shard_opts = _shard_options(opts, opts.return_entropy)
    logp, entropy, lse, _, _, log_sum_sq, mean_logits, _, row_max, argmax = logprobs_forward(
        hidden, weight, bias, clamped, shard_opts, False, compute_dtype, backend, return_row_argmax=opts.return_is_top1
    )
    columns = [lse, torch.where(owned, logp + lse, torch.zeros_like(lse))]
    if opts.return_entropy:
        columns.append(lse - entropy)
    if opts.return_log_sum_sq_probs:
        columns.append(log_sum_sq + 2 * lse)
    if opts.return_mean_logits:
        columns.append(mean_logits * weight.shape[0])
    if opts.return_is_top1:
        columns += [row_max, (argmax.long() + vocab_start).to(lse.dtype)]
    return torch.stack(columns, dim=1)


def combine_statistics(
    stats: torch.Tensor,  # [shards, N, k], every rank's in the same order
    targets: torch.Tensor,
    opts: LogProbOptions,
    vocab_size: int,
) -> tuple[torch.Tensor, ...]:
    """(logp, entropy, log_sum_sq_probs, mean_logits, is_top1, lse, entropy for the backward): each output empty
    unless asked, 0 (False) at ``ignore_index``. Reductions over shards run in a fixed order, so every rank computes
    the same bits."""
    col = _columns(opts)
    lse = torch.logsumexp(stats[:, :, _LSE], dim=0)
    z_t = stats[:, :, _ZT].sum(0)  # one owner per row; the other shards add exact zeros
    valid = targets != opts.ignore_index
    zero, empty = torch.zeros_like(lse), lse.new_zeros(0)
    logp = torch.where(valid, z_t - lse, zero)
    entropy = full_entropy = log_sum_sq = mean_logits = empty
    is_top1 = torch.zeros(0, dtype=torch.bool, device=lse.device)
    if opts.return_entropy:
        weights = torch.exp(stats[:, :, _LSE] - lse)
        full_entropy = lse - (weights * stats[:, :, col["mean"]]).sum(0)
        entropy = torch.where(valid, full_entropy, zero)
    if opts.return_log_sum_sq_probs:
        log_sum_sq = torch.where(valid, torch.logsumexp(stats[:, :, col["lse2"]], dim=0) - 2 * lse, zero)
    if opts.return_mean_logits:
        mean_logits = torch.where(valid, stats[:, :, col["sum"]].sum(0) / vocab_size, zero)
    if opts.return_is_top1:
        shard_max = stats[:, :, col["max"]]  # [shards, N]
        holds = shard_max == shard_max.amax(0)  # the shards holding the row's maximum
        first = holds.int().argmax(0, keepdim=True)  # the first of them (argmax returns the first maximal index)
        arg = stats[:, :, col["arg"]].gather(0, first).squeeze(0).long()
        is_top1 = valid & (arg == targets.long())
    return logp, entropy, log_sum_sq, mean_logits, is_top1, lse, full_entropy


def shard_backward(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    targets: torch.Tensor,  # [N] global ids or ignore_index
    vocab_start: int,
    lse: torch.Tensor,  # [N] combined
    entropy: torch.Tensor,  # [N] combined, or empty
    grad_logp: torch.Tensor | None,
    grad_entropy: torch.Tensor | None,
    opts: LogProbOptions,
    compute_dtype: torch.dtype,
    backend: str,
    needs: tuple[bool, bool, bool],
) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
    """(partial dHidden, this shard's dW, db), each None when not needed: the backward custom op over the shard with
    the combined softmax (the shard's options score every row, so the global ignored rows are masked here)."""
    acc = acc_dtype(compute_dtype)
    valid = (targets != opts.ignore_index).to(acc)
    g_l = None if grad_logp is None else grad_logp.to(acc) * valid
    g_h = None if grad_entropy is None else grad_entropy.to(acc) * valid
    local, _ = shard_targets(targets, vocab_start, weight.shape[0])  # a foreign target is never hit
    empty = lse.new_zeros(0)
    grads = logprobs_backward(
        hidden,
        weight,
        bias,
        local,
        lse,
        entropy if g_h is not None else empty,
        empty,
        empty,
        g_l,
        g_h,
        _shard_options(opts, g_h is not None).with_(return_log_sum_sq_probs=False, return_mean_logits=False),
        compute_dtype,
        backend,
        needs,
    )
    return tuple(g if need else None for g, need in zip(grads, needs))  # the op's empty placeholders -> None


def _exact_index_limit(compute_dtype: torch.dtype) -> int:
    """The largest column id the statistics' float dtype holds exactly (2^24 in fp32, 2^53 in fp64)."""
    return int(2 / torch.finfo(acc_dtype(compute_dtype)).eps)


def _all_gather(stats: torch.Tensor, group: Any) -> torch.Tensor:
    import torch.distributed as dist

    parts = [torch.empty_like(stats) for _ in range(dist.get_world_size(group))]
    dist.all_gather(parts, stats.contiguous(), group=group)
    return torch.stack(parts)


class VocabParallelLogProbsFunction(torch.autograd.Function):
    """(hidden [N, H], weight [V_local, H], bias [V_local] | None, targets [N]) -> (logp [N], entropy [N] or empty);
    ``group`` is the TP process group, ordered as the vocabulary shards are."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, vocab_start, vocab_size, group, opts, compute_dtype, backend):
        ctx.set_materialize_grads(False)
        stats = shard_statistics(hidden, weight, bias, targets, vocab_start, opts, compute_dtype, backend)
        gathered = _all_gather(stats, group)
        logp, entropy, log_sum_sq, mean_logits, is_top1, lse, full_entropy = combine_statistics(
            gathered, targets, opts, vocab_size
        )
        ctx.save_for_backward(hidden, weight, bias, targets, lse, full_entropy)
        ctx.vocab_start, ctx.group, ctx.opts, ctx.compute_dtype, ctx.backend = (
            vocab_start,
            group,
            opts,
            compute_dtype,
            backend,
        )
        ctx.mark_non_differentiable(targets, log_sum_sq, mean_logits, is_top1)
        return logp, entropy, log_sum_sq, mean_logits, is_top1

    @staticmethod
    def backward(ctx, grad_logp, grad_entropy, *_non_differentiable):
        import torch.distributed as dist

        hidden, weight, bias, targets, lse, entropy = ctx.saved_tensors
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        none = (None,) * 7
        if not (need_x or need_w or need_b) or (grad_logp is None and grad_entropy is None):
            return None, None, None, *none
        if entropy.numel() == 0:
            grad_entropy = None
        gx, gw, gb = shard_backward(
            hidden,
            weight,
            bias,
            targets,
            ctx.vocab_start,
            lse,
            entropy,
            grad_logp,
            grad_entropy,
            ctx.opts,
            ctx.compute_dtype,
            ctx.backend,
            (need_x, need_w, need_b and bias is not None),
        )
        if gx is not None:
            gx = gx.contiguous()
            dist.all_reduce(gx, group=ctx.group)  # each shard's part of dHidden, summed over the TP group
        return gx, gw, gb if bias is not None else None, *none


def vocab_parallel_linear_logprobs(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    *,
    vocab_start: int,
    vocab_size: int,
    group: Any,
    bias: torch.Tensor | None = None,
    options: LogProbOptions | None = None,
    backend: Backend = "auto",
) -> LogProbs:
    """:func:`fastgrpo.linear_logprobs` for a head sharded by vocabulary over ``group`` (a TP process group).

    ``weight`` [V_local, H] (and ``bias`` [V_local]) are this rank's rows ``vocab_start:vocab_start + V_local`` of a
    ``[vocab_size, H]`` head; ``hidden`` and ``targets`` (global ids) are the same on every rank of the group. The
    result is the same on every rank. Gradients: this rank's dW/db slice, and the full dHidden (all-reduced).
    """
    opts = options or LogProbOptions()
    check_linear_logprobs_inputs(hidden, weight, torch.zeros_like(targets), bias, opts.ignore_index)
    if not 0 <= vocab_start <= vocab_size - weight.shape[0]:
        raise ValueError(
            f"vocab_start={vocab_start} with {weight.shape[0]} local rows does not fit vocab_size={vocab_size}"
        )
    impl = resolve_backend(backend, hidden.device)
    compute_dtype = compute_dtype_for(hidden, weight)
    if opts.return_is_top1 and vocab_size > _exact_index_limit(compute_dtype):
        raise ValueError(
            f"return_is_top1 under tensor parallelism carries column ids in the statistics' "
            f"{acc_dtype(compute_dtype)}: vocab_size={vocab_size} exceeds {_exact_index_limit(compute_dtype)}, "
            "the largest it holds exactly"
        )
    if targets.numel() > 0 and not torch.compiler.is_compiling():
        bad = (targets != opts.ignore_index) & ((targets < 0) | (targets >= vocab_size))
        if bool(bad.any()):
            raise ValueError(
                f"targets must be in [0, vocab_size={vocab_size}) or ignore_index={opts.ignore_index}; "
                f"found {targets[bad][0].item()}"
            )
    lead = hidden.shape[:-1]
    outs = VocabParallelLogProbsFunction.apply(
        hidden.reshape(-1, hidden.shape[-1]),
        weight,
        bias,
        targets.reshape(-1),
        vocab_start,
        vocab_size,
        group,
        opts,
        compute_dtype,
        impl,
    )
    flags = (True, opts.return_entropy, opts.return_log_sum_sq_probs, opts.return_mean_logits, opts.return_is_top1)
    return LogProbs(*(t.view(lead) if flag else None for t, flag in zip(outs, flags)))
