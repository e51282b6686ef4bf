"""Plots: interactive Plotly figures for the book (meshes, sliders, SH spheres, raster buffers, the
live ipywidgets panel).

Two kinds of interactivity, as the book needs them:

- figures that carry everything they show (:func:`mesh_figure`, :func:`slider_figure`,
  :func:`image_slider_figure`, :func:`sh_basis_figure`, :func:`sh_lighting_figure`,
  :func:`raster_figure`): Plotly's own sliders over precomputed frames, so they work in the static
  HTML book where no kernel runs;
- :class:`LivePanel`: ipywidgets sliders driving a ``go.FigureWidget`` mesh and a rendered image,
  recomputed by ``facelib`` on every slider move; it needs a running kernel (JupyterLab).

Geometry is in millimetres (the model frame: x right, y up, z towards the camera), images are
``(3, H, W)`` or ``(B, 3, H, W)`` RGB in [0, 1].  Nothing here re-derives a formula: shading comes
from :mod:`facelib.render.shading`, images from :func:`facelib.render.render`.
"""

from __future__ import annotations

import base64
import io
import time

import numpy as np
import torch

import plotly.graph_objects as go
import plotly.io as pio
from plotly.subplots import make_subplots

from ..eval.export import image_grid
from ..model.params import ParamLayout, light_colour_spread, rot_xyz
from ..render.shading import N_SH, sh_basis, shade

__all__ = [
    "histogram_figure",
    "parameter_panels",
    "PARAMETER_PANELS",
    "studio_theta",
    "curves_figure",
    "running_mean",
    "BOOK_RENDERER",
    "setup_plotly",
    "hex_colors",
    "mesh_figure",
    "slider_figure",
    "image_figure",
    "image_slider_figure",
    "sphere_normals",
    "SH_NAMES",
    "sh_basis_figure",
    "example_lights",
    "sh_lighting_figure",
    "raster_figure",
    "studio_light",
    "LivePanel",
    "live_panel",
    "grey3",
    "shaded_depth",
    "signed_map",
]

# One HTML bundle per figure, with plotly.js embedded inline once per notebook while it runs: it shows
# in JupyterLab (trusted outputs) and in the classic Notebook, offline (no CDN is reachable). The book
# pipeline strips that bundle from the executed chapters (scripts/build_book.py) and the HTML book
# loads plotly.js once, from its own _static folder (book/_ext/book_html.py). Adding the
# "plotly_mimetype" bundle as well would store every figure twice in the committed chapters.
BOOK_RENDERER = "notebook"

MM_AXES = ("x [mm]", "y [mm]", "z [mm]")
# Plotly's own lighting for albedo-coloured meshes: enough diffuse light that the shape reads.
MESH_LIGHTING = dict(ambient=0.45, diffuse=0.75, specular=0.08, roughness=0.6, fresnel=0.05)
BAKED_LIGHTING = dict(ambient=1.0, diffuse=0.0, specular=0.0, roughness=1.0, fresnel=0.0)
FRONT_CAMERA = dict(eye=dict(x=0.0, y=0.0, z=1.7), up=dict(x=0.0, y=1.0, z=0.0),
                    center=dict(x=0.0, y=0.0, z=0.0))

# Real SH Y_lm in facelib.render.shading.sh_basis order, with the polynomial each is proportional to.
SH_NAMES = ("Y<sub>0,0</sub> ∝ 1", "Y<sub>1,-1</sub> ∝ y", "Y<sub>1,0</sub> ∝ z", "Y<sub>1,1</sub> ∝ x",
            "Y<sub>2,-2</sub> ∝ xy", "Y<sub>2,-1</sub> ∝ yz", "Y<sub>2,0</sub> ∝ 3z²-1",
            "Y<sub>2,1</sub> ∝ xz", "Y<sub>2,2</sub> ∝ x²-y²")


def setup_plotly(renderer: str = BOOK_RENDERER) -> str:
    """Make Plotly figures show in JupyterLab *and* in the offline static HTML book (which loads
    plotly.js from its ``_static`` folder); returns the renderer name.  Call once at the top of a chapter."""
    pio.renderers.default = renderer
    return renderer


# ------------------------------------------------------------------------------------ helpers
def _np(x, dtype=None) -> np.ndarray:
    a = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
    return a.astype(dtype) if dtype is not None else a


def _coords(verts) -> tuple:
    """``(V, 3)`` mm -> x, y, z float32 arrays rounded to 0.1 mm (compact in the HTML)."""
    v = np.round(_np(verts, np.float64), 1).astype(np.float32)
    if v.ndim != 2 or v.shape[1] != 3:
        raise ValueError(f"vertices have shape {v.shape}; expected (V, 3) in mm")
    return v[:, 0], v[:, 1], v[:, 2]


