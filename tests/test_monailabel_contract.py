"""The contract MONAI Label's ``monaibundle`` app relies on, for every bundle, without monailabel installed.

What is mirrored here is monailabel 0.8.5 (the version ``scripts/monailabel-constraints.txt`` pins):

- ``monailabel/tasks/infer/bundle.py`` (``BundleInferTask``): reads ``configs/inference.json`` with ``bundle_root``
  set to the bundle's folder; instantiates ``network_def`` when ``models/model.pt`` exists and loads the weights
  itself; takes the first ``network_data_format`` input/output of ``metadata.json`` as the image/prediction keys,
  the output's ``channel_def`` as labels (less "background") and the input's ``spatial_shape`` length as the
  dimension; per request overrides ``device`` (a string) and instantiates ``preprocessing`` (its ``LoadImaged``
  made ``image_only=False``), ``inferer`` and ``postprocessing`` (then ``post_transforms`` if present: the last one
  found wins), dropping ``SaveImaged`` instances and appending its own ``Restored`` and writer.
- ``monailabel/tasks/train/bundle.py`` (``BundleTrainTask``): reads ``configs/train.json``, prepends
  ``{"_target_": "CheckpointLoader", "load_path": models/model.pt, "load_dict": {"model": "$@network"},
  "strict": False}`` to the raw ``train#handlers`` list unless one is there, and runs ``monai.bundle.run("run",
  init_id=None, final_id=None, meta_file=..., config_file=train.json, **overrides)`` with the overrides
  ``bundle_root``, ``train#trainer#max_epochs``, ``train#dataset#data``, ``device``, ``train#handlers``,
  ``validate#dataset#data``; for several GPUs it writes those overrides into ``configs/monailabel_train.json`` and
  runs ``torchrun ... -m monai.bundle run run --config_file "['monailabel_train.json', 'multi_gpu_train.json']"
  --logging_file configs/logging.conf``.

The real server is exercised by ``scripts/monailabel_check.sh`` (docs/monailabel.md).
"""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from ignite.engine import Events
from monai.bundle import ConfigItem, ConfigParser
from monai.handlers import CheckpointLoader
from monai.inferers import Inferer
from monai.transforms import Compose, Invertd, LoadImaged, SaveImaged

from tests.test_bundles_run import tiny2d, tiny2d_meta, tiny3d, tiny_multiclass  # noqa: F401 - shared fixtures

pytestmark = pytest.mark.usefixtures("one_thread")

REPO = Path(__file__).resolve().parents[1]
BUNDLES = REPO / "bundles"
NAMES = sorted(p.name for p in BUNDLES.iterdir() if (p / "configs" / "train.json").is_file())
TRAIN_OVERRIDE_KEYS = ("bundle_root", "train#trainer#max_epochs", "train#dataset#data", "device", "train#handlers",
                       "validate#dataset#data")
PARADIGM_OVERLAYS = sorted(p.name for p in (BUNDLES / "synthetic2d_unet" / "configs").glob("*_train.json")
                           if p.name not in ("plain_train.json", "multi_gpu_train.json"))
INFER_KEYS = ("network_def", "preprocessing", "inferer", "postprocessing", "device", "bundle_root")


def test_every_bundle_is_covered():
    assert len(NAMES) >= 20 and {"synthetic2d_unet", "synthetic3d_unet"} <= set(NAMES)


# --------------------------------------------------------------------------------------------- MONAI Label's moves
def _monailabel_infer_parser(bundle: Path, device: str = "cpu") -> ConfigParser:
    """``BundleInferTask._load_bundle_config`` then ``_update_device`` (MONAI Label passes the device as a string)."""
    parser = ConfigParser()
    parser.read_config(str(bundle / "configs" / "inference.json"))
    parser.config.update({"bundle_root": str(bundle)})
    parser.config.update({"device": device})
    if parser.ref_resolver.items.get("device"):
        parser.ref_resolver.items["device"] = ConfigItem(config=device, id="device")
    return parser


def _monailabel_post(parser: ConfigParser) -> list:
    """``BundleInferTask.post_transforms`` before its own ``Restored``/writer: the last of ``postprocessing`` and
    ``post_transforms`` present, ``SaveImaged`` instances (the bundle's own writer) dropped."""
    post: list = []
    for key in ("postprocessing", "post_transforms"):
        if parser.get(key):
            c = parser.get_parsed_content(key, instantiate=True)
            post = list(c.transforms) if isinstance(c, Compose) else c
    return [t for t in post if not isinstance(t, SaveImaged)]


