#!/usr/bin/env bash
# Run the trl-integration tests under a trl release from the 1.10-1.14 era (full-logits log-prob path), in a venv
# built from scratch. CI calls this after the main test run (which covers trl 1.15/1.16).
#
#   bash tests/run_trl_era_tests.sh            # trl 1.14.2 (override with FASTGRPO_TRL_ERA_VERSION=1.12.0 ...)
#
# Environment:
#   FASTGRPO_TRL_ERA_VERSION  trl version to test (default 1.14.2; must be >=1.10,<1.15)
#   FASTGRPO_TRL_ERA_VENV     where the venv lives (default ${TMPDIR:-/tmp}/fastgrpo-trl-<version>-venv); an existing
#                             venv with that trl is reused
#   PYTHON                    interpreter that creates the venv (default python3)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TRL_VERSION="${FASTGRPO_TRL_ERA_VERSION:-1.14.2}"
VENV="${FASTGRPO_TRL_ERA_VENV:-${TMPDIR:-/tmp}/fastgrpo-trl-${TRL_VERSION}-venv}"
PY="${PYTHON:-python3}"
TORCH_VERSION="2.13.0"

if [ -x "$VENV/bin/python" ] && "$VENV/bin/python" - "$TRL_VERSION" <<'EOF' 2>/dev/null; then
import sys, importlib.metadata as md
sys.exit(0 if md.version("trl") == sys.argv[1] and md.version("torch").startswith("2.13.0") else 1)
EOF
  echo "== reusing $VENV (trl $TRL_VERSION)"
else
  echo "== creating $VENV with trl $TRL_VERSION"
  rm -rf "$VENV"
  "$PY" -m venv "$VENV"
  # torch first and pinned: the local CPU wheel. An unpinned torch would pull multi-GB CUDA wheels.
  "$VENV/bin/pip" install --quiet --no-compile "torch==${TORCH_VERSION}"
  "$VENV/bin/pip" install --quiet --no-compile "torch==${TORCH_VERSION}" "triton==3.9.0" "trl==${TRL_VERSION}" "peft>=0.15" \
    "pytest>=8" "pytest-benchmark>=4.0"
fi
# Always (re)install this checkout: a reused venv may point at another clone.
"$VENV/bin/pip" install --quiet --no-compile --no-deps -e "$ROOT"
"$VENV/bin/python" -c "import torch, trl, transformers; print('== torch', torch.__version__, '| trl', trl.__version__, '| transformers', transformers.__version__)"

cd "$ROOT"
"$VENV/bin/python" -m pytest -q -p no:cacheprovider --durations=10 \
  tests/test_trainer_parity.py tests/test_trainer_loss_wiring.py tests/test_trainer_config.py tests/test_patch.py \
  tests/test_trainer_memory.py "$@"