def _faces(faces, n_vertices: int) -> np.ndarray:
    """``(F, 3)`` indices as the smallest unsigned type that holds them (uint16 for < 65536)."""
    f = _np(faces)
    if f.ndim != 2 or f.shape[1] != 3:
        raise ValueError(f"faces have shape {f.shape}; expected (F, 3) vertex indices")
    return f.astype(np.uint16 if n_vertices < 65536 else np.uint32)


def hex_colors(colors) -> list:
    """``(V, 3)`` RGB in [0, 1] (clipped) -> V ``'#rrggbb'`` strings for ``Mesh3d.vertexcolor``."""
    c = _np(colors, np.float64)
    if c.ndim != 2 or c.shape[1] != 3:
        raise ValueError(f"colors have shape {c.shape}; expected (V, 3) RGB in [0, 1]")
    u8 = np.round(np.clip(c, 0.0, 1.0) * 255.0).astype(np.uint32)
    packed = (u8[:, 0] << 16) | (u8[:, 1] << 8) | u8[:, 2]
    return [f"#{p:06x}" for p in packed.tolist()]


def _mesh_trace(verts, faces, colors, baked: bool = False, name: str = "face") -> go.Mesh3d:
    x, y, z = _coords(verts)
    f = _faces(faces, len(x))
    return go.Mesh3d(x=x, y=y, z=z, i=f[:, 0], j=f[:, 1], k=f[:, 2], vertexcolor=hex_colors(colors),
                     flatshading=False, lighting=BAKED_LIGHTING if baked else MESH_LIGHTING,
                     lightposition=dict(x=300, y=600, z=2000), name=name, showscale=False,
                     hovertemplate="x %{x} mm<br>y %{y} mm<br>z %{z} mm<extra></extra>")


def _scene(camera: dict | None = None) -> dict:
    ax = [dict(title=dict(text=t), showbackground=False) for t in MM_AXES]
    return dict(xaxis=ax[0], yaxis=ax[1], zaxis=ax[2], aspectmode="data",
                camera=camera or FRONT_CAMERA, dragmode="orbit")


# ------------------------------------------------------------------------------------ meshes
def mesh_figure(verts, faces, colors, title: str = "face mesh", landmarks=None,
                baked_shading: bool = False, height: int = 560) -> go.Figure:
    """A 3D mesh with per-vertex colour, frontal camera and axes in mm.

    Args:
        verts: ``(V, 3)`` mm.  faces: ``(F, 3)`` vertex indices (counter-clockwise seen from outside).
        colors: ``(V, 3)`` RGB in [0, 1] (albedo, or shaded colours with ``baked_shading=True``).
        title: the figure title.  landmarks: optional ``(L, 3)`` mm points drawn as markers.
        baked_shading: the colours already contain the lighting (e.g. SH-shaded), so Plotly adds none;
            otherwise Plotly's own light makes the shape read.
    Returns:
        ``go.Figure`` with one ``Mesh3d`` trace (plus a ``Scatter3d`` for the landmarks).
    """
    fig = go.Figure(_mesh_trace(verts, faces, colors, baked_shading))
    if landmarks is not None:
        lx, ly, lz = _coords(landmarks)
        fig.add_trace(go.Scatter3d(x=lx, y=ly, z=lz + np.float32(0.5), mode="markers", name="landmarks",
                                   marker=dict(size=3, color="#00c853"),
                                   hovertemplate="landmark %{pointNumber}<extra></extra>"))
    fig.update_layout(title=dict(text=title), scene=_scene(), height=height,
                      margin=dict(l=0, r=0, t=50, b=0), showlegend=False)
    return fig


def _split_static(frames_verts: np.ndarray, faces: np.ndarray, moving_v: np.ndarray):
    """Triangles touching a moving vertex -> (static faces, moving faces, moving vertex ids)."""
    moving_f = moving_v[faces].any(1)
    used = np.unique(faces[moving_f])
    return faces[~moving_f], faces[moving_f], used


