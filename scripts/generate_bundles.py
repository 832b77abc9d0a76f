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


def _binary(ds: dict) -> bool:
    return int(ds["num_classes"]) == 2


def _loader(ds: dict, keys: list[str]) -> list[dict]:
    load = [
        {"_target_": "LoadImaged", "keys": keys, "reader": ds["image_reader"], "image_only": True},
        {"_target_": "EnsureChannelFirstd", "keys": keys},
    ]
    return load


def _preprocessing(ds: dict, with_label: bool) -> list[dict]:
    keys = ["image", "label"] if with_label else ["image"]
    mode = ["bilinear", "nearest"] if with_label else ["bilinear"]
    out = _loader(ds, keys)
    out += [
        {"_target_": "ScaleIntensityd", "keys": "image", "minv": 0.0, "maxv": 1.0},
        {"_target_": "Resized", "keys": keys, "spatial_size": "@spatial_size", "mode": mode},
    ]
    if with_label:
        # labels are class indices; anything resampled stays an index
        out.append({"_target_": "EnsureTyped", "keys": "label", "dtype": "$torch.float32"})
    return out


def train_config(name: str, ds: dict, bb: dict) -> dict:
    binary = _binary(ds)
    cfg: dict = {
        "imports": ["$import os", "$import torch", "$import monai", "$import ignite", "$import dale_monai"],
        "bundle_root": f"$dale_monai.bundle.bundle_root('{name}')",
        "ckpt_dir": "$os.path.join(@bundle_root, 'models')",
        "output_dir": "$os.path.join(@bundle_root, 'eval')",
        "log_dir": "$os.path.join(@bundle_root, 'logs')",
        "dataset_dir": f"$os.path.join(@bundle_root, '..', '..', '{ds['dataset_dir']}')",
        "prepare_command": ds["prepare"],
        "train_datalist": "$dale_monai.bundle.load_datalist(@dataset_dir, 'training', @prepare_command)",
        "val_datalist": "$dale_monai.bundle.load_datalist(@dataset_dir, 'validation', @prepare_command)",
        "device": "$torch.device('cuda:0' if torch.cuda.is_available() else 'cpu')",
        "seed": 0,
        "num_epochs": ds["num_epochs"],
        "batch_size": ds["batch_size"],
        "val_interval": ds["val_interval"],
        "learning_rate": ds["learning_rate"],
        "num_workers": 0,
        "spatial_dims": ds["dims"],
        "spatial_size": ds["spatial_size"],
        "in_channels": ds["in_channels"],
        "out_channels": 1 if binary else ds["num_classes"],
        "amp": False,
        "resume": False,
        "dale": {
            "patch_size": 16,
            "tau": 0.9,
            "bins": 256,
            "edge": "morph",
            "entropy": "paper",
            "omega_method": "jvp",
            "omega_lr": 0.1,
            "omega_eps": 1e-8,
            "omega_steps": 1,
            "omega_reduction": "mean",
            "alpha": 0.05,
            "mask_mode": "paper",
        },
        "network_def": {"_target_": bb["_target_"], **bb["args"]},
        "network": "$@network_def.to(@device)",
        "loss": {"_target_": "dale_monai.losses.DALELoss", "ce_weight": 1.0, "dice_weight": 0.0},
        "optimizer": {"_target_": "torch.optim.Adam", "params": "$@network.parameters()", "lr": "@learning_rate"},
        "train": {
            "deterministic_transforms": _preprocessing(ds, True),
            "random_transforms": [
                {"_target_": "RandFlipd", "keys": ["image", "label"], "prob": 0.5, "spatial_axis": 0},
                {"_target_": "RandFlipd", "keys": ["image", "label"], "prob": 0.5, "spatial_axis": 1},
                {"_target_": "RandRotate90d", "keys": ["image", "label"], "prob": 0.5,
                 "spatial_axes": [0, 1]},
            ],
            "partition": [
                {"_target_": "dale_monai.transforms.FuzzyPartitiond", "keys": ["image", "label"],
                 "patch_size": "@dale#patch_size", "tau": "@dale#tau", "bins": "@dale#bins",
                 "edge": "@dale#edge", "entropy": "@dale#entropy"},
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
                {"_target_": "ValidationHandler", "validator": "@validate#evaluator", "epoch_level": True,
                 "interval": "@val_interval"},
                {"_target_": "dale_monai.handlers.wasserstein.WassersteinAlignment", "alpha": "@dale#alpha",
                 "seed": "@seed"},
                {"_target_": "dale_monai.handlers.progress.ProgressBarHandler",
                 "output_keys": ["loss", "loss_nonfuzzy", "loss_fuzzy", "omega_mean"]},
                {"_target_": "StatsHandler", "tag_name": "train_loss", "iteration_log": False,
                 "output_transform": "$monai.handlers.from_engine(['loss'], first=True)"},
                {"_target_": "TensorBoardStatsHandler", "log_dir": "@log_dir", "tag_name": "train_loss",
                 "output_transform": "$monai.handlers.from_engine(['loss'], first=True)"},
                {"_target_": "dale_monai.handlers.checkpoint.LastCheckpoint", "save_dir": "@ckpt_dir",
                 "save_dict": {"model": "@network", "optimizer": "@optimizer"}, "resume": "@resume"},
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
                               "reduction": "@dale#omega_reduction"},
                "mask_mode": "@dale#mask_mode",
                "inferer": "@train#inferer",
                "postprocessing": "@train#postprocessing",
                "train_handlers": "@train#handlers",
                "amp": "@amp",
            },
        },
        "validate": {
            "preprocessing": {"_target_": "Compose", "transforms": "$@train#deterministic_transforms"},
            "dataset": {"_target_": "CacheDataset", "data": "@val_datalist", "transform": "@validate#preprocessing",
                        "cache_rate": 1.0, "num_workers": "@num_workers", "progress": False},
            "dataloader": {"_target_": "DataLoader", "dataset": "@validate#dataset", "batch_size": 1,
                           "shuffle": False, "num_workers": "@num_workers"},
            "inferer": {"_target_": "SimpleInferer"},
            "postprocessing": _postprocessing(binary, ds),
            "handlers": [
                {"_target_": "StatsHandler", "iteration_log": False},
                {"_target_": "TensorBoardStatsHandler", "log_dir": "@log_dir", "iteration_log": False},
                {"_target_": "CheckpointSaver", "save_dir": "@ckpt_dir", "save_dict": {"model": "@network"},
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
        "finalize": [
            "$print('\\n'.join(['', 'Training finished.', '  model (best validation Dice): ' + os.path.join(@ckpt_dir, "
            "'model.pt'), '  last checkpoint (resume):     ' + os.path.join(@ckpt_dir, 'checkpoint_last.pt'), "
            "'  validation metrics:           ' + os.path.join(@output_dir, 'metrics.csv'), "
            "'  logs (TensorBoard):           ' + @log_dir]))"
        ],
    }
    return cfg


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
            "train_handlers": "$[h for h in @train#handlers if type(h).__name__ != 'WassersteinAlignment']",
            "amp": "@amp",
        },
        "train#partition": [],
    }


