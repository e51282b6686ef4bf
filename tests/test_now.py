"""facelib.eval.metrics.closest_points and now_error: the shared NoW-style geometric error."""

import numpy as np
import pytest
import torch

from facelib.eval.metrics import _Surface, closest_point_on_triangle, closest_points, now_error, point_to_surface_distance


def random_rotation(gen):
    q, _ = torch.linalg.qr(torch.randn(3, 3, generator=gen, dtype=torch.float64))
    return q * torch.linalg.det(q)


def bumpy_mesh(nx=14, ny=12, seed=0, big=True):
    """A height field with triangles of very different sizes (a fine grid, stretched along x, plus
    a few huge triangles when ``big``): exercises the size groups and the widening candidate search."""
    g = torch.Generator().manual_seed(seed)
    xs = torch.cumsum(torch.rand(nx, generator=g, dtype=torch.float64) ** 3 * 8 + 0.2, 0)
    ys = torch.linspace(0, 40, ny, dtype=torch.float64)
    x, y = torch.meshgrid(xs, ys, indexing="ij")
    z = 4 * torch.rand(nx, ny, generator=g, dtype=torch.float64)
    verts = torch.stack([x, y, z], -1).reshape(-1, 3)
    i = torch.arange(nx * ny).reshape(nx, ny)
    a, b, c, d = i[:-1, :-1], i[1:, :-1], i[:-1, 1:], i[1:, 1:]
    faces = torch.cat([torch.stack([a, b, c], -1).reshape(-1, 3), torch.stack([b, d, c], -1).reshape(-1, 3)])
    if big:
        far = torch.tensor([[0.0, -60, 30], [80, -60, 30], [40, 100, -30]], dtype=torch.float64)
        faces = torch.cat([faces, torch.tensor([[len(verts), len(verts) + 1, len(verts) + 2]])])
        verts = torch.cat([verts, far])
    return verts, faces


def brute_closest(points, verts, faces, chunk=16):
    """Every point against every triangle (``chunk`` points at a time)."""
    tri = verts[faces]
    ds, qs = [], []
    for s in range(0, len(points), chunk):
        p = points[s:s + chunk, None]
        q = closest_point_on_triangle(p, tri[:, 0], tri[:, 1], tri[:, 2])  # (p, F, 3)
        d = (p - q).norm(dim=-1)
        k = d.argmin(1)
        ds.append(d[torch.arange(len(k)), k])
        qs.append(q[torch.arange(len(k)), k])
    return torch.cat(ds), torch.cat(qs)


@pytest.mark.parametrize("big", [False, True])
def test_closest_points_match_brute_force(big):
    verts, faces = bumpy_mesh(big=big)
    g = torch.Generator().manual_seed(1)
    lo, hi = verts.min(0).values - 15, verts.max(0).values + 15
    pts = lo + (hi - lo) * torch.rand(2000, 3, generator=g, dtype=torch.float64)
    d, q = closest_points(pts, verts, faces)
    d_ref, q_ref = brute_closest(pts, verts, faces)
    assert d.shape == (2000,) and q.shape == (2000, 3) and d.dtype == torch.float64
    assert torch.allclose(d, d_ref, atol=1e-10, rtol=0)
    assert torch.allclose((pts - q).norm(dim=-1), d, atol=1e-10)  # the closest point is at that distance
    same = (q - q_ref).norm(dim=-1) < 1e-8  # and is the brute-force one, except at exact ties
    assert same.float().mean() > 0.999
    assert torch.allclose(d, point_to_surface_distance(pts, verts, faces), atol=1e-10)
    # the answer does not depend on the grid: tiny cells (many rings), huge cells (a few cells),
    # every triangle measured against every point (max_span=0), a cell budget that forces larger cells
    tri = np.ascontiguousarray(verts[faces].numpy())
    for kw in ({"cell": 0.3}, {"cell": 500.0}, {"max_span": 0}, {"max_cells": 64}):
        surf = _Surface(tri, **kw)
        d2, q2, f2 = surf.query(pts.numpy())
        assert torch.allclose(torch.from_numpy(d2).sqrt(), d_ref, atol=1e-10, rtol=0), kw
        assert (f2 >= 0).all() and surf.start[-1] == len(surf.items), kw
    assert len(_Surface(tri, max_span=0).big) == len(faces)
    # points on the surface are at distance 0 from it
    assert closest_points(verts[faces].mean(1), verts, faces)[0].max() < 1e-12


