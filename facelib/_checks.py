"""Input checks shared by the image-formation modules (one place for the error messages)."""

import operator

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


MAX_IMAGE_SIZE = 8192  # pixels per side: larger images are refused (a 20000 px batch took 19.5 GB)


def check_image_size(image_size, name: str = "image_size") -> tuple:
    """``(H, W)`` from an int or a pair of ints, each in ``1 .. MAX_IMAGE_SIZE``; ValueError otherwise."""
    bad = ValueError(f"{name} must be a positive int or (H, W), at most {MAX_IMAGE_SIZE} pixels per side; "
                     f"got {image_size!r}")
    if isinstance(image_size, (str, bytes)):
        raise bad
    try:
        parts = (image_size, image_size) if _is_int(image_size) else tuple(image_size)
    except TypeError:
        raise bad from None
    if len(parts) != 2 or not all(_is_int(s) for s in parts):
        raise bad
    hw = tuple(operator.index(s) for s in parts)
    if hw[0] <= 0 or hw[1] <= 0:
        raise ValueError(f"{name} must be positive; got (H, W) = {hw}")
    if max(hw) > MAX_IMAGE_SIZE:
        raise ValueError(f"{name} (H, W) = {hw} exceeds the limit of {MAX_IMAGE_SIZE} pixels per side")
    return hw


def _is_int(x) -> bool:
    """An integer (Python, NumPy or a 0-d integer tensor), not a bool."""
    if isinstance(x, bool):
        return False
    try:
        operator.index(x)
    except TypeError:
        return False
    return True


def check_theta(theta, size: int, dtype: torch.dtype) -> torch.Tensor:
    """A ``(B, size)`` parameter tensor of the model's floating-point ``dtype`` (finiteness is checked
    where it is used: the fused renderer overlaps it with its GEMMs)."""
    if not isinstance(theta, torch.Tensor):
        raise ValueError(f"theta must be a torch.Tensor of shape (B, {size}); got {type(theta).__name__}")
    if theta.ndim != 2 or theta.shape[1] != size:
        raise ValueError(f"theta has shape {tuple(theta.shape)}; expected (B, {size}) for this face model")
    if theta.dtype != dtype:
        raise ValueError(f"theta has dtype {theta.dtype}; expected the face model's {dtype} "
                         f"(convert with theta.to({dtype}))")
    return theta


def check_positive_int(value, name: str, most: int | None = None) -> int:
    """``value`` as an int ``>= 1`` (and ``<= most`` when given); ValueError that names ``name``."""
    if not _is_int(value) or operator.index(value) < 1 or (most is not None and operator.index(value) > most):
        bound = f" no larger than {most}" if most is not None else ""
        raise ValueError(f"{name} must be a positive integer{bound}; got {value!r}")
    return operator.index(value)