def _monailabel_written(pred: torch.Tensor) -> np.ndarray:
    """What MONAI Label writes for a prediction already in the input's grid: ``Restored`` keeps a tensor of up to 3
    dims as it is and takes channel 0 of a 4D one (monailabel/transform/post.py); the writer saves that array."""
    result = pred if pred.ndim <= 3 else pred[0] if pred.shape[0] == 1 else pred
    return np.asarray(result)


def _monailabel_train_parser(bundle: Path, overrides_in: dict, load_path: Path) -> tuple[ConfigParser, dict]:
    """``BundleTrainTask.__call__``'s overrides on ``train.json``, CheckpointLoader prepended as it does."""
    parser = ConfigParser()
    parser.read_config(str(bundle / "configs" / "train.json"))
    parser.config.update({"bundle_root": str(bundle)})
    handlers = parser.get("train#handlers", [])
    assert isinstance(handlers, list), "train#handlers must be a list literal: MONAI Label inserts into it"
    assert not [h for h in handlers if h.get("_target_") == "CheckpointLoader"], (
        "a CheckpointLoader already in train#handlers stops MONAI Label from adding its own")
    handlers.insert(0, {"_target_": "CheckpointLoader", "load_path": str(load_path),
                        "load_dict": {"model": "$@network"}, "strict": False})
    overrides = {"bundle_root": str(bundle), "train#handlers": handlers, **overrides_in}
    return parser, overrides


def _items(data: Path, section: str) -> list[dict]:
    datalist = json.loads((data / "datalist.json").read_text())
    return [{"image": str(data / d["image"]), "label": str(data / d["label"])} for d in datalist[section]]


def _dims(name: str) -> int:
    return json.loads((BUNDLES / name / "configs" / "train.json").read_text())["spatial_dims"]


def _tiny_data(name: str, request) -> Path:
    """Tiny data the bundle accepts: 3D volumes, 9-class slices in [0, 1] (Synapse), else 2D PNG (its 0/1 labels are
    class indices of any bundle, the 3-class COVID one included)."""
    config = json.loads((BUNDLES / name / "configs" / "train.json").read_text())
    if config["spatial_dims"] == 3:
        return request.getfixturevalue("tiny3d")
    return request.getfixturevalue("tiny_multiclass" if config["num_classes"] >= 9 else "tiny2d")


# --------------------------------------------------------------------------------------------- files and metadata
@pytest.mark.parametrize("name", NAMES)
def test_files_and_ids(name):
    configs = BUNDLES / name / "configs"
    for f in ("inference.json", "train.json", "metadata.json", "multi_gpu_train.json", "logging.conf"):
        assert (configs / f).is_file(), f"{name}: MONAI Label reads configs/{f}"
    infer = ConfigParser()
    infer.read_config(str(configs / "inference.json"))
    for key in INFER_KEYS:
        assert key in infer, f"{name}: inference.json has no {key!r}"
    train = ConfigParser()
    train.read_config(str(configs / "train.json"))
    for key in (*TRAIN_OVERRIDE_KEYS, "network", "run", "training"):
        assert key in train, f"{name}: train.json has no {key!r}"
    assert train["training"] == "@run" and "$@train#trainer.run()" in train["run"]
    # the ids MONAI Label overrides must be the ones the trainer is built from, not dead ends
    assert train["train#trainer#train_data_loader"] == "@train#dataloader"
    assert train["train#dataloader#dataset"] == "@train#dataset"
    assert train["validate#dataloader#dataset"] == "@validate#dataset"
    assert "@train#handlers" in train["train#trainer#train_handlers"]
    assert train["network"].startswith("$@network_def")


@pytest.mark.parametrize("name", NAMES)
def test_metadata_as_monailabel_reads_it(name):
    meta = json.loads((BUNDLES / name / "configs" / "metadata.json").read_text())
    key_image, image = next(iter(meta["network_data_format"]["inputs"].items()))
    key_pred, pred = next(iter(meta["network_data_format"]["outputs"].items()))
    assert (key_image, key_pred) == ("image", "pred")
    labels = {v.lower(): int(k) for k, v in pred["channel_def"].items() if v.lower() != "background"}
    assert labels and min(labels.values()) == 1 and len(set(labels.values())) == len(labels)
    assert len(image["spatial_shape"]) == _dims(name)  # the dimension MONAI Label reports (and Slicer uses)
    assert meta["version"] and meta["description"]
    assert "monai-label" in meta["supported_apps"]
    # the labels name the classes the bundle predicts (class indices 1..num_classes-1)
    train = json.loads((BUNDLES / name / "configs" / "train.json").read_text())
    assert sorted(labels.values()) == list(range(1, train["num_classes"]))


