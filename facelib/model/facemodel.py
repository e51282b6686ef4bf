"""Model: the parametric face model (InverseFaceNet Eq. 2-3, Tewari et al. 2018 Eq. 3-4).

A :class:`FaceModel` holds the average geometry ``a_g``, orthonormal shape and expression bases with
their standard deviations ``sigma_s``, ``sigma_e``, the average reflectance ``a_r`` with its basis and
``sigma_r``, the triangles, semantic vertex masks, a per-vertex region label and the 68 landmarks
(iBUG / Multi-PIE order) with the sliding jaw-contour candidates of Tewari et al. Eq. 10.

Bases are stored as ``(N, V, 3)`` tensors: ``basis[i]`` is the basis vector ``b_i`` of Eq. 2 reshaped
to per-vertex xyz, and ``sum(basis[i] * basis[j]) == delta_ij``.  Geometry is in millimetres,
reflectance (albedo) in [0, 1] linear RGB.
"""

from __future__ import annotations

import io
import json
import os
import zipfile
from dataclasses import dataclass, field, fields
from pathlib import Path

import numpy as np
import torch

from .._atomic import atomic_path

__all__ = [
    "FaceModel",
    "ModelFileError",
    "N_LANDMARKS",
    "N_CONTOUR",
    "LANDMARK_GROUPS",
    "geometry",
    "reflectance",
    "basis_fit",
    "geometry_fit",
    "orthonormal_basis",
]

N_LANDMARKS = 68
N_CONTOUR = 17  # iBUG points 0-16: the jaw contour, sliding (Tewari et al. Eq. 10, Fig. 2)

# iBUG 68 groups, in index order (0-based, inclusive ranges).
LANDMARK_GROUPS = {
    "jaw": range(0, 17),
    "brow_right": range(17, 22),  # subject's right = image left = -x
    "brow_left": range(22, 27),
    "nose_bridge": range(27, 31),
    "nose_base": range(31, 36),
    "eye_right": range(36, 42),
    "eye_left": range(42, 48),
    "lips_outer": range(48, 60),
    "lips_inner": range(60, 68),
}


class ModelFileError(ValueError):
    """A face-model file is missing, truncated or inconsistent; the message names the file."""


def orthonormal_basis(D: np.ndarray, n_components: int | None = None, samples: bool = True):
    """Orthonormal basis and standard deviations of a set of displacement vectors.

    Args:
        D: ``(K, 3V)`` displacement vectors (rows), already centred when they are population samples.
        n_components: number of components to keep (default: all non-zero ones).
        samples: ``True`` when the rows are ``K`` draws of a zero-mean population (PCA, sigma = s /
            sqrt(K - 1) for centred identities is the caller's choice of K); ``False`` when each row is
            a mode at +1 sigma (sigma = s, which preserves the distribution sum_k N(0,1) d_k).

    Returns:
        basis ``(N, 3V)`` with orthonormal rows (sign fixed: the largest-magnitude entry is positive)
        and sigma ``(N,)`` in decreasing order.
    """
    D = np.asarray(D, dtype=np.float64)
    K = D.shape[0]
    # Thin SVD through the K x K Gram matrix: cheap for K << 3V and deterministic.
    G = D @ D.T
    evals, evecs = np.linalg.eigh(G)
    order = np.argsort(evals)[::-1]
    evals, evecs = np.clip(evals[order], 0.0, None), evecs[:, order]
    s = np.sqrt(evals)
    keep = s > s[0] * 1e-9 if s[0] > 0 else np.zeros_like(s, dtype=bool)
    n = int(keep.sum()) if n_components is None else min(int(n_components), int(keep.sum()))
    basis = (evecs[:, :n].T @ D) / s[:n, None]
    # Re-orthonormalise (Gram-Schmidt through QR) to remove round-off, keep the PCA order.
    q, r = np.linalg.qr(basis.T)
    basis = (q * np.sign(np.diag(r))).T
    idx = np.argmax(np.abs(basis), axis=1)
    basis *= np.sign(basis[np.arange(n), idx])[:, None]
    denom = np.sqrt(max(K - 1, 1)) if samples else 1.0
    return basis, s[:n] / denom


