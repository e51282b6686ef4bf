"""Kernels written as LLVM IR, compiled for the host CPU by llvmlite (the LLVM binding Numba is built on):
no build step, tens of milliseconds per kernel on first use. Used where Numba's auto-vectoriser does
not find the code we want (:mod:`facelib._gemm`, :mod:`facelib._resolve`)."""

from __future__ import annotations

import threading

_LOCK = threading.Lock()
_CACHE: dict = {}  # (ir, name, cpu, features) -> address; the engines that own the code stay alive here
_ENGINES: list = []


def host_features() -> set:
    """LLVM's names of the host CPU's features that are on (e.g. ``"avx512f"``)."""
    import llvmlite.binding as ll

    return {f[1:] for f in ll.get_host_cpu_features().flatten().split(",") if f.startswith("+")}


def compile_ir(ir: str, name: str, cpu: str | None = None, features: str | None = None) -> int:
    """Address of function ``name`` of the LLVM IR module ``ir``, compiled (once per process) at -O3
    for the host CPU, or for ``cpu`` with ``features`` (LLVM names, e.g. ``"haswell"``, ``"+avx2,+fma"``)."""
    key = (ir, name, cpu, features)
    with _LOCK:
        addr = _CACHE.get(key)
        if addr is None:
            import llvmlite.binding as ll

            ll.initialize_native_target()
            ll.initialize_native_asmprinter()
            mod = ll.parse_assembly(ir)
            mod.verify()
            tm = ll.Target.from_default_triple().create_target_machine(
                cpu=cpu or ll.get_host_cpu_name(),
                features=ll.get_host_cpu_features().flatten() if features is None else features, opt=3)
            pb = ll.create_pass_builder(tm, ll.create_pipeline_tuning_options(speed_level=3))
            pb.getModulePassManager().run(mod, pb)
            engine = ll.create_mcjit_compiler(mod, tm)
            engine.finalize_object()
            _ENGINES.append((engine, mod))
            addr = _CACHE[key] = engine.get_function_address(name)
        return addr
