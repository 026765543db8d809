#!/usr/bin/env bash
# The CI test run, in stages: every `tests/ci/stage-*.sh` in name order (or only the stages named as arguments,
# e.g. `bash tests/ci/run_stages.sh pytest trl-eras`). Each stage's wall time is printed when it ends and again in a
# summary, so every change can see what it costs. A failing stage does not stop the later ones; the run fails at
# the end if any stage failed.
set -uo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$HERE/../.."

stages=()
if [ "$#" -gt 0 ]; then
  for name in "$@"; do
    f="$(ls "$HERE"/stage-*-"$name".sh 2>/dev/null | head -n 1)"
    [ -n "$f" ] || { echo "no stage named $name in $HERE" >&2; exit 2; }
    stages+=("$f")
  done
else
  for f in "$HERE"/stage-*.sh; do stages+=("$f"); done
fi

summary=()
failed=0
total_start=$(date +%s)
for f in "${stages[@]}"; do
  name="$(basename "$f" .sh)"
  echo "===== stage $name: start $(date -u +%H:%M:%S)"
  start=$(date +%s)
  bash -euo pipefail "$f"
  rc=$?
  secs=$(( $(date +%s) - start ))
  status=$([ "$rc" -eq 0 ] && echo ok || echo "FAILED (rc=$rc)")
  [ "$rc" -eq 0 ] || failed=1
  echo "===== stage $name: $status in ${secs}s"
  summary+=("$(printf '%-28s %6ss  %s' "$name" "$secs" "$status")")
done
echo "===== stage wall times"
printf '%s\n' "${summary[@]}"
echo "total: $(( $(date +%s) - total_start ))s"
exit "$failed"
