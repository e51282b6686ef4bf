"""The door through which :mod:`facelib.render.fast` lends the reference renderer faster no-grad twins.

The reference functions (:func:`.raster.rasterize`'s fragments, :func:`.raster.interpolate`,
:func:`.shading.vertex_normals`, :func:`.shading.shade`) are written in PyTorch and differentiable.
When nothing asks for a gradient on the CPU, a twin with the same formulas written as a Numba kernel
(:mod:`facelib.render.fast.twins`) gives the same numbers several times faster.  The reference never
imports the fast path: :mod:`facelib.render` registers the twins here when it is imported, and the
reference asks :func:`twin` for one.  ``with twins_disabled():`` runs the PyTorch lines (tests compare
the two).
"""

from __future__ import annotations

import contextlib

import torch

TWINS: dict = {}  # name -> function, filled by facelib.render.fast.twins.register()
_OFF = [0]


def register(name: str, fn) -> None:
    """Lend the reference function ``name`` a no-grad twin ``fn`` (same arguments and result)."""
    TWINS[name] = fn


def twin(name: str, *tensors: torch.Tensor):
    """The twin of ``name`` when it may run for ``tensors``: registered, not disabled, every tensor on
    the CPU and no gradient asked for (grad mode off, or none of them requires grad); else None."""
    fn = TWINS.get(name)
    if fn is None or _OFF[0] or any(t.device.type != "cpu" for t in tensors):
        return None
    if torch.is_grad_enabled() and any(t.requires_grad for t in tensors):
        return None
    return fn


@contextlib.contextmanager
def twins_disabled():
    """Within the block the reference functions run their PyTorch lines even without gradients."""
    _OFF[0] += 1
    try:
        yield
    finally:
        _OFF[0] -= 1