# --------------------------------------------------------------------------------------------- inference
@pytest.mark.parametrize("name", NAMES)
def test_inference_components(name):
    bundle = BUNDLES / name
    parser = _monailabel_infer_parser(bundle)
    network = parser.get_parsed_content("network_def", instantiate=True)
    assert isinstance(network, torch.nn.Module)
    pre = parser.get_parsed_content("preprocessing", instantiate=True)
    assert isinstance(pre, Compose)
    loaders = [t for t in pre.transforms if isinstance(t, LoadImaged)]
    assert len(loaders) == 1 and list(loaders[0].keys) == ["image"]  # wrapped by MONAI Label's LoadImageTensord
    assert isinstance(parser.get_parsed_content("inferer", instantiate=True), Inferer)
    post = parser.get_parsed_content("postprocessing", instantiate=True)
    writers = [t for t in post.transforms if isinstance(t, SaveImaged)]
    assert len(writers) == 1, "the bundle's writer must be a SaveImaged so that MONAI Label drops it"
    kept = _monailabel_post(parser)
    assert not [t for t in kept if isinstance(t, SaveImaged)]
    # MONAI Label instantiates preprocessing and postprocessing separately from one parser: Invertd must still
    # hold the very instance that transformed the image, or the inversion finds foreign transforms
    inverters = [t for t in kept if isinstance(t, Invertd)]
    assert len(inverters) == 1 and inverters[0].transform is pre
    assert all("pred" in getattr(t, "keys", ("pred",)) for t in kept)
    assert str(parser.get_parsed_content("device")) == "cpu"
    assert parser.get_parsed_content("bundle_root") == str(bundle)
    assert parser.get_parsed_content("ckpt_path") == str(bundle / "models" / "model.pt")  # where it loads from


def _monailabel_infer(bundle: Path, image: Path) -> tuple[dict, np.ndarray]:
    """``BasicInferTask.__call__`` without the server: pre, inferer on a batch of one, post, Restored's output."""
    parser = _monailabel_infer_parser(bundle)
    network = parser.get_parsed_content("network_def", instantiate=True).eval()
    pre = list(parser.get_parsed_content("preprocessing", instantiate=True).transforms)
    for t in pre:
        if isinstance(t, LoadImaged):
            t._loader.image_only = False
    data = Compose(pre)({"image": str(image)})
    with torch.no_grad():
        data["pred"] = parser.get_parsed_content("inferer", instantiate=True)(data["image"][None], network)[0]
    data = Compose(_monailabel_post(parser))(data)
    return data, _monailabel_written(data["pred"])


@pytest.mark.parametrize("name", ["synthetic3d_unet", "synthetic2d_unet"])
def test_inference_on_a_volume(name, tmp_path, tiny3d):  # noqa: F811
    """A NIfTI volume (a 2D bundle runs it slice by slice): the label MONAI Label writes has the volume's grid."""
    image = tiny3d / json.loads((tiny3d / "datalist.json").read_text())["test"][0]["image"]
    shape = nib.load(str(image)).shape
    data, written = _monailabel_infer(BUNDLES / name, image)
    assert written.shape == shape
    assert set(np.unique(written).tolist()) <= {0, 1}
    np.testing.assert_allclose(data["pred"].affine, nib.load(str(image)).affine, atol=1e-5)


@pytest.mark.parametrize("name", ["synthetic2d_unet"])
def test_inference_on_a_2d_image(name, tiny2d):  # noqa: F811
    """A PNG: MONAI Label writes the label with the image's extension through ITK, which needs a (H, W) integer
    array; a (1, H, W) float prediction becomes a wrong 3D image or an ITK error ("PNG supports unsigned char")."""
    image = tiny2d / json.loads((tiny2d / "datalist.json").read_text())["test"][0]["image"]
    _, written = _monailabel_infer(BUNDLES / name, image)
    assert written.shape == (40, 40)
    assert written.dtype in (np.uint8, np.uint16)
    assert set(np.unique(written).tolist()) <= {0, 1}


