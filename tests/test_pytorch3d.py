"""The rasterizer against PyTorch3D's own ``rasterize_meshes`` (the optional backend; skips without it).

PyTorch3D rasterizes in float32 in NDC units; ours below runs in float64 in pixels, so the comparison
is against PyTorch3D's rounding, bounded per fragment from the float32 arithmetic (unit roundoff
``u = 2^-24``), not by a tolerance that passed once:

- coordinates are rounded to float32 in NDC, where ``|x|, |y| <= M`` (the largest NDC coordinate of
  the face and the pixel centre); an edge function ``(p - a) x (b - a)`` with vectors of length
  ``<= L`` (the largest pixel-to-vertex distance) is then off by at most ``16 u M L``;
- its barycentric ``b_i = e_i / A`` (``A`` twice the face's NDC area) by ``(48 u M L) / A + 8 u``:
  ``16 u M L`` for ``e_i``, ``32 u M L`` for ``A`` (times ``b_i <= 1``), the division and the sum;
  the perspective correction ``(b_i / z_i) / sum_j (b_j / z_j)`` multiplies that by at most
  ``(z_max / z_min)^2``;
- depth ``sum_i b_i z_i`` by ``3 z_max`` times the barycentric bound plus ``4 u z_max``;
- PyTorch3D divides by ``A + 1e-8`` (its ``kEpsilon``), so its screen-space barycentrics sum to
  ``A / (A + 1e-8)``, not 1; we compare them renormalised (``b / sum b``, ``zbuf / sum b``), which is
  what both renderers mean (in perspective mode PyTorch3D renormalises them itself).
"""

import numpy as np
import pytest
import torch

from facelib.render import raster
from facelib.render.raster import fragments_from_pix_to_face, rasterize

pytorch3d = pytest.importorskip("pytorch3d.renderer", reason="PyTorch3D is not installed (optional backend)")
from facelib.render.raster import pytorch3d_fragments  # noqa: E402

U = 2.0 ** -24  # float32 unit roundoff
KEPS = 1e-8  # PyTorch3D's kEpsilon: faces with |A| <= it are skipped, and it is added to A


