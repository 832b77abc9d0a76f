#!/usr/bin/env python
"""Render every bundle in ``bundles/`` from ``bundles/matrix.yaml`` and the templates below.

    python scripts/generate_bundles.py            # (re)write the bundles
    python scripts/generate_bundles.py --check    # exit 1 if a committed bundle differs from its rendering

Bundles are configuration only: what they need beyond MONAI's components is imported from the
installed ``dale_monai`` package with full dotted ``_target_`` paths.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
BUNDLES = REPO / "bundles"
MATRIX = BUNDLES / "matrix.yaml"
SCHEMA_NAME = "meta_schema_20240725.json"
SCHEMA_URL = (
    "https://github.com/Project-MONAI/MONAI-extra-test-data/releases/download/0.8.1/" + SCHEMA_NAME
)
VERSION = "0.1.0"

LICENSE = """Copyright (c) dale-monai contributors

Licensed under the Apache License, Version 2.0 (the "License");
you may not use this file except in compliance with the License.
You may obtain a copy of the License at

    http://www.apache.org/licenses/LICENSE-2.0

Unless required by applicable law or agreed to in writing, software
distributed under the License is distributed on an "AS IS" BASIS,
WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
See the License for the specific language governing permissions and
limitations under the License.

The weights a user trains with this bundle are subject to the licence of the data they were trained on.
"""

LOGGING_CONF = """[loggers]
keys=root

[handlers]
keys=consoleHandler

[formatters]
keys=fullFormatter

[logger_root]
level=INFO
handlers=consoleHandler

[handler_consoleHandler]
class=StreamHandler
level=INFO
formatter=fullFormatter
args=(sys.stdout,)

