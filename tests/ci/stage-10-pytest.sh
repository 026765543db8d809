# The main test suite: CPU, Triton kernels under the interpreter (set by tests/conftest.py). Tests marked `stage`
# run in their own stage script instead.
python -m pytest -q -m "not stage"
