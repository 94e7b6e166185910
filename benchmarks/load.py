"""`python -m benchmarks.load ...` (`make load`, `make soak`): the load-test harness, which ships with
the package as `curator_loadtest` (`curator loadtest`)."""

import sys

from curator_loadtest.cli import main

if __name__ == "__main__":
    sys.exit(main())