# --------------------------------------------------------------------------------------------- training
@pytest.mark.parametrize("name", NAMES)
def test_training_overrides_resolve(name, tmp_path, request):
    data = _tiny_data(name, request)
    train_items, val_items = _items(data, "training")[:2], _items(data, "validation")[:1]
    bundle = tmp_path / name
    parser, overrides = _monailabel_train_parser(
        BUNDLES / name, {"train#trainer#max_epochs": 3, "train#dataset#data": train_items, "device": "cpu",
                         "validate#dataset#data": val_items}, bundle / "models" / "model.pt")
    overrides["bundle_root"] = str(bundle)
    for key, value in overrides.items():
        parser[key] = value
    trainer = parser.get_parsed_content("train#trainer")
    assert trainer.state.max_epochs == 3
    assert trainer.data_loader.dataset.data == train_items
    assert parser.get_parsed_content("validate#dataset").data == val_items
    loader = parser.get_parsed_content("train#handlers")[0]
    assert isinstance(loader, CheckpointLoader) and loader.load_path == str(bundle / "models" / "model.pt")
    assert trainer.has_event_handler(loader, Events.STARTED)  # attached to the trainer MONAI Label runs
    assert loader.load_dict["model"] is parser.get_parsed_content("network")
    assert all(p.device.type == "cpu" for p in trainer.network.parameters())
    assert parser.get_parsed_content("ckpt_dir") == str(bundle / "models")  # results land in the loaded bundle


@pytest.mark.parametrize("name", NAMES)
def test_multi_gpu_config_keeps_the_overrides(name, tmp_path):
    """The torchrun path: overrides written into ``monailabel_train.json``, ``multi_gpu_train.json`` on top."""
    items = [{"image": "a.png", "label": "a_label.png"}]
    parser, overrides = _monailabel_train_parser(
        BUNDLES / name, {"train#trainer#max_epochs": 2, "train#dataset#data": items, "device": "cpu",
                         "validate#dataset#data": items}, tmp_path / "model.pt")
    for key, value in overrides.items():
        parser.set(value, key)
    exported = tmp_path / "monailabel_train.json"
    ConfigParser.export_config_file(parser.config, str(exported), indent=2)
    merged = ConfigParser()
    merged.read_config([str(exported), str(BUNDLES / name / "configs" / "multi_gpu_train.json")])
    assert merged["train#trainer#max_epochs"] == 2
    assert merged["train#dataset#data"] == items and merged["validate#dataset#data"] == items
    assert merged["train#handlers"][0]["_target_"] == "CheckpointLoader"
    assert "@train#handlers" in merged["train#trainer#train_handlers"]  # rank-filtered, loader included
    assert merged["train#dataloader#sampler"] == "@train#sampler"
    assert merged["device"] == "$dale_monai.distributed.local_device()"  # each process its own device
    assert "$@train#trainer.run()" in merged["run"]


def _marked_weights(name: str, path: Path) -> int:
    """Save random weights of ``network_def`` with every BatchNorm's ``num_batches_tracked`` set to 1000: training
    adds to it but never resets it, so after a run it shows whether these weights were loaded."""
    parser = ConfigParser()
    parser.read_config(str(BUNDLES / name / "configs" / "inference.json"))
    state = parser.get_parsed_content("network_def").state_dict()
    marks = [k for k in state if k.endswith("num_batches_tracked")]
    assert marks, f"{name}: no BatchNorm to mark"
    for k in marks:
        state[k] = torch.tensor(1000)
    path.parent.mkdir(parents=True)
    torch.save(state, path)
    return len(marks)


