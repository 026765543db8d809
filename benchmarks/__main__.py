"""``python -m benchmarks`` from a source checkout: the benchmark suite (same as ``fastgrpo-bench``).

``benchmarks/`` has no ``__init__.py`` on purpose: with the checkout on ``sys.path`` it is only a PEP 420 namespace
portion, so it can never shadow an installed package named ``benchmarks``. The suite itself is the
``fastgrpo_benchmarks`` package (``benchmarks/fastgrpo_benchmarks/``, installed by ``pip install -e ".[bench]"``).
"""

import sys

from fastgrpo_benchmarks.__main__ import main

if __name__ == "__main__":
    sys.exit(main())
