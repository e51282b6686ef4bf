"""Reproducibility: the record of what a result depends on besides the code (seed, versions, threads,
CPU), written next to every chapter's numbers (:func:`facelib.book.save_results`) and printed by CI.

Given the same code, seed, thread counts, library versions and CPU features, a chapter's numbers are
the same bits run after run (``tests/test_repro.py``); on a machine that differs in any of these, the
floating-point sums run in another order or width, the training runs drift apart from the first step,
and trained-network figures agree only within the seed spread the chapters report (README,
"Reproducibility").
"""

from __future__ import annotations

import os
import platform
import sys

import numpy as np
import torch

__all__ = ["environment", "cpu_flags", "cpu_llvm_name", "cpu_summary", "kernels", "model_files", "note_model_file", "SIMD_FLAGS"]

# the CPU flags (as /proc/cpuinfo spells them) that change which code paths and instructions run (ours: facelib.render.fast._zchunk,
# _resolve, _gemm; PyTorch's and OpenBLAS's kernels)
SIMD_FLAGS = ("sse4_2", "avx", "fma", "f16c", "avx2", "avx512f", "avx512dq", "avx512cd", "avx512bw",
              "avx512vl", "avx512_vnni", "avx512_bf16", "avx512_fp16", "amx_tile", "amx_bf16")