[formatter_fullFormatter]
format=%(asctime)s - %(name)s - %(levelname)s - %(message)s
"""


IMPORTS = ["$import os", "$import torch", "$import monai", "$import ignite", "$import dale_monai",
           "$import dale_monai.bundle", "$import dale_monai.feature_layers"]


def _binary(ds: dict) -> bool:
    return int(ds["num_classes"]) == 2


def _out_channels(ds: dict) -> int:
    return 1 if _binary(ds) else int(ds["num_classes"])


def _net_name(bb: dict) -> str:
    return bb["_target_"].rsplit(".", 1)[-1]


def _intensity(ds: dict) -> list[dict]:
    """The dataset's intensity normalisation of the image.

    ``scale``: min-max to [0, 1] per image; ``none``: already in [0, 1]; ``window``: clip the dataset's window
    ``intensity_window`` (e.g. Hounsfield units for CT) and map it to [0, 1], as MONAI's ``spleen_ct_segmentation``
    bundle does (``ScaleIntensityRanged``, a_min -57, a_max 164 there); ``zscore``: zero mean, unit variance per
    channel over the non-zero voxels (MR: ``NormalizeIntensityd(nonzero=True, channel_wise=True)``, as MONAI's
    ``brats_mri_segmentation`` bundle).
    """
    kind = ds["intensity"]
    if kind == "scale":
        return [{"_target_": "ScaleIntensityd", "keys": "image", "minv": 0.0, "maxv": 1.0}]
    if kind == "none":
        return []
    if kind == "window":
        window = ds.get("intensity_window")
        if not (isinstance(window, list) and len(window) == 2 and float(window[0]) < float(window[1])):
            raise ValueError(f"intensity 'window' needs intensity_window: [low, high] with low < high, got {window!r}")
        return [{"_target_": "ScaleIntensityRanged", "keys": "image", "a_min": float(window[0]),
                 "a_max": float(window[1]), "b_min": 0.0, "b_max": 1.0, "clip": True}]
    if kind == "zscore":
        return [{"_target_": "NormalizeIntensityd", "keys": "image", "nonzero": True, "channel_wise": True}]
    raise ValueError(f"intensity must be 'scale', 'none', 'window' or 'zscore', got {kind!r}")


def _native_3d(ds: dict) -> bool:
    """A 3D dataset: resampled to its target spacing, trained on patches, inferred with a sliding window."""
    return int(ds["dims"]) == 3


_3D_KEYS = ("target_spacing", "num_samples", "pos_neg", "sw_overlap", "sw_batch_size")


def _check_3d(ds: dict) -> None:
    missing = [k for k in _3D_KEYS if k not in ds]
    if missing:
        raise ValueError(f"a 3D dataset needs {missing} (target spacing, patches, sliding window)")
    spacing = ds["target_spacing"]
    if not (isinstance(spacing, list) and len(spacing) == 3 and all(float(v) > 0 for v in spacing)):
        raise ValueError(f"target_spacing must be three positive mm values, got {spacing!r}")
    if len(ds["spatial_size"]) != 3:
        raise ValueError(f"a 3D dataset's spatial_size (the patch and window size) needs 3 values, got "
                         f"{ds['spatial_size']!r}")


def _image_transforms(ds: dict, with_label: bool, volume_size: bool) -> list[dict]:
    """Load, channels, geometry and intensity: shared by training, validation, evaluation and inference.

    2D datasets are resized: inference and evaluation (``volume_size``) resize 2D networks' inputs to
    ``[h, w, -1]``, so a 2D image gets a singleton third axis that ``Invertd`` removes again, a volume keeps its
    slices for the ``SliceInferer``, and labels stay at their original size so metrics are computed on the
    original grid.

    3D datasets follow MONAI's model-zoo 3D bundles (``spleen_ct_segmentation``): ``Orientationd`` to RAS and
    ``Spacingd`` to the dataset's ``target_spacing`` (mm; image bilinear, label nearest), then the intensity
    normalisation; no resizing. Training crops patches of ``spatial_size`` afterwards (:func:`_patch_transforms`),
    validation and inference run a sliding window of that size over the whole volume, and inference/evaluation
    (``volume_size``) transform the image only: ``Invertd`` takes the mask back to the input's grid, where the
    label stays.
    """
    keys = ["image", "label"] if with_label else ["image"]
    out: list[dict] = [
        # no fixed reader: PNG/JPG/BMP (PIL), NIfTI (nibabel), DICOM series folders (ITK) by their suffix
        {"_target_": "dale_monai.bundle_transforms.CheckedLoadImaged", "keys": keys, "image_only": True},
        {"_target_": "EnsureChannelFirstd", "keys": keys},
        {"_target_": "dale_monai.bundle_transforms.AdaptChannelsd", "keys": "image", "channels": "@in_channels",
         "spatial_dims": "@spatial_dims"},
        # NaN/Inf images and labels that are not class indices (0/255 masks) stop with the file's name
        {"_target_": "dale_monai.bundle_transforms.CheckSampled", "num_classes": ds["num_classes"],
         # unscaled datasets promise [0, 1] intensities: a raw 16-bit image would otherwise train silently
         **({"intensity_range": [0, 1]} if ds["intensity"] == "none" else {})},
    ]
    if _native_3d(ds):
        _check_3d(ds)
        spatial = keys if not volume_size else ["image"]
        out += [
            # Spacingd updates every "<key>_..." item as the key's meta dict: a datalist's "label_clean" path
            # (data_prep synthetic) would break it; nothing downstream reads other items
            {"_target_": "SelectItemsd", "keys": keys},
            {"_target_": "Orientationd", "keys": spatial, "axcodes": "RAS"},
            {"_target_": "Spacingd", "keys": spatial, "pixdim": "@target_spacing",
             "mode": ["bilinear", "nearest"] if len(spatial) == 2 else ["bilinear"]},
            *_intensity(ds),
            {"_target_": "EnsureTyped", "keys": "image", "dtype": "$torch.float32"},
        ]
        if with_label:
            out.append({"_target_": "EnsureTyped", "keys": "label", "dtype": "$torch.float32"})
        return out
    out += _intensity(ds)
    out.append({"_target_": "EnsureTyped", "keys": "image", "dtype": "$torch.float32"})
    if volume_size:
        size = "$list(@spatial_size) + [-1]" if ds["dims"] == 2 else "@spatial_size"
        out.append({"_target_": "Resized", "keys": "image", "spatial_size": size, "mode": "bilinear" if ds["dims"] == 2
                    else "trilinear"})
    else:
        mode = "bilinear" if ds["dims"] == 2 else "trilinear"
        out.append({"_target_": "Resized", "keys": keys, "spatial_size": "@spatial_size",
                    "mode": [mode, "nearest"] if with_label else [mode]})
    if with_label:
        # labels are class indices; anything resampled stays an index
        out.append({"_target_": "EnsureTyped", "keys": "label", "dtype": "$torch.float32"})
    return out


def _patch_transforms(ds: dict, with_label: bool) -> list[dict]:
    """3D training patches of ``spatial_size``: padded where the volume is smaller, then ``patch#num_samples``
    patches per volume, centred on a foreground voxel with probability ``pos / (pos + neg)``
    (``RandCropByPosNegLabeld``, as ``spleen_ct_segmentation``: 4 samples of 96³, pos 1, neg 1); unlabelled
    images get random patches (``RandSpatialCropSamplesd``). Empty for 2D datasets (resized whole images)."""
    if not _native_3d(ds):
        return []
    keys = ["image", "label"] if with_label else ["image"]
    pad = {"_target_": "SpatialPadd", "keys": keys, "spatial_size": "@spatial_size"}
    if with_label:
        crop = {"_target_": "RandCropByPosNegLabeld", "keys": keys, "label_key": "label",
                "spatial_size": "@spatial_size", "pos": "@patch#pos", "neg": "@patch#neg",
                "num_samples": "@patch#num_samples", "image_key": "image", "image_threshold": 0}
    else:
        crop = {"_target_": "RandSpatialCropSamplesd", "keys": keys, "roi_size": "@spatial_size",
                "num_samples": "@patch#num_samples", "random_size": False}
    return [pad, crop]


def _random_transforms(ds: dict, keys: list[str]) -> list[dict]:
    """Patches (3D), flips and 90° rotations in the first two axes, and a flip of the third axis (3D)."""
    flips = [{"_target_": "RandFlipd", "keys": keys, "prob": 0.5, "spatial_axis": axis} for axis in range(
        3 if _native_3d(ds) else 2)]
    return [*_patch_transforms(ds, "label" in keys), *flips[:2],
            {"_target_": "RandRotate90d", "keys": keys, "prob": 0.5, "spatial_axes": [0, 1]}, *flips[2:]]


def _3d_settings(ds: dict) -> dict:
    """Config items of a 3D bundle: target spacing, patch sampling and sliding window (empty for 2D)."""
    if not _native_3d(ds):
        return {}
    pos, neg = ds["pos_neg"]
    return {
        "target_spacing": ds["target_spacing"],
        "patch": {"num_samples": ds["num_samples"], "pos": pos, "neg": neg},
        "sliding_window": {"overlap": ds["sw_overlap"], "mode": "gaussian", "sw_batch_size": ds["sw_batch_size"]},
    }


def _sliding_window() -> dict:
    return {"_target_": "SlidingWindowInferer", "roi_size": "@spatial_size",
            "sw_batch_size": "@sliding_window#sw_batch_size", "overlap": "@sliding_window#overlap",
            "mode": "@sliding_window#mode"}


def _postprocessing(binary: bool, ds: dict) -> dict:
    if binary:
        steps = [
            {"_target_": "Activationsd", "keys": "pred", "sigmoid": True},
            {"_target_": "AsDiscreted", "keys": "pred", "threshold": 0.5},
        ]
    else:
        n = ds["num_classes"]
        steps = [
            {"_target_": "Activationsd", "keys": "pred", "softmax": True},
            {"_target_": "AsDiscreted", "keys": ["pred", "label"], "argmax": [True, False], "to_onehot": n},
        ]
    return {"_target_": "Compose", "transforms": steps}


def _restore_to_input(binary: bool) -> list[dict]:
    """Postprocessing of inference and evaluation: a label map on the input's own grid.

    Binary: the probability is resampled (bilinear) and then thresholded, giving smooth borders; multi-class:
    the argmax is taken first and resampled nearest, so no (C, H, W, D) probability volume is ever resampled.
    """
    invert = {"_target_": "Invertd", "keys": "pred", "transform": "@preprocessing", "orig_keys": "image",
              "nearest_interp": not binary, "to_tensor": True}
    if binary:
        return [{"_target_": "Activationsd", "keys": "pred", "sigmoid": True}, invert,
                {"_target_": "AsDiscreted", "keys": "pred", "threshold": 0.5}]
    return [{"_target_": "Activationsd", "keys": "pred", "softmax": True},
            {"_target_": "AsDiscreted", "keys": "pred", "argmax": True}, invert]


def _common(name: str, ds: dict, bb: dict) -> dict:
    return {
        "imports": list(IMPORTS),
        "bundle_root": f"$dale_monai.bundle.bundle_root('{name}')",
        "ckpt_dir": "$os.path.join(@bundle_root, 'models')",
        "output_dir": "$os.path.join(@bundle_root, 'eval')",
        "dataset_dir": f"$os.path.join(@bundle_root, '..', '..', '{ds['dataset_dir']}')",
        "prepare_command": ds["prepare"],
        "device": "$torch.device('cuda:0' if torch.cuda.is_available() else 'cpu')",
        "spatial_dims": ds["dims"],
        "spatial_size": ds["spatial_size"],
        "in_channels": ds["in_channels"],
        "out_channels": _out_channels(ds),
        "num_classes": ds["num_classes"],
        "network_def": {"_target_": bb["_target_"], "spatial_dims": "@spatial_dims", "in_channels": "@in_channels",
                        "out_channels": "@out_channels", **bb["args"]},
        "network": "$@network_def.to(@device)",
    }


def train_config(name: str, ds: dict, bb: dict) -> dict:
    binary = _binary(ds)
    common = _common(name, ds, bb)
    cfg: dict = {
        **{k: common[k] for k in ("imports", "bundle_root", "ckpt_dir", "output_dir")},
        "log_dir": "$os.path.join(@bundle_root, 'logs')",
        **{k: common[k] for k in ("dataset_dir", "prepare_command")},
        "train_datalist": "$dale_monai.bundle.load_datalist(@dataset_dir, 'training', @prepare_command)",
        "val_datalist": "$dale_monai.bundle.load_datalist(@dataset_dir, 'validation', @prepare_command)",
        "device": common["device"],
        "seed": 0,
        "num_epochs": ds["num_epochs"],
        "batch_size": ds["batch_size"],
        "val_interval": ds["val_interval"],
        "learning_rate": ds["learning_rate"],
        "num_workers": 0,
        **{k: common[k] for k in ("spatial_dims", "spatial_size", "in_channels", "out_channels", "num_classes")},
        **_3d_settings(ds),
        "amp": False,
        "resume": False,
        "dale": {
            "patch_size": ds["patch_size"],
            "tau": 0.9,
            "bins": 256,
            "edge": "morph",
            "entropy": "paper",
            "partition_mode": "patch",
            "combine": "max",
            "band_width": None,
            "band_profile": "hard",
            "omega_method": "jvp",
            "omega_scope": "full",
            "omega_rule": "adam",
            "omega_lr": 0.1,
            "omega_eps": 1e-8,
            "omega_steps": 1,
            "omega_reduction": "mean",
            "alpha": 0.05,
            # chosen on validation Dice (benchmarks/select_variant.py, BENCHMARKS.md): the paper's masked inputs
            # (mask_mode paper, mask_inputs true) train on images unlike those the network is evaluated on
            "mask_mode": "weight",
            "mask_inputs": False,
        },
        "network_def": common["network_def"],
        "network": common["network"],
        "loss": {"_target_": "dale_monai.losses.DALELoss", "ce_weight": 1.0, "dice_weight": 1.0},
        "optimizer": {"_target_": "torch.optim.Adam", "params": "$@network.parameters()", "lr": "@learning_rate"},
        "train": {
            "deterministic_transforms": _image_transforms(ds, True, False),
            "random_transforms": _random_transforms(ds, ["image", "label"]),
            "partition": [
                {"_target_": "dale_monai.transforms.FuzzyPartitiond", "keys": ["image", "label"],
                 "patch_size": "@dale#patch_size", "tau": "@dale#tau", "bins": "@dale#bins",
                 "edge": "@dale#edge", "entropy": "@dale#entropy", "mode": "@dale#partition_mode",
                 "combine": "@dale#combine", "band_width": "@dale#band_width", "band_profile": "@dale#band_profile"},
            ],
            "preprocessing": {
                "_target_": "Compose",
                "transforms": "$@train#deterministic_transforms + @train#random_transforms + @train#partition",
            },
            "dataset": {"_target_": "CacheDataset", "data": "@train_datalist", "transform": "@train#preprocessing",
                        "cache_rate": 1.0, "num_workers": "@num_workers", "progress": False},
            "dataloader": {"_target_": "DataLoader", "dataset": "@train#dataset", "batch_size": "@batch_size",
                           "shuffle": True, "num_workers": "@num_workers"},
            "inferer": {"_target_": "SimpleInferer"},
            "postprocessing": _postprocessing(binary, ds),
            "handlers": [
                # every val_interval epochs and after the last one, so that every run saves a model
                {"_target_": "dale_monai.handlers.validation.EpochValidationHandler", "validator": "@validate#evaluator",
                 "interval": "@val_interval"},
                {"_target_": "dale_monai.handlers.progress.ProgressBarHandler",
                 "output_keys": ["loss", "loss_nonfuzzy", "loss_fuzzy", "omega_mean"]},
                {"_target_": "StatsHandler", "tag_name": "train_loss", "iteration_log": False,
                 "output_transform": "$monai.handlers.from_engine(['loss'], first=True)"},
                {"_target_": "TensorBoardStatsHandler", "log_dir": "@log_dir", "tag_name": "train_loss",
                 "output_transform": "$monai.handlers.from_engine(['loss'], first=True)"},
                {"_target_": "dale_monai.handlers.checkpoint.LastCheckpoint", "save_dir": "@ckpt_dir",
                 "save_dict": {"model": "$dale_monai.feature_layers.unwrap_model(@network)", "optimizer": "@optimizer"},
                 "resume": "@resume"},
            ],
            # handlers that are part of the DALE algorithm, kept apart so that the plain overlay drops them
            # ε of L_W is drawn from the global torch generator (seeded by set_determinism), whose state the
            # last checkpoint saves, so a resumed run continues exactly as an uninterrupted one
            "dale_handlers": [
                {"_target_": "dale_monai.handlers.wasserstein.WassersteinAlignment", "alpha": "@dale#alpha"},
            ],
            "trainer": {
                "_target_": "dale_monai.engines.DALETrainer",
                "device": "@device",
                "max_epochs": "@num_epochs",
                "train_data_loader": "@train#dataloader",
                "network": "@network",
                "optimizer": "@optimizer",
                "loss_function": "@loss",
                "omega_step": {"_target_": "dale_monai.meta.OmegaMetaStep", "method": "@dale#omega_method",
                               "lr": "@dale#omega_lr", "eps": "@dale#omega_eps", "steps": "@dale#omega_steps",
                               "reduction": "@dale#omega_reduction", "scope": "@dale#omega_scope",
                               "rule": "@dale#omega_rule"},
                "mask_mode": "@dale#mask_mode",
                "mask_inputs": "@dale#mask_inputs",
                "inferer": "@train#inferer",
                "postprocessing": "@train#postprocessing",
                "train_handlers": "$@train#handlers + @train#dale_handlers",
                "amp": "@amp",
            },
        },
        "validate": {
            "preprocessing": {"_target_": "Compose", "transforms": "$@train#deterministic_transforms"},
            "dataset": {"_target_": "CacheDataset", "data": "@val_datalist", "transform": "@validate#preprocessing",
                        "cache_rate": 1.0, "num_workers": "@num_workers", "progress": False},
            "dataloader": {"_target_": "DataLoader", "dataset": "@validate#dataset", "batch_size": 1,
                           "shuffle": False, "num_workers": "@num_workers"},
            "inferer": _inferer(ds, validation=True),
            "postprocessing": _postprocessing(binary, ds),
            "handlers": [
                {"_target_": "StatsHandler", "iteration_log": False},
                {"_target_": "TensorBoardStatsHandler", "log_dir": "@log_dir", "iteration_log": False},
                {"_target_": "CheckpointSaver", "save_dir": "@ckpt_dir",
                 "save_dict": {"model": "$dale_monai.feature_layers.unwrap_model(@network)"},
                 "save_key_metric": True, "key_metric_filename": "model.pt"},
                {"_target_": "MetricsSaver", "save_dir": "@output_dir", "metrics": "*", "metric_details": "*",
                 "batch_transform": "$lambda x: [xx['image'].meta for xx in x]", "summary_ops": "*"},
            ],
            "key_metric": {
                "val_mean_dice": {"_target_": "MeanDice", "include_background": binary,
                                  "output_transform": "$monai.handlers.from_engine(['pred', 'label'])"},
            },
            "additional_metrics": {
                "val_hd95": {"_target_": "HausdorffDistance", "include_background": binary, "percentile": 95,
                             "output_transform": "$monai.handlers.from_engine(['pred', 'label'])"},
            },
            "evaluator": {
                "_target_": "SupervisedEvaluator",
                "device": "@device",
                "val_data_loader": "@validate#dataloader",
                "network": "@network",
                "inferer": "@validate#inferer",
                "postprocessing": "@validate#postprocessing",
                "key_val_metric": "@validate#key_metric",
                "additional_metrics": "@validate#additional_metrics",
                "val_handlers": "@validate#handlers",
                "amp": "@amp",
            },
        },
        "initialize": ["$monai.utils.set_determinism(seed=@seed)"],
        "run": ["$@train#trainer.run()"],
        "training": "@run",
        # names only the outputs that exist (a run stopped before validating saved no model)
        "finalize": ["$print(dale_monai.bundle.training_report(@ckpt_dir, @output_dir, @log_dir))"],
    }
    return cfg


def plain_overlay() -> dict:
    """Overlay that trains the same bundle with MONAI's standard SupervisedTrainer (for comparison)."""
    return {
        "train#trainer": {
            "_target_": "SupervisedTrainer",
            "device": "@device",
            "max_epochs": "@num_epochs",
            "train_data_loader": "@train#dataloader",
            "network": "@network",
            "optimizer": "@optimizer",
            "loss_function": "@loss",
            "inferer": "@train#inferer",
            "postprocessing": "@train#postprocessing",
            "train_handlers": "$@train#handlers + @train#dale_handlers",
            "amp": "@amp",
        },
        "train#partition": [],
        "train#dale_handlers": [],
    }


