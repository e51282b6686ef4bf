"""Tests of facelib.eval.metrics (error measures against closed-form and brute-force references) and
facelib.eval.export (OBJ / PLY / PNG round trips, atomic writes, error paths)."""

import math
import os
import re

import matplotlib.image
import numpy as np
import pytest
import torch

from facelib.eval.export import image_grid, save_image, save_image_grid, save_obj, save_ply
from facelib.eval.metrics import (closest_point_on_triangle, depth_error, geometric_rmse, mask_iou,
                             mesh_to_mesh_rmse, photometric_rgb_distance, photometric_rmse,
                             point_to_surface_distance, similarity_align)


def random_rotation(gen, n=None):
    q, _ = torch.linalg.qr(torch.randn(*(() if n is None else (n,)), 3, 3, generator=gen,
                                       dtype=torch.float64))
    return q * torch.linalg.det(q)[..., None, None]  # det +1


def grid_mesh(nx=7, ny=6, seed=0):
    """A bumpy height-field mesh (x, y in [0, 60] mm) with 0-based triangles."""
    g = torch.Generator().manual_seed(seed)
    x, y = torch.meshgrid(torch.linspace(0, 60, nx, dtype=torch.float64),
                          torch.linspace(0, 50, ny, dtype=torch.float64), indexing="ij")
    z = 5 * torch.rand(nx, ny, generator=g, dtype=torch.float64)
    verts = torch.stack([x, y, z], -1).reshape(-1, 3)
    i = torch.arange(nx * ny).reshape(nx, ny)
    a, b, c, d = i[:-1, :-1], i[1:, :-1], i[:-1, 1:], i[1:, 1:]
    faces = torch.cat([torch.stack([a, b, c], -1).reshape(-1, 3), torch.stack([b, d, c], -1).reshape(-1, 3)])
    return verts, faces


# ------------------------------------------------------------------------------ photometric

def test_photometric_rmse_known_offset_and_empty_mask():
    g = torch.Generator().manual_seed(0)
    target = torch.rand(2, 3, 8, 8, generator=g) * 0.5
    image = target.clone()
    mask = torch.zeros(2, 8, 8, dtype=torch.bool)
    mask[0, 2:6, 1:5] = True
    image[0][:, mask[0]] += 10 / 255  # off by exactly 10 levels inside the mask
    image[0][:, ~mask[0]] = 1.0  # outside the mask: ignored
    r = photometric_rmse(image, target, mask)
    assert r.shape == (2,)
    assert r[0].item() == pytest.approx(10.0, abs=1e-4)
    assert math.isnan(r[1].item())  # empty mask -> nan, documented
    # one channel off by 30 levels: sqrt(30^2 / 3)
    image2 = target.clone()
    image2[:, 1] += 30 / 255
    full = torch.ones(8, 8, dtype=torch.bool)  # (H, W) broadcasts
    assert torch.allclose(photometric_rmse(image2, target, full), torch.full((2,), 30 / 3 ** 0.5), atol=1e-4)


def test_photometric_rgb_distance():
    target = torch.zeros(1, 3, 4, 4)
    image = target.clone()
    image[0, :, 0, 0] = torch.tensor([0.3, 0.4, 0.0])  # distance 0.5
    image[0, :, 1, 1] = torch.tensor([0.0, 0.0, 0.1])  # distance 0.1
    mask = torch.zeros(1, 4, 4, dtype=torch.bool)
    mask[0, 0, 0] = mask[0, 1, 1] = True
    assert photometric_rgb_distance(image, target, mask).item() == pytest.approx(0.3)


def test_photometric_errors():
    img = torch.zeros(2, 4, 8, 8)
    m = torch.ones(2, 8, 8, dtype=torch.bool)
    with pytest.raises(ValueError, match=re.escape("image has shape (2, 4, 8, 8); expected (B, 3, H, W)")):
        photometric_rmse(img, img, m)
    with pytest.raises(ValueError, match="target has shape"):
        photometric_rmse(torch.zeros(2, 3, 8, 8), torch.zeros(2, 3, 8, 7), m)
    with pytest.raises(ValueError, match="mask has shape"):
        photometric_rmse(torch.zeros(2, 3, 8, 8), torch.zeros(2, 3, 8, 8), m[:, :4])
    with pytest.raises(ValueError, match="expected torch.bool"):
        photometric_rgb_distance(torch.zeros(2, 3, 8, 8), torch.zeros(2, 3, 8, 8), m.float())


