"""Kernels written as LLVM IR, compiled for the host CPU by llvmlite (the LLVM binding Numba is built on):
no build step, tens of milliseconds per kernel on first use. Used where Numba's auto-vectoriser does
not find the code we want (:mod:`facelib.render.fast._gemm`, :mod:`facelib.render.fast._resolve`)."""

from __future__ import annotations

import os
import threading

# ``FACELIB_CPU=haswell`` compiles every kernel for an AVX2-only CPU and reports its features, whatever
# the host: the AVX2 code paths (and the Numba fallback of the AVX-512-only kernel) run and are tested
# on an AVX-512 machine.  With ``NUMBA_CPU_NAME=haswell``, ``ATEN_CPU_CAPABILITY=avx2`` and
# ``OPENBLAS_CORETYPE=Haswell`` the whole library runs as on such a CPU (``.ci/run`` tests that way).
SIMULATED_CPUS = {
    "haswell": ("haswell", "+avx,+avx2,+fma,+f16c,+bmi,+bmi2,+lzcnt,+movbe,+popcnt,+sse4.1,+sse4.2,+ssse3,"
                           "+sse3,+sse2,+sse,+cx16,+xsave,+fsgsbase,+rdrnd,+aes,+pclmul"),
}

_LOCK = threading.Lock()
_CACHE: dict = {}  # (ir, name, cpu, features) -> address; the engines that own the code stay alive here
_ENGINES: list = []


def target() -> tuple:
    """``(cpu, features)``: LLVM's name and feature string of the CPU the kernels are compiled for, the
    host's or, where ``$FACELIB_CPU`` is set, one of :data:`SIMULATED_CPUS`."""
    name = os.environ.get("FACELIB_CPU", "")
    if name:
        if name not in SIMULATED_CPUS:
            raise ValueError(f"FACELIB_CPU={name!r} is not a CPU we can simulate; known: {sorted(SIMULATED_CPUS)}")
        return SIMULATED_CPUS[name]
    import llvmlite.binding as ll

    return ll.get_host_cpu_name(), ll.get_host_cpu_features().flatten()


def host_features() -> set:
    """LLVM's names of the features that are on for the CPU the kernels target (e.g. ``"avx512f"``):
    the host's, or the simulated CPU's (:func:`target`)."""
    return {f[1:] for f in target()[1].split(",") if f.startswith("+")}


def compile_ir(ir: str, name: str, cpu: str | None = None, features: str | None = None) -> int:
    """Address of function ``name`` of the LLVM IR module ``ir``, compiled (once per process) at -O3
    for the host CPU (:func:`target`), or for ``cpu`` with ``features`` (LLVM names, e.g. ``"haswell"``,
    ``"+avx2,+fma"``)."""
    host_cpu, host_feats = target()
    cpu, features = cpu or host_cpu, host_feats if features is None else features
    key = (ir, name, cpu, features)
    with _LOCK:
        addr = _CACHE.get(key)
        if addr is None:
            import llvmlite.binding as ll

            ll.initialize_native_target()
            ll.initialize_native_asmprinter()
            mod = ll.parse_assembly(ir)
            mod.verify()
            tm = ll.Target.from_default_triple().create_target_machine(cpu=cpu, features=features, opt=3)
            pb = ll.create_pass_builder(tm, ll.create_pipeline_tuning_options(speed_level=3))
            pb.getModulePassManager().run(mod, pb)
            engine = ll.create_mcjit_compiler(mod, tm)
            engine.finalize_object()
            _ENGINES.append((engine, mod))
            addr = _CACHE[key] = engine.get_function_address(name)
        return addr


def checked_kernel(state: dict, make_ir, name: str, self_test, needs: str = "avx512f") -> int:
    """Address of the kernel ``name`` compiled from ``make_ir()`` (once per process: the answer is kept in
    ``state``, a dict with ``addr`` and ``error``), or 0 where the host lacks the feature ``needs``,
    llvmlite or the compilation fails, or ``self_test(address)`` raises; the reason goes to
    ``state["error"]`` and the caller runs its Numba code instead.  A missing feature is expected and
    quiet; any other failure also warns (``RuntimeWarning``)."""
    if state["addr"] is None:
        try:
            if needs not in host_features():
                state["addr"], state["error"] = 0, f"RuntimeError: the CPU has no {needs}"  # expected: quiet
                return 0
            addr = compile_ir(make_ir(), name)
            self_test(addr)
            state["addr"] = addr
        except Exception as e:  # noqa: BLE001 (no llvmlite, an LLVM without this IR, a CPU it cannot target)
            import warnings

            state["addr"], state["error"] = 0, f"{type(e).__name__}: {e}"
            warnings.warn(f"facelib: the {name} kernel is not used ({state['error']}); the slower Numba code "
                          "runs instead (same results). `python -m facelib.repro` lists the kernels that run.",
                          RuntimeWarning, stacklevel=2)
    return state["addr"]


def numba_caller(kinds: str, ret: str = "v"):
    """A Numba intrinsic ``call(address, *args)`` that calls the compiled function at ``address`` (an
    int, e.g. from :func:`compile_ir`) from nopython code: the arguments, by ``kinds`` (one letter
    each), are ``a`` arrays (their data pointer, passed as i64; C-contiguous), ``i`` integers (i64),
    ``f`` float32; ``ret`` ``"i"`` for an i64 result, ``"v"`` for none. The address is a runtime
    argument, so the calling function stays cacheable."""
    from llvmlite import ir
    from numba.core import cgutils
    from numba.core import types as nbt
    from numba.extending import intrinsic

    @intrinsic
    def call(typingctx, address, *args):
        if len(args) != len(kinds):
            return None
        sig = (nbt.int64 if ret == "i" else nbt.void)(address, nbt.StarArgTuple.from_types(args))

        def codegen(context, builder, signature, llargs):
            i64 = ir.IntType(64)
            vals, tys = [], []
            items = cgutils.unpack_tuple(builder, llargs[1], len(kinds))
            for k, ty, v in zip(kinds, signature.args[1].types, items):
                if k == "a":
                    vals.append(builder.ptrtoint(context.make_array(ty)(context, builder, v).data, i64))
                    tys.append(i64)
                elif k == "i":
                    vals.append(context.cast(builder, v, ty, nbt.int64))
                    tys.append(i64)
                else:
                    vals.append(context.cast(builder, v, ty, nbt.float32))
                    tys.append(ir.FloatType())
            fnty = ir.FunctionType(i64 if ret == "i" else ir.VoidType(), tys)
            fn = builder.inttoptr(context.cast(builder, llargs[0], signature.args[0], nbt.int64), fnty.as_pointer())
            out = builder.call(fn, vals)
            return out if ret == "i" else context.get_dummy_value()

        return sig, codegen

    return call
