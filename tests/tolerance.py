"""The one tolerance for comparing tensors in tests, chosen by dtype.

Two float32 computations of one formula (a fused kernel and a hand-written loop, or the same
code on two processors) differ by far more than one ulp: a sum with cancellation loses digits,
and which digits depends on the CPU's vector width and the kernel torch picks. So a float32
result is compared at ``1e-4`` of the scale of the expected value, and a test about a formula
runs in float64, where ``1e-6`` still leaves room for a reference that adds its ``eps`` a
little differently but catches any wrong term.

Use :func:`assert_close` instead of ``torch.testing.assert_close``; pass ``rtol`` only where a
test has a reason for another bound (and say the reason beside it).
"""

from __future__ import annotations

from typing import Any

import torch

RTOL: dict[torch.dtype, float] = {
    torch.float64: 1e-6,
    torch.float32: 1e-4,
    torch.float16: 1e-2,
    torch.bfloat16: 2e-2,
}


def rtol_for(dtype: torch.dtype) -> float:
    """The relative tolerance for results computed in ``dtype`` (0 for integers and bools)."""
    return RTOL.get(dtype, 0.0)


def assert_close(
    actual: Any,
    expected: Any,
    *,
    rtol: float | None = None,
    scale: float | None = None,
    what: str = "",
) -> None:
    """Assert two tensors (or numbers) agree to within the tolerance of ``actual``'s dtype.

    The absolute tolerance is ``rtol`` times ``scale``, by default the largest magnitude in
    ``expected``: an entry near zero in a tensor of large values is held to the precision the
    computation has, not to a relative bound it cannot meet.

    Args:
        actual: the value under test (a tensor, or a number compared in float64).
        expected: the reference value (same shape); converted to ``actual``'s dtype.
        rtol: overrides the dtype's tolerance.
        scale: the magnitude of the computation's inputs, where ``expected`` is (near) zero.
        what: names the quantity in the failure message.
    """
    actual = torch.as_tensor(actual)
    if not actual.is_floating_point():
        actual = actual.to(torch.float64)
    expected = torch.as_tensor(expected).to(actual.dtype)
    tol = rtol_for(actual.dtype) if rtol is None else rtol
    if scale is None:
        scale = float(expected.detach().abs().max()) if expected.numel() else 0.0
    torch.testing.assert_close(
        actual,
        expected,
        rtol=tol,
        atol=tol * scale + 1e-300,
        msg=(lambda m: f"{what}: {m}") if what else None,
    )
