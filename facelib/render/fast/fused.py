"""Fast path, driver: the fused no-grad CPU render (thread pool, BLAS control, workspaces, two GEMMs).
"""

from __future__ import annotations

import contextlib
import os
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

from ..._checks import all_finite
from ...model.params import rot_xyz
from ..camera import Camera
from ..formation import Render, _cached, mouth_interior_mask
from ..camera import image_hw
from ..raster import HAVE_NUMBA, Fragments
from ..shading import illumination_gamma
from . import _gemm, _resolve, _zchunk
from .kernels import _CH, _NP, _fz_faces, _ws_f32_size

_FACES_PER_CALL = 2  # faces per call of _fz_faces: few GIL-held unboxings (one at a time at the end)


def _face_ranges(B: int, n_jobs: int) -> list:
    """Ranges ``(b0, b1)`` of the batch for the calls of :func:`_fz_faces`: ``_FACES_PER_CALL`` faces
    per call, except the last ``2 n_jobs`` faces, one per call, so the threads finish together."""
    single = min(B, 2 * n_jobs) if n_jobs > 1 else 0
    cut = B - single
    out = [(b, min(cut, b + _FACES_PER_CALL)) for b in range(0, cut, _FACES_PER_CALL)]
    return out + [(b, b + 1) for b in range(cut, B)]


def _render_faces(args, outs, queue, frags: bool, keep: tuple, row_fn: int = 0, zb_fn: int = 0) -> None:
    """Render the faces of the ranges ``(b0, b1)`` that ``queue`` (an iterator over
    :func:`_face_ranges`) hands out until it is empty, for :func:`_render_fused`. Several threads call
    this at once (the kernels release the GIL) and take faces as they become free: the load stays
    balanced when faces differ in cost or a core is busy with other work. ``keep``: write verts_cam,
    screen, normals, colours (4 bools) into ``outs``; ``row_fn``, ``zb_fn``: :func:`facelib.render.fast._resolve.address`,
    :func:`facelib.render.fast._zchunk.address` (0: the Numba code only)."""
    geo, mean_s, alb, mean_a, R, t, focal, ppx, ppy, gamma, faces, mouth, chunks, H, W, bg = args
    V = mean_s.shape[0] // 3  # coordinate-major (3 V,)
    keep = np.array(keep, dtype=np.bool_)
    with _workspace(V, H, W) as ws:
        for b0, b1 in queue:
            _fz_faces(b0, b1, *args, *outs[:4], frags, *outs[4:], keep, *ws, row_fn, zb_fn)


_SCRATCH: dict = {}  # key -> free scratch arrays (lists of arrays) of the fused path
_WORKSPACE_LOCK = threading.Lock()


@contextlib.contextmanager
def _scratch(key: tuple, make):
    """Scratch arrays ``make()`` for ``key``, taken from a free list and given back after use: fresh
    allocations of a few MB per call cost page faults, which are slow on virtual machines. At most 8
    free sets per key; keys of other kinds' older shapes are dropped (memory stays bounded)."""
    with _WORKSPACE_LOCK:
        free = _SCRATCH.setdefault(key, [])
        ws = free.pop() if free else None
        same_kind = [k for k in _SCRATCH if k[0] == key[0] and k != key]
        if len(same_kind) > 3:  # other image sizes or meshes
            for k in same_kind:
                del _SCRATCH[k]
    if ws is None:
        ws = make()
    try:
        yield ws
    finally:
        with _WORKSPACE_LOCK:
            free = _SCRATCH.setdefault(key, [])
            if len(free) < 8:
                free.append(ws)


def _workspace(V: int, H: int, W: int):
    """Scratch arrays of one thread of :func:`_render_faces` (verts_cam, normals, colours, packed records,
    x / y / 1/z, z-buffer, chunk workspaces), reused between calls (:func:`_scratch`)."""
    return _scratch(("faces", V, H, W), lambda: [np.empty(3 * V, np.float32) for _ in range(3)] + [
        np.empty((V, _NP), np.float32), np.empty(3 * V, np.float32), np.empty(H * W, np.int64),
        np.empty(_ws_f32_size(W), np.float32), np.empty(8 * _CH, np.int32), np.empty(12 * _CH, np.int64)])


