"""Parameters: the face parameter space theta and its samplers (InverseFaceNet Eq. 1, Sec. 4.2, 5, 7).

InverseFaceNet parameterises a face image by (Eq. 1)::

    theta = (R, theta_s, theta_e, theta_r, theta_i)  in R^m,  m = 3 + N_s + N_e + N_r + 27

(350 with the paper's N_s = N_r = 128, N_e = 64).  :class:`ParamLayout` names the contiguous slices
of such a flat, batched ``(B, m)`` vector; its :meth:`ParamLayout.extended` form adds the translation,
scale and corrective entries that MoFA / Tewari et al. 2018 and Richardson et al. 2017 need.

Canonical entry names (short aliases, accepted wherever a name is looked up, in brackets):

=========================  ==========  =====================================================
``rotation``               ``R``       3 Euler angles (alpha, beta, gamma) in **radians**
``translation``            ``t``       3, mm (extended layout only)
``scale``                  ``s``       1 (extended layout only)
``shape``                  ``theta_s`` N_s, in units of sigma_s (Eq. 2)
``expression``             ``theta_e`` N_e, in units of sigma_e (Eq. 2)
``reflectance``            ``theta_r`` N_r, in units of sigma_r (Eq. 3)
``illumination``           ``theta_i`` 27 = 9 SH coefficients x RGB, coefficient-major (Eq. 4)
``corrective_geometry``    ``delta_g`` C (extended layout only)
``corrective_reflectance`` ``delta_r`` C (extended layout only)
=========================  ==========  =====================================================

Rotation (Sec. 4.2): ``R = Rot_xyz(alpha, beta, gamma) = Rz(gamma) @ Ry(beta) @ Rx(alpha)``, i.e. the
head is rotated successively about x, then y, then z.  In our head/camera frame x points right, y up
and z towards the camera, so alpha is pitch (nodding), beta is yaw (turning) and gamma is roll.  A
positive yaw of 90 degrees turns the face's forward direction +z into +x.

Theta stores angles in radians; the samplers draw them in degrees, as the paper states them, and
convert.  Every random draw takes a ``seed``: the numbers are drawn on the CPU in float64 from a
``torch.Generator`` seeded with it and then moved to the requested device, so they are the same on
every device.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .facemodel import FaceModel

__all__ = [
    "unlit",
    "ParamLayout",
    "ALIASES",
    "N_SH",
    "N_ILLUMINATION",
    "illumination_rgb",
    "light_colour_spread",
    "rot_x",
    "rot_y",
    "rot_z",
    "rot_xyz",
    "sample_sec5",
    "sec5_moments",
    "breed_children",
    "breed_parent_index",
    "SEC5_PITCH_YAW_DEG",
    "SEC5_ROLL_DEG",
    "SEC5_SH_CONSTANT",
    "SEC5_SH_OTHER",
    "SEC7_NOISE",
]

N_SH = 9  # second-order spherical harmonics: b^2 = 3^2 basis functions (Eq. 4)
N_ILLUMINATION = 3 * N_SH  # RGB colour per SH coefficient: 27 parameters (Sec. 4.2)

ALIASES = {
    "R": "rotation",
    "t": "translation",
    "s": "scale",
    "theta_s": "shape",
    "theta_e": "expression",
    "theta_r": "reflectance",
    "theta_i": "illumination",
    "delta_g": "corrective_geometry",
    "delta_r": "corrective_reflectance",
}

# Sec. 5 prior (degrees for angles).
SEC5_PITCH_YAW_DEG = 40.0  # alpha, beta ~ U(-40, 40) degrees
SEC5_ROLL_DEG = 15.0  # gamma ~ U(-15, 15) degrees
SEC5_SH_CONSTANT = (0.6, 1.2)  # theta_1^[i] ~ U(0.6, 1.2): average brightness
SEC5_SH_OTHER = 0.2  # theta_k^[i] ~ U(-0.2, 0.2), k = 2..9

# Sec. 7 breeding noise: half-width (degrees) of the uniform angle noise, std of the Gaussian ones.
SEC7_NOISE = {"rotation_deg": 5.0, "shape": 0.05, "expression": 0.1, "reflectance": 0.2,
              "illumination": 0.02}


# ---------------------------------------------------------------------------------- layout
@dataclass(frozen=True)
class ParamLayout:
    """Named contiguous slices of a flat, batched parameter vector ``theta`` ``(B, m)``.

    ``entries`` is a tuple of ``(name, size)`` pairs in storage order.  Build one with
    :meth:`inversefacenet`, :meth:`extended` or :meth:`from_model`.
    """

    entries: tuple

    def __post_init__(self):
        entries = tuple((str(n), int(k)) for n, k in self.entries)
        names = [n for n, _ in entries]
        if len(set(names)) != len(names):
            raise ValueError(f"parameter layout has duplicate entry names: {names}")
        for n, k in entries:
            if k < 0:
                raise ValueError(f"parameter entry {n!r} has negative size {k}")
        object.__setattr__(self, "entries", entries)

    # ---------------------------------------------------------------- constructors
    @classmethod
    def inversefacenet(cls, n_shape: int, n_expression: int, n_reflectance: int) -> "ParamLayout":
        """Eq. 1: ``(R, theta_s, theta_e, theta_r, theta_i)``, ``m = 3 + N_s + N_e + N_r + 27``."""
        return cls((("rotation", 3), ("shape", n_shape), ("expression", n_expression),
                    ("reflectance", n_reflectance), ("illumination", N_ILLUMINATION)))

    @classmethod
    def extended(cls, n_shape: int, n_expression: int, n_reflectance: int, n_corrective: int = 0,
                 translation: bool = True, scale: bool = True) -> "ParamLayout":
        """Eq. 1 plus the entries of MoFA / Tewari et al. 2018 and Richardson et al. 2017.

        Order: rotation (3), translation (3, if ``translation``), scale (1, if ``scale``), shape,
        expression, reflectance, illumination (27), corrective_geometry (C) and
        corrective_reflectance (C) (both only if ``n_corrective > 0``).
        """
        e = [("rotation", 3)]
        if translation:
            e.append(("translation", 3))
        if scale:
            e.append(("scale", 1))
        e += [("shape", n_shape), ("expression", n_expression), ("reflectance", n_reflectance),
              ("illumination", N_ILLUMINATION)]
        if n_corrective:
            e += [("corrective_geometry", n_corrective), ("corrective_reflectance", n_corrective)]
        return cls(tuple(e))

    @classmethod
    def from_model(cls, model: FaceModel, kind: str = "inversefacenet", **kwargs) -> "ParamLayout":
        """The layout for ``model``'s N_s, N_e, N_r; ``kind`` is ``"inversefacenet"`` or ``"extended"``
        (``kwargs`` go to :meth:`extended`)."""
        sizes = (model.n_shape, model.n_expression, model.n_reflectance)
        if kind == "inversefacenet":
            if kwargs:
                raise ValueError(f"layout kind 'inversefacenet' takes no options; got {sorted(kwargs)}")
            return cls.inversefacenet(*sizes)
        if kind == "extended":
            return cls.extended(*sizes, **kwargs)
        raise ValueError(f"unknown layout kind {kind!r}; expected 'inversefacenet' or 'extended'")

    # ---------------------------------------------------------------- queries
    @property
    def size(self) -> int:
        """m, the length of theta."""
        return sum(k for _, k in self.entries)

    @property
    def names(self) -> tuple:
        """Entry names in storage order."""
        return tuple(n for n, _ in self.entries)

    @property
    def sizes(self) -> dict:
        """name -> number of parameters."""
        return dict(self.entries)

    @property
    def slices(self) -> dict:
        """name -> ``slice`` into the last dimension of theta."""
        out, start = {}, 0
        for n, k in self.entries:
            out[n] = slice(start, start + k)
            start += k
        return out

    def canonical(self, name: str) -> str:
        """The canonical entry name of ``name`` or its alias; KeyError if the layout lacks it."""
        c = ALIASES.get(name, name)
        if c not in self.sizes:
            raise KeyError(f"parameter layout has no entry {name!r}; entries: {list(self.names)}")
        return c

    def __contains__(self, name) -> bool:
        return ALIASES.get(name, name) in self.sizes

    def __getitem__(self, name: str) -> slice:
        """The slice of entry ``name`` (aliases accepted)."""
        return self.slices[self.canonical(name)]

    def __repr__(self) -> str:
        body = ", ".join(f"{n}={k}" for n, k in self.entries)
        return f"ParamLayout({body}; size={self.size})"

    # ---------------------------------------------------------------- tensors
    def check(self, theta: torch.Tensor) -> torch.Tensor:
        """Raise ValueError unless ``theta`` is ``(..., m)``; returns it unchanged."""
        if not isinstance(theta, torch.Tensor) or theta.ndim < 1 or theta.shape[-1] != self.size:
            got = tuple(theta.shape) if isinstance(theta, torch.Tensor) else type(theta).__name__
            raise ValueError(f"theta has shape {got}; expected (B, {self.size}) for {self!r}")
        return theta

    def zeros(self, batch: int, device=None, dtype: torch.dtype | None = None) -> torch.Tensor:
        """``(B, m)`` zeros."""
        _check_batch(batch)
        return torch.zeros(batch, self.size, device=device, dtype=dtype)

    def unpack(self, theta: torch.Tensor) -> dict:
        """``(B, m)`` -> dict name -> ``(B, n)`` views (illumination ``(B, 27)``; see
        :func:`illumination_rgb`)."""
        self.check(theta)
        return {n: theta[..., sl] for n, sl in self.slices.items()}

    def pack(self, parts: dict, batch: int | None = None) -> torch.Tensor:
        """dict name -> ``(B, n)`` (or ``(n,)``, broadcast over B) -> ``(B, m)``.

        Missing entries are zeros; aliases are accepted; ``illumination`` may also be ``(B, 9, 3)``.
        ``batch`` is needed only when ``parts`` is empty.  Raises ValueError naming the entry on a
        wrong size, an unknown name, or inconsistent batch sizes.
        """
        canon = {}
        for name, v in parts.items():
            c = ALIASES.get(name, name)
            if c not in self.sizes:
                raise ValueError(f"parameter entry {name!r} is not in the layout; entries: "
                                 f"{list(self.names)}")
            if c in canon:
                raise ValueError(f"parameter entry {c!r} given twice (as a name and an alias)")
            v = torch.as_tensor(v)
            if c == "illumination" and v.ndim >= 2 and tuple(v.shape[-2:]) == (N_SH, 3):
                v = v.reshape(*v.shape[:-2], N_ILLUMINATION)
            n = self.sizes[c]
            if v.ndim not in (1, 2) or v.shape[-1] != n:
                raise ValueError(f"parameter entry {c!r} has shape {tuple(v.shape)}; expected (B, {n})")
            canon[c] = v
        batches = {v.shape[0] for v in canon.values() if v.ndim == 2}
        if batch is not None:
            _check_batch(batch)
            batches.add(int(batch))
        if len(batches) > 1:
            shapes = {c: tuple(v.shape) for c, v in canon.items()}
            raise ValueError(f"parameter entries have different batch sizes: {shapes}"
                             + (f" (batch={batch})" if batch is not None else ""))
        if not batches:
            if not canon and batch is None:
                raise ValueError("pack() got no entries; pass batch= to get zeros")
            batches = {1}
        B = batches.pop()
        ref = list(canon.values())
        dtype = torch.get_default_dtype()
        for v in ref:
            dtype = torch.promote_types(dtype, v.dtype) if v.is_floating_point() else dtype
        device = ref[0].device if ref else None
        cols = []
        for c, n in self.entries:
            v = canon.get(c)
            if v is None:
                cols.append(torch.zeros(B, n, device=device, dtype=dtype))
            else:
                cols.append(v.to(device=device, dtype=dtype).expand(B, n))
        return torch.cat(cols, dim=-1)


def unlit(theta: torch.Tensor, layout: "ParamLayout") -> torch.Tensor:
    """``theta (B, m)`` of ``layout`` with the light replaced by a white ambient term of irradiance 1
    (gamma_1 = 1 per channel, the rest 0; our H_1 = 1): rendered, it shows the albedo itself."""
    out = theta.clone()
    gamma = torch.zeros(theta.shape[0], 9, 3, dtype=theta.dtype, device=theta.device)
    gamma[:, 0] = 1.0
    out[:, layout["illumination"]] = gamma.reshape(-1, 27)
    return out


def light_colour_spread(theta_i: torch.Tensor) -> torch.Tensor:
    """``(B, 27)`` -> ``(B,)``: how coloured a light is, the spread (max - min over R, G, B) of its
    constant SH term gamma_1; 0 for white light."""
    g = illumination_rgb(theta_i)[..., 0, :]
    return g.max(-1).values - g.min(-1).values


def illumination_rgb(theta_i: torch.Tensor) -> torch.Tensor:
    """``(B, 27)`` -> ``(B, 9, 3)``: SH coefficient k's RGB colour ``theta_k^[i]`` (Eq. 4), channel last.

    The 27 numbers are stored coefficient-major: ``[c1_R, c1_G, c1_B, c2_R, ...]``.
    """
    if theta_i.shape[-1] != N_ILLUMINATION:
        raise ValueError(f"illumination has shape {tuple(theta_i.shape)}; expected (B, {N_ILLUMINATION})")
    return theta_i.reshape(*theta_i.shape[:-1], N_SH, 3)


# ---------------------------------------------------------------------------------- rotation
def rot_x(a: torch.Tensor) -> torch.Tensor:
    """``(B,)`` radians -> ``(B, 3, 3)`` rotation about x (pitch)."""
    c, s, o, z = torch.cos(a), torch.sin(a), torch.ones_like(a), torch.zeros_like(a)
    return torch.stack([o, z, z, z, c, -s, z, s, c], dim=-1).reshape(*a.shape, 3, 3)


def rot_y(b: torch.Tensor) -> torch.Tensor:
    """``(B,)`` radians -> ``(B, 3, 3)`` rotation about y (yaw): +z -> +x for +90 degrees."""
    c, s, o, z = torch.cos(b), torch.sin(b), torch.ones_like(b), torch.zeros_like(b)
    return torch.stack([c, z, s, z, o, z, -s, z, c], dim=-1).reshape(*b.shape, 3, 3)


def rot_z(g: torch.Tensor) -> torch.Tensor:
    """``(B,)`` radians -> ``(B, 3, 3)`` rotation about z (roll): +x -> +y for +90 degrees."""
    c, s, o, z = torch.cos(g), torch.sin(g), torch.ones_like(g), torch.zeros_like(g)
    return torch.stack([c, -s, z, s, c, z, z, z, o], dim=-1).reshape(*g.shape, 3, 3)


def rot_xyz(angles: torch.Tensor) -> torch.Tensor:
    """``(B, 3)`` Euler angles ``(alpha, beta, gamma)`` in radians -> ``(B, 3, 3)``.

    Sec. 4.2: ``R = Rot_xyz(alpha, beta, gamma)`` rotates successively about the x-axis (alpha, pitch),
    the y-axis (beta, yaw) and the z-axis (gamma, roll): ``R = Rz(gamma) @ Ry(beta) @ Rx(alpha)``,
    applied to column vectors (``x' = R x``).  Frame: x right, y up, z towards the camera.
    """
    if angles.shape[-1] != 3:
        raise ValueError(f"angles have shape {tuple(angles.shape)}; expected (B, 3) = (alpha, beta, gamma)")
    a, b, g = angles.unbind(-1)
    return rot_z(g) @ rot_y(b) @ rot_x(a)  # Sec. 4.2


# ---------------------------------------------------------------------------------- samplers
def _check_batch(batch) -> int:
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise ValueError(f"batch must be a positive integer; got {batch!r}")
    return batch


_SEED_RANGE = (-(2 ** 63), 2 ** 64)  # what torch.Generator.manual_seed accepts


def _generator(seed) -> torch.Generator:
    """A CPU generator seeded with ``seed``, an int in ``[-2**63, 2**64)``; ValueError otherwise."""
    if isinstance(seed, bool) or not isinstance(seed, int) or not _SEED_RANGE[0] <= seed < _SEED_RANGE[1]:
        raise ValueError(f"seed must be an integer in [-2**63, 2**64); got {seed!r}")
    g = torch.Generator(device="cpu")
    g.manual_seed(seed)
    return g


def _uniform(g: torch.Generator, shape, lo, hi) -> torch.Tensor:
    """U(lo, hi) on the CPU in float64; ``lo``/``hi`` may be tensors broadcasting against ``shape``."""
    u = torch.rand(shape, generator=g, dtype=torch.float64)
    return lo + (hi - lo) * u


def _normal(g: torch.Generator, shape, std: float) -> torch.Tensor:
    """N(0, std^2) on the CPU in float64."""
    return std * torch.randn(shape, generator=g, dtype=torch.float64)


def _layout_for(model_or_layout) -> ParamLayout:
    if isinstance(model_or_layout, ParamLayout):
        return model_or_layout
    if isinstance(model_or_layout, FaceModel):
        return ParamLayout.from_model(model_or_layout)
    raise ValueError(f"expected a FaceModel or a ParamLayout; got {type(model_or_layout).__name__}")


def _check_layout_matches(layout: ParamLayout, model: FaceModel) -> None:
    need = {"rotation": 3, "shape": model.n_shape, "expression": model.n_expression,
            "reflectance": model.n_reflectance, "illumination": N_ILLUMINATION}
    for n, k in need.items():
        if layout.sizes.get(n) != k:
            raise ValueError(f"layout entry {n!r} has size {layout.sizes.get(n)}; the face model "
                             f"{model.name!r} needs {k} ({layout!r})")


def sample_sec5(model: FaceModel, batch: int, seed: int, layout: ParamLayout | None = None,
                device=None, dtype: torch.dtype | None = None) -> torch.Tensor:
    """Sec. 5: ``B`` parameter vectors ``theta ~ P(R) P(theta_s) P(theta_e) P(theta_r) P(theta_i)``.

    alpha (pitch), beta (yaw) ~ U(-40, 40) degrees, gamma (roll) ~ U(-15, 15) degrees (stored in
    radians); theta_s, theta_r ~ N(0, 1); theta_e_j ~ U(-r_j, r_j) with ``r_j =
    model.expression_range[j]`` (the paper's U(-12, 12)) plus ``model.mouth_bias`` on component
    ``model.mouth_component`` (the paper's 4.8 on its first component); illumination monochrome:
    SH coefficient 1 ~ U(0.6, 1.2), coefficients 2..9 ~ U(-0.2, 0.2), the same value for R, G and B.

    Args:
        model: the face model (sizes, expression range, mouth bias).
        batch: B >= 1.
        seed: integer seed; draws are made on the CPU, so the result does not depend on ``device``.
        layout: default ``ParamLayout.from_model(model)``; any layout with the Eq. 1 entries sized
            for ``model`` (other entries, e.g. translation, are left at 0).
        device: default the model's device.  dtype: default ``torch.get_default_dtype()``.
    Returns:
        ``(B, m)`` theta.
    """
    _check_batch(batch)
    layout = ParamLayout.from_model(model) if layout is None else layout
    _check_layout_matches(layout, model)
    if model.n_expression and not 0 <= model.mouth_component < model.n_expression:
        raise ValueError(f"model.mouth_component is {model.mouth_component}; expected an index in "
                         f"[0, {model.n_expression})")
    g = _generator(seed)
    B = batch
    # Draw order is part of the definition (same seed -> same theta): rotation, shape, expression,
    # reflectance, illumination.
    lim = torch.tensor([SEC5_PITCH_YAW_DEG, SEC5_PITCH_YAW_DEG, SEC5_ROLL_DEG], dtype=torch.float64)
    angles = torch.deg2rad(_uniform(g, (B, 3), -lim, lim))
    theta_s = _normal(g, (B, model.n_shape), 1.0)
    r = model.expression_range.detach().to("cpu", torch.float64)
    theta_e = _uniform(g, (B, model.n_expression), -r, r)
    if model.n_expression:
        theta_e[:, model.mouth_component] += model.mouth_bias  # "prevent closing the mouth"
    theta_r = _normal(g, (B, model.n_reflectance), 1.0)
    lo = torch.full((N_SH,), -SEC5_SH_OTHER, dtype=torch.float64)
    hi = torch.full((N_SH,), SEC5_SH_OTHER, dtype=torch.float64)
    lo[0], hi[0] = SEC5_SH_CONSTANT
    sh = _uniform(g, (B, N_SH, 1), lo[:, None], hi[:, None])
    theta_i = sh.expand(B, N_SH, 3).reshape(B, N_ILLUMINATION)  # monochrome: R = G = B
    theta = layout.pack({"rotation": angles, "shape": theta_s, "expression": theta_e,
                         "reflectance": theta_r, "illumination": theta_i})
    device = model.device if device is None else device
    return theta.to(device=device, dtype=dtype or torch.get_default_dtype())


def sec5_moments(model: FaceModel, layout: ParamLayout | None = None) -> tuple:
    """Mean and standard deviation of each parameter under :func:`sample_sec5`'s prior, exactly
    (uniform ``U(lo, hi)``: mean ``(lo + hi) / 2``, std ``(hi - lo) / sqrt(12)``; normal: 0 and 1).

    Returns ``(mean (m,), std (m,))`` float32 on the CPU in ``layout``'s order (default the model's
    Eq. 1 layout; entries the prior does not draw get mean 0 and std 1).
    """
    layout = ParamLayout.from_model(model) if layout is None else layout
    _check_layout_matches(layout, model)
    u = lambda lo, hi: ((lo + hi) / 2, (hi - lo) / math.sqrt(12))
    mean = torch.zeros(layout.size, dtype=torch.float64)
    std = torch.ones(layout.size, dtype=torch.float64)
    sl = layout.slices
    if "rotation" in sl:
        lim = torch.deg2rad(torch.tensor([SEC5_PITCH_YAW_DEG, SEC5_PITCH_YAW_DEG, SEC5_ROLL_DEG], dtype=torch.float64))
        mean[sl["rotation"]], std[sl["rotation"]] = u(-lim, lim)
    if "expression" in sl and model.n_expression:
        r = model.expression_range.detach().to("cpu", torch.float64)
        m_e, s_e = u(-r, r)
        m_e = m_e.clone()
        m_e[model.mouth_component] += model.mouth_bias
        mean[sl["expression"]], std[sl["expression"]] = m_e, s_e
    if "illumination" in sl:
        lo = torch.full((N_SH,), -SEC5_SH_OTHER, dtype=torch.float64)
        hi = torch.full((N_SH,), SEC5_SH_OTHER, dtype=torch.float64)
        lo[0], hi[0] = SEC5_SH_CONSTANT
        m_i, s_i = u(lo, hi)
        mean[sl["illumination"]] = m_i[:, None].expand(N_SH, 3).reshape(-1)
        std[sl["illumination"]] = s_i[:, None].expand(N_SH, 3).reshape(-1)
    return mean.float(), std.float()


def breed_parent_index(n_parents: int, children: int = 2, device=None) -> torch.Tensor:
    """``(children * n_parents,)`` int64: row i of :func:`breed_children`'s output is a child of
    parent ``i // children``."""
    _check_batch(n_parents)
    _check_children(children)
    return torch.arange(n_parents, device=device).repeat_interleave(children)


def _check_children(children) -> int:
    if isinstance(children, bool) or not isinstance(children, int) or children < 1:
        raise ValueError(f"children must be a positive integer; got {children!r}")
    return children


def breed_children(theta: torch.Tensor, model: FaceModel | ParamLayout, seed: int,
                   children: int = 2) -> torch.Tensor:
    """Sec. 7, step 2 (resample_parameters): ``children`` perturbed copies of each parent.

    Noise: alpha, beta, gamma + U(-5, 5) degrees; theta_s + N(0, 0.05); theta_e + N(0, 0.1);
    theta_r + N(0, 0.2); all 27 illumination numbers + N(0, 0.02), independently per channel (this
    is what makes the illumination coloured).  Other entries of an extended layout are copied.

    Args:
        theta: ``(B, m)`` parent parameters (e.g. the network's estimates on real photos).
        model: the face model or the :class:`ParamLayout` of ``theta``.
        seed: integer seed; noise is drawn on the CPU in float64, then moved to theta's device.
        children: perturbed copies per parent (the paper uses 2).
    Returns:
        ``(children * B, m)``; rows ``children*p .. children*p + children - 1`` are the children of
        parent ``p`` (see :func:`breed_parent_index`).
    """
    layout = _layout_for(model)
    layout.check(theta)
    if theta.ndim != 2:
        raise ValueError(f"theta has shape {tuple(theta.shape)}; expected (B, {layout.size})")
    _check_batch(theta.shape[0])
    _check_children(children)
    sizes = layout.sizes
    missing = [n for n in ("rotation", "shape", "expression", "reflectance", "illumination")
               if n not in sizes]
    if missing:
        raise ValueError(f"layout {layout!r} lacks the Eq. 1 entries {missing} that breeding perturbs")
    g = _generator(seed)
    N = children * theta.shape[0]
    noise = {}
    d = SEC7_NOISE["rotation_deg"]
    noise["rotation"] = torch.deg2rad(_uniform(g, (N, sizes["rotation"]), -d, d))
    for name in ("shape", "expression", "reflectance", "illumination"):
        noise[name] = _normal(g, (N, sizes[name]), SEC7_NOISE[name])
    delta = layout.pack(noise).to(device=theta.device, dtype=theta.dtype)
    return theta.repeat_interleave(children, dim=0) + delta  # Sec. 7
