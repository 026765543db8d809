# Training curves, quick mode: stock trl's GRPOTrainer vs FastGRPOTrainer (torch backend) on the counting task,
# dapo with beta=0.1, 24 seeds x 160 steps each, then the statistical parity check (benchmarks/fastgrpo_benchmarks/curves/stats.py):
# both trainers learn, and no final-window metric differs under Welch's test at a 1% family-wise level.
# Exits non-zero (loudly) when the check fails. Also the unit tests of the report's parts.
python tests/ci/versions.py  # what this stage tests with, one line
python -m pytest -q tests/test_curves.py
python -m fastgrpo_benchmarks.curves --mode quick --out "${TMPDIR:-/tmp}/fastgrpo-curves-ci"
