"""CLCS through ``monai.bundle``: bit-identical resume of the overlay, and the multi-class COVID chain at toy size
(converter → class_boundary noise → clcs_train.json → evaluate.json with per-class Dice)."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fixtures_datasets import make_covid_tree

REPO = Path(__file__).resolve().parents[1]
BUNDLES = REPO / "bundles"

pytestmark = pytest.mark.usefixtures("one_thread")


def _configs(name: str, *files: str) -> list[str]:
    return [str(BUNDLES / name / "configs" / f) for f in files]


def _train(name: str, root: Path, data: Path, *overlays: str, **extra) -> None:
    from monai.bundle import run

    overrides = {"bundle_root": str(root), "dataset_dir": str(data), "spatial_size": [32, 32], "batch_size": 2,
                 "num_epochs": 1, "val_interval": 1, **extra}
    run("training", config_file=_configs(name, "train.json", *overlays), **overrides)


@pytest.fixture(scope="module")
def tiny2d(tmp_path_factory) -> Path:
    from data_prep.synthetic import make_synthetic_dataset

    out = tmp_path_factory.mktemp("tiny2d_clcs")
    make_synthetic_dataset(out, dims=2, n_train=4, n_val=2, n_test=2, size=40, verbose=False)
    return out


def test_clcs_overlay_resume_is_bit_identical(tmp_path, tiny2d):
    """Epoch 1 warms up, epoch 2 selects with the thresholds of epoch 1's counts: stopping after epoch 1 and
    resuming gives the networks, optimizers and curriculum of an uninterrupted run."""
    name, root = "synthetic2d_unet", tmp_path / "bundle"
    overlay = "clcs_train.json"
    # a lower τ and no warm-up denominator, so that the tiny run's selection rejects some pixels
    opts = {"clcs#warmup_epochs": 1, "clcs#tau": 0.6, "clcs#threshold_warmup": False}
    _train(name, root, tiny2d, overlay, **opts)
    first = torch.load(root / "models" / "checkpoint_last.pt", weights_only=True)
    assert float(first["clcs_curriculum"]["counts"][0].sum()) == 4 * 32 * 32  # epoch 1's pixels, not yet turned
    _train(name, root, tiny2d, overlay, num_epochs=2, resume=True, **opts)
    resumed = torch.load(root / "models" / "checkpoint_last.pt", weights_only=True)
    assert resumed["trainer"]["iteration"] == 4
    straight = tmp_path / "straight"
    _train(name, straight, tiny2d, overlay, num_epochs=2, **opts)
    reference = torch.load(straight / "models" / "checkpoint_last.pt", weights_only=True)
    assert float(reference["clcs_curriculum"]["thresholds"].max()) > 0  # the selection acted in epoch 2
    for key in ("model", "model_1"):
        assert all(torch.equal(resumed[key][k], v) for k, v in reference[key].items()), key
    for key in ("optimizer", "optimizer_1"):
        for i, state in reference[key]["state"].items():
            assert all(torch.equal(resumed[key]["state"][i][k], v) for k, v in state.items() if torch.is_tensor(v))
    for k, v in reference["clcs_curriculum"].items():
        assert torch.equal(resumed["clcs_curriculum"][k], v), k


def _data_prep(*args: str) -> None:
    res = subprocess.run([sys.executable, "-m", "data_prep", *args], cwd=REPO, capture_output=True, text=True,
                         env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"})
    assert res.returncode == 0, res.stdout + res.stderr


def test_multiclass_covid_chain_with_injected_noise(tmp_path, capsys):
    """The commands of BENCHMARKS.md's CLCS section at toy size: COVID-SemiSeg's multi-class slices converted,
    their training labels corrupted with the class_boundary protocol, 2 epochs of the covid_multiclass bundle with
    the CLCS overlay (3-class softmax), and its evaluation with per-class Dice."""
    from monai.bundle import run

    src = make_covid_tree(tmp_path / "src", n_doctor=1, n_pseudo=1, n_test=1, n_mc=6)
    clean, noisy = tmp_path / "covid_multiclass", tmp_path / "covid_multiclass_noisy"
    _data_prep("covid_semiseg", "--src", str(src / "Dataset"), "--out", str(clean), "--task", "multiclass",
               "--val-fraction", "0.34", "--seed", "0")
    _data_prep("noise", "--datalist", str(clean / "datalist.json"), "--out", str(noisy), "--protocol",
               "class_boundary", "--rate", "0.5", "--seed", "0")
    report = json.loads((noisy / "noise_report.json").read_text())
    assert set(report["overall"]["per_class"]) == {"0", "1", "2"}
    assert report["overall"]["per_class"]["1"]["relabelled_fraction"] > 0

    name, root = "covid_multiclass_unet", tmp_path / "bundle"
    thresholds: list[dict] = []
    from monai.bundle import ConfigWorkflow

    workflow = ConfigWorkflow(config_file=_configs(name, "train.json", "clcs_train.json"), workflow_type="train",
                              bundle_root=str(root), dataset_dir=str(noisy), spatial_size=[32, 32], batch_size=2,
                              num_epochs=2, val_interval=1, **{"clcs#warmup_epochs": 1,
                                                                 "network_def#channels": [8, 16, 32, 64, 128]})
    workflow.initialize()
    from ignite.engine import Events

    workflow.trainer.add_event_handler(Events.EPOCH_COMPLETED, lambda e: thresholds.append(
        {k: v for k, v in e.state.metrics.items() if k.startswith("clcs_")}))
    workflow.run()
    workflow.finalize()
    assert len(thresholds) == 2 and all({f"clcs_threshold_{c}" for c in range(3)} <= set(t) for t in thresholds)
    last = torch.load(root / "models" / "checkpoint_last.pt", weights_only=True)
    assert last["clcs_curriculum"]["status"].shape == (3,) and last["trainer"]["iteration"] == 4
    run("evaluating", config_file=_configs(name, "inference.json", "evaluate.json"), bundle_root=str(root),
        dataset_dir=str(noisy), spatial_size=[32, 32], **{"network_def#channels": [8, 16, 32, 64, 128]})
    with open(root / "eval" / "test_per_case.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2 and all({"dice", "dice_1", "dice_2"} <= set(r) for r in rows)
