"""MoFA's data: the wild corpora the book trains on (cached under :func:`checkpoint_dir`, the one cache
root), photo folders, the shift-and-zoom augmentation, and the checked loading and atomic saving of
checkpoints and corpus caches."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from .._atomic import atomic_path
from ..model.facemodel import FaceModel


PHOTO_MARGIN = 0.35  # a photo's crop: the landmark box plus this fraction on every side (the paper's tight box)


def checkpoint_dir() -> Path:
    """``$FACELIB_CACHE/mofa`` (``~/.cache/facelib/mofa``): MoFA's checkpoints and cached corpora, under
    the one cache root of :func:`facelib.model.open_model.cache_dir` with the open model, the corpus
    shards and the saved networks."""
    from ..model.open_model import cache_dir

    return cache_dir() / "mofa"


# ---------------------------------------------------------------------------------- cache files
def _load(path: Path, what: str, **kwargs) -> dict | None:
    """``torch.load(path, **kwargs)``, or None when there is no such file or it is truncated or corrupt
    (then with a warning that names it: the caller rebuilds it and the next save replaces it)."""
    import warnings

    if not path.exists():
        return None
    try:
        obj = torch.load(path, **kwargs)
    except (KeyboardInterrupt, MemoryError):
        raise
    except Exception as e:  # noqa: BLE001 (a damaged file raises RuntimeError, EOFError, OSError, pickle errors)
        obj, why = None, f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
    else:
        why = "" if isinstance(obj, dict) else f"holds a {type(obj).__name__}, not a dict"
    if why:
        warnings.warn(f"{path}: unreadable {what} (truncated or corrupt?), rebuilding it: {why}", stacklevel=3)
        return None
    return obj


def _save(path: Path, obj: dict) -> None:
    """``torch.save`` to ``path`` atomically, under a temporary name of its own (safe under concurrent
    writers: :func:`facelib._atomic.atomic_path`)."""
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


# ---------------------------------------------------------------------------------- data
def _corpus_key(model: FaceModel, n: int, size: int, seed: int, keep: torch.Tensor | None,
                out_of_model: str = "fine") -> list:
    """What a corpus cache depends on: its size, seed, kept vertices, out-of-model content and the face
    model's contents (:func:`facelib.data.corpus._model_key`), so a cache of another model is never reused."""
    from ..data.corpus import _model_key

    key = [n, size, seed, None if keep is None else int(keep.numel()), _model_key(model)]
    return key if out_of_model == "fine" else key + [out_of_model]


