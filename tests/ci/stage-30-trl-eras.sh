# The trainer tests again under the trl 1.10-1.14 era (full-logits log-prob path), each in a venv of its own.
bash tests/run_trl_era_tests.sh