def metadata(name: str, ds: dict, bb: dict, versions: dict) -> dict:
    binary = _binary(ds)
    out_channels = 1 if binary else ds["num_classes"]
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
        "task": f"Lesion segmentation on {ds['description']}, trained with DALE",
        "description": (
            f"{bb['_target_'].rsplit('.', 1)[-1]} trained with DALE (data-driven alternating learning, CVPR 2025) "
            f"on {ds['description']}: alternating non-fuzzy / fuzzy steps with per-pixel label confidence and "
            "Wasserstein feature alignment, for training on noisy lesion borders."
        ),
        "authors": "dale-monai contributors",
        "copyright": "Copyright (c) dale-monai contributors",
        "data_source": ds["description"],
        "data_type": ds["modality"],
        "image_classes": f"{ds['in_channels']} channel(s), intensities scaled to [0, 1]",
        "label_classes": ", ".join(f"{k}: {v}" for k, v in ds["label_names"].items()),
        "pred_classes": ", ".join(f"{k}: {v}" for k, v in ds["label_names"].items()),
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
                    "is_patch_data": False,
                    "channel_def": {str(i): f"channel {i}" for i in range(ds["in_channels"])},
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
                    "is_patch_data": False,
                    "channel_def": ({"0": "lesion (logit)"} if binary else
                                    {str(v): k for k, v in ds["label_names"].items()}),
                }
            },
        },
    }