@pytest.mark.parametrize(("name", "epochs"), [("synthetic2d_unet", 2), ("synthetic3d_unet", 1)])
def test_training_run_as_monailabel_starts_it(name, epochs, tmp_path, request):
    """``BundleTrainTask.run_single_gpu`` on a copy of the bundle (as in the app's model folder), from its
    ``models/model.pt``. Each run validates its last epoch, the ``max_epochs`` MONAI Label sets (the 3D run's 1 is
    below ``val_interval`` 5), which rewrites ``model.pt``: a short run started from MONAI Label saves a model."""
    from monai.bundle import run

    data = _tiny_data(name, request)
    bundle = tmp_path / name
    shutil.copytree(BUNDLES / name / "configs", bundle / "configs")
    model_pt = bundle / "models" / "model.pt"
    n_marks = _marked_weights(name, model_pt)
    train_items, val_items = _items(data, "training")[:2], _items(data, "validation")[:1]
    parser, overrides = _monailabel_train_parser(
        bundle, {"train#trainer#max_epochs": epochs, "train#dataset#data": train_items, "device": "cpu",
                 "validate#dataset#data": val_items}, model_pt)
    before = model_pt.stat().st_mtime_ns
    run(run_id="run", init_id=None, final_id=None, meta_file=str(bundle / "configs" / "metadata.json"),
        config_file=str(bundle / "configs" / "train.json"), **copy.deepcopy(overrides))
    last = torch.load(bundle / "models" / "checkpoint_last.pt", weights_only=True)
    assert last["trainer"]["max_epochs"] == epochs and last["trainer"]["iteration"] == epochs  # 2 items, 1 batch
    counts = [int(v) for k, v in last["model"].items() if k.endswith("num_batches_tracked")]
    assert len(counts) == n_marks and min(counts) > 1000  # MONAI Label's CheckpointLoader loaded model.pt
    assert model_pt.stat().st_mtime_ns > before  # the best validation model replaced the pretrained one
    best = torch.load(model_pt, weights_only=True)
    assert min(int(v) for k, v in best.items() if k.endswith("num_batches_tracked")) > 1000
    raw = (bundle / "eval" / "val_mean_dice_raw.csv").read_text()
    assert Path(val_items[0]["image"]).name in raw  # validated on MONAI Label's split, not the bundle's dataset


# --------------------------------------------------------------------------------------------- the check script
def _check_script(monkeypatch):
    import importlib.util
    import sys

    spec = importlib.util.spec_from_file_location("monailabel_check", REPO / "scripts" / "monailabel_check.py")
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "monailabel_check", module)  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_check_script_requirements_and_record(tmp_path, monkeypatch):
    """The pieces of scripts/monailabel_check.py that run without a server: the requirements it installs beside
    monailabel, and the outcome block it writes into docs/monailabel.md."""
    check = _check_script(monkeypatch)
    reqs = check.project_requirements()
    names = {r.split(">")[0].split("=")[0].split("<")[0] for r in reqs}
    assert {"monai", "pytorch-ignite", "nibabel", "h5py"} <= names and not {"torch", "jsonschema"} & names
    assert check.DOC.is_file() and check.RECORD_BEGIN in check.DOC.read_text()  # the shipped doc has the markers
    doc = tmp_path / "monailabel.md"
    doc.write_text(f"# x\n\nbefore\n\n{check.RECORD_BEGIN}\nold\n{check.RECORD_END}\n\nafter\n")
    monkeypatch.setattr(check, "DOC", doc)
    results = [check.StepResult("b", "GET /info/", True, "listed | ok", 1.0),
               check.StepResult("b", "POST /infer", False, "HTTP 500\nsecond line", 2.0)]
    for _ in range(2):  # a second run replaces the block, it does not append
        check.record(results, "monailabel 0.8.5", 60.0, check._strip_paths(["--workdir", "w", "--keep"]))
    text = doc.read_text()
    assert text.startswith("# x\n\nbefore\n") and text.endswith("\n\nafter\n") and "old" not in text
    assert text.count(check.RECORD_BEGIN) == 1 and "**FAIL** (1/2 steps" in text
    assert "`bash scripts/monailabel_check.sh --keep`" in text
    assert "| b | GET /info/ | PASS | 1 | listed / ok |" in text and "| FAIL | 2 | HTTP 500 second line |" in text
    doc.write_text("no markers")
    with pytest.raises(SystemExit, match="markers"):
        check.record(results, "", 1.0, [])


# --------------------------------------------------------------------------------------------- paradigm overlays
def _merged_train(bundle: Path, overlay: str) -> None:
    """What a user does to have MONAI Label (which reads ``configs/train.json`` only) train with a paradigm: merge
    the overlay into the app's copy of ``train.json``."""
    merged = ConfigParser()
    merged.read_config([str(bundle / "configs" / "train.json"), str(bundle / "configs" / overlay)])
    ConfigParser.export_config_file(merged.config, str(bundle / "configs" / "train.json"), indent=2)


