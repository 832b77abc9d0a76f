"""The small modules behind the bundles: input listing, channel adaptation, mask saving, per-case metrics,
rank-aware handlers and the single-output U-Net++."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from ignite.engine import Engine, Events
from monai.data import MetaTensor
from PIL import Image

from dale_monai.bundle import DatasetNotFoundError, DeferredList, find_inputs, image_items, training_report
from dale_monai.bundle_transforms import AdaptChannels, AdaptChannelsd, SaveMaskd
from dale_monai.distributed import ResumeOnly, handlers_for_rank, init_distributed
from dale_monai.evaluation import CaseMetricsSaver
from dale_monai.handlers.checkpoint import LastCheckpoint
from dale_monai.handlers.validation import EpochValidationHandler
from dale_monai.single_output_nets import UNetPlusPlus


def _dicom_file(path: Path) -> None:
    path.write_bytes(b"\0" * 128 + b"DICM" + b"\0" * 16)


# --------------------------------------------------------------------------------------------- inputs
def test_find_inputs(tmp_path):
    (tmp_path / "a.png").write_bytes(b"x")
    (tmp_path / "b.nii.gz").write_bytes(b"x")
    (tmp_path / "notes.txt").write_text("x")
    (tmp_path / ".hidden.png").write_bytes(b"x")
    (tmp_path / "series").mkdir()
    for i in range(2):
        _dicom_file(tmp_path / "series" / f"IM{i}")  # DICOM without suffix, found by its magic
    (tmp_path / "mixed").mkdir()
    (tmp_path / "mixed" / "x.png").write_bytes(b"x")
    assert [Path(p).name for p in find_inputs(tmp_path)] == ["a.png", "b.nii.gz", "series"]
    assert find_inputs(tmp_path / "series") == [str(tmp_path / "series")]  # a series folder is one input
    assert find_inputs(tmp_path / "a.png") == [str(tmp_path / "a.png")]
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no inputs found"):
        find_inputs(tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        find_inputs(tmp_path / "absent")


def test_image_items(tmp_path):
    (tmp_path / "a.png").write_bytes(b"x")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.png").write_bytes(b"x")
    assert image_items([str(tmp_path / "a.png"), {"image": str(tmp_path / "sub" / "b.png"), "label": "ignored"}]) == [
        {"image": str(tmp_path / "a.png")}, {"image": str(tmp_path / "sub" / "b.png")}]
    (tmp_path / "list.json").write_text(json.dumps(["a.png", "sub/b.png"]))  # relative to the JSON file
    assert [d["image"] for d in image_items(str(tmp_path / "list.json"))] == [str(tmp_path / "a.png"),
                                                                               str(tmp_path / "sub" / "b.png")]
    (tmp_path / "datalist.json").write_text(json.dumps({"training": [], "test": [{"image": "a.png", "label": "x"}]}))
    assert image_items(str(tmp_path / "datalist.json")) == [{"image": str(tmp_path / "a.png")}]
    (tmp_path / "nosection.json").write_text(json.dumps({"training": []}))
    with pytest.raises(ValueError, match="'test' or 'testing'"):
        image_items(str(tmp_path / "nosection.json"))
    with pytest.raises(FileNotFoundError, match="missing.png"):
        image_items([str(tmp_path / "missing.png")])
    with pytest.raises(ValueError, match="empty"):
        image_items([])


def test_image_items_keeps_the_requested_keys(tmp_path):
    for name in ("a.png", "a_seg.png"):
        (tmp_path / name).write_bytes(b"x")
    entry = {"image": str(tmp_path / "a.png"), "label": str(tmp_path / "a_seg.png"), "label_soft": "unused"}
    assert image_items([entry], keys=("image", "label")) == [{"image": entry["image"], "label": entry["label"]}]
    with pytest.raises(ValueError, match="has no label path"):
        image_items([{"image": entry["image"]}], keys=("image", "label"))
    with pytest.raises(FileNotFoundError, match="datalist label .*missing.png"):
        image_items([{"image": entry["image"], "label": str(tmp_path / "missing.png")}], keys=("image", "label"))


def test_deferred_list_computes_once_on_first_use_and_retries_after_an_error(tmp_path):
    calls = []

    def listing(folder, section="test"):
        calls.append(section)
        if not (folder / "ready").exists():
            raise DatasetNotFoundError(f"no dataset in {folder}")
        return ({"image": str(i)} for i in range(3))  # any iterable: kept as a list

    deferred = DeferredList(listing, tmp_path, section="validation")
    assert not deferred.resolved and calls == [] and "pending" in repr(deferred)
    with pytest.raises(DatasetNotFoundError, match="no dataset"):
        len(deferred)
    assert not deferred.resolved  # an error is not cached
    (tmp_path / "ready").touch()
    assert len(deferred) == 3 and deferred[1] == {"image": "1"} and [d["image"] for d in deferred] == ["0", "1", "2"]
    assert deferred[-2:] == [{"image": "1"}, {"image": "2"}]
    assert calls == ["validation", "validation"] and deferred.resolved and "3 items" in repr(deferred)
    # nested: a deferred list of the items of another one stays pending until iterated
    items = DeferredList(image_items, DeferredList(lambda: [str(tmp_path / "ready")]))
    assert not items.resolved and list(items) == [{"image": str(tmp_path / "ready")}]


def test_training_report_names_only_outputs_that_exist(tmp_path):
    ckpt, out, logs = tmp_path / "models", tmp_path / "eval", tmp_path / "logs"
    nothing = training_report(ckpt, out, logs)
    assert str(tmp_path) not in nothing
    assert "no validation ran, so no model was saved" in nothing and "no epoch was completed" in nothing
    ckpt.mkdir()
    (ckpt / "checkpoint_last.pt").touch()
    logs.mkdir()
    (logs / "events.out.tfevents.1.host").touch()
    partial = training_report(ckpt, out, logs)
    assert str(ckpt / "checkpoint_last.pt") in partial and str(logs) in partial
    assert "model.pt" not in partial and "metrics.csv" not in partial and "no model was saved" in partial
    (ckpt / "model.pt").touch()
    out.mkdir()
    (out / "metrics.csv").touch()
    full = training_report(ckpt, out, logs)
    assert str(ckpt / "model.pt") in full and str(out / "metrics.csv") in full and "none" not in full


@pytest.mark.parametrize(("interval", "max_epochs", "at_end", "expected"), [
    (2, 1, True, [1]), (3, 7, True, [3, 6, 7]), (3, 6, True, [3, 6]), (3, 7, False, [3, 6]), (1, 3, True, [1, 2, 3]),
])
def test_epoch_validation_handler_also_validates_the_last_epoch(interval, max_epochs, at_end, expected):
    from monai.engines import Evaluator

    validated: list[int] = []
    trainer = Engine(lambda engine, batch: None)
    validator = Evaluator(device="cpu", val_data_loader=[0], iteration_update=lambda engine, batch: None)
    validator.add_event_handler(Events.COMPLETED, lambda _: validated.append(trainer.state.epoch))
    EpochValidationHandler(validator, interval=interval, exec_at_end=at_end).attach(trainer)
    trainer.run([0, 1], max_epochs=max_epochs)
    assert validated == expected
    # max_epochs is read when an epoch ends: a finished run continued to more epochs (as a resumed one) validates
    # its new last epoch
    validated.clear()
    last = max_epochs + 2
    trainer.run([0, 1], max_epochs=last)
    assert validated == [e for e in range(max_epochs + 1, last + 1) if e % interval == 0 or (at_end and e == last)]


def test_epoch_validation_handler_rejects_a_bad_interval():
    with pytest.raises(ValueError, match="interval must be at least 1"):
        EpochValidationHandler(None, interval=0)


# --------------------------------------------------------------------------------------------- transforms
def test_adapt_channels():
    rgb = MetaTensor(torch.tensor([[[1.0]], [[2.0]], [[3.0]]]), meta={"filename_or_obj": "photo.png"})
    grey = AdaptChannels(1)(rgb)
    assert grey.shape == (1, 1, 1) and isinstance(grey, MetaTensor)
    assert float(grey) == pytest.approx(0.299 * 1 + 0.587 * 2 + 0.114 * 3)
    assert AdaptChannels(3)(grey).shape == (3, 1, 1)
    rgba = torch.rand(4, 5, 6)
    torch.testing.assert_close(AdaptChannels(3)(rgba), rgba[:3])
    np.testing.assert_allclose(AdaptChannels(3)(np.ones((1, 2, 2))), np.ones((3, 2, 2)))
    assert AdaptChannels(1)(grey) is grey
    with pytest.raises(ValueError, match="photo.png: the image has 3 channels and the network takes 2"):
        AdaptChannels(2)(rgb)
    with pytest.raises(ValueError, match="photo.png: a 2D image .* 3D network"):
        AdaptChannels(1, spatial_dims=3)(rgb)
    out = AdaptChannelsd(keys="image", channels=3)({"image": torch.rand(1, 4, 4), "other": 1})
    assert out["image"].shape == (3, 4, 4) and out["other"] == 1


def test_save_mask_picks_png_for_image_files_and_nifti_otherwise(tmp_path):
    from monai.transforms import LoadImage

    (tmp_path / "in").mkdir()
    Image.fromarray(np.zeros((7, 5), np.uint8)).save(tmp_path / "in" / "photo.png")  # PIL size (5, 7)
    nib.save(nib.Nifti1Image(np.zeros((5, 7), np.float32), np.diag([0.5, 2.0, 1.0, 1.0])),
             tmp_path / "in" / "slice.nii.gz")
    saver = SaveMaskd(keys="pred", output_dir=tmp_path / "out", print_log=False)
    load = LoadImage(image_only=True, ensure_channel_first=True)
    for src in ("photo.png", "slice.nii.gz"):
        mask = load(tmp_path / "in" / src)  # (1, 5, 7) either way: MONAI reads PNGs transposed
        mask[:] = 0
        mask[0, 1, 2] = 1
        saver({"pred": mask})
    png = np.asarray(Image.open(tmp_path / "out" / "photo_seg.png"))
    assert png.shape == (7, 5) and png.dtype == np.uint8 and png[2, 1] == 1 and png.sum() == 1
    nii = nib.load(tmp_path / "out" / "slice_seg.nii.gz")
    data = np.asarray(nii.dataobj)
    assert data.shape == (5, 7) and data[1, 2] == 1 and data.sum() == 1
    np.testing.assert_allclose(nii.header.get_zooms()[:2], (0.5, 2.0))
    with pytest.raises(TypeError, match="MetaTensor"):
        saver({"pred": torch.zeros(1, 5, 7)})


# --------------------------------------------------------------------------------------------- metrics
def test_case_metrics_saver_scores_in_the_labels_spacing(tmp_path):
    pred = torch.zeros(1, 20, 20)
    pred[0, 5:10, 5:10] = 1
    label = torch.zeros(1, 20, 20)
    label[0, 5:10, 7:12] = 1
    cases = []
    for spacing in (1.0, 2.0):
        affine = torch.diag(torch.tensor([spacing, spacing, 1.0, 1.0]))
        cases.append({"pred": MetaTensor(pred.clone(), affine=affine),
                      "label": MetaTensor(label.clone(), affine=affine),
                      "image": MetaTensor(pred.clone(), meta={"filename_or_obj": f"case{spacing}.png"})})
    engine = Engine(lambda e, batch: batch)
    saver = CaseMetricsSaver(tmp_path, num_classes=2)
    saver.attach(engine)
    engine.run([[cases[0]], [cases[1]]], max_epochs=1)
    with open(tmp_path / "test_per_case.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["case"] for r in rows] == ["case1.0.png", "case2.0.png"]
    assert float(rows[0]["dice"]) == pytest.approx(float(rows[1]["dice"])) == pytest.approx(0.6)
    assert float(rows[1]["hd95"]) == pytest.approx(2 * float(rows[0]["hd95"]))
    assert float(rows[1]["asd"]) == pytest.approx(2 * float(rows[0]["asd"]))
    summary = json.loads((tmp_path / "test_summary.json").read_text())
    assert summary["cases"] == 2 and summary["dice"]["mean"] == pytest.approx(0.6)
    assert engine.state.metrics["test_dice"] == pytest.approx(0.6)
    bad = {"pred": MetaTensor(torch.zeros(1, 4, 4)), "label": MetaTensor(torch.zeros(1, 5, 5))}
    failing = Engine(lambda e, b: b)
    failing.add_event_handler(Events.ITERATION_COMPLETED, saver.collect)
    with pytest.raises(ValueError, match="differ in shape; invert the preprocessing"):
        failing.run([[bad]])


# --------------------------------------------------------------------------------------------- distributed
class StatsHandler:  # stands in for MONAI's by class name, as handlers_for_rank matches names
    def attach(self, engine):  # pragma: no cover - never attached here
        raise AssertionError


class ValidationHandler(StatsHandler):
    pass


def test_handlers_for_rank(tmp_path):
    net = torch.nn.Linear(2, 2)
    last = LastCheckpoint(tmp_path, {"model": net}, resume=True)
    stats, validation = StatsHandler(), ValidationHandler()
    handlers = [validation, stats, last]
    assert handlers_for_rank(handlers, rank=0) == handlers
    other = handlers_for_rank(handlers, rank=1)
    assert other[0] is validation and len(other) == 2
    assert isinstance(other[1], ResumeOnly) and other[1].checkpoint is last
    assert handlers_for_rank(None, rank=1) == []


def test_resume_only_loads_and_never_writes(tmp_path):
    source = torch.nn.Linear(2, 2)
    writer_engine = Engine(lambda e, b: None)
    writer = LastCheckpoint(tmp_path, {"model": source})
    writer.attach(writer_engine)
    writer_engine.run([0, 1], max_epochs=1)
    path = tmp_path / "checkpoint_last.pt"
    stamp = path.stat().st_mtime_ns
    target = torch.nn.Linear(2, 2)
    engine = Engine(lambda e, b: None)
    ResumeOnly(LastCheckpoint(tmp_path, {"model": target}, resume=True)).attach(engine)
    engine.run([0, 1], max_epochs=3)
    assert torch.equal(target.weight, source.weight)
    assert path.stat().st_mtime_ns == stamp


def test_init_distributed_outside_torchrun(monkeypatch):
    for key in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(key, raising=False)
    with pytest.raises(RuntimeError, match="torchrun --nproc_per_node"):
        init_distributed("cpu")


# --------------------------------------------------------------------------------------------- networks
def test_unetplusplus_returns_one_tensor_with_the_parents_keys():
    from monai.networks.nets import BasicUNetPlusPlus

    kwargs = dict(spatial_dims=2, in_channels=1, out_channels=2, features=(4, 4, 8, 8, 16, 4))
    net, parent = UNetPlusPlus(**kwargs).eval(), BasicUNetPlusPlus(**kwargs).eval()
    parent.load_state_dict(net.state_dict())  # strict: identical keys
    x = torch.rand(1, 1, 32, 32)
    with torch.no_grad():
        out = net(x)
        assert isinstance(out, torch.Tensor) and out.shape == (1, 2, 32, 32)
        torch.testing.assert_close(out, parent(x)[-1])
    with pytest.raises(ValueError, match="deep_supervision"):
        UNetPlusPlus(**kwargs, deep_supervision=True)