# -------------------------------------------------------------------------------- geometric

def test_geometric_rmse_translation_and_mask():
    verts, _ = grid_mesh()
    verts = verts[None].repeat(2, 1, 1)
    shift = torch.tensor([[3.0, 4.0, 0.0], [1.0, 2.0, 2.0]], dtype=torch.float64)
    r = geometric_rmse(verts + shift[:, None], verts)
    assert torch.allclose(r, torch.tensor([5.0, 3.0], dtype=torch.float64))
    moved = verts.clone()
    moved[:, :10, 2] += 6.0  # only the first 10 vertices move
    mask = torch.zeros(verts.shape[1], dtype=torch.bool)
    mask[:20] = True
    assert torch.allclose(geometric_rmse(moved, verts, mask), torch.full((2,), (36 * 10 / 20) ** 0.5,
                                                                          dtype=torch.float64))
    with pytest.raises(ValueError, match="expected a bool"):
        geometric_rmse(moved, verts, mask[:5])
    with pytest.raises(ValueError, match=re.escape("verts has shape (5, 3); expected (B, V, 3)")):
        geometric_rmse(torch.zeros(5, 3), torch.zeros(5, 3))


def test_mask_iou_rectangles():
    a = torch.zeros(2, 10, 10, dtype=torch.bool)
    b = torch.zeros(2, 10, 10, dtype=torch.bool)
    a[0, 0:4, 0:4] = True  # 16 pixels
    b[0, 2:6, 2:6] = True  # 16 pixels, 4 shared -> 4 / 28
    a[1, 1:3, 1:9] = b[1, 1:3, 1:9] = True
    iou = mask_iou(a, b)
    assert iou[0].item() == pytest.approx(100 * 4 / 28, rel=1e-6)
    assert iou[1].item() == pytest.approx(100.0)
    assert math.isnan(mask_iou(a[:1] & False, b[:1] & False).item())
    with pytest.raises(ValueError, match="mask_b has shape"):
        mask_iou(a, b[:, :5])


def test_depth_error_mean_and_p90():
    depth_gt = torch.full((1, 3, 4), 500.0, dtype=torch.float64)
    offsets = torch.arange(12, dtype=torch.float64).reshape(1, 3, 4)  # 0 .. 11 mm
    depth = depth_gt + offsets * torch.where(offsets % 2 == 0, 1.0, -1.0)
    valid_a = torch.ones(1, 3, 4, dtype=torch.bool)
    valid_b = torch.ones(1, 3, 4, dtype=torch.bool)
    valid_a[0, 2, 3] = False  # drops 11 -> errors 0 .. 10
    depth[0, 2, 3] = float("nan")  # invalid pixel with a nan: must not leak
    e = depth_error(depth, depth_gt, valid_a, valid_b)
    assert e["mean"].item() == pytest.approx(5.0)
    assert e["p90"].item() == pytest.approx(9.0)  # 90th percentile of 0..10, numpy's linear rule
    assert e["p90"].item() == pytest.approx(np.percentile(np.arange(11), 90))
    valid_b[0, 0] = False  # drops 0 1 2 3 -> errors 4 .. 10
    e = depth_error(depth, depth_gt, valid_a, valid_b)
    assert e["mean"].item() == pytest.approx(7.0)
    assert e["p90"].item() == pytest.approx(np.percentile(np.arange(4, 11), 90))
    none = depth_error(depth, depth_gt, valid_a & False)
    assert math.isnan(none["mean"].item()) and math.isnan(none["p90"].item())
    with pytest.raises(ValueError, match="depth_gt has shape"):
        depth_error(depth, depth_gt[:, :2])


