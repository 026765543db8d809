#!/usr/bin/env bash
# The trl-integration tests under every verified trl release other than the main venv's (1.16.0), in ONE venv built
# from scratch: torch is installed once, then each trl (with the transformers it is tested with) is installed over the
# previous one and the seam tests run. Releases 1.11.0 and 1.13.0 have the same fingerprints as 1.12.0 (see
# fastgrpo/integration/fingerprints.py) and are not run.
#
#   bash tests/run_trl_era_tests.sh                  # every era below
#   FASTGRPO_TRL_ERAS="1.14.2:5.24.0" bash tests/run_trl_era_tests.sh -k parity   # one era, extra pytest arguments
#
# Environment:
#   FASTGRPO_TRL_ERAS      space-separated trl:transformers pairs (default: ERAS below)
#   FASTGRPO_TRL_ERA_VENV  the venv (default ${TMPDIR:-/tmp}/fastgrpo-trl-eras-venv; reused when its torch matches)
#   PYTHON                 interpreter that creates the venv (default python3)
set -euo pipefail

ERAS="${FASTGRPO_TRL_ERAS:-1.10.0:5.24.0 1.12.0:5.24.0 1.14.2:5.24.0 1.15.0:5.24.0}"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${FASTGRPO_TRL_ERA_VENV:-${TMPDIR:-/tmp}/fastgrpo-trl-eras-venv}"
PY="${PYTHON:-python3}"
TORCH_VERSION="2.13.0"
# The seams that differ between eras: log-prob method and fused head (parity: the grpo / dapo / vespo losses, the
# off-policy mask with eval, LoRA, trl's loss math), loss entry point and wiring, patching, the adapter's own tests,
# and (trl >= 1.15) the fused head behind SFT / DPO / KTO / RLOO / async GRPO.
# test_patch.py's two subprocess tests do not depend on the trl release (the main stage runs them) and are left out.
TESTS=(
  tests/test_trainer_trl_adapter.py
  tests/test_trainer_loss_wiring.py
  tests/test_trainer_config.py
  tests/test_patch.py
  "tests/test_trainer_parity.py::test_parity_fused_loss[grpo_beta]"
  "tests/test_trainer_parity.py::test_parity_fused_loss[dapo_ga2_iters2]"
  "tests/test_trainer_parity.py::test_parity_fused_loss[vespo_iters2]"
  "tests/test_trainer_parity.py::test_parity_fused_loss[lora_beta]"
  "tests/test_trainer_parity.py::test_parity_fused_loss[eval_off_policy_mask_sequence_no_bias_correction]"
  "tests/test_trainer_parity.py::test_parity_trl_loss_fallback[dapo_ga2_iters2]"
  # The head seam of every other trainer (trl >= 1.15; skipped on older releases): fastgrpo's add_fused_lm_head
  # against trl's, and SFT / DPO / KTO / RLOO parity with stock trl.
  tests/test_trl_head_seam.py
  tests/test_trl_trainers_parity.py
)

if [ -x "$VENV/bin/python" ] && "$VENV/bin/python" -c "import torch; assert torch.__version__.startswith('$TORCH_VERSION')" 2>/dev/null; then
  echo "== reusing $VENV"
else
  echo "== creating $VENV"
  rm -rf "$VENV"
  "$PY" -m venv "$VENV"
  # torch first and pinned: the local CPU wheel. An unpinned torch would pull multi-GB CUDA wheels.
  "$VENV/bin/pip" install --quiet --no-compile "torch==${TORCH_VERSION}"
  # requests: trl < 1.16 imports it, and huggingface_hub 1.x no longer brings it. aiohttp: trl's async GRPO
  # module imports it (its head call is tested on every release that has it).
  "$VENV/bin/pip" install --quiet --no-compile "torch==${TORCH_VERSION}" "triton==3.9.0" "accelerate==1.15.0" \
    "peft>=0.15" "pytest>=8" "pytest-benchmark>=4.0" requests aiohttp
fi
# Always (re)install this checkout: a reused venv may point at another clone.
"$VENV/bin/pip" install --quiet --no-compile --no-deps -e "$ROOT"

cd "$ROOT"
failed=()
for era in $ERAS; do
  trl_version="${era%%:*}"
  transformers_version="${era#*:}"
  start=$(date +%s)
  "$VENV/bin/pip" install --quiet --no-compile "torch==${TORCH_VERSION}" "trl==${trl_version}" \
    "transformers==${transformers_version}"
  "$VENV/bin/python" -c "import torch, trl, transformers; print('== era: torch', torch.__version__, '| trl', trl.__version__, '| transformers', transformers.__version__)"
  "$VENV/bin/python" -m fastgrpo.integration.fingerprints
  if "$VENV/bin/python" -m pytest -q -p no:cacheprovider -m "not gpu" "${TESTS[@]}" \
    --deselect tests/test_patch.py::test_importing_fastgrpo_neither_imports_nor_patches_trl \
    --deselect tests/test_patch.py::test_unmodified_script_patched_after_importing_grpo_trainer "$@"; then
    echo "== trl $trl_version: ok in $(( $(date +%s) - start ))s"
  else
    echo "== trl $trl_version: FAILED in $(( $(date +%s) - start ))s"
    failed+=("$trl_version")
  fi
done
if [ "${#failed[@]}" -gt 0 ]; then
  echo "== trl eras failed: ${failed[*]}" >&2
  exit 1
fi