def readme(name: str, ds: dict, bb: dict) -> str:
    net = bb["_target_"].rsplit(".", 1)[-1]
    prep = ds["prepare"].format(out=ds["dataset_dir"])
    return f"""# {name}

{net} for lesion segmentation on {ds['description']}, trained with **DALE** (data-driven alternating
learning, Fang et al., CVPR 2025) by [dale-monai](../../README.md). This file and the bundle's configs are
generated from `bundles/matrix.yaml`; edit that file, not this one.

## Data
Prepare it once from the repository root:

    {prep}

The bundle reads `{ds['dataset_dir']}/datalist.json` (override with `--dataset_dir DIR`). Without it, training
stops with a message quoting the command above.

## Training
From the repository root (any working directory works: the bundle finds its own folder):

    python -m monai.bundle run training --config_file bundles/{name}/configs/train.json

Override anything on the command line, e.g. `--num_epochs 50 --batch_size 16 --device "$torch.device('cpu')"
--dale#tau 0.8 --dale#omega_reduction sum --dataset_dir /data/mine`. The same bundle trains with MONAI's standard
`SupervisedTrainer` (for comparison) by adding one overlay:

    python -m monai.bundle run training --config_file "['bundles/{name}/configs/train.json','bundles/{name}/configs/plain_train.json']"

Outputs: `models/model.pt` (best validation Dice, a plain `state_dict`), `models/checkpoint_last.pt` (model,
optimizer and trainer state), `eval/metrics.csv` and per-case details (validation), `logs/` (TensorBoard).

## DALE settings (`dale#...`)
`patch_size` 16, `tau` 0.9, `bins` 256, `edge` morph, `entropy` paper (Eq. 3 as printed), `omega_method` jvp
(exact; `double_backward` is the reference), `omega_lr` 0.1, `omega_eps` 1e-8, `omega_steps` (K) 1,
`omega_reduction` mean (the released behaviour; `sum`/`normalized` re-weight more strongly), `alpha` 0.05
(weight of the Wasserstein term), `mask_mode` paper. See the repository's `README.md` and
`../shared/METHOD.md` for what each means.

## Results
No measured results are recorded for this bundle yet; see `BENCHMARKS.md` in the repository.

## Security
A bundle is code: MONAI evaluates the `$` expressions of its configs. Load only bundles you trust.
"""


def render(name: str, ds: dict, bb: dict, versions: dict) -> dict[str, str]:
    """Relative path → file content of one bundle."""

    def js(obj) -> str:
        return json.dumps(obj, indent=4) + "\n"

    return {
        "configs/train.json": js(train_config(name, ds, bb)),
        "configs/plain_train.json": js(plain_overlay()),
        "configs/metadata.json": js(metadata(name, ds, bb, versions)),
        "configs/logging.conf": LOGGING_CONF,
        "docs/README.md": readme(name, ds, bb),
        "LICENSE": LICENSE,
    }


def load_matrix(path: Path = MATRIX) -> dict[str, dict[str, str]]:
    """Bundle name → rendered files, for every row of the matrix."""
    matrix = yaml.safe_load(path.read_text())
    out = {}
    for row in matrix["bundles"]:
        ds = copy.deepcopy(matrix["datasets"][row["dataset"]])
        bb = copy.deepcopy(matrix["backbones"][row["backbone"]])
        name = f"{row['dataset']}_{row['backbone']}"
        out[name] = render(name, ds, bb, matrix["versions"])
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="only compare; exit 1 on any difference")
    args = parser.parse_args(argv)
    differ = []
    for name, files in load_matrix().items():
        for rel, content in files.items():
            path = BUNDLES / name / rel
            if args.check:
                if not path.is_file() or path.read_text() != content:
                    differ.append(str(path.relative_to(REPO)))
            else:
                path.parent.mkdir(parents=True, exist_ok=True)
                if not path.is_file() or path.read_text() != content:
                    path.write_text(content)
                    print(f"wrote {path.relative_to(REPO)}")
    if differ:
        print("bundles differ from bundles/matrix.yaml; run `python scripts/generate_bundles.py`:\n  "
              + "\n  ".join(differ), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