def test_closest_points_bad_inputs():
    verts, faces = bumpy_mesh(4, 3, big=False)
    with pytest.raises(ValueError, match="points"):
        closest_points(torch.zeros(5, 2), verts, faces)
    with pytest.raises(ValueError, match="face indices span"):
        closest_points(torch.zeros(5, 3), verts, faces + 100)
    d, q = closest_points(torch.zeros(0, 3), verts, faces)
    assert d.shape == (0,) and q.shape == (0, 3)


def test_now_error_undoes_a_similarity_transform(open_model):
    """A reconstruction that is the truth under an unknown scale, rotation and translation has error 0."""
    m = open_model
    g = torch.Generator().manual_seed(2)
    gt = m.mean_shape.double()[None]
    R = random_rotation(g)
    recon = 1.1 * gt @ R.T + torch.tensor([5.0, -3.0, 20.0], dtype=torch.float64)
    face = m.masks["face"]
    r = now_error(recon, m.triangles, recon[:, m.landmarks], gt[:, face], gt[:, m.landmarks])
    assert r.distance.shape == (1, int(face.sum())) and r.closest.shape == (1, int(face.sum()), 3)
    assert r.distance.max() < 1e-6
    assert r.scale.item() == pytest.approx(1 / 1.1, rel=1e-9)
    assert torch.allclose(r.aligned[0], gt[0], atol=1e-6)


def test_now_error_against_a_brute_force_reference(open_model):
    """Mean face against a Sec. 5 face: the distances are the exact point-to-surface distances of the
    ground-truth points to the aligned reconstruction, the closest points lie on it, and ICP does not
    make the error worse than the landmark alignment alone."""
    from facelib.model.params import ParamLayout, sample_sec5

    m = open_model
    lay = ParamLayout.from_model(m)
    p = lay.unpack(sample_sec5(m, 2, seed=4))
    gt = m.geometry(p["shape"], p["expression"])
    recon = m.mean_shape.expand(2, -1, -1)
    face = m.masks["face"]
    args = (recon, m.triangles, recon[:, m.landmarks], gt[:, face], gt[:, m.landmarks])
    r = now_error(*args)
    r0 = now_error(*args, icp_iters=0)
    assert (r.distance.mean(1) <= r0.distance.mean(1) + 1e-9).all()
    sub = torch.arange(0, int(face.sum()), 331)  # a subset, against every triangle
    for b in range(2):
        aligned = r.scale[b] * recon[b].double() @ r.R[b].T + r.t[b]
        assert torch.allclose(aligned, r.aligned[b])
        d_ref, _ = brute_closest(gt[b, face][sub].double(), aligned, m.triangles)
        assert torch.allclose(r.distance[b, sub], d_ref, atol=1e-8)
        assert torch.allclose((gt[b, face].double() - r.closest[b]).norm(dim=-1), r.distance[b], atol=1e-8)
    assert 0.5 < r.distance.mean() < 10  # mm: plausible for the mean face


def test_now_error_bad_inputs(open_model):
    m = open_model
    v = m.mean_shape[None]
    lm = v[:, m.landmarks]
    with pytest.raises(ValueError, match="same batch size"):
        now_error(v, m.triangles, lm, v.expand(2, -1, -1), lm)
    with pytest.raises(ValueError, match="at least 3"):
        now_error(v, m.triangles, lm[:, :2], v, lm[:, :2])
    with pytest.raises(ValueError, match="icp_iters"):
        now_error(v, m.triangles, lm, v, lm, icp_iters=-1)
    with pytest.raises(ValueError, match="landmarks"):
        now_error(v, m.triangles, lm, v, lm[:, :5])
    assert np.isfinite(now_error(v, m.triangles, lm, v[:, :10], lm, icp_iters=1).distance.numpy()).all()
