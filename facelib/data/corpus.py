"""Training data: InverseFaceNet's input pre-processing (Sec. 6.1) and the synthetic corpus (Sec. 5).

The network sees a *masked face crop*: the face is segmented with a mask built from the 68 landmarks
(the outline of the jaw and brows, minus the inner-lip polygon, i.e. without background and mouth
interior), the landmarks' bounding box is resized uniformly to ``N x N`` and the colours are mapped to
[-0.5, 0.5].  The same function prepares a rendered training face, a "wild" image
(:mod:`facelib.data.wild`) and a real photo, so train and test inputs are made the same way.

:class:`SyntheticCorpus` draws ``n`` parameter vectors from the Sec. 5 prior with a seed, renders
them in chunks (with a progress bar) and keeps the crops as ``uint8``; it can cache the chunks as
``.npz`` shards on disk (written atomically, keyed by model, seed, size and code version), so a
chapter re-run or a second chapter reuses them.
"""

from __future__ import annotations

import hashlib
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .._atomic import atomic_path
from ..model.facemodel import LANDMARK_GROUPS
from ..model.params import ParamLayout, sample_sec5
from ..render import landmarks_2d, render

__all__ = ["landmark_outline", "polygon_mask", "landmark_mask", "landmark_box", "landmark_features", "crop_to_box",
           "network_input", "to_network", "from_network", "render_crops", "augment_crops", "SyntheticCorpus",
           "FreshCorpus", "landmark_input", "corpus_dir", "CORPUS_VERSION"]

CORPUS_VERSION = 2  # bump when the rendering or pre-processing changes (invalidates cached shards)
CROP_MARGIN = 0.08  # the landmark box grows by this fraction on each side before resizing


def landmark_outline() -> list:
    """Indices of the face outline polygon: the jaw (0-16) and the brows right to left (26-17)."""
    return list(LANDMARK_GROUPS["jaw"]) + list(range(26, 16, -1))


