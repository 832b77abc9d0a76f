"""Helpers that the bundle configs call: where the bundle lives, and the dataset it needs.

Bundles hold configuration only; the few expressions they need beyond MONAI's components live here so
they are tested once instead of being repeated as ``$`` code in every config.
"""

from __future__ import annotations

import inspect
import json
import os
from pathlib import Path

__all__ = ["bundle_root", "load_datalist", "DatasetNotFoundError"]


class DatasetNotFoundError(FileNotFoundError):
    """The bundle's dataset is missing; the message says which ``data_prep`` command creates it."""


def bundle_root(name: str) -> str:
    """The directory of the running bundle, independent of the working directory.

    Resolution order: the ``config_root_path`` of the MONAI ``ConfigWorkflow`` being initialised (the
    parent of the ``configs/`` folder the config files were given from, for ``python -m monai.bundle run``
    and programmatic use alike); the ``DALE_BUNDLE_ROOT`` environment variable; the copy of bundle
    ``name`` shipped in this repository; the working directory. A ``bundle_root`` override on the command
    line (as MONAI Label passes) replaces this expression entirely.

    Args:
        name: the bundle's name (its folder under ``bundles/``), used by the repository fallback.
    """
    from monai.bundle import ConfigWorkflow

    frame = inspect.currentframe()
    try:
        while frame is not None:
            obj = frame.f_locals.get("self")
            # vars(), not getattr: workflows resolve unknown attributes as config ids
            if isinstance(obj, ConfigWorkflow) and vars(obj).get("config_root_path") is not None:
                return str(Path(vars(obj)["config_root_path"]).resolve().parent)
            frame = frame.f_back
    finally:
        del frame
    if os.environ.get("DALE_BUNDLE_ROOT"):
        return str(Path(os.environ["DALE_BUNDLE_ROOT"]).resolve())
    shipped = Path(__file__).resolve().parents[1] / "bundles" / name
    if shipped.is_dir():
        return str(shipped)
    return str(Path.cwd())


def load_datalist(dataset_dir: str, section: str, prepare_command: str, datalist: str = "datalist.json") -> list[dict]:
    """Load one section of a dataset's MONAI datalist with absolute paths.

    Args:
        dataset_dir: the folder holding ``datalist`` (as written by ``python -m data_prep``).
        section: ``training``, ``validation`` or ``test``.
        prepare_command: the ``data_prep`` command that creates the dataset, quoted in the error.
        datalist: file name of the datalist inside ``dataset_dir``.

    Raises:
        DatasetNotFoundError: when the datalist is missing, naming the command that creates it.
        ValueError: when the section is missing or empty, or lists files that do not exist.
    """
    root = Path(dataset_dir).expanduser().resolve()
    path = root / datalist
    if not path.is_file():
        raise DatasetNotFoundError(
            f"dataset not found: {path} does not exist. Create it with:\n    {prepare_command.format(out=root)}\n"
            "or point the bundle elsewhere with --dataset_dir DIR."
        )
    try:
        doc = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None
    items = doc.get(section)
    if not items:
        raise ValueError(f"{path}: section '{section}' is missing or empty (sections: {sorted(doc)})")
    out, missing = [], []
    for item in items:
        entry = dict(item)
        for key, value in item.items():
            if isinstance(value, str) and key in ("image", "label", "label_clean", "label_soft"):
                p = Path(value) if os.path.isabs(value) else root / value
                entry[key] = str(p)
                if not p.exists():
                    missing.append(str(p))
        out.append(entry)
    if missing:
        shown = "\n    ".join(missing[:10])
        more = f"\n    ... and {len(missing) - 10} more" if len(missing) > 10 else ""
        raise ValueError(f"{path}: section '{section}' lists {len(missing)} missing file(s):\n    {shown}{more}")
    return out