# -------------------------------------------------------------------------------- alignment

def test_similarity_align_recovers_known_transform():
    g = torch.Generator().manual_seed(1)
    src = torch.randn(3, 40, 3, generator=g, dtype=torch.float64) * 50
    R = random_rotation(g, 3)
    s = torch.tensor([0.5, 1.0, 2.5], dtype=torch.float64)
    t = torch.randn(3, 3, generator=g, dtype=torch.float64) * 100
    dst = s[:, None, None] * src @ R.transpose(1, 2) + t[:, None]
    aligned, s_hat, R_hat, t_hat = similarity_align(src, dst)
    assert torch.allclose(s_hat, s, atol=1e-10)
    assert torch.allclose(R_hat, R, atol=1e-10)
    assert torch.allclose(t_hat, t, atol=1e-8)
    assert torch.allclose(aligned, dst, atol=1e-8)
    assert torch.allclose(torch.linalg.det(R_hat), torch.ones(3, dtype=torch.float64))
    # a mirrored target still gives a proper rotation
    _, _, R_m, _ = similarity_align(src, dst * torch.tensor([-1.0, 1.0, 1.0], dtype=torch.float64))
    assert torch.allclose(torch.linalg.det(R_m), torch.ones(3, dtype=torch.float64))
    # weights: outliers with zero weight are ignored
    dst_out = dst.clone()
    dst_out[:, :5] += 1000.0
    w = torch.ones(40, dtype=torch.float64)
    w[:5] = 0
    _, s_w, R_w, _ = similarity_align(src, dst_out, weights=w)
    assert torch.allclose(s_w, s, atol=1e-10) and torch.allclose(R_w, R, atol=1e-10)
    # rigid
    _, s_r, R_r, _ = similarity_align(src, src @ R.transpose(1, 2), scale=False)
    assert torch.allclose(s_r, torch.ones(3, dtype=torch.float64)) and torch.allclose(R_r, R, atol=1e-10)


def test_similarity_align_gradient():
    g = torch.Generator().manual_seed(2)
    src = torch.randn(1, 6, 3, generator=g, dtype=torch.float64)
    src = src * torch.tensor([3.0, 2.0, 1.0], dtype=torch.float64)  # distinct singular values
    dst = (src + 0.1 * torch.randn(1, 6, 3, generator=g, dtype=torch.float64)).requires_grad_()
    assert torch.autograd.gradcheck(lambda d: similarity_align(src, d)[0], (dst,))


# --------------------------------------------------------------------- point to surface

def test_closest_point_on_triangle_regions():
    a, b, c = (torch.tensor(v, dtype=torch.float64) for v in ([0, 0, 0], [4, 0, 0], [0, 4, 0]))
    cases = {  # point -> expected closest point
        (1.0, 1.0, 3.0): (1, 1, 0),  # above the interior
        (2.0, -3.0, 1.0): (2, 0, 0),  # beyond edge AB
        (-2.0, 2.0, 0.0): (0, 2, 0),  # beyond edge AC
        (3.0, 3.0, 0.0): (2, 2, 0),  # beyond edge BC
        (-1.0, -1.0, 2.0): (0, 0, 0),  # beyond vertex A
        (6.0, -1.0, 0.0): (4, 0, 0),  # beyond vertex B
        (-1.0, 7.0, -2.0): (0, 4, 0),  # beyond vertex C
    }
    p = torch.tensor(list(cases), dtype=torch.float64)
    q = closest_point_on_triangle(p, a, b, c)
    assert torch.allclose(q, torch.tensor(list(cases.values()), dtype=torch.float64))
    d = point_to_surface_distance(p, torch.stack([a, b, c]), torch.tensor([[0, 1, 2]]))
    assert torch.allclose(d, (p - q).norm(dim=-1))
    assert d[0].item() == pytest.approx(3.0) and d[4].item() == pytest.approx(6 ** 0.5)


