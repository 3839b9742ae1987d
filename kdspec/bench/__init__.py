"""The benchmarks behind docs/performance.md, shipped in the package (``kdspec bench``).

Each compares a compiled kdspec step with a hand-written PyTorch loop doing the same (same
models, data, optimiser, losses written by hand), runs the variants in interleaved rounds and
prints median ratios with their spread, the machine and the versions; absolute times are never
printed as results. :mod:`.methods`: step time per method; :mod:`.memory`: peak memory of a
step; :mod:`.torch_compile`: a step under ``torch.compile`` against eager.
"""

from __future__ import annotations

KINDS = {"steps": "methods", "memory": "memory", "compile": "torch_compile"}

_CRD = ["--num-samples", "100", "--nce-k", "8"]  # if --methods adds crd
_TINY = ["--teacher", "resnet8", "--student", "resnet8", "--batch", "4", "--rounds", "1"]
# The smallest configuration of each benchmark: a smoke run (seconds), no meaningful figure.
QUICK = {
    "steps": [
        *_TINY,
        "--steps",
        "1",
        "--methods",
        "hinton",
        "--num-samples",
        "100",
        "--nce-k",
        "8",
    ],
    "memory": [*_TINY, "--methods", "hinton", "--num-samples", "100", "--nce-k", "8"],
    "compile": [*_TINY, "--steps", "1", "--methods", "hinton", "--backend", "eager"],
}
