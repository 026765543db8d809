#!/usr/bin/env bash
# GPU work in ONE device-tool command (10 minutes at most, 8 files back from $OUT). From a session with a GPU:
#   1. here:         bash benchmarks/fastgrpo_benchmarks/gpu/fetch_wheels.sh      (trl and the peers the image lacks, into .whl/)
#   2. device tool:  run(command="FASTGRPO_BENCH_COMMIT=<short sha> bash benchmarks/fastgrpo_benchmarks/gpu/run.sh lease",
#                        carry=[".whl"], timeout_s=560)         (the tree travels without .git: name the commit)
#   3. here:         python -m fastgrpo_benchmarks.targets <files_at>   then copy the stage files to
#                    benchmarks/results/<device>-<date>/ and regenerate README's section (benchmarks/README.md).
# <what>:
#   lease      the one-command lease (lease.py: provenance, correctness, ops, trainer, tune), < 8 minutes on an
#              H100/H200, one JSON file per stage under $OUT as soon as the stage ends, plus lease.log
#   tests      the GPU tests (pytest -m gpu); tune: tools/tune.py; anything else: a suite of `python -m benchmarks`
# Options (lease):
#   --dry-run             CPU, Triton interpreter, tiny sizes, same stages and files (CI: stage-60-gpu-lease-dryrun)
#   --wheels DIR          carried wheels to install into the target folder (default .whl)
#   --site DIR            that target folder (default /tmp/site)
#   --work DIR            scratch for full results (default /tmp/fastgrpo-lease-work; not brought back)
#   --triton-cache DIR    a carried Triton cache (ignored folder named in carry): TRITON_CACHE_DIR points there and
#                         provenance records its hits and misses; keep carrying it only if it hit
#   --save-triton-cache   also write the cache as $OUT/triton-cache.tgz (one more file) to carry next time
set -uo pipefail
WHAT="${1:-lease}"
shift || true
DRY=0 WHEELS=.whl SITE=/tmp/site WORK=/tmp/fastgrpo-lease-work CACHE="" SAVE_CACHE=0 PASS=()
while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) DRY=1 ;;
    --wheels) WHEELS="$2"; shift ;;
    --site) SITE="$2"; shift ;;
    --work) WORK="$2"; shift ;;
    --triton-cache) CACHE="$2"; shift ;;
    --save-triton-cache) SAVE_CACHE=1 ;;
    *) PASS+=("$1") ;;
  esac
  shift
done
OUT="${OUT:-/tmp/fastgrpo-lease-out}"
mkdir -p "$OUT" "$SITE" "$WORK"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1 TOKENIZERS_PARALLELISM=false
if [ "$DRY" = 1 ]; then export TRITON_INTERPRET=1; else unset TRITON_INTERPRET; fi
# Triton's disk cache: a carried one, else a fresh folder (so hits and misses mean this lease's compiles).
if [ -n "$CACHE" ]; then
  mkdir -p "$CACHE"; export TRITON_CACHE_DIR="$(cd "$CACHE" && pwd)"; CARRIED=1
else
  export TRITON_CACHE_DIR="$WORK/triton-cache"; rm -rf "$TRITON_CACHE_DIR"; mkdir -p "$TRITON_CACHE_DIR"; CARRIED=0
fi
# Carried wheels (trl, peers): the device image has torch and Triton but not these.
if compgen -G "$WHEELS/*.whl" > /dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" "$WHEELS"/*.whl \
    || { echo "wheel install failed"; exit 1; }
else
  echo "no wheels in $WHEELS: trl, liger-kernel and cut-cross-entropy rows will be skipped (run fetch_wheels.sh)"
fi
# The source tree's three packages (fastgrpo/, kernels/fastgrpo_kernels/, benchmarks/fastgrpo_benchmarks/) ahead of
# the wheels on the path: the commit's code is what runs. Only the package folders are linked: the checkout root is
# not put on the path (its kernels/, tools/, tests/ and benchmarks/ folders have no __init__.py and shadow nothing).
LINKS="$WORK/src"
mkdir -p "$LINKS"
ln -sfn "$PWD/fastgrpo" "$LINKS/fastgrpo"
ln -sfn "$PWD/kernels/fastgrpo_kernels" "$LINKS/fastgrpo_kernels"
ln -sfn "$PWD/benchmarks/fastgrpo_benchmarks" "$LINKS/fastgrpo_benchmarks"
export PYTHONPATH="$LINKS:$SITE${PYTHONPATH:+:$PYTHONPATH}"
case "$WHAT" in
  lease)
    wheels_json="$(cd "$WHEELS" 2>/dev/null && ls -1 ./*.whl 2>/dev/null | sed 's#^\./##' | python3 -c 'import json,sys; print(json.dumps(sys.stdin.read().split()))')"
    printf '{"wheels": %s, "wheels_dir": "%s", "site_dir": "%s", "triton_cache_carried": %s}\n' \
      "${wheels_json:-[]}" "$WHEELS" "$SITE" "$([ "$CARRIED" = 1 ] && echo true || echo false)" > "$WORK/setup.json"
    args=(--out "$OUT" --work "$WORK")
    [ "$DRY" = 1 ] && args+=(--dry-run)
    limit=570  # the device tool's 10 minutes, less the setup; the CPU dry run's stage budgets add up to more
    [ "$DRY" = 1 ] && limit=900
    timeout "$limit" python3 -m fastgrpo_benchmarks.gpu.lease "${args[@]}" "${PASS[@]}" 2>&1 | tee "$OUT/lease.log"
    rc=${PIPESTATUS[0]}
    if [ "$SAVE_CACHE" = 1 ]; then tar czf "$OUT/triton-cache.tgz" -C "$TRITON_CACHE_DIR" .; fi
    ;;
  tests)
    timeout 570 python3 -m pytest -q -m gpu -p no:cacheprovider tests/test_gpu_*.py "${PASS[@]}" 2>&1 | tee "$OUT/log.txt"
    rc=${PIPESTATUS[0]} ;;
  tune)
    timeout 570 python3 tools/tune.py --out "$WORK/tune" "${PASS[@]}" 2>&1 | tee "$OUT/log.txt"
    rc=${PIPESTATUS[0]}
    cp "$WORK/tune/tune.md" "$WORK"/tune/sm*.json "$OUT/" 2>/dev/null || true ;;
  *)
    timeout 570 python3 -m benchmarks --suite "$WHAT" --out "$WORK/$WHAT" "${PASS[@]}" 2>&1 | tee "$OUT/log.txt"
    rc=${PIPESTATUS[0]}
    tar czf "$OUT/results.tgz" -C "$WORK/$WHAT" . ;;
esac
echo "exit status $rc; files in \$OUT: $(ls "$OUT" | tr '\n' ' ')"
exit "$rc"
