# The main test suite: CPU, Triton kernels under the interpreter (set by tests/conftest.py).
python -m pytest -q