def slider_figure(frames_verts, faces, colors, values, label: str = "expression component 1 [sigma]",
                  title: str = "drag the slider", active: int | None = None, tol_mm: float = 0.05,
                  height: int = 600) -> go.Figure:
    """A 3D mesh with Plotly's own slider over precomputed frames (no kernel needed).

    Only the part of the mesh that moves goes into the frames: triangles whose vertices all stay
    within ``tol_mm`` (and keep their colour) in every frame form a static trace, the rest a second
    trace that the frames replace.  Coordinates are rounded to 0.1 mm and stored as float32.

    Args:
        frames_verts: ``(S, V, 3)`` mm, one mesh per slider step.  faces: ``(F, 3)``.
        colors: ``(V, 3)`` or ``(S, V, 3)`` RGB in [0, 1].  values: ``(S,)`` slider values.
        label: what the slider moves, with its unit.  active: the step shown first (default: the
            value closest to 0).
    Returns:
        ``go.Figure`` with ``len(values)`` frames and a slider with one step per frame.
    """
    fv = _np(frames_verts, np.float64)
    vals = [float(v) for v in _np(values, np.float64).reshape(-1)]
    S = fv.shape[0]
    if fv.ndim != 3 or fv.shape[2] != 3 or S != len(vals) or S < 1:
        raise ValueError(f"frames_verts has shape {fv.shape} and values {len(vals)} entries; expected "
                         "(S, V, 3) mm with one value per frame")
    col = _np(colors, np.float64)
    col = np.broadcast_to(col, fv.shape) if col.ndim == 2 else col
    colors_change = bool(np.abs(col - col[:1]).max() > 1e-3)
    f = _np(faces).astype(np.int64)
    moving = (np.abs(fv - fv[:1]).max((0, 2)) > tol_mm) | (np.abs(col - col[:1]).max((0, 2)) > 1e-3)
    static_f, moving_f, used = _split_static(fv, f, moving)
    remap = np.full(fv.shape[1], -1, dtype=np.int64)
    remap[used] = np.arange(len(used))
    active = int(np.argmin(np.abs(vals))) if active is None else int(active)
    fig = go.Figure()
    if len(static_f):
        fig.add_trace(_mesh_trace(fv[active], static_f, col[active], name="static part"))
    fig.add_trace(_mesh_trace(fv[active][used], remap[moving_f], col[active][used], name="moving part"))
    moving_index = len(fig.data) - 1
    names = [f"{v:+.2f}" for v in vals]
    frames = []
    for s in range(S):
        x, y, z = _coords(fv[s][used])
        trace = go.Mesh3d(x=x, y=y, z=z)
        if colors_change:  # only the arrays that change go into the frames
            trace.vertexcolor = hex_colors(col[s][used])
        frames.append(go.Frame(name=names[s], traces=[moving_index], data=[trace]))
    fig.frames = frames
    steps = [dict(method="animate", label=n,
                  args=[[n], dict(mode="immediate", frame=dict(duration=0, redraw=True),
                                  transition=dict(duration=0))]) for n in names]
    fig.update_layout(title=dict(text=title), scene=_scene(), height=height, showlegend=False,
                      margin=dict(l=0, r=0, t=50, b=10),
                      sliders=[dict(active=active, steps=steps, currentvalue=dict(prefix=label + ": "),
                                    transition=dict(duration=0),
                                    pad=dict(t=10, b=10))])
    return fig


# ------------------------------------------------------------------------------------ images
def _u8(image) -> np.ndarray:
    """``(3, H, W)`` in [0, 1] -> ``(H, W, 3)`` uint8."""
    a = _np(image, np.float64)
    if a.ndim != 3 or a.shape[0] != 3:
        raise ValueError(f"image has shape {a.shape}; expected (3, H, W) RGB in [0, 1]")
    return np.round(np.clip(a, 0, 1) * 255).astype(np.uint8).transpose(1, 2, 0)


