"""Loaders for third-party face models: the Basel Face Model 2009 ``.mat`` and folders of OBJ files.

Both produce a :class:`~facelib.model.facemodel.FaceModel` (InverseFaceNet Eq. 2-3): geometry in mm,
albedo in [0, 1], bases as ``(N, V, 3)`` tensors with orthonormal rows and their standard deviations,
triangles counter-clockwise seen from outside.  Every missing, truncated or inconsistent input raises
:class:`~facelib.model.facemodel.ModelFileError` with a message that names the file and what is wrong.

Also here: a small OBJ reader/writer (:func:`read_obj`, :func:`write_obj`).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from .facemodel import FaceModel, ModelFileError, orthonormal_basis

__all__ = ["load_bfm2009", "load_obj_folder", "read_obj", "write_obj", "BFM_KEYS", "EXPRESSION_KEYS"]

BFM_KEYS = ("shapeMU", "shapePC", "shapeEV", "texMU", "texPC", "texEV", "tl")
EXPRESSION_KEYS = ("expPC", "expEV")  # expMU is optional
_BFM_LENGTH_TO_MM = 1e-3  # BFM 2009 lengths are in micrometres
_BFM_COLOUR_SCALE = 1.0 / 255.0  # BFM 2009 colours are 0..255
_ORTHONORMAL_TOL = 1e-3
_DEFAULT_ALBEDO = 0.6  # grey mean albedo of OBJ-folder models without albedo.npy


# ============================================================================ Basel Face Model 2009
def load_bfm2009(path: str | os.PathLike, expression: str | os.PathLike | None = None,
                 n_shape: int | None = None, n_expression: int | None = None,
                 n_reflectance: int | None = None) -> FaceModel:
    """Read the Basel Face Model 2009 (``01_MorphableModel.mat``) as a :class:`FaceModel`.

    Keys read (``V`` vertices, ``K`` components; per-vertex values interleaved ``x1 y1 z1 x2 ...``):

    * ``shapeMU`` ``(3V, 1)`` mean shape in micrometres -> ``mean_shape`` ``(V, 3)`` in mm (/1000);
    * ``shapePC`` ``(3V, K)`` orthonormal principal components -> ``shape_basis`` ``(K, V, 3)``;
    * ``shapeEV`` ``(K, 1)`` standard deviations in micrometres -> ``sigma_s`` in mm (/1000);
    * ``texMU`` ``(3V, 1)`` mean colour 0..255 -> ``mean_albedo`` in [0, 1] (/255);
    * ``texPC`` ``(3V, K)`` and ``texEV`` ``(K, 1)`` (0..255 units, /255) -> ``albedo_basis``, ``sigma_r``;
    * ``tl`` ``(T, 3)`` 1-based triangle vertex indices -> ``triangles`` 0-based.  BFM triangles are
      clockwise seen from outside; our convention is counter-clockwise (outward normals), so the
      winding is flipped: ``triangles = tl[:, [0, 2, 1]] - 1``.

    An expression basis (Eq. 2, second sum) is read from ``expPC`` ``(3V, K_e)`` and ``expEV``
    ``(K_e, 1)``, plus an optional offset ``expMU`` ``(3V, 1)`` that is added to the mean shape, all in
    the shape's units (micrometres).  They come from the file ``expression`` when given, else from the
    model file itself when it holds them; without either the model has a zero-component expression
    basis ``(0, V, 3)``.

    Principal components that are orthonormal to within 1e-3 (``max |P^T P - I|``) are only
    normalised, with sigma scaled by the column norm so that ``b_i sigma_i`` is unchanged; otherwise
    the displacements ``PC * EV`` are re-orthonormalised with :func:`orthonormal_basis`, which keeps
    the covariance ``P diag(EV^2) P^T``.

    Args:
        path: the model ``.mat`` (MATLAB v5/v7; v7.3 HDF5 files are not supported by scipy).
        expression: optional second ``.mat`` with ``expPC``, ``expEV`` (and ``expMU``).
        n_shape, n_expression, n_reflectance: keep only the first n components (default: all).

    Returns:
        a :class:`FaceModel` named ``bfm2009`` with only the ``face`` mask (all vertices) and no landmarks.
    """
    path = Path(path)
    mat = _read_mat(path, BFM_KEYS + EXPRESSION_KEYS + ("expMU",))
    _require(mat, BFM_KEYS, path, ", ".join(BFM_KEYS))

    mu = _vector(mat, "shapeMU", path)
    if mu.size == 0 or mu.size % 3:
        raise ModelFileError(f"{path}: shapeMU has {mu.size} entries; expected 3 x V (x, y, z per vertex)")
    V = mu.size // 3
    shape_basis, sigma_s, reortho = _pca_basis(mat, "shapePC", "shapeEV", V, n_shape, _BFM_LENGTH_TO_MM, path,
                                               "shapeMU")
    tex_mu = _vector(mat, "texMU", path)
    if tex_mu.size != mu.size:
        raise ModelFileError(f"{path}: texMU has {tex_mu.size} entries but shapeMU has {mu.size}; "
                             f"both must be 3 x V with V = {V} vertices")
    albedo_basis, sigma_r, reortho_r = _pca_basis(mat, "texPC", "texEV", V, n_reflectance, _BFM_COLOUR_SCALE,
                                                  path, "shapeMU")
    triangles = _bfm_triangles(mat["tl"], V, path)

    mean_shape = mu * _BFM_LENGTH_TO_MM
    exp_src, exp_mat = _expression_source(mat, path, expression)
    if exp_mat is not None:
        expression_basis, sigma_e, reortho_e = _pca_basis(exp_mat, "expPC", "expEV", V, n_expression,
                                                          _BFM_LENGTH_TO_MM, exp_src, f"shapeMU of {path.name}")
        if "expMU" in exp_mat:
            exp_mu = _vector(exp_mat, "expMU", exp_src)
            if exp_mu.size != mu.size:
                raise ModelFileError(f"{exp_src}: expMU has {exp_mu.size} entries but the shape model "
                                     f"{path.name} has {mu.size} (3 x {V} vertices)")
            mean_shape = mean_shape + exp_mu * _BFM_LENGTH_TO_MM
    else:
        if n_expression:
            raise ValueError(f"n_expression={n_expression} but {path} has no expression basis "
                             "(expPC/expEV) and no expression file was given")
        expression_basis, sigma_e, reortho_e = np.zeros((0, V, 3)), np.zeros(0), False

    metadata = {"format": "bfm2009", "source": path.name, "units": "mm",
                "triangle_winding": "flipped from BFM clockwise to counter-clockwise",
                "expression_source": None if exp_src is None else Path(exp_src).name,
                "reorthonormalised": {"shape": reortho, "expression": reortho_e, "reflectance": reortho_r}}
    return _make_model(path, name="bfm2009", mean_shape=mean_shape.reshape(V, 3),
                       shape_basis=shape_basis, sigma_s=sigma_s,
                       expression_basis=expression_basis, sigma_e=sigma_e,
                       mean_albedo=(tex_mu * _BFM_COLOUR_SCALE).reshape(V, 3),
                       albedo_basis=albedo_basis, sigma_r=sigma_r, triangles=triangles,
                       metadata=metadata)


def _read_mat(path: Path, names) -> dict:
    """``scipy.io.loadmat`` of the variables ``names`` (those present); any read error -> ModelFileError."""
    import scipy.io

    if not path.exists():
        raise ModelFileError(f"{path}: no such .mat file")
    if not path.is_file():
        raise ModelFileError(f"{path}: not a file")
    try:
        with open(path, "rb") as f:
            data = scipy.io.loadmat(f, variable_names=list(names))
    except NotImplementedError as e:  # scipy's answer to MATLAB v7.3 (HDF5)
        raise ModelFileError(f"{path}: MATLAB v7.3 (HDF5) .mat files are not supported; re-save it in "
                             f"MATLAB with save(..., '-v7') ({e})") from e
    except MemoryError:
        raise
    except Exception as e:  # scipy raises MatReadError, ValueError, OSError, IndexError, zlib.error...
        raise ModelFileError(f"{path}: not a readable MATLAB .mat file (truncated or corrupt?): "
                             f"{type(e).__name__}: {e}") from e
    return {k: v for k, v in data.items() if not k.startswith("__")}


def _require(mat: dict, keys, path, expected: str) -> None:
    """Raise if any of ``keys`` is missing from ``mat``, naming the first missing key."""
    for k in keys:
        if k not in mat:
            raise ModelFileError(f"{path}: key {k!r} missing; expected {expected}")


def _numeric(mat: dict, key: str, path) -> np.ndarray:
    a = np.asarray(mat[key])
    if not (np.issubdtype(a.dtype, np.number) or a.dtype == bool):
        raise ModelFileError(f"{path}: {key} is a {a.dtype} array; expected a numeric matrix")
    if not np.isfinite(a).all():
        raise ModelFileError(f"{path}: {key} contains NaN or inf")
    return a


def _vector(mat: dict, key: str, path) -> np.ndarray:
    """A MATLAB row or column vector as a 1-D float64 array."""
    a = _numeric(mat, key, path)
    if a.ndim > 2 or (a.ndim == 2 and min(a.shape) > 1):
        raise ModelFileError(f"{path}: {key} has shape {a.shape}; expected a vector")
    return a.astype(np.float64).ravel()


def _n_keep(n: int | None, K: int, what: str, path) -> int:
    if n is None:
        return K
    n = int(n)
    if n < 0 or n > K:
        raise ValueError(f"{what}={n} but {path} has {K} components; expected 0 <= {what} <= {K}")
    return n


def _pca_basis(mat: dict, pc_key: str, ev_key: str, V: int, n: int | None, scale: float, path,
               mean_desc: str):
    """Orthonormal ``(N, V, 3)`` basis and ``(N,)`` sigma (times ``scale``) from PC columns and EV.

    ``mat[pc_key]`` is ``(3V, K)``, ``mat[ev_key]`` ``(K,)`` standard deviations.  Columns within
    ``_ORTHONORMAL_TOL`` of orthonormal are normalised; otherwise ``(PC * EV)^T`` goes through
    :func:`orthonormal_basis` (``samples=False``), which preserves the covariance.  Returns
    ``(basis, sigma, reorthonormalised)``.
    """
    _require(mat, (pc_key, ev_key), path, f"{pc_key} and {ev_key} together")
    pc = _numeric(mat, pc_key, path)
    if pc.ndim == 1:
        pc = pc[:, None]
    if pc.ndim != 2 or pc.shape[0] != 3 * V:
        raise ModelFileError(f"{path}: {pc_key} has shape {pc.shape}; expected (3V, K) = ({3 * V}, K) "
                             f"rows to match the {V} vertices of {mean_desc}")
    ev = _vector(mat, ev_key, path)
    K = pc.shape[1]
    if ev.size != K:
        raise ModelFileError(f"{path}: {ev_key} has {ev.size} entries but {pc_key} has {K} columns; "
                             "expected one standard deviation per component")
    if (ev < 0).any():
        raise ModelFileError(f"{path}: {ev_key} has negative entries; expected standard deviations")
    k = _n_keep(n, K, {"shapePC": "n_shape", "texPC": "n_reflectance"}.get(pc_key, "n_expression"), path)
    if k == 0:
        return np.zeros((0, V, 3)), np.zeros(0), False
    pc = pc[:, :k].astype(np.float64)
    ev = ev[:k] * scale
    G = pc.T @ pc
    if np.abs(G - np.eye(k)).max() <= _ORTHONORMAL_TOL:
        norms = np.sqrt(np.diag(G))
        return (pc / norms).T.reshape(k, V, 3), ev * norms, False
    basis, sigma = orthonormal_basis((pc * ev).T, samples=False)
    return basis.reshape(-1, V, 3), sigma, True


def _bfm_triangles(tl, V: int, path) -> np.ndarray:
    """``tl`` ``(T, 3)`` 1-based clockwise -> ``(T, 3)`` int64 0-based counter-clockwise."""
    tl = _numeric({"tl": tl}, "tl", path)
    if tl.ndim != 2 or tl.shape[1] != 3:
        raise ModelFileError(f"{path}: tl has shape {tl.shape}; expected (T, 3) triangle vertex indices")
    if tl.size and not np.array_equal(tl, np.round(tl)):
        raise ModelFileError(f"{path}: tl has non-integer entries; expected 1-based vertex indices")
    tri = tl.astype(np.int64)
    if tri.size and (tri.min() < 1 or tri.max() > V):
        raise ModelFileError(f"{path}: tl index out of range: indices span [{tri.min()}, {tri.max()}] but "
                             f"1-based indices must lie in [1, {V}] ({V} vertices in shapeMU)")
    return tri[:, [0, 2, 1]] - 1


def _expression_source(mat: dict, path: Path, expression):
    """``(source path, dict with expPC/expEV[/expMU])`` or ``(None, None)`` when there is none."""
    expected = ", ".join(EXPRESSION_KEYS) + " (expMU optional)"
    if expression is not None:
        src = Path(expression)
        exp_mat = _read_mat(src, EXPRESSION_KEYS + ("expMU",))
        _require(exp_mat, EXPRESSION_KEYS, src, expected)
        return src, exp_mat
    if any(k in mat for k in EXPRESSION_KEYS + ("expMU",)):
        _require(mat, EXPRESSION_KEYS, path, expected)
        return path, mat
    return None, None


def _make_model(path, **kwargs) -> FaceModel:
    """``FaceModel(**kwargs)`` with validation errors prefixed by the source path."""
    try:
        return FaceModel(**kwargs)
    except ModelFileError as e:
        raise ModelFileError(f"{path}: {e}") from e


# ================================================================================ OBJ folder models
def load_obj_folder(path: str | os.PathLike, scale: float = 1.0) -> FaceModel:
    """Read a face model distributed as a folder of OBJ files (e.g. ICT-FaceKit).

    Layout (all OBJs share the vertex order of ``neutral.obj``; topology is taken from it)::

        neutral.obj        the neutral mean mesh a_g, in mm
        identity/*.obj     one mesh per identity mode: the mesh at +1 sigma of that mode
        expression/*.obj   one mesh per blendshape at full weight
        albedo.npy         optional (V, 3) mean albedo in [0, 1] (uint8 0..255 also accepted);
                           without it the mean albedo is 0.6 grey

    Files are taken in name order; a missing ``identity/`` or ``expression/`` folder gives a
    zero-component basis.  The reflectance basis always has zero components.

    The displacements ``d_k = mesh_k - neutral`` (rows of ``D``, ``(K, 3V)``) become an orthonormal
    basis through :func:`orthonormal_basis` with ``samples=False``: sigma is the singular value, so
    the model (Eq. 2 with theta ~ N(0, I)) has the distribution of ``sum_k N(0, 1) d_k``, i.e. the
    covariance ``B^T diag(sigma^2) B = D^T D``.  The same holds for the blendshapes.  Components are
    ordered by decreasing sigma, not by file; when the modes are orthogonal, component ``i`` is
    ``±d_k / |d_k|`` with ``sigma_i = |d_k|``.

    Args:
        path: the folder.
        scale: factor from the OBJ units to mm (1 for mm, 10 for cm).

    Returns:
        a :class:`FaceModel` named after the folder, with only the ``face`` mask and no landmarks.
    """
    root = Path(path)
    if not root.exists():
        raise ModelFileError(f"{root}: no such OBJ model folder")
    if not root.is_dir():
        raise ModelFileError(f"{root}: not a folder; an OBJ face model is a folder with neutral.obj, "
                             "identity/*.obj and expression/*.obj")
    neutral_path = root / "neutral.obj"
    if not neutral_path.is_file():
        raise ModelFileError(f"{root}: neutral.obj missing; an OBJ face model folder needs neutral.obj "
                             "(the mean mesh), identity/*.obj and expression/*.obj")
    mean, faces = read_obj(neutral_path)
    mean = mean * float(scale)
    V = mean.shape[0]

    id_files = _obj_files(root / "identity")
    exp_files = _obj_files(root / "expression")
    shape_basis, sigma_s = _mode_basis(_displacements(id_files, mean, scale, neutral_path), V)
    expression_basis, sigma_e = _mode_basis(_displacements(exp_files, mean, scale, neutral_path), V)
    mean_albedo = _read_albedo(root / "albedo.npy", V)

    metadata = {"format": "obj-folder", "source": root.name, "units": "mm", "scale_to_mm": float(scale),
                "identity_files": [f.name for f in id_files],
                "expression_files": [f.name for f in exp_files]}
    return _make_model(root, name=root.resolve().name or "obj-model", mean_shape=mean,
                       shape_basis=shape_basis, sigma_s=sigma_s,
                       expression_basis=expression_basis, sigma_e=sigma_e,
                       mean_albedo=mean_albedo, albedo_basis=np.zeros((0, V, 3)), sigma_r=np.zeros(0),
                       triangles=faces, metadata=metadata)


def _obj_files(folder: Path) -> list[Path]:
    """The ``*.obj`` files of ``folder`` sorted by name (none when the folder is absent)."""
    if not folder.is_dir():
        return []
    return sorted((p for p in folder.iterdir() if p.is_file() and p.suffix.lower() == ".obj"),
                  key=lambda p: p.name)


def _displacements(files: list[Path], mean: np.ndarray, scale: float, neutral_path: Path) -> np.ndarray:
    """``(K, 3V)`` rows ``mesh_k - mean`` in mm; every mesh must have the neutral's vertex count."""
    V = mean.shape[0]
    D = np.zeros((len(files), 3 * V))
    for k, f in enumerate(files):
        v, _ = read_obj(f)
        if v.shape[0] != V:
            raise ModelFileError(f"{f}: {v.shape[0]} vertices but {neutral_path.name} has {V}; every OBJ "
                                 "of the model must share the neutral mesh's vertices")
        D[k] = (v * float(scale) - mean).ravel()
    return D


def _mode_basis(D: np.ndarray, V: int):
    """``(K, 3V)`` modes at +1 sigma -> basis ``(N, V, 3)``, sigma ``(N,)`` (N <= K, zero modes dropped)."""
    if D.shape[0] == 0:
        return np.zeros((0, V, 3)), np.zeros(0)
    basis, sigma = orthonormal_basis(D, samples=False)
    return basis.reshape(-1, V, 3), sigma


def _read_albedo(path: Path, V: int) -> np.ndarray:
    """``albedo.npy`` ``(V, 3)`` in [0, 1] (uint8 divided by 255), or 0.6 grey when absent."""
    if not path.exists():
        return np.full((V, 3), _DEFAULT_ALBEDO)
    try:
        a = np.load(path, allow_pickle=False)
    except Exception as e:
        raise ModelFileError(f"{path}: not a readable .npy array (truncated or corrupt?): "
                             f"{type(e).__name__}: {e}") from e
    if not isinstance(a, np.ndarray) or a.shape != (V, 3):
        raise ModelFileError(f"{path}: albedo has shape {getattr(a, 'shape', None)}; expected ({V}, 3), "
                             "one RGB per vertex of neutral.obj")
    if a.dtype == np.uint8:
        return a / 255.0
    if not np.issubdtype(a.dtype, np.number):
        raise ModelFileError(f"{path}: albedo is a {a.dtype} array; expected float RGB in [0, 1]")
    a = a.astype(np.float64)
    if not np.isfinite(a).all() or a.min() < 0 or a.max() > 1:
        raise ModelFileError(f"{path}: albedo values span [{a.min():g}, {a.max():g}]; expected finite "
                             "linear RGB in [0, 1] (divide 8-bit colours by 255)")
    return a


# ============================================================================================ OBJ
def read_obj(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Vertices and triangles of a Wavefront OBJ file.

    Reads ``v x y z`` lines (extra values such as vertex colours ignored) and ``f`` lines in the forms
    ``f a b c``, ``f a/ta b/tb ...``, ``f a//na ...`` and ``f a/ta/na ...``; polygons are
    fan-triangulated ``(0, i, i+1)`` (winding kept), negative indices are relative to the vertices
    read so far (``-1`` is the last one).  ``vt``, ``vn``, groups, materials and comments are ignored.

    Returns:
        vertices ``(V, 3)`` float64 and faces ``(T, 3)`` int64 (0-based).

    Raises:
        ModelFileError: missing file, malformed ``v``/``f`` line (file and line number named), face
            index out of range, or no vertices.
    """
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"{path}: no such OBJ file")
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError as e:
        raise ModelFileError(f"{path}: cannot read OBJ file: {e}") from e

    verts: list[tuple[float, float, float]] = []
    faces: list[tuple[int, int, int]] = []
    face_lines: list[int] = []
    for lineno, line in enumerate(text.splitlines(), 1):
        parts = line.split("#", 1)[0].split()
        if not parts:
            continue
        if parts[0] == "v":
            verts.append(_parse_vertex(parts, path, lineno, line))
        elif parts[0] == "f":
            idx = _parse_face(parts, len(verts), path, lineno, line)
            for k in range(1, len(idx) - 1):
                faces.append((idx[0], idx[k], idx[k + 1]))
                face_lines.append(lineno)

    if not verts:
        raise ModelFileError(f"{path}: no vertices ('v x y z' lines); empty or not an OBJ mesh")
    V = len(verts)
    F = np.asarray(faces, dtype=np.int64).reshape(-1, 3)
    if F.size and F.max() >= V:
        row = int(np.argmax((F >= V).any(axis=1)))
        raise ModelFileError(f"{path}: line {face_lines[row]}: face index {int(F[row].max()) + 1} out of "
                             f"range; the file has {V} vertices")
    return np.asarray(verts, dtype=np.float64), F


def _parse_vertex(parts: list[str], path: Path, lineno: int, line: str) -> tuple[float, float, float]:
    try:
        if len(parts) < 4:
            raise ValueError
        xyz = (float(parts[1]), float(parts[2]), float(parts[3]))
    except ValueError:
        raise ModelFileError(f"{path}: line {lineno}: malformed vertex {line.strip()!r}; "
                             "expected 'v x y z' with 3 numbers") from None
    if not all(np.isfinite(xyz)):
        raise ModelFileError(f"{path}: line {lineno}: vertex {line.strip()!r} is not finite")
    return xyz


def _parse_face(parts: list[str], n_verts: int, path: Path, lineno: int, line: str) -> list[int]:
    """0-based vertex indices of one ``f`` line; negative indices resolved against ``n_verts``."""
    if len(parts) < 4:
        raise ModelFileError(f"{path}: line {lineno}: malformed face {line.strip()!r}; "
                             "expected at least 3 vertices 'f a b c'")
    idx = []
    for tok in parts[1:]:
        try:
            i = int(tok.split("/", 1)[0])
        except ValueError:
            raise ModelFileError(f"{path}: line {lineno}: malformed face {line.strip()!r}; {tok!r} is not "
                                 "a vertex index (forms: a, a/t, a//n, a/t/n)") from None
        if i == 0:
            raise ModelFileError(f"{path}: line {lineno}: face index 0 out of range; OBJ indices start at 1")
        j = i - 1 if i > 0 else n_verts + i
        if j < 0:
            raise ModelFileError(f"{path}: line {lineno}: face index {i} out of range; only {n_verts} "
                                 "vertices precede this line")
        idx.append(j)
    return idx


def write_obj(path: str | os.PathLike, vertices, faces=None) -> Path:
    """Write ``vertices`` ``(V, 3)`` and 0-based triangles ``faces`` ``(T, 3)`` (optional) as an OBJ.

    Coordinates are written with ``repr`` precision, so :func:`read_obj` returns them exactly.
    """
    path = Path(path)
    v = _as_numpy(vertices).astype(np.float64)
    if v.ndim != 2 or v.shape[1] != 3:
        raise ValueError(f"vertices have shape {v.shape}; expected (V, 3)")
    f = np.zeros((0, 3), np.int64) if faces is None else _as_numpy(faces).astype(np.int64)
    if f.ndim != 2 or f.shape[1] != 3:
        raise ValueError(f"faces have shape {f.shape}; expected (T, 3)")
    if f.size and (f.min() < 0 or f.max() >= len(v)):
        raise ValueError(f"face indices span [{f.min()}, {f.max()}] but there are {len(v)} vertices")
    lines = [f"v {x!r} {y!r} {z!r}" for x, y, z in v.tolist()]
    lines += [f"f {a} {b} {c}" for a, b, c in (f + 1).tolist()]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _as_numpy(x) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