_POOL: list = [None, 0, 0]  # the worker threads of the fused path: executor, size, process id


def _after_fork_in_child() -> None:
    """A forked child (e.g. a DataLoader worker) has none of the parent's worker threads, and a lock
    another thread held at the fork stays held: start afresh."""
    global _WORKSPACE_LOCK, _BLAS_LOCK
    _WORKSPACE_LOCK = threading.Lock()
    _BLAS_LOCK = threading.Lock()
    _POOL[:] = [None, 0, 0]


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def _thread_pool(n: int):
    """A persistent pool of ``n`` threads (recreated when ``n`` changes or after a fork): starting
    threads on every call costs time, and their sleeping costs nothing."""
    with _WORKSPACE_LOCK:
        pool, size, pid = _POOL
        if pool is None or size != n or pid != os.getpid():
            if pool is not None and pid == os.getpid():
                pool.shutdown(wait=False)  # its idle threads exit
            pool = ThreadPoolExecutor(n, thread_name_prefix="facelib-render")
            _POOL[:] = [pool, n, os.getpid()]
        return pool


def _mesh_arrays(model) -> tuple:
    """The triangles as int32, :func:`face_labels`' ``mouth_interior`` and :func:`_triangle_chunks` as
    NumPy arrays (the torch ops behind face_labels spin up threads: slow on a shared CPU)."""
    tri, m = model.triangles, mouth_interior_mask(model)

    def build():
        faces = np.ascontiguousarray(tri.numpy(), dtype=np.int32)
        return faces, m.numpy()[tri.numpy()].all(1), _triangle_chunks(faces)
    return _cached(model, "mesh", (tri, m), build)


_RUN_MIN = 16  # shortest strip worth a chunk of its own in _triangle_chunks


def _triangle_chunks(faces: np.ndarray) -> np.ndarray:
    """Chunks of at most ``_CH`` consecutive triangles that cover ``faces`` (F, 3) in order, as rows
    ``(start, count, strip)`` (int64). ``strip`` is 1 where the chunk is a strip, ``faces[start + k] ==
    faces[start] + k`` for every k < count (the rows of a grid mesh such as the open model), whose
    vertex data :func:`_fz_copy` copies with unit strides; other triangles are gathered. The order of
    the triangles is kept (the depth test breaks ties by face index)."""
    F = len(faces)
    if F == 0:
        return np.zeros((0, 3), np.int64)
    steps = np.all(np.diff(faces.astype(np.int64), axis=0) == 1, axis=1)
    bounds = np.concatenate([[0], np.flatnonzero(~steps) + 1, [F]])  # maximal strips [b_i, b_i+1)
    rows, loose = [], None  # loose: start of the pending gathered chunk

    def flush_loose(end):
        for s in range(loose, end, _CH):
            rows.append((s, min(_CH, end - s), 0))

    for s, e in zip(bounds[:-1], bounds[1:]):
        if e - s >= _RUN_MIN:
            if loose is not None:
                flush_loose(s)
                loose = None
            rows.extend((k, min(_CH, e - k), 1) for k in range(s, e, _CH))
        elif loose is None:
            loose = s
    if loose is not None:
        flush_loose(F)
    return np.array(rows, np.int64).reshape(-1, 3)


def _geometry_basis(model, ns: int, ne: int) -> torch.Tensor:
    """``[shape_basis[:ns]; expression_basis[:ne]]`` as one ``(ns + ne, 3 V)`` matrix: Eq. 2 is then one
    GEMM with one output (43 MB for the open model, built once)."""
    S, E = model.shape_basis, model.expression_basis
    return _cached(model, f"geometry{ns},{ne}", (S, E), lambda: _stack_rows(S[:ns], E[:ne]))


