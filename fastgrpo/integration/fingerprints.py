"""Fingerprints of the trl functions fastgrpo replaces or mirrors, recorded for every trl release it verified.

A fingerprint is the sha256 (first 8 hex digits) of a function's normalised source: comments, docstrings, blank lines
and trailing spaces removed, the block dedented. Any other change to the text (code, formatting) changes it, so on a trl
whose functions differ from the verified release's, fastgrpo does not assume it still computes trl's loss.

To verify a new trl release: install it, run the trainer tests, then add the line that
``python -m fastgrpo.integration.fingerprints`` prints to ``VERIFIED`` (and regenerate README's table with
``python -m fastgrpo.integration.fingerprints --table``).
"""

from __future__ import annotations

import ast
import functools
import hashlib
import inspect
import io
import sys
import textwrap
import tokenize
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from packaging.version import Version

# `GRPOTrainer.*`: methods of trl's GRPOTrainer; `utils.*`: functions of `trl.trainer.utils`. The log-prob ones are
# what fastgrpo's `_get_per_token_logps_and_entropies` and fused head reproduce (1.10-1.14: trl's full-logits helpers;
# 1.15+: trl's fused head); the others are the loss that fastgrpo's fused loss reproduces.
LOSS_FUNCTIONS = (
    "GRPOTrainer.compute_loss",
    "GRPOTrainer._compute_loss",
    "GRPOTrainer.get_high_entropy_mask",
    "GRPOTrainer.get_off_policy_mask",
    "GRPOTrainer.get_gamma_weights",
)
LOGPROB_FUNCTIONS = (
    "GRPOTrainer._get_per_token_logps_and_entropies",
    "GRPOTrainer._full_logits_logps",
    "utils.selective_log_softmax",
    "utils.entropy_from_logits",
    "utils.selective_log_softmax_and_entropy",
    "utils.add_fused_lm_head",
)
# The fused head every trl >= 1.15 trainer scores through (`kernels.*`: `trl.kernels.chunked_logprob`): the function
# fastgrpo's `add_fused_lm_head` stands in for, the output it mirrors, and the kernel whose outputs it reproduces,
# optional outputs (entropy, log sum p^2, mean logit, is-top-1 and its tie rule) included: the autograd function and
# both of its tile folds (Triton, and torch for devices without Triton).
HEAD_FUNCTIONS = (
    "utils.add_fused_lm_head",
    "utils.FusedCausalLMOutput",
    "kernels.ChunkedLogProbFunction",
    "kernels._forward_kernel",
    "kernels._forward_tile",
)
FINGERPRINTED = LOSS_FUNCTIONS + LOGPROB_FUNCTIONS + tuple(n for n in HEAD_FUNCTIONS if n not in LOGPROB_FUNCTIONS)
ABSENT = "-"  # the release has no such function
NO_SOURCE = "?"  # the function's source cannot be read (never equal to a recorded fingerprint)

# trl release -> fingerprints of FINGERPRINTED, in that order. Each release here passes the trainer tests in CI
# (tests/ci/stage-30-trl-eras.sh). 1.11.0 and 1.13.0 are not listed: their fingerprints equal 1.12.0's, but CI does
# not run them.
VERIFIED: dict[str, str] = {
    "1.10.0": "3da09492 0fa47053 aa5a5659 e3233084 18f2cfe8 f72a62d3 - db1ffb5e 7ddc69c6 - - - - - -",
    "1.12.0": "3da09492 0fa47053 aa5a5659 33bcdeef 18f2cfe8 818120b8 - db1ffb5e 7ddc69c6 - - - - - -",
    "1.14.2": "8162cccb 0fa47053 aa5a5659 33bcdeef 18f2cfe8 842dc827 c327ff35 8e2e1adb 57976ae3 c73b2f5a - - - - -",
    "1.15.0": "f6432847 0fa47053 aa5a5659 33bcdeef 18f2cfe8 cb325917 - 8e2e1adb 57976ae3 c73b2f5a 79e82128 da89671d 3306c6b2 6ab1616f -",  # noqa: E501
    "1.16.0": "f6432847 0fa47053 aa5a5659 33bcdeef 18f2cfe8 cb325917 - 68a807aa 2031bb2a 6aa81633 bde24005 da89671d 4f29f467 29af9ed9 4d106619",  # noqa: E501
}
# Verified releases whose loss fastgrpo's fused loss does not reproduce: log-probs through fastgrpo, trl's own loss.
LOSS_NOT_VERIFIED: dict[str, str] = {
    "1.10.0": "its get_off_policy_mask keeps vLLM's NaN per-token KL, which fastgrpo (like trl >= 1.11) zeroes",
}


