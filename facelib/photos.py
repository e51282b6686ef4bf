"""Data: a folder of real photos as the corpus R of InverseFaceNet Sec. 7 (CelebA, your own pictures).

:func:`load_photos` reads every JPEG/PNG in a folder, finds the largest face with OpenCV's bundled
Haar cascade (``pip install "opencv-python-headless<5"``, the ``photos`` extra; OpenCV 5 no longer
ships the cascades) and prepares network inputs like :func:`facelib.corpus.network_input`: a square
crop around the face, resized to ``N x N``, with an elliptical face mask standing in for the landmark
mask (a Haar detector gives a box, not 68 landmarks).  ``detector=None`` uses the central square of
each photo instead (for pre-cropped, aligned photos such as CelebA's aligned set).

Unreadable files are reported and skipped, never silently: the result lists them in ``skipped``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ._checks import MAX_IMAGE_SIZE, check_positive_int
from .corpus import crop_to_box

__all__ = ["PHOTO_SUFFIXES", "MAX_PHOTO_PIXELS", "load_photos", "haar_face_boxes", "ellipse_mask"]

PHOTO_SUFFIXES = (".jpg", ".jpeg", ".png")
HAAR_BOX_SCALE = 1.05  # the Haar box spans about brows to chin, like our landmark box


def ellipse_mask(size: int, ry: float = 0.47, rx: float = 0.40) -> torch.Tensor:
    """``(N, N)`` bool ellipse centred in the crop (semi-axes as fractions of N): the face region."""
    c = (torch.arange(size, dtype=torch.float32) + 0.5) / size - 0.5
    return (c[:, None] / ry) ** 2 + (c[None, :] / rx) ** 2 <= 1.0


def haar_face_boxes(image: np.ndarray) -> list:
    """Faces in an ``(H, W, 3)`` uint8 RGB image with OpenCV's frontal-face Haar cascade: a list of
    ``(x, y, w, h)`` boxes in pixels, largest first.  ImportError with the install line if OpenCV is
    missing."""
    try:
        import cv2
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError('the Haar face detector needs OpenCV: pip install "opencv-python-headless<5" '
                          '(or pip install -e ".[photos]"); or pass detector=None for pre-cropped photos') from e
    path = Path(cv2.data.haarcascades) / "haarcascade_frontalface_default.xml"
    if not path.exists():
        raise ImportError(f"OpenCV {cv2.__version__} has no Haar cascades at {path}; install "
                          '"opencv-python-headless<5"')
    cascade = cv2.CascadeClassifier(str(path))
    grey = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
    found = cascade.detectMultiScale(grey, scaleFactor=1.1, minNeighbors=5, minSize=(24, 24))
    boxes = [tuple(int(v) for v in b) for b in (found if len(found) else [])]
    return sorted(boxes, key=lambda b: -b[2] * b[3])


MAX_PHOTO_PIXELS = 64_000_000  # larger photos are skipped, not decoded (a 64 MP RGB photo is 192 MB)


def _read(path: Path) -> np.ndarray:
    """``(H, W, 3)`` uint8 RGB of a photo: turned upright by its EXIF orientation, alpha dropped,
    grey repeated to RGB, 16-bit grey scaled to 8 bits (not clipped). ValueError for a photo larger
    than :data:`MAX_PHOTO_PIXELS`; PIL's errors for files it cannot read."""
    from PIL import Image, ImageOps

    with Image.open(path) as im:
        if im.width * im.height > MAX_PHOTO_PIXELS:
            raise ValueError(f"{im.width} x {im.height} pixels, more than the {MAX_PHOTO_PIXELS:,} "
                             "a photo may have")
        im = ImageOps.exif_transpose(im)
        if im.mode.startswith("I"):  # 16-bit grey ("I;16", or "I" in older Pillow)
            a = np.asarray(im).astype(np.float64)
            top = 65535.0 if im.mode.startswith("I;16") or a.max() > 255 else 255.0
            grey = np.clip(np.round(a * (255.0 / top)), 0, 255).astype(np.uint8)
            return np.repeat(grey[..., None], 3, axis=2)
        return np.asarray(im.convert("RGB"))


def load_photos(folder, size: int, detector: str | None = "haar", limit: int | None = None,
                progress: bool = True) -> dict:
    """Network inputs from the photos in ``folder`` (sorted by name).

    Photos are read upright (EXIF orientation); RGBA loses its alpha, grey and 16-bit grey become
    8-bit RGB; photos over :data:`MAX_PHOTO_PIXELS` and files that are not images are skipped.

    Args:
        folder: a directory with ``.jpg``/``.jpeg``/``.png`` files.
        size: N of the crops.  detector: ``"haar"`` or ``None`` (central square).
        limit: use at most this many photos.  progress: show a progress bar.
    Returns:
        dict with ``crop (n, 3, N, N)`` float in [0, 1] (0 outside the mask), ``mask (n, N, N)``,
        ``files`` (the n paths used), ``skipped`` (list of ``(path, reason)``).
    Raises:
        ValueError if ``size`` is not an int in 1..8192 or ``limit`` not a positive int (or None),
        ``folder`` is not a directory, holds no photos, or no face was found in any.
    """
    from tqdm.auto import tqdm

    check_positive_int(size, "size", most=MAX_IMAGE_SIZE)
    if limit is not None:
        check_positive_int(limit, "limit")
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"{folder} is not a directory; expected a folder of photos")
    if detector not in ("haar", None):
        raise ValueError(f"unknown detector {detector!r}; expected 'haar' or None")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in PHOTO_SUFFIXES)[:limit]
    if not files:
        raise ValueError(f"{folder} has no photos ({', '.join(PHOTO_SUFFIXES)})")
    mask = ellipse_mask(size)
    crops, used, skipped = [], [], []
    for path in tqdm(files, desc="photos", disable=not progress):
        try:
            img = _read(path)
        except Exception as e:  # unreadable, truncated, not an image, too large
            skipped.append((str(path), f"unreadable: {str(e).splitlines()[0] if str(e) else type(e).__name__}"))
            continue
        H, W = img.shape[:2]
        if detector == "haar":
            boxes = haar_face_boxes(img)
            if not boxes:
                skipped.append((str(path), "no face found"))
                continue
            x, y, w, h = boxes[0]
            box = torch.tensor([[x + w / 2, y + h / 2, max(w, h) * HAAR_BOX_SCALE]])
        else:
            box = torch.tensor([[W / 2, H / 2, float(min(H, W))]])
        t = torch.from_numpy(img.copy()).permute(2, 0, 1)[None].float() / 255.0
        crops.append(crop_to_box(t, box, size)[0] * mask)
        used.append(str(path))
    if not crops:
        raise ValueError(f"no face found in any of the {len(files)} photos in {folder}: "
                         + "; ".join(f"{p}: {r}" for p, r in skipped[:5]))
    return {"crop": torch.stack(crops).clamp(0, 1), "mask": mask.expand(len(crops), size, size).clone(),
            "files": used, "skipped": skipped}
