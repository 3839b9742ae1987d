"""`python scripts/bench_memory.py ...` runs `kdspec bench memory ...` (kdspec.bench.memory)."""

import sys

from kdspec.bench.memory import main

if __name__ == "__main__":
    sys.exit(main())
