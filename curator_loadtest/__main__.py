"""`python -m curator_loadtest ...`: the load-test harness (see curator_loadtest/cli.py)."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
