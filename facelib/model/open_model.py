"""Model: the ``open`` face model, built procedurally by our own code (not learned from scans).

How it is built (the book's chapter 1 tells the same story):

1. **Template.** A grid over an unwrapped face domain ``(U, V)`` in millimetres (``U`` along the
   horizontal circumference, ear to ear front; ``V`` up, chin to forehead; denser in the middle)
   is wrapped around a head ellipsoid: a vertex at ``(U, V)`` lies in the direction
   ``d(U / R0, V / R0)`` from the head centre at the distance ``rho_base(d) + h(U, V)``, where the
   *feature field* ``h`` (a sum of smooth bumps and profiles) adds the brow ridge, eye sockets, the
   eyelids over the eyeballs, the nose with bridge, tip, alae and nostrils, the cheek bones, the
   lips, the chin and the jaw line.  Two almond-shaped holes (the eyelid openings) and a thin slit
   (the mouth) are cut out of the grid; behind each a closed pocket is attached (conjunctiva bags,
   mouth cavity), and a sphere per eye (sclera, iris, pupil) sits behind the lids.  The result is an
   edge-manifold mesh with consistent counter-clockwise winding seen from outside; its only boundary
   is the outer rim of the face.
2. **Shape (Eq. 2, sigma_s).** ``N_ID`` identities are drawn from a population of anatomical
   parameters (face width / length / depth, jaw width, nose length / width / projection, eye spacing
   / height / depth, brow height and prominence, cheeks, chin, lips, mouth width) plus smooth
   localised random fields (sums of random Gaussian bumps), each evaluated on the same template so
   that all identities are in dense correspondence.  PCA of the population gives the orthonormal
   basis and ``sigma_s``.
3. **Expression (Eq. 2, sigma_e).** ``len(BLENDSHAPES)`` artist-style blendshapes (jaw open, smile,
   frown, brows, blinks, pucker, funnel, puff, sneer, ...) are displacement fields of the mean face;
   like InverseFaceNet's 76 blendshapes -> 64 components, we compress them by PCA (no mean removal)
   to ``N_EXPR`` components with ``sigma_e = s / sqrt(K - 1)``.  The component that opens the mouth
   is found by projecting the jaw-open blendshape and stored as ``mouth_component`` (sign fixed so
   that + opens).
4. **Reflectance (Eq. 3, sigma_r).** ``N_APP`` appearances: skin tone over a wide range (light to
   dark), hue, redness of cheeks and nose, lip colour, brow hair colour and density, iris colour,
   stubble, and smooth random blotches; PCA gives the basis and ``sigma_r``.

What it is not: it was not learned from 3D scans of people.  Its statistics are those of our
procedural population, chosen by hand to look plausible; identities far from the mean, skin tones,
fine wrinkles, ears, hair, teeth and the back of the head are absent or schematic.

Everything is deterministic: the same code gives the same bytes (see ``tests/test_open_model.py``).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .facemodel import FaceModel, orthonormal_basis

BUILDER_VERSION = "open-1"
R0 = 95.0  # mm, radius that unwraps (U, V) into angles
N_ID = 256  # identities in the shape population
N_APP = 256  # appearances in the reflectance population
N_SHAPE = 128  # kept shape components (the paper's N_s)
N_REFL = 128  # kept reflectance components (the paper's N_r)
N_EXPR = 32  # kept expression components (compressed from the blendshapes)
GRID = (161, 133)  # template grid (U, V)
U_MAX = 150.0
V_LO, V_HI = -112.0, 98.0
SEED = 20180101

EYE_C = (32.0, 21.0)  # canonical eye centre (|U|, V), mm
EYE_HW, EYE_HU, EYE_HL = 14.5, 5.2, 4.4  # almond half width, upper and lower half heights
EYE_R = 12.0  # eyeball radius
MOUTH_V, MOUTH_HW, MOUTH_H = -45.0, 24.0, 0.8  # slit centre line, half width, half opening
FACE_U = 110.0  # |U| beyond this is the side of the head, outside the face mask
JAW_PIVOT = np.array([0.0, 8.0, 5.0])  # temporo-mandibular axis (x-parallel) in mm

REGIONS = ["forehead", "brow", "eyelid", "eyeball", "nose", "cheek", "lips", "mouth_interior",
           "chin", "jaw", "side", "conjunctiva"]


# --------------------------------------------------------------------------------- small helpers
def _g(U, V, u0, v0, su, sv):
    return np.exp(-0.5 * (((U - u0) / su) ** 2 + ((V - v0) / sv) ** 2))


def _smooth(x, a, b):
    """Smoothstep from 0 at ``a`` to 1 at ``b`` (either order)."""
    t = np.clip((x - a) / (b - a), 0.0, 1.0)
    return t * t * (3 - 2 * t)


def _dirs(U, V):
    phi, th = U / R0, V / R0
    return np.stack([np.cos(th) * np.sin(phi), np.sin(th), np.cos(th) * np.cos(phi)], -1)


def _eye_q(U, V, du=0.0, dv=0.0):
    """Normalised almond distance of (U, V) from each eye (q < 1 inside), and the side sign."""
    s = np.where(U >= 0, 1.0, -1.0)
    x = (U - s * (EYE_C[0] + du)) / EYE_HW
    y = V - (EYE_C[1] + dv)
    y = np.where(y >= 0, y / EYE_HU, y / EYE_HL)
    # a slightly pointed almond: |x|^1.6 makes the corners sharper than an ellipse
    return np.sqrt(np.abs(x) ** 1.6 + y * y), s


def _mouth_q(U, V):
    t = np.clip(np.abs(U) / MOUTH_HW, 0, 1.5)
    half = MOUTH_H * np.sqrt(np.clip(1 - t ** 2, 1e-6, None)) + 0.05
    return np.maximum(np.abs(U) / MOUTH_HW, np.abs(V - MOUTH_V) / half)


def _seg_dist(U, V, a, b):
    a, b = np.asarray(a, float), np.asarray(b, float)
    p = np.stack([U, V], -1) - a
    ab = b - a
    t = np.clip((p @ ab) / (ab @ ab), 0, 1)
    return np.linalg.norm(p - t[..., None] * ab, axis=-1)


# ------------------------------------------------------------------------------ identity params
IDENTITY_MEAN = dict(
    width=76.0, height=116.0, depth=98.0, jaw=0.22, forehead=0.08,
    eye_spacing=0.0, eye_height=0.0, eye_depth=0.0,
    brow_height=0.0, brow_prom=5.0,
    nose_len=0.0, nose_width=1.0, nose_proj=1.0, nose_tip=0.0, alae=1.0, nose_bridge=1.0,
    cheekbone=5.0, cheek=4.0, chin=12.0, chin_height=0.0, chin_width=1.0,
    lip_upper=1.0, lip_lower=1.0, mouth_width=0.0, mouth_height=0.0, arch=8.0,
)
IDENTITY_SD = dict(
    width=4.0, height=5.0, depth=4.0, jaw=0.05, forehead=0.03,
    eye_spacing=2.2, eye_height=2.0, eye_depth=1.5,
    brow_height=2.0, brow_prom=1.5,
    nose_len=3.0, nose_width=0.12, nose_proj=0.12, nose_tip=2.0, alae=0.18, nose_bridge=0.25,
    cheekbone=1.5, cheek=1.8, chin=3.0, chin_height=3.0, chin_width=0.12,
    lip_upper=0.2, lip_lower=0.2, mouth_width=2.5, mouth_height=2.0, arch=2.0,
)
N_RBF = 48  # smooth localised random field: bumps per identity


def sample_identity(rng: np.random.Generator) -> dict:
    """One identity of the procedural population: anatomical parameters plus a random field."""
    p = {k: IDENTITY_MEAN[k] + IDENTITY_SD[k] * rng.standard_normal() for k in IDENTITY_MEAN}
    p["rbf_c"] = np.stack([rng.uniform(-70, 70, N_RBF), rng.uniform(-95, 85, N_RBF)], -1)
    p["rbf_s"] = rng.uniform(7, 22, N_RBF)
    p["rbf_a"] = rng.standard_normal(N_RBF) * 1.1
    return p


def mean_identity() -> dict:
    p = dict(IDENTITY_MEAN)
    p["rbf_c"], p["rbf_s"], p["rbf_a"] = np.zeros((0, 2)), np.ones(0), np.zeros(0)
    return p


# ------------------------------------------------------------------------------- feature field
def _warp(U, V, p):
    """Identity warp of the domain: moves eyes, nose tip, mouth and chin (mm)."""
    s = np.sign(U)
    dU = s * p["eye_spacing"] * _g(np.abs(U), V, EYE_C[0], EYE_C[1], 18, 16)
    dU = dU + U * (p["mouth_width"] / MOUTH_HW) * _g(U, V, 0, MOUTH_V, 30, 12) * 0.5
    dV = (p["eye_height"] * _g(np.abs(U), V, EYE_C[0], EYE_C[1], 22, 14)
          + p["brow_height"] * _g(np.abs(U), V, 30, 38, 25, 6)
          - p["nose_len"] * _g(U, V, 0, -18, 14, 10)
          + p["mouth_height"] * _g(U, V, 0, MOUTH_V, 30, 10)
          - p["chin_height"] * _g(U, V, 0, -82, 30, 14))
    if "tilt" in p:  # other populations only (facelib.model.foreign): a lopsided face, which the open one lacks
        dU = dU + p["shear"] * (V / 100.0)
        dV = dV + p["tilt"] * (U / 70.0)
    return U + dU, V + dV


def _rho_base(d, Vw, p):
    """Head ellipsoid radius along directions ``d`` (..., 3); width tapers to the jaw."""
    A = p["width"] * (1 - p["jaw"] * _smooth(Vw, -15, -75)) * (1 - p["forehead"] * _smooth(Vw, 30, 95))
    B, C = p["height"], p["depth"]
    return 1.0 / np.sqrt((d[..., 0] / A) ** 2 + (d[..., 1] / B) ** 2 + (d[..., 2] / C) ** 2)


def _nose(U, V, p):
    vn, vt, vs = 24.0, -15.0 - p["nose_tip"] * 0.3, -25.0
    hn, ht, hs = 5.0 * p["nose_bridge"], 24.0 * p["nose_proj"], 2.0
    t = np.clip((vn - V) / (vn - vt), 0, 1)
    h_upper = hn + (ht - hn) * t ** 1.25
    r = np.clip((vt - V) / (vt - vs), 0, 1)
    h_lower = hs + (ht - hs) * np.sqrt(np.clip(1 - r ** 2.2, 0, 1))
    h = np.where(V >= vt, h_upper, h_lower)
    h = h * _smooth(V, 42, vn - 4) * _smooth(V, vs - 3, vs + 0.5)
    w = p["nose_width"] * np.interp(V, [vs - 5, vs, vt, 0, vn, 40], [10.0, 11.5, 11.5, 8.5, 7.5, 12])
    h = h * np.exp(-np.abs(U / w) ** 2.3)
    h = h + 3.0 * p["nose_proj"] * _g(U, V, 0, vt + 1.5, 7, 5)  # the tip's ball
    alae = p["alae"] * 8.0 * _g(np.abs(U), V, 14.5 * p["nose_width"], -19.0, 5.5, 4.5)
    crease = -2.0 * np.exp(-0.5 * ((np.sqrt(((np.abs(U) - 14.5 * p["nose_width"]) / 8.5) ** 2
                                             + ((V + 19) / 7.0) ** 2) - 1.0) / 0.12) ** 2)
    nostril = -6.0 * _g(np.abs(U), V, 6.5 * p["nose_width"], -23.0, 3.0, 1.6)
    return h + alae + crease * (V < -14) + nostril


def _lips(U, V, p, lower):
    """Upper and lower lip profiles; ``lower`` marks vertices below the mouth slit."""
    a = np.abs(U) / MOUTH_HW
    win = np.clip(1 - a ** 2.5, 0, 1) ** 0.7
    dv = V - MOUTH_V
    h_up = 8.0 * (1 - 0.35 * a) * p["lip_upper"]
    up = 5.5 * p["lip_upper"] * np.exp(-np.clip(dv, 0, None) ** 2 / (2 * (h_up / 2.2) ** 2))
    up = up * win * (dv >= 0) * (1 - 0.35 * np.exp(-(U / 2.5) ** 2) * _smooth(dv, 4, 8))
    h_lo = 9.5 * (1 - 0.3 * a) * p["lip_lower"]
    lo = 5.5 * p["lip_lower"] * np.exp(-np.clip(-dv - 2.5, 0, None) ** 2 / (2 * (h_lo / 2.5) ** 2))
    lo = lo * win * (dv < 0) * _smooth(-dv, -0.5, 1.5)
    edge = np.where(lower, lo, up)
    # the lips roll inward toward the slit: pull the last millimetre back
    edge = edge - 2.0 * np.exp(-(dv / 1.3) ** 2) * win
    philtrum = -1.2 * np.exp(-(U / 3.0) ** 2) * _smooth(V, -26, -30) * _smooth(V, -38, -35)
    columns = 0.8 * np.exp(-((np.abs(U) - 5.5) / 1.6) ** 2) * _smooth(V, -26, -30) * _smooth(V, -38, -35)
    corners = -2.5 * _g(np.abs(U), V, MOUTH_HW + 1, MOUTH_V, 3.5, 3.5)
    return edge + philtrum + columns + corners


def feature_field(U, V, p, lower):
    """The feature field ``h(U, V)`` in mm added to the head ellipsoid (all but the eye domes)."""
    aU = np.abs(U)
    h = p["arch"] * _g(U, V, 0, -42, 32, 22)  # dental arch
    h = h + 3.0 * _g(U, V, 0, 70, 50, 30)  # forehead
    h = h + p["brow_prom"] * _g(aU, V, 24, 37, 20, 5.5) * _smooth(aU, 62, 40)  # brow ridge
    h = h + 2.0 * _g(U, V, 0, 31, 9, 6)  # glabella
    h = h - 9.0 * _g(aU, V, EYE_C[0], EYE_C[1] - 1, 17, 11)  # orbit
    h = h - 3.0 * _g(aU, V, 62, 42, 9, 12)  # temples
    h = h + p["cheekbone"] * _g(aU, V, 50, 6, 15, 11)
    h = h + p["cheek"] * _g(aU, V, 38, -18, 16, 16)
    h = h - 1.6 * np.exp(-0.5 * (_seg_dist(aU, V, (19, -22), (30, -50)) / 2.5) ** 2)  # nasolabial
    h = h + _nose(U, V, p) + _lips(U, V, p, lower)
    h = h - 3.0 * _g(U, V, 0, -60, 15, 3.5)  # mentolabial sulcus
    h = h + p["chin"] * _g(U, V, 0, -78, 17 * p["chin_width"], 9)  # chin
    h = h + 3.0 * _g(aU, V, 52, -70, 12, 10)  # jaw angle / masseter
    return h


# ------------------------------------------------------------------------------------- template
@dataclass
class Template:
    """Connectivity and canonical coordinates of the open model (independent of identity)."""

    U: np.ndarray  # (Vs,) canonical U of surface vertices
    V: np.ndarray
    lower: np.ndarray  # (Vs,) bool, below the mouth slit
    tris: np.ndarray  # (T, 3) all triangles (surface, pockets, eyeballs)
    n_surface: int
    loops: dict  # name -> ordered boundary loop of surface vertex ids
    pockets: dict  # name -> (ring spec) for pocket vertices
    pocket_index: dict  # name -> (first vertex id, n vertices)
    eyeball_index: dict  # side -> (first vertex id, n vertices)
    eyeball_dirs: np.ndarray  # (Ne, 3) unit directions of a sphere vertex, pole = +z
    n_vertices: int


def _grid_axis(n, lo, hi, centre, power=0.45):
    s = np.linspace(-1, 1, n)
    g = s * (1 - power + power * s * s)
    left, right = centre - lo, hi - centre
    return np.where(g < 0, centre + g * left, centre + g * right)


def _remove_holes(U, V, tris, inside):
    """Drop triangles touching ``inside`` vertices until every boundary vertex is manifold."""
    while True:
        keep = ~inside[tris].any(1)
        t = tris[keep]
        e = np.concatenate([t[:, [0, 1]], t[:, [1, 2]], t[:, [2, 0]]])
        key = np.sort(e, 1)
        uniq, cnt = np.unique(key, axis=0, return_counts=True)
        bnd = uniq[cnt == 1]
        deg = np.bincount(bnd.ravel(), minlength=len(U))
        bad = deg > 2
        if not bad.any():
            return t
        inside = inside | bad


def _boundary_loops(tris):
    """Ordered boundary loops; each follows the winding of its adjacent triangle (a -> b)."""
    e = np.concatenate([tris[:, [0, 1]], tris[:, [1, 2]], tris[:, [2, 0]]])
    s = {(int(a), int(b)) for a, b in e}
    nxt = {a: b for (a, b) in s if (b, a) not in s}
    loops, seen = [], set()
    for start in sorted(nxt):
        if start in seen:
            continue
        loop, v = [], start
        while v not in seen:
            seen.add(v)
            loop.append(v)
            v = nxt[v]
        loops.append(np.array(loop))
    return loops


def _sphere(n_lat_angles):
    """Unit sphere rings at polar angles (degrees, first 0 = front pole, last 180)."""
    ang = np.deg2rad(np.asarray(n_lat_angles, float))
    nlon = 32
    verts = [np.array([[0, 0, 1.0]])]
    for a in ang[1:-1]:
        lon = np.linspace(0, 2 * np.pi, nlon, endpoint=False)
        verts.append(np.stack([np.sin(a) * np.cos(lon), np.sin(a) * np.sin(lon), np.full(nlon, np.cos(a))], -1))
    verts.append(np.array([[0, 0, -1.0]]))
    P = np.concatenate(verts)
    nr = len(ang) - 2
    tris = []
    for j in range(nlon):  # front cap, ccw seen from +z (outside)
        tris.append([0, 1 + j, 1 + (j + 1) % nlon])
    for r in range(nr - 1):
        a0, b0 = 1 + r * nlon, 1 + (r + 1) * nlon
        for j in range(nlon):
            j1 = (j + 1) % nlon
            tris += [[a0 + j, b0 + j, b0 + j1], [a0 + j, b0 + j1, a0 + j1]]
    last, a0 = len(P) - 1, 1 + (nr - 1) * nlon
    for j in range(nlon):
        tris.append([last, a0 + (j + 1) % nlon, a0 + j])
    return P, np.array(tris)


POCKET_RINGS = {  # (scale toward the loop centroid, depth behind it in mm)
    "mouth": [(0.97, 2.5), (0.85, 7.0), (0.62, 12.0), (0.32, 16.0)],
    "eye_right": [(0.96, 1.5), (0.8, 5.0), (0.5, 9.0)],
    "eye_left": [(0.96, 1.5), (0.8, 5.0), (0.5, 9.0)],
}


def build_template() -> Template:
    nu, nv = GRID
    us = _grid_axis(nu, -U_MAX, U_MAX, 0.0)
    vs = _grid_axis(nv, V_LO, V_HI, -10.0)
    U, V = np.meshgrid(us, vs, indexing="xy")
    U, V = U.ravel(), V.ravel()
    idx = np.arange(nu * nv).reshape(nv, nu)
    a, b, c, d = idx[:-1, :-1], idx[:-1, 1:], idx[1:, :-1], idx[1:, 1:]
    # rows go up in V, columns right in U: (a, b, d) is counter-clockwise seen from +z (outside)
    tris = np.concatenate([np.stack([a, b, d], -1).reshape(-1, 3), np.stack([a, d, c], -1).reshape(-1, 3)])
    qe, _ = _eye_q(U, V)
    inside = (qe < 1.0) | (_mouth_q(U, V) < 1.0)
    tris = _remove_holes(U, V, tris, inside)
    used = np.zeros(len(U), bool)
    used[tris.ravel()] = True
    remap = -np.ones(len(U), np.int64)
    remap[used] = np.arange(used.sum())
    U, V, tris = U[used], V[used], remap[tris]
    loops = _boundary_loops(tris)
    named = {}
    for lp in loops:
        cu, cv = U[lp].mean(), V[lp].mean()
        if len(lp) > 200:
            named["outer"] = lp
        elif abs(cv - MOUTH_V) < 5 and abs(cu) < 5:
            named["mouth"] = lp
        elif cu < 0:
            named["eye_right"] = lp  # subject's right = image left = -x
        else:
            named["eye_left"] = lp
    assert set(named) == {"outer", "mouth", "eye_right", "eye_left"}, sorted(named)
    # snap hole boundary vertices onto their almond / slit curve (radially in (U, V))
    for name in ("mouth", "eye_right", "eye_left"):
        lp = named[name]
        if name == "mouth":
            cu, cv = 0.0, MOUTH_V
            f = lambda uu, vv: _mouth_q(uu, vv)  # noqa: E731
        else:
            cu, cv = np.sign(U[lp].mean()) * EYE_C[0], EYE_C[1]
            f = lambda uu, vv: _eye_q(uu, vv)[0]  # noqa: E731
        du, dv = U[lp] - cu, V[lp] - cv
        lo, hi = np.zeros(len(lp)), np.ones(len(lp))
        for _ in range(40):
            mid = 0.5 * (lo + hi)
            out = f(cu + mid * du, cv + mid * dv) >= 1.0
            hi, lo = np.where(out, mid, hi), np.where(out, lo, mid)
        U[lp], V[lp] = cu + hi * du, cv + hi * dv
    lower = V < MOUTH_V
    n_surface = len(U)
    all_tris = [tris]
    nxt = n_surface
    pocket_index = {}
    for name in ("mouth", "eye_right", "eye_left"):
        lp = named[name]
        n, rings = len(lp), POCKET_RINGS[name]
        prev = lp
        first = nxt
        for _ in rings:
            cur = np.arange(nxt, nxt + n)
            nxt += n
            # the hole loop runs a -> b along its face triangle; the pocket must use b -> a
            for j in range(n):
                j1 = (j + 1) % n
                all_tris.append(np.array([[prev[j1], prev[j], cur[j]], [prev[j1], cur[j], cur[j1]]]))
            prev = cur
        centre = nxt
        nxt += 1
        for j in range(n):
            all_tris.append(np.array([[prev[(j + 1) % n], prev[j], centre]]))
        pocket_index[name] = (first, nxt - first)
    sp, st = _sphere([0, 6, 12, 18, 24, 30, 36, 45, 60, 80, 100, 125, 150, 180])
    eyeball_index = {}
    for side in ("eye_right", "eye_left"):
        eyeball_index[side] = (nxt, len(sp))
        all_tris.append(st + nxt)
        nxt += len(sp)
    return Template(U=U, V=V, lower=lower, tris=np.concatenate(all_tris).astype(np.int64),
                    n_surface=n_surface, loops=named, pockets=POCKET_RINGS, pocket_index=pocket_index,
                    eyeball_index=eyeball_index, eyeball_dirs=sp, n_vertices=nxt)


# ------------------------------------------------------------------------------------ embedding
def _eye_centre(p, side):
    """Eyeball centre (3,) for ``side`` = +1 (left, +x) or -1 (right)."""
    Uw, Vw = _warp(np.array([side * EYE_C[0]]), np.array([EYE_C[1]]), p)
    d = _dirs(Uw, Vw)
    rho = _rho_base(d, Vw, p)[0] - 4.0 + p["eye_depth"]
    return d[0] * (rho - EYE_R - 0.8), d[0], rho


def surface(T: Template, p: dict, dU=None, dV=None, lower=None) -> np.ndarray:
    """Surface vertex positions (n_surface, 3) mm for identity ``p`` and a domain offset (dU, dV)."""
    U = T.U + (0 if dU is None else dU)
    V = T.V + (0 if dV is None else dV)
    lower = T.lower if lower is None else lower
    Uw, Vw = _warp(U, V, p)
    d = _dirs(Uw, Vw)
    rho = _rho_base(d, Vw, p) + feature_field(U, V, p, lower)
    if len(p["rbf_a"]):
        c, s, a = p["rbf_c"], p["rbf_s"], p["rbf_a"]
        r2 = ((U[:, None] - c[None, :, 0]) ** 2 + (V[:, None] - c[None, :, 1]) ** 2) / s[None] ** 2
        rho = rho + np.exp(-0.5 * r2) @ a * _smooth(np.abs(U), 110, 80)
    # eyelids: a dome over each eyeball (radius 20 mm) blended into the orbit
    q, side = _eye_q(U, V)
    w = _smooth(q, 1.9, 1.2)
    for sd in (-1.0, 1.0):
        E, de, rho_top = _eye_centre(p, sd)
        m = (side == sd) & (w > 0)
        dist = np.hypot(U[m] - sd * EYE_C[0], (V[m] - EYE_C[1]) * 1.05)
        dome = rho_top + 0.6 - (20.0 - np.sqrt(np.clip(400.0 - dist ** 2, 0, None)))
        dome = dome + 1.2 * _smooth(q[m], 0.9, 1.3) * _smooth(q[m], 2.0, 1.4)  # lid rims
        rho[m] = (1 - w[m]) * rho[m] + w[m] * dome
    return rho[:, None] * d


def _pockets(T: Template, S: np.ndarray, p: dict, eye_centres) -> list:
    out = []
    for name in ("mouth", "eye_right", "eye_left"):
        L = S[T.loops[name]]
        c = L.mean(0)
        if name == "mouth":
            back = np.array([0.0, 0.0, -1.0])
        else:
            back = -eye_centres[name][1]
        for sc, depth in T.pockets[name]:
            out.append(c + sc * (L - c) + depth * back)
        last_depth = T.pockets[name][-1][1]
        out.append((c + (last_depth + 3.0) * back)[None])
    return out


def positions(T: Template, p: dict, expr: "dict | None" = None) -> np.ndarray:
    """All vertex positions (V, 3) for identity ``p`` and optional expression (from BLENDSHAPES)."""
    dU = dV = None
    if expr is not None and ("dU" in expr or "dV" in expr):
        dU, dV = expr.get("dU", 0.0), expr.get("dV", 0.0)
    S = surface(T, p, dU, dV)
    if expr is not None and "d3" in expr:
        S = S + expr["d3"]
    if expr is not None and "jaw" in expr:
        S = _rotate_jaw(T, S, expr["jaw"])
    eyes = {n: _eye_centre(p, s) for n, s in (("eye_right", -1.0), ("eye_left", 1.0))}
    parts = [S] + _pockets(T, S, p, eyes)
    for name in ("eye_right", "eye_left"):
        E, de, _ = eyes[name]
        R = _frame(de)
        parts.append(E + EYE_R * T.eyeball_dirs @ R.T)
    return np.concatenate(parts)


def _frame(z):
    """Rotation whose third column is ``z`` (eyeball pole direction)."""
    z = z / np.linalg.norm(z)
    x = np.cross([0.0, 1.0, 0.0], z)
    x /= np.linalg.norm(x)
    return np.stack([x, np.cross(z, x), z], 1)


def jaw_weight(T: Template) -> np.ndarray:
    """(n_surface,) weight of the mandible: sharp across the mouth slit, smooth on the cheeks."""
    U, V = T.U, T.V
    inner = _smooth(np.abs(U), MOUTH_HW + 6, MOUTH_HW + 1)
    sharp = T.lower.astype(float)
    soft = _smooth(V, MOUTH_V + 4, MOUTH_V - 14)
    w = inner * sharp + (1 - inner) * soft
    return w * _smooth(np.abs(U), 120, 85)


def _rotate_jaw(T, S, angle_deg):
    w = jaw_weight(T)[:, None]
    a = np.deg2rad(angle_deg) * w[:, 0]
    rel = S - JAW_PIVOT
    y = np.cos(a) * rel[:, 1] - np.sin(a) * rel[:, 2]
    z = np.sin(a) * rel[:, 1] + np.cos(a) * rel[:, 2]
    out = S.copy()
    out[:, 1], out[:, 2] = y + JAW_PIVOT[1], z + JAW_PIVOT[2]
    return out


# ----------------------------------------------------------------------------------- expressions
def blendshape_specs(T: Template) -> dict:
    """The artist-style blendshapes: name -> expression spec for :func:`positions`.

    A spec moves the canonical domain (``dU``, ``dV`` in mm, so the surface slides along itself),
    adds a 3D displacement ``d3`` (n_surface, 3) mm, and/or rotates the mandible by ``jaw`` degrees.
    ``_L`` is the subject's left (+x), ``_R`` the subject's right (-x).
    """
    U, V, lower = T.U, T.V, T.lower
    n = len(U)
    z3 = lambda: np.zeros((n, 3))  # noqa: E731
    specs = {}
    specs["jaw_open"] = dict(jaw=16.0)
    for side, s in (("L", 1.0), ("R", -1.0)):
        mine = _smooth(s * U, -6, 6)  # this half of the face
        corner = _g(U, V, s * MOUTH_HW, MOUTH_V, 11, 9)
        cheek = _g(U, V, s * 38, -16, 15, 13)
        brow = _g(U, V, s * 30, 38, 17, 9)
        eye_up = _g(U, V, s * EYE_C[0], EYE_C[1] + 2.5, 15, 4.0) * (V > EYE_C[1] - 0.5)
        eye_lo = _g(U, V, s * EYE_C[0], EYE_C[1] - 2.5, 15, 4.0) * (V <= EYE_C[1] - 0.5)
        gap = EYE_HU + EYE_HL
        d = z3(); d[:, 2] = 2.5 * cheek - 2.0 * corner; d[:, 0] = s * 3.5 * corner
        specs[f"smile_{side}"] = dict(dV=6.0 * corner + 3.0 * cheek, d3=d)
        d = z3(); d[:, 2] = -1.0 * corner
        specs[f"frown_{side}"] = dict(dV=-5.0 * corner, d3=d)
        specs[f"brow_raise_{side}"] = dict(dV=6.0 * brow)
        d = z3(); d[:, 2] = 1.5 * brow
        specs[f"brow_lower_{side}"] = dict(dV=-4.5 * brow, dU=-s * 2.5 * brow, d3=d)
        specs[f"blink_{side}"] = dict(dV=-(gap - 0.6) * eye_up + 0.6 * eye_lo)
        specs[f"squint_{side}"] = dict(dV=-2.0 * eye_up + 2.2 * eye_lo + 2.0 * cheek)
        specs[f"eye_wide_{side}"] = dict(dV=2.5 * eye_up - 1.0 * eye_lo)
        d = z3(); d[:, 0] = s * 7.0 * _g(U, V, s * 36, -32, 14, 14) * mine
        d[:, 2] = 6.0 * _g(U, V, s * 36, -32, 14, 14) * mine
        specs[f"cheek_puff_{side}"] = dict(d3=d)
        d = z3(); d[:, 0] = -s * 3.0 * _g(U, V, s * 36, -32, 12, 12); d[:, 2] = -4.0 * _g(U, V, s * 36, -32, 12, 12)
        specs[f"cheek_suck_{side}"] = dict(d3=d)
        specs[f"sneer_{side}"] = dict(dV=4.0 * _g(U, V, s * 15, -24, 9, 8))
        specs[f"mouth_stretch_{side}"] = dict(dU=s * 6.0 * corner, dV=-2.5 * corner)
        d = z3(); d[:, 2] = -3.0 * _g(U, V, s * (MOUTH_HW + 2), MOUTH_V, 4, 4)
        specs[f"dimple_{side}"] = dict(d3=d)
        specs[f"upper_lip_raise_{side}"] = dict(dV=3.5 * _g(U, V, s * 10, -38, 9, 6) * ~lower)
        specs[f"lower_lip_depress_{side}"] = dict(dV=-4.0 * _g(U, V, s * 10, -52, 9, 7) * lower)
    lips = _g(U, V, 0, MOUTH_V, 20, 9)
    d = z3(); d[:, 2] = 8.0 * lips
    specs["lip_pucker"] = dict(dU=-0.35 * U * lips, d3=d)
    d = z3(); d[:, 2] = 5.0 * lips
    specs["lip_funnel"] = dict(dU=-0.2 * U * lips, dV=np.where(lower, -2.5, 2.5) * lips, d3=d)
    d = z3(); d[:, 2] = -2.0 * lips
    specs["lip_press"] = dict(dV=np.where(lower, 0.4, -0.4) * lips, d3=d)
    mouth = _g(U, V, 0, MOUTH_V, 26, 14)
    specs["mouth_left"] = dict(dU=7.0 * mouth)
    specs["mouth_right"] = dict(dU=-7.0 * mouth)
    jw = jaw_weight(T)
    d = z3(); d[:, 0] = 6.0 * jw
    specs["jaw_left"] = dict(d3=d)
    d = z3(); d[:, 0] = -6.0 * jw
    specs["jaw_right"] = dict(d3=d)
    d = z3(); d[:, 2] = 5.0 * jw
    specs["jaw_forward"] = dict(d3=d)
    specs["brow_inner_up"] = dict(dV=5.0 * (_g(U, V, 13, 35, 8, 7) + _g(U, V, -13, 35, 8, 7)))
    specs["nose_wrinkle"] = dict(dV=2.5 * _g(U, V, 0, -10, 18, 12) - 2.0 * _g(U, V, 0, 33, 20, 6))
    d = z3(); d[:, 2] = 2.0 * _g(U, V, 0, -72, 16, 10)
    specs["chin_raise"] = dict(dV=3.5 * _g(U, V, 0, -68, 18, 14), d3=d)
    d = z3(); d[:, 2] = -1.5 * lips
    specs["mouth_shrug"] = dict(dV=2.5 * _g(U, V, 0, -50, 18, 10), d3=d)
    return specs


# ----------------------------------------------------------------------------------- reflectance
APPEARANCE_KEYS = ("tone", "hue", "red", "lip", "hair", "brow_density", "iris", "iris_hue", "stubble", "sclera")


def sample_appearance(rng: np.random.Generator) -> dict:
    """One appearance of the procedural population."""
    a = dict(
        tone=rng.beta(2.0, 2.0),  # 0 dark .. 1 light, wide range
        hue=rng.normal(0, 1),  # olive/yellow (-) .. pink (+)
        red=rng.gamma(2.0, 0.5),
        lip=rng.normal(0, 1),
        hair=rng.beta(1.8, 2.4),  # 0 dark .. 1 blond
        brow_density=rng.uniform(0.4, 1.0),
        iris=rng.beta(2.0, 2.0),  # 0 dark brown .. 1 light
        iris_hue=rng.normal(0, 1),  # green (-) .. blue (+)
        stubble=rng.uniform(0, 1) if rng.uniform() < 0.45 else 0.0,
        sclera=rng.normal(0, 1),
    )
    a["rbf_c"] = np.stack([rng.uniform(-80, 80, 24), rng.uniform(-100, 90, 24)], -1)
    a["rbf_s"] = rng.uniform(6, 20, 24)
    a["rbf_a"] = rng.normal(0, 0.015, (24, 3))
    return a


def albedo(T: Template, labels: dict, a: dict) -> np.ndarray:
    """Per-vertex RGB albedo (V, 3) in [0, 1] of appearance ``a``."""
    ns = T.n_surface
    U, V = T.U, T.V
    dark, light = np.array([0.32, 0.21, 0.16]), np.array([0.80, 0.61, 0.52])
    skin = dark + (light - dark) * a["tone"]
    skin = skin * (1 + 0.05 * a["hue"] * np.array([0.4, -0.3, 0.2]))
    col = np.tile(skin, (ns, 1))
    redzone = _g(np.abs(U), V, 38, -12, 16, 14) + 0.8 * _g(U, V, 0, -12, 9, 10)
    col = col * (1 + 0.06 * a["red"] * redzone[:, None] * np.array([0.6, -0.5, -0.4]))
    soft = _soft_weights(T)
    lipm = soft["lips"]
    lipc = skin * np.array([0.9, 0.64, 0.7]) * (1 + 0.08 * a["lip"])
    col = col * (1 - lipm[:, None]) + lipc * lipm[:, None]
    hairc = np.array([0.18, 0.13, 0.10]) + a["hair"] * np.array([0.36, 0.27, 0.16])
    browm = soft["brow"] * a["brow_density"]
    col = col * (1 - browm[:, None]) + hairc * browm[:, None]
    beard = soft["beard"] * a["stubble"] * 0.55
    stub = 0.5 * hairc + 0.5 * skin * np.array([0.55, 0.55, 0.6])
    col = col * (1 - beard[:, None]) + stub * beard[:, None]
    if len(a["rbf_a"]):
        c, s = a["rbf_c"], a["rbf_s"]
        r2 = ((U[:, None] - c[None, :, 0]) ** 2 + (V[:, None] - c[None, :, 1]) ** 2) / s[None] ** 2
        col = col + np.exp(-0.5 * r2) @ a["rbf_a"]
    out = np.empty((T.n_vertices, 3))
    out[:ns] = col
    mi = labels["mouth_interior"]
    out[mi] = np.array([0.45, 0.16, 0.15]) * (0.8 + 0.2 * a["tone"])
    conj = labels["conjunctiva"]
    out[conj] = np.array([0.78, 0.5, 0.48])
    sclera = np.array([0.82, 0.78, 0.74]) + 0.02 * a["sclera"]
    brown, lightc = np.array([0.30, 0.19, 0.12]), np.array([0.40, 0.47, 0.53])
    lightc = lightc + 0.05 * a["iris_hue"] * np.array([-0.5, 0.2, 0.5])
    iris = brown + (lightc - brown) * a["iris"]
    for side in ("eye_right", "eye_left"):
        first, n = T.eyeball_index[side]
        polar = np.degrees(np.arccos(np.clip(T.eyeball_dirs[:, 2], -1, 1)))
        w_iris = _smooth(polar, 33, 27)[:, None]
        w_pupil = _smooth(polar, 14, 9)[:, None]
        c = sclera * (1 - w_iris) + iris * w_iris
        c = c * (1 - w_pupil) + np.array([0.08, 0.08, 0.08]) * w_pupil
        out[first:first + n] = c
    return out


def _soft_weights(T: Template) -> dict:
    """Soft (0..1) per-surface-vertex weights of lips, brow hair and beard, for the albedo."""
    U, V = T.U, T.V
    aU = np.abs(U)
    dv = V - MOUTH_V
    top = 7.5 * (1 - 0.35 * aU / MOUTH_HW) * (1 + 0.12 * np.exp(-((aU - 5) / 3) ** 2))
    bot = 10.5 * (1 - 0.3 * aU / MOUTH_HW)
    ext = np.where(dv >= 0, dv / np.maximum(top, 1e-3), -dv / np.maximum(bot, 1e-3))
    lips = _smooth(ext, 1.15, 0.85) * _smooth(aU, MOUTH_HW + 1.5, MOUTH_HW - 1.0)
    arch = 37.5 + 3.5 * np.exp(-((aU - 33) / 14) ** 2) - 2.5 * _smooth(aU, 22, 12)
    half = 3.4 - 1.4 * _smooth(aU, 38, 55)
    brow = _smooth(np.abs(V - arch) / half, 1.15, 0.7) * _smooth(aU, 9, 14) * _smooth(aU, 57, 50)
    beard = (_smooth(V, -24, -32) * _smooth(aU, 80, 70) * (1 - lips)
             * np.maximum(_smooth(aU, 16, 22), _smooth(V, -31, -36)))
    beard = np.maximum(beard, _smooth(V, 0, -10) * _smooth(aU, 45, 52) * _smooth(aU, 88, 80))
    return dict(lips=lips, brow=brow, beard=beard)


# --------------------------------------------------------------------------- labels and landmarks
def labels_and_regions(T: Template):
    """Semantic masks (name -> (V,) bool) and the region label (V,) int64 (see ``REGIONS``)."""
    Vn, ns = T.n_vertices, T.n_surface
    U, V = T.U, T.V
    aU = np.abs(U)
    region = np.full(ns, REGIONS.index("cheek"))
    qe, _ = _eye_q(U, V)
    r = lambda name: REGIONS.index(name)  # noqa: E731
    region[V > 45] = r("forehead")
    region[(V > 28) & (V <= 45) & (aU < 62)] = r("brow")
    region[(V > 45) & (V <= 48) & (aU < 62)] = r("brow")
    region[qe < 1.7] = r("eyelid")
    nose = (np.abs(U) < np.interp(V, [-28, -25, -15, 0, 24, 30], [0, 24, 22, 14, 10, 0])) & (V > -27) & (V < 30)
    region[nose & ((qe >= 1.7) | (np.abs(U) < 9))] = r("nose")
    mq = np.maximum(aU / (MOUTH_HW + 3), np.abs(V - MOUTH_V + np.where(V > MOUTH_V, -1.5, 1.0)) / np.where(V > MOUTH_V, 10.0, 12.0))
    region[mq < 1.0] = r("lips")
    chin = (V < -58) & (aU < 40)
    region[chin & (mq >= 1.0)] = r("chin")
    jaw = (V < -58) & (aU >= 40) | (V < -35) & (aU >= 58)
    region[jaw & (region != r("lips"))] = r("jaw")
    region[(aU > 100) & (V > -35)] = r("side")
    full = np.empty(Vn, np.int64)
    full[:ns] = region
    masks = {}
    mouth_first, mouth_n = T.pocket_index["mouth"]
    mi = np.zeros(Vn, bool)
    mi[mouth_first:mouth_first + mouth_n] = True
    full[mi] = r("mouth_interior")
    conj = np.zeros(Vn, bool)
    for side in ("eye_right", "eye_left"):
        f, n = T.pocket_index[side]
        conj[f:f + n] = True
    full[conj] = r("conjunctiva")
    eyes = np.zeros(Vn, bool)
    for side in ("eye_right", "eye_left"):
        f, n = T.eyeball_index[side]
        eyes[f:f + n] = True
        masks[side] = np.zeros(Vn, bool)
        masks[side][f:f + n] = True
    full[eyes] = r("eyeball")
    lips_b = np.zeros(Vn, bool)
    lips_b[T.loops["mouth"]] = True
    lips_v = np.zeros(Vn, bool)
    dv = V - MOUTH_V
    vermilion = (aU < MOUTH_HW + 0.5) & (((dv >= 0) & (dv < 8.0 * (1 - 0.35 * aU / MOUTH_HW)))
                                         | ((dv < 0) & (-dv < 11.0 * (1 - 0.3 * aU / MOUTH_HW))))
    lips_v[:ns] = vermilion
    brow_hair = np.zeros(Vn, bool)
    arch = 37.5 + 3.5 * np.exp(-((aU - 33) / 14) ** 2) - 2.5 * (aU < 18)
    brow_hair[:ns] = (aU > 11) & (aU < 55) & (np.abs(V - arch) < 3.2 - 1.2 * _smooth(aU, 40, 55))
    beard = np.zeros(Vn, bool)
    beard[:ns] = ((V < -28) & (aU < 75) & ~vermilion & ((aU > 20) | (V < -33)) & (V > -110)
                  | (V < -5) & (aU > 48) & (aU < 85) & (V > -110))
    nostril = np.zeros(Vn, bool)
    nostril[:ns] = _g(aU, V, 6.5, -23.0, 3.0, 1.6) > 0.5
    face = np.ones(Vn, bool)
    face[mi] = False
    face[:ns] &= (aU < FACE_U)
    skin = face.copy()
    skin[eyes | conj] = False
    skin &= ~lips_v & ~brow_hair & ~nostril
    masks.update(face=face, skin=skin, mouth_interior=mi, lips_boundary=lips_b, lips=lips_v,
                 eyes=eyes, conjunctiva=conj, brow_hair=brow_hair, beard=beard, nostrils=nostril)
    return masks, full


# iBUG 68 in canonical (U, V) mm; image left = subject's right = -U.  Jaw points are placed on the
# frontal silhouette of the mean face by :func:`landmarks_and_contours`.

def landmark_targets():
    pts, kinds = [], []
    for k in range(17):  # jaw: placeholders, replaced by the silhouette vertex
        psi = -np.pi / 2 + (k - 8) / 8 * (np.pi / 2 + 0.25)
        pts.append((70 * np.cos(psi), -8 + 78 * np.sin(psi))); kinds.append("jaw")
    for u, v in zip([-52, -42, -32, -22, -13], [37.0, 40.5, 41.0, 40.0, 37.5]):
        pts.append((u, v)); kinds.append("brow")
    for u, v in zip([13, 22, 32, 42, 52], [37.5, 40.0, 41.0, 40.5, 37.0]):
        pts.append((u, v)); kinds.append("brow")
    for v in (24.0, 12.0, 0.0, -13.0):
        pts.append((0.0, v)); kinds.append("nose")
    for u, v in zip([-13, -6.5, 0, 6.5, 13], [-21.5, -23.5, -25.5, -23.5, -21.5]):
        pts.append((u, v)); kinds.append("nose")
    for side in (-1, 1):
        cu = side * EYE_C[0]
        # iBUG goes left to right in the image along the upper lid, back along the lower lid
        order = [(-EYE_HW, 0, "c"), (-5.5, 1, "u"), (5.5, 1, "u"), (EYE_HW, 0, "c"), (5.5, -1, "l"), (-5.5, -1, "l")]
        for du, dvs, kind in order:
            dv = EYE_HU * 0.95 if dvs > 0 else (-EYE_HL * 0.95 if dvs < 0 else 0.0)
            pts.append((cu + du, EYE_C[1] + dv)); kinds.append("eye_" + ("right" if side < 0 else "left"))
    outer = [(-MOUTH_HW - 2.0, MOUTH_V), (-15, -40.5), (-6, -37.5), (0, -38.3), (6, -37.5), (15, -40.5),
             (MOUTH_HW + 2.0, MOUTH_V), (15, -51.5), (6, -54.5), (0, -55.0), (-6, -54.5), (-15, -51.5)]
    for u, v in outer:
        pts.append((u, v)); kinds.append("lips_outer")
    inner = [(-MOUTH_HW, MOUTH_V, "c"), (-10, MOUTH_V + 1, "u"), (0, MOUTH_V + 1, "u"), (10, MOUTH_V + 1, "u"),
             (MOUTH_HW, MOUTH_V, "c"), (10, MOUTH_V - 1, "l"), (0, MOUTH_V - 1, "l"), (-10, MOUTH_V - 1, "l")]
    for u, v, _ in inner:
        pts.append((u, v)); kinds.append("lips_inner")
    return np.array(pts, float), kinds


def landmarks_and_contours(T: Template, P_mean: np.ndarray, tris: np.ndarray):
    """68 landmark vertex ids, the sliding flags and (17, L) contour candidates (padded with -1)."""
    from .facemodel import LANDMARK_GROUPS

    pts, kinds = landmark_targets()
    U, V = T.U, T.V
    lm = np.zeros(68, np.int64)
    eye_loops = {"eye_right": T.loops["eye_right"], "eye_left": T.loops["eye_left"]}
    for i, ((u, v), kind) in enumerate(zip(pts, kinds)):
        if kind.startswith("eye_"):
            cand = eye_loops[kind]
        elif kind == "lips_inner":
            cand = T.loops["mouth"]
            want_lower = v < MOUTH_V
            if abs(v - MOUTH_V) > 0.1:
                cand = cand[T.lower[cand] == want_lower]
        elif kind == "lips_outer":  # distinct from the inner corners: off the slit
            cand = np.setdiff1d(np.arange(T.n_surface), T.loops["mouth"])
        else:
            cand = np.arange(T.n_surface)
        j = np.argmin((U[cand] - u) ** 2 + (V[cand] - v) ** 2)
        lm[i] = cand[j]
    # jaw contour: candidates along the ray from the face centre through the target, outward
    normals = vertex_normals(P_mean, tris)[: T.n_surface]
    contours = []
    centre = np.array([0.0, -8.0])
    for k in range(17):
        t = pts[k]
        dirn = (t - centre) / np.linalg.norm(t - centre)
        rel = np.stack([U, V], -1) - centre
        along = rel @ dirn
        across = np.abs(rel @ np.array([-dirn[1], dirn[0]]))
        r_t = np.linalg.norm(t - centre)
        sel = np.where((across < 1.6) & (along > 0.85 * r_t) & (np.abs(U) < FACE_U))[0]
        sel = sel[np.argsort(along[sel])]
        contours.append(sel)
        # the frontal contour: going outward, the first candidate where the surface has turned
        # away from a frontal camera (normal tilted > 70 deg outward: the jaw line, not the rim)
        turn = normals[sel, 2] - 0.35 * (normals[sel, :2] @ dirn)
        away = np.where(turn < 0)[0]
        lm[k] = sel[away[0]] if len(away) else sel[int(np.argmin(turn[: max(1, len(sel) // 2)]))]
    L = max(len(c) for c in contours)
    cc = -np.ones((17, L), np.int64)
    for k, c in enumerate(contours):
        cc[k, :len(c)] = c
    sliding = np.zeros(68, bool)
    sliding[list(LANDMARK_GROUPS["jaw"])] = True
    return lm, sliding, cc


def vertex_normals(P: np.ndarray, tris: np.ndarray) -> np.ndarray:
    """Area-weighted vertex normals (V, 3) of one mesh (numpy; the renderer has the torch one)."""
    a, b, c = P[tris[:, 0]], P[tris[:, 1]], P[tris[:, 2]]
    fn = np.cross(b - a, c - a)
    n = np.zeros_like(P)
    for i in range(3):
        np.add.at(n, tris[:, i], fn)
    return n / np.maximum(np.linalg.norm(n, axis=1, keepdims=True), 1e-12)


# ---------------------------------------------------------------------------------------- build
def expression_prior(basis: np.ndarray, sigma: np.ndarray, D: np.ndarray):
    """Half-widths of the uniform expression prior, in units of sigma_e.

    The paper samples U(-12, 12) in units of its own blendshape sigmas.  For our basis the
    coefficient of blendshape k on component j is ``c_kj = <d_k, b_j> / sigma_j``; the range of
    component j is the largest ``|c_kj|`` over the blendshapes, so that the prior spans exactly the
    blendshapes' full extent along each component (see the module docstring and chapter 1).
    """
    C = (D @ basis.T) / sigma[None]
    return np.abs(C).max(0)


BUILD_BLAS_THREADS = 2  # the BLAS threads of every build (the committed numbers come from 2)


def build_open_model(progress: bool = True) -> FaceModel:
    """Build the ``open`` model from scratch (deterministic; about 10-20 s on 2 CPU cores).

    NumPy's BLAS runs on :data:`BUILD_BLAS_THREADS` threads whatever the process's setting: OpenBLAS
    splits its sums by thread, so a build on 1 thread gave other bits than one on 2 under the same
    cache name (issue 20). The bits still depend on the BLAS kernel the CPU gets (OpenBLAS's Haswell
    kernels give other bits than its AVX-512 ones; README, "Reproducibility").
    """
    return build_population_model("open", SEED, sample_identity, mean_identity(), sample_appearance,
                                  description=__doc__.split("How it is built")[0].strip(), progress=progress)


def build_population_model(name: str, seed: int, identity, mean: dict, appearance, description: str,
                           progress: bool = True, meta: "dict | None" = None) -> FaceModel:
    """A face model on the open template from a procedural population (steps 2-4 of the module docstring).

    ``identity(rng) -> dict`` and ``appearance(rng) -> dict`` draw one identity (:func:`sample_identity`'s
    keys) and one appearance (:func:`sample_appearance`'s) from ``np.random.Generator``s seeded ``seed`` and
    ``seed + 1``; ``mean`` is the neutral identity the expression blendshapes are made on. The open model is
    ``build_population_model("open", SEED, sample_identity, mean_identity(), sample_appearance, ...)``;
    :mod:`facelib.model.foreign` builds another population the same way. BLAS on
    :data:`BUILD_BLAS_THREADS` threads (see :func:`build_open_model`).
    """
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - a declared dependency
        return _build_population_model(name, seed, identity, mean, appearance, description, progress, meta)
    with threadpool_limits(limits=BUILD_BLAS_THREADS, user_api="blas"):
        return _build_population_model(name, seed, identity, mean, appearance, description, progress, meta)


def _build_population_model(name, seed, identity, mean, appearance, description, progress, meta_extra) -> FaceModel:
    from tqdm.auto import tqdm

    T = build_template()
    masks, region = labels_and_regions(T)
    p0 = mean
    # shape population (Eq. 2, sigma_s): PCA of N_ID identities
    rng = np.random.default_rng(seed)
    X = np.empty((N_ID, T.n_vertices * 3))
    for i in tqdm(range(N_ID), desc=f"{name} model: identities", disable=not progress, leave=False):
        X[i] = positions(T, identity(rng)).ravel()
    mean_shape = X.mean(0)
    b_s, sigma_s = orthonormal_basis(X - mean_shape, N_SHAPE, samples=True)
    # expression: PCA of the blendshapes of the mean face (no mean removal; neutral is the origin)
    specs = blendshape_specs(T)
    names = list(specs)
    neutral = positions(T, p0)
    D = np.stack([(positions(T, p0, specs[k]) - neutral).ravel() for k in names])
    b_e, sigma_e = orthonormal_basis(D, N_EXPR, samples=True)
    # the mouth-opening component: largest share of the jaw-open blendshape; + opens the mouth
    coef = D[names.index("jaw_open")] @ b_e.T
    mc = int(np.argmax(np.abs(coef)))
    if coef[mc] < 0:
        b_e[mc] *= -1
    rng_e = expression_prior(b_e, sigma_e, D)
    # reflectance population (Eq. 3, sigma_r)
    rng = np.random.default_rng(seed + 1)
    A = np.empty((N_APP, T.n_vertices * 3))
    for i in tqdm(range(N_APP), desc=f"{name} model: appearances", disable=not progress, leave=False):
        A[i] = albedo(T, masks, appearance(rng)).ravel()
    mean_alb = A.mean(0)
    b_r, sigma_r = orthonormal_basis(A - mean_alb, N_REFL, samples=True)
    Vn = T.n_vertices
    # shift the mean so that the neutral mean identity is the model mean: a_g is the population mean
    tris = T.tris
    lm, sliding, cc = landmarks_and_contours(T, mean_shape.reshape(Vn, 3), tris)
    meta = dict(builder=BUILDER_VERSION, seed=seed, n_identities=N_ID, n_appearances=N_APP,
                blendshapes=names, units="mm", frame="head-centred; x right, y up, z towards the camera",
                mouth_component_note="positive values of expression component mouth_component open the "
                "jaw (rotation of the mandible about the x axis through JAW_PIVOT)",
                expression_prior="U(-r_j, r_j) with r_j = max_k |<d_k, b_j>| / sigma_j over the "
                "blendshapes d_k (the paper's U(-12, 12) rescaled to our blendshapes' full extent); "
                "mouth bias = 0.4 r_mouth (the paper's 4.8 / 12)",
                description=description, **(meta_extra or {}))
    return FaceModel(
        name=name,
        mean_shape=mean_shape.reshape(Vn, 3), shape_basis=b_s.reshape(-1, Vn, 3), sigma_s=sigma_s,
        expression_basis=b_e.reshape(-1, Vn, 3), sigma_e=sigma_e,
        mean_albedo=mean_alb.reshape(Vn, 3), albedo_basis=b_r.reshape(-1, Vn, 3), sigma_r=sigma_r,
        triangles=tris, masks=masks, region=region, region_names=list(REGIONS),
        landmarks=lm, landmark_sliding=sliding, contour_candidates=cc,
        expression_range=rng_e, mouth_component=mc, mouth_bias=0.4 * float(rng_e[mc]),
        metadata=meta,
    )


def cache_dir() -> Path:
    """Where built models are cached: ``$FACELIB_CACHE`` or ``~/.cache/facelib``."""
    return Path(os.environ.get("FACELIB_CACHE", Path.home() / ".cache" / "facelib"))


def _source_hash() -> str:
    src = Path(__file__).read_bytes() + Path(__file__).with_name("facemodel.py").read_bytes()
    return hashlib.sha256(src).hexdigest()[:12]


def open_model(rebuild: bool = False, progress: bool = True) -> FaceModel:
    """The ``open`` model: loaded from the cache, or built and cached on first use.

    The cache file name carries a hash of the builder's source, so a changed builder rebuilds. A cache
    folder that cannot be written to (read-only) gives a warning and the model built in memory.
    """
    return cached_model(cache_dir() / f"open-{BUILDER_VERSION}-{_source_hash()}.npz",
                        lambda: build_open_model(progress=progress), rebuild)


def cached_model(path: Path, build, rebuild: bool = False) -> FaceModel:
    """The model cached at ``path``, or ``build()`` saved there (a corrupt file is rebuilt, never trusted;
    a folder that cannot be written to gives a warning and the model built in memory)."""
    if path.exists() and not rebuild:
        try:
            return FaceModel.load(path)
        except Exception:  # a corrupt cache is rebuilt, never trusted
            with contextlib.suppress(OSError):  # (a read-only cache keeps it; the save below warns)
                path.unlink(missing_ok=True)
    m = build()
    try:
        m.save(path)
    except OSError as e:
        import warnings

        warnings.warn(f"the {m.name} model was built but not cached: {e}; set FACELIB_CACHE to a writable "
                      "folder to build it only once", stacklevel=3)
    return m