def normalised_source(source: str) -> str:
    """``source`` without comments, docstrings, blank lines and trailing spaces, dedented."""
    source = textwrap.dedent(source)
    skip: set[int] = set()
    for node in ast.walk(ast.parse(source)):
        body = getattr(node, "body", None)
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and body:
            first = body[0]
            value = first.value if isinstance(first, ast.Expr) else None
            if isinstance(value, ast.Constant) and isinstance(value.value, str):
                skip.update(range(first.lineno, (first.end_lineno or first.lineno) + 1))
    lines = source.splitlines()
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            row, col = tok.start
            lines[row - 1] = lines[row - 1][:col]
    kept = [line.rstrip() for number, line in enumerate(lines, 1) if number not in skip]
    return "\n".join(line for line in kept if line)


@functools.lru_cache(maxsize=256)
def fingerprint(obj: Any) -> str:
    """The fingerprint of a function (or method, staticmethod, class); ``ABSENT`` for None. Cached per object."""
    if obj is None:
        return ABSENT
    obj = getattr(obj, "__func__", obj)  # staticmethod / classmethod
    if not inspect.isfunction(obj) and not inspect.isclass(obj) and inspect.isfunction(getattr(obj, "fn", None)):
        obj = obj.fn  # a @triton.jit kernel: its Python function
    try:
        source = inspect.getsource(obj)
        text = normalised_source(source)
    except (OSError, TypeError, SyntaxError):
        return NO_SOURCE
    return hashlib.sha256(text.encode()).hexdigest()[:8]


def trl_function(name: str, trl_method: Callable[[str], Any] | None = None) -> Any:
    """The installed trl's function ``name`` (see FINGERPRINTED), or None when it has none.

    ``trl_method(method_name)`` returns trl's own GRPOTrainer method (the one patch_trl() replaced, if patched).
    """
    owner, attr = name.split(".", 1)
    if owner == "GRPOTrainer":
        if trl_method is not None:
            return trl_method(attr)
        from trl.trainer.grpo_trainer import GRPOTrainer

        return GRPOTrainer.__dict__.get(attr)
    if owner == "kernels":
        try:
            from trl.kernels import chunked_logprob
        except ImportError:  # trl < 1.15
            return None
        return getattr(chunked_logprob, attr, None)
    import trl.trainer.utils as trl_utils

    return getattr(trl_utils, attr, None)


def installed_fingerprints(trl_method: Callable[[str], Any] | None = None) -> dict[str, str]:
    return {name: fingerprint(trl_function(name, trl_method)) for name in FINGERPRINTED}


def recorded(version: str) -> dict[str, str] | None:
    """The fingerprints recorded for trl ``version``, or None when that release is not verified."""
    line = VERIFIED.get(str(Version(version)))
    return None if line is None else dict(zip(FINGERPRINTED, line.split()))


def reference_release(version: str) -> str | None:
    """The verified release to compare an unverified ``version`` with: the newest verified one at or below it, else
    the oldest verified one."""
    if not VERIFIED:
        return None
    releases = sorted(VERIFIED, key=Version)
    below = [r for r in releases if Version(r) <= Version(version)]
    return below[-1] if below else releases[0]


def differing(prints: Mapping[str, str], reference: Mapping[str, str]) -> list[str]:
    """Names whose fingerprint differs from the reference's (a NO_SOURCE fingerprint always differs)."""
    return [name for name in FINGERPRINTED if prints.get(name) != reference.get(name) or prints.get(name) == NO_SOURCE]


