"""Export: meshes (OBJ with vertex colours, binary PLY) and images (PNG, image grids).

Every writer creates the parent folders and writes atomically (a temporary file in the target
folder, then ``os.replace``), so an interrupted export never leaves a half-written file behind.
Inputs may be torch tensors (any device, with or without grad) or numpy arrays; geometry is in mm,
colours and images in [0, 1] (clipped on export).
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import torch

from .._atomic import atomic_write_bytes

__all__ = ["save_obj", "save_ply", "save_image", "image_grid", "save_image_grid"]


def _np(x) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def _atomic_write(path, data: bytes) -> Path:
    """Write ``data`` to ``path`` via a temporary sibling and ``os.replace``; returns the path. Errors
    name the path (a folder that cannot be created or written to)."""
    return atomic_write_bytes(path, data)


def _mesh_arrays(verts, faces, colors):
    v = _np(verts).astype(np.float64)
    if v.ndim != 2 or v.shape[1] != 3:
        raise ValueError(f"verts have shape {v.shape}; expected (V, 3)")
    if not np.isfinite(v).all():
        raise ValueError(f"verts contain {int((~np.isfinite(v)).any(1).sum())} vertices with nan or "
                         "inf coordinates; a mesh file cannot hold them")
    f = np.zeros((0, 3), np.int64) if faces is None else _np(faces)
    if f.ndim != 2 or f.shape[1] != 3 or not (f.size == 0 or np.issubdtype(f.dtype, np.integer)):
        raise ValueError(f"faces have shape {f.shape} and dtype {f.dtype}; expected integer (F, 3), "
                         "0-based")
    f = f.astype(np.int64)
    if f.size and (f.min() < 0 or f.max() >= len(v)):
        raise ValueError(f"face indices span [{f.min()}, {f.max()}] but there are {len(v)} vertices "
                         "(faces are 0-based)")
    c = None
    if colors is not None:
        c = _np(colors).astype(np.float64)
        if c.shape != v.shape:
            raise ValueError(f"colors have shape {c.shape}; expected (V, 3) = {v.shape}, RGB in [0, 1]")
        if np.isnan(c).any():
            raise ValueError("colors contain nan")
        c = np.clip(c, 0.0, 1.0)
    return v, f, c


def save_obj(path, verts, faces=None, colors=None) -> Path:
    """Write a triangle mesh as Wavefront OBJ; returns the path.

    ``verts``: ``(V, 3)`` (mm); ``faces``: ``(F, 3)`` 0-based (written 1-based), optional;
    ``colors``: ``(V, 3)`` RGB in [0, 1] (clipped), optional, written as the per-vertex colour
    extension ``v x y z r g b`` that MeshLab and Blender read.  Coordinates keep full float64
    precision (``repr``).
    """
    v, f, c = _mesh_arrays(verts, faces, colors)
    if c is None:
        lines = [f"v {x!r} {y!r} {z!r}" for x, y, z in v.tolist()]
    else:
        lines = [f"v {x!r} {y!r} {z!r} {r:.6f} {g:.6f} {b:.6f}"
                 for (x, y, z), (r, g, b) in zip(v.tolist(), c.tolist())]
    lines += [f"f {a} {b} {cc}" for a, b, cc in (f + 1).tolist()]
    text = "# facelib\n" + "\n".join(lines) + "\n"
    return _atomic_write(path, text.encode("ascii"))


def save_ply(path, verts, faces=None, colors=None) -> Path:
    """Write a triangle mesh as binary little-endian PLY; returns the path.

    ``verts``: ``(V, 3)`` written as float32 ``x y z``; ``colors``: ``(V, 3)`` in [0, 1], optional,
    written as ``uchar red green blue`` (``round(255 c)``); ``faces``: ``(F, 3)`` 0-based, optional,
    written as ``property list uchar int vertex_indices``.  MeshLab and Blender open it.
    """
    v, f, c = _mesh_arrays(verts, faces, colors)
    vfields = [("x", "<f4"), ("y", "<f4"), ("z", "<f4")]
    if c is not None:
        vfields += [("red", "u1"), ("green", "u1"), ("blue", "u1")]
    vert = np.empty(len(v), dtype=vfields)
    vert["x"], vert["y"], vert["z"] = v.T
    if c is not None:
        rgb = np.round(c * 255.0).astype(np.uint8)
        vert["red"], vert["green"], vert["blue"] = rgb.T
    face = np.empty(len(f), dtype=[("n", "u1"), ("idx", "<i4", (3,))])
    face["n"], face["idx"] = 3, f
    header = ["ply", "format binary_little_endian 1.0", "comment facelib",
              f"element vertex {len(v)}", "property float x", "property float y", "property float z"]
    if c is not None:
        header += ["property uchar red", "property uchar green", "property uchar blue"]
    header += [f"element face {len(f)}", "property list uchar int vertex_indices", "end_header"]
    data = ("\n".join(header) + "\n").encode("ascii") + vert.tobytes() + face.tobytes()
    return _atomic_write(path, data)


def _image_hwc(image) -> np.ndarray:
    """``(3, H, W)``, ``(1, H, W)``, ``(H, W, 3)``, ``(H, W, 1)`` or ``(H, W)`` -> ``(H, W[, 3])``."""
    x = _np(image)
    if x.ndim == 3 and x.shape[0] in (1, 3):  # channels first (a (3, H, 3) image counts as this)
        x = np.moveaxis(x, 0, -1)
    elif not (x.ndim == 2 or (x.ndim == 3 and x.shape[-1] in (1, 3))):
        raise ValueError(f"image has shape {tuple(x.shape)}; expected (3, H, W), (H, W, 3) or (H, W)")
    if x.ndim == 3 and x.shape[-1] == 1:
        x = x[..., 0]
    if x.shape[0] == 0 or x.shape[1] == 0:
        raise ValueError(f"image has shape {tuple(x.shape)}; it is empty")
    if x.dtype == np.bool_:
        x = x.astype(np.float64)
    if not np.issubdtype(x.dtype, np.floating):
        raise ValueError(f"image has dtype {x.dtype}; expected floats in [0, 1] (divide 8-bit images "
                         "by 255)")
    if np.isnan(x).any():
        raise ValueError(f"image contains {int(np.isnan(x).sum())} nan values")
    return x


def save_image(path, image) -> Path:
    """Write ``image`` in [0, 1] (clipped) as an 8-bit image, PNG or any format Pillow knows by the
    file's suffix; returns the path.

    ``image``: ``(3, H, W)``, ``(H, W, 3)`` or ``(H, W)`` (grey), torch or numpy, floats.
    """
    from PIL import Image

    path = Path(path)
    fmt = Image.registered_extensions().get(path.suffix.lower())
    if fmt is None:
        raise ValueError(f"{path}: unknown image suffix {path.suffix!r}; use .png")
    x = _image_hwc(image)
    u8 = np.round(np.clip(x, 0.0, 1.0) * 255.0).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(u8).save(buf, format=fmt)
    return _atomic_write(path, buf.getvalue())


def image_grid(images, nrow: int = 8, pad: int = 2, pad_value: float = 1.0):
    """Tile a batch of images into one image, ``nrow`` images per row (as ``torchvision``'s
    ``make_grid``).

    ``images``: ``(B, C, H, W)`` with ``C`` 1 or 3, or ``(B, H, W)``.  Returns ``(C, H', W')`` with
    ``H' = rows (H + pad) + pad``, ``W' = min(B, nrow) (W + pad) + pad``, ``rows = ceil(B / nrow)``;
    gaps and unused cells are ``pad_value``.  A torch input gives a tensor (same device and
    dtype), a numpy input an array.
    """
    is_torch = isinstance(images, torch.Tensor)
    x = images if is_torch else torch.as_tensor(np.asarray(images))
    if x.ndim == 3:
        x = x[:, None]
    if x.ndim != 4 or x.shape[1] not in (1, 3) or x.shape[0] == 0:
        raise ValueError(f"images have shape {tuple(x.shape)}; expected (B, 3, H, W), (B, 1, H, W) "
                         "or (B, H, W) with B >= 1")
    if int(nrow) < 1 or int(pad) < 0:
        raise ValueError(f"nrow={nrow}, pad={pad}; expected nrow >= 1 and pad >= 0")
    B, C, H, W = x.shape
    ncol = min(B, int(nrow))
    rows = -(-B // ncol)
    grid = x.new_full((C, rows * (H + pad) + pad, ncol * (W + pad) + pad), pad_value)
    for k in range(B):
        r, c = divmod(k, ncol)
        y0, x0 = pad + r * (H + pad), pad + c * (W + pad)
        grid[:, y0:y0 + H, x0:x0 + W] = x[k]
    return grid if is_torch else grid.numpy()


def save_image_grid(path, images, nrow: int = 8, pad: int = 2, pad_value: float = 1.0) -> Path:
    """:func:`image_grid` then :func:`save_image`; ``images``: ``(B, 3, H, W)``.  Returns the path."""
    grid = image_grid(images.detach() if isinstance(images, torch.Tensor) else images,
                      nrow, pad, pad_value)
    return save_image(path, grid)
