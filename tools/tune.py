"""Measure every autotuning candidate at the target shapes and write the tuned table the library ships.

    python tools/tune.py [--out DIR] [--hidden 896 1536 3584] [--tokens 4096 16384] [--budget-s 480]

For each (H, N) and kernel family ("fwd", "fwd_softmax_w", "bwd") it times the resolver's candidates on random
bf16 inputs with V = 151936 (``triton.testing.do_bench``, median), checks each candidate's outputs against the
default config's (a candidate that computes something else is an error, not a tuning result), and keeps the
fastest. Then, per shape, it times a frozen head's forward + backward through the public API with the
softmax@W identity and with the recompute backward (using the configs just chosen), and records the faster route.

Writes ``<out>/<arch>.json`` (the architecture family, e.g. ``sm90.json``: copy it to
``kernels/fastgrpo_kernels/tuned/`` and commit
it; the library then uses it on that family), ``<out>/tune.md`` (the table) and ``<out>/tune_log.jsonl`` (every
timing). Shapes that would start after ``--budget-s`` are skipped, and the table holds what was finished. Needs a
CUDA device.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from fastgrpo_benchmarks.harness.environment import describe
from fastgrpo_benchmarks.harness.suites import QWEN_HIDDEN, QWEN_VOCAB

RTOL = {"fwd": 1e-4, "fwd_softmax_w": 1e-3, "bwd": 2e-2}  # against the default config (bf16 inputs)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    if not torch.isfinite(a).all():
        return float("inf")
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-30)).item()


DEVICE = torch.device("cuda")  # --device cpu: the harness's own test, under TRITON_INTERPRET=1 at tiny shapes


def _inputs(n: int, h: int, vocab: int, seed: int):
    gen = torch.Generator(device=DEVICE).manual_seed(seed)
    x = torch.randn(n, h, device=DEVICE, generator=gen).to(torch.bfloat16)
    w = (torch.randn(vocab, h, device=DEVICE, generator=gen) * 0.02).to(torch.bfloat16)
    t = torch.randint(0, vocab, (n,), device=DEVICE, generator=gen)
    g = torch.randn(n, device=DEVICE, generator=gen)
    return x, w, t, g


def _runner(kind: str, x, w, t, g):
    """``run(cfg) -> tensors to compare`` for one kernel family, on fixed inputs."""
    from fastgrpo import launch_config, triton_backend
    from fastgrpo.options import LogProbOptions

    bf16 = torch.bfloat16
    opts = LogProbOptions(return_entropy=True)
    if kind in ("fwd", "fwd_softmax_w"):
        softmax_w = kind == "fwd_softmax_w"

        def run(cfg):
            logp, ent, _, sw, *_ = triton_backend._forward(cfg, x, w, None, t, opts, bf16, softmax_w)
            return (logp, ent, sw) if softmax_w else (logp, ent)

        return run
    fwd_cfg = launch_config.current().resolve("fwd", "bf16", device=x.device, n=x.shape[0], h=x.shape[1])
    _, ent, lse, *_ = triton_backend._forward(fwd_cfg, x, w, None, t, opts, bf16, False)

    def run(cfg):  # trainable head: dX and dW
        gx, gw, _ = triton_backend._backward(
            cfg, x, w, None, t, lse, ent, g, None, opts, bf16, (True, True, False), (bf16, bf16)
        )
        return gx, gw

    return run


def tune_kind(kind: str, n: int, h: int, vocab: int, log) -> dict:
    from fastgrpo import launch_config, tuning

    x, w, t, g = _inputs(n, h, vocab, seed=n + h)
    run = _runner(kind, x, w, t, g)
    resolver = launch_config.current()
    fixed = resolver.resolve(kind, "bf16", device=DEVICE, n=n, h=h, vocab=vocab)
    pool = list(dict.fromkeys([fixed, *resolver.candidates(kind, "bf16")]))  # the fixed config first
    reference = run(pool[0])
    timings = []
    for cfg in pool:
        try:
            out = run(cfg)
            errs = [_rel(a, b) for a, b in zip(out, reference)]
            if max(errs) > RTOL[kind]:
                raise AssertionError(f"{cfg.label()} differs from the default config: rel err {max(errs):.2e}")
            ms = tuning.measure_ms(lambda cfg=cfg: run(cfg), DEVICE)
            row = {"kind": kind, "n": n, "h": h, "config": cfg.label(), "ms": ms, "max_rel_err": max(errs)}
        except AssertionError:
            raise
        except Exception as err:  # does not fit this device: recorded, not chosen
            row = {"kind": kind, "n": n, "h": h, "config": cfg.label(), "error": f"{type(err).__name__}: {err}"[:300]}
        log(row)
        if "ms" in row:
            timings.append((row["ms"], cfg))
    best_ms, best = min(timings, key=lambda r: r[0])
    default_ms = next(ms for ms, cfg in timings if cfg == pool[0])
    del x, w, t, g, reference
    torch.cuda.empty_cache()
    return {
        "kind": kind,
        "dtype": "bf16",
        "n": n,
        "h": h,
        "config": best.to_dict(),
        "label": best.label(),
        "ms": round(best_ms, 4),
        "default_ms": round(default_ms, 4),
    }


def frozen_route(n: int, h: int, vocab: int, log) -> dict:
    """A frozen head's forward + d/dhidden through the public API: softmax@W identity vs recompute backward."""
    import fastgrpo
    from fastgrpo import launch_config, tuning

    x, w, t, g = _inputs(n, h, vocab, seed=7 * n + h)
    x.requires_grad_()

    def step():
        out = fastgrpo.linear_logprobs(x, w, t, backend="triton")
        return torch.autograd.grad((out.logp * g).sum(), [x])[0]

    ms = {}
    grads = {}
    for identity in (True, False):
        with launch_config.override(kinds=("frozen_route",), softmax_w_identity=identity):
            grads[identity] = step()
            ms[identity] = tuning.measure_ms(step, DEVICE)
    err = _rel(grads[True], grads[False])
    if err > 2e-2:
        raise AssertionError(f"frozen-head routes disagree at n={n} h={h}: rel err {err:.2e}")
    row = {
        "kind": "frozen_route",
        "dtype": "bf16",
        "n": n,
        "h": h,
        "identity": ms[True] <= ms[False],
        "identity_ms": round(ms[True], 4),
        "recompute_ms": round(ms[False], 4),
    }
    log(row)
    return row


