"""Which shapes, modes and implementations a benchmark run covers: one named suite per device class."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from fastgrpo import env

QWEN_VOCAB = 151936
# Hidden sizes of Qwen2.5 0.5B / 1.5B / 7B.
QWEN_HIDDEN = {"0.5B": 896, "1.5B": 1536, "7B": 3584}

# Op-level modes: log-probs (+ entropy, for logging, as trl computes it) without grad; log-probs alone, and with all
# five per-token outputs of trl's head (log-probs, entropy, log sum p^2, mean logit, is-top-1), without grad (fastgrpo
# and trl only: OUTPUT_MODES); with a trainable head; with a frozen head (LoRA); the whole GRPO loss (log-probs + k3
# KL + clipped objective) forward + backward.
MODES = ("fwd", "fwd_logp", "fwd_all", "fwd_bwd", "fwd_bwd_frozen", "grpo")
FORWARD_MODES = ("fwd", "fwd_logp", "fwd_all")  # no gradient
OUTPUT_MODES = ("fwd_logp", "fwd_all")  # the cost of trl's optional outputs
# Implementations, in table order. "trl_chunked" is the baseline every ratio is taken against.
IMPLS = ("fastgrpo", "trl_chunked", "eager", "liger_fused", "liger_triton", "cce")
BASELINE = "trl_chunked"
SUITE_ENV = "FASTGRPO_BENCH_SUITE"


@dataclass(frozen=True)
class OpShape:
    """One op-level shape: ``tokens`` rows of hidden size ``hidden`` against a ``vocab``-row head."""

    name: str
    tokens: int
    hidden: int
    vocab: int = QWEN_VOCAB
    # Completion length of the GRPO-loss mode: the tokens are laid out as [tokens // seq_len, seq_len].
    seq_len: int = 1024

    @property
    def batch(self) -> int:
        return max(1, self.tokens // self.seq_len)


@dataclass(frozen=True)
class TrainerShape:
    """One trainer-step case: a Qwen2.5-shaped model with random weights and synthetic completions."""

    name: str
    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    vocab: int = QWEN_VOCAB
    completions: int = 8
    completion_len: int = 1024
    prompt_len: int = 64
    tied: bool = True  # Qwen2.5 0.5B and 1.5B tie the lm_head to the embeddings
    # Trainer steps at this shape (harness/trainer_setup.py: "grpo", "sft", "dpo").
    kinds: tuple[str, ...] = ("grpo", "sft", "dpo")


@dataclass(frozen=True)
class Suite:
    name: str
    device: str  # "cpu" or "cuda"
    dtype: str  # "float32" or "bfloat16"
    shapes: tuple[OpShape, ...]
    # The small shape at which every implementation is checked against the float64 reference.
    accuracy_shape: OpShape
    modes: tuple[str, ...] = MODES
    trainer_shapes: tuple[TrainerShape, ...] = ()
    # Largest completion length that fits this many GiB (GPU only; 0 = skip that search).
    memory_budget_gib: float = 0.0
    warmup_rounds: int = 1
    min_rounds: int = 3
    max_rounds: int = 3
    # Timed rounds are chosen to fill about this many seconds per case (within min_rounds..max_rounds).
    target_seconds: float = 1.0
    # Input sets the timed rounds rotate through (GPU: so L2 does not hold one set's activations between rounds).
    rotating_buffers: int = 1
    # Timed repetitions of the matmul ceiling (x4 on GPU; roofline.py): the lease's suites use fewer, same method.
    matmul_repeats: int = 5
    notes: tuple[str, ...] = field(default_factory=tuple)


def _qwen_trainer_shapes(
    completion_len: int, layers: int | None = None, kinds: tuple[str, ...] = ("grpo", "sft", "dpo")
) -> tuple[TrainerShape, ...]:
    return (
        TrainerShape("qwen2.5-0.5b", 896, 4864, layers or 24, 14, 2, completion_len=completion_len, kinds=kinds),
        TrainerShape("qwen2.5-1.5b", 1536, 8960, layers or 28, 12, 2, completion_len=completion_len, kinds=kinds),
    )


def _gpu_shapes(tokens: tuple[int, ...]) -> tuple[OpShape, ...]:
    return tuple(
        OpShape(f"qwen2.5-{size.lower()}-n{n}", n, h, seq_len=1024) for size, h in QWEN_HIDDEN.items() for n in tokens
    )


SUITES: dict[str, Suite] = {
    # Fresh 2-core machine: < 5 minutes for the whole run, imports included. Real vocabulary and Qwen2.5-0.5B's
    # hidden size; few tokens (fp32 on 2 cores: ~30 s of work per trainable-head call at N=512).
    "cpu": Suite(
        name="cpu",
        device="cpu",
        dtype="float32",
        shapes=(OpShape("qwen2.5-0.5b-n128", 128, 896, seq_len=64),),
        accuracy_shape=OpShape("acc-n64-h128-v8192", 64, 128, vocab=8192, seq_len=16),
        trainer_shapes=(TrainerShape("tiny-qwen2", 64, 128, 2, 4, 2, completions=4, completion_len=32, prompt_len=8),),
        warmup_rounds=0,  # the call that sizes the rounds is the warm-up
        min_rounds=3,
        max_rounds=3,
        notes=("CPU: fp32, perf_counter timing, peak extra memory from the profiler's allocation events",),
    ),
    # Larger CPU shape (about 10 minutes) for steadier CPU ratios between fastgrpo's torch path and trl's fallback.
    "cpu-large": Suite(
        name="cpu-large",
        device="cpu",
        dtype="float32",
        shapes=(OpShape("qwen2.5-0.5b-n512", 512, 896, seq_len=128),),
        accuracy_shape=OpShape("acc-n64-h128-v8192", 64, 128, vocab=8192, seq_len=16),
        warmup_rounds=0,
        min_rounds=3,
        max_rounds=5,
        target_seconds=20.0,
    ),
    # Seconds: the smoke test of the harness (tests/test_bench_harness.py).
    "cpu-tiny": Suite(
        name="cpu-tiny",
        device="cpu",
        dtype="float32",
        shapes=(OpShape("tiny-n64-h64-v4096", 64, 64, vocab=4096, seq_len=16),),
        accuracy_shape=OpShape("acc-n32-h32-v1024", 32, 32, vocab=1024, seq_len=8),
        trainer_shapes=(
            TrainerShape("tiny-qwen2", 32, 64, 1, 2, 1, vocab=1024, completions=2, completion_len=8, prompt_len=4),
        ),
        warmup_rounds=0,
        min_rounds=1,
        max_rounds=1,
    ),
    # The full comparison: 3 hidden sizes x N in {4096, 16384}, bf16, plus the trainer steps and the 24 GiB search.
    "gpu": Suite(
        name="gpu",
        device="cuda",
        dtype="bfloat16",
        shapes=_gpu_shapes((4096, 16384)),
        accuracy_shape=OpShape("acc-n256-h512-v151936", 256, 512, seq_len=64),
        trainer_shapes=_qwen_trainer_shapes(1024),
        memory_budget_gib=24.0,
        warmup_rounds=3,
        min_rounds=5,
        max_rounds=30,
        target_seconds=0.5,
        rotating_buffers=4,
    ),
    # A few minutes: one N, no trainer-length search (to check a device before the full run).
    "gpu-quick": Suite(
        name="gpu-quick",
        device="cuda",
        dtype="bfloat16",
        shapes=_gpu_shapes((4096,)),
        accuracy_shape=OpShape("acc-n256-h512-v151936", 256, 512, seq_len=64),
        trainer_shapes=_qwen_trainer_shapes(1024)[:1],
        warmup_rounds=2,
        min_rounds=5,
        max_rounds=15,
        target_seconds=0.25,
        rotating_buffers=4,
    ),
    # The GPU lease's op and trainer stages (benchmarks/fastgrpo_benchmarks/gpu/lease.py): the "gpu" grid with fewer
    # rounds, the smaller
    # N first (cases past the stage's budget are recorded as skipped), stock trl vs fastgrpo in the GRPO and SFT
    # trainer steps.
    "lease": Suite(
        name="lease",
        device="cuda",
        dtype="bfloat16",
        shapes=tuple(sorted(_gpu_shapes((4096, 16384)), key=lambda s: s.tokens)),
        accuracy_shape=OpShape("acc-n256-h512-v151936", 256, 512, seq_len=64),
        trainer_shapes=_qwen_trainer_shapes(1024, kinds=("grpo", "sft")),  # the lease's 8 minutes: no DPO step
        memory_budget_gib=24.0,
        warmup_rounds=1,
        min_rounds=3,
        max_rounds=10,
        target_seconds=0.1,
        rotating_buffers=3,
        matmul_repeats=2,
    ),
    # The lease's CPU dry run: the same stages at tiny sizes (fp32 on CPU, like the other CPU suites).
    "lease-dry-run": Suite(
        name="lease-dry-run",
        device="cpu",
        dtype="float32",
        shapes=(OpShape("dry-n32-h32-v1024", 32, 32, vocab=1024, seq_len=16),),
        accuracy_shape=OpShape("acc-n16-h16-v512", 16, 16, vocab=512, seq_len=8),
        trainer_shapes=(
            TrainerShape(
                "dry-qwen2-a",
                32,
                64,
                1,
                2,
                1,
                vocab=512,
                completions=2,
                completion_len=8,
                prompt_len=4,
                kinds=("grpo", "sft"),
            ),
            TrainerShape(
                "dry-qwen2-b",
                48,
                96,
                1,
                2,
                1,
                vocab=512,
                completions=2,
                completion_len=8,
                prompt_len=4,
                kinds=("grpo",),
            ),  # the SFT step's code path once is enough for the dry run
        ),  # fmt: skip
        warmup_rounds=0,
        min_rounds=1,
        max_rounds=1,
        matmul_repeats=2,
    ),
}


def default_suite_name(cuda_available: bool) -> str:
    return "gpu" if cuda_available else "cpu"


def resolve_suite(name: str | None, cuda_available: bool) -> Suite:
    """The suite named by ``name`` (or $FASTGRPO_BENCH_SUITE, or the device's default); a ValueError if unknown."""
    name = name or env.get(SUITE_ENV) or "auto"
    if name == "auto":
        name = default_suite_name(cuda_available)
    if name not in SUITES:
        raise ValueError(f"unknown benchmark suite {name!r}; choose one of: auto, {', '.join(SUITES)}")
    suite = SUITES[name]
    if suite.device == "cuda" and not cuda_available:
        raise ValueError(f"suite {name!r} needs a CUDA device and none is available; use 'cpu' or 'cpu-tiny'")
    return suite


def default_results_dir(suite: Suite) -> Path:
    """Where a run writes unless ``--out`` names a folder: ``benchmarks/results/local/<suite>`` in a source checkout
    (git-ignored: the committed reference results under ``benchmarks/results/<device>-<date>/`` are written only when
    ``--out`` names them), ``./fastgrpo-bench-results/<suite>`` elsewhere."""
    root = Path(__file__).resolve().parents[3]
    if (root / "pyproject.toml").is_file() and (root / "benchmarks").is_dir():
        return root / "benchmarks" / "results" / "local" / suite.name
    return Path.cwd() / "fastgrpo-bench-results" / suite.name
