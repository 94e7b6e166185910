"""`python -m benchmarks.load ...`: the load-test harness (see benchmarks/load/cli.py)."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