def dense_reference(points, verts, faces, n=60):
    """Distance to a dense barycentric sampling of every triangle (an upper bound, close for large n)."""
    i, j = np.meshgrid(np.arange(n + 1), np.arange(n + 1), indexing="ij")
    keep = i + j <= n
    u, v = i[keep] / n, j[keep] / n
    bary = torch.tensor(np.stack([1 - u - v, u, v], -1))  # (S, 3)
    tri = verts[faces]  # (F, 3, 3)
    samples = torch.einsum("sk,fkd->fsd", bary, tri).reshape(-1, 3)
    return torch.cdist(points, samples).min(1).values


def test_point_to_surface_matches_references():
    verts, faces = grid_mesh()
    g = torch.Generator().manual_seed(3)
    pts = torch.rand(300, 3, generator=g, dtype=torch.float64) * torch.tensor([80.0, 70.0, 30.0]) - \
        torch.tensor([10.0, 10.0, 10.0])
    d = point_to_surface_distance(pts, verts, faces)
    brute = point_to_surface_distance(pts, verts, faces, method="brute")
    assert torch.allclose(d, brute, atol=1e-12)  # pruning is exact
    ref = dense_reference(pts, verts, faces)
    assert (d <= ref + 1e-9).all()  # never above any sampled surface point
    assert (ref - d).max() < 0.5  # and within the sampling spacing (~1 mm / 60 * edges)
    assert point_to_surface_distance(verts, verts, faces).abs().max() < 1e-12  # own vertices
    # a vertex on no face is not part of the surface, even when it is the nearest vertex
    lonely = torch.cat([verts, pts[:1] + 0.01])
    assert torch.allclose(point_to_surface_distance(pts, lonely, faces), brute, atol=1e-12)
    # different topologies: a coarse and a fine triangulation of the plane z = 0
    flat_v, flat_f = grid_mesh(4, 3)
    flat_v[:, 2] = 0
    up = flat_v.clone()
    up[:, 2] = 2.5  # vertices of a parallel plane 2.5 mm above
    fine_v, fine_f = grid_mesh(9, 8)
    fine_v[:, 2] = 0
    assert torch.allclose(point_to_surface_distance(up, fine_v, fine_f),
                          torch.full((len(up),), 2.5, dtype=torch.float64))
    assert mesh_to_mesh_rmse(up, fine_v, fine_f).item() == pytest.approx(2.5)
    assert mesh_to_mesh_rmse(fine_v, flat_v, flat_f, faces_a=fine_f).item() == pytest.approx(0.0, abs=1e-12)