def test_every_paradigm_overlay_is_covered():
    assert PARADIGM_OVERLAYS == sorted(["coteaching_train.json", "trinet_train.json", "mwnet_train.json",
                                        "gce_train.json", "sce_train.json", "meanteacher_train.json",
                                        "cps_train.json", "fixeddynamic_train.json", "dalepl_train.json",
                                        "gapmatch_train.json", "clcs_train.json", "arco_train.json"])


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("overlay", PARADIGM_OVERLAYS)
def test_paradigm_overlays_keep_monailabel_override_points(name, overlay, tmp_path):
    """Merged into train.json, every overlay keeps the ids MONAI Label overrides, accepts its prepended
    CheckpointLoader (which then loads network 0), and the last checkpoint still saves every network."""
    bundle = tmp_path / name
    shutil.copytree(BUNDLES / name / "configs", bundle / "configs")
    _merged_train(bundle, overlay)
    parser, overrides = _monailabel_train_parser(bundle, {"train#trainer#max_epochs": 2, "device": "cpu"},
                                                 tmp_path / "model.pt")
    for key, value in overrides.items():
        parser[key] = value
    for key in TRAIN_OVERRIDE_KEYS:
        assert key in parser, f"{overlay}: no {key}"
    handlers = parser["train#handlers"]
    assert handlers[0]["_target_"] == "CheckpointLoader" and handlers[0]["load_dict"] == {"model": "$@network"}
    (ckpt,) = [h for h in handlers if h["_target_"].endswith("LastCheckpoint")]
    overlay_doc = json.loads((BUNDLES / name / "configs" / overlay).read_text())
    extended = [v for k, v in overlay_doc.items() if k.endswith("#save_dict")]
    if extended:  # the save_dict the overlay extended moved with its handler when MONAI Label prepended its loader
        assert ckpt["save_dict"] == extended[0]
    assert parser["train#trainer#max_epochs"] == 2
    assert parser["validate#evaluator#network"] == "@network"


@pytest.mark.parametrize("overlay", ["coteaching_train.json", "mwnet_train.json", "clcs_train.json"])
def test_training_with_a_paradigm_as_monailabel_starts_it(overlay, tmp_path, tiny2d_meta):  # noqa: F811
    """MONAI Label's run on a bundle whose train.json holds a paradigm: its CheckpointLoader restores network 0
    from models/model.pt, the other networks start fresh, validation rewrites model.pt with network 0, which
    inference.json loads."""
    from monai.bundle import run

    name = "synthetic2d_unet"
    bundle = tmp_path / name
    shutil.copytree(BUNDLES / name / "configs", bundle / "configs")
    _merged_train(bundle, overlay)
    model_pt = bundle / "models" / "model.pt"
    n_marks = _marked_weights(name, model_pt)
    train_items, val_items = _items(tiny2d_meta, "training")[:2], _items(tiny2d_meta, "validation")[:1]
    parser, overrides = _monailabel_train_parser(
        bundle, {"train#trainer#max_epochs": 2, "train#dataset#data": train_items, "device": "cpu",
                 "validate#dataset#data": val_items}, model_pt)
    before = model_pt.stat().st_mtime_ns
    # the meta set is the bundle's own (MONAI Label knows no such section); a small input keeps the test fast
    run(run_id="run", init_id=None, final_id=None, meta_file=str(bundle / "configs" / "metadata.json"),
        config_file=str(bundle / "configs" / "train.json"), dataset_dir=str(tiny2d_meta), spatial_size=[48, 48],
        **copy.deepcopy(overrides))
    last = torch.load(bundle / "models" / "checkpoint_last.pt", weights_only=True)
    assert last["trainer"]["iteration"] == 2
    counts = [int(v) for k, v in last["model"].items() if k.endswith("num_batches_tracked")]
    assert len(counts) == n_marks and min(counts) > 1000  # network 0 started from model.pt
    if "model_1" in last:
        assert max(int(v) for k, v in last["model_1"].items() if k.endswith("num_batches_tracked")) < 1000
    assert model_pt.stat().st_mtime_ns > before
    best = torch.load(model_pt, weights_only=True)
    assert min(int(v) for k, v in best.items() if k.endswith("num_batches_tracked")) > 1000  # network 0's weights
    infer = ConfigParser()
    infer.read_config(str(bundle / "configs" / "inference.json"))
    infer.get_parsed_content("network_def").load_state_dict(best)