def _t(x, dtype=torch.float32):
    return x if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x), dtype=dtype)


@dataclass
class FaceModel:
    """A linear face model: Eq. 2 (geometry) and Eq. 3 (reflectance) of InverseFaceNet.

    Tensors (V vertices, T triangles):
        mean_shape ``(V, 3)`` mm, ``a^[g]``; shape_basis ``(N_s, V, 3)``; sigma_s ``(N_s,)`` mm;
        expression_basis ``(N_e, V, 3)``; sigma_e ``(N_e,)`` mm;
        mean_albedo ``(V, 3)`` in [0, 1], ``a^[r]``; albedo_basis ``(N_r, V, 3)``; sigma_r ``(N_r,)``;
        triangles ``(T, 3)`` int64, counter-clockwise seen from outside (normals point out);
        masks: name -> ``(V,)`` bool (``face``, ``skin``, ``mouth_interior``, ``lips_boundary``,
        ``eyes``, ...); region ``(V,)`` int64 indexing ``region_names``;
        landmarks ``(68,)`` int64 vertex ids (iBUG order), landmark_sliding ``(68,)`` bool,
        contour_candidates ``(17, L)`` int64 candidate vertices of each jaw point, padded with -1;
        expression_range ``(N_e,)``: half-width of the uniform expression prior (in units of sigma_e)
        used by the Sec. 5 sampler; mouth_component: index of the expression component whose
        positive direction opens the mouth; mouth_bias: the bias of the Sec. 5 sampler on it.
    """

    name: str
    mean_shape: torch.Tensor
    shape_basis: torch.Tensor
    sigma_s: torch.Tensor
    expression_basis: torch.Tensor
    sigma_e: torch.Tensor
    mean_albedo: torch.Tensor
    albedo_basis: torch.Tensor
    sigma_r: torch.Tensor
    triangles: torch.Tensor
    masks: dict = field(default_factory=dict)
    region: torch.Tensor | None = None
    region_names: list = field(default_factory=list)
    landmarks: torch.Tensor | None = None
    landmark_sliding: torch.Tensor | None = None
    contour_candidates: torch.Tensor | None = None
    expression_range: torch.Tensor | None = None
    mouth_component: int = 0
    mouth_bias: float = 0.0
    metadata: dict = field(default_factory=dict)

    def __post_init__(self):
        f32 = ("mean_shape", "shape_basis", "sigma_s", "expression_basis", "sigma_e",
               "mean_albedo", "albedo_basis", "sigma_r", "expression_range")
        for k in f32:
            v = getattr(self, k)
            if v is not None:
                v = _t(v)
                setattr(self, k, v if v.is_floating_point() else v.float())
        for k in ("triangles", "region", "landmarks", "contour_candidates"):
            v = getattr(self, k)
            if v is not None:
                setattr(self, k, _t(v, torch.int64).long())
        if self.landmark_sliding is not None:
            self.landmark_sliding = _t(self.landmark_sliding, torch.bool).bool()
        self.masks = {k: _t(v, torch.bool).bool() for k, v in self.masks.items()}
        V = self.mean_shape.shape[0]
        if self.expression_range is None:
            self.expression_range = torch.full((self.n_expression,), 12.0)
        if self.region is None:
            self.region = torch.zeros(V, dtype=torch.int64)
            self.region_names = ["face"]
        if "face" not in self.masks:
            self.masks["face"] = torch.ones(V, dtype=torch.bool)
        self.mouth_component = int(self.mouth_component)
        self.mouth_bias = float(self.mouth_bias)
        self.validate()

    # ----------------------------------------------------------------- sizes
    @property
    def n_vertices(self) -> int:
        return int(self.mean_shape.shape[0])

    @property
    def n_triangles(self) -> int:
        return int(self.triangles.shape[0])

    @property
    def n_shape(self) -> int:
        return int(self.shape_basis.shape[0])

    @property
    def n_expression(self) -> int:
        return int(self.expression_basis.shape[0])

    @property
    def n_reflectance(self) -> int:
        return int(self.albedo_basis.shape[0])

    @property
    def device(self) -> torch.device:
        return self.mean_shape.device

    def validate(self, source: str | None = None) -> None:
        """Raise :class:`ModelFileError` if the arrays are inconsistent with each other."""
        where = f"{source}: " if source else f"face model {self.name!r}: "
        V = self.n_vertices

        def need(cond, msg):
            if not cond:
                raise ModelFileError(where + msg)

        need(self.mean_shape.ndim == 2 and self.mean_shape.shape[1] == 3,
             f"mean shape has shape {tuple(self.mean_shape.shape)}; expected (V, 3)")
        for b, s, nm in ((self.shape_basis, self.sigma_s, "shape"),
                         (self.expression_basis, self.sigma_e, "expression"),
                         (self.albedo_basis, self.sigma_r, "reflectance")):
            need(b.ndim == 3 and b.shape[1:] == (V, 3),
                 f"{nm} basis has shape {tuple(b.shape)}; expected (N, {V}, 3)")
            need(s.shape == (b.shape[0],),
                 f"{nm} sigma has {tuple(s.shape)} entries; expected ({b.shape[0]},), one per component")
            need(bool(torch.isfinite(b).all()) and bool(torch.isfinite(s).all()),
                 f"{nm} basis or sigma contains NaN or inf")
            need(bool((s >= 0).all()), f"{nm} sigma has negative entries")
        need(self.mean_albedo.shape == (V, 3),
             f"mean albedo has shape {tuple(self.mean_albedo.shape)}; expected ({V}, 3)")
        need(self.triangles.ndim == 2 and self.triangles.shape[1] == 3,
             f"triangles have shape {tuple(self.triangles.shape)}; expected (T, 3)")
        if self.n_triangles:
            need(int(self.triangles.min()) >= 0 and int(self.triangles.max()) < V,
                 f"triangle indices span [{int(self.triangles.min())}, {int(self.triangles.max())}]"
                 f" but the mesh has {V} vertices")
        for k, m in self.masks.items():
            need(m.shape == (V,), f"mask {k!r} has shape {tuple(m.shape)}; expected ({V},)")
        need(self.region.shape == (V,), f"region has shape {tuple(self.region.shape)}; expected ({V},)")
        if self.landmarks is not None:
            need(self.landmarks.ndim == 1, "landmarks must be a 1-D vector of vertex ids")
            if self.landmarks.numel():
                need(int(self.landmarks.min()) >= 0 and int(self.landmarks.max()) < V,
                     f"landmark vertex ids out of range [0, {V})")
        need(self.expression_range.shape == (self.n_expression,),
             "expression_range must have one entry per expression component")

    # ------------------------------------------------------------ Eq. 2 and 3
    def geometry(self, theta_s: torch.Tensor, theta_e: torch.Tensor | None = None) -> torch.Tensor:
        """Eq. 2: ``a_g + sum_i b_i^s sigma_i^s theta_i^s + sum_j b_j^e sigma_j^e theta_j^e``.

        Args:
            theta_s: ``(B, N_s)`` shape coefficients in units of sigma_s (fewer columns: the rest are 0).
            theta_e: ``(B, N_e)`` expression coefficients in units of sigma_e, or None.
        Returns:
            ``(B, V, 3)`` vertex positions in mm.
        """
        return geometry(self, theta_s, theta_e)

    def reflectance(self, theta_r: torch.Tensor) -> torch.Tensor:
        """Eq. 3: ``a_r + sum_i b_i^r sigma_i^r theta_i^r``; ``(B, N_r)`` -> ``(B, V, 3)`` albedo."""
        return reflectance(self, theta_r)

    # --------------------------------------------------------------- devices
    def to(self, device=None, dtype: torch.dtype | None = None) -> "FaceModel":
        """A copy on ``device``; floating tensors also cast to ``dtype`` when given."""
        out = {}
        for f in fields(self):
            v = getattr(self, f.name)
            if isinstance(v, torch.Tensor):
                v = v.to(device=device, dtype=dtype if (dtype and v.is_floating_point()) else None)
            elif isinstance(v, dict) and f.name == "masks":
                v = {k: m.to(device) for k, m in v.items()}
            out[f.name] = v
        return FaceModel(**out)

    # --------------------------------------------------------------- summary
    def info(self) -> dict:
        """Counts and bounding box of the mean shape (mm)."""
        lo = self.mean_shape.min(0).values.tolist()
        hi = self.mean_shape.max(0).values.tolist()
        return {
            "name": self.name,
            "vertices": self.n_vertices,
            "triangles": self.n_triangles,
            "n_shape": self.n_shape,
            "n_expression": self.n_expression,
            "n_reflectance": self.n_reflectance,
            "bbox_mm": {"min": [round(x, 3) for x in lo], "max": [round(x, 3) for x in hi],
                        "size": [round(b - a, 3) for a, b in zip(lo, hi)]},
            "landmarks": 0 if self.landmarks is None else int(self.landmarks.numel()),
        }

    # ------------------------------------------------------------------- I/O
    def save(self, path: str | os.PathLike) -> Path:
        """Write the model to one ``.npz`` (byte-identical for identical content).

        The file is written to a temporary name of its own and renamed (:func:`facelib._atomic.atomic_path`),
        so an interrupted save never leaves a half-written model behind and two processes saving the
        same model at once both succeed.
        """
        path = Path(path)
        arrays = {}
        for f in fields(self):
            v = getattr(self, f.name)
            if isinstance(v, torch.Tensor):
                arrays[f.name] = v.detach().cpu().numpy()
        for k, m in self.masks.items():
            arrays[f"mask__{k}"] = m.cpu().numpy()
        header = {"name": self.name, "region_names": list(self.region_names),
                  "mouth_component": self.mouth_component, "mouth_bias": self.mouth_bias,
                  "metadata": self.metadata, "format": "facelib-facemodel-1"}
        arrays["header"] = np.frombuffer(json.dumps(header, sort_keys=True).encode(), dtype=np.uint8)
        with atomic_path(path) as tmp:
            _write_npz_deterministic(tmp, arrays)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> "FaceModel":
        """Read a model written by :meth:`save`; errors name the file and what is wrong."""
        path = Path(path)
        if not path.exists():
            raise ModelFileError(f"{path}: no such face-model file")
        try:
            with np.load(path, allow_pickle=False) as z:
                data = {k: z[k] for k in z.files}
        except (zipfile.BadZipFile, EOFError, ValueError, OSError) as e:
            raise ModelFileError(f"{path}: not a readable .npz face model (truncated or corrupt?): {e}") from e
        if "header" not in data:
            raise ModelFileError(f"{path}: no 'header' entry; not a facelib face model")
        try:
            header = json.loads(bytes(data.pop("header")).decode())
        except (UnicodeDecodeError, ValueError) as e:
            raise ModelFileError(f"{path}: its 'header' entry is not JSON ({e}); not a facelib face model") from e
        if not isinstance(header, dict):
            raise ModelFileError(f"{path}: its 'header' entry is not a JSON object; not a facelib face model")
        masks = {k[len("mask__"):]: data.pop(k) for k in list(data) if k.startswith("mask__")}
        required = {"mean_shape", "shape_basis", "sigma_s", "expression_basis", "sigma_e",
                    "mean_albedo", "albedo_basis", "sigma_r", "triangles"}
        missing = sorted(required - set(data))
        if missing:
            raise ModelFileError(f"{path}: missing arrays {missing}")
        known = {f.name for f in fields(cls)}
        kwargs = {k: v for k, v in data.items() if k in known}
        try:
            return cls(name=header.get("name", path.stem), masks=masks,
                       region_names=header.get("region_names", []),
                       mouth_component=header.get("mouth_component", 0),
                       mouth_bias=header.get("mouth_bias", 0.0),
                       metadata=header.get("metadata", {}), **kwargs)
        except ModelFileError as e:
            raise ModelFileError(f"{path}: {e}") from e