def polygon_mask(poly: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Pixels whose centres lie inside closed polygons (even-odd rule).

    ``poly (B, K, 2)`` pixel coordinates (x right, y down, pixel centres at +0.5) -> ``(B, H, W)`` bool.
    """
    ys = torch.arange(height, device=poly.device, dtype=poly.dtype) + 0.5
    xs = torch.arange(width, device=poly.device, dtype=poly.dtype) + 0.5
    py, px = ys.view(1, -1, 1, 1), xs.view(1, 1, -1, 1)
    a, b = poly, poly.roll(-1, dims=1)  # edges a -> b, (B, K, 2)
    ax, ay = a[..., 0].view(-1, 1, 1, a.shape[1]), a[..., 1].view(-1, 1, 1, a.shape[1])
    bx, by = b[..., 0].view(-1, 1, 1, a.shape[1]), b[..., 1].view(-1, 1, 1, a.shape[1])
    straddle = (ay > py) != (by > py)
    x_cross = ax + (py - ay) * (bx - ax) / torch.where(by == ay, torch.ones_like(by), by - ay)
    inside = (straddle & (px < x_cross)).sum(-1, dtype=torch.uint8)
    return (inside % 2) == 1


def landmark_mask(landmarks: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Sec. 6.1 segmentation from landmarks: inside the jaw-and-brow outline and outside the inner
    lips (mouth interior).  ``landmarks (B, 68, 2)`` pixels -> ``(B, H, W)`` bool."""
    outline = polygon_mask(landmarks[:, landmark_outline()], height, width)
    mouth = polygon_mask(landmarks[:, list(LANDMARK_GROUPS["lips_inner"])], height, width)
    return outline & ~mouth


def landmark_side(landmarks: torch.Tensor) -> torch.Tensor:
    """The longer side of each face's landmark bounding box: ``(B, K, 2)`` pixels -> ``(B,)`` pixels, in
    the landmarks' dtype (the unit of the detector's noise, of :func:`landmark_features` and of the crop)."""
    return (landmarks.max(1).values - landmarks.min(1).values).max(-1).values


def landmark_box(landmarks: torch.Tensor, margin: float = CROP_MARGIN) -> torch.Tensor:
    """Square box around the landmarks (Sec. 6.1): ``(B, 68, 2)`` -> ``(B, 3)`` (centre x, centre y,
    side) in pixels; the side is the larger extent times ``1 + 2 margin``."""
    lo, hi = landmarks.min(1).values, landmarks.max(1).values
    centre = (lo + hi) / 2
    side = landmark_side(landmarks) * (1 + 2 * margin)
    return torch.cat([centre, side[:, None]], dim=1)


def landmark_features(landmarks: torch.Tensor) -> torch.Tensor:
    """The 68 landmarks as a network's second input: ``(B, 68, 2)`` pixels -> ``(B, 136)`` float32,
    centred on their bounding box and divided by its longer side, so they keep only what the Sec. 6.1
    crop keeps of them (no position in the frame, no size: the same for frame and crop pixels)."""
    if landmarks.ndim != 3 or landmarks.shape[-1] != 2:
        raise ValueError(f"landmarks have shape {tuple(landmarks.shape)}; expected (B, 68, 2)")
    lm = landmarks.float()
    lo, hi = lm.min(1).values, lm.max(1).values
    side = landmark_side(lm).clamp_min(1e-6)
    return ((lm - (lo + hi)[:, None] / 2) / side[:, None, None]).flatten(1)


def landmark_input(landmarks: torch.Tensor, noise: float, seed: int, index: torch.Tensor) -> torch.Tensor:
    """:func:`landmark_features` of training landmarks ``(b, 68, 2)`` moved by detector noise
    (:func:`facelib.data.wild.detector_noise`, ``noise`` of the box side; 0: exact), drawn afresh for
    every mini-batch from ``seed`` and the faces' ``index (b,)``, so a run's draws depend only on its
    batches (not on which runs came before).  Returns ``(b, 136)``."""
    from .wild import detector_noise

    if noise > 0:
        h = hashlib.sha256(np.asarray(index.cpu().numpy(), dtype=np.int64).tobytes()).hexdigest()
        g = torch.Generator().manual_seed((int(seed) * 1_000_003 + int(h[:12], 16)) % 2 ** 63)
        landmarks = detector_noise(landmarks.double(), noise, g)
    return landmark_features(landmarks)


def _box_grid(box: torch.Tensor, height: int, width: int, size: int) -> torch.Tensor:
    """Sampling grid ``(B, N, N, 2)`` (normalised, align_corners=False) of a square box."""
    B = box.shape[0]
    t = (torch.arange(size, device=box.device, dtype=box.dtype) + 0.5) / size - 0.5  # (N,)
    x = box[:, 0, None] + t[None] * box[:, 2, None]  # (B, N) pixel coordinates
    y = box[:, 1, None] + t[None] * box[:, 2, None]
    gx = (2 * x / width - 1)[:, None, :].expand(B, size, size)
    gy = (2 * y / height - 1)[:, :, None].expand(B, size, size)
    return torch.stack([gx, gy], dim=-1)


def crop_to_box(image: torch.Tensor, box: torch.Tensor, size: int, mode: str = "bilinear",
                padding: str = "zeros") -> torch.Tensor:
    """Resample the square ``box (B, 3)`` of ``image (B, C, H, W)`` to ``(B, C, N, N)``; outside the
    image ``padding`` (``"zeros"``, or ``"border"``: the nearest edge pixel, for a network that never
    saw a black frame)."""
    H, W = image.shape[-2:]
    grid = _box_grid(box.to(image.dtype), H, W, size)
    return F.grid_sample(image, grid, mode=mode, padding_mode=padding, align_corners=False)


def _box_points(points: torch.Tensor, box: torch.Tensor, size: int) -> torch.Tensor:
    """Pixel coordinates ``(B, K, 2)`` in the frame -> in the ``size``-pixel crop of ``box``."""
    return (points - box[:, None, :2]) / box[:, None, 2:3] * size + size / 2


def network_input(image: torch.Tensor, landmarks: torch.Tensor, size: int,
                  mask: torch.Tensor | None = None, margin: float = CROP_MARGIN) -> dict:
    """Sec. 6.1 input pre-processing of full frames.

    Args:
        image: ``(B, 3, H, W)`` RGB in [0, 1].
        landmarks: ``(B, 68, 2)`` pixel coordinates of the 68 landmarks (detected or projected).
        size: N, the side of the network input.
        mask: optional ``(B, H, W)`` bool intersected with the landmark mask (a renderer's face mask).
        margin: see :func:`landmark_box`.
    Returns:
        dict with ``crop (B, 3, N, N)`` in [0, 1] with background and mouth interior set to 0,
        ``mask (B, N, N)`` bool, ``landmarks (B, 68, 2)`` in crop pixels, ``box (B, 3)``.
    """
    if image.ndim != 4 or image.shape[1] != 3:
        raise ValueError(f"image has shape {tuple(image.shape)}; expected (B, 3, H, W) RGB")
    if landmarks.shape != (image.shape[0], 68, 2):
        raise ValueError(f"landmarks have shape {tuple(landmarks.shape)}; expected ({image.shape[0]}, 68, 2)")
    if size < 8:
        raise ValueError(f"size must be >= 8 pixels; got {size}")
    lm = landmarks.to(image.dtype)
    box = landmark_box(lm, margin)
    crop = crop_to_box(image, box, size)
    lm_crop = _box_points(lm, box, size)
    m = landmark_mask(lm_crop, size, size)  # the landmark mask, drawn directly in the crop
    if mask is not None:
        m = m & (crop_to_box(mask[:, None].to(image.dtype), box, size)[:, 0] > 0.5)
    crop = crop * m[:, None].to(crop.dtype)
    return {"crop": crop.clamp(0, 1), "mask": m, "landmarks": lm_crop, "box": box}


def to_network(crop: torch.Tensor) -> torch.Tensor:
    """Colours [0, 1] (or uint8) -> the network's range [-0.5, 0.5] (Sec. 6.1), float32."""
    x = crop.float() / 255.0 if crop.dtype == torch.uint8 else crop.float()
    return x - 0.5


def from_network(x: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`to_network`: [-0.5, 0.5] -> [0, 1]."""
    return (x + 0.5).clamp(0, 1)


def render_crops(model, theta: torch.Tensor, size: int, render_size: int | None = None,
                 layout: ParamLayout | None = None, landmark_noise: float = 0.0,
                 generator: torch.Generator | None = None) -> dict:
    """Render ``theta (B, m)`` and pre-process it like a photo: :func:`network_input` of the render
    (landmark mask intersected with the renderer's input mask, so hidden background never enters).

    ``render_size`` (default ``ceil(1.5 N)``) is the frame the face is rendered in before cropping.
    ``landmark_noise`` > 0 crops and masks with landmarks moved by detector-like noise (a fraction of
    the landmark box side per point, plus half of it shared by all points, drawn from ``generator``),
    as a detector's landmarks on a photo would be; ``landmarks_frame`` stays the exact projection.
    Returns :func:`network_input`'s dict plus ``landmarks_frame (B, 68, 2)`` and ``render``.
    """
    render_size = render_size or int(math.ceil(1.5 * size))
    with torch.no_grad():
        r = render(model, theta, render_size, layout=layout, outputs=("screen",))
        lm = landmarks_2d(model, r.screen)
        lm_in = lm
        if landmark_noise > 0:
            from .wild import detector_noise

            lm_in = detector_noise(lm, landmark_noise, generator)
        out = network_input(r.image, lm_in, size, mask=r.input_mask)
    out["landmarks_frame"] = lm
    out["render"] = r
    return out


def augment_crops(crop: torch.Tensor, mask: torch.Tensor, seed: int, blur_px=(0.0, 1.0),
                  noise_std=(0.0, 0.025), jpeg_quality=(35, 95)) -> torch.Tensor:
    """Camera-like degradations of network crops (:func:`facelib.data.wild.degrade` with these ranges), so
    that a network trained on clean renders does not depend on their cleanness: Gaussian blur (sigma ``U(blur_px)``), sensor noise (std ``U(noise_std)``)
    and a JPEG round trip (quality ``U(jpeg_quality)``), each face drawn from ``seed``; the
    background stays 0.  They change no parameter of the face, so the labels stay exact.

    ``crop (B, 3, N, N)`` in [0, 1], ``mask (B, N, N)`` bool -> ``(B, 3, N, N)`` in [0, 1].
    """
    from .wild import degrade

    out = degrade(crop, int(seed), blur_px=blur_px, noise_std=noise_std, jpeg_quality=jpeg_quality)
    return out * mask[:, None].to(crop.dtype)


class FreshCorpus:
    """An endless Sec. 5 corpus: every mini-batch is drawn and rendered anew (the renderer makes a
    batch of 32 crops in about 60 ms on our CPU), so the network never sees a face twice and cannot
    memorise a fixed set.

    Mini-batch ``k`` of a run holds virtual faces ``k B .. k B + B - 1``; its parameters come from
    ``sampler(model, B, seed * 1_000_003 + k B)``, so a run is fixed by ``(model, seed, size, B)`` and
    the batch order.  ``augment``: a dict of :func:`augment_crops` ranges plus ``landmark_noise``
    (:func:`render_crops`), or ``None`` for clean crops.

    Interface of :func:`facelib.inversefacenet.train`: ``len`` (the faces a run can draw),
    ``indices(batch, iters, seed)`` and ``batch(index) -> (x (b, 3, N, N) in [-0.5, 0.5], theta (b, m))``;
    ``batch(index, landmarks=True)`` gives ``((x, landmark_features (b, 136)), theta)``.
    """

    def __init__(self, model, seed: int, size: int, render_size: int | None = None, sampler=None,
                 augment: dict | None = None, device=None):
        self.model, self.seed, self.size = model, int(seed), int(size)
        self.render_size = render_size or int(math.ceil(1.5 * size))
        self.sampler = sampler or sample_sec5
        self.layout = ParamLayout.from_model(model)
        self.augment = dict(augment) if augment else None
        self.device = device
        self.n = 2 ** 40

    def __len__(self) -> int:
        return self.n

    def indices(self, batch: int, iters: int, seed: int):
        """Consecutive blocks of virtual faces (``seed`` is not used: the corpus seed fixes the faces)."""
        for k in range(iters):
            yield torch.arange(k * batch, (k + 1) * batch)

    def batch(self, index: torch.Tensor, landmarks: bool = False):
        start = int(index[0])
        s = self.seed * 1_000_003 + start
        theta = self.sampler(self.model, int(index.numel()), seed=s).to(self.device or self.model.device,
                                                                        torch.float32)
        aug = self.augment or {}
        g = torch.Generator().manual_seed(s + 1)
        out = render_crops(self.model, theta, self.size, self.render_size, self.layout,
                           landmark_noise=aug.get("landmark_noise", 0.0), generator=g)
        crop = out["crop"].cpu()
        if self.augment:
            crop = augment_crops(crop, out["mask"].cpu(), s + 2,
                                 **{k: v for k, v in aug.items() if k != "landmark_noise"})
        x = to_network((crop * 255).round().to(torch.uint8))
        if landmarks:  # the landmarks the crop was made from (with the augmentation's detector noise)
            return (x, landmark_features(out["landmarks"].cpu())), theta.cpu()
        return x, theta.cpu()


def _default_noise(noise: float | None) -> float:
    """``noise``, or the wild set's detector noise when None; checked to be a finite number >= 0."""
    if noise is None:
        from .wild import WILD

        return float(WILD["landmark_noise"])
    if isinstance(noise, bool) or not isinstance(noise, (int, float)) or not math.isfinite(noise) or noise < 0:
        raise ValueError(f"landmark_noise must be a number >= 0; got {noise!r}")
    return float(noise)


def corpus_dir() -> Path:
    """Where corpus shards are cached: ``$FACELIB_CACHE/corpus`` or ``~/.cache/facelib/corpus``."""
    from ..model.open_model import cache_dir

    return cache_dir() / "corpus"


def _model_key(model) -> str:
    h = hashlib.sha256()
    for t in (model.mean_shape, model.shape_basis[:2], model.sigma_s, model.sigma_e, model.sigma_r):
        h.update(t.detach().cpu().double().numpy().tobytes())
    return h.hexdigest()[:12]


class SyntheticCorpus(torch.utils.data.Dataset):
    """The Sec. 5 training corpus ``{(I_i, theta_i)}``: ``n`` faces drawn with :func:`sample_sec5`.

    Chunk ``c`` (of ``chunk`` faces) uses seed ``seed * 1_000_003 + c``, so the corpus is fixed by
    ``(model, n, seed, size)`` and its first faces do not depend on ``n``'s rounding to chunks.

    Args:
        model: the face model.  n: number of faces.  seed: integer seed.  size: N of the crops.
        render_size: frame rendered before cropping (default ``ceil(1.5 N)``).
        cache: ``True`` caches shards in :func:`corpus_dir`; a path caches there; ``False`` keeps
            everything in memory only.
        chunk: faces rendered per batch.  progress: show a progress bar.  device: render device.
        sampler: a function ``(model, batch, seed) -> theta`` (default :func:`sample_sec5`); the
            corpus key includes its name.
        landmark_noise: detector noise put on the landmarks that :meth:`batch` gives a network with a
            landmark input (fraction of the box side; default the wild set's detector,
            :data:`facelib.data.wild.WILD`; the crops themselves are made from the exact landmarks).
    Items: ``(x (3, N, N) float32 in [-0.5, 0.5], theta (m,) float32)``.  Attributes ``render_s``
    (seconds it took to render, stored with the shards, so also known when they are loaded), ``images``
    ``(n, 3, N, N) uint8``, ``theta (n, m)``, ``masks (n, N, N) bool``, ``landmarks (n, 68, 2)``.
    """

    def __init__(self, model, n: int, seed: int, size: int, render_size: int | None = None,
                 cache=True, chunk: int = 256, progress: bool = True, device=None, sampler=None,
                 landmark_noise: float | None = None):
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"n must be a positive integer; got {n!r}")
        self.model, self.n, self.seed, self.size = model, n, int(seed), int(size)
        self.render_size = render_size or int(math.ceil(1.5 * size))
        self.sampler = sampler or sample_sec5
        self.layout = ParamLayout.from_model(model)
        self.chunk = int(chunk)
        self.device = device
        self.landmark_noise = _default_noise(landmark_noise)
        folder = None
        if cache:
            name = getattr(self.sampler, "__name__", "sampler")
            key = f"v{CORPUS_VERSION}-{_model_key(model)}-{name}-s{self.seed}-N{self.size}-R{self.render_size}-c{self.chunk}"
            folder = (corpus_dir() if cache is True else Path(cache)) / key
        self.folder = folder
        self._build(progress)

    def _shard_path(self, c: int) -> Path | None:
        return None if self.folder is None else self.folder / f"chunk{c:05d}.npz"

    def _render_chunk(self, c: int, count: int) -> dict:
        t0 = time.perf_counter()
        theta = self.sampler(self.model, self.chunk, seed=self.seed * 1_000_003 + c).to(
            self.device or self.model.device, torch.float32)
        out = render_crops(self.model, theta, self.size, self.render_size, self.layout)
        return {"images": (out["crop"] * 255).round().to(torch.uint8).cpu().numpy(),
                "render_s": np.array(time.perf_counter() - t0),
                "theta": theta.cpu().numpy(), "masks": out["mask"].cpu().numpy(),
                "landmarks": out["landmarks"].float().cpu().numpy()}

    def _load_or_render(self, c: int) -> dict:
        path = self._shard_path(c)
        if path is not None and path.exists():
            try:
                with np.load(path) as z:
                    return {k: z[k] for k in ("images", "theta", "masks", "landmarks", "render_s")}
            except Exception:  # a damaged shard is re-rendered, not trusted
                path.unlink(missing_ok=True)
        data = self._render_chunk(c, self.chunk)
        if path is not None:
            with atomic_path(path) as tmp, open(tmp, "wb") as f:  # a file object: np.savez adds no suffix
                np.savez(f, **data)
        return data

    def _build(self, progress: bool) -> None:
        from tqdm.auto import tqdm

        n_chunks = -(-self.n // self.chunk)
        parts = [self._load_or_render(c) for c in tqdm(range(n_chunks), desc="Sec. 5 corpus",
                                                       unit="chunk", disable=not progress)]
        self.render_s = float(sum(p["render_s"] for p in parts))  # time it took to render, even if loaded
        cat = {k: torch.from_numpy(np.concatenate([p[k] for p in parts])[: self.n]) for k in parts[0]
               if k != "render_s"}
        self.images, self.theta, self.masks, self.landmarks = (cat["images"], cat["theta"], cat["masks"],
                                                               cat["landmarks"])

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i):
        return to_network(self.images[i]), self.theta[i]

    def batch(self, index: torch.Tensor, landmarks: bool = False):
        """``(x (b, 3, N, N), theta (b, m))`` for an index tensor (faster than a DataLoader); with
        ``landmarks``, ``((x, l), theta)`` where ``l (b, 136)`` is :func:`landmark_input` of the faces'
        landmarks with detector noise (``landmark_noise`` of the box side, drawn for this batch)."""
        x = to_network(self.images[index])
        if landmarks:
            return (x, landmark_input(self.landmarks[index], self.landmark_noise, self.seed, index)), self.theta[index]
        return x, self.theta[index]
