"""1-epoch runs of a representative subset of bundles on tiny data: DALE and plain training, resume, a 3D bundle,
a multi-class bundle, a SwinUNETR bundle, evaluation, ``verify_net_in_out`` and ``ckpt_export``."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
import yaml

REPO = Path(__file__).resolve().parents[1]
BUNDLES = REPO / "bundles"
MATRIX = yaml.safe_load((BUNDLES / "matrix.yaml").read_text())
EXPORT = {f"{r['dataset']}_{r['backbone']}": MATRIX["backbones"][r["backbone"]]["export"] for r in MATRIX["bundles"]}

pytestmark = pytest.mark.usefixtures("one_thread")



def _configs(name: str, *files: str) -> list[str]:
    return [str(BUNDLES / name / "configs" / f) for f in files]


@pytest.fixture(scope="module")
def tiny2d(tmp_path_factory) -> Path:
    from data_prep.synthetic import make_synthetic_dataset

    out = tmp_path_factory.mktemp("tiny2d")
    make_synthetic_dataset(out, dims=2, n_train=4, n_val=2, n_test=2, size=40, verbose=False)
    return out


@pytest.fixture(scope="module")
def tiny3d(tmp_path_factory) -> Path:
    from data_prep.synthetic import make_synthetic_dataset

    out = tmp_path_factory.mktemp("tiny3d")
    make_synthetic_dataset(out, dims=3, n_train=2, n_val=1, n_test=1, size=20, verbose=False)
    return out


@pytest.fixture(scope="module")
def tiny_multiclass(tmp_path_factory) -> Path:
    """Synapse's converted layout: 2D NIfTI slices in [0, 1], labels 0..8 (one blob per organ class)."""
    out = tmp_path_factory.mktemp("tiny_synapse")
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:40, :40]
    sections: dict = {"training": [], "validation": [], "test": []}
    for section, n in (("training", 4), ("validation", 2), ("test", 1)):
        for i in range(n):
            label = np.zeros((40, 40), np.uint8)
            for c in rng.permutation(np.arange(1, 9))[:5]:
                cy, cx = rng.integers(6, 34, size=2)
                label[(yy - cy) ** 2 + (xx - cx) ** 2 < rng.integers(9, 30)] = c
            image = (label / 8.0 + 0.1 * rng.random((40, 40))).clip(0, 1).astype(np.float32)
            key = f"{section}_{i}"
            for folder, arr in (("images", image), ("labels", label)):
                (out / folder).mkdir(exist_ok=True)
                nib.save(nib.Nifti1Image(arr, np.eye(4)), out / folder / f"{key}.nii.gz")
            sections[section].append({"image": f"images/{key}.nii.gz", "label": f"labels/{key}.nii.gz"})
    (out / "datalist.json").write_text(json.dumps(sections))
    return out


def _small(name: str) -> list[int]:
    dims = 3 if name.startswith("synthetic3d") else 2
    side = 64 if name.endswith("swinunetr") else (16 if dims == 3 else 32)
    return [side] * dims


def _train(name: str, root: Path, data: Path, *overlays: str, **extra) -> None:
    from monai.bundle import run

    overrides = {"bundle_root": str(root), "dataset_dir": str(data), "spatial_size": _small(name), "batch_size": 2,
                 "num_epochs": 1, "val_interval": 1, **extra}
    if name.startswith("synthetic3d"):
        overrides["dale#patch_size"] = 8
    run("training", config_file=_configs(name, "train.json", *overlays), **overrides)


def _network(name: str, overrides: dict | None = None):
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(_configs(name, "inference.json"))
    for key, value in (overrides or {}).items():
        parser[key] = value
    return parser.get_parsed_content("network_def")


def _assert_trained(name: str, root: Path, overrides: dict | None = None) -> None:
    best = torch.load(root / "models" / "model.pt", weights_only=True)  # a plain state_dict
    _network(name, overrides).load_state_dict(best)  # strict: same keys and shapes as the inference network
    last = torch.load(root / "models" / "checkpoint_last.pt", weights_only=True)
    assert {"model", "optimizer", "trainer"} <= set(last)
    assert (root / "eval" / "metrics.csv").is_file()
    assert any((root / "logs").glob("events.out.tfevents.*"))