def multi_gpu_overlay(bb: dict) -> dict:
    """Overlay for ``torchrun --nproc_per_node=N``: DDP, distributed samplers, output handlers on rank 0 only."""
    return {
        "imports": IMPORTS + ["$import torch.distributed as dist", "$import dale_monai.distributed"],
        "device": "$dale_monai.distributed.local_device()",
        "find_unused_parameters": bool(bb.get("find_unused_parameters", False)),
        "network": "$dale_monai.distributed.distributed_network(@network_def, @device, @find_unused_parameters)",
        "train#sampler": {"_target_": "DistributedSampler", "dataset": "@train#dataset", "even_divisible": True,
                          "shuffle": True},
        "train#dataloader#sampler": "@train#sampler",
        "train#dataloader#shuffle": False,
        "train#trainer#train_handlers": "$dale_monai.distributed.handlers_for_rank(@train#handlers + @train#dale_handlers)",
        "validate#sampler": {"_target_": "DistributedSampler", "dataset": "@validate#dataset", "even_divisible": False,
                             "shuffle": False},
        "validate#dataloader#sampler": "@validate#sampler",
        "validate#evaluator#val_handlers": "$dale_monai.distributed.handlers_for_rank(@validate#handlers)",
        "initialize": ["$dale_monai.distributed.init_distributed(@device)", "$monai.utils.set_determinism(seed=@seed)"],
        "run": ["$@train#trainer.run()"],
        "finalize": [
            "$(not dist.is_initialized() or dist.get_rank() == 0) and "
            "print(dale_monai.bundle.training_report(@ckpt_dir, @output_dir, @log_dir))",
            "$dist.is_initialized() and dist.destroy_process_group()",
        ],
    }


def _inference_pre(ds: dict, with_label: bool) -> dict:
    return {"_target_": "Compose", "transforms": _image_transforms(ds, with_label, True)}


def _inferer(ds: dict, validation: bool = False) -> dict:
    """Validation: the whole resized image (2D) or a sliding window over the resampled volume (3D). Inference:
    2D networks run slice by slice along the last axis (2D images carry one slice, volumes many); 3D networks a
    Gaussian-weighted sliding window of ``spatial_size`` (MONAI's ``spleen_ct_segmentation``: overlap 0.5 there)."""
    if _native_3d(ds):
        return _sliding_window()
    if validation:
        return {"_target_": "SimpleInferer"}
    return {"_target_": "SliceInferer", "roi_size": "@spatial_size", "spatial_dim": 2, "sw_batch_size": 4,
            "progress": False}


def inference_config(name: str, ds: dict, bb: dict) -> dict:
    binary = _binary(ds)
    common = _common(name, ds, bb)
    checkpoint = {"_target_": "CheckpointLoader", "load_path": "@ckpt_path", "load_dict": {"model": "@network"},
                  "map_location": "@device"}
    return {
        **{k: common[k] for k in ("imports", "bundle_root", "ckpt_dir", "output_dir")},
        "ckpt_path": "$os.path.join(@ckpt_dir, 'model.pt')",
        **{k: common[k] for k in ("dataset_dir", "prepare_command")},
        "input_dir": None,
        # listed when the evaluator first iterates them: parsing the config (check_properties, MONAI Label, the
        # model zoo's CI) needs no dataset, and a missing one is reported when inference runs without --input_dir
        "datalist": "$dale_monai.bundle.DeferredList(dale_monai.bundle.inference_datalist, @input_dir, @dataset_dir, "
                    "@prepare_command)",
        **{k: common[k] for k in ("device", "spatial_dims", "spatial_size", "in_channels", "out_channels",
                                  "num_classes")},
        **{k: v for k, v in _3d_settings(ds).items() if k != "patch"},
        **{k: common[k] for k in ("network_def", "network")},
        "preprocessing": _inference_pre(ds, with_label=False),
        # iterable: the evaluator does not ask for its length when it is built, which would list the inputs
        "dataset": {"_target_": "IterableDataset", "data": "$dale_monai.bundle.DeferredList(dale_monai.bundle.image_items, "
                    "@datalist)", "transform": "@preprocessing"},
        "dataloader": {"_target_": "DataLoader", "dataset": "@dataset", "batch_size": 1, "shuffle": False,
                       "num_workers": 0},
        "inferer": _inferer(ds),
        "postprocessing": {
            "_target_": "Compose",
            "transforms": _restore_to_input(binary) + [
                {"_target_": "dale_monai.bundle_transforms.SaveMaskd", "keys": "pred", "output_dir": "@output_dir",
                 "output_postfix": "seg"}
            ],
        },
        # read by MONAI Label only (it drops our saver and writes the label through ITK, which needs an (H, W)
        # integer array for a 2D image): the same transform instances, so Invertd inverts what actually ran
        "post_transforms": "$list(@postprocessing.transforms) + [monai.transforms.SqueezeDimd(keys='pred', dim=0), "
                           "monai.transforms.CastToTyped(keys='pred', dtype=torch.uint8)]",
        "handlers": [checkpoint, {"_target_": "StatsHandler", "iteration_log": False}],
        "evaluator": {
            "_target_": "SupervisedEvaluator",
            "device": "@device",
            "val_data_loader": "@dataloader",
            "network": "@network",
            "inferer": "@inferer",
            "postprocessing": "@postprocessing",
            "val_handlers": "@handlers",
            "amp": False,
        },
        "run": ["$@evaluator.run()"],
    }


