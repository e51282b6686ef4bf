"""Data: a folder of real photos as the corpus R of InverseFaceNet Sec. 7 (CelebA, your own pictures).

:func:`load_photos` reads every JPEG/PNG in a folder, finds the largest face with OpenCV's bundled
Haar cascade (``pip install "opencv-python-headless<5"``, the ``photos`` extra; OpenCV 5 no longer
ships the cascades) and prepares network inputs like :func:`facelib.data.corpus.network_input`: a square
crop around the face, resized to ``N x N``, with an elliptical face mask standing in for the landmark
mask (a Haar detector gives a box, not 68 landmarks).  ``detector=None`` uses the central square of
each photo instead (for pre-cropped, aligned photos such as CelebA's aligned set).

Unreadable files are reported and skipped, never silently: the result lists them in ``skipped``.

One photo at a time (``facelib reconstruct``): :func:`read_photo` reads it and says what it converted,
:func:`detect_landmarks` finds the 68 iBUG landmarks of the largest face with dlib's HOG detector and
68-point shape predictor, whose model file ships inside the ``face-recognition-models`` package (the
``photos`` extra installs both; nothing is downloaded at run time), and :func:`landmark_crop` cuts the
square around them that a method expects.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from .._checks import MAX_IMAGE_SIZE, check_positive_int
from .corpus import _box_points, crop_to_box, landmark_box, landmark_mask

__all__ = ["PHOTO_SUFFIXES", "MAX_PHOTO_PIXELS", "MAX_PHOTO_SIDE", "load_photos", "haar_face_boxes",
           "ellipse_mask", "read_photo", "NoFaceError", "FaceLandmarks", "landmark_detector",
           "detect_landmarks", "landmark_crop", "sample_photo", "SAMPLE_PHOTOS"]

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


# ---------------------------------------------------------------------------------- one photo
MAX_PHOTO_SIDE = 2048  # read_photo downscales larger photos to this longer side


class NoFaceError(ValueError):
    """No face was found in a photo."""


SAMPLE_PHOTOS = ("grace_hopper", "astronaut")  # real photos that ship inside installed packages


def sample_photo(name: str = "grace_hopper") -> Path:
    """The path of a real photo that ships with an installed package (nothing is downloaded):
    ``"grace_hopper"`` (matplotlib's sample data, JPEG) or ``"astronaut"`` (scikit-image's
    ``skimage.data.astronaut()``, Eileen Collins; written once as a PNG into the facelib cache).
    ValueError for another name; ImportError (with the install line) when scikit-image is missing."""
    if name not in SAMPLE_PHOTOS:
        raise ValueError(f"unknown sample photo {name!r}; expected one of {SAMPLE_PHOTOS}")
    if name == "grace_hopper":
        import matplotlib.cbook as cbook

        return Path(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False))
    try:
        from skimage import data
    except ImportError as e:
        raise ImportError("the astronaut photo ships with scikit-image: pip install -e '.[photos]'") from e
    from PIL import Image

    from .._atomic import atomic_path
    from ..model.open_model import cache_dir

    path = cache_dir() / "samples" / "astronaut.png"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            Image.fromarray(data.astronaut()).save(tmp, format="PNG")
    return path


def read_photo(path, max_side: int = MAX_PHOTO_SIDE) -> tuple:
    """One photo as ``(rgb (H, W, 3) uint8, notes)``, like :func:`load_photos` reads them (upright by
    EXIF, alpha dropped, grey and 16-bit grey to 8-bit RGB), downscaled (Lanczos) so that its longer side
    is at most ``max_side``; ``notes`` lists in words what was converted.  ValueError with the path for
    a file that is not an image, is truncated or too large (:data:`MAX_PHOTO_PIXELS`); OSError (e.g.
    FileNotFoundError) when it cannot be opened."""
    from PIL import Image, UnidentifiedImageError

    check_positive_int(max_side, "max_side", most=MAX_IMAGE_SIZE)
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{path} is a folder; expected a photo (.jpg, .png)")
    notes = []
    try:
        with Image.open(path) as im:
            mode, bits = im.mode, {"I;16": 16, "I;16B": 16, "I;16L": 16, "I": 32}.get(im.mode)
        rgb = _read(path)
    except UnidentifiedImageError:
        raise ValueError(f"{path}: not an image file (Pillow cannot identify it)") from None
    except (OSError, SyntaxError) as e:
        if isinstance(e, FileNotFoundError | PermissionError | IsADirectoryError):
            raise
        raise ValueError(f"{path}: unreadable image ({str(e).splitlines()[0] if str(e) else type(e).__name__})"
                         ) from None
    except ValueError as e:  # too many pixels
        raise ValueError(f"{path}: {e}") from None
    if bits:
        notes.append(f"{bits}-bit greyscale image converted to 8-bit RGB")
    elif mode in ("L", "LA", "1"):
        notes.append(f"greyscale image (mode {mode}) converted to RGB")
    elif mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in getattr(im, "info", {})):
        notes.append(f"image with an alpha channel (mode {mode}): alpha dropped")
    elif mode not in ("RGB", "P"):
        notes.append(f"{mode} image converted to RGB")
    H, W = rgb.shape[:2]
    if max(H, W) > max_side:
        k = max_side / max(H, W)
        size = (max(1, round(W * k)), max(1, round(H * k)))
        rgb = np.asarray(Image.fromarray(rgb).resize(size, Image.LANCZOS))
        notes.append(f"{W} x {H} image downscaled to {size[0]} x {size[1]}")
    return np.ascontiguousarray(rgb), notes


@functools.lru_cache(maxsize=1)
def landmark_detector():
    """dlib's HOG face detector and 68-point shape predictor (iBUG order, as the face model's
    landmarks), loaded once: ``(detector, predictor)``.  The predictor's model file ships inside the
    ``face_recognition_models`` package.  ImportError with the install line when either is missing."""
    import importlib.util

    hint = ("landmark detection needs dlib and its 68-point model: pip install dlib-bin "
            "face-recognition-models (or pip install -e '.[photos]')")
    try:
        import dlib
    except ImportError as e:
        raise ImportError(hint) from e
    spec = importlib.util.find_spec("face_recognition_models")  # located, not imported (it needs pkg_resources)
    model = None if spec is None else \
        Path(list(spec.submodule_search_locations)[0]) / "models" / "shape_predictor_68_face_landmarks.dat"
    if model is None or not model.exists():
        raise ImportError(hint)
    return dlib.get_frontal_face_detector(), dlib.shape_predictor(str(model))


class FaceLandmarks(NamedTuple):
    """:func:`detect_landmarks`: ``points (68, 2)`` float32 pixel positions (pixel centres at +0.5,
    iBUG order) of the largest face, its detector ``box`` ``(x0, y0, x1, y1)`` and ``n_faces`` found."""

    points: torch.Tensor
    box: tuple
    n_faces: int


def detect_landmarks(rgb: np.ndarray, upsample: int = 1) -> FaceLandmarks:
    """The 68 iBUG landmarks of the largest face in ``rgb (H, W, 3)`` uint8 (dlib, see
    :func:`landmark_detector`; ``upsample`` image doublings for small faces).  :class:`NoFaceError` when
    there is none; check ``n_faces`` to tell the user that others were ignored."""
    rgb = np.asarray(rgb)
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f"image has shape {rgb.shape} and dtype {rgb.dtype}; expected (H, W, 3) uint8 RGB")
    detector, predictor = landmark_detector()
    rgb = np.ascontiguousarray(rgb)
    boxes = list(detector(rgb, int(upsample)))
    if not boxes:
        raise NoFaceError(f"no face found in the {rgb.shape[1]} x {rgb.shape[0]} image (dlib's frontal face "
                          "detector); use a photo with a frontal or near-frontal face")
    box = max(boxes, key=lambda b: b.width() * b.height())
    shape = predictor(rgb, box)
    pts = np.array([[p.x, p.y] for p in shape.parts()], dtype=np.float32) + 0.5
    return FaceLandmarks(torch.from_numpy(pts), (box.left(), box.top(), box.right(), box.bottom()), len(boxes))


def landmark_crop(rgb: np.ndarray, landmarks: torch.Tensor, size: int, margin: float = 0.25) -> dict:
    """The square around ``landmarks (68, 2)`` (:func:`facelib.data.corpus.landmark_box`, ``margin`` of the
    landmark box added on each side) resampled to ``size`` pixels.  Returns ``image (1, 3, N, N)`` in
    [0, 1] (black outside the photo), ``mask (1, N, N)`` (the pixels inside the photo), ``face_mask
    (1, N, N)`` (those also inside the jaw-and-brow outline and outside the lips:
    :func:`facelib.data.corpus.landmark_mask`, the pixels that surely show the face), ``landmarks (1, 68, 2)``
    in crop pixels and ``box (1, 3)`` (centre x, centre y, side) in photo pixels."""
    check_positive_int(size, "size", most=MAX_IMAGE_SIZE)
    t = torch.from_numpy(np.array(rgb, dtype=np.uint8)).permute(2, 0, 1)[None].float() / 255.0
    lm = torch.as_tensor(landmarks, dtype=torch.float32).reshape(1, -1, 2)
    box = landmark_box(lm, margin)
    ones = torch.ones(1, 1, *t.shape[2:])
    inside = crop_to_box(ones, box, size)[:, 0] > 0.5
    lm_crop = _box_points(lm, box, size)
    return {"image": crop_to_box(t, box, size).clamp(0, 1), "mask": inside,
            "face_mask": inside & landmark_mask(lm_crop, size, size), "landmarks": lm_crop, "box": box}
