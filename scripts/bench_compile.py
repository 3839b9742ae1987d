"""`python scripts/bench_compile.py ...` runs `kdspec bench compile ...`.

The benchmark is kdspec.bench.torch_compile.
"""

import sys

from kdspec.bench.torch_compile import main

if __name__ == "__main__":
    sys.exit(main())