def evaluate_overlay(ds: dict) -> dict:
    """Overlay on inference.json: the test section, labels kept at their original size, per-case metrics."""
    binary = _binary(ds)
    return {
        "test_section": "test",
        "datalist": "$dale_monai.bundle.DeferredList(dale_monai.bundle.load_datalist, @dataset_dir, @test_section, "
                    "@prepare_command)",
        "dataset#data": "$dale_monai.bundle.DeferredList(dale_monai.bundle.image_items, @datalist, ['image', 'label'])",
        "preprocessing": _inference_pre(ds, with_label=True),
        "postprocessing": {"_target_": "Compose", "transforms": _restore_to_input(binary)},
        "handlers": [
            {"_target_": "CheckpointLoader", "load_path": "@ckpt_path", "load_dict": {"model": "@network"},
             "map_location": "@device"},
            {"_target_": "dale_monai.evaluation.CaseMetricsSaver", "output_dir": "@output_dir",
             "num_classes": "@num_classes", "prefix": "@test_section"},
        ],
        "run": ["$@evaluator.run()"],
        "evaluating": "@run",
    }


def _code(entry: list, where: str) -> dict:
    if not (isinstance(entry, list) and len(entry) == 3 and all(isinstance(v, str) and v for v in entry)):
        raise ValueError(f"{where}: expected [scheme, code, meaning] as three strings, got {entry!r}")
    return {"scheme": entry[0], "value": entry[1], "meaning": entry[2]}


def segments(ds: dict, table: dict) -> list[dict]:
    """The foreground labels of a dataset as DICOM SEG segments: value, name, display colour and codes.

    Args:
        ds: the dataset's settings (``label_names``: label name → value, with ``background: 0``).
        table: the matrix's ``segments`` table, label name → ``{color, category, type}``.

    Raises:
        ValueError: for labels that are not ``0 .. num_classes - 1``, or a label missing from ``table`` or
            described wrongly (a colour that is not three 0..255 integers, a code that is not three strings).
    """
    values = sorted(ds["label_names"].values())
    if values != list(range(int(ds["num_classes"]))) or ds["label_names"].get("background") != 0:
        raise ValueError(f"label_names {ds['label_names']}: expected background: 0 and values "
                         f"0..{ds['num_classes'] - 1}")
    out = []
    for label, value in sorted(ds["label_names"].items(), key=lambda kv: kv[1]):
        if value == 0:
            continue
        if label not in table:
            raise ValueError(f"segments: no entry for label {label!r} (known: {sorted(table)})")
        entry = table[label]
        color = entry.get("color")
        if not (isinstance(color, list) and len(color) == 3 and all(isinstance(c, int) and 0 <= c <= 255
                                                                    for c in color)):
            raise ValueError(f"segments: {label}: color must be three integers 0..255, got {color!r}")
        out.append({"value": value, "name": label, "color": color,
                    "category": _code(entry.get("category"), f"segments: {label}: category"),
                    "type": _code(entry.get("type"), f"segments: {label}: type")})
    return out


def metadata(name: str, ds: dict, bb: dict, versions: dict, segment_table: dict) -> dict:
    binary = _binary(ds)
    out_channels = _out_channels(ds)
    names = ", ".join(f"{k}: {v}" for k, v in ds["label_names"].items())
    return {
        "schema": SCHEMA_URL,
        "version": VERSION,
        "changelog": {VERSION: "first release, generated from bundles/matrix.yaml"},
        "monai_version": versions["monai"],
        "pytorch_version": versions["torch"],
        "numpy_version": versions["numpy"],
        "required_packages_version": {"dale-monai": VERSION},
        "supported_apps": {"monai-label": ""},
        "name": name,
        "task": f"{ds['task'].capitalize()} on {ds['description']}, trained with DALE",
        "description": (
            f"{_net_name(bb)} trained with DALE (data-driven alternating learning, CVPR 2025) "
            f"on {ds['description']}: alternating non-fuzzy / fuzzy steps with per-pixel label confidence and "
            "Wasserstein feature alignment, for training on noisy lesion borders."
        ),
        "authors": "dale-monai contributors",
        "copyright": "Copyright (c) dale-monai contributors",
        "data_source": ds["description"],
        "data_type": ds["modality"],
        "image_classes": f"{ds['in_channels']} channel(s), intensities scaled to [0, 1]",
        "label_classes": names,
        "pred_classes": names + (" (one sigmoid channel, thresholded at 0.5)" if binary else " (softmax, argmax)"),
        "eval_metrics": {},
        "intended_use": "Research only. Not for clinical diagnosis.",
        "references": [
            "Fang et al., Minding Fuzzy Regions: A Data-driven Alternating Learning Paradigm for Stable Lesion "
            "Segmentation, CVPR 2025"
        ],
        "network_data_format": {
            "inputs": {
                "image": {
                    "type": "image",
                    "format": "magnitude",
                    "modality": ds["modality"],
                    "num_channels": ds["in_channels"],
                    "spatial_shape": ds["spatial_size"],
                    "dtype": "float32",
                    "value_range": [0, 1],
                    "is_patch_data": _native_3d(ds),
                    "channel_def": ({"0": "image"} if ds["in_channels"] == 1 else
                                    {str(i): c for i, c in enumerate(("red", "green", "blue"))}),
                }
            },
            "outputs": {
                "pred": {
                    "type": "image",
                    "format": "segmentation",
                    "num_channels": out_channels,
                    "spatial_shape": ds["spatial_size"],
                    "dtype": "float32",
                    "value_range": [0, 1],
                    "is_patch_data": _native_3d(ds),
                    # the values of the written mask (MONAI Label reads this as label name -> value)
                    "channel_def": {str(v): k for k, v in ds["label_names"].items()},
                }
            },
        },
        # label names, display colours and SNOMED CT codes: DICOM SEG and overlays of `python -m dale_monai predict`
        "segments": segments(ds, segment_table),
    }


def _cli(name: str, *files: str) -> str:
    paths = [f"bundles/{name}/configs/{f}" for f in files]
    if len(paths) == 1:
        return f"--config_file {paths[0]}"
    return "--config_file \"[" + ",".join(f"'{p}'" for p in paths) + "]\""