def png_bytes(image) -> bytes:
    """``(3, H, W)`` RGB in [0, 1] -> PNG file bytes."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(_u8(image)).save(buf, format="PNG")
    return buf.getvalue()


def _png_source(image) -> str:
    return "data:image/png;base64," + base64.b64encode(png_bytes(image)).decode()


def _pixel_axes(fig, row=None, col=None):
    kw = {} if row is None else dict(row=row, col=col)
    fig.update_xaxes(title_text="x [pixels]", **kw)
    fig.update_yaxes(title_text="y [pixels]", **kw)


def image_figure(images, title: str = "rendered faces", nrow: int = 8, height: int | None = None) -> go.Figure:
    """Show an image ``(3, H, W)`` or a batch ``(B, 3, H, W)`` tiled ``nrow`` per row (as a PNG)."""
    x = images.detach().cpu() if isinstance(images, torch.Tensor) else torch.as_tensor(np.asarray(images))
    grid = image_grid(x, nrow=nrow) if x.ndim == 4 else x
    H, W = grid.shape[-2:]
    fig = go.Figure(go.Image(source=_png_source(grid), hoverinfo="x+y"))
    fig.update_layout(title=dict(text=title), margin=dict(l=60, r=10, t=50, b=50),
                      height=height or min(900, int(H * min(1.0, 900 / W)) + 110))
    _pixel_axes(fig)
    return fig


def grey3(x: torch.Tensor) -> torch.Tensor:
    """Grey images ``(B, 1, H, W)`` or ``(B, H, W)`` in [0, 1] -> ``(B, 3, H, W)`` on the CPU, for
    :func:`image_figure`."""
    if not isinstance(x, torch.Tensor) or x.ndim not in (3, 4) or (x.ndim == 4 and x.shape[1] != 1):
        got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"grey images have shape {got}; expected (B, 1, H, W) or (B, H, W)")
    x = x if x.ndim == 4 else x[:, None]
    return x.detach().clamp(0, 1).expand(-1, 3, -1, -1).cpu()


# The light of the "shaded normals" pictures: first-order SH (facelib.coarse_fine.sfs), from the upper left.
SHADED_LIGHT = (0.15, -0.35, 0.45, 0.75)


def shaded_depth(depth: torch.Tensor, pixel_mm, mask: torch.Tensor) -> torch.Tensor:
    """A depth map ``(B, H, W)`` mm shown as a grey surface lit from the upper left (normals by finite
    differences, :func:`facelib.coarse_fine.sfs.depth_normals`; white outside ``mask``) -> ``(B, 3, H, W)``."""
    from ..coarse_fine.sfs import depth_normals, shading_image

    n, _ = depth_normals(depth, pixel_mm, mask)
    light = torch.tensor(SHADED_LIGHT, dtype=depth.dtype, device=depth.device)
    s = shading_image(light.expand(depth.shape[0], 4), n)
    return grey3(torch.where(mask, s, torch.ones_like(s)))


def signed_map(x: torch.Tensor, limit: float) -> torch.Tensor:
    """A signed map ``(B, H, W)`` (e.g. mm) as blue (negative) - white - red (positive) pictures
    ``(B, 3, H, W)``, saturating at ``+-limit``."""
    if not limit > 0:
        raise ValueError(f"limit must be positive; got {limit!r}")
    t = (x.detach() / limit).clamp(-1, 1).cpu()
    r = torch.where(t > 0, torch.ones_like(t), 1 + t)
    b = torch.where(t < 0, torch.ones_like(t), 1 - t)
    return torch.stack([r, 1 - t.abs(), b], 1)


def image_slider_figure(images, values, label: str = "expression component 1 [sigma]",
                        title: str = "rendered view", active: int | None = None) -> go.Figure:
    """A rendered image with a Plotly slider over precomputed frames ``images (S, 3, H, W)``."""
    vals = [float(v) for v in _np(values, np.float64).reshape(-1)]
    if len(vals) != len(images):
        raise ValueError(f"{len(images)} images but {len(vals)} values; expected one value per image")
    active = int(np.argmin(np.abs(vals))) if active is None else int(active)
    srcs = [_png_source(im) for im in images]
    names = [f"{v:+.2f}" for v in vals]
    fig = go.Figure(go.Image(source=srcs[active], hoverinfo="x+y"))
    fig.frames = [go.Frame(name=n, data=[go.Image(source=s)], traces=[0]) for n, s in zip(names, srcs)]
    steps = [dict(method="animate", label=n, args=[[n], dict(mode="immediate", frame=dict(duration=0, redraw=True),
                                                             transition=dict(duration=0))]) for n in names]
    H, W = images.shape[-2:]
    fig.update_layout(title=dict(text=title), height=int(H * min(1.0, 600 / W)) + 200, width=None,
                      margin=dict(l=60, r=10, t=50, b=10),
                      sliders=[dict(active=active, steps=steps, currentvalue=dict(prefix=label + ": "),
                                    transition=dict(duration=0),
                                    pad=dict(t=50))])
    _pixel_axes(fig)
    return fig


# ------------------------------------------------------------------------------ SH on spheres
def sphere_normals(res: int) -> tuple:
    """Unit normals of the visible hemisphere seen along -z: ``(res, res, 3)`` (zero outside the
    disk) and the ``(res, res)`` bool disk mask; row 0 is the top (y = +1)."""
    c = (torch.arange(res, dtype=torch.float64) + 0.5) / res * 2 - 1
    y, x = torch.meshgrid(-c, c, indexing="ij")
    r2 = x * x + y * y
    inside = r2 < 1.0
    z = torch.sqrt((1.0 - r2).clamp_min(0.0))
    n = torch.stack([x, y, z], -1) * inside[..., None]
    return n, inside


def sh_basis_figure(res: int = 48) -> go.Figure:
    """The nine real SH basis functions ``Y_lm`` (bands 0-2, :func:`facelib.render.shading.sh_basis`) on the
    unit sphere seen from the camera (+z), 3x3 heatmaps with one shared diverging colour scale."""
    n, inside = sphere_normals(res)
    Y = sh_basis(n.reshape(-1, 3)).reshape(res, res, N_SH)
    Y = torch.where(inside[..., None], Y, torch.full_like(Y, float("nan"))).numpy()
    lim = float(np.nanmax(np.abs(Y)))
    coords = ((np.arange(res) + 0.5) / res * 2 - 1).round(4)
    fig = make_subplots(3, 3, subplot_titles=SH_NAMES, horizontal_spacing=0.06, vertical_spacing=0.09)
    for k in range(N_SH):
        r, c = k // 3 + 1, k % 3 + 1
        fig.add_trace(go.Heatmap(x=coords, y=coords[::-1].copy(), z=np.round(Y[..., k], 4), zmin=-lim, zmax=lim,
                                 colorscale="RdBu_r", showscale=(k == 0), colorbar=dict(title=dict(text="Y<sub>lm</sub>")),
                                 hovertemplate="n<sub>x</sub> %{x}<br>n<sub>y</sub> %{y}<br>Y %{z}<extra></extra>"),
                      row=r, col=c)
        fig.update_xaxes(title_text="n<sub>x</sub>" if r == 3 else None, row=r, col=c, constrain="domain")
        fig.update_yaxes(title_text="n<sub>y</sub>" if c == 1 else None, row=r, col=c,
                         scaleanchor=f"x{k + 1 if k else ''}", scaleratio=1)
    fig.update_layout(title=dict(text="The nine SH basis functions on the unit sphere (normal n, seen "
                                      "from the camera; red > 0 > blue)"),
                      height=760, margin=dict(l=60, r=20, t=90, b=50))
    return fig


def studio_light(brightness: float = 0.9, above: float = 0.2, front: float = 0.3, side: float = 0.0) -> torch.Tensor:
    """A white light ``(27,)`` for looking at faces: ``gamma_1`` plus band-1 terms (y up, z front, x
    right), coefficient-major like theta's illumination entry."""
    g = torch.zeros(N_SH, 3)
    g[0], g[1], g[2], g[3] = brightness, above, front, side
    return g.reshape(-1)


