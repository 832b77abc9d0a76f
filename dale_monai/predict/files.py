"""Output files of prediction: names derived from inputs kept inside the output folder, written atomically."""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path

__all__ = ["safe_name", "safe_join", "atomic_path"]

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def safe_name(text: str, fallback: str = "case") -> str:
    """A file-name component made of ``text``: letters, digits, ``.``, ``_`` and ``-`` only, no leading dot.

    Input file names and DICOM tags (series descriptions, UIDs) become output names; separators, ``..`` and
    control characters must not reach the file system.

    Args:
        text: the raw name.
        fallback: used when nothing of ``text`` survives.
    """
    name = _UNSAFE.sub("_", str(text)).strip("._-")
    return name[:120] or fallback


def safe_join(root: str | os.PathLike, name: str) -> Path:
    """``root / name``, refusing a ``name`` that resolves outside ``root``.

    Args:
        root: the output folder.
        name: a relative file name.

    Raises:
        ValueError: when ``name`` is absolute or escapes ``root`` (``..``, a symlink out).
    """
    base = Path(root).resolve()
    target = (base / name).resolve()
    if target == base or base not in target.parents:
        raise ValueError(f"refusing to write {name!r}: it resolves outside the output folder {base}")
    return target


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it is renamed to ``path`` in one step.

    Readers (a viewer, the next stage of a pipeline) never see a half-written file, and a crash leaves no
    partial output under the final name.

    Args:
        path: the final file.
        overwrite: replace an existing ``path``; otherwise an existing file is an error.

    Raises:
        FileExistsError: when ``path`` exists and ``overwrite`` is false (checked again just before renaming).
    """
    final = Path(path)
    if final.exists() and not overwrite:
        raise FileExistsError(f"{final} exists; pass overwrite=True (--overwrite) to replace it")
    # keep the final suffix: writers such as nibabel choose the format from it
    suffix = ".nii.gz" if final.name.endswith(".nii.gz") else final.suffix
    fd, tmp = tempfile.mkstemp(dir=final.parent, prefix=f".{final.name}.", suffix=f".tmp{suffix}")
    os.close(fd)
    try:
        yield Path(tmp)
        if final.exists() and not overwrite:
            raise FileExistsError(f"{final} appeared while it was being written; not replaced")
        os.replace(tmp, final)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
