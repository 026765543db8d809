# The compile gate, no GPU needed (tools/compile_report.py --ci --check): every kernel family x operand precision x
# load style, with the launch table's real parameters, compiled for
#   - every target (sm_75 ... sm_120, AMD gfx90a / gfx942 / gfx950) on this environment's triton (the newest), and
#   - sm_80 + sm_90 + gfx942 on triton 3.6.0 (torch 2.10 / 2.11's pin, the floor) in a venv of its own, which borrows
#     this environment's torch through a .pth file (compile_report needs torch only to import fastgrpo);
# then the tests marked `stage` in the compile test files (autotuning candidates, GRPO loss flag combinations).
# Measured 2026-12-01 on 2 cores: 202 s wall (225 s CPU, load average ~2.5 from other jobs) with the triton 3.6
# venv already built (building it: ~20 s more); 458 s when the machine was shared more (load average ~8).
# The AMD targets add 96 kernels (69 on triton 3.9, 27 on 3.6, with the *_outputs families): measured 2026-12-03 with
# a fresh Triton cache before those families, 68 kernels took 85-100 s of CPU (1.2-1.5 s each; 351 s wall at load
# average ~16): about 130 s of CPU, ~65 s wall on 2 idle cores, now (estimated, not re-measured).
# Any spill, shared memory (LDS) over a target's limit, missing MMA / MFMA or compile error fails the stage.
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$HERE/../.."
cd "$ROOT"
unset TRITON_INTERPRET
# No TRITON_DEFAULT_FP_FUSION: every launch and compile_report pass enable_fp_fusion (fastgrpo_kernels.configs.FP_FUSION),
# so triton 3.9's warning about that default would mean a launch left it to Triton.
unset TRITON_DEFAULT_FP_FUSION TRITON_FORCE_DISABLE_FP_FUSION
JOBS="$(nproc)"
python tests/ci/versions.py  # what this stage tests with, one line

echo "== triton $(python -c 'import triton; print(triton.__version__)'): the full matrix"
python tools/compile_report.py --ci --check --jobs "$JOBS"

VENV="${TMPDIR:-/tmp}/fastgrpo-triton-3.6.0-venv"
if ! "$VENV/bin/python" -c "import triton, numpy; assert triton.__version__ == '3.6.0'" 2>/dev/null; then
  rm -rf "$VENV"
  python -m venv "$VENV"
  # numpy < 2.4: triton 3.6's interpreter calls int() on 1-element arrays, which numpy 2.4 rejects.
  "$VENV/bin/pip" install --quiet --no-compile "triton==3.6.0" "numpy<2.4"
fi
# This environment's site-packages after the venv's own, .pth files included (an editable install of this checkout
# is one): torch and fastgrpo from here, triton 3.6 and numpy from the venv.
MAIN_SITE="$(python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
VENV_SITE="$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
echo "import site; site.addsitedir('$MAIN_SITE')" > "$VENV_SITE/zz-fastgrpo-main-env.pth"
"$VENV/bin/python" tests/ci/versions.py "triton 3.6.0 venv"
echo "== triton $("$VENV/bin/python" -c 'import triton; print(triton.__version__)'): sm_80 + sm_90 + gfx942"
"$VENV/bin/python" tools/compile_report.py --ci --check --jobs "$JOBS"
# triton 3.6's interpreter with the pinned numpy: the kernel-helper and GRPO loss tests (about 20 s).
"$VENV/bin/python" -m pytest -q -p no:cacheprovider tests/test_kernel_helpers.py tests/test_grpo_loss.py

python -m pytest -q -m stage tests/test_kernel_compile.py tests/test_grpo_kernel_compile.py