def readme(name: str, ds: dict, bb: dict) -> str:
    net = _net_name(bb)
    prep = ds["prepare"].format(out=ds["dataset_dir"])
    size = "x".join(str(s) for s in ds["spatial_size"])
    shape = [1, ds["in_channels"], *ds["spatial_size"]]
    if bb.get("export", "script") == "trace":
        export_flags = f" --use_trace True --input_shape \"{shape}\""
        export_note = f" ({net} is exported by tracing: TorchScript cannot compile it)"
    else:
        export_flags, export_note = "", ""
    sections = ds.get("test_sections", ["test"])
    test_note = ("" if len(sections) == 1 else
                 f" Other test sections: {', '.join('`' + s + '`' for s in sections[1:])} (`--test_section NAME`).")
    if ds["dims"] == 2:
        inputs = ("PNG/JPG/BMP/TIFF images, NIfTI files (2D, or volumes processed slice by slice), DICOM series "
                  "folders (one or more slices). Each input is resized to " + size + " per slice; the mask is "
                  "resized back to the input's grid, so it has the input's size, affine and spacing. Masks are "
                  "written as `<name>_seg.png` for image files and `<name>_seg.nii.gz` otherwise (class indices, "
                  "uint8).")
    else:
        spacing = "x".join(f"{v:g}" for v in ds["target_spacing"])
        inputs = ("NIfTI volumes and DICOM series folders, reoriented to RAS and resampled to " + spacing + " mm "
                  "(`--target_spacing`), predicted with a Gaussian-weighted sliding window of " + size + " voxels "
                  f"(overlap {ds['sw_overlap']}, `--sliding_window#overlap`) and the mask resampled back to the "
                  "input's grid (size, affine and spacing of the input), written as `<name>_seg.nii.gz` (class "
                  "indices, uint8). 2D images are rejected with an error naming the file.")
    ddp_note = " `find_unused_parameters` is on (U-Net++ keeps three unused heads)." if bb.get(
        "find_unused_parameters") else ""
    return f"""# {name}

{net} for {ds['task']} on {ds['description']}, trained with **DALE** (data-driven alternating learning,
Fang et al., CVPR 2025) by [dale-monai](../../../README.md). This file and the bundle's configs are generated from
`bundles/matrix.yaml` by `scripts/generate_bundles.py`; edit those, not the bundle.

All commands run from the repository root (any working directory works: the bundle finds its own folder; set
`--bundle_root DIR` to use a copy elsewhere).

## Data
{ds['data_note']}

Prepare it once:

    {prep}

The bundle reads `{ds['dataset_dir']}/datalist.json` (override with `--dataset_dir DIR`). Without it, training,
evaluation and inference stop with a message quoting the command above.

## Training

    python -m monai.bundle run training {_cli(name, 'train.json')}

The run id `run` does the same (MONAI Label uses it). Override anything on the command line, e.g.
`--num_epochs 50 --batch_size 16 --device "$torch.device('cpu')" --dataset_dir /data/mine --dale#tau 0.8
--dale#alpha 0.05 --dale#omega_reduction sum`. Training shows a progress bar, validates every `val_interval`
({ds['val_interval']}) epochs and after the last one (so a short run also saves a model), and writes:

- `models/model.pt`: the best validation Dice, a plain `state_dict` (`torch.load(..., weights_only=True)`);
- `models/checkpoint_last.pt`: model, optimizer and trainer state after every epoch; resume with `--resume true`;
- `eval/metrics.csv` and per-case validation details; `logs/` for TensorBoard.

With MONAI's standard `SupervisedTrainer` instead of DALE (for comparison), add the plain overlay:

    python -m monai.bundle run training {_cli(name, 'train.json', 'plain_train.json')}

{paradigms_readme(name, ds)}
{semisup_readme(name, ds)}
### Several GPUs (or CPU processes)

    torchrun --nproc_per_node=2 -m monai.bundle run training {_cli(name, 'train.json', 'multi_gpu_train.json')}

DistributedDataParallel (NCCL on GPUs, gloo on the CPU), a `DistributedSampler` (each process gets
`batch_size` samples: the global batch is `N x batch_size`), logs and checkpoints on rank 0, the ω meta step's
non-fuzzy gradient averaged over the processes.{ddp_note} Computed per process, as usual under DDP: BatchNorm
statistics, the Wasserstein term's Gaussian statistics, and the meta step's virtual SGD step (so ω differs slightly
from one process on the same global batch; the real gradients are averaged exactly). On the CPU, set
`OMP_NUM_THREADS=1` (more threads than cores slow every process down many times).

## DALE settings (`dale#...`)
`patch_size` {ds['patch_size']}, `tau` 0.9, `bins` 256, `edge` morph, `entropy` paper (Eq. 3 as printed),
`partition_mode` patch (`band` with `band_width` N px: the pixels within N px of the label boundary are fuzzy;
`paper` pins Eqs. 3–6), `combine` max (`weighted`, `ae`, `er`), `band_profile` hard (`linear`),
`omega_method` jvp (exact; `double_backward` is the reference, `first_order` the fast approximation), `omega_scope`
full (`head`: the meta gradient over the segmentation head only), `omega_rule` adam (`l2rw`: learning to
re-weight), `omega_lr` 0.1, `omega_eps` 1e-8, `omega_steps` (K)
1, `omega_reduction` mean (the released behaviour; `sum`/`normalized` re-weight more strongly), `alpha` 0.05
(weight of the Wasserstein term), `mask_mode` weight and `mask_inputs` false (both steps see the whole image and the
partition masks weight the losses; chosen on validation Dice, see the repository's `BENCHMARKS.md`; the paper's
masked inputs are `--dale#mask_mode paper --dale#mask_inputs true`). See the repository's `README.md` for what each
means.

## Evaluation
On the `test` section of the dataset, at each image's original size:

    python -m monai.bundle run evaluating {_cli(name, 'inference.json', 'evaluate.json')}

writes `eval/test_per_case.csv` (Dice, mIoU, HD95, ASD per case, in the label's spacing, with empty-mask flags)
and `eval/test_summary.json` (mean, std, n per metric).{test_note}

## Inference

    python -m monai.bundle run {_cli(name, 'inference.json')} --input_dir DIR

or `--datalist "['a.png', 'b.nii.gz']"` (or the path of a JSON list or datalist). Without either it predicts the
dataset's test images; only then is the dataset read (loading the config, MONAI's `check_properties` and MONAI
Label need none). Inputs: {inputs} Masks go to `eval/` (`--output_dir DIR`); weights come from
`models/model.pt` (`--ckpt_path FILE`).

For pipelines, the same configs behind one command that takes a file, a folder or a folder of DICOM series
(grouped by series UID), writes DICOM SEG for DICOM input, reports and skips a bad case, and summarises each
case's {"area or volume" if ds["dims"] == 2 else "volume"} in physical units
([docs/predict.md](../../../docs/predict.md)):

    python -m dale_monai predict --bundle bundles/{name} --input PATH --output DIR

## Export and checks

    python -m monai.bundle verify_metadata --meta_file bundles/{name}/configs/metadata.json --filepath bundles/schema/{SCHEMA_NAME}
    python -m monai.bundle verify_net_in_out network_def --meta_file bundles/{name}/configs/metadata.json {_cli(name, 'inference.json')}
    python -m monai.bundle ckpt_export network_def --filepath bundles/{name}/models/model.ts --ckpt_file bundles/{name}/models/model.pt --meta_file bundles/{name}/configs/metadata.json {_cli(name, 'inference.json')}{export_flags}

The last one writes TorchScript{export_note}.

## Results
No measured results are recorded for this bundle: it ships no weights. See `BENCHMARKS.md` in the repository.

## Security
A bundle is code: MONAI evaluates the `$` expressions of its configs. Load only bundles you trust.
"""


# --------------------------------------------------------------------------------------------- paradigm overlays
#: overlay file → what it trains (each is a complete alternative to DALE's trainer, on the same bundle)
PARADIGMS = {
    "coteaching_train.json": "Co-teaching (two networks, each trained on the pixels the other finds easiest)",
    "trinet_train.json": "TriNet (three networks, each trained on the pixels both others select)",
    "mwnet_train.json": "MW-Net meta re-weighting on a clean `meta` set (`--mwnet#rule l2rw`: learning to re-weight)",
    "gce_train.json": "MONAI's standard trainer with the generalised cross-entropy (q = 0.5)",
    "sce_train.json": "MONAI's standard trainer with the symmetric cross-entropy (α = β = 0.5)",
    "clcs_train.json": "CLCS (two branches vote; class-aware curriculum thresholds select the clean pixels, the rest "
                       "get a confidence-weighted CE/RCE mix)",
}


def _checkpoint_handler(train: dict) -> tuple[int, dict]:
    """Index and config of the ``LastCheckpoint`` in ``train#handlers``, whose ``save_dict`` overlays extend."""
    for i, handler in enumerate(train["train"]["handlers"]):
        if handler["_target_"].endswith("LastCheckpoint"):
            return i, handler
    raise ValueError("train.json has no LastCheckpoint handler in train#handlers")


def _save_dict(train: dict, extra: dict) -> dict:
    """``train#handlers#<i>#save_dict`` with ``extra`` added, so a resumed run restores those objects too."""
    index, handler = _checkpoint_handler(train)
    return {f"train#handlers#{index}#save_dict": {**handler["save_dict"], **extra}}


def _paradigm_trainer(target: str, **specific) -> dict:
    """``train#trainer`` of a paradigm: the shared engine settings of the bundle plus the paradigm's own."""
    return {
        "_target_": target,
        "device": "@device",
        "max_epochs": "@num_epochs",
        "train_data_loader": "@train#dataloader",
        **specific,
        "loss_function": "@loss",
        "inferer": "@train#inferer",
        "postprocessing": "@train#postprocessing",
        "train_handlers": "$@train#handlers + @train#dale_handlers",
        "amp": "@amp",
    }


#: DALE's own pieces, dropped by every other paradigm
_NO_DALE = {"train#partition": [], "train#dale_handlers": []}


def small_loss_overlay(train: dict, section: str, target: str, n_networks: int, select_ratio: float,
                       ramp: str) -> dict:
    """Co-teaching / TriNet: ``n_networks`` copies of ``network_def`` with optimizers like ``@optimizer``.

    ``networks[0]`` is the bundle's ``@network``: the one validated, saved as ``models/model.pt`` and loaded by
    ``inference.json``. The others follow it onto the device and into DDP (``dale_monai.distributed.network_like``).
    """
    extra_nets: dict = {}
    for i in range(1, n_networks):
        extra_nets[f"network_def_{i}"] = "%network_def"
        extra_nets[f"network_{i}"] = {"_target_": "dale_monai.distributed.network_like",
                                      "network": f"@network_def_{i}", "reference": "@network", "device": "@device"}
        extra_nets[f"optimizer_{i}"] = {"_target_": "dale_monai.engines.optimizer_like", "optimizer": "@optimizer",
                                        "network": f"@network_{i}"}
    ids = [""] + [f"_{i}" for i in range(1, n_networks)]
    return {
        # ramp ends: null = 10 % and 80 % of the run's iterations (PyMIC's JSRT examples: 1,000 and 8,000 of 10,000)
        section: {"select_ratio": select_ratio, "ramp_start": None, "ramp_end": None, "ramp": ramp,
                  "per_sample": False},
        **extra_nets,
        "train#trainer": _paradigm_trainer(
            target,
            networks="$[" + ", ".join(f"@network{i}" for i in ids) + "]",
            optimizers="$[" + ", ".join(f"@optimizer{i}" for i in ids) + "]",
            select_ratio=f"@{section}#select_ratio", ramp_start=f"@{section}#ramp_start",
            ramp_end=f"@{section}#ramp_end", ramp=f"@{section}#ramp", per_sample=f"@{section}#per_sample",
        ),
        **_NO_DALE,
        **_save_dict(train, {f"model{i}": f"$dale_monai.feature_layers.unwrap_model(@network{i})" for i in ids[1:]}
                     | {f"optimizer{i}": f"@optimizer{i}" for i in ids[1:]}),
    }


