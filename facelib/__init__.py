"""facelib: monocular inverse face rendering in PyTorch (model -> parameters -> image formation ->
networks -> losses -> training -> evaluation)."""

from .model.facemodel import FaceModel, ModelFileError, geometry, reflectance
from .device import pick_device

__version__ = "0.1.0"

# the modules that sat at the top level before the subpackages (issue 19): ``from facelib import mofa,
# viz`` keeps working (imported on first use); dotted paths use the new place (facelib.book.viz)
_MOVED = {"facemodel": "model", "open_model": "model", "loaders": "model", "params": "model", "detail": "model",
          "camera": "render", "shading": "render", "raster": "render", "points": "render",
          "corpus": "data", "wild": "data", "photos": "data", "multilevel": "mofa", "selfsup": "mofa",
          "sfs": "coarse_fine", "metrics": "eval", "export": "eval", "compare": "eval",
          "viz": "book", "plot": "book", "explorer": "book"}


def __getattr__(name: str):
    if name in _MOVED:
        import importlib

        return importlib.import_module(f"{__name__}.{_MOVED[name]}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def load_model(model: str = "open", device=None) -> FaceModel:
    """A face model by name or path.

    ``"open"``: our procedurally built open model (built on first use and cached, see
    :mod:`facelib.model.open_model`); ``"foreign"``: another population of the same generator, which no
    network trains on (:mod:`facelib.model.foreign`); a ``.npz`` written by :meth:`FaceModel.save`; a Basel Face Model 2009
    ``.mat``; or a folder of OBJ files (:func:`facelib.model.loaders.load_obj_folder`).
    """
    import os
    from pathlib import Path

    if not isinstance(model, (str, os.PathLike)) or not str(model):
        raise ModelFileError(f"model must be 'open' or the path of a .npz, a .mat or a folder of OBJ files; "
                             f"got {model!r}")
    dev = None if device is None else pick_device(device)  # before the (slow) load: fail early
    from . import repro

    if model == "open":
        from .model import open_model as om
        m = om.open_model()
        # the cache file open_model() just used (its name is open_model's; spelt here because any edit of
        # open_model.py renames the cache, which would rebuild the model and orphan the cached networks)
        repro.note_model_file("open", om.cache_dir() / f"open-{om.BUILDER_VERSION}-{om._source_hash()}.npz")
    elif model == "foreign":  # a stand-in for a model the networks never saw (facelib.model.foreign)
        from .model import foreign as fm

        m = fm.foreign_model()
        repro.note_model_file("foreign", fm.cache_path())
    else:
        p = Path(model)
        if p.is_dir():
            from .model.loaders import load_obj_folder
            m = load_obj_folder(p)
        elif p.suffix == ".mat":
            from .model.loaders import load_bfm2009
            m = load_bfm2009(p)
        elif p.suffix == ".npz":
            m = FaceModel.load(p)
            repro.note_model_file(str(model), p)
        elif not p.exists():
            raise ModelFileError(f"{model}: no such file or folder, and not a built-in model name "
                                 "(built-in: 'open', 'foreign')")
        else:
            raise ModelFileError(f"{model}: unknown face-model format {p.suffix!r}; expected 'open', "
                                 "a .npz, a Basel Face Model 2009 .mat or a folder of OBJ files")
    return m if dev is None else m.to(dev)


def load_network(name: str = "inversefacenet", **kwargs):
    """A network the book trained, for inference (never trains): :func:`facelib.networks.load_network`
    (``name``: ``"inversefacenet"``, ``"mofa"`` or ``"mofa-final"``; ``row=``, ``seed=``, ``profile=``,
    ``model=``, ``device=``)."""
    from .networks import load_network as _load

    return _load(name, **kwargs)
