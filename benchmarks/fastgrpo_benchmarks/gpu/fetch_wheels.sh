#!/usr/bin/env bash
# Run HERE (not on the device), from the repository root, before `benchmarks/fastgrpo_benchmarks/gpu/run.sh` goes to the device tool.
# Downloads the pure-Python wheels the device image lacks (trl and its missing deps, the peers) into .whl/
# (git-ignored), for Python 3.12 on x86-64. About 3 MB in all; the device tool carries them with carry=[".whl"].
set -euo pipefail
cd "$(git rev-parse --show-toplevel 2>/dev/null || pwd)"
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || grep -qx '/.whl/' .gitignore || echo /.whl/ >> .git/info/exclude
mkdir -p .whl
WHEELS=(
  "trl==${TRL_VERSION:-1.16.0}"           # the trainer and the chunked head (the baseline)
  "liger-kernel==${LIGER_VERSION:-0.8.5}"  # peer
  "cut-cross-entropy==${CCE_VERSION:-25.1.1}"  # peer
  "datasets==${DATASETS_VERSION:-5.2.0}" "dill==0.4.1" "multiprocess==0.70.19"  # trl's deps missing on the image
)
python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  -d .whl "${WHEELS[@]}"
ls -la .whl
du -sh .whl
