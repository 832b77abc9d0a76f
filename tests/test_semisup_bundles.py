"""The semi-supervised overlays of every bundle: they parse, keep ``@network`` as the model, checkpoint the
teacher or further networks, name the ``data_prep`` option when the ``unlabeled`` section is missing or empty;
two-epoch runs through a bundle and a bit-identical resume with the two loaders."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch
import yaml

REPO = Path(__file__).resolve().parents[1]
BUNDLES = REPO / "bundles"
MATRIX = yaml.safe_load((BUNDLES / "matrix.yaml").read_text())
NAMES = [f"{row['dataset']}_{row['backbone']}" for row in MATRIX["bundles"]]
_ITEM = [{"image": "never-loaded.png", "label": "never-loaded.png"}]
PLACEHOLDER_DATA = {"train#dataset#data": _ITEM, "validate#dataset#data": _ITEM, "train#dataset#cache_rate": 0.0,
                    "validate#dataset#cache_rate": 0.0, "unlabeled#dataset#data": [{"image": "never-loaded.png"}],
                    "unlabeled#dataset#cache_rate": 0.0}

#: overlay → (trainer class, section of its settings, objects the last checkpoint holds besides model/optimizer)
SEMISUP = {
    "meanteacher_train.json": ("MeanTeacherTrainer", "meanteacher", {"teacher"}),
    "cps_train.json": ("CrossPseudoSupervisionTrainer", "cps", {"model_1", "optimizer_1"}),
    "fixeddynamic_train.json": ("FixedDynamicTrainer", "fixeddynamic", {"model_1", "optimizer_1"}),
    "dalepl_train.json": ("DALEPseudoLabelTrainer", "dalepl", {"teacher"}),
    "gapmatch_train.json": ("GapMatchTrainer", "gapmatch", set()),
    "arco_train.json": ("ARCOTrainer", "arco", {"teacher", "memory_bank"}),
}
#: the fixed + dynamic crops need room: 0.75 of 64 is one multiple of 32, shifted by 4 both ways
RUN_SIZE = {"fixeddynamic_train.json": [64, 64]}

pytestmark = pytest.mark.usefixtures("one_thread")


def _generator():
    spec = importlib.util.spec_from_file_location("generate_bundles", REPO / "scripts" / "generate_bundles.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _configs(name: str, *files: str) -> list[str]:
    return [str(BUNDLES / name / "configs" / f) for f in files]


def test_the_overlay_list_matches_the_generator():
    assert set(_generator().SEMISUP_PARADIGMS) == set(SEMISUP)


@pytest.mark.parametrize("name", NAMES)
def test_overlays_parse_keep_the_model_and_checkpoint_everything(name):
    from monai.bundle import ConfigParser

    readme = (BUNDLES / name / "docs" / "README.md").read_text()
    for overlay, (cls, section, extra) in SEMISUP.items():
        assert (BUNDLES / name / "configs" / overlay).is_file()
        assert overlay in readme
        parser = ConfigParser()
        parser.read_config(_configs(name, "train.json", overlay))
        trainer = parser["train#trainer"]
        assert trainer["_target_"] == f"dale_monai.engines.{cls}"
        assert next(iter(trainer)) == "_target_" and list(trainer)[1] == "unlabeled_data_loader"
        assert trainer["networks"].startswith("$[@network")
        assert trainer["optimizers"].startswith("$[@optimizer")
        assert parser["train#partition"] == [] and parser["train#dale_handlers"] == []
        assert parser["validate#evaluator#network"] == "@network"
        (ckpt,) = [h for h in parser["train#handlers"] if h["_target_"].endswith("LastCheckpoint")]
        assert {"model", "optimizer"} | extra == set(ckpt["save_dict"])
        assert {"epoch_length", "unsup_weight", "rampup_length"} <= set(parser[section])
        # the unlabelled pipeline is the training pipeline on the image alone
        train = parser["train#deterministic_transforms"]
        unlabeled = parser["unlabeled#deterministic_transforms"]
        # (the last step of the labelled pipeline types the label)
        assert [t["_target_"] for t in train[:-1]] == [t["_target_"] for t in unlabeled]
        assert all(t.get("keys", "image") in (["image"], "image") for t in unlabeled)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("content", ["missing", "empty"])
def test_a_missing_or_empty_unlabeled_section_names_the_data_prep_option(name, content, tmp_path):
    from monai.bundle import ConfigParser

    dataset = MATRIX["datasets"][name.rsplit("_", 1)[0]]
    converter = dataset["prepare"].split()[3]
    option = {"covid_semiseg": "--unlabeled pseudo"}.get(converter, "--labeled-fraction")
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "a.png").write_bytes(b"")
    item = {"image": "images/a.png", "label": "images/a.png"}
    doc = {"training": [item], "validation": [item], **({"unlabeled": []} if content == "empty" else {})}
    (tmp_path / "datalist.json").write_text(json.dumps(doc))
    for overlay in SEMISUP:
        parser = ConfigParser()
        parser.read_config(_configs(name, "train.json", overlay))
        parser["dataset_dir"] = str(tmp_path)
        with pytest.raises(Exception) as err:
            parser.get_parsed_content("train#trainer")
        chain, cause = [], err.value
        while cause is not None:
            chain.append(str(cause))
            cause = cause.__cause__
        message = "\n".join(chain)
        assert "section 'unlabeled' is missing or empty" in message and option in message, message
        assert "python -m data_prep" in message and str(tmp_path) in message


@pytest.mark.parametrize("name", NAMES)
def test_fixed_dynamic_crops_fit_every_bundle_s_input(name):
    """With its default settings the fixed + dynamic overlay crops every bundle's training input."""
    from monai.bundle import ConfigParser

    from dale_monai.fixed_dynamic import crop_geometry

    parser = ConfigParser()
    parser.read_config(_configs(name, "train.json", "fixeddynamic_train.json"))
    s = parser["fixeddynamic"]
    crop, shift = crop_geometry(parser["spatial_size"], s["crop_fraction"], s["size_multiple"], s["shift_fraction"])
    # 32 (SwinUNETR's patch merging) except the other 3D backbones, whose 32^3 patches hold crops of 16
    assert s["size_multiple"] == (16 if name.startswith("synthetic3d") and not name.endswith("swinunetr") else 32)
    assert all(c % s["size_multiple"] == 0 and c > 0 for c in crop)


