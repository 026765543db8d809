"""The one place that decides how each Triton kernel launches: block sizes, warps, stages, splits, and the
frozen-head route, for every kernel family (``fwd``, ``fwd_softmax_w``, ``bwd``, ``combine``, ``grpo_loss``).

:meth:`LaunchConfigResolver.resolve` applies, in order:

1. the interpreter's config under ``TRITON_INTERPRET=1`` (small blocks, so tiny test shapes span several); else
2. the nearest entry (hidden size first, then N) of the tuned table for the device's architecture family
   (``fastgrpo_kernels/tuned/<family>.json``, written on a GPU by ``python tools/tune.py``); else
3. the built-in default for (architecture family, kernel family, precision) in ``fastgrpo_kernels.arch_configs``;
4. the opt-in autotuner's choice for the shape class, when autotuning is on (``fastgrpo.tuning``);
5. ``override(...)`` fields (tests force several vocabulary splits and small workspaces; tuning scripts try
   variants).

Every kernel config also carries the compile options a launch passes explicitly (``configs.LaunchOptions``: FP
fusion, pinned by ``configs.FP_FUSION``), so no launch depends on Triton's defaults. The launchers
(``fastgrpo/triton_backend.py``, ``fastgrpo/grpo/launch.py``) get every config from here and build none themselves.
State (overrides, autotuning, tuned-table directory) lives in a resolver object: the launchers use :func:`current`;
tests build their own and install it with :func:`use`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

import torch

from fastgrpo_kernels import arch_configs, configs
from fastgrpo_kernels.common import INTERPRET
from fastgrpo_kernels.configs import TUNABLE_KINDS

from . import rocm
from .tuning import Autotuner, capturing

T = TypeVar("T")

# Devices without a CUDA compute capability or AMD gfx name that still compile Triton kernels (none is supported
# yet beyond CUDA and ROCm): the sm_90 table, the one every config was first written for.
DEFAULT_ARCH = "sm90"
_DTYPE_NAMES = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}
_SMS_OFF_CUDA = 4  # interpreter / other devices: a few vocabulary splits, to exercise the combine


def dtype_precision(dtype: torch.dtype) -> str:
    """The precision name of operands of ``dtype`` (fp32 operands on tensor cores are ``"tf32"``: the launcher,
    which knows the user's TF32 setting, says so)."""
    try:
        return _DTYPE_NAMES[dtype]
    except KeyError:
        raise TypeError(f"Triton kernels take float32, bfloat16 or float16 operands, got {dtype}") from None


class LaunchConfigResolver:
    """Resolves launch configs (see the module docstring for the order).

    Args:
        interpret: whether kernels run under the Triton interpreter (None: as imported, ``TRITON_INTERPRET``).
        tuned_dir: folder of tuned tables (None: the shipped ``fastgrpo_kernels/tuned``).
        autotuner: autotuning state (None: a fresh one following ``FASTGRPO_AUTOTUNE`` / ``_CACHE``).
    """

    def __init__(
        self,
        *,
        interpret: bool | None = None,
        tuned_dir: str | os.PathLike | None = None,
        autotuner: Autotuner | None = None,
    ) -> None:
        self.interpret = INTERPRET if interpret is None else interpret
        self.tuned_dir = tuned_dir
        self.autotuner = Autotuner() if autotuner is None else autotuner
        self._overrides: dict[str, dict] = {}
        self._sms: dict[int, int] = {}

    # ---- the one resolution function ----

    def resolve(self, kind: str, precision: str, *, device: torch.device, n: int = 0, h: int = 0, vocab: int = 0):
        """The config for one launch of ``kind`` with ``precision`` operands ("bf16", "fp16", "fp32" exact,
        "tf32") at (n rows, h hidden, vocab) on ``device``. Returns the kind's config dataclass."""
        configs.check_kind(kind)
        configs.check_precision(precision)
        if self.interpret:  # 1
            cfg = configs.INTERPRETER_CONFIGS[kind]
        else:
            arch = self.arch(device)
            entry = self._tuned_entry(arch, kind, precision, n, h) if arch is not None else None
            if entry is not None:  # 2
                cfg = configs.CONFIG_CLASSES[kind].from_dict(entry["config"])
            else:  # 3
                cfg = self._arch_default(arch or DEFAULT_ARCH, kind, precision)
        if kind in TUNABLE_KINDS and n > 0 and self.autotuner.enabled:  # 4
            choice = self.autotuner.choice(self.autotuner.key(kind, precision, n, h, vocab, device))
            cfg = cfg if choice is None else choice
        return self._apply_overrides(kind, cfg)  # 5

    def launch(
        self,
        kind: str,
        run: Callable[[configs.KernelConfig], T],
        *,
        precision: str,
        n: int,
        h: int,
        vocab: int,
        device: torch.device,
    ) -> T:
        """``run(config)`` with this launch's config; with autotuning on, the first launch of a shape class first
        times every candidate (``run`` on each) to make the choice that ``resolve`` then returns."""
        shape = dict(device=device, n=n, h=h, vocab=vocab)
        cfg = self.resolve(kind, precision, **shape)
        tuner = self.autotuner
        if kind in TUNABLE_KINDS and n > 0 and tuner.enabled and not capturing(device):
            key = tuner.key(kind, precision, n, h, vocab, device)
            if tuner.choice(key) is None:
                tuner.tune(key, run, [cfg, *self.candidates(kind, precision)], device)
                cfg = self.resolve(kind, precision, **shape)
        return run(cfg)

    # ---- the pieces resolve reads ----

    def with_outputs(self, cfg, kind: str, precision: str, device: torch.device):
        """``cfg`` of a forward (``kind`` "fwd" / "fwd_softmax_w") that asks for an optional output, with the fields
        ``arch_configs.OUTPUT_TILES`` replaces on this device (where the table's tile spills with them)."""
        fields = arch_configs.output_tiles(self.arch(device), kind, precision)
        return dataclasses.replace(cfg, **fields) if fields else cfg

    def arch(self, device: torch.device) -> str | None:
        """The architecture family of a CUDA device (``arch_configs.arch_family``), or of an AMD GPU on a ROCm torch
        (``arch_configs.amd_family`` of its gfx name: its "capability" numbers collide with NVIDIA's); None for
        other devices."""
        if device.type != "cuda":
            return None
        if rocm.is_rocm():
            return arch_configs.amd_family(rocm.gfx_arch(device))
        return arch_configs.arch_family(torch.cuda.get_device_capability(device))

    def unsupported_reason(self, device: torch.device, precision: str | None = None) -> str | None:
        """Why no Triton kernel serves ``device`` (and ``precision`` if given) here, or None when one does."""
        if self.interpret or device.type != "cuda":
            return None
        try:
            arch = self.arch(device)
        except arch_configs.UnsupportedArchitecture as err:
            return str(err)
        if arch in arch_configs.TORCH_PATH:  # no Triton kernel at all on this family (the launch table's decision)
            return f"{arch_configs.TORCH_PATH[arch]}: fastgrpo has no Triton kernels for {arch}"
        if precision is not None and arch_configs.default(arch, "fwd", precision) is None:
            return f"fastgrpo has no Triton kernel for {precision} operands on {arch}; use backend='torch'"
        return None

    def _arch_default(self, arch: str, kind: str, precision: str):
        cls = configs.CONFIG_CLASSES[kind]
        if kind not in arch_configs.KERNELS:  # the frozen route: the identity unless a tuned table says otherwise
            return cls()
        fields = arch_configs.default(arch, kind, precision)
        if fields is None:
            raise ValueError(f"fastgrpo has no Triton {kind} kernel for {precision} operands on {arch}")
        return cls.from_dict(fields)

    def _tuned_entry(self, arch: str, kind: str, precision: str, n: int, h: int) -> dict | None:
        """The tuned entry measured at the shape closest to (n, h): hidden size first (it sets the work per tile),
        then N."""
        if n <= 0 or h <= 0:
            return None
        entries = [
            e for e in configs.tuned_table(arch, self.tuned_dir) if e["kind"] == kind and e["dtype"] == precision
        ]
        if not entries:
            return None
        return min(entries, key=lambda e: (abs(math.log(e["h"] / h)), abs(math.log(e["n"] / n))))

    def candidates(self, kind: str, precision: str = "bf16") -> list:
        """Configs the autotuner times for ``kind`` besides the resolved one, with any overrides applied."""
        base = configs.candidates(kind, precision, interpret=self.interpret)
        return list(dict.fromkeys(self._apply_overrides(kind, c) for c in base))  # overrides may make them equal

    def num_sms(self, device: torch.device) -> int:
        """Streaming multiprocessors of a CUDA device (``device.index`` None: the current device), which sets how
        many vocabulary splits fill it; a small fixed number elsewhere."""
        if device.type != "cuda":
            return _SMS_OFF_CUDA
        index = device.index if device.index is not None else torch.cuda.current_device()
        if index not in self._sms:
            self._sms[index] = torch.cuda.get_device_properties(index).multi_processor_count
        return self._sms[index]

    # ---- convenience for the launchers ----

    def frozen_head_identity(self, hidden: torch.Tensor, compute_dtype: torch.dtype) -> bool:
        """Frozen head: accumulate softmax(z) @ W in the forward (True) or recompute the logits in the backward.
        Keyed by the operand dtype (a TF32 fp32 head reads the ``fp32`` entry)."""
        n, h = hidden.shape
        route = self.resolve("frozen_route", dtype_precision(compute_dtype), device=hidden.device, n=n, h=h)
        return route.softmax_w_identity

    def grpo_loss_config(self, per_token_logps: torch.Tensor) -> configs.GRPOLossConfig:
        """The GRPO loss kernel's config for a [B, T] batch (tuned tables key it as n=B, h=T)."""
        bsz, seqlen = per_token_logps.shape
        precision = _DTYPE_NAMES.get(per_token_logps.dtype, "fp32")  # the kernel computes in fp32 either way
        return self.resolve("grpo_loss", precision, device=per_token_logps.device, n=bsz, h=seqlen)

    # ---- overrides ----

    @contextlib.contextmanager
    def override(self, kinds: Iterable[str] = TUNABLE_KINDS, **fields) -> Iterator[None]:
        """Temporarily replace config fields of ``kinds`` (default: the lm_head GEMM kernels), e.g.
        ``override(num_splits=3, poison=True)`` or ``override(kinds=("frozen_route",), softmax_w_identity=False)``.
        """
        kinds = (kinds,) if isinstance(kinds, str) else tuple(kinds)
        for kind in kinds:
            configs.check_kind(kind)
            cls = configs.CONFIG_CLASSES[kind]
            unknown = set(fields) - configs.field_names(cls)
            if unknown:
                raise ValueError(f"unknown {cls.__name__} fields for {kind}: {sorted(unknown)}")
        saved = {k: dict(v) for k, v in self._overrides.items()}
        for kind in kinds:
            self._overrides.setdefault(kind, {}).update(fields)
        try:
            yield
        finally:
            self._overrides = saved

    def has_overrides(self) -> bool:
        return any(self._overrides.values())

    def _apply_overrides(self, kind: str, cfg):
        fields = self._overrides.get(kind)
        return dataclasses.replace(cfg, **fields) if fields else cfg


_current: LaunchConfigResolver | None = None


def current() -> LaunchConfigResolver:
    """The resolver the launchers use (created on first use)."""
    global _current
    if _current is None:
        _current = LaunchConfigResolver()
    return _current


@contextlib.contextmanager
def use(resolver: LaunchConfigResolver) -> Iterator[LaunchConfigResolver]:
    """Make ``resolver`` the one the launchers use inside the block."""
    global _current
    saved = _current
    _current = resolver
    try:
        yield resolver
    finally:
        _current = saved


def override(kinds: Iterable[str] = TUNABLE_KINDS, **fields) -> contextlib.AbstractContextManager[None]:
    """``current().override(...)``: e.g. ``with launch_config.override(num_splits=3, poison=True): ...``."""
    return current().override(kinds, **fields)


def unsupported_reason(device: torch.device, precision: str | None = None) -> str | None:
    return current().unsupported_reason(device, precision)
