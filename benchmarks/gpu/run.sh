#!/usr/bin/env bash
# GPU work in ONE device-tool command each (under its 10-minute limit). From a session with a GPU:
#   1. here:         bash benchmarks/fetch_gpu_wheels.sh
#   2. device tool:  run(command="FASTGRPO_BENCH_COMMIT=<short sha> bash benchmarks/gpu_run.sh <what>",
#                        carry=[".whl"], timeout_s=600)   (the tree travels without .git: name the commit)
#   3. here:         mkdir -p benchmarks/results/<what> && tar xzf <files_at>/results.tgz -C benchmarks/results/<what>
#                    then commit it (results carry device, driver, versions, date).
# <what>:
#   tests      the GPU tests (pytest -m gpu: real sizes, pointer and TMA loads, every autotuning candidate)
#   tune       python -m benchmarks.tune: time every candidate at the target shapes; writes sm90.json, which goes to
#              kernels/tuned/ (the shipped table) -- commit it, then benchmark with it
#   gpu-quick  the benchmark suite at N=4096 (a few minutes); gpu: the full issue-5 grid
# then any options of `python -m benchmarks` / `python -m benchmarks.tune` (e.g. `-k trainer`, `--no-trainer`).
# Benchmark cases that would start after FASTGRPO_BENCH_TIME_BUDGET_S seconds are recorded as skipped, so results
# are written even if the grid does not fit; `timeout` stops a hung run before the tool's limit.
set -uo pipefail
SUITE="${1:-gpu}"
shift || true
OUT="${OUT:-/tmp/fastgrpo-bench-out}"
RES=/tmp/fastgrpo-bench-results  # not under $OUT: the tool brings back at most 8 files, so they travel as one tgz
mkdir -p "$OUT" "$RES"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1 TOKENIZERS_PARALLELISM=false
export FASTGRPO_BENCH_TIME_BUDGET_S="${FASTGRPO_BENCH_TIME_BUDGET_S:-480}"
unset TRITON_INTERPRET
SITE=/tmp/site
if compgen -G ".whl/*.whl" > /dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" .whl/*.whl \
    || { echo "wheel install failed"; exit 1; }
else
  echo "no .whl/ carried: trl, liger-kernel and cut-cross-entropy rows will be skipped (run fetch_gpu_wheels.sh)"
  mkdir -p "$SITE"
fi
# The source tree as installed packages (pyproject maps kernels/ -> fastgrpo_kernels, benchmarks/ -> fastgrpo_benchmarks)
ln -sfn "$PWD/fastgrpo" "$SITE/fastgrpo"
ln -sfn "$PWD/kernels" "$SITE/fastgrpo_kernels"
ln -sfn "$PWD/benchmarks" "$SITE/fastgrpo_benchmarks"
export PYTHONPATH="$SITE:$PWD${PYTHONPATH:+:$PYTHONPATH}"
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm --format=csv | tee "$OUT/nvidia-smi.txt"
python3 -c "import torch, triton, trl; print('torch', torch.__version__, 'triton', triton.__version__, 'trl', trl.__version__)"
case "$SUITE" in
  tests)
    timeout 570 python3 -m pytest -q -m gpu -p no:cacheprovider --junitxml="$RES/junit.xml" tests/test_gpu_*.py "$@" 2>&1 \
      | tee "$OUT/log.txt"
    rc=${PIPESTATUS[0]} ;;
  tune)
    timeout 570 python3 -m benchmarks.tune --out "$RES" --budget-s "${FASTGRPO_TUNE_BUDGET_S:-420}" "$@" 2>&1 \
      | tee "$OUT/log.txt"
    rc=${PIPESTATUS[0]} ;;
  *)
    timeout 570 python3 -m benchmarks --suite "$SUITE" --out "$RES" "$@" 2>&1 | tee "$OUT/log.txt"
    rc=${PIPESTATUS[0]} ;;
esac
if [ ! -f "$RES/results.json" ] && [ -f "$RES/rows.partial.jsonl" ]; then
  echo "run stopped early (status $rc): writing results from the rows it finished"
  python3 -m benchmarks.recover "$RES" --suite "$SUITE" 2>&1 | tee -a "$OUT/log.txt"
fi
if [ -f "$RES/results.json" ]; then
  python3 -m benchmarks.targets "$RES/results.json" > "$RES/targets.md" 2>&1 && cp "$RES/targets.md" "$OUT/"
fi
tar czf "$OUT/results.tgz" -C "$RES" .
cp "$RES/table.md" "$OUT/table.md" 2>/dev/null || true
cp "$RES/tune.md" "$RES"/sm*.json "$OUT/" 2>/dev/null || true
[ -f "$RES/targets.md" ] && head -3 "$RES/targets.md"
echo "exit status $rc; results in \$OUT/results.tgz (extract into benchmarks/results/$SUITE/)"
exit "$rc"
