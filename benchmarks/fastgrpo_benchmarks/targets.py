"""``python -m fastgrpo_benchmarks.targets RESULTS...``: the performance targets against a run's results (see
``reports/targets.py``)."""

import sys

from .reports.targets import main

if __name__ == "__main__":
    sys.exit(main())
