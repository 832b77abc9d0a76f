"""``dale_monai.audit`` end to end on tiny PNG/NIfTI datasets (bright disks labelled by the disk), trained through the
synthetic2d bundle's own configs with a 1x1-convolution network: ranking, out-of-fold discipline, maps in the
input geometry, resume across folds, bad input, the command line."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from audit_fixtures import COLS, ROWS, THRESHOLD_NET, TINY, bundle_copy, make_dataset
from PIL import Image

from dale_monai.__main__ import main
from dale_monai.audit import AuditConfigError, AuditInputError, BundleTraining, LabelAudit, kfold_indices
from dale_monai.predict import CheckpointError

pytestmark = pytest.mark.usefixtures("one_thread")

CORRUPT, TWIN = 3, 2  # case03 repeats case02's image with its label disk moved off the lesion
#: for the tests that check bookkeeping, not ranking: two epochs per fold
QUICK = {**TINY, "num_epochs": 2}


def _audit(bundle: Path, **kw) -> LabelAudit:
    opts = dict(configs=["plain_train.json"], overrides=TINY, folds=3, worst=3, progress=False)
    opts.update(kw)
    return LabelAudit(bundle, **opts)


@pytest.fixture(scope="module")
def audited(tmp_path_factory):
    root = tmp_path_factory.mktemp("audit")
    datalist = make_dataset(root / "data", corrupt={CORRUPT: "shift"}, twins={CORRUPT: TWIN})
    bundle = bundle_copy(root)
    result = _audit(bundle).run(datalist, root / "out")
    return root, datalist, bundle, result


def test_folds_partition_the_cases():
    parts = kfold_indices(10, 3, seed=1)
    assert sorted(np.concatenate(parts).tolist()) == list(range(10))
    assert sorted(len(p) for p in parts) == [3, 3, 4]
    assert all((a == b).all() for a, b in zip(parts, kfold_indices(10, 3, seed=1)))
    with pytest.raises(ValueError, match="at least 2"):
        kfold_indices(10, 1)
    with pytest.raises(ValueError, match="must not exceed"):
        kfold_indices(2, 3)


def test_corrupted_case_ranks_below_its_clean_twin(audited):
    _, _, _, result = audited
    score = {r["case"]: r for r in result.rows}
    bad, twin = score[f"case{CORRUPT:02d}"], score[f"case{TWIN:02d}"]
    assert bad["score"] < twin["score"]
    assert bad["rank"] == 1
    assert bad["cleanlab_suspicion"] > twin["cleanlab_suspicion"]
    assert bad["suspected_pixel_fraction"] > twin["suspected_pixel_fraction"]
    assert "cleanlab" in bad["agreeing_signals"]
    # the suspected pixels of the corrupted case are where its label and its lesion disagree
    lab = result.labels[f"case{CORRUPT:02d}"]
    twin_lab = result.labels[f"case{TWIN:02d}"]
    wrong = lab != twin_lab
    issues = result.issues[f"case{CORRUPT:02d}"]
    assert (issues & wrong).sum() / max(1, issues.sum()) > 0.8


def test_table_review_list_and_pictures(audited):
    root, datalist, _, result = audited
    out = root / "out"
    rows = list(csv.DictReader(open(out / "audit.csv")))
    assert [r["case"] for r in rows] == [r["case"] for r in result.rows]
    assert [float(r["score"]) for r in rows] == sorted(float(r["score"]) for r in rows)
    assert {"case", "score", "suspected_pixel_fraction", "agreeing_signals", "suspicion_map"} <= set(rows[0])
    review = json.loads((out / "review_datalist.json").read_text())
    assert [e["case"] for e in review["training"]] == [r["case"] for r in rows[:3]]
    assert all(Path(e["image"]).is_file() and Path(e["label"]).is_file() for e in review["training"])
    assert len(list((out / "overlays").glob("*_overlay.png"))) == 3
    sheet = Image.open(out / "contact_sheet.png")
    assert sheet.size[0] >= 3 * 100


def test_maps_are_in_the_input_geometry(audited):
    root, _, _, result = audited
    for row in result.rows:
        m = np.asarray(Image.open(row["suspicion_map"]))
        assert m.shape == (ROWS, COLS)  # the PNG's own rows and columns, not the 16x16 network grid
    worst = np.asarray(Image.open(result.rows[0]["suspicion_map"])).astype(float) / 255
    label = np.asarray(Image.open(result.rows[0]["label"])) > 0
    image = np.asarray(Image.open(result.rows[0]["image"])) > 127
    wrong = label != image
    assert worst[wrong].mean() > worst[~wrong].mean() + 0.3


def test_out_of_fold_discipline(tmp_path, monkeypatch):
    """Every case is predicted once, by a model whose training list did not hold it."""
    datalist = make_dataset(tmp_path / "data", n=9)
    bundle = bundle_copy(tmp_path)
    trained_on, predicted = [], []
    train, predict = BundleTraining.train, BundleTraining.predict

    def spy_train(self, parser, stats_file=None):
        trained_on.append({Path(c["image"]).name for c in parser.get_parsed_content("train_datalist")})
        return train(self, parser, stats_file)

    def spy_predict(parser, items):
        predicted.append({Path(c["image"]).name for c in items})
        return predict(parser, items)

    monkeypatch.setattr(BundleTraining, "train", spy_train)
    monkeypatch.setattr(BundleTraining, "predict", staticmethod(spy_predict))
    result = _audit(bundle, overrides=QUICK).run(datalist, tmp_path / "out")
    assert len(trained_on) == len(predicted) == 3
    for seen, scored in zip(trained_on, predicted):
        assert not seen & scored
        assert len(seen | scored) == 9
    assert sorted(n for s in predicted for n in s) == sorted(f"case{i:02d}.png" for i in range(9))
    for k in range(3):
        rec = json.loads((tmp_path / "out" / "folds" / f"fold{k}" / "fold.json").read_text())
        assert not set(rec["held_out"]) & set(rec["trained_on"])
        assert all(result.fold_of[c] == k for c in rec["held_out"])


def test_resume_across_folds(tmp_path, monkeypatch):
    datalist = make_dataset(tmp_path / "data", n=9)
    bundle = bundle_copy(tmp_path)
    first = _audit(bundle, overrides=QUICK).run(datalist, tmp_path / "out")
    with pytest.raises(FileExistsError, match="--overwrite"):
        _audit(bundle, overrides=QUICK).run(datalist, tmp_path / "out")
    # an interrupted run: fold 1 never finished
    (tmp_path / "out" / "folds" / "fold1" / "fold.json").unlink()
    calls = []
    train = BundleTraining.train
    monkeypatch.setattr(BundleTraining, "train", lambda self, p, s=None: calls.append(1) or train(self, p, s))
    again = _audit(bundle, overrides=QUICK).run(datalist, tmp_path / "out", overwrite=True)
    assert len(calls) == 1  # folds 0 and 2 were reused
    assert [r["case"] for r in again.rows] == [r["case"] for r in first.rows]
    np.testing.assert_allclose([r["score"] for r in again.rows], [r["score"] for r in first.rows])
    # folds of another configuration are refused, not silently mixed
    (tmp_path / "out" / "audit.csv").unlink()
    with pytest.raises(AuditConfigError, match="another configuration"):
        _audit(bundle, overrides={**QUICK, "num_epochs": 3}).run(datalist, tmp_path / "out")


def test_nifti_inputs_give_nifti_maps_with_their_header(tmp_path):
    """A trained checkpoint (--folds 0) scores NIfTI cases; each map is a NIfTI on its image's grid and affine."""
    affine = np.array([[0.7, 0, 0, -5.0], [0, 1.3, 0, 8.0], [0, 0, 2.0, 1.0], [0, 0, 0, 1]])
    rng = np.random.default_rng(0)
    (tmp_path / "data").mkdir()
    entries = []
    for i in range(4):
        mask = np.zeros((COLS, ROWS), np.uint8)
        mask[5 + i:12 + i, 4:10] = 1
        img = np.where(mask > 0, 200.0, 30.0) + rng.normal(0, 5, mask.shape)
        nib.save(nib.Nifti1Image(img.astype(np.float32), affine), tmp_path / "data" / f"c{i}.nii.gz")
        nib.save(nib.Nifti1Image(mask, affine), tmp_path / "data" / f"c{i}_seg.nii.gz")
        entries.append({"image": f"c{i}.nii.gz", "label": f"c{i}_seg.nii.gz"})
    (tmp_path / "data" / "datalist.json").write_text(json.dumps({"training": entries}))
    bundle = bundle_copy(tmp_path)
    conv = torch.nn.Conv2d(1, 1, 1)
    with torch.no_grad():
        conv.weight.fill_(10.0)
        conv.bias.fill_(-5.0)
    torch.save(conv.state_dict(), tmp_path / "weights.pt")
    result = _audit(bundle, folds=0, checkpoint=str(tmp_path / "weights.pt")).run(
        tmp_path / "data" / "datalist.json", tmp_path / "out")
    for row in result.rows:
        assert row["suspicion_map"].endswith("_suspicion.nii.gz")
        m = nib.load(row["suspicion_map"])
        assert m.shape[:2] == (COLS, ROWS)
        np.testing.assert_allclose(m.affine, affine, atol=1e-4)


