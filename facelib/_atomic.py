"""Files: atomic writes safe under concurrent writers (one place for caches, checkpoints and exports).

Every writer of a cache, checkpoint or export writes to a temporary file of its own in the target
folder (a hidden name with the process id and a random suffix, so two processes or threads writing
the same file never share one) and renames it onto the target with ``os.replace``, which is atomic
on one file system: a reader sees the old file or the new one, never a half-written one, and of two
concurrent writers of the same content the last rename wins.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

__all__ = ["atomic_path", "atomic_write_bytes"]

_UMASK = os.umask(0)
os.umask(_UMASK)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike):
    """Yield a unique temporary path next to ``path`` to write to; when the block ends without an
    error it becomes ``path`` (``os.replace``), otherwise it is removed. Creates the parent folders.

    The temporary name is ``.<name>.<pid>.<random>.tmp`` (hidden, so folder listings skip it).
    Raises ValueError for an empty path or one that is a folder, and an OSError that names ``path``
    when its folder cannot be created or written to (read-only, a file in the way, no permission).
    """
    path = _check_target(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp")
        os.close(fd)
    except OSError as e:
        raise type(e)(e.errno, f"cannot write {path}: its folder {path.parent} cannot be created or "
                               f"written to ({e.strerror})") from None
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; give the file ordinary permissions
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _check_target(path) -> Path:
    """``path`` as a Path; ValueError if it is empty or an existing folder."""
    if not isinstance(path, (str, os.PathLike)) or not str(path):
        raise ValueError(f"output path must be a non-empty file path; got {path!r}")
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"output path {path} is a folder; expected a file path")
    return path


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (:func:`atomic_path`), flushed to disk; returns the path."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
    return Path(path)