def test_point_to_surface_gradient_and_errors():
    verts, faces = grid_mesh(3, 3)
    pts = torch.tensor([[10.0, 12.0, 20.0], [-5.0, 3.0, 1.0]], dtype=torch.float64, requires_grad=True)
    d = point_to_surface_distance(pts, verts, faces)
    d.sum().backward()
    assert torch.allclose(pts.grad.norm(dim=-1), torch.ones(2, dtype=torch.float64))  # |grad dist| = 1
    with pytest.raises(ValueError, match=re.escape("points has shape (4,); expected (V, 3)")):
        point_to_surface_distance(torch.zeros(4), verts, faces)
    with pytest.raises(ValueError, match="face indices span"):
        point_to_surface_distance(pts, verts, faces + 100)
    with pytest.raises(ValueError, match="no faces"):
        point_to_surface_distance(pts, verts, torch.zeros(0, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="method"):
        point_to_surface_distance(pts, verts, faces, method="kdtree")


# ----------------------------------------------------------------------------------- export

def read_obj_with_colors(path):
    verts, colors, faces = [], [], []
    for line in path.read_text().splitlines():
        parts = line.split()
        if parts and parts[0] == "v":
            vals = [float(x) for x in parts[1:]]
            verts.append(vals[:3])
            colors.append(vals[3:])
        elif parts and parts[0] == "f":
            faces.append([int(x) for x in parts[1:]])
    return np.array(verts), np.array(colors), np.array(faces)


def read_ply(path):
    data = path.read_bytes()
    end = data.index(b"end_header\n") + len(b"end_header\n")
    header = data[:end].decode("ascii").splitlines()
    assert header[:2] == ["ply", "format binary_little_endian 1.0"]
    nv = int(next(h for h in header if h.startswith("element vertex")).split()[-1])
    nf = int(next(h for h in header if h.startswith("element face")).split()[-1])
    assert "property list uchar int vertex_indices" in header
    vdt = [("x", "<f4"), ("y", "<f4"), ("z", "<f4")]
    if "property uchar red" in header:
        vdt += [("red", "u1"), ("green", "u1"), ("blue", "u1")]
    vert = np.frombuffer(data, dtype=vdt, count=nv, offset=end)
    face = np.frombuffer(data, dtype=[("n", "u1"), ("idx", "<i4", (3,))], count=nf,
                         offset=end + vert.nbytes)
    assert end + vert.nbytes + face.nbytes == len(data)
    return header, vert, face


def test_save_obj_round_trip(tmp_path):
    verts, faces = grid_mesh()
    colors = torch.rand(len(verts), 3, generator=torch.Generator().manual_seed(4))
    colors[0] = torch.tensor([1.5, -0.2, 0.5])  # clipped
    path = save_obj(tmp_path / "sub" / "dir" / "m.obj", verts, faces, colors)
    assert path.exists() and os.listdir(path.parent) == ["m.obj"]  # no temporary left behind
    v, c, f = read_obj_with_colors(path)
    assert np.array_equal(v, verts.numpy())  # repr precision: exact
    assert np.allclose(c, colors.clamp(0, 1).numpy(), atol=1e-6)
    assert np.array_equal(f, faces.numpy() + 1) and f.min() == 1
    v2, c2, f2 = read_obj_with_colors(save_obj(tmp_path / "plain.obj", verts.numpy(), faces.numpy()))
    assert np.array_equal(v2, verts.numpy()) and c2.shape == (len(verts), 0)


def test_save_ply_round_trip(tmp_path):
    verts, faces = grid_mesh()
    colors = torch.rand(len(verts), 3, generator=torch.Generator().manual_seed(5))
    header, vert, face = read_ply(save_ply(tmp_path / "m.ply", verts, faces, colors))
    assert np.array_equal(np.stack([vert["x"], vert["y"], vert["z"]], -1), verts.numpy().astype(np.float32))
    rgb = np.stack([vert["red"], vert["green"], vert["blue"]], -1)
    assert np.array_equal(rgb, np.round(colors.numpy() * 255).astype(np.uint8))
    assert (face["n"] == 3).all() and np.array_equal(face["idx"], faces.numpy())
    header, vert, face = read_ply(save_ply(tmp_path / "p.ply", verts))
    assert "property uchar red" not in header and len(face) == 0 and len(vert) == len(verts)


def test_mesh_export_errors_leave_nothing(tmp_path):
    verts, faces = grid_mesh()
    with pytest.raises(ValueError, match=re.escape("verts have shape (3,); expected (V, 3)")):
        save_obj(tmp_path / "a.obj", verts[0], faces)
    with pytest.raises(ValueError, match="face indices span"):
        save_ply(tmp_path / "a.ply", verts, faces + len(verts))
    with pytest.raises(ValueError, match="colors have shape"):
        save_obj(tmp_path / "a.obj", verts, faces, torch.ones(3, 3))
    bad = verts.clone()
    bad[3, 1] = float("nan")
    with pytest.raises(ValueError, match="nan"):
        save_ply(tmp_path / "a.ply", bad, faces)
    with pytest.raises(ValueError, match="integer"):
        save_obj(tmp_path / "a.obj", verts, faces.double())
    assert os.listdir(tmp_path) == []


def test_atomic_write_keeps_old_file_on_failure(tmp_path, monkeypatch):
    verts, faces = grid_mesh()
    path = save_obj(tmp_path / "m.obj", verts, faces)
    before = path.read_bytes()

    def boom(*args):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError, match="disk full"):
        save_obj(path, verts * 2, faces)
    assert path.read_bytes() == before and os.listdir(tmp_path) == ["m.obj"]