def test_case_stats_of_another_run_are_a_signal(tmp_path):
    """A CaseStatsHandler CSV of an earlier training run (cases named by image path) gives the loss signal."""
    datalist = make_dataset(tmp_path / "data", n=4)
    bundle = bundle_copy(tmp_path)
    torch.save(torch.nn.Conv2d(1, 1, 1).state_dict(), tmp_path / "w.pt")
    stats = tmp_path / "stats.csv"
    rows = ["case,epoch,iteration,loss,omega_mean,omega_below_1"]
    for i in range(4):
        image = tmp_path / "data" / "images" / f"case{i:02d}.png"
        rows += [f"{image},1,1,{0.1 * i},{1 - 0.1 * i},0.5", f"{image},2,2,{0.1 * i + 0.2},{1 - 0.1 * i},0.5"]
    stats.write_text("\n".join(rows) + "\n")
    result = _audit(bundle, folds=0, checkpoint=str(tmp_path / "w.pt"), case_stats=[str(stats)]).run(
        datalist, tmp_path / "out")
    np.testing.assert_allclose(result.signals["loss"], [0.1, 0.2, 0.3, 0.4])
    np.testing.assert_allclose(result.signals["omega"], [0.0, 0.1, 0.2, 0.3], atol=1e-9)
    assert "loss" in json.loads((tmp_path / "out" / "audit.json").read_text())["settings"]["signals_combined"]