def face_scene(model, size):
    """Two copies of the open model's mean face, orthographic, the second shifted by a fraction of a
    pixel, at ``size`` pixels (height) and ``size * 5 // 6`` (width): non-square, K = 2 layers."""
    s = size / 240
    x, y, z = model.mean_shape.double().unbind(-1)
    v = torch.stack([size / 2 + x * 0.9 * s, size / 2 - y * 0.9 * s, 300 - z], -1)[None]
    v = torch.cat([v, v + torch.tensor([2.5, -1.5, 0.0], dtype=torch.float64)])
    return v, model.triangles, (size, size * 5 // 6)


def random_scene(seed, N=2, T=24, H=32, W=28):
    """T random overlapping triangles of 4-20 px per image, some partly off-screen (no degenerate and no
    behind-camera faces: :func:`pytorch3d_fragments` removes those before PyTorch3D sees them)."""
    g = torch.Generator().manual_seed(seed)
    centre = torch.rand(N, T, 1, 2, generator=g, dtype=torch.float64) * torch.tensor([W + 8.0, H + 8.0]) - 4
    xy = centre + (torch.rand(N, T, 3, 2, generator=g, dtype=torch.float64) - 0.5) * 20
    z = 1 + 4 * torch.rand(N, T, 3, 1, generator=g, dtype=torch.float64)
    return torch.cat([xy, z], -1).reshape(N, T * 3, 3), torch.arange(T * 3).reshape(T, 3), (H, W)


def fragment_geometry(verts, faces, image_size, pix, face):
    """Per fragment (pixel ``pix`` flat in (N, H, W), packed ``face``): the float64 NDC facts the bounds
    use: M, L, |A|, z_min, z_max, the smallest edge length, and the screen barycentrics."""
    (H, W), (N, V) = image_size, verts.shape[:2]
    F, s = faces.shape[0], min(image_size)
    tri = verts.reshape(-1, 3)[faces[face % F] + (face // F * V)[:, None]]  # (M, 3, 3) pixels
    x, y = -(2 * tri[..., 0] - W) / s, -(2 * tri[..., 1] - H) / s
    px = -(2 * ((pix % W).double() + 0.5) - W) / s
    py = -(2 * (((pix // W) % H).double() + 0.5) - H) / s
    dx, dy = x - px[:, None], y - py[:, None]
    e = torch.stack([dx[:, (i + 1) % 3] * dy[:, (i + 2) % 3] - dy[:, (i + 1) % 3] * dx[:, (i + 2) % 3]
                     for i in range(3)], 1)
    A = e.sum(1)
    M = torch.maximum(torch.cat([x, y], 1).abs().amax(1), torch.maximum(px.abs(), py.abs()))
    L = torch.hypot(dx, dy).amax(1)
    z = tri[..., 2]
    edge = torch.hypot(x - x.roll(1, 1), y - y.roll(1, 1)).amin(1)
    return dict(M=M, L=L, A=A.abs(), zmin=z.amin(1), zmax=z.amax(1), edge=edge, bary=e / A[:, None])


def bary_bound(geo, perspective):
    """Float32 bound on PyTorch3D's (renormalised) barycentrics of each fragment (module docstring)."""
    b = 48 * U * geo["M"] * geo["L"] / geo["A"] + 8 * U
    return b * (geo["zmax"] / geo["zmin"]) ** 2 if perspective else b


def unexplained_mismatches(ours, theirs, verts, faces, image_size, perspective):
    """Pixels where the two ``pix_to_face`` differ for no float32 reason. A difference is explained when
    one of the faces either side lists at the pixel has a barycentric within the float32 bound of 0
    (the pixel centre on an edge: our inside test is inclusive, PyTorch3D's strict, and rounding
    decides), a twice-area within rounding of PyTorch3D's 1e-8 skip threshold, or two of them depths
    within the float32 depth bound of each other (their order is rounding's)."""
    N, H, W, K = ours.shape
    bad = (ours != theirs).any(-1).reshape(-1).nonzero().squeeze(1)
    left = []
    for p in bad.tolist():
        fs = torch.unique(torch.cat([ours.reshape(-1, K)[p], theirs.reshape(-1, K)[p]]))
        fs = fs[fs >= 0]
        geo = fragment_geometry(verts, faces, image_size, torch.full_like(fs, p), fs)
        bb = bary_bound(geo, perspective)
        on_edge = (geo["bary"].amin(1) <= bb).any()
        tiny = (geo["A"] <= KEPS * (1 + 1e-3) + 48 * U * geo["M"] * geo["L"]).any()
        F, V = faces.shape[0], verts.shape[1]
        zf = verts.reshape(-1, 3)[faces[fs % F] + (fs // F * V)[:, None]][..., 2]
        b = geo["bary"]
        depth = 1 / (b / zf).sum(1) if perspective else (b * zf).sum(1)
        dz = 3 * bb * geo["zmax"] + 4 * U * geo["zmax"]
        gaps = (depth[:, None] - depth[None]).abs() <= (dz[:, None] + dz[None])
        tie = (gaps.sum() > len(fs))
        if not (on_edge or tiny or tie):
            left.append(p)
    return left


def compare_values(ours, theirs, verts, faces, image_size, perspective):
    """zbuf, barycentrics and distances on the fragments both agree on, within the float32 bounds;
    returns the largest error / bound ratio of each."""
    same = (ours.pix_to_face == theirs.pix_to_face) & (ours.pix_to_face >= 0)
    K = same.shape[-1]
    flat = same.reshape(-1).nonzero().squeeze(1)
    geo = fragment_geometry(verts, faces, image_size, flat // K, ours.pix_to_face.reshape(-1)[flat])
    bb = bary_bound(geo, perspective)
    tb = theirs.bary_coords.reshape(-1, 3)[flat].double()
    tot = tb.sum(1, keepdim=True)
    err_b = (ours.bary_coords.reshape(-1, 3)[flat] - tb / tot).abs().amax(1)
    err_z = (ours.zbuf.reshape(-1)[flat] - theirs.zbuf.reshape(-1)[flat].double() / tot[:, 0]).abs()
    bz = 3 * bb * geo["zmax"] + 4 * U * geo["zmax"]
    # distances, compared squared in NDC units (PyTorch3D's): |d^2 - d'^2| <= 32 u M L
    s = min(image_size)
    d_o = (ours.dists.reshape(-1)[flat] * 2 / s) ** 2
    d_t = (theirs.dists.reshape(-1)[flat].double() * 2 / s) ** 2
    err_d = (d_o - d_t).abs()
    bd = 32 * U * geo["M"] * geo["L"]
    assert (err_b <= bb).all(), f"barycentrics off by {(err_b / bb).max():.3g} x the float32 bound"
    assert (err_z <= bz).all(), f"zbuf off by {(err_z / bz).max():.3g} x the float32 bound"
    assert (err_d <= bd).all(), f"dists off by {(err_d / bd).max():.3g} x the float32 bound"
    return float((err_b / bb).max()), float((err_z / bz).max()), float((err_d / bd).max())


def check_parity(verts, faces, image_size, K, perspective, cull):
    ours = rasterize(verts, faces, image_size, faces_per_pixel=K, perspective_correct=perspective,
                     cull_backfaces=cull, backend="torch")
    theirs = pytorch3d_fragments(verts, faces, image_size, K, perspective, cull)
    assert theirs.pix_to_face.shape == ours.pix_to_face.shape
    agree = (ours.pix_to_face == theirs.pix_to_face).all(-1).double().mean()
    assert unexplained_mismatches(ours.pix_to_face, theirs.pix_to_face, verts, faces, image_size,
                                  perspective) == []
    ratios = compare_values(ours, theirs, verts, faces, image_size, perspective)
    return float(agree), ratios


@pytest.mark.parametrize("perspective", [True, False])
def test_face_parity(open_model, perspective):
    """The open model (44.6k faces, 2 images, K = 2, back faces culled, 48 x 40): pix_to_face agrees
    except where rounding decides, and zbuf / barycentrics / distances agree within float32 bounds."""
    v, faces, size = face_scene(open_model, 48)
    agree, _ = check_parity(v, faces, size, 2, perspective, True)
    # what rounding decides here: pixel centres exactly on the mesh's vertical midline edges
    assert agree > 0.99


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("perspective", [True, False])
def test_random_triangles_parity(seed, perspective):
    """Overlapping triangles (3 layers, both windings, no culling): the depth order agrees too."""
    v, faces, size = random_scene(seed)
    agree, _ = check_parity(v, faces, size, 3, perspective, False)
    assert agree > 0.98


def test_backend_gives_pytorch3d_visibility(open_model):
    """``backend="pytorch3d"``: PyTorch3D's pix_to_face, our (float64) fragments on it."""
    v, faces, size = face_scene(open_model, 48)
    a = rasterize(v, faces, size, faces_per_pixel=2, cull_backfaces=True, backend="pytorch3d")
    theirs = pytorch3d_fragments(v, faces, size, 2, True, True)
    assert torch.equal(a.pix_to_face, theirs.pix_to_face)
    b = fragments_from_pix_to_face(v, faces, a.pix_to_face, True)
    for x, y in zip(a[1:], b[1:]):
        assert torch.equal(x, y)


def test_binning_on_the_cpu(open_model):
    """On the CPU PyTorch3D's default ``bin_size=None`` is naive rasterization (``bin_size=0``, the same
    bits), and coarse-to-fine binning is not implemented (0.7.9: ``RuntimeError: NOT IMPLEMENTED``),
    so the benchmark can time only the naive path there."""
    v, faces, size = face_scene(open_model, 48)
    a = pytorch3d_fragments(v, faces, size, 1, True, True, bin_size=None)
    b = pytorch3d_fragments(v, faces, size, 1, True, True, bin_size=0)
    for x, y in zip(a, b):
        assert torch.equal(x, y)
    with pytest.raises(RuntimeError, match="NOT IMPLEMENTED"):
        pytorch3d_fragments(v, faces, size, 1, True, True, bin_size=8)


def per_fragment_bound(verts, faces, image_size, p2f, gz, gb, perspective):
    """Float32 bound on PyTorch3D's vertex gradient of ``sum(gz * zbuf) + sum(gb * bary)`` over the
    fragments of ``p2f``, accumulated per vertex. A fragment's contribution is a sum of terms of size
    ``T = (|gz| z_max + sum|gb|) * 2 L / A * (2 / s) + |gz|`` (pixel units: d b / d x ~ L / A, and NDC
    to pixels is 2 / s) that cancel where the pixel is near an edge; each term carries a relative
    error of at most ``rho = (48 u M L / A + 2 u M / edge) (z_max / z_min)^2 + 16 u`` (A's rounding,
    an edge vector's rounding, the perspective correction, the products)."""
    (N, V), K = verts.shape[:2], p2f.shape[-1]
    flat = (p2f.reshape(-1) >= 0).nonzero().squeeze(1)
    face = p2f.reshape(-1)[flat]
    geo = fragment_geometry(verts, faces, image_size, flat // K, face)
    zr = geo["zmax"] / geo["zmin"]
    rho = (48 * U * geo["M"] * geo["L"] / geo["A"] + 2 * U * geo["M"] / geo["edge"]) * zr ** 2 + 16 * U
    gzf = gz.reshape(-1)[flat].abs()
    gbf = gb.reshape(-1, 3)[flat].abs().sum(1)
    T = (gzf * geo["zmax"] + gbf) * 2 * geo["L"] / geo["A"] * (2 / min(image_size)) + gzf
    F = faces.shape[0]
    vid = faces[face % F] + (face // F * V)[:, None]
    bound = torch.zeros(N * V, dtype=torch.float64).index_add_(0, vid.reshape(-1), (T * rho).repeat_interleave(3))
    return bound.view(N, V, 1)


@pytest.mark.parametrize("scene", ["random", "face"])
@pytest.mark.parametrize("perspective", [True, False])
def test_gradients_parity(open_model, scene, perspective):
    """Vertex gradients of zbuf and barycentrics through PyTorch3D's C++ backward vs ours (autograd,
    float64) on the fragments both agree on, within the per-vertex float32 bound above; vertices no
    agreed fragment touches get exactly zero from both."""
    if scene == "face":
        v, faces, size = face_scene(open_model, 48)
        K, cull = 2, True
    else:
        v, faces, size = random_scene(3)
        K, cull = 3, False
    ours_fr = rasterize(v, faces, size, faces_per_pixel=K, perspective_correct=perspective,
                        cull_backfaces=cull, backend="torch")
    with torch.no_grad():
        theirs_p2f = pytorch3d_fragments(v, faces, size, K, perspective, cull).pix_to_face
    same = (ours_fr.pix_to_face == theirs_p2f) & (ours_fr.pix_to_face >= 0)
    g = torch.Generator().manual_seed(0)
    gz = torch.randn(same.shape, generator=g, dtype=torch.float64) * same
    gb = torch.randn((*same.shape, 3), generator=g, dtype=torch.float64) * same[..., None]

    va = v.clone().requires_grad_(True)
    fo = fragments_from_pix_to_face(va, faces, torch.where(same, ours_fr.pix_to_face, -1), perspective)
    ((fo.zbuf * gz).sum() + (fo.bary_coords * gb).sum()).backward()

    vb = v.clone().requires_grad_(True)
    ft = pytorch3d_fragments(vb, faces, size, K, perspective, cull)
    tot = ft.bary_coords.double().sum(-1, keepdim=True)
    zn = torch.where(same, ft.zbuf.double() / tot[..., 0], 0)
    bn = torch.where(same[..., None], ft.bary_coords.double() / tot, 0)
    ((zn * gz).sum() + (bn * gb).sum()).backward()

    bound = per_fragment_bound(v, faces, size, torch.where(same, ours_fr.pix_to_face, -1), gz, gb,
                               perspective).expand_as(va.grad)
    err = (va.grad - vb.grad).abs()
    assert (va.grad.abs() > 0).sum() > 100
    assert (err <= bound).all(), f"gradient off by {(err / bound).nan_to_num().max():.3g} x the float32 bound"
    assert (vb.grad[bound == 0] == 0).all()
    if scene == "random":  # big triangles: the bound is tight enough to see a 5 % error at most vertices
        assert (bound <= 0.05 * va.grad.abs()).double()[va.grad.abs() > 0].mean() > 0.75
    # (on the face's sub-pixel triangles the worst-case bound is of the gradient's own size at half the
    # vertices; the error seen is 5e-5 of the gradient's norm)


def test_empty_scene():
    v = torch.tensor([[[1.0, 1, -1], [5, 1, -1], [1, 5, -1]]], dtype=torch.float64)  # behind the camera
    fr = pytorch3d_fragments(v, torch.tensor([[0, 1, 2]]), 8)
    assert (fr.pix_to_face == -1).all() and (fr.zbuf == -1).all() and fr.bary_coords.shape == (1, 8, 8, 1, 3)


def test_auto_backend_on_cpu_is_not_pytorch3d():
    """With PyTorch3D installed, CPU tensors still take our kernel (``auto``), PyTorch3D only on CUDA."""
    v, faces, size = random_scene(0)
    a = rasterize(v, faces, size, backend="auto")
    b = rasterize(v, faces, size, backend="numba" if raster.HAVE_NUMBA else "torch")
    assert torch.equal(a.pix_to_face, b.pix_to_face)
    np.testing.assert_array_equal(a.zbuf.numpy(), b.zbuf.numpy())