# environment variables that change threads, BLAS kernels or allocation
_ENV = ("FACELIB_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS",
        "NUMBA_NUM_THREADS", "OPENBLAS_CORETYPE", "ATEN_CPU_CAPABILITY", "NUMBA_CPU_NAME", "FACELIB_CPU",
        "MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "PYTHONHASHSEED")


def _cpuinfo() -> tuple[str, set]:
    """(model name, flags) of the first CPU in ``/proc/cpuinfo``; ("", empty) where there is none."""
    name, flags = "", set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip()
                if key == "model name" and not name:
                    name = value.strip()
                elif key == "flags" and not flags:
                    flags = set(value.split())
                if name and flags:
                    break
    except OSError:
        pass
    return name or platform.processor(), flags


def _cpuid_flags() -> set | None:
    """The :data:`SIMD_FLAGS` (in ``/proc/cpuinfo``'s spelling) that the CPU executing this process reports
    through CPUID, as LLVM reads it (``llvmlite``; ``FACELIB_CPU`` not applied); None without llvmlite."""
    try:
        import llvmlite.binding as ll
        on = {k for k, v in ll.get_host_cpu_features().items() if v}
    except Exception:  # pragma: no cover - without llvmlite
        return None
    return {f for f in SIMD_FLAGS if f.replace("_", "") in on or f.replace("_", ".") in on
            or f.replace("_", "-") in on}


def cpu_flags() -> list:
    """The :data:`SIMD_FLAGS` this CPU has, in that order. Read from CPUID (:func:`_cpuid_flags`), i.e. of
    the CPU the code runs on: under an emulator (``qemu-x86_64 -cpu Haswell``, ``make test-emulated``)
    or a VM that hides features, ``/proc/cpuinfo`` still lists the host's. ``/proc/cpuinfo``'s flags where
    llvmlite is missing; empty where neither is there."""
    flags = _cpuid_flags()
    if flags is None:
        flags = _cpuinfo()[1]
    return [f for f in SIMD_FLAGS if f in flags]


def _torch_capability() -> str:
    try:
        return str(torch.backends.cpu.get_cpu_capability())
    except Exception:  # pragma: no cover - older torch
        return "unknown"


def _numba_threads():
    """Numba's thread count, without starting its threading layer (that is left to the first
    parallel kernel): the configured count until then."""
    try:
        import numba
        from numba.np.ufunc import parallel
        return int(numba.get_num_threads() if parallel._is_initialized else numba.config.NUMBA_NUM_THREADS)
    except Exception:  # pragma: no cover - without numba
        return None


_MODEL_FILES: dict = {}  # model name or path -> (file, sha256 or None until asked): note_model_file


def note_model_file(name: str, path) -> None:
    """Record that this process loaded the face model ``name`` from the ``.npz`` ``path`` (called by
    :func:`facelib.load_model`); :func:`environment` reports its SHA-256. A file that is not there (a
    model built in memory, not cached) is not recorded."""
    from pathlib import Path

    path = Path(path)
    if path.is_file() and _MODEL_FILES.get(name, (None,))[0] != path:
        _MODEL_FILES[name] = (path, None)


def model_files() -> dict:
    """``{model name or path: SHA-256 of its .npz}`` of the models this process loaded from a file.
    :meth:`facelib.FaceModel.save` writes identical bytes for identical content, so the digest names the
    model's bits: the open model's last bits depend on the CPU's BLAS kernels it was built with, and two
    machines can agree to the bit on rendered figures only where these agree (README, "Reproducibility")."""
    import hashlib

    out = {}
    for name, (path, digest) in list(_MODEL_FILES.items()):
        if digest is None:
            try:
                digest = hashlib.sha256(path.read_bytes()).hexdigest()
            except OSError:
                continue
            _MODEL_FILES[name] = (path, digest)
        out[name] = digest
    return out


def cpu_llvm_name() -> str | None:
    """LLVM's name of the CPU executing this process, from CPUID (e.g. ``"skylake-avx512"``, ``"znver2"``,
    ``"haswell"`` under ``qemu-x86_64 -cpu Haswell``, where ``/proc/cpuinfo`` still names the host's);
    None without llvmlite."""
    try:
        import llvmlite.binding as ll
        return str(ll.get_host_cpu_name())
    except Exception:  # pragma: no cover - without llvmlite
        return None


def cpu_summary() -> str:
    """One line for logs: model (``/proc/cpuinfo``; LLVM's name from CPUID), logical CPUs, SIMD flags,
    PyTorch's CPU capability, threads."""
    name, _ = _cpuinfo()
    flags = cpu_flags()
    return (f"{name or 'unknown CPU'} (CPUID: {cpu_llvm_name()}); {os.cpu_count()} logical CPUs; flags: {' '.join(flags) or 'none found'}; "
            f"torch CPU capability {_torch_capability()}; torch threads {torch.get_num_threads()}, "
            f"numba threads {_numba_threads()}")


def environment(seed=None, **extra) -> dict:
    """What the numbers of a run depend on besides the code, JSON-ready.

    ``seed``: the seed(s) of the run (an int or a list), kept as given. Keys: ``seed``, ``python``,
    ``torch``, ``numpy``, ``numba``, ``torch_threads``, ``torch_interop_threads``, ``numba_threads``,
    ``cpu`` (model name), ``cpu_llvm`` (:func:`cpu_llvm_name`), ``cpu_count``, ``cpu_flags`` (:data:`SIMD_FLAGS` present),
    ``torch_cpu_capability`` (the ATen kernels' instruction set: ``AVX2``, ``AVX512``, ...),
    ``platform``, ``machine``, ``env`` (the thread / BLAS / allocator variables that are set),
    ``model_files`` (the SHA-256 of each face-model file this process loaded, :func:`model_files`);
    plus ``extra``. Nothing here is timed or random: two calls in one process give equal records.
    """
    try:
        import numba
        numba_version = numba.__version__
    except ImportError:  # pragma: no cover
        numba_version = None
    name, _ = _cpuinfo()
    rec = {
        "seed": list(seed) if isinstance(seed, (tuple, list)) else seed,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "numba": numba_version,
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "numba_threads": _numba_threads(),
        "cpu": name,
        "cpu_llvm": cpu_llvm_name(),
        "cpu_count": os.cpu_count(),
        "cpu_flags": cpu_flags(),
        "torch_cpu_capability": _torch_capability(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "byteorder": sys.byteorder,
        "env": {k: os.environ[k] for k in _ENV if k in os.environ},
        "model_files": model_files(),
    }
    rec.update(extra)
    return rec


def kernels() -> dict:
    """Which of facelib's CPU kernels run on this CPU (compiling them on first use, a few seconds):
    ``{"gemm": ..., "zbuffer": ..., "resolve": ...}``, each "llvm" or the reason for the Numba/NumPy
    fallback."""
    from .render.fast import _gemm, _resolve, _zchunk
    out = {"gemm": "llvm" if _gemm.available() else f"numpy ({_gemm._STATE['error']})"}
    for key, mod in (("zbuffer", _zchunk), ("resolve", _resolve)):
        out[key] = "llvm" if mod.address() else f"numba ({mod._STATE['error']})"
    return out


if __name__ == "__main__":  # python -m facelib.repro: what CI prints before the tests
    import json
    print("cpu:", cpu_summary())
    print("kernels:", json.dumps(kernels()))
    print(json.dumps(environment(), indent=1))