def meta_prepare_hint(ds: dict) -> str:
    """How the dataset's ``data_prep`` command writes the clean ``meta`` section MW-Net needs."""
    converter = ds["prepare"].split()[3]
    if converter == "synthetic":
        how = f"re-create it with clean meta cases: {ds['prepare']} --n-meta 8"
    elif converter == "covid_semiseg":
        how = (f"re-convert it with part of the radiologist-labelled training slices as the meta set: "
               f"{ds['prepare']} --meta-count 20")
    else:
        how = ("make a noisy copy whose clean meta set is part of the training cases: python -m data_prep noise "
               "--datalist {out}/datalist.json --out {out}_noisy --protocol dilate_erode --meta-fraction 0.1 "
               "(then --dataset_dir {out}_noisy)")
    return "MW-Net needs a 'meta' section of clean labels; " + how


def mwnet_overlay(train: dict, ds: dict) -> dict:
    """MW-Net (or learning to re-weight) on the clean ``meta`` section of the bundle's datalist."""
    return {
        "mwnet": {
            "rule": "mwnet",
            "meta_method": "jvp",
            "meta_batch_size": "@batch_size",
            # MW-Net.py (xjtushujun/meta-weight-net): VNet(1, 100, 1), Adam lr 1e-3, weight decay 1e-4
            "weight_net": {"_target_": "dale_monai.mwnet.WeightNet", "hidden_features": 100},
            "optimizer": {"_target_": "torch.optim.Adam", "params": "$@mwnet#weight_net.parameters()", "lr": 0.001,
                          "weight_decay": 0.0001},
        },
        "meta_prepare_hint": meta_prepare_hint(ds),
        "meta_datalist": "$dale_monai.bundle.load_datalist(@dataset_dir, 'meta', @prepare_command, "
                         "missing_hint=@meta_prepare_hint)",
        "meta": {
            # the deterministic pipeline of validation: the clean set is not augmented
            "dataset": {"_target_": "CacheDataset", "data": "@meta_datalist", "transform": "@validate#preprocessing",
                        "cache_rate": 1.0, "num_workers": "@num_workers", "progress": False},
            "dataloader": {"_target_": "DataLoader", "dataset": "@meta#dataset", "batch_size": "@mwnet#meta_batch_size",
                           "shuffle": True, "num_workers": "@num_workers"},
        },
        # the meta loader first: MONAI resolves references in order, so a missing meta section stops the run
        # before the training set is cached
        "train#trainer": {"_target_": "dale_monai.engines.MetaReweightTrainer", "meta_data_loader": "@meta#dataloader",
                          **_paradigm_trainer(
                              "dale_monai.engines.MetaReweightTrainer", network="@network", optimizer="@optimizer",
                              rule="@mwnet#rule", weight_net="@mwnet#weight_net", meta_optimizer="@mwnet#optimizer",
                              meta_method="@mwnet#meta_method")},
        **_NO_DALE,
        **_save_dict(train, {"weight_net": "@mwnet#weight_net", "meta_optimizer": "@mwnet#optimizer"}),
    }


def clcs_overlay(train: dict) -> dict:
    """CLCS: two copies of ``network_def`` (the first is ``@network``), the class curriculum, CLCSTrainer.

    The curriculum (``clcs#curriculum``) is its own config object so that the last checkpoint can save it (a handler
    cannot reference the trainer it belongs to). Defaults and their sources: ``dale_monai.engines.CLCSTrainer``.
    """
    copies: dict = {"network_def_1": "%network_def",
                    "network_1": {"_target_": "dale_monai.distributed.network_like", "network": "@network_def_1",
                                  "reference": "@network", "device": "@device"},
                    "optimizer_1": {"_target_": "dale_monai.engines.optimizer_like", "optimizer": "@optimizer",
                                    "network": "@network_1"}}
    return {
        "clcs": {
            # thresholds tau * M(beta), M(x) = x / (2 - x), beta the learning status of the previous epoch
            "tau": 0.9, "mapping": "convex", "status": "recall", "threshold_warmup": True,
            "criterion": "label", "min_keep": 0.1, "noisy_weight": 1.0,
            "discrepancy": "features", "discrepancy_weight": 0.1, "feature_layer": None,
            # null: 5 % of num_epochs, at least 1
            "warmup_epochs": None,
            "curriculum": {"_target_": "dale_monai.clcs.ClassCurriculum", "num_classes": "@num_classes",
                           "tau": "@clcs#tau", "mapping": "@clcs#mapping", "status": "@clcs#status",
                           "threshold_warmup": "@clcs#threshold_warmup"},
        },
        **copies,
        "train#trainer": _paradigm_trainer(
            "dale_monai.engines.CLCSTrainer", networks="$[@network, @network_1]",
            optimizers="$[@optimizer, @optimizer_1]", curriculum="@clcs#curriculum", criterion="@clcs#criterion",
            min_keep="@clcs#min_keep", noisy_weight="@clcs#noisy_weight", discrepancy="@clcs#discrepancy",
            discrepancy_weight="@clcs#discrepancy_weight", feature_layer="@clcs#feature_layer",
            warmup_epochs="@clcs#warmup_epochs"),
        **_NO_DALE,
        **_save_dict(train, {"model_1": "$dale_monai.feature_layers.unwrap_model(@network_1)", "optimizer_1": "@optimizer_1",
                             "clcs_curriculum": "@clcs#curriculum"}),
    }


def robust_loss_overlay(loss: dict) -> dict:
    """MONAI's standard trainer (the plain overlay) with a noise-robust loss in place of DALELoss."""
    return {**plain_overlay(), "loss": loss}


def paradigm_overlays(name: str, ds: dict, bb: dict) -> dict[str, dict]:
    """``configs/<paradigm>_train.json`` → overlay, for every paradigm of :data:`PARADIGMS`."""
    train = train_config(name, ds, bb)
    out = {
        "coteaching_train.json": small_loss_overlay(train, "coteaching", "dale_monai.engines.CoTeachingTrainer", 2,
                                                    0.85, "sigmoid"),
        "trinet_train.json": small_loss_overlay(train, "trinet", "dale_monai.engines.TriNetTrainer", 3, 0.9,
                                                "linear"),
        "mwnet_train.json": mwnet_overlay(train, ds),
        "gce_train.json": robust_loss_overlay({"_target_": "dale_monai.robust_losses.GeneralizedCELoss", "q": 0.5}),
        "sce_train.json": robust_loss_overlay({"_target_": "dale_monai.robust_losses.SymmetricCELoss", "alpha": 0.5,
                                               "beta": 0.5}),
        "clcs_train.json": clcs_overlay(train),
    }
    assert set(out) == set(PARADIGMS)
    return out


def paradigms_readme(name: str, ds: dict) -> str:
    """The bundle README's paragraph on the other training paradigms."""
    meta = meta_prepare_hint(ds).replace("{out}", ds["dataset_dir"])
    lines = "\n".join(f"- {what}:\n\n      python -m monai.bundle run training {_cli(name, 'train.json', f)}\n"
                      for f, what in PARADIGMS.items())
    return f"""Other noisy-label paradigms, each one overlay away (the repository's README compares them):

{lines}
Co-teaching and TriNet train 2 and 3 copies of `network_def`; the first is the one validated and saved as
`models/model.pt` (so inference, MONAI Label and `predict` are unchanged), the checkpoint holds them all.
{meta}.
Settings: `--coteaching#select_ratio 0.85 --coteaching#ramp_start 100 --coteaching#ramp_end 800` (iterations;
default 10 % and 80 % of the run), `--trinet#...` likewise (0.9, linear), `--mwnet#rule l2rw`, `--clcs#tau 0.9
--clcs#warmup_epochs 5 --clcs#discrepancy_weight 0.1` (CLCS trains 2 copies too; its per-class thresholds are logged
every epoch). Put `multi_gpu_train.json` last to combine one with torchrun.
"""


# --------------------------------------------------------------------------------------------- semi-supervised overlays
#: overlay file → what it trains on the labelled training set plus the ``unlabeled`` section of the datalist
SEMISUP_PARADIGMS = {
    "meanteacher_train.json": "Mean teacher (EMA teacher, consistency loss ramped up; SSL4MIS defaults)",
    "cps_train.json": "Cross pseudo supervision (two networks teach each other with hard pseudo-labels)",
    "fixeddynamic_train.json": "Fixed + dynamic pseudo-labels (two subnets, shifted crops, COM, CutMix; "
                               "reconstructed from the paper's figures)",
    "dalepl_train.json": "DALE on pseudo-labels (an EMA teacher's pseudo-labels of the unlabelled images through "
                         "DALE's partition and ω steps, beside the supervised loss)",
    "gapmatch_train.json": "GapMatch (confidence-filtered weak-to-strong pseudo-labels plus a SAM-style model "
                           "perturbation; reconstructed from the abstract and public re-implementations)",
    "arco_train.json": "ARCO (the mean teacher plus a pixel contrastive loss with stratified anchor and negative "
                       "sampling and per-class memory banks; public-code defaults, without its optional extras)",
}