def studio_theta(layout: ParamLayout, batch: int, light: torch.Tensor | None = None, device=None) -> torch.Tensor:
    """``(batch, m)`` parameters of the mean face, frontal and neutral, under a white ``light`` ``(27,)``
    (default :func:`studio_light`): the start for pictures that vary one component at a time."""
    th = layout.zeros(batch, device=device)
    th[:, layout["illumination"]] = (studio_light() if light is None else light).to(th)
    return th


def example_lights() -> dict:
    """Named example illuminations ``(27,)`` (coefficient-major RGB): ambient, a key from above,
    warm key from the right with a blue fill from the left, and a coloured band-2 light."""
    def light(g0, band1=((0, 0, 0),) * 3, band2=None):
        g = torch.zeros(N_SH, 3)
        g[0] = torch.tensor(g0)
        g[1:4] = torch.tensor(band1)  # y, z, x
        if band2 is not None:
            g[4:9] = torch.tensor(band2)
        return g.reshape(-1)

    return {
        "ambient (gamma_1 = 1)": light((1.0, 1.0, 1.0)),
        "white key from above": light((0.9, 0.9, 0.9), ((0.5, 0.5, 0.5), (0.3, 0.3, 0.3), (0, 0, 0))),
        "warm right, blue left": light((0.9, 0.8, 0.75), ((0.1, 0.1, 0.1), (0.25, 0.25, 0.25),
                                                          (0.45, 0.15, -0.35))),
        "coloured band 2": light((0.9, 0.9, 0.9), ((0, 0, 0), (0.2, 0.2, 0.2), (0, 0, 0)),
                                 ((0.3, -0.1, -0.1), (0, 0, 0), (-0.2, -0.2, 0.25), (0, 0, 0), (-0.1, 0.3, -0.1))),
    }


def sh_lighting_figure(lights: dict | None = None, res: int = 48, albedo=(0.8, 0.8, 0.8)) -> go.Figure:
    """Spheres of constant ``albedo`` shaded by SH lights (:func:`facelib.render.shading.shade`, Eq. 4),
    side by side.  ``lights``: name -> ``(27,)`` / ``(9, 3)`` coefficients (default :func:`example_lights`)."""
    lights = example_lights() if lights is None else lights
    names = list(lights)
    gamma = torch.stack([torch.as_tensor(lights[k], dtype=torch.float64).reshape(-1) for k in names])
    n, inside = sphere_normals(res)
    K = len(names)
    normals = n.reshape(1, -1, 3).expand(K, -1, -1).contiguous()
    rho = torch.tensor(albedo, dtype=torch.float64).expand_as(normals).contiguous()
    img = shade(rho, normals, gamma).reshape(K, res, res, 3)
    img = torch.where(inside[..., None], img.clamp(0, 1), torch.ones_like(img)).permute(0, 3, 1, 2)
    fig = make_subplots(1, K, subplot_titles=names, horizontal_spacing=0.03)
    for k in range(K):
        fig.add_trace(go.Image(source=_png_source(img[k]), hoverinfo="x+y"), row=1, col=k + 1)
        _pixel_axes(fig, 1, k + 1)
    fig.update_layout(title=dict(text=f"A sphere of albedo {tuple(albedo)} under SH lights (27 coefficients each)"),
                      height=340, margin=dict(l=50, r=10, t=90, b=40))
    return fig