def make_corpus(model: FaceModel, n: int, size: int, seed: int, keep: torch.Tensor | None = None,
                chunk: int = 32, progress: bool = True, cache: str | os.PathLike | None = None,
                out_of_model: str = "fine") -> dict:
    """``n`` wild faces (:func:`facelib.data.wild.wild_batch`) at ``size`` pixels, drawn in chunks with seeds
    ``seed, seed + 1, ...``: image ``(n, 3, N, N)``, mask, landmarks ``(n, 68, 2)`` (noisy, the only
    supervision), landmarks_gt, and the ground truth for evaluation only: verts_model ``(n, K, 3)`` (model
    space, mm, with the out-of-model detail, restricted to ``keep``), albedo ``(n, K, 3)`` (with the
    painted detail) and theta.  ``cache``: a ``.pt`` file read when present and
    written otherwise (a truncated or unreadable cache file is rendered again and replaced).
    ``out_of_model``: ``"fine"`` (the wild set) or ``"coarse"`` (plus centimetre-scale shape and
    reflectance the 3DMM cannot express, :func:`facelib.data.wild.coarse_out_of_model`)."""
    from tqdm.auto import tqdm

    from ..data.wild import wild_batch

    if cache is not None:
        data = _load(Path(cache), "corpus cache", map_location="cpu", weights_only=True)
        if data is not None and data.get("_key") == _corpus_key(model, n, size, seed, keep, out_of_model):
            return {k: v for k, v in data.items() if k != "_key"}
    parts = []
    for i in tqdm(range((n + chunk - 1) // chunk), desc=f"wild corpus ({n} faces, {size}px)", disable=not progress):
        b = min(chunk, n - i * chunk)
        d = wild_batch(model, b, seed=seed + i, size=size, device="cpu", out_of_model=out_of_model)
        k = slice(None) if keep is None else keep
        parts.append({"image": d["image"].float(), "mask": d["mask"], "landmarks": d["landmarks"].float(),
                      "landmarks_gt": d["landmarks_gt"].float(), "verts_model": d["verts_model"][:, k].float(),
                      "albedo": d["albedo"][:, k].float(), "theta": d["theta"].float()})
    data = {k: torch.cat([p[k] for p in parts]) for k in parts[0]}
    if cache is not None:
        _save(Path(cache), {**data, "_key": _corpus_key(model, n, size, seed, keep, out_of_model)})
    return data


def landmark_detector():
    """The optional detector for real photos (:func:`facelib.data.photos.detect_landmarks`: dlib's HOG face
    detector and its 68-point shape predictor, iBUG order as our landmarks, whose weights ship inside the
    ``face_recognition_models`` package of the ``photos`` extra).  Returns ``detect(rgb (H, W, 3) uint8)
    -> (68, 2)`` pixel positions (pixel centres at +0.5) of the largest face, or ``None`` when no face is
    found.  Raises ImportError with the install hint when the packages are missing."""
    from ..data.photos import NoFaceError, detect_landmarks, landmark_detector as load

    load()  # the ImportError with the install line now, not at the first photo

    def detect(rgb):
        try:
            return detect_landmarks(rgb).points
        except NoFaceError:
            return None

    return detect


def photo_corpus(folder: str | os.PathLike, size: int, margin: float = PHOTO_MARGIN, detect=None,
                 progress: bool = True) -> dict:
    """A training corpus from a folder of real photos (``*.jpg``, ``*.jpeg``, ``*.png``): each photo's
    68 landmarks are detected (:func:`landmark_detector`), the face is cropped to a square around them
    (``margin`` of the landmark box added on every side, as the paper's tight face box) and resized to
    ``size``.  Returns ``{"image": (n, 3, N, N), "landmarks": (n, 68, 2), "files": [...]}``; photos
    without a detected face are skipped."""
    import numpy as np
    from PIL import Image
    from tqdm.auto import tqdm

    detect = detect or landmark_detector()
    files = sorted(p for p in Path(folder).iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    images, marks, used = [], [], []
    for f in tqdm(files, desc="detecting landmarks", disable=not progress):
        rgb = np.asarray(Image.open(f).convert("RGB"))
        lm = detect(rgb)
        if lm is None:
            continue
        lo, hi = lm.min(0).values, lm.max(0).values
        side = max(int(round(float((hi - lo).max()) * (1 + 2 * margin))), 8)
        c = (lo + hi) / 2
        x0, y0 = int(round(float(c[0]) - side / 2)), int(round(float(c[1]) - side / 2))
        box = Image.fromarray(rgb).crop((x0, y0, x0 + side, y0 + side))  # black outside the photo
        crop = box.resize((size, size), Image.BILINEAR)
        images.append(torch.from_numpy(np.asarray(crop).copy()).permute(2, 0, 1).float() / 255.0)
        marks.append((lm - torch.tensor([x0, y0])) * (size / side))
        used.append(str(f))
    if not images:
        raise ValueError(f"no face found in the {len(files)} photos of {folder}")
    return {"image": torch.stack(images), "landmarks": torch.stack(marks), "files": used}


@torch.no_grad()
def shift_scale(image: torch.Tensor, landmarks: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> tuple:
    """Move and zoom the faces of a batch, image and landmarks together (training augmentation: the
    loss is self-supervised, so a moved image with its moved landmarks is a new, consistent example).

    ``image (B, 3, N, N)``, ``landmarks (B, L, 2)`` pixels (centres at +0.5), ``shift (B, 2)`` pixels,
    ``scale (B,)``: ``u' = scale (u - N/2) + N/2 + shift``; the image is resampled bilinearly, the
    border pixels extended.  Returns ``(image', landmarks')``."""
    import torch.nn.functional as F

    B, _, H, W = image.shape
    if H != W or shift.shape != (B, 2) or scale.shape != (B,):
        raise ValueError(f"image {tuple(image.shape)} must be square and shift {tuple(shift.shape)}, scale "
                         f"{tuple(scale.shape)} must be (B, 2), (B,) for B = {B}")
    theta = image.new_zeros(B, 2, 3)
    theta[:, 0, 0] = theta[:, 1, 1] = 1 / scale
    theta[:, :, 2] = -2 * shift / (W * scale[:, None])
    grid = F.affine_grid(theta, list(image.shape), align_corners=False)
    out = F.grid_sample(image, grid, mode="bilinear", padding_mode="border", align_corners=False)
    c = W / 2
    return out, scale[:, None, None] * (landmarks - c) + c + shift[:, None]