def test_dale_training_resume_and_evaluation(tmp_path, tiny2d):
    from monai.bundle import run

    name, root = "synthetic2d_unet", tmp_path / "bundle"
    _train(name, root, tiny2d)
    _assert_trained(name, root)
    first = torch.load(root / "models" / "checkpoint_last.pt", weights_only=True)
    assert first["trainer"]["iteration"] == 2
    _train(name, root, tiny2d, num_epochs=2, resume=True)
    second = torch.load(root / "models" / "checkpoint_last.pt", weights_only=True)
    assert second["trainer"]["iteration"] == 4  # continued from epoch 1, not restarted
    # and bit-identical to an uninterrupted 2-epoch run (RNG states travel with the checkpoint)
    straight = tmp_path / "straight"
    _train(name, straight, tiny2d, num_epochs=2)
    reference = torch.load(straight / "models" / "checkpoint_last.pt", weights_only=True)
    assert all(torch.equal(second["model"][k], v) for k, v in reference["model"].items())
    # evaluation on the test section, at the original size
    run("evaluating", config_file=_configs(name, "inference.json", "evaluate.json"), bundle_root=str(root),
        dataset_dir=str(tiny2d), spatial_size=_small(name))
    with open(root / "eval" / "test_per_case.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2
    for row in rows:
        assert 0 <= float(row["dice"]) <= 1 and 0 <= float(row["miou"]) <= 1
        assert float(row["hd95"]) >= 0 and float(row["asd"]) >= 0
        assert row["case"].endswith(".png")
    summary = json.loads((root / "eval" / "test_summary.json").read_text())
    assert summary["cases"] == 2 and {"dice", "miou", "hd95", "asd"} <= set(summary)


def test_plain_overlay_trains_with_supervised_trainer(tmp_path, tiny2d):
    from monai.bundle import ConfigWorkflow

    name = "synthetic2d_unet"
    workflow = ConfigWorkflow(config_file=_configs(name, "train.json", "plain_train.json"), workflow_type="train",
                              bundle_root=str(tmp_path), dataset_dir=str(tiny2d), spatial_size=_small(name),
                              batch_size=2, num_epochs=1, val_interval=1)
    workflow.initialize()
    assert type(workflow.trainer).__name__ == "SupervisedTrainer"
    workflow.run()
    workflow.finalize()
    _assert_trained(name, tmp_path)


@pytest.mark.parametrize(("name", "data", "extra"), [
    ("synthetic3d_unet", "tiny3d", {}),
    # 9 classes, softmax; a narrower UNet than the shipped one keeps it fast (the pipeline is what is tested)
    ("synapse_unet", "tiny_multiclass", {"network_def#channels": [8, 16, 32, 64, 128]}),
    ("synthetic2d_swinunetr", "tiny2d", {}),
])
def test_one_epoch(name, data, extra, tmp_path, request):
    root = tmp_path / "bundle"
    _train(name, root, request.getfixturevalue(data), **extra)
    _assert_trained(name, root, extra)


@pytest.mark.parametrize("name", ["synthetic2d_unet", "synthetic2d_unetpp", "synthetic2d_swinunetr",
                                  "synthetic3d_unet", "synapse_unet"])
def test_verify_net_in_out_and_ckpt_export(name, tmp_path):
    from monai.bundle import ckpt_export, verify_net_in_out

    # the bundle's metadata at a small spatial shape, for speed (the shipped shapes are checked by test_bundles.py)
    doc = json.loads((BUNDLES / name / "configs" / "metadata.json").read_text())
    fmt = doc["network_data_format"]
    fmt["inputs"]["image"]["spatial_shape"] = fmt["outputs"]["pred"]["spatial_shape"] = _small(name)
    meta = str(tmp_path / "metadata.json")
    Path(meta).write_text(json.dumps(doc))
    config = _configs(name, "inference.json")
    verify_net_in_out(net_id="network_def", meta_file=meta, config_file=config)
    network = _network(name).eval()
    torch.save(network.state_dict(), tmp_path / "model.pt")
    shape = [1, fmt["inputs"]["image"]["num_channels"], *_small(name)]
    extra = {"use_trace": True, "input_shape": shape} if EXPORT[name] == "trace" else {}
    ckpt_export(net_id="network_def", filepath=str(tmp_path / "model.ts"), ckpt_file=str(tmp_path / "model.pt"),
                meta_file=meta, config_file=config, **extra)
    exported = torch.jit.load(str(tmp_path / "model.ts"))
    x = torch.rand(*shape)
    with torch.no_grad():
        out = network(x)
        assert isinstance(out, torch.Tensor)  # U-Net++ too: one tensor, not a list
        torch.testing.assert_close(exported(x), out, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(("num_epochs", "val_interval", "validated"), [(1, 2, [1]), (3, 2, [2, 3]), (4, 2, [2, 4])])
def test_the_last_epoch_is_validated_and_the_report_names_only_what_exists(num_epochs, val_interval, validated,
                                                                           tmp_path, tiny2d, capsys):
    """A run shorter than val_interval, or not a multiple of it, still validates its last epoch (once): it saves
    a model and metrics, and the end-of-run report names files that exist."""
    from ignite.engine import Events
    from monai.bundle import ConfigWorkflow

    name = "synthetic2d_unet"
    workflow = ConfigWorkflow(config_file=_configs(name, "train.json"), workflow_type="train",
                              bundle_root=str(tmp_path), dataset_dir=str(tiny2d), spatial_size=_small(name),
                              batch_size=2, num_epochs=num_epochs, val_interval=val_interval)
    workflow.initialize()
    epochs: list[int] = []
    workflow.evaluator.add_event_handler(Events.COMPLETED, lambda _: epochs.append(workflow.trainer.state.epoch))
    workflow.run()
    capsys.readouterr()
    workflow.finalize()
    assert epochs == validated
    _assert_trained(name, tmp_path)
    report = capsys.readouterr().out
    assert "Training finished." in report and "none" not in report
    named = [line.split(": ", 1)[1].strip() for line in report.splitlines() if line.startswith("  ")]
    assert named == [str(tmp_path / "models" / "model.pt"), str(tmp_path / "models" / "checkpoint_last.pt"),
                     str(tmp_path / "eval" / "metrics.csv"), str(tmp_path / "logs")]
    assert all(Path(p).exists() for p in named)


# --------------------------------------------------------------------------------------------- paradigm overlays
@pytest.fixture(scope="module")
def tiny2d_meta(tmp_path_factory) -> Path:
    """The tiny synthetic set with a clean ``meta`` section (``data_prep synthetic --n-meta``), for MW-Net."""
    from data_prep.synthetic import make_synthetic_dataset

    out = tmp_path_factory.mktemp("tiny2d_meta")
    make_synthetic_dataset(out, dims=2, n_train=4, n_val=2, n_test=2, size=40, n_meta=2, verbose=False)
    return out


PARADIGM_RUNS = {  # overlay → trainer class, objects the last checkpoint must hold besides model/optimizer/trainer
    "coteaching_train.json": ("CoTeachingTrainer", {"model_1", "optimizer_1"}),
    "trinet_train.json": ("TriNetTrainer", {"model_1", "optimizer_1", "model_2", "optimizer_2"}),
    "mwnet_train.json": ("MetaReweightTrainer", {"weight_net", "meta_optimizer"}),
    "gce_train.json": ("SupervisedTrainer", set()),
    "sce_train.json": ("SupervisedTrainer", set()),
    "clcs_train.json": ("CLCSTrainer", {"model_1", "optimizer_1", "clcs_curriculum"}),
}


@pytest.mark.parametrize("overlay", list(PARADIGM_RUNS))
def test_paradigm_overlay_trains_end_to_end(overlay, tmp_path, tiny2d_meta):
    """Two epochs of each paradigm on the synthetic bundle: validation, model.pt (network 0, loadable by
    inference.json), a last checkpoint holding every network/optimizer, TensorBoard logs."""
    from monai.bundle import ConfigWorkflow

    name, root = "synthetic2d_unet", tmp_path / "bundle"
    cls, extra = PARADIGM_RUNS[overlay]
    workflow = ConfigWorkflow(config_file=_configs(name, "train.json", overlay), workflow_type="train",
                              bundle_root=str(root), dataset_dir=str(tiny2d_meta), spatial_size=_small(name),
                              batch_size=2, num_epochs=2, val_interval=1)
    workflow.initialize()
    assert type(workflow.trainer).__name__ == cls
    workflow.run()
    network = workflow.parser.get_parsed_content("network")
    workflow.finalize()
    _assert_trained(name, root)
    last = torch.load(root / "models" / "checkpoint_last.pt", weights_only=True)
    assert extra <= set(last) and last["trainer"]["iteration"] == 4
    # the last checkpoint's model is the bundle's @network, the one validated and saved as model.pt
    assert all(torch.equal(v, network.state_dict()[k]) for k, v in last["model"].items())
    if "model_1" in last:
        assert any(not torch.equal(v, last["model_1"][k]) for k, v in last["model"].items() if v.is_floating_point())


def test_coteaching_resume_is_bit_identical(tmp_path, tiny2d):
    name, root = "synthetic2d_unet", tmp_path / "bundle"
    overlay = "coteaching_train.json"
    # a ramp in iterations: the default one is a share of max_epochs, which this test changes between the runs
    ramp = {"coteaching#ramp_start": 0, "coteaching#ramp_end": 3}
    _train(name, root, tiny2d, overlay, **ramp)
    _train(name, root, tiny2d, overlay, num_epochs=2, resume=True, **ramp)
    resumed = torch.load(root / "models" / "checkpoint_last.pt", weights_only=True)
    assert resumed["trainer"]["iteration"] == 4
    straight = tmp_path / "straight"
    _train(name, straight, tiny2d, overlay, num_epochs=2, **ramp)
    reference = torch.load(straight / "models" / "checkpoint_last.pt", weights_only=True)
    for key in ("model", "model_1"):
        assert all(torch.equal(resumed[key][k], v) for k, v in reference[key].items()), key
    for key in ("optimizer", "optimizer_1"):
        for i, state in reference[key]["state"].items():
            assert all(torch.equal(resumed[key]["state"][i][k], v) for k, v in state.items() if torch.is_tensor(v))


def test_issue14_dale_options_reach_the_pipeline_and_train(tmp_path, tiny2d):
    """The band partition and the fast ω are one override away in every bundle: they reach FuzzyPartitiond and
    OmegaMetaStep, and a run trains with them."""
    from monai.bundle import ConfigWorkflow

    name, root = "synthetic2d_unet", tmp_path / "bundle"
    opts = {"dale#partition_mode": "band", "dale#band_width": 3, "dale#omega_method": "first_order",
            "dale#omega_scope": "head", "dale#omega_reduction": "sum", "dale#omega_lr": 1.0}
    workflow = ConfigWorkflow(config_file=_configs(name, "train.json"), workflow_type="train", bundle_root=str(root),
                              dataset_dir=str(tiny2d), spatial_size=_small(name), batch_size=2, num_epochs=1,
                              val_interval=1, **opts)
    workflow.initialize()
    part = workflow.parser.get_parsed_content("train#partition")[0]
    step = workflow.trainer.omega_step
    assert (part.partition.mode, part.partition.band_width) == ("band", 3)
    assert (step.method, step.scope, step.reduction, step.lr, step.rule) == ("first_order", "head", "sum", 1.0, "adam")
    workflow.run()
    workflow.finalize()
    _assert_trained(name, root)