def _stack_rows(*bases) -> torch.Tensor:
    """Bases ``(K_i, V, 3)`` as the rows of one ``(sum K_i, 3 V)`` matrix with coordinate-major columns
    (all x, then all y, then all z): the products come out in the layout of the per-face kernels."""
    return torch.cat([x.transpose(1, 2).reshape(x.shape[0], 3 * x.shape[1]) for x in bases]).contiguous()


def _means(model) -> tuple:
    """The mean shape and the mean albedo as coordinate-major ``(3 V,)`` float32 arrays (built once)."""
    ms, ma = model.mean_shape, model.mean_albedo
    return _cached(model, "means", (ms, ma),
                   lambda: tuple(np.ascontiguousarray(x.numpy().T).reshape(-1) for x in (ms, ma)))


def _bases(model, ns: int, ne: int, nr: int) -> tuple:
    """The Eq. 2 basis (shape and expression rows) and the Eq. 3 basis (reflectance) for :func:`_offsets`:
    packed once per model for :mod:`facelib.render.fast._gemm` where its kernel runs, else ``(K, 3 V)`` tensors."""
    S, E, A = model.shape_basis, model.expression_basis, model.albedo_basis
    if not _gemm.available():
        return _geometry_basis(model, ns, ne), _cached(model, f"albedo{nr}", (A,), lambda: _stack_rows(A[:nr]))
    return (_cached(model, f"packed-geometry{ns},{ne}", (S, E),
                    lambda: _gemm.pack_basis(_stack_rows(S[:ns], E[:ne]).numpy())),
            _cached(model, f"packed-albedo{nr}", (A,), lambda: _gemm.pack_basis(_stack_rows(A[:nr]).numpy())))


_MODEL_TENSORS = ("mean_shape", "shape_basis", "sigma_s", "expression_basis", "sigma_e", "mean_albedo",
                  "albedo_basis", "sigma_r")


def _fused_unavailable(model, theta, cam, backend) -> str:
    """Why :func:`_render_fused` cannot run for these inputs ('' when it can)."""
    if not HAVE_NUMBA:
        return "numba is not installed"
    if backend not in ("auto", "numba"):
        return f"backend={backend!r}"
    tensors = [theta] + [getattr(model, k) for k in _MODEL_TENSORS] + [
        x for x in (cam.R, cam.t, cam.focal, cam.principal_point) if isinstance(x, torch.Tensor)]
    if any(x.device.type != "cpu" for x in tensors):
        return "tensors are not on the CPU"
    if any(x.dtype != torch.float32 for x in tensors[:len(_MODEL_TENSORS) + 1]):
        return "theta and the model must be float32"
    if torch.is_grad_enabled() and any(x.requires_grad for x in tensors):
        return "a gradient is asked for (the fused path is no-grad only)"
    return ""


def _blas_controller():
    """threadpoolctl's controller of NumPy's BLAS, or None where threadpoolctl or a BLAS it knows is
    missing (then :func:`_offsets` uses torch.mm)."""
    global _BLAS_CONTROLLER
    if _BLAS_CONTROLLER is None:
        try:
            from threadpoolctl import ThreadpoolController

            ctl = ThreadpoolController().select(user_api="blas")
            _BLAS_CONTROLLER = ctl if len(ctl.lib_controllers) else False
        except Exception:  # noqa: BLE001 (not installed, or an unusual BLAS): fall back to torch
            _BLAS_CONTROLLER = False
    return _BLAS_CONTROLLER or None


_BLAS_CONTROLLER = None
_BLAS_LOCK = threading.Lock()
_GEMM_TASKS_PER_JOB = 4  # column blocks per thread in _offsets (taken from a shared queue)


