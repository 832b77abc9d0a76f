"""Helpers that the bundle configs call: where the bundle lives, the dataset it needs, what a run wrote.

Bundles hold configuration only; the few expressions they need beyond MONAI's components live here so
they are tested once instead of being repeated as ``$`` code in every config.
"""

from __future__ import annotations

import inspect
import json
import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "bundle_root",
    "load_datalist",
    "DatasetNotFoundError",
    "DeferredList",
    "find_inputs",
    "image_items",
    "inference_datalist",
    "training_report",
    "INPUT_SUFFIXES",
]

#: single-file inputs that inference reads (DICOM comes as a series folder, or single ``.dcm`` files)
INPUT_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".nii", ".nii.gz", ".dcm")


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


def load_datalist(dataset_dir: str, section: str, prepare_command: str, datalist: str = "datalist.json",
                  missing_hint: str = "") -> list[dict]:
    """Load one section of a dataset's MONAI datalist with absolute paths.

    Args:
        dataset_dir: the folder holding ``datalist`` (as written by ``python -m data_prep``).
        section: ``training``, ``validation`` or ``test``.
        prepare_command: the ``data_prep`` command that creates the dataset, quoted in the error.
        datalist: file name of the datalist inside ``dataset_dir``.
        missing_hint: appended to the error when the section is missing or empty, with ``{out}`` replaced by
            the dataset folder (e.g. the ``data_prep`` option that writes a ``meta`` section).

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
        hint = f" {missing_hint.format(out=root)}" if missing_hint else ""
        raise ValueError(f"{path}: section '{section}' is missing or empty (sections: {sorted(doc)}).{hint}")
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


def _suffix(path: Path) -> str:
    name = path.name.lower()
    return ".nii.gz" if name.endswith(".nii.gz") else path.suffix.lower()


def _is_dicom(path: Path) -> bool:
    if path.suffix.lower() == ".dcm":
        return True
    try:
        with open(path, "rb") as f:
            f.seek(128)
            return f.read(4) == b"DICM"
    except OSError:
        return False


def _dicom_series_dir(folder: Path) -> bool:
    files = [p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")]
    return bool(files) and all(_is_dicom(p) for p in files)


def find_inputs(input_dir: str | os.PathLike) -> list[str]:
    """The inference inputs in a folder: image and NIfTI files, and DICOM series folders.

    A folder holding only DICOM files is one series (read as one volume); otherwise its files with a suffix in
    :data:`INPUT_SUFFIXES` are inputs, and each sub-folder holding only DICOM files is one series. A path to a
    single file is that one input.

    Args:
        input_dir: a folder, or one file.

    Raises:
        FileNotFoundError: when the path does not exist.
        ValueError: when the folder holds no input.
    """
    root = Path(input_dir).expanduser().resolve()
    if not root.exists():
        raise FileNotFoundError(f"input_dir {root} does not exist")
    if root.is_file():
        return [str(root)]
    if _dicom_series_dir(root):
        return [str(root)]
    out = []
    for p in sorted(root.iterdir()):
        if p.name.startswith("."):
            continue
        if p.is_file() and _suffix(p) in INPUT_SUFFIXES and _suffix(p) != ".dcm":
            out.append(str(p))
        elif p.is_dir() and _dicom_series_dir(p):
            out.append(str(p))
    if not out:
        raise ValueError(
            f"input_dir {root}: no inputs found (files ending in {', '.join(s for s in INPUT_SUFFIXES if s != '.dcm')}, "
            "or DICOM series folders)"
        )
    return out


def image_items(datalist: str | os.PathLike | Sequence, keys: Sequence[str] = ("image",)) -> list[dict]:
    """Inference items ``[{"image": path}, ...]`` from a list of paths or dicts, or a JSON file.

    Args:
        datalist: a list of paths or of dicts with an ``image`` key; or the path of a JSON file holding such a list,
            or a MONAI datalist whose ``test`` (else ``testing``) section is taken. Relative paths in a JSON file
            are relative to its folder.
        keys: the path keys each item keeps, ``image`` first (evaluation keeps ``("image", "label")``); a plain
            path is the image.

    Raises:
        ValueError: for an empty list, or an entry without one of ``keys``.
        FileNotFoundError: for a listed input that does not exist.
    """
    base = Path.cwd()
    if isinstance(datalist, (str, os.PathLike)):
        path = Path(datalist).expanduser().resolve()
        if not path.is_file():
            raise FileNotFoundError(f"datalist {path} does not exist")
        try:
            doc = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: not valid JSON ({e})") from None
        if isinstance(doc, dict):
            doc = doc.get("test", doc.get("testing"))
            if doc is None:
                raise ValueError(f"{path}: a datalist needs a 'test' or 'testing' section for inference")
        datalist, base = doc, path.parent
    items = []
    for entry in datalist:
        item = {}
        for key in keys:
            value = entry.get(key) if isinstance(entry, dict) else (entry if key == keys[0] else None)
            if not isinstance(value, (str, os.PathLike)):
                raise ValueError(f"datalist entry {entry!r} has no {key} path")
            p = Path(value).expanduser()
            p = p if p.is_absolute() else base / p
            if not p.exists():
                raise FileNotFoundError(f"datalist {key} {p} does not exist")
            item[key] = str(p)
        items.append(item)
    if not items:
        raise ValueError("the inference datalist is empty")
    return items


def inference_datalist(input_dir: str | os.PathLike | None, dataset_dir: str, prepare_command: str) -> list:
    """Inputs of a bundle's inference: those of ``input_dir`` (:func:`find_inputs`), else the dataset's test set.

    Args:
        input_dir: a folder or a file of inputs; None takes the ``test`` section of the bundle's dataset.
        dataset_dir: the bundle's dataset (see :func:`load_datalist`).
        prepare_command: the command creating the dataset, quoted when it is missing.
    """
    if input_dir:
        return find_inputs(input_dir)
    return load_datalist(dataset_dir, "test", prepare_command)


class DeferredList(Sequence):
    """A list computed on first use, ``func(*args, **kwargs)``, then kept.

    The bundles' inference and evaluation inputs are built with it, so that parsing a config and instantiating its
    dataset and evaluator touch no file: MONAI's ``check_properties``, the model zoo's CI and MONAI Label read an
    inference config where no dataset exists. The inputs are listed, and a missing dataset is reported
    (:class:`DatasetNotFoundError`), when the evaluator first iterates them. Wrapped in an ``IterableDataset``,
    nothing asks for the length before that: MONAI's ``Workflow`` then leaves ``epoch_length`` to Ignite, which
    counts the first epoch.

    A call that raises is not cached: the next access calls ``func`` again (e.g. after the dataset was prepared).

    Args:
        func: returns the items (any sequence; it is copied into a list).
        args, kwargs: its arguments, themselves evaluated when the config is parsed.
    """

    def __init__(self, func: Callable[..., Sequence], *args: Any, **kwargs: Any) -> None:
        self.func, self.args, self.kwargs = func, args, kwargs
        self._items: list | None = None

    @property
    def resolved(self) -> bool:
        """Whether the items were computed."""
        return self._items is not None

    def resolve(self) -> list:
        """The items, computed on the first call.

        Raises:
            whatever ``func`` raises (e.g. :class:`DatasetNotFoundError`).
        """
        if self._items is None:
            self._items = list(self.func(*self.args, **self.kwargs))
        return self._items

    def __len__(self) -> int:
        return len(self.resolve())

    def __getitem__(self, index):
        return self.resolve()[index]

    def __iter__(self) -> Iterator:
        return iter(self.resolve())

    def __repr__(self) -> str:
        name = getattr(self.func, "__qualname__", repr(self.func))
        return f"DeferredList({name}, {len(self._items)} items)" if self.resolved else f"DeferredList({name}, pending)"


def training_report(ckpt_dir: str | os.PathLike, output_dir: str | os.PathLike, log_dir: str | os.PathLike) -> str:
    """The end-of-training summary of a bundle: where its outputs are, naming only files that exist.

    An output that is absent is said to be absent, with the likely reason, instead of being named: e.g. a run
    stopped before its first validation saved no model and wrote no validation metrics.

    Args:
        ckpt_dir: the bundle's ``models`` folder (``model.pt``, ``checkpoint_last.pt``).
        output_dir: the bundle's ``eval`` folder (``metrics.csv``).
        log_dir: the TensorBoard folder (event files ``events.out.tfevents.*``).

    Returns:
        the lines to print, starting with an empty line.
    """
    model = Path(ckpt_dir) / "model.pt"
    last = Path(ckpt_dir) / "checkpoint_last.pt"
    metrics = Path(output_dir) / "metrics.csv"
    logs = Path(log_dir)
    no_validation = "none: no validation ran"
    rows = [
        ("model (best validation Dice)", str(model) if model.is_file() else f"{no_validation}, so no model was saved"),
        ("last checkpoint (resume)", str(last) if last.is_file() else "none: no epoch was completed"),
        ("validation metrics", str(metrics) if metrics.is_file() else no_validation),
        ("logs (TensorBoard)", str(logs) if logs.is_dir() and any(logs.glob("events.out.tfevents.*"))
         else "none written"),
    ]
    width = max(len(label) for label, _ in rows) + 1
    return "\n".join(["", "Training finished.", *(f"  {label + ':':<{width}} {value}" for label, value in rows)])
