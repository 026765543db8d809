"""What every implementation hands the harness: a function that runs one call of a mode on an input set."""

from __future__ import annotations

import importlib
import importlib.metadata
from collections.abc import Callable
from types import ModuleType
from typing import NamedTuple

import torch

from ..harness.grpo_math import grpo_loss_from_logps
from ..harness.inputs import InputSet
from ..harness.suites import FORWARD_MODES


class Unavailable(Exception):
    """The implementation cannot run here (missing package, wrong device, mode not offered); str() is the reason.

    Only these are skips. Anything else a peer raises (an ImportError from a distribution that *is* installed, a crash
    in a call) is a failure: the run names it at the end and exits non-zero.
    """


def import_peer(module: str, distribution: str) -> ModuleType:
    """Import ``module`` of the peer ``distribution``.

    Not installed (no metadata) -> ``Unavailable`` (a skip). Installed -> the import's own error, if any, propagates:
    a broken install, or an import error in the peer (Hugging Face's ``kernels`` shadowed, a removed name), is a failure
    of the run, never a quiet "unavailable".
    """
    try:
        importlib.metadata.distribution(distribution)
    except importlib.metadata.PackageNotFoundError as exc:
        raise Unavailable(f"{distribution} not installed") from exc
    return importlib.import_module(module)


class Outputs(NamedTuple):
    """One call's results: ``value`` is the log-probs ``[B, T]`` (op modes) or the scalar loss (GRPO mode)."""

    value: torch.Tensor
    grad_hidden: torch.Tensor | None
    grad_weight: torch.Tensor | None
    extra: tuple[torch.Tensor | None, ...] = ()

    def retained_pointers(self) -> set[int]:
        """Data pointers of the storages the call hands back (outputs and gradients)."""
        tensors = (self.value, self.grad_hidden, self.grad_weight, *self.extra)
        return {t.untyped_storage().data_ptr() for t in tensors if t is not None}

    def retained_bytes(self) -> int:
        """Bytes the call leaves allocated (outputs and gradients), each storage counted once."""
        seen: set[int] = set()
        total = 0
        for t in (self.value, self.grad_hidden, self.grad_weight, *self.extra):
            if t is None:
                continue
            key = t.untyped_storage().data_ptr()
            if key not in seen:
                seen.add(key)
                total += t.untyped_storage().nbytes()
        return total


Runner = Callable[[InputSet], Outputs]
# (hidden [N, H], weight [V, H], targets [N]) -> (logp [N] fp32, entropy [N] or None)
FlatLogProbFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor | None]]
# input set -> (logp [B, T] fp32, entropy [B, T] or None)
LogProbFn = Callable[[InputSet], tuple[torch.Tensor, torch.Tensor | None]]


def on_flat_tokens(op: FlatLogProbFn) -> LogProbFn:
    """Run a ``[N, H]`` log-prob op on an input set's ``[B, T, H]`` hidden states."""

    def fn(s: InputSet) -> tuple[torch.Tensor, torch.Tensor | None]:
        logp, entropy = op(s.hidden.reshape(-1, s.hidden.shape[-1]), s.weight, s.targets.reshape(-1))
        return logp.view(s.targets.shape), None if entropy is None else entropy.detach().view(s.targets.shape)

    return fn


def logprob_runner(mode: str, flat: LogProbFn) -> Runner:
    """Wrap a log-prob op into a runner for ``mode``; entropy is for logging (no grad), as trl computes it."""

    if mode in FORWARD_MODES:  # which outputs the op computes is the op's business (fwd_logp, fwd_all)

        def run(s: InputSet) -> Outputs:
            with torch.no_grad():
                logp, entropy = flat(s)
            return Outputs(logp, None, None, (entropy,))

    elif mode in ("fwd_bwd", "fwd_bwd_frozen"):

        def run(s: InputSet) -> Outputs:
            logp, entropy = flat(s)
            logp.backward(s.grad_logp)
            return Outputs(logp.detach(), s.hidden.grad, s.weight.grad, (entropy,))

    elif mode == "grpo":

        def run(s: InputSet) -> Outputs:
            logp, entropy = flat(s)
            loss = grpo_loss_from_logps(logp, s.ref_logp, s.advantages, s.mask)
            loss.backward()
            return Outputs(loss.detach(), s.hidden.grad, s.weight.grad, (entropy,))

    else:
        raise Unavailable(f"unknown mode {mode!r}")
    return run
