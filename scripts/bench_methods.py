"""`python scripts/bench_methods.py ...` runs `kdspec bench steps ...` (kdspec.bench.methods)."""

import sys

from kdspec.bench.methods import main

if __name__ == "__main__":
    sys.exit(main())