# ------------------------------------------------------------------------------ rasterization
def raster_figure(r, index: int = 0, landmarks=None, n_faces: int | None = None) -> go.Figure:
    """The buffers of one :class:`facelib.render.Render`: pix_to_face, depth, masks, and the image.

    Args:
        r: the render.  index: which batch element.  landmarks: optional ``(68, 2)`` pixels drawn on
            the image (e.g. ``landmarks_2d(model, r.screen)[index]``).  n_faces: the mesh's triangle
            count, to turn packed face indices (``n * F + f``) into per-mesh ones.
    """
    p2f = r.fragments.pix_to_face[index, ..., 0].cpu().numpy()
    face = np.where(p2f >= 0, p2f % n_faces if n_faces else p2f, -1).astype(np.float32)
    face[p2f < 0] = np.nan
    depth = r.depth[index].cpu().numpy().astype(np.float32)
    depth = np.where(r.mask[index].cpu().numpy(), np.round(depth, 1), np.nan).astype(np.float32)
    mask = r.mask[index].cpu().numpy().astype(np.uint8) + r.input_mask[index].cpu().numpy().astype(np.uint8)
    titles = ("rendered image + landmarks", "pix_to_face (triangle index)",
              "masks: input (white), mouth (grey)", "depth [mm]")
    fig = make_subplots(1, 4, subplot_titles=titles, horizontal_spacing=0.05)
    fig.add_trace(go.Image(source=_png_source(r.image[index]), hoverinfo="x+y"), 1, 1)
    if landmarks is not None:
        L = _np(landmarks, np.float64)
        fig.add_trace(go.Scatter(x=L[:, 0] - 0.5, y=L[:, 1] - 0.5, mode="markers", name="landmarks",
                                 marker=dict(size=4, color="#00e676", line=dict(width=0.5, color="black"))), 1, 1)
    fig.add_trace(go.Heatmap(z=face, colorscale="Turbo", showscale=False, hovertemplate="face %{z}<extra></extra>"), 1, 2)
    fig.add_trace(go.Heatmap(z=depth, colorscale="Viridis", reversescale=True,
                             colorbar=dict(title=dict(text="mm"), x=1.0, len=0.8, thickness=12),
                             hovertemplate="depth %{z} mm<extra></extra>"), 1, 4)
    fig.add_trace(go.Heatmap(z=mask, colorscale=[[0, "black"], [0.5, "grey"], [1, "white"]], zmin=0, zmax=2,
                             showscale=False, hovertemplate="%{z}<extra></extra>"), 1, 3)
    for c in range(1, 5):
        _pixel_axes(fig, 1, c)
        fig.update_yaxes(autorange="reversed", scaleanchor=f"x{c if c > 1 else ''}", row=1, col=c)
    fig.update_layout(height=360, showlegend=False, margin=dict(l=50, r=10, t=60, b=40),
                      title=dict(text="Rasterization: what each pixel sees"))
    return fig