def verified_line(version: str, prints: Mapping[str, str]) -> str:
    """The ``VERIFIED`` entry for ``version``, ready to paste."""
    line = f'    "{Version(version)}": "{" ".join(prints[name] for name in FINGERPRINTED)}",'
    return line if len(line) <= 120 else f"{line}  # noqa: E501"


def version_table() -> str:
    """README's trl version table, from ``VERIFIED`` and the supported range."""
    from ._compat import SUPPORTED_RANGE

    rows = ["| trl | log-probs | loss |", "| --- | --- | --- |"]
    for release in sorted(VERIFIED, key=Version):
        why = LOSS_NOT_VERIFIED.get(release)
        loss = "fastgrpo's fused GRPO loss" if why is None else f"trl's own (fastgrpo's would differ: {why})"
        rows.append(f"| {release} (verified) | fastgrpo | {loss} |")
    rows.append(
        f"| any other release in `{SUPPORTED_RANGE}` (not verified) | fastgrpo's head where trl's fused head is "
        "unchanged (GRPO: and its log-prob functions) | trl's own; a WARNING names the functions that differ from "
        "the nearest verified release |"
    )
    rows.append(f"| outside `{SUPPORTED_RANGE}` (unsupported) | - | - (the trainer and `patch_trl()` raise an error) |")
    return "\n".join(rows)


@dataclass(frozen=True)
class TrlSupport:
    """What fastgrpo does on the installed trl, decided once per trainer from the fingerprints."""

    version: str
    fused_loss: bool = True  # False: trl's own compute_loss computes the loss (on fastgrpo's log-probs)
    logps_method: bool = True  # False: trl's own _get_per_token_logps_and_entropies (it calls the fused head, 1.15+)
    fused_head: bool = True  # False: trl's fused head changed; trl's own head runs in every trainer
    reasons: tuple[str, ...] = field(default_factory=tuple)  # why the fused loss is off (empty when verified)
    changed: tuple[str, ...] = field(default_factory=tuple)  # FINGERPRINTED names that differ from the reference

    @property
    def verified(self) -> bool:
        return self.fused_loss and self.logps_method and self.fused_head


def assess(version: str, prints: Mapping[str, str]) -> TrlSupport:
    """Compare the installed trl's fingerprints with the recorded ones; see :class:`TrlSupport`."""
    version = str(Version(version))
    own = recorded(version)
    if own is not None and not differing(prints, own):
        why = LOSS_NOT_VERIFIED.get(version)
        if why is None:
            return TrlSupport(version)
        return TrlSupport(version, fused_loss=False, reasons=(f"trl {version}: fastgrpo's fused loss differs ({why})",))
    reference = version if own is not None else reference_release(version)
    changed = differing(prints, recorded(reference) or {}) if reference is not None else list(FINGERPRINTED)
    head = not any(name in HEAD_FUNCTIONS for name in changed)
    method = head and not any(name in LOGPROB_FUNCTIONS for name in changed)
    if own is not None:
        why = f"trl {version}'s functions differ from the ones recorded for it: {', '.join(changed)}"
    else:
        verified = ", ".join(sorted(VERIFIED, key=Version))
        why = (
            f"trl {version} is not a release fastgrpo verified ({verified}); functions that differ from "
            f"{reference}: {', '.join(changed) or 'none'}"
        )
    return TrlSupport(
        version, fused_loss=False, logps_method=method, fused_head=head, reasons=(why,), changed=tuple(changed)
    )


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if "--table" in argv:
        print(version_table())
        return 0
    import trl

    prints = installed_fingerprints()
    print(f"# trl {trl.__version__}: paste into fastgrpo/integration/fingerprints.py VERIFIED")
    print(verified_line(trl.__version__, prints))
    recorded_prints = recorded(trl.__version__)
    if recorded_prints is None:
        print(f"# trl {trl.__version__} is not recorded yet")
    else:
        changed = differing(prints, recorded_prints)
        verdict = "identical" if not changed else "differs: " + ", ".join(changed)
        print(f"# recorded for trl {trl.__version__}: {verdict}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