@pytest.mark.parametrize("name", ["synthetic3d_segresnet", "covid_semiseg_swinunetr", "synapse_unet"])
def test_trainers_are_constructed(name, tmp_path):
    from monai.bundle import ConfigWorkflow

    for overlay, (cls, _, extra) in SEMISUP.items():
        workflow = ConfigWorkflow(config_file=_configs(name, "train.json", overlay), workflow_type="train",
                                  bundle_root=str(tmp_path), **PLACEHOLDER_DATA)
        workflow.initialize()
        assert workflow.check_properties() == [], overlay
        trainer = workflow.trainer
        assert type(trainer).__name__ == cls
        assert trainer.network is workflow.parser.get_parsed_content("network")
        assert extra <= set(trainer.checkpoint_objects())
        workflow.finalize()


# --------------------------------------------------------------------------------------------- runs
@pytest.fixture(scope="module")
def tiny_semi(tmp_path_factory) -> Path:
    """The tiny synthetic set with half of its training labels (``data_prep synthetic --labeled-fraction 0.5``)."""
    from data_prep.synthetic import make_synthetic_dataset

    out = tmp_path_factory.mktemp("tiny_semi")
    make_synthetic_dataset(out, dims=2, n_train=8, n_val=2, n_test=1, size=40, labeled_fraction=0.5, verbose=False)
    return out


def _train(root: Path, data: Path, overlay: str, **extra) -> None:
    from monai.bundle import run

    overrides = {"bundle_root": str(root), "dataset_dir": str(data), "spatial_size": RUN_SIZE.get(overlay, [32, 32]),
                 "batch_size": 2,
                 "num_epochs": 1, "val_interval": 1, **extra}
    run("training", config_file=_configs("synthetic2d_unet", "train.json", overlay), **overrides)


@pytest.mark.parametrize("overlay", list(SEMISUP))
def test_two_epochs_through_the_bundle(overlay, tmp_path, tiny_semi):
    from monai.bundle import ConfigParser, ConfigWorkflow

    cls, _, extra = SEMISUP[overlay]
    root = tmp_path / "bundle"
    workflow = ConfigWorkflow(config_file=_configs("synthetic2d_unet", "train.json", overlay), workflow_type="train",
                              bundle_root=str(root), dataset_dir=str(tiny_semi),
                              spatial_size=RUN_SIZE.get(overlay, [32, 32]), batch_size=2, num_epochs=2, val_interval=1)
    workflow.initialize()
    trainer = workflow.trainer
    assert type(trainer).__name__ == cls
    assert len(trainer.unlabeled_data_loader.dataset) == 4 and len(trainer.labeled_data_loader.dataset) == 4
    workflow.run()
    network = workflow.parser.get_parsed_content("network")
    workflow.finalize()
    last = torch.load(root / "models" / "checkpoint_last.pt", weights_only=True)
    assert {"model", "optimizer", "trainer"} | extra <= set(last)
    assert last["trainer"]["iteration"] == 4  # 2 epochs of one pass over 4 labelled images in batches of 2
    assert all(torch.equal(v, network.state_dict()[k]) for k, v in last["model"].items())
    parser = ConfigParser()
    parser.read_config(_configs("synthetic2d_unet", "inference.json"))
    parser.get_parsed_content("network_def").load_state_dict(torch.load(root / "models" / "model.pt",
                                                                        weights_only=True))
    assert (root / "eval" / "metrics.csv").is_file()


@pytest.mark.parametrize("overlay", ["meanteacher_train.json", "dalepl_train.json", "arco_train.json"])
def test_resume_through_the_bundle_is_bit_identical(overlay, tmp_path, tiny_semi):
    section = SEMISUP[overlay][1]
    # 3 iterations per epoch: 2 labelled batches and 2 unlabelled ones, both cycled within the epoch
    settings = {f"{section}#epoch_length": 3, f"{section}#rampup_length": 6}
    if overlay == "arco_train.json":  # α_t's schedule over a fixed length, as the ramp-up's
        settings["arco#entropy_length"] = 6
    root = tmp_path / "resumed"
    _train(root, tiny_semi, overlay, **settings)
    _train(root, tiny_semi, overlay, num_epochs=2, resume=True, **settings)
    resumed = torch.load(root / "models" / "checkpoint_last.pt", weights_only=True)
    assert resumed["trainer"]["iteration"] == 6
    straight = tmp_path / "straight"
    _train(straight, tiny_semi, overlay, num_epochs=2, **settings)
    reference = torch.load(straight / "models" / "checkpoint_last.pt", weights_only=True)
    for key in ("model", *SEMISUP[overlay][2] - {"optimizer_1", "memory_bank"}):
        assert all(torch.equal(resumed[key][k], v) for k, v in reference[key].items()), key
    if "memory_bank" in SEMISUP[overlay][2]:  # the negatives of the resumed run are those of the straight one
        queues = resumed["memory_bank"]["queues"]
        assert queues and queues.keys() == reference["memory_bank"]["queues"].keys()
        assert all(torch.equal(q, reference["memory_bank"]["queues"][c]) for c, q in queues.items())