def _offsets(pairs, n_jobs: int, pool, outs=None, meanwhile=None) -> list:
    """Eq. 2-3 offsets: ``coef @ basis`` for each ``(coef (B, K), basis)`` pair, float32 NumPy (written to
    ``outs``, (B, N) float32 arrays, where given); ``basis`` is a :class:`facelib.render.fast._gemm.PackedBasis`
    (see :func:`_bases`) or a ``(K, N)`` tensor. ``meanwhile()``, if given, runs on the calling thread
    while the pool computes the products (else before them).

    The columns are split into ``_GEMM_TASKS_PER_JOB * n_jobs`` blocks per product, which the calling
    thread and the threads of ``pool`` take from a shared queue (so the calling thread's ``meanwhile``
    or a core busy with other work does not leave the others waiting at the end): packed bases by
    :func:`facelib.render.fast._gemm.gemm`, tensors by NumPy's BLAS held to one thread each (no BLAS or OpenMP
    worker threads are left spinning after the call, which would steal the cores from the per-face
    kernels that follow; OpenBLAS is faster than the MKL of the torch wheel on AMD CPUs). Tensors
    without threadpoolctl: ``torch.mm``. The split does not change the result (each output element is
    one sum over k in either case)."""
    packed = [isinstance(b, _gemm.PackedBasis) for _, b in pairs]
    ctl = None if all(packed) else _blas_controller()
    if outs is None:
        outs = [np.empty((c.shape[0], b.N if k else b.shape[1]), np.float32) for (c, b), k in zip(pairs, packed)]
    if ctl is None and not all(packed):
        if meanwhile is not None:
            meanwhile()
        for (c, b), o in zip(pairs, outs):
            if isinstance(b, _gemm.PackedBasis):
                _gemm.gemm(c.numpy(), b, o, 0, len(b.panels) + 1)
            else:
                torch.mm(c, b, out=torch.from_numpy(o))
        return outs
    arrays = [(c.numpy(), b if k else b.numpy()) for (c, b), k in zip(pairs, packed)]
    n_tasks = _GEMM_TASKS_PER_JOB * n_jobs if n_jobs > 1 else 1
    tasks = []  # (product, first column or panel, end)
    for i, ((_, b), k) in enumerate(zip(arrays, packed)):
        if k:
            tasks += [(i, p0, p1) for p0, p1 in _gemm.panel_ranges(b, n_tasks) if p1 > p0]
        else:
            n = b.shape[1]
            cuts = [(n * j // n_tasks) // 16 * 16 for j in range(n_tasks)] + [n]
            tasks += [(i, lo, hi) for lo, hi in zip(cuts[:-1], cuts[1:]) if hi > lo]
    queue = iter(tasks)  # next() is atomic under the GIL: a shared queue

    def work():
        for i, lo, hi in queue:
            (c, b), o = arrays[i], outs[i]
            if packed[i]:
                _gemm.gemm(c, b, o, lo, hi)
            else:
                np.matmul(c, b[:, lo:hi], out=o[:, lo:hi])

    # one limit at a time (limits from two threads at once would not restore the count), set and
    # restored around the products
    with (_BLAS_LOCK if ctl is not None else contextlib.nullcontext()), (
            ctl.limit(limits=1) if ctl is not None else contextlib.nullcontext()):
        jobs = [pool.submit(work) for _ in range(n_jobs - 1)] if pool is not None else []
        try:  # the calling thread works too (no wake-up to wait for)
            if meanwhile is not None:
                meanwhile()
            work()
        finally:
            for job in jobs:
                job.result()
    return outs


def _render_fused(model, p: dict, cam: Camera, image_size, background: float, want: set) -> Render:
    """The no-grad CPU twin of :func:`render`: Eq. 2-3 as two float32 GEMMs over the batch
    (:func:`_offsets`), then :func:`_render_faces`; both on ``torch.get_num_threads()`` threads."""
    H, W = image_hw(image_size)
    theta_r = p["reflectance"]
    B = theta_r.shape[0]
    V = model.n_vertices
    ns, nr = p["shape"].shape[1], theta_r.shape[1]
    ne = p["expression"].shape[1] if "expression" in p else 0
    n_jobs = max(1, min(B, torch.get_num_threads()))
    # threads that sleep while they wait (no spin-waiting: robust when the CPU is shared)
    pool = _thread_pool(torch.get_num_threads() - 1) if n_jobs > 1 else None  # and the calling thread
    frags = "fragments" in want
    keep = tuple(k in want for k in ("verts_cam", "screen", "normals_cam", "colors"))
    out = {}

    def prepare():  # the checks, the per-face inputs and the outputs, made while the GEMMs run
        if not all(all_finite(x) for x in p.values()):
            out["error"] = "theta contains NaN or infinite values"  # raised after the GEMMs
            return
        with torch.no_grad():
            f32 = dict(dtype=torch.float32)
            R = (cam.R.to(**f32) @ rot_xyz(p["rotation"].detach())).contiguous()  # Sec. 4.2, camera @ head
            t = cam.t.to(**f32).expand(B, 3).contiguous()
            focal = torch.as_tensor(cam.focal, **f32).reshape(-1).expand(B).contiguous()
            pp = torch.as_tensor(cam.principal_point, **f32).reshape(-1, 2).expand(B, 2).contiguous()
            gamma = illumination_gamma(p["illumination"].detach()).to(**f32).contiguous()
        faces, mouth, chunks = _mesh_arrays(model)
        mean_s, mean_a = _means(model)
        hw = (H, W) if frags else (0, 0)
        out.update(image=torch.empty(B, 3, H, W), mask=torch.empty(B, H, W, dtype=torch.bool),
                   imask=torch.empty(B, H, W, dtype=torch.bool), depth=torch.empty(B, H, W),
                   fr=(torch.empty(B, *hw, 1, dtype=torch.int64), torch.empty(B, *hw, 1),
                       torch.empty(B, *hw, 1, 3), torch.empty(B, *hw, 1)),
                   per_vertex=[torch.empty(B, V if k else 0, 3) for k in keep])  # verts_cam, screen, ...
        out["args"] = [offs[0], mean_s, offs[1], mean_a, R.numpy(),
                       t.numpy(), focal.numpy(), pp[:, 0].contiguous().numpy(), pp[:, 1].contiguous().numpy(),
                       gamma.numpy(), faces, mouth, chunks, H, W, np.float32(background)]
        out["outs"] = [out[k].numpy() for k in ("image", "mask", "imask", "depth")] + [
            x.numpy() for x in out["fr"]] + [x.numpy() for x in out["per_vertex"]]

    # the (B, 3 V) offsets are used only inside this call: reused between calls (no page faults)
    with _scratch(("offsets", B, 3 * V), lambda: [np.empty((B, 3 * V), np.float32) for _ in range(2)]) as offs:
        with torch.no_grad():
            coef = [p["shape"].detach() * model.sigma_s[:ns]]
            if ne:
                coef.append(p["expression"].detach() * model.sigma_e[:ne])
            geo_basis, alb_basis = _bases(model, ns, ne, nr)
            _offsets([(torch.cat(coef, 1), geo_basis),  # Eq. 2 offsets (B, 3 V)
                      (p["reflectance"].detach() * model.sigma_r[:nr], alb_basis)],  # Eq. 3 offsets (B, 3 V)
                     n_jobs, pool, offs, meanwhile=prepare)
        if "error" in out:
            raise ValueError(out["error"])
        if B:
            args, outs = out["args"], out["outs"]
            queue = iter(_face_ranges(B, n_jobs))  # next() is atomic under the GIL: a shared queue
            work = (args, outs, queue, frags, keep, _resolve.address(), _zchunk.address())
            if pool is None:
                _render_faces(*work)
            else:
                jobs = [pool.submit(_render_faces, *work) for _ in range(n_jobs - 1)]
                try:
                    _render_faces(*work)  # the calling thread renders too
                finally:
                    for job in jobs:
                        job.result()
    p2f, zbuf, bary, dists = out["fr"]
    vc, sc, nrm, col = (x if k else None for x, k in zip(out["per_vertex"], keep))
    fr = Fragments(p2f, zbuf, bary, dists) if frags else None
    return Render(out["image"], out["mask"], out["imask"], out["depth"], fr, sc, vc, nrm, col)
