"""Predict with a bundle on files, folders and DICOM series, through the bundle's own ``inference.json``.

The network, ``preprocessing``, ``inferer`` and ``postprocessing`` (``Invertd`` back to the input's grid, then the
bundle's ``SaveMaskd``) are the bundle's config items, parsed with MONAI's ``ConfigParser``; nothing here
preprocesses. A DICOM series is decoded and placed as ``python -m data_prep dicom`` does (:mod:`.series`: the same
geometry and pixel decoding as the training data) and given to the pipeline as a NIfTI volume; a series that no
regular grid holds is predicted slice by slice (2D bundles) or resampled onto a regular grid (3D bundles), and the
case's notes say so. Around them: case discovery, weights checked before the first case, per-case error isolation,
DICOM SEG, overlays, a summary, and outputs that appear atomically under their final names.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.inferers import SlidingWindowInferer

from .checkpoint import load_weights
from .dicom_seg import RAS_TO_LPS, write_dicom_seg
from .files import safe_join
from .inputs import Case, _unique, discover_cases
from .overlay import overlay_rgb, write_overlay
from .segments import Segment, bundle_segments
from .series import stage_series
from .summary import CaseResult, PredictionReport, mask_measures, write_summary

__all__ = ["Predictor"]

logger = logging.getLogger(__name__)

_SAVERS = ("SaveMaskd", "SaveImaged")
# config ids that predict sets itself: an override of them would be silently replaced
_MANAGED = {"output_dir": "the output folder is predict's --output (output_dir of predict_path)",
            "input_dir": "the inputs are predict's --input (input of predict_path)",
            "datalist": "the inputs are predict's --input (input of predict_path)"}
_OWN_OUTPUT = re.compile(r"_(seg\.png|seg\.nii\.gz|overlay\.png)$")


def _reason(exc: BaseException) -> str:
    """The most specific message of an error chain: the first one below MONAI's ``applying transform ...``
    wrappers (an error raised on purpose names the file; the low-level error it wraps may not)."""
    chain: list[BaseException] = []
    inner: BaseException | None = exc
    while inner is not None and inner not in chain:
        chain.append(inner)
        inner = inner.__cause__ or inner.__context__
    chosen = next((e for e in chain if str(e).strip() and not str(e).startswith("applying transform")), chain[-1])
    text = str(chosen).strip().splitlines()
    return f"{type(chosen).__name__}: {text[0] if text else ''}".strip(": ")


class Predictor:
    """A bundle ready to predict: config parsed, network built, weights loaded and checked.

    Example::

        from dale_monai.predict import Predictor

        report = Predictor("bundles/synthetic2d_unet").predict_path("scans/", "masks/")
        print(report.describe())

    Args:
        bundle: the bundle folder (holding ``configs/inference.json`` and ``configs/metadata.json``).
        device: ``cpu``, ``cuda``, ``cuda:1``...; None keeps the bundle's choice (CUDA when available).
        checkpoint: weights file; None takes the bundle's ``ckpt_path`` (``models/model.pt``).
        overrides: config items to replace, id → value, as the keyword arguments of ``monai.bundle.run``: values
            are used as given (``{"network_def#channels": [8, 16, 32, 64], "spatial_size": [64, 64]}``); a bundle
            trained with overrides of its network needs the same ones here. The command line parses its
            ``--KEY VALUE`` words into this mapping (:mod:`.overrides`).

    Raises:
        FileNotFoundError: when the bundle has no ``configs/inference.json``.
        ValueError: for an unavailable device; an override of an id the config does not have (for ``a#b``, of a
            missing ``a``) or that predict sets itself (``output_dir``, ``input_dir``, ``datalist``); a network
            that cannot be built (e.g. an override with a wrong argument name); metadata segments that do not
            match the bundle's classes.
        CheckpointError: for a missing or mismatched checkpoint (see :func:`~.checkpoint.load_weights`).
    """

    def __init__(self, bundle: str | os.PathLike, device: str | torch.device | None = None,
                 checkpoint: str | os.PathLike | None = None, overrides: Mapping[str, Any] | None = None) -> None:
        from monai.bundle import ConfigParser

        self.bundle_dir = Path(bundle).expanduser().resolve()
        config = self.bundle_dir / "configs" / "inference.json"
        if not config.is_file():
            raise FileNotFoundError(f"bundle {self.bundle_dir}: {config} does not exist (is it a bundle folder?)")
        meta_file = self.bundle_dir / "configs" / "metadata.json"
        try:
            self.metadata = json.loads(meta_file.read_text()) if meta_file.is_file() else {}
        except json.JSONDecodeError as e:
            raise ValueError(f"{meta_file}: not valid JSON ({e})") from None
        self.name = str(self.metadata.get("name") or self.bundle_dir.name)
        self.parser = ConfigParser()
        self.parser.read_config(str(config))
        self.parser["bundle_root"] = str(self.bundle_dir)
        if device is not None:
            dev = torch.device(device)
            if dev.type == "cuda" and not torch.cuda.is_available():
                raise ValueError(f"device {device}: CUDA is not available on this machine (use --device cpu)")
            self.parser["device"] = f"$torch.device('{dev}')"
        for key, value in (overrides or {}).items():
            if key in _MANAGED:
                raise ValueError(f"override {key!r}: not used by predict, {_MANAGED[key]}")
            # a new argument in an existing component is fine (as on monai.bundle's command line), a typo of a
            # top-level id or of a component is not: it would be ignored
            owner = key.rsplit("#", 1)[0]
            if owner not in self.parser:
                raise ValueError(f"override {key!r}: {config} has no config item {owner!r}")
            self.parser[key] = value
        for key in ("device", "network", "num_classes", "preprocessing", "inferer", "postprocessing"):
            if key not in self.parser:
                raise ValueError(f"bundle {self.bundle_dir}: {config} has no '{key}'")
        if checkpoint is None and "ckpt_path" not in self.parser:
            raise ValueError(f"bundle {self.bundle_dir}: {config} has no 'ckpt_path'; give the weights file")
        self.device = torch.device(self.parser.get_parsed_content("device"))
        self.checkpoint = Path(checkpoint).expanduser().resolve() if checkpoint is not None else \
            Path(self.parser.get_parsed_content("ckpt_path"))
        try:
            self.network = self.parser.get_parsed_content("network")
        except Exception as e:  # MONAI wraps the network's own error in its config errors
            given = f" with the overrides {dict(overrides)}" if overrides else ""
            cause = e
            while cause.__cause__ is not None:
                cause = cause.__cause__
            raise ValueError(f"bundle {self.bundle_dir}: its network_def cannot be built{given}: "
                             f"{type(cause).__name__}: {cause}") from e
        load_weights(self.network, self.checkpoint, bundle=str(self.bundle_dir), map_location=self.device)
        self.network.eval()
        num_classes = int(self.parser.get_parsed_content("num_classes"))
        self.segments: list[Segment] = bundle_segments(self.metadata, num_classes, source=str(meta_file))
        self.spatial_dims = self._spatial_dims()

    def _spatial_dims(self) -> int:
        """2 when the network sees 2D slices (a volume is predicted slice by slice), else 3: the config's
        ``spatial_dims``, else 2 for MONAI's ``SliceInferer``."""
        if "spatial_dims" in self.parser:
            return int(self.parser.get_parsed_content("spatial_dims"))
        inferer = str(self.parser["inferer"].get("_target_", "")) if isinstance(self.parser["inferer"], dict) else ""
        return 2 if inferer.rsplit(".", 1)[-1] == "SliceInferer" else 3

    # ------------------------------------------------------------------------------------------- components
    def _components(self, mask_dir: Path) -> tuple:
        """The bundle's preprocessing, inferer and postprocessing, its saver writing into ``mask_dir``."""
        self.parser["output_dir"] = str(mask_dir)
        steps = self.parser["postprocessing"].get("transforms", [])
        savers = [i for i, t in enumerate(steps) if str(t.get("_target_", "")).rsplit(".", 1)[-1] in _SAVERS]
        if not savers:
            raise ValueError(f"bundle {self.bundle_dir}: its inference.json postprocessing has no SaveMaskd or "
                             "SaveImaged step writing to @output_dir")
        for i in savers:
            self.parser[f"postprocessing#transforms#{i}#print_log"] = False  # the progress bar reports instead
        inferer = self.parser.get_parsed_content("inferer")
        if isinstance(inferer, SlidingWindowInferer):
            # the volume and the stitched output stay in host memory and only sw_batch_size windows at a time go
            # to the device (MONAI's sw_device/device split), so a large CT fits a small GPU
            inferer.sw_device = self.device
            inferer.device = torch.device("cpu")
        return (self.parser.get_parsed_content("preprocessing"), inferer,
                self.parser.get_parsed_content("postprocessing"))

    # ------------------------------------------------------------------------------------------- 4D NIfTI
    def _volume_cases(self, cases: list[Case]) -> list[Case]:
        """Each 4D NIfTI case whose volumes are not the network's channels, as one case per volume
        (``<name>_vol<i>``, ``i`` from 0, zero-padded); other cases unchanged."""
        import nibabel as nib

        channels = self.parser.get("in_channels")
        channels = int(self.parser.get_parsed_content("in_channels")) if channels is not None else None
        out: list[Case] = []
        for case in cases:
            try:
                shape = nib.load(case.source).shape if case.kind == "nifti" and not case.error else ()
            except Exception:  # unreadable: the case fails in the bundle's loader, naming the file
                shape = ()
            n = int(shape[3]) if len(shape) >= 4 and all(int(s) == 1 for s in shape[4:]) else 1
            if n <= 1 or n == channels:
                out.append(case)
                continue
            width = len(str(n - 1))
            out += [replace(case, name=f"{case.name}_vol{t:0{width}d}", volume=t) for t in range(n)]
        return _unique(out)

    @staticmethod
    def _extract_volume(case: Case, stage: Path) -> str:
        """Volume ``case.volume`` of the 4D NIfTI ``case.source`` as a 3D NIfTI in ``stage``, with the file's
        header (qform, sform, codes, units), so that its mask is written with that header too."""
        import nibabel as nib

        img = nib.load(case.source)
        if img.ndim < 4 or not 0 <= int(case.volume) < img.shape[3]:
            raise ValueError(f"{case.source}: no volume {case.volume} (shape {img.shape})")
        folder = stage / "volume"
        folder.mkdir()
        path = folder / f"{case.name}.nii.gz"
        nib.save(img.slicer[(slice(None),) * 3 + (int(case.volume),)], str(path))
        return str(path)

    # ------------------------------------------------------------------------------------------- one case
    def _infer(self, source: str, components: tuple) -> Any:
        """Run one input as the bundle's ``SupervisedEvaluator`` does; returns the postprocessed ``pred``."""
        from monai.data import decollate_batch, list_data_collate

        preprocessing, inferer, postprocessing = components
        batch = list_data_collate([preprocessing({"image": source})])
        # a sliding window moves each window to the device itself (see _components)
        inputs = batch["image"] if isinstance(inferer, SlidingWindowInferer) else batch["image"].to(self.device)
        with torch.no_grad():
            pred = inferer(inputs, self.network)
        item = decollate_batch({"image": inputs, "pred": pred}, detach=True)[0]
        return postprocessing(item)["pred"]

    def _run_case(self, case: Case, out: Path, stage: Path, mask_dir: Path, components: tuple, overwrite: bool,
                  overlay: bool) -> CaseResult:
        result = CaseResult(case.name, case.source, "failed", series_uid=case.series_uid)
        if case.error:
            result.error = case.error
            return result
        if not overwrite:
            existing = sorted(p.name for p in out.glob(f"{case.name}_seg.*")) + \
                ([f"{case.name}_overlay.png"] if overlay and (out / f"{case.name}_overlay.png").exists() else [])
            if existing:
                result.status = "skipped"
                result.error = f"output exists: {out / existing[0]} (pass --overwrite to replace it)"
                return result
        source, series = case.source, None
        if case.kind == "dicom":  # decoded and placed as data_prep does, whatever loader the bundle has
            series = stage_series(case, stage / "input", self.spatial_dims)
            source = str(series.path)
            result.notes = list(series.notes)
            for note in series.notes:
                logger.info("%s: %s", case.name, note)
        elif case.volume is not None:
            source = self._extract_volume(case, stage)
        pred = self._infer(source, components)
        written = [p for p in mask_dir.iterdir() if p.is_file()] if mask_dir.is_dir() else []
        if len(written) != 1:
            raise RuntimeError(f"the bundle's saver wrote {len(written)} files for one case (expected 1)")
        ext = ".nii.gz" if written[0].name.endswith(".nii.gz") else written[0].suffix
        staged = {f"{case.name}_seg{ext}": written[0]} if series is None or series.write_nifti else {}
        mask = np.rint(pred.detach().cpu().numpy()[0]).astype(np.uint8)
        affine = pred.affine.detach().cpu().numpy() if hasattr(pred, "affine") else None
        result.measures = mask_measures(mask, affine if case.kind != "image" else None, self.segments,
                                        slice_extents=None if series is None else series.slice_extents)
        if series is not None:
            lps = series.affine_lps
            if affine is not None:
                space = str(pred.meta.get("space", "RAS")).upper()
                returned = RAS_TO_LPS @ affine if space == "RAS" else affine
                # the staged grid's float64 affine unless the pipeline returned the mask on another grid (the NIfTI
                # header only rounds it to float32)
                lps = lps if np.allclose(returned, lps, atol=1e-3) else returned
            name = f"{case.name}_seg.dcm"
            staged[name] = write_dicom_seg(stage / name, mask, lps, case.files, self.segments, self.name,
                                           str(self.metadata.get("version", "")), frames_by=series.frames_by)
        if overlay:
            from monai.transforms import LoadImage

            image = LoadImage(image_only=True, ensure_channel_first=True)(source)
            name = f"{case.name}_overlay.png"
            staged[name] = write_overlay(stage / name, overlay_rgb(image.numpy(), mask, self.segments))
        for name, tmp in staged.items():
            final = safe_join(out, name)
            if final.exists() and not overwrite:
                raise FileExistsError(f"{final} appeared during the run; not replaced")
            os.replace(tmp, final)
            result.outputs.append(str(final))
        result.status = "ok"
        return result

    # ------------------------------------------------------------------------------------------- a run
    def predict_path(self, input: str | os.PathLike, output_dir: str | os.PathLike, overwrite: bool = False,
                     overlay: bool = False, progress: bool = True, each_volume: bool = False) -> PredictionReport:
        """Predict every case under ``input`` into ``output_dir``.

        Outputs per case ``<name>``: ``<name>_seg.png`` (2D image files) or ``<name>_seg.nii.gz`` (NIfTI, DICOM),
        ``<name>_seg.dcm`` (DICOM SEG, DICOM input), ``<name>_overlay.png`` (``overlay``); for the run
        ``summary.csv`` and ``summary.json``. A case that fails is recorded with its reason and the others
        continue; a case whose outputs exist is skipped unless ``overwrite``.

        Args:
            input: a file, a folder, or a folder of DICOM series (see :func:`~.inputs.discover_cases`).
            output_dir: where outputs go (created); nothing is written elsewhere.
            overwrite: replace existing outputs.
            overlay: also write overlay PNGs.
            progress: show progress bars (tqdm, on stderr): one over the cases (for more than one) and, for a
                sliding-window bundle (3D), one over each case's windows.
            each_volume: predict each volume of a 4D NIfTI whose 4th axis is not the network's channels as its
                own case ``<name>_vol<i>`` (a 3D mask with the file's spatial header each); without it such a
                file fails with a message naming it and its number of volumes (see
                :class:`~dale_monai.bundle_transforms.AdaptChannels`).

        Raises:
            FileNotFoundError, ValueError: when ``input`` is missing or holds no input at all.
        """
        from tqdm.auto import tqdm

        out = Path(output_dir).expanduser().resolve()
        # an output folder inside (or equal to) the input holds earlier masks: not inputs
        cases = [c for c in discover_cases(input)
                 if not (Path(c.source).parent == out and _OWN_OUTPUT.search(Path(c.source).name))]
        if each_volume:
            cases = self._volume_cases(cases)
        out.mkdir(parents=True, exist_ok=True)
        report = PredictionReport([])
        stage_root = Path(tempfile.mkdtemp(prefix=".predict-", dir=out))
        try:
            # parsed once: Invertd must hold the very preprocessing instance that transformed the image
            mask_dir = stage_root / "masks"
            components = self._components(mask_dir)
            if isinstance(components[1], SlidingWindowInferer):
                components[1].progress = progress  # a bar over each case's windows: a large volume takes a while
            bar = tqdm(cases, desc=self.name, unit="case", disable=not progress or len(cases) < 2)
            for i, case in enumerate(bar):
                stage = stage_root / f"case{i}"
                stage.mkdir()
                try:
                    result = self._run_case(case, out, stage, mask_dir, components, overwrite, overlay)
                except Exception as e:  # one bad case is reported, the others go on
                    result = CaseResult(case.name, case.source, "failed", error=_reason(e),
                                        series_uid=case.series_uid)
                finally:
                    shutil.rmtree(stage, ignore_errors=True)
                    shutil.rmtree(mask_dir, ignore_errors=True)
                report.cases.append(result)
                if result.status != "ok" and progress:
                    bar.write(f"{result.status.upper()} {case.name}: {result.error}", file=sys.stderr)
        finally:
            shutil.rmtree(stage_root, ignore_errors=True)
        info = {"bundle": str(self.bundle_dir), "bundle_name": self.name,
                "bundle_version": self.metadata.get("version"), "checkpoint": str(self.checkpoint),
                "device": str(self.device), "input": str(Path(input).expanduser().resolve()), "output_dir": str(out),
                "each_volume": each_volume}
        return write_summary(report, out, self.segments, info)