def unlabeled_prepare_hint(ds: dict) -> str:
    """How the dataset's ``data_prep`` command writes the ``unlabeled`` section the semi-supervised overlays need."""
    converter = ds["prepare"].split()[3]
    if converter == "covid_semiseg":
        how = (f"re-convert it with the 1,600 pseudo-labelled images, without their masks, as unlabelled images "
               f"(the 50 doctor-labelled slices are then the labelled training and validation sets): "
               f"{ds['prepare']} --unlabeled pseudo")
    elif converter in ("synthetic", "ph2", "folder"):
        how = (f"re-convert it keeping the labels of a share of the training cases and listing the others as "
               f"unlabelled: {ds['prepare']} --labeled-fraction 0.25")
    else:
        how = ("the dataset's converter writes none: add an 'unlabeled' list of entries with an 'image' key to "
               "{out}/datalist.json, or convert an images/ + masks/ copy with python -m data_prep folder --src DIR "
               "--out {out} --labeled-fraction 0.25")
    return "The semi-supervised overlays need an 'unlabeled' section of images without labels; " + how


def _unlabeled_pipeline(ds: dict) -> dict:
    """Datalist, transforms, dataset and loader of the unlabelled images: the training pipeline on the image only."""
    keys = ["image"]
    return {
        "unlabeled_batch_size": "@batch_size",
        "unlabeled_prepare_hint": unlabeled_prepare_hint(ds),
        "unlabeled_datalist": "$dale_monai.bundle.load_datalist(@dataset_dir, 'unlabeled', @prepare_command, "
                              "missing_hint=@unlabeled_prepare_hint)",
        "unlabeled": {
            "deterministic_transforms": _image_transforms(ds, False, False),
            "random_transforms": _random_transforms(ds, keys),
            "preprocessing": {"_target_": "Compose",
                              "transforms": "$@unlabeled#deterministic_transforms + @unlabeled#random_transforms"},
            "dataset": {"_target_": "CacheDataset", "data": "@unlabeled_datalist",
                        "transform": "@unlabeled#preprocessing", "cache_rate": 1.0, "num_workers": "@num_workers",
                        "progress": False},
            # a shard per process under torchrun (multi_gpu_train.json), None (shuffle) otherwise
            "sampler": {"_target_": "dale_monai.distributed.shard_sampler", "dataset": "@unlabeled#dataset"},
            "dataloader": {"_target_": "DataLoader", "dataset": "@unlabeled#dataset",
                           "batch_size": "@unlabeled_batch_size", "sampler": "@unlabeled#sampler",
                           "shuffle": "$@unlabeled#sampler is None", "num_workers": "@num_workers"},
        },
    }


def _semisup_trainer(target: str, section: str, **specific) -> dict:
    """``train#trainer`` of a semi-supervised paradigm; the unlabelled loader first, so that a missing
    ``unlabeled`` section stops the run before the training set is cached (MONAI resolves in order)."""
    return {"_target_": target, "unlabeled_data_loader": "@unlabeled#dataloader",
            **_paradigm_trainer(target, **specific, epoch_length=f"@{section}#epoch_length",
                                unsup_weight=f"@{section}#unsup_weight", rampup_length=f"@{section}#rampup_length")}


#: settings every semi-supervised section has; ``unsup_weight`` is set per paradigm
_SEMISUP_COMMON = {"epoch_length": None, "rampup_length": None}


def _extra_network(index: int) -> dict:
    """``network_<i>`` and ``optimizer_<i>``: a copy of ``network_def`` following ``@network`` (device, DDP)."""
    return {
        f"network_def_{index}": "%network_def",
        f"network_{index}": {"_target_": "dale_monai.distributed.network_like", "network": f"@network_def_{index}",
                             "reference": "@network", "device": "@device"},
        f"optimizer_{index}": {"_target_": "dale_monai.engines.optimizer_like", "optimizer": "@optimizer",
                               "network": f"@network_{index}"},
    }


def meanteacher_overlay(train: dict, ds: dict) -> dict:
    """Mean teacher: the student is ``@network``; the teacher an EMA copy, saved in the last checkpoint."""
    return {
        # SSL4MIS code/train_mean_teacher_2D.py: ema_decay 0.99, consistency 0.1 ramped over the run, noise 0.1/0.2
        "meanteacher": {**_SEMISUP_COMMON, "unsup_weight": 0.1, "ema_decay": 0.99, "noise_std": 0.1,
                        "noise_clip": 0.2},
        **_unlabeled_pipeline(ds),
        "teacher": {"_target_": "dale_monai.semisup.ema_teacher", "network": "@network"},
        "train#trainer": _semisup_trainer(
            "dale_monai.engines.MeanTeacherTrainer", "meanteacher", networks="$[@network]",
            optimizers="$[@optimizer]", teacher="@teacher", ema_decay="@meanteacher#ema_decay",
            noise_std="@meanteacher#noise_std", noise_clip="@meanteacher#noise_clip"),
        **_NO_DALE,
        **_save_dict(train, {"teacher": "@teacher"}),
    }


def cps_overlay(train: dict, ds: dict) -> dict:
    """Cross pseudo supervision: ``@network`` and a second copy of ``network_def``."""
    return {
        # SSL4MIS code/train_cross_pseudo_supervision_2D.py: weight 0.1 ramped over the run
        "cps": {**_SEMISUP_COMMON, "unsup_weight": 0.1},
        **_unlabeled_pipeline(ds),
        **_extra_network(1),
        "train#trainer": _semisup_trainer(
            "dale_monai.engines.CrossPseudoSupervisionTrainer", "cps", networks="$[@network, @network_1]",
            optimizers="$[@optimizer, @optimizer_1]"),
        **_NO_DALE,
        **_save_dict(train, {"model_1": "$dale_monai.feature_layers.unwrap_model(@network_1)",
                             "optimizer_1": "@optimizer_1"}),
    }


def fixeddynamic_overlay(train: dict, ds: dict, bb: dict | None = None) -> dict:
    """Fixed + dynamic pseudo-labels: subnet A is ``@network``, subnet B a second copy of ``network_def``.

    Crop sides are multiples of 32 (SwinUNETR's patch merging needs them); 3D bundles of other backbones use 16,
    which their three down-samplings allow, so that the crop and its shifts fit a 32³ training patch.
    """
    swin = bb is not None and _net_name(bb) == "SwinUNETR"
    size_multiple = 16 if _native_3d(ds) and not swin else 32
    return {
        # every default is this project's choice: the paper's values were not available
        "fixeddynamic": {**_SEMISUP_COMMON, "unsup_weight": 1.0, "alpha": 1.0, "fixed_weight": 1.0,
                         "dynamic_weight": 1.0, "crop_fraction": 0.75, "size_multiple": size_multiple,
                         "shift_fraction": 0.125},
        **_unlabeled_pipeline(ds),
        **_extra_network(1),
        "train#trainer": _semisup_trainer(
            "dale_monai.engines.FixedDynamicTrainer", "fixeddynamic", networks="$[@network, @network_1]",
            optimizers="$[@optimizer, @optimizer_1]", alpha="@fixeddynamic#alpha",
            fixed_weight="@fixeddynamic#fixed_weight", dynamic_weight="@fixeddynamic#dynamic_weight",
            crop_fraction="@fixeddynamic#crop_fraction", size_multiple="@fixeddynamic#size_multiple",
            shift_fraction="@fixeddynamic#shift_fraction"),
        **_NO_DALE,
        **_save_dict(train, {"model_1": "$dale_monai.feature_layers.unwrap_model(@network_1)",
                             "optimizer_1": "@optimizer_1"}),
    }


def dalepl_overlay(train: dict, ds: dict) -> dict:
    """DALE on pseudo-labels: the student is ``@network``, the teacher an EMA copy; partition and ω from ``dale``."""
    trainer = train["train"]["trainer"]
    return {
        # the teacher as the mean teacher's (SSL4MIS); unsup_weight 1 is this project's choice
        "dalepl": {**_SEMISUP_COMMON, "unsup_weight": 1.0, "ema_decay": 0.99},
        **_unlabeled_pipeline(ds),
        "teacher": {"_target_": "dale_monai.semisup.ema_teacher", "network": "@network"},
        "train#trainer": _semisup_trainer(
            "dale_monai.engines.DALEPseudoLabelTrainer", "dalepl", networks="$[@network]",
            optimizers="$[@optimizer]", teacher="@teacher", ema_decay="@dalepl#ema_decay",
            omega_step=trainer["omega_step"], patch_size="@dale#patch_size", tau="@dale#tau", bins="@dale#bins",
            edge="@dale#edge", entropy="@dale#entropy", mask_inputs="@dale#mask_inputs"),
        # the labelled batch needs no partition (the pseudo-labels are partitioned in the loop); no Wasserstein term
        **_NO_DALE,
        **_save_dict(train, {"teacher": "@teacher"}),
    }


def gapmatch_overlay(train: dict, ds: dict) -> dict:
    """GapMatch on ``@network``; no further network or teacher."""
    return {
        # p_cutoff 0.95, eps 0.01, alpha 1, weight 1: the USB-style re-implementation (no ramp-up there: set
        # rampup_length 0 for it); jitter 0.25 is this project's choice
        "gapmatch": {**_SEMISUP_COMMON, "unsup_weight": 1.0, "p_cutoff": 0.95, "eps": 0.01, "alpha": 1.0,
                     "jitter": 0.25},
        **_unlabeled_pipeline(ds),
        "train#trainer": _semisup_trainer(
            "dale_monai.engines.GapMatchTrainer", "gapmatch", networks="$[@network]", optimizers="$[@optimizer]",
            p_cutoff="@gapmatch#p_cutoff", eps="@gapmatch#eps", alpha="@gapmatch#alpha",
            jitter="@gapmatch#jitter"),
        **_NO_DALE,
    }