def test_save_image_layouts(tmp_path):
    g = torch.Generator().manual_seed(6)
    chw = torch.rand(3, 5, 7, generator=g)
    chw[0, 0, 0], chw[1, 0, 0] = 2.0, -1.0  # clipped
    for name, img in [("chw.png", chw), ("hwc.png", chw.permute(1, 2, 0).numpy())]:
        back = matplotlib.image.imread(save_image(tmp_path / name, img))
        assert back.shape[:2] == (5, 7) and back.shape[2] in (3, 4)
        assert np.allclose(back[..., :3], np.moveaxis(chw.clamp(0, 1).numpy(), 0, -1), atol=0.5 / 255 + 1e-6)
    ramp = torch.linspace(0, 1, 12).reshape(3, 4)
    grey = matplotlib.image.imread(save_image(tmp_path / "g" / "grey.png", ramp))
    assert grey.shape[:2] == (3, 4)
    assert np.allclose(grey if grey.ndim == 2 else grey[..., 0], ramp, atol=0.5 / 255 + 1e-6)
    with pytest.raises(ValueError, match=re.escape("image has shape (4, 5, 6)")):
        save_image(tmp_path / "x.png", torch.zeros(4, 5, 6))
    with pytest.raises(ValueError, match="nan"):
        save_image(tmp_path / "x.png", torch.full((3, 2, 2), float("nan")))
    with pytest.raises(ValueError, match="suffix"):
        save_image(tmp_path / "x.notanimage", chw)
    with pytest.raises(ValueError, match="dtype uint8"):
        save_image(tmp_path / "x.png", np.zeros((4, 4, 3), np.uint8))
    assert sorted(os.listdir(tmp_path)) == ["chw.png", "g", "hwc.png"]


def test_image_grid_layout(tmp_path):
    B, H, W = 5, 4, 6
    images = torch.arange(1, B + 1, dtype=torch.float32)[:, None, None, None].expand(B, 3, H, W) / 10
    grid = image_grid(images, nrow=3, pad=2, pad_value=1.0)
    assert grid.shape == (3, 2 * (H + 2) + 2, 3 * (W + 2) + 2)
    for k in range(B):
        r, c = divmod(k, 3)
        y0, x0 = 2 + r * (H + 2), 2 + c * (W + 2)
        assert torch.all(grid[:, y0:y0 + H, x0:x0 + W] == (k + 1) / 10)
    assert torch.all(grid[:, :2] == 1.0) and torch.all(grid[:, :, :2] == 1.0)
    assert torch.all(grid[:, 8:12, 18:24] == 1.0)  # the unused sixth cell
    assert (grid == 1.0).sum() == grid.numel() - B * 3 * H * W
    assert isinstance(image_grid(images.numpy(), nrow=8), np.ndarray)
    assert image_grid(images, nrow=8, pad=0).shape == (3, H, B * W)
    back = matplotlib.image.imread(save_image_grid(tmp_path / "grid.png", images.requires_grad_(), nrow=3))
    assert back.shape[:2] == tuple(grid.shape[1:])
    with pytest.raises(ValueError, match="images have shape"):
        image_grid(torch.zeros(2, 4, 5, 5))
    with pytest.raises(ValueError, match="nrow"):
        image_grid(images, nrow=0)


def test_masked_mean_against_a_loop_and_on_empty_masks():
    """One masked mean for the error measures and the SfS energies: per image, the mean over the mask
    (a Python loop as reference); ``nan`` for an empty mask unless ``empty`` says otherwise."""
    from facelib.eval.metrics import masked_mean

    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 5, 7, generator=g, dtype=torch.float64)
    m = torch.rand(3, 5, 7, generator=g) > 0.5
    m[2] = False
    got = masked_mean(x, m)
    for b in range(2):
        assert torch.allclose(got[b], x[b][m[b]].mean(), rtol=1e-14)
    assert torch.isnan(got[2])
    assert masked_mean(x, m, empty=0.0)[2] == 0 and torch.equal(masked_mean(x, m, empty=0.0)[:2], got[:2])