def geometry(model: FaceModel, theta_s: torch.Tensor, theta_e: torch.Tensor | None = None) -> torch.Tensor:
    """Eq. 2 for a batch: ``(B, n<=N_s)``, ``(B, n<=N_e)`` -> ``(B, V, 3)`` mm."""
    ns = theta_s.shape[-1]
    v = model.mean_shape + torch.einsum("bk,kvc->bvc", theta_s * model.sigma_s[:ns], model.shape_basis[:ns])
    if theta_e is not None:
        ne = theta_e.shape[-1]
        v = v + torch.einsum("bk,kvc->bvc", theta_e * model.sigma_e[:ne], model.expression_basis[:ne])
    return v


def reflectance(model: FaceModel, theta_r: torch.Tensor) -> torch.Tensor:
    """Eq. 3 for a batch: ``(B, n<=N_r)`` -> ``(B, V, 3)`` albedo."""
    nr = theta_r.shape[-1]
    return model.mean_albedo + torch.einsum("bk,kvc->bvc", theta_r * model.sigma_r[:nr], model.albedo_basis[:nr])


@torch.no_grad()
def basis_fit(mean: torch.Tensor, basis: torch.Tensor, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """The closest ``mean + coef @ basis`` to ``x`` over the vertices ``mask``: least squares, no prior.

    ``mean (N * 3,)`` or ``(N, 3)``, ``basis (m, N * 3)`` or ``(m, N, 3)``, ``x (B, N, 3)``, ``mask (N,)`` bool
    (default all).  Returns ``(B, N, 3)`` (every vertex, from the coefficients fitted on ``mask``)."""
    B, N = x.shape[0], x.shape[1]
    a, b = mean.reshape(-1), basis.reshape(basis.shape[0], -1)
    if a.shape[0] != N * 3 or b.shape[1] != N * 3:
        raise ValueError(f"mean {tuple(mean.shape)} and basis {tuple(basis.shape)} do not match x {tuple(x.shape)}")
    mask = torch.ones(N, dtype=torch.bool, device=x.device) if mask is None else mask.to(x.device)
    sel = mask.repeat_interleave(3)
    y = (x.reshape(B, -1) - a)[:, sel]
    coef = torch.linalg.lstsq(b[:, sel].T.double(), y.T.double()).solution.T.to(x.dtype)  # (B, m)
    return torch.addmm(a, coef, b).view_as(x)


def geometry_fit(model: FaceModel, verts: torch.Tensor, region: str = "face") -> torch.Tensor:
    """The closest geometry of Eq. 2 (every shape and expression component, no prior) to meshes ``verts
    (B, V, 3)`` in ``model``'s vertex order and frame, fitted over the ``model.masks[region]`` vertices:
    ``(B, V, 3)`` mm, the best the model can do for them (e.g. faces of another model on the same mesh)."""
    basis = torch.cat([model.shape_basis, model.expression_basis]).to(verts)
    return basis_fit(model.mean_shape.to(verts), basis, verts, model.masks[region])


def _write_npz_deterministic(path: Path, arrays: dict) -> None:
    """``np.savez`` without timestamps: the same arrays always give the same bytes."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as zf:
        for k in sorted(arrays):
            buf = io.BytesIO()
            np.lib.format.write_array(buf, np.ascontiguousarray(arrays[k]), allow_pickle=False)
            info = zipfile.ZipInfo(k + ".npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.external_attr = 0o644 << 16
            zf.writestr(info, buf.getvalue())