def arco_overlay(train: dict, ds: dict) -> dict:
    """ARCO: the mean teacher's student and teacher, the memory banks as a config object (saved in the last
    checkpoint), ARCOTrainer."""
    return {
        # charlesyou999648/ARCO (train_arco_2d.py, loss_helper.py): k1 0.01, τ 0.5, 256 anchors per class, 512
        # negatives per anchor, banks of 30,000 (50,000 background), entropy α 20 %, 4 x 4 strata; the mean
        # teacher's settings as meanteacher_train.json (SSL4MIS)
        "arco": {**_SEMISUP_COMMON, "unsup_weight": 0.1, "ema_decay": 0.99, "noise_std": 0.1, "noise_clip": 0.2,
                 "contrast_weight": 0.01, "temperature": 0.5, "anchors_per_class": 256, "negatives_per_anchor": 512,
                 "entropy_percent": 20.0, "entropy_length": None, "anchor_threshold": 0.3, "negative_threshold": 0.97, "strata_cuts": 4,
                 "feature_layer": None,
                 "memory_bank": {"_target_": "dale_monai.arco.ClassMemoryBank", "capacity": 30000,
                                 "background_capacity": 50000}},
        **_unlabeled_pipeline(ds),
        "teacher": {"_target_": "dale_monai.semisup.ema_teacher", "network": "@network"},
        "train#trainer": _semisup_trainer(
            "dale_monai.engines.ARCOTrainer", "arco", networks="$[@network]", optimizers="$[@optimizer]",
            teacher="@teacher", memory_bank="@arco#memory_bank", ema_decay="@arco#ema_decay",
            noise_std="@arco#noise_std", noise_clip="@arco#noise_clip", contrast_weight="@arco#contrast_weight",
            temperature="@arco#temperature", anchors_per_class="@arco#anchors_per_class",
            negatives_per_anchor="@arco#negatives_per_anchor", entropy_percent="@arco#entropy_percent",
            entropy_length="@arco#entropy_length",
            anchor_threshold="@arco#anchor_threshold", negative_threshold="@arco#negative_threshold",
            strata_cuts="@arco#strata_cuts", feature_layer="@arco#feature_layer"),
        **_NO_DALE,
        **_save_dict(train, {"teacher": "@teacher", "memory_bank": "@arco#memory_bank"}),
    }


def semisup_overlays(name: str, ds: dict, bb: dict) -> dict[str, dict]:
    """``configs/<paradigm>_train.json`` → overlay, for every paradigm of :data:`SEMISUP_PARADIGMS`."""
    train = train_config(name, ds, bb)
    out = {
        "meanteacher_train.json": meanteacher_overlay(train, ds),
        "cps_train.json": cps_overlay(train, ds),
        "fixeddynamic_train.json": fixeddynamic_overlay(train, ds, bb),
        "dalepl_train.json": dalepl_overlay(train, ds),
        "gapmatch_train.json": gapmatch_overlay(train, ds),
        "arco_train.json": arco_overlay(train, ds),
    }
    assert set(out) == set(SEMISUP_PARADIGMS)
    return out


def semisup_readme(name: str, ds: dict) -> str:
    """The bundle README's paragraph on the semi-supervised paradigms."""
    hint = unlabeled_prepare_hint(ds).replace("{out}", ds["dataset_dir"])
    lines = "\n".join(f"- {what}:\n\n      python -m monai.bundle run training {_cli(name, 'train.json', f)}\n"
                      for f, what in SEMISUP_PARADIGMS.items())
    return f"""Semi-supervised paradigms train on the labelled `training` section and the datalist's `unlabeled` section
(images without labels), one batch of each per iteration:

{lines}
{hint}.
The epoch is one pass over the labelled set (`--<section>#epoch_length unlabeled`, or a number of iterations);
the unsupervised weight ramps up over the whole run (`--<section>#rampup_length N` iterations), sections
`meanteacher`, `cps`, `fixeddynamic`, `dalepl` (which takes its partition and ω settings from `dale`),
`gapmatch` (no AMP), `arco` (its contrastive loss on the input of the network's segmentation head,
`--arco#feature_layer` for another module; memory banks `--arco#memory_bank#capacity`);
`--unlabeled_batch_size` sets the unlabelled batch. Fixed + dynamic
pseudo-labels train on crops of 0.75 of the input side, rounded down to a multiple of 32, shifted by an eighth
of the crop (`--fixeddynamic#crop_fraction`, `#size_multiple`, `#shift_fraction`; all three are this project's
choice). `@network` is the model validated and
saved; the checkpoint also holds the teacher or the second network. See the repository's `docs/paradigms.md`.
"""


def render(name: str, ds: dict, bb: dict, versions: dict, segment_table: dict) -> dict[str, str]:
    """Relative path → file content of one bundle."""

    def js(obj) -> str:
        return json.dumps(obj, indent=4) + "\n"

    return {
        "configs/train.json": js(train_config(name, ds, bb)),
        "configs/plain_train.json": js(plain_overlay()),
        **{f"configs/{f}": js(overlay) for f, overlay in paradigm_overlays(name, ds, bb).items()},
        **{f"configs/{f}": js(overlay) for f, overlay in semisup_overlays(name, ds, bb).items()},
        "configs/multi_gpu_train.json": js(multi_gpu_overlay(bb)),
        "configs/inference.json": js(inference_config(name, ds, bb)),
        "configs/evaluate.json": js(evaluate_overlay(ds)),
        "configs/metadata.json": js(metadata(name, ds, bb, versions, segment_table)),
        "configs/logging.conf": LOGGING_CONF,
        "docs/README.md": readme(name, ds, bb),
        "LICENSE": LICENSE,
    }


ROW_KEYS = {"dataset", "backbone", "args"}
REQUIRED_BACKBONES = ("unet", "swinunetr")


def load_matrix(path: Path = MATRIX) -> dict[str, dict[str, str]]:
    """Bundle name → rendered files, for every row of the matrix.

    Raises:
        ValueError: for a row naming an unknown dataset, backbone or dataset key, a duplicate bundle, or a
            dataset without the required UNet and SwinUNETR bundles.
    """
    matrix = yaml.safe_load(path.read_text())
    out: dict[str, dict[str, str]] = {}
    backbones_of: dict[str, set] = {name: set() for name in matrix["datasets"]}
    for i, row in enumerate(matrix["bundles"]):
        for key, table in (("dataset", "datasets"), ("backbone", "backbones")):
            if row.get(key) not in matrix[table]:
                raise ValueError(f"{path}: bundles[{i}]: unknown {key} {row.get(key)!r} (known: {sorted(matrix[table])})")
        ds = copy.deepcopy(matrix["datasets"][row["dataset"]])
        bb = copy.deepcopy(matrix["backbones"][row["backbone"]])
        for key, value in row.items():
            if key in ROW_KEYS:
                continue
            if key not in ds:
                raise ValueError(f"{path}: bundles[{i}]: {key!r} is neither a row key {sorted(ROW_KEYS)} nor a "
                                 f"setting of dataset {row['dataset']!r}")
            ds[key] = value
        bb["args"] = {**bb.get("args", {}), **row.get("args", {})}
        name = f"{row['dataset']}_{row['backbone']}"
        if name in out:
            raise ValueError(f"{path}: bundle {name} is listed twice")
        try:
            out[name] = render(name, ds, bb, matrix["versions"], matrix.get("segments", {}))
        except ValueError as e:
            raise ValueError(f"{path}: bundles[{i}] ({name}): {e}") from None
        backbones_of[row["dataset"]].add(row["backbone"])
    for dataset, found in backbones_of.items():
        missing = [b for b in REQUIRED_BACKBONES if b not in found]
        if missing:
            raise ValueError(f"{path}: dataset {dataset!r} has no bundle with backbone(s) {missing}")
    return out


def check(bundles: Path = BUNDLES, matrix: Path = MATRIX) -> list[str]:
    """Paths under ``bundles`` that differ from their rendering, or are generated folders the matrix lacks."""
    rendered = load_matrix(matrix)
    differ = []
    for name, files in rendered.items():
        for rel, content in files.items():
            path = bundles / name / rel
            if not path.is_file() or path.read_text() != content:
                differ.append(f"{name}/{rel}")
    for folder in sorted(p for p in bundles.iterdir() if (p / "configs").is_dir()):
        if folder.name not in rendered:
            differ.append(f"{folder.name}/ (not in {matrix.name})")
    return differ


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="only compare; exit 1 on any difference")
    parser.add_argument("--bundles", type=Path, default=BUNDLES, help="bundles folder (default: bundles/)")
    parser.add_argument("--matrix", type=Path, default=MATRIX, help="the table (default: bundles/matrix.yaml)")
    args = parser.parse_args(argv)
    if args.check:
        differ = check(args.bundles, args.matrix)
        if differ:
            print(f"bundles in {args.bundles} differ from {args.matrix}; run `python scripts/generate_bundles.py`:\n  "
                  + "\n  ".join(differ), file=sys.stderr)
            return 1
        return 0
    for name, files in load_matrix(args.matrix).items():
        for rel, content in files.items():
            path = args.bundles / name / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            if not path.is_file() or path.read_text() != content:
                path.write_text(content)
                print(f"wrote {path.relative_to(args.bundles.parent) if args.bundles.parent in path.parents else path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
