# The main test suite: CPU, Triton kernels under the interpreter (set by tests/conftest.py). Tests marked `stage`
# run in their own stage script instead.
python tests/ci/versions.py  # what this stage tests with, one line (run_stages.sh runs stages from the root)
python -m pytest -q -m "not stage"