def write_table(out: Path, arch: str, entries: list[dict], info: dict) -> Path:
    path = out / f"{arch}.json"
    path.write_text(
        json.dumps(
            {
                "arch": arch,
                "device": info.get("device_name"),
                "date_utc": info["date_utc"],
                "versions": info["versions"],
                "git_commit": info["git_commit"],
                "entries": entries,
            },
            indent=1,
        )
    )
    lines = ["| kind | N | H | chosen | ms | default ms | speed-up |", "|---|---|---|---|---|---|---|"]
    for e in entries:
        if e["kind"] == "frozen_route":
            lines.append(
                f"| frozen route | {e['n']} | {e['h']} | {'identity' if e['identity'] else 'recompute'} "
                f"| {min(e['identity_ms'], e['recompute_ms']):.3f} | {e['identity_ms']:.3f} (identity) | "
                f"{e['identity_ms'] / min(e['identity_ms'], e['recompute_ms']):.2f}x |"
            )
        else:
            lines.append(
                f"| {e['kind']} | {e['n']} | {e['h']} | {e['label']} | {e['ms']:.3f} | {e['default_ms']:.3f} "
                f"| {e['default_ms'] / e['ms']:.2f}x |"
            )
    (out / "tune.md").write_text(
        f"Tuned on {info.get('device_name')} ({arch}), {info['date_utc']}, torch "
        f"{info['versions']['torch']}, triton {info['versions']['triton']}\n\n" + "\n".join(lines) + "\n"
    )
    return path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/tune"))
    ap.add_argument("--hidden", type=int, nargs="+", default=list(QWEN_HIDDEN.values()))
    ap.add_argument("--tokens", type=int, nargs="+", default=[4096, 16384])
    ap.add_argument("--kinds", nargs="+", default=["fwd", "fwd_softmax_w", "bwd"])
    ap.add_argument("--vocab", type=int, default=QWEN_VOCAB)
    ap.add_argument("--budget-s", type=float, default=480.0)
    ap.add_argument("--device", default="cuda", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    global DEVICE
    DEVICE = torch.device(args.device)
    if DEVICE.type == "cuda" and not torch.cuda.is_available():
        print("tools/tune.py needs a CUDA device", file=sys.stderr)
        return 2
    from fastgrpo import launch_config

    arch = launch_config.current().arch(DEVICE) or "cpu-interpreter"
    args.out.mkdir(parents=True, exist_ok=True)
    info = describe(DEVICE.type)
    log_file = (args.out / "tune_log.jsonl").open("a")

    def log(row: dict) -> None:
        log_file.write(json.dumps(row) + "\n")
        log_file.flush()
        print(json.dumps(row), flush=True)

    start = time.monotonic()
    entries: list[dict] = []
    shapes = [(h, n) for n in args.tokens for h in args.hidden]  # every H at the smaller N first
    for h, n in shapes:
        if time.monotonic() - start > args.budget_s:
            log({"skipped": f"n={n} h={h}", "reason": f"past the {args.budget_s:.0f} s budget"})
            continue
        for kind in args.kinds:
            entries.append(tune_kind(kind, n, h, args.vocab, log))
        # The route timing uses the configs just chosen: a resolver reading the table written so far.
        write_table(args.out, arch, entries, info)
        if "fwd_softmax_w" in args.kinds:
            with launch_config.use(launch_config.LaunchConfigResolver(tuned_dir=args.out)):
                entries.append(frozen_route(n, h, args.vocab, log))
        write_table(args.out, arch, entries, info)
    print((args.out / "tune.md").read_text())
    print(
        f"{time.monotonic() - start:.0f} s; copy {args.out / (arch + '.json')} to kernels/fastgrpo_kernels/tuned/ "
        "to ship it (the installed package reads it as fastgrpo_kernels/tuned/)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
