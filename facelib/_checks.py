"""Input checks shared by the image-formation modules (one place for the error messages)."""

import torch


def all_finite(x: torch.Tensor) -> bool:
    """True when ``x`` has no NaN or inf: one reduction (a NaN or inf makes the sum non-finite); the
    exact element-wise test runs only when the sum is not finite (it may also overflow)."""
    if bool(torch.isfinite(x.sum())):
        return True
    return bool(torch.isfinite(x).all())


def check_vectors(x, name: str, batched: bool = True) -> torch.Tensor:
    """A finite floating-point tensor of 3-vectors: ``(B, V, 3)`` when ``batched``, else ``(..., 3)``."""
    expect = "(B, V, 3)" if batched else "(..., 3)"
    ok_shape = isinstance(x, torch.Tensor) and x.shape[-1:] == (3,) and (x.ndim == 3 if batched else x.ndim >= 1)
    if not ok_shape:
        got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"{name} has shape {got}; expected {expect}")
    if not x.is_floating_point():
        raise ValueError(f"{name} has dtype {x.dtype}; expected a floating-point tensor")
    if not all_finite(x):
        raise ValueError(f"{name} contains NaN or infinite values")
    return x