def test_bad_inputs_name_the_file(tmp_path):
    bundle = bundle_copy(tmp_path)
    datalist = make_dataset(tmp_path / "data", n=6)
    # a label of another size than its image
    bad = tmp_path / "data" / "labels" / "case04_mask.png"
    Image.fromarray(np.zeros((ROWS + 3, COLS), np.uint8)).save(bad)
    with pytest.raises(AuditInputError, match="case04_mask.png.*differs"):
        _audit(bundle).run(datalist, tmp_path / "out")
    # a datalist without training cases
    empty = tmp_path / "data" / "empty.json"
    empty.write_text(json.dumps({"training": [], "validation": []}))
    with pytest.raises(AuditInputError, match="empty.json.*training"):
        _audit(bundle).run(empty, tmp_path / "out2")
    with pytest.raises(FileNotFoundError, match="missing.json"):
        _audit(bundle).run(tmp_path / "missing.json", tmp_path / "out3")
    # scoring with trained weights: a bundle without them
    with pytest.raises(CheckpointError, match="model.pt"):
        _audit(bundle, folds=0).run(datalist, tmp_path / "out4")
    with pytest.raises(AuditConfigError, match="folds"):
        _audit(bundle, folds=1)
    with pytest.raises(AuditConfigError, match="unknown signal"):
        _audit(bundle, signals=["magic"])
    with pytest.raises(AuditConfigError, match="pixel signals"):
        _audit(bundle, pixel_signals=["magic"])


def test_command_line(tmp_path, capsys):
    datalist = make_dataset(tmp_path / "data", n=6, corrupt={1: "shift"})
    bundle = bundle_copy(tmp_path)
    args = ["audit", "--bundle", str(bundle), "--datalist", str(datalist), "--output", str(tmp_path / "out"),
            "--config", "plain_train.json", "--folds", "2", "--worst", "2", "--no-progress",
            "--override", f"network_def={json.dumps(THRESHOLD_NET)}"]
    for key, value in QUICK.items():
        if key != "network_def":
            args += [f"--{key}", json.dumps(value)]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "audited 6 training case(s)" in out and "review_datalist.json" in out
    assert main(args) == 2
    assert "--overwrite" in capsys.readouterr().err
    empty = tmp_path / "empty.json"
    empty.write_text(json.dumps({"validation": []}))
    args[args.index(str(datalist))] = str(empty)
    assert main(args[:6] + [str(tmp_path / "out5")] + args[7:]) == 2
    assert "empty.json" in capsys.readouterr().err