# ------------------------------------------------------------------------------ the live panel
class LivePanel:
    """ipywidgets panel for JupyterLab: pose, first components and SH sliders drive a 3D mesh
    (``go.FigureWidget``) and an image rendered by :func:`facelib.render.render`.

    Every slider move (``continuous_update=True``) recomputes Eq. 2-3 for one face, rotates it,
    renders it at ``image_size`` under no_grad and updates both views.  Display it with
    ``display(panel)``; :meth:`update_rate` measures the end-to-end updates per second.
    """

    def __init__(self, model, image_size: int = 160, mesh_height: int = 420):
        import ipywidgets as w

        self.model = model
        self.layout = ParamLayout.from_model(model)
        self.image_size = int(image_size)

        def fs(desc, lo, hi, step, value=0.0, unit=""):
            return w.FloatSlider(value=value, min=lo, max=hi, step=step, description=desc, readout_format=".2f",
                                 continuous_update=True, style={"description_width": "150px"},
                                 layout=w.Layout(width="380px"), tooltip=unit)

        self.sliders = {
            "yaw": fs("yaw β [deg]", -40, 40, 1), "pitch": fs("pitch α [deg]", -40, 40, 1),
            "roll": fs("roll γ [deg]", -15, 15, 1),
            "shape": fs("shape 1 [σ]", -3, 3, 0.1), "expression": fs("expression 1 [σ]", -3, 3, 0.1),
            "reflectance": fs("reflectance 1 [σ]", -3, 3, 0.1),
            "sh0": fs("SH γ₁ (constant)", 0.0, 1.5, 0.01, 0.9), "sh_y": fs("SH γ₂ (y, above)", -0.6, 0.6, 0.01, 0.2),
            "sh_z": fs("SH γ₃ (z, front)", -0.6, 0.6, 0.01, 0.3), "sh_x": fs("SH γ₄ (x, right)", -0.6, 0.6, 0.01, 0.0),
        }
        self.image = w.Image(format="png", width=self.image_size, height=self.image_size)
        verts, colors = self._compute()
        fig = mesh_figure(verts, model.triangles, colors, title="live mesh (SH-shaded colours)",
                          baked_shading=True, height=mesh_height)
        self.fig = go.FigureWidget(fig)
        self.n_updates = 0
        for s in self.sliders.values():
            s.observe(self._on_change, names="value")
        self.widget = w.HBox([w.VBox(list(self.sliders.values())), self.fig, self.image])

    def theta(self) -> torch.Tensor:
        """``(1, m)`` parameter vector of the current slider values (Eq. 1 layout)."""
        s = {k: v.value for k, v in self.sliders.items()}
        dev, L = self.model.device, self.layout
        theta = L.zeros(1, device=dev)
        ang = torch.deg2rad(torch.tensor([s["pitch"], s["yaw"], s["roll"]]))
        theta[0, L["rotation"]] = ang.to(theta)
        theta[0, L["shape"].start] = s["shape"]
        theta[0, L["expression"].start + self.model.mouth_component] = s["expression"]
        theta[0, L["reflectance"].start] = s["reflectance"]
        theta[0, L["illumination"]] = studio_light(s["sh0"], s["sh_y"], s["sh_z"], s["sh_x"]).to(theta)
        return theta

    def _compute(self):
        from ..render import render

        with torch.no_grad():
            theta = self.theta()
            r = render(self.model, theta, self.image_size)
            R = rot_xyz(self.layout.unpack(theta)["rotation"])
            parts = self.layout.unpack(theta)
            verts = self.model.geometry(parts["shape"], parts["expression"]) @ R.transpose(-1, -2)
        self.image.value = png_bytes(r.image[0])
        return verts[0], r.colors[0]

    def _on_change(self, change=None):
        verts, colors = self._compute()
        x, y, z = _coords(verts)
        with self.fig.batch_update():
            t = self.fig.data[0]
            t.x, t.y, t.z = x, y, z
            t.vertexcolor = hex_colors(colors)
        self.n_updates += 1

    def update_rate(self, n: int = 20, slider: str = "yaw") -> float:
        """Move ``slider`` through ``n`` distinct values and return end-to-end updates per second
        (mesh recompute + render + PNG + widget update), then restore its value."""
        s = self.sliders[slider]
        old = s.value
        vals = np.linspace(s.min, s.max, n + 1)[1:] if old != s.max else np.linspace(s.max, s.min, n + 1)[1:]
        t0 = time.perf_counter()
        for v in vals:
            s.value = float(v)
        dt = time.perf_counter() - t0
        s.value = old
        return n / dt

    def _ipython_display_(self):
        from IPython.display import display

        display(self.widget)


def live_panel(model, image_size: int = 160) -> LivePanel:
    """A :class:`LivePanel` for ``model``; ``display(panel)`` in JupyterLab."""
    return LivePanel(model, image_size=image_size)


_PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf")


# Named 1-D statistics of unpacked parameters (ParamLayout.unpack) for histogram_figure's panels;
# each takes the unpacked dict and the model's mouth component.
PARAMETER_PANELS = {
    "pitch alpha [deg]": lambda p, mc: torch.rad2deg(p["rotation"][:, 0]),
    "yaw beta [deg]": lambda p, mc: torch.rad2deg(p["rotation"][:, 1]),
    "roll gamma [deg]": lambda p, mc: torch.rad2deg(p["rotation"][:, 2]),
    "shape theta_s[1]": lambda p, mc: p["shape"][:, 0],
    "expression theta_e[1] (mouth)": lambda p, mc: p["expression"][:, mc],
    "expression theta_e[2]": lambda p, mc: p["expression"][:, 1],
    "reflectance theta_r[1] (skin tone)": lambda p, mc: p["reflectance"][:, 0],
    "SH coefficient 1 (red)": lambda p, mc: p["illumination"].reshape(-1, N_SH, 3)[:, 0, 0],
    "SH coefficient 1 (mean over RGB)": lambda p, mc: p["illumination"].reshape(-1, N_SH, 3)[:, 0].mean(1),
    "light colour: max - min over RGB": lambda p, mc: light_colour_spread(p["illumination"]),
}


def parameter_panels(groups: dict, names, mouth_component: int) -> dict:
    """:func:`histogram_figure`'s ``panels`` for parameter sets: ``groups`` ``{label: unpacked theta}``
    (:meth:`ParamLayout.unpack`), ``names`` keys of :data:`PARAMETER_PANELS` in panel order."""
    unknown = [n for n in names if n not in PARAMETER_PANELS]
    if unknown:
        raise ValueError(f"unknown panels {unknown}; known: {list(PARAMETER_PANELS)}")
    return {n: {label: PARAMETER_PANELS[n](p, mouth_component) for label, p in groups.items()} for n in names}


