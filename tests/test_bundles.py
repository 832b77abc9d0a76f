"""Every generated bundle: generated from the matrix, valid metadata, configs that resolve, bundle properties,
the missing-dataset message, and the MONAI Label override contract."""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
from pathlib import Path

import pytest
import torch
import yaml

REPO = Path(__file__).resolve().parents[1]
BUNDLES = REPO / "bundles"
SCHEMA = BUNDLES / "schema" / "meta_schema_20240725.json"
MATRIX = yaml.safe_load((BUNDLES / "matrix.yaml").read_text())
NAMES = [f"{row['dataset']}_{row['backbone']}" for row in MATRIX["bundles"]]
# constructing a workflow needs datasets, not data: one placeholder item, never loaded (no caching)
_ITEM = [{"image": "never-loaded.png", "label": "never-loaded.png"}]
PLACEHOLDER_DATA = {"train#dataset#data": _ITEM, "validate#dataset#data": _ITEM, "train#dataset#cache_rate": 0.0,
                    "validate#dataset#cache_rate": 0.0}

pytestmark = pytest.mark.usefixtures("one_thread")



def _generator():
    spec = importlib.util.spec_from_file_location("generate_bundles", REPO / "scripts" / "generate_bundles.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _configs(name: str, *files: str) -> list[str]:
    return [str(BUNDLES / name / "configs" / f) for f in files]


# --------------------------------------------------------------------------------------------- the matrix
def test_committed_bundles_match_the_generator():
    assert _generator().check() == []


def test_check_fails_on_a_hand_edited_or_stray_bundle(tmp_path, capsys):
    gen = _generator()
    copy = tmp_path / "bundles"
    shutil.copytree(BUNDLES, copy, ignore=shutil.ignore_patterns("models", "eval", "logs"))
    assert gen.main(["--check", "--bundles", str(copy)]) == 0
    train = copy / "synthetic2d_unet" / "configs" / "train.json"
    train.write_text(train.read_text().replace('"num_epochs": 12', '"num_epochs": 13'))
    shutil.copytree(copy / "ph2_unet", copy / "handmade_unet")
    (copy / "mosmed_unet" / "LICENSE").unlink()
    assert gen.main(["--check", "--bundles", str(copy)]) == 1
    err = capsys.readouterr().err
    assert "synthetic2d_unet/configs/train.json" in err
    assert "handmade_unet/ (not in matrix.yaml)" in err
    assert "mosmed_unet/LICENSE" in err
    # regenerating repairs the edits (the stray folder is the user's to delete)
    assert gen.main(["--bundles", str(copy)]) == 0
    shutil.rmtree(copy / "handmade_unet")
    assert gen.check(copy) == []


def test_matrix_rules(tmp_path):
    datasets = {"synthetic2d", "synthetic3d", "covid_semiseg", "covid_multiclass", "ph2", "isic2016_ph2", "polyp",
                "mosmed", "synapse"}
    assert set(MATRIX["datasets"]) == datasets
    assert set(MATRIX["backbones"]) == {"unet", "unetpp", "attentionunet", "swinunetr", "segresnet"}
    for dataset in datasets:
        assert {"unet", "swinunetr"} <= {r["backbone"] for r in MATRIX["bundles"] if r["dataset"] == dataset}
    assert sorted(p.name for p in BUNDLES.iterdir() if (p / "configs").is_dir()) == sorted(NAMES)
    assert MATRIX["datasets"]["synapse"]["num_classes"] == 9
    # the 3-class COVID bundle (background, ground-glass opacity, consolidation) CLCS is evaluated on
    covid3 = MATRIX["datasets"]["covid_multiclass"]
    assert covid3["num_classes"] == 3 and "--task multiclass" in covid3["prepare"]
    assert covid3["label_names"] == {"background": 0, "ground-glass opacity": 1, "consolidation": 2}
    # the README's default stays as light as it is (12 epochs x 6 iterations of batch 8 at 96x96)
    cfg = json.loads((BUNDLES / "synthetic2d_unet" / "configs" / "train.json").read_text())
    assert (cfg["num_epochs"], cfg["batch_size"], cfg["spatial_size"]) == (12, 8, [96, 96])
    assert cfg["network_def"]["channels"] == [16, 32, 64, 128]
    # a broken matrix is an error naming the row
    bad = dict(MATRIX, bundles=MATRIX["bundles"] + [{"dataset": "ph2", "backbone": "vit"}])
    (tmp_path / "m.yaml").write_text(yaml.safe_dump(bad))
    with pytest.raises(ValueError, match="unknown backbone 'vit'"):
        _generator().load_matrix(tmp_path / "m.yaml")
    bad = dict(MATRIX, bundles=[r for r in MATRIX["bundles"]
                              if (r["dataset"], r["backbone"]) != ("mosmed", "swinunetr")])
    (tmp_path / "m.yaml").write_text(yaml.safe_dump(bad))
    with pytest.raises(ValueError, match="'mosmed' has no bundle with backbone"):
        _generator().load_matrix(tmp_path / "m.yaml")


# --------------------------------------------------------------------------------------------- per bundle
@pytest.mark.parametrize("name", NAMES)
def test_bundle_layout_and_metadata(name):
    from monai.bundle import verify_metadata

    root = BUNDLES / name
    paradigms = tuple(f"configs/{f}" for f in _generator().PARADIGMS)
    for rel in ("configs/train.json", "configs/plain_train.json", "configs/multi_gpu_train.json",
                "configs/inference.json", "configs/evaluate.json", "configs/metadata.json", "configs/logging.conf",
                "docs/README.md", "LICENSE", *paradigms):
        assert (root / rel).is_file(), rel
    # offline: the shipped schema is the "download" target, so nothing is fetched
    verify_metadata(meta_file=str(root / "configs" / "metadata.json"), filepath=str(SCHEMA))
    meta = json.loads((root / "configs" / "metadata.json").read_text())
    assert meta["name"] == name
    inference = json.loads((root / "configs" / "inference.json").read_text())
    assert "_meta_" not in json.dumps(inference)
    for key in ("network_def", "preprocessing", "postprocessing", "inferer", "device", "bundle_root"):
        assert key in inference
    fmt = meta["network_data_format"]
    assert fmt["inputs"]["image"]["num_channels"] == inference["in_channels"]
    assert fmt["outputs"]["pred"]["num_channels"] == inference["out_channels"]
    assert fmt["inputs"]["image"]["spatial_shape"] == inference["spatial_size"]
    readme = (root / "docs" / "README.md").read_text()
    assert "python -m data_prep" in readme and "No measured results" in readme


def test_invalid_metadata_is_rejected(tmp_path):
    from monai.bundle import verify_metadata

    meta = json.loads((BUNDLES / "synthetic2d_unet" / "configs" / "metadata.json").read_text())
    del meta["network_data_format"]
    (tmp_path / "metadata.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="network_data_format"):  # MONAI wraps jsonschema's ValidationError
        verify_metadata(meta_file=str(tmp_path / "metadata.json"), filepath=str(SCHEMA))


_REF = re.compile(r"@([\w#]+)")


def _references(node, out: set) -> set:
    if isinstance(node, dict):
        for v in node.values():
            _references(v, out)
    elif isinstance(node, list):
        for v in node:
            _references(v, out)
    elif isinstance(node, str):
        out.update(_REF.findall(node))
    return out


PARADIGM_OVERLAYS = ("coteaching_train.json", "trinet_train.json", "mwnet_train.json", "gce_train.json",
                     "sce_train.json", "clcs_train.json")
COMBINATIONS = {
    "train": ("train.json",),
    "plain": ("train.json", "plain_train.json"),
    "multi_gpu": ("train.json", "multi_gpu_train.json"),
    "multi_gpu_plain": ("train.json", "plain_train.json", "multi_gpu_train.json"),
    "inference": ("inference.json",),
    "evaluate": ("inference.json", "evaluate.json"),
    **{f.split("_")[0]: ("train.json", f) for f in PARADIGM_OVERLAYS},
    **{f"multi_gpu_{f.split('_')[0]}": ("train.json", f, "multi_gpu_train.json") for f in PARADIGM_OVERLAYS},
}


@pytest.mark.parametrize("name", NAMES)
def test_configs_parse_and_every_reference_resolves(name):
    from monai.bundle import ConfigParser

    for combo, files in COMBINATIONS.items():
        parser = ConfigParser()
        parser.read_config(_configs(name, *files))
        parser.parse(reset=True)
        for ref in _references(parser.get(), set()):
            assert ref in parser, f"{name} {combo}: @{ref} does not exist"
        # the documented run ids
        trains = {c: ("run", "training") for c, f in COMBINATIONS.items() if f[0] == "train.json"}
        for run_id in {**trains, "evaluate": ("run", "evaluating")}.get(combo, ("run",)):
            assert run_id in parser, f"{name} {combo}: no run id {run_id}"


@pytest.mark.parametrize("name", NAMES)
def test_check_properties_train_and_infer(name, tmp_path):
    from monai.bundle import ConfigWorkflow

    train = ConfigWorkflow(config_file=_configs(name, "train.json"), workflow_type="train",
                           bundle_root=str(tmp_path), **PLACEHOLDER_DATA)
    train.initialize()
    assert train.check_properties() == []
    assert isinstance(train.network_def, torch.nn.Module)
    assert train.max_epochs == train.parser["num_epochs"]
    # inference needs no dataset to be built (tests/test_bundles_model_zoo.py runs the model zoo's checks)
    infer = ConfigWorkflow(config_file=_configs(name, "inference.json"), workflow_type="infer",
                           bundle_root=str(tmp_path), dataset_dir=str(tmp_path / "absent"))
    infer.initialize()
    assert infer.check_properties() == []
    assert type(infer.network_def) is type(train.network_def)
    evaluate = ConfigWorkflow(config_file=_configs(name, "inference.json", "evaluate.json"), workflow_type="eval",
                              bundle_root=str(tmp_path), dataset_dir=str(tmp_path / "absent"))
    evaluate.initialize()
    assert evaluate.check_properties() == []


@pytest.mark.parametrize("name", NAMES)
def test_bundle_root_does_not_depend_on_the_working_directory(name, tmp_path, monkeypatch):
    from monai.bundle import ConfigWorkflow

    monkeypatch.chdir(tmp_path)
    workflow = ConfigWorkflow(config_file=_configs(name, "train.json"), workflow_type="train")
    workflow.initialize()
    assert Path(workflow.bundle_root) == BUNDLES / name
    dataset = MATRIX["datasets"][name.rsplit("_", 1)[0]]["dataset_dir"]
    assert Path(workflow.dataset_dir).resolve() == REPO / dataset


@pytest.mark.parametrize("name", NAMES)
def test_missing_dataset_names_the_data_prep_command(name, tmp_path):
    from monai.bundle import ConfigParser

    from dale_monai.bundle import DatasetNotFoundError, DeferredList

    dataset = name.rsplit("_", 1)[0]
    converter = MATRIX["datasets"][dataset]["prepare"].split()[3]
    for files, ref in ((("train.json",), "train_datalist"), (("inference.json",), "datalist"),
                       (("inference.json", "evaluate.json"), "datalist")):
        parser = ConfigParser()
        parser.read_config(_configs(name, *files))
        parser["dataset_dir"] = str(tmp_path / "absent")
        if files == ("train.json",):
            with pytest.raises(Exception) as err:
                parser.get_parsed_content(ref)
        else:
            # inference and evaluation list their inputs when they run (the model zoo parses them without data)
            datalist = parser.get_parsed_content(ref)
            assert isinstance(datalist, DeferredList) and not datalist.resolved
            with pytest.raises(DatasetNotFoundError) as err:
                datalist.resolve()
        cause = err.value  # MONAI wraps the error of a "$" expression; the user sees the whole chain
        while cause is not None and not isinstance(cause, DatasetNotFoundError):
            cause = cause.__cause__
        assert cause is not None, f"{name} {files}: {err.value!r}"
        message = str(cause)
        assert f"python -m data_prep {converter}" in message, message
        assert f"--out {tmp_path / 'absent'}" in message, message


# --------------------------------------------------------------------------------------------- MONAI Label
@pytest.fixture(scope="module")
def tiny2d(tmp_path_factory) -> Path:
    from data_prep.synthetic import make_synthetic_dataset

    out = tmp_path_factory.mktemp("tiny2d")
    make_synthetic_dataset(out, dims=2, n_train=2, n_val=1, n_test=1, size=32, verbose=False)
    return out


def test_monai_label_override_contract(tmp_path, tiny2d):
    """What MONAI Label's monaibundle app does: override the data, epochs, device and bundle root, prepend a
    CheckpointLoader of the pretrained model to train#handlers, and run the id ``run``."""
    from monai.bundle import ConfigParser, ConfigWorkflow, run

    name = "synthetic2d_unet"
    datalist = json.loads((tiny2d / "datalist.json").read_text())
    items = {s: [{"image": str(tiny2d / d["image"]), "label": str(tiny2d / d["label"])} for d in datalist[s]]
             for s in ("training", "validation")}
    root = tmp_path / "bundle"
    # a "pretrained" model.pt that the prepended loader must restore before training starts
    parser = ConfigParser()
    parser.read_config(_configs(name, "train.json"))
    parser["spatial_size"] = [32, 32]
    pretrained = {k: torch.randn_like(v) if v.is_floating_point() else v
                  for k, v in parser.get_parsed_content("network_def").state_dict().items()}
    (tmp_path / "pretrained").mkdir()
    torch.save(pretrained, tmp_path / "pretrained" / "model.pt")
    handlers = parser["train#handlers"]
    loader = {"_target_": "CheckpointLoader", "load_path": str(tmp_path / "pretrained" / "model.pt"),
              "load_dict": {"model": "@network"}, "strict": False}
    overrides = {
        "bundle_root": str(root),
        "train#trainer#max_epochs": 1,
        "train#dataset#data": items["training"],
        "validate#dataset#data": items["validation"],
        "device": "cpu",
        "train#handlers": [loader] + handlers,
        "spatial_size": [32, 32],  # not MONAI Label's: keeps the test fast
        "batch_size": 2,
        "learning_rate": 0.0,  # so the trained weights are the loaded ones
        "val_interval": 1,
    }
    workflow = ConfigWorkflow(config_file=_configs(name, "train.json"), workflow_type="train", **overrides)
    workflow.initialize()
    assert workflow.check_properties() == []
    run("run", config_file=_configs(name, "train.json"), **overrides)
    last = torch.load(root / "models" / "checkpoint_last.pt", weights_only=True)
    assert last["trainer"]["max_epochs"] == 1
    for k, v in pretrained.items():
        if v.is_floating_point() and "running" not in k:
            assert torch.equal(last["model"][k], v), k
    best = torch.load(root / "models" / "model.pt", weights_only=True)
    assert set(best) == set(pretrained)


# --------------------------------------------------------------------------------------------- paradigm overlays
def test_paradigm_list_matches_the_generator():
    assert tuple(_generator().PARADIGMS) == PARADIGM_OVERLAYS


@pytest.mark.parametrize("name", NAMES)
def test_paradigm_overlays_keep_the_model_and_checkpoint_every_network(name):
    """Network 0 is ``@network`` (what validation, model.pt and inference use); the last checkpoint's save_dict
    names every further network and optimizer; DALE's partition and handlers are dropped."""
    from monai.bundle import ConfigParser

    for overlay in PARADIGM_OVERLAYS:
        parser = ConfigParser()
        parser.read_config(_configs(name, "train.json", overlay))
        trainer = parser["train#trainer"]
        assert not trainer["_target_"].endswith("DALETrainer"), overlay
        assert parser["train#partition"] == [] and parser["train#dale_handlers"] == []
        networks = trainer.get("networks", "$[@network]")
        assert networks.startswith("$[@network,") or networks == "$[@network]", overlay
        assert trainer.get("network", "@network") == "@network"
        assert parser["validate#evaluator#network"] == "@network"
        handlers = parser["train#handlers"]
        (ckpt,) = [h for h in handlers if h["_target_"].endswith("LastCheckpoint")]
        n = networks.count("@network")
        for i in range(1, n):
            assert ckpt["save_dict"][f"model_{i}"] == f"$dale_monai.feature_layers.unwrap_model(@network_{i})"
            assert ckpt["save_dict"][f"optimizer_{i}"] == f"@optimizer_{i}"
            assert parser[f"network_def_{i}"] == "%network_def"  # a new instance of the same definition
        if overlay == "mwnet_train.json":
            assert {"weight_net", "meta_optimizer"} <= set(ckpt["save_dict"])
        if overlay == "clcs_train.json":
            assert ckpt["save_dict"]["clcs_curriculum"] == trainer["curriculum"] == "@clcs#curriculum"
            assert parser["clcs#curriculum#num_classes"] == "@num_classes"
        best = [h for h in parser["validate#handlers"] if h["_target_"] == "CheckpointSaver"][0]
        assert best["save_dict"] == {"model": "$dale_monai.feature_layers.unwrap_model(@network)"}


@pytest.mark.parametrize("name", ["synthetic2d_unet", "synthetic3d_segresnet", "covid_semiseg_swinunetr",
                                  "synapse_unet", "covid_multiclass_unet"])
def test_paradigm_trainers_are_constructed(name, tmp_path):
    from monai.bundle import ConfigWorkflow

    from dale_monai.engines import MultiNetworkTrainer
    from dale_monai.feature_layers import unwrap_model

    expected = {"coteaching_train.json": ("CoTeachingTrainer", 2), "trinet_train.json": ("TriNetTrainer", 3),
                "mwnet_train.json": ("MetaReweightTrainer", 1), "gce_train.json": ("SupervisedTrainer", 1),
                "sce_train.json": ("SupervisedTrainer", 1), "clcs_train.json": ("CLCSTrainer", 2)}
    for overlay, (cls, n) in expected.items():
        extra = {"meta#dataset#data": _ITEM, "meta#dataset#cache_rate": 0.0} if overlay.startswith("mwnet") else {}
        workflow = ConfigWorkflow(config_file=_configs(name, "train.json", overlay), workflow_type="train",
                                  bundle_root=str(tmp_path), **PLACEHOLDER_DATA, **extra)
        workflow.initialize()
        assert workflow.check_properties() == [], overlay
        trainer = workflow.trainer
        assert type(trainer).__name__ == cls, overlay
        assert trainer.network is workflow.parser.get_parsed_content("network")
        if isinstance(trainer, MultiNetworkTrainer):
            assert len(trainer.networks) == n
            inner = [unwrap_model(net) for net in trainer.networks]
            assert len({id(net) for net in inner}) == n and all(type(net) is type(inner[0]) for net in inner)
            first = [p.detach() for p in inner[0].parameters()]
            assert any(not torch.equal(a, b) for a, b in zip(first, inner[1].parameters()))  # own initialisation
        if cls == "CLCSTrainer":  # the curriculum the last checkpoint saves is the trainer's, sized for the classes
            assert trainer.curriculum is workflow.parser.get_parsed_content("clcs#curriculum")
            assert trainer.curriculum.num_classes == workflow.parser["num_classes"]
            assert all(type(opt) is type(trainer.optimizer) for opt in trainer.optimizers)
        workflow.finalize()


@pytest.mark.parametrize("name", NAMES)
def test_mwnet_without_a_meta_section_names_the_data_prep_option(name, tmp_path):
    from monai.bundle import ConfigParser

    dataset = MATRIX["datasets"][name.rsplit("_", 1)[0]]
    converter = dataset["prepare"].split()[3]
    option = {"synthetic": "--n-meta", "covid_semiseg": "--meta-count"}.get(converter, "--meta-fraction")
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "a.png").write_bytes(b"")
    item = {"image": "images/a.png", "label": "images/a.png"}
    (tmp_path / "datalist.json").write_text(json.dumps({"training": [item], "validation": [item]}))
    parser = ConfigParser()
    parser.read_config(_configs(name, "train.json", "mwnet_train.json"))
    parser["dataset_dir"] = str(tmp_path)
    with pytest.raises(Exception) as err:
        parser.get_parsed_content("train#trainer")
    chain, cause = [], err.value
    while cause is not None:
        chain.append(str(cause))
        cause = cause.__cause__
    message = "\n".join(chain)
    assert "section 'meta' is missing" in message and option in message, message
    assert f"python -m data_prep" in message and str(tmp_path) in message


@pytest.mark.parametrize(("overlay", "override", "option"), [
    ("coteaching_train.json", {"coteaching#select_ratio": 1.5}, "select_ratio"),
    ("trinet_train.json", {"trinet#ramp_start": 50, "trinet#ramp_end": 10}, "ramp_end"),
    ("coteaching_train.json", {"coteaching#ramp": "cosine"}, "ramp"),
    ("mwnet_train.json", {"mwnet#rule": "mentor"}, "rule"),
    ("gce_train.json", {"loss#q": 0.0}, "q must lie in"),
    ("clcs_train.json", {"clcs#tau": 1.5}, "tau must lie in"),
    ("clcs_train.json", {"clcs#min_keep": 2}, "min_keep"),
    ("clcs_train.json", {"clcs#discrepancy": "kl"}, "discrepancy must be one of"),
    ("clcs_train.json", {"clcs#warmup_epochs": -1}, "warmup_epochs"),
])
def test_out_of_range_paradigm_settings_stop_at_construction(overlay, override, option, tmp_path):
    from monai.bundle import ConfigWorkflow

    extra = {"meta#dataset#data": _ITEM, "meta#dataset#cache_rate": 0.0} if overlay.startswith("mwnet") else {}
    workflow = ConfigWorkflow(config_file=_configs("synthetic2d_unet", "train.json", overlay), workflow_type="train",
                              bundle_root=str(tmp_path), **PLACEHOLDER_DATA, **extra, **override)
    with pytest.raises(Exception) as err:
        workflow.initialize()
        workflow.parser.get_parsed_content("train#trainer")
    chain, cause = [], err.value
    while cause is not None:
        chain.append(str(cause))
        cause = cause.__cause__
    assert any(option in c for c in chain), chain
