"""Shared helpers for the linear_logprobs tests: random inputs of awkward sizes and a relative-error check."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

from fastgrpo.options import LogProbOptions

# Interpreter blocks are 16 x 32 x 16 (fastgrpo_kernels.configs.INTERPRETER_CONFIG): the sizes below are not
# multiples of any of them, and span several blocks in each dimension.
AWKWARD = (37, 40, 301)  # N, H, V


@dataclass
class Case:
    hidden: torch.Tensor
    weight: torch.Tensor
    bias: torch.Tensor | None
    targets: torch.Tensor


def make_case(n, h, v, *, dtype=torch.float32, bias=False, lead=None, n_ignored=2, ignore_index=-100, scale=1.0):
    """Fresh random inputs; logits of O(scale * 3) so the softmax is neither flat nor one-hot."""
    hidden = torch.randn(*(lead or (n,)), h, dtype=torch.float64)
    weight = torch.randn(v, h, dtype=torch.float64) * (scale * 3.0 / h**0.5)
    b = torch.randn(v, dtype=torch.float64) if bias else None
    targets = torch.randint(0, v, hidden.shape[:-1])
    flat = targets.view(-1)
    if n_ignored:
        flat[torch.randperm(flat.numel())[: min(n_ignored, flat.numel())]] = ignore_index
    return Case(hidden.to(dtype), weight.to(dtype), None if b is None else b.to(dtype), targets)


def rel_err(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """max |actual - expected| / max |expected| (0 when both are all zero); NaN anywhere fails."""
    actual, expected = actual.double(), expected.double()
    if not torch.isfinite(actual).all():
        return float("inf")
    denom = expected.abs().max().item()
    num = (actual - expected).abs().max().item() if actual.numel() else 0.0
    return num / denom if denom > 0 else num


OPTION_CASES = {
    "plain": LogProbOptions(),
    "temperature_scale": LogProbOptions(temperature=0.7, logit_scale=1.7),
    "softcap": LogProbOptions(softcap=4.0),
    "all": LogProbOptions(temperature=1.3, logit_scale=0.8, softcap=6.0),
}


@contextlib.contextmanager
def kernel_overrides(backend: str, **fields):
    """For the Triton backend: several vocabulary splits, a backward workspace of a few chunks, NaN-poisoned
    outputs and workspaces. No-op for the torch backend."""
    if backend != "triton":
        yield
        return
    from fastgrpo import launch_config

    defaults = dict(num_splits=3, workspace_bytes=37 * 4 * 96, poison=True)
    defaults.update(fields)
    with launch_config.override(**defaults):
        yield


def tie_case(n: int, h: int, v: int, tied: tuple[int, ...], dtype=torch.float32):
    """Inputs whose logits are exact in fp32 (small integers times 1/16, sums far below 2^24), so equal weight rows
    give bit-equal logits however the dot products are ordered. The rows ``tied`` are equal and are every token's
    strict maximum: x >= 0 with a nonzero sum, tied rows 3/16 everywhere, the other rows in [-2, 2] / 16."""
    g = torch.Generator().manual_seed(1234)
    hidden = torch.randint(0, 3, (n, h), generator=g).double()
    hidden[:, 0] = 1.0  # sum(x) > 0 on every row: the tied rows are the unique maximum
    weight = torch.randint(-2, 3, (v, h), generator=g).double() / 16
    weight[list(tied)] = 3.0 / 16
    return hidden.to(dtype), weight.to(dtype)