def histogram_figure(panels: dict, title: str, cols: int = 3, bins: int = 40, height: int | None = None) -> go.Figure:
    """Overlaid, normalised histograms in a grid of panels.

    ``panels``: ``{panel title (with units): {series label: 1-D values}}``; each series keeps its colour
    across panels (the legend shows it once).
    """
    names = list(panels)
    rows = -(-len(names) // cols)
    fig = make_subplots(rows=rows, cols=cols, subplot_titles=names, horizontal_spacing=0.07,
                        vertical_spacing=0.16 if rows > 1 else 0.1)
    labels = list(dict.fromkeys(lbl for p in panels.values() for lbl in p))
    for i, name in enumerate(names):
        data = {k: np.asarray(torch.as_tensor(v).detach().cpu().double()).ravel() for k, v in panels[name].items()}
        allv = np.concatenate(list(data.values()))
        lo, hi = float(allv.min()), float(allv.max())
        edges = np.linspace(lo, hi if hi > lo else lo + 1.0, bins + 1)  # shared bins: the book stores counts only
        for label, v in data.items():
            dens, _ = np.histogram(v, bins=edges, density=True)
            j = labels.index(label)
            fig.add_trace(go.Bar(x=(edges[:-1] + edges[1:]) / 2, y=np.round(dens, 5), width=edges[1] - edges[0],
                                 name=label, legendgroup=label, showlegend=i == 0, opacity=0.55,
                                 marker_color=_PALETTE[j % len(_PALETTE)], marker_line_width=0),
                          row=i // cols + 1, col=i % cols + 1)
    fig.update_layout(title=dict(text=title), barmode="overlay", height=height or 260 * rows + 90,
                      margin=dict(l=50, r=10, t=80, b=40), legend=dict(orientation="h", y=-0.08))
    fig.update_yaxes(title_text="density", col=1)
    return fig


def _add_levels(fig: go.Figure, levels: dict) -> None:
    """Horizontal reference lines ``{label: y}``: the first dashed, the rest dotted, labelled at the right."""
    for j, (label, y) in enumerate(levels.items()):
        fig.add_hline(y=float(y), line=dict(color="#555", dash="dash" if j == 0 else "dot"),
                      annotation_text=label, annotation_position="top right")


def curves_figure(series: dict, title: str, xaxis: str, yaxis: str, log_y: bool = False, mode: str = "lines",
                  height: int = 380, levels: dict | None = None) -> go.Figure:
    """Line plot of ``{label: (x, y)}`` with axis titles (give units), an optional log y axis and
    optional horizontal reference ``levels`` (``{label: y}``)."""
    fig = go.Figure()
    for j, (label, (x, y)) in enumerate(series.items()):
        fig.add_trace(go.Scatter(x=np.asarray(x), y=np.asarray(y), mode=mode, name=label,
                                 line=dict(color=_PALETTE[j % len(_PALETTE)])))
    _add_levels(fig, levels or {})
    fig.update_layout(title=dict(text=title), xaxis_title=xaxis, yaxis_title=yaxis, height=height,
                      margin=dict(l=60, r=10, t=60, b=50))
    if log_y:
        fig.update_yaxes(type="log")
    return fig


def running_mean(y, k: int = 25) -> np.ndarray:
    """Running mean of a per-step series ``y (n,)`` over ``k`` steps (at most a quarter of ``n``), for
    training plots; ``(n - k + 1,)``."""
    y = np.asarray(y, dtype=float)
    k = max(1, min(int(k), len(y) // 4 or 1))
    return np.convolve(y, np.ones(k) / k, mode="valid")


def learning_curves_figure(curves: dict, levels: dict, series: str, title: str, yaxis: str,
                           height: int = 420) -> go.Figure:
    """Held-out error against training time for each row, one line per training seed (the same colour
    for a row), with horizontal reference ``levels`` (``{label: y}``, e.g. mean face and floor) dashed.

    ``curves``: ``{row: {seed: [{"train_s": s, series: y, ...}, ...]}}`` (:func:`facelib.inversefacenet.curves_json`);
    ``series``: the key to plot, e.g. ``"wild_geometric_mm"``.
    """
    fig = go.Figure()
    for j, (row, seeds) in enumerate(curves.items()):
        for k, (seed, pts) in enumerate(seeds.items()):
            if not pts:
                continue
            fig.add_trace(go.Scatter(x=[p["train_s"] for p in pts], y=[p[series] for p in pts],
                                     mode="lines+markers", name=row, legendgroup=row, showlegend=k == 0,
                                     line=dict(color=_PALETTE[j % len(_PALETTE)]), marker=dict(size=4),
                                     hovertemplate=f"{row}, seed {seed}<br>%{{x:.0f}} s: %{{y:.2f}}<extra></extra>"))
    _add_levels(fig, levels)
    fig.update_layout(title=dict(text=title), xaxis_title="training time [s]", yaxis_title=yaxis, height=height,
                      margin=dict(l=60, r=10, t=60, b=50))
    return fig
