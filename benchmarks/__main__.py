"""``python -m benchmarks <suite> [--quick] [--out DIR] [--threads N]``."""

import sys

from benchmarks.harness import main

if __name__ == "__main__":
    sys.exit(main())
