# The trl-integration seam tests under every other verified trl release (1.10.0, 1.12.0, 1.14.2, 1.15.0; the main
# stage covers 1.16.0), swapping trl inside one venv built from scratch, then the checkout-layout tests there, under a
# transformers without Hugging Face's kernels. The exact versions it pins, and why: tests/run_trl_era_tests.sh.
python tests/ci/versions.py "main venv; this stage tests in its own, printed per era"
bash tests/run_trl_era_tests.sh
