"""``ph2``, ``isic2016`` and ``isic2016_ph2``."""

from __future__ import annotations

import numpy as np
import pytest
from fixtures_datasets import blob_mask, make_isic2016, make_ph2_distributed, read_json, read_png, rgb_image, save

from data_prep.__main__ import main


def test_ph2_as_distributed_full_size_bmp(tmp_path, capsys):
    cases = {f"IMD{i:03d}": (48, 64) for i in (2, 3, 8, 9, 10, 13, 14, 15, 16)}
    cases["IMD017"] = (574, 765)  # the original BMP size
    src = make_ph2_distributed(tmp_path / "PH2Dataset", cases)
    out = tmp_path / "out"
    assert main(["ph2", "--src", str(src), "--out", str(out), "--seed", "3"]) == 0
    assert "ph2: converted 10, reused 0, skipped 0 (training 7, validation 1, test 2)" in capsys.readouterr().out
    dl = read_json(out / "datalist.json")
    entries = {e["image"]: e for s in ("training", "validation", "test") for e in dl[s]}
    big = entries["images/IMD017.png"]
    image, label = read_png(out / big["image"]), read_png(out / big["label"])
    assert image.shape == (574, 765, 3) and label.shape == (574, 765)
    assert np.array_equal(label, blob_mask(574, 765, 9)) and np.array_equal(image, rgb_image(574, 765, 9))
    # the split is fixed by the seed, whatever the order of the files
    again = tmp_path / "again"
    assert main(["ph2", "--src", str(src / "PH2 Dataset images"), "--out", str(again), "--seed", "3"]) == 0
    assert read_json(again / "datalist.json") == dl


def test_ph2_missing_lesion_and_missing_image(tmp_path, capsys):
    src = make_ph2_distributed(tmp_path / "src", {"IMD002": (20, 24), "IMD003": (20, 24), "IMD004": (20, 24)})
    base = src / "PH2 Dataset images"
    (base / "IMD003/IMD003_lesion/IMD003_lesion.bmp").unlink()
    (base / "IMD004/IMD004_Dermoscopic_Image/IMD004.bmp").unlink()
    assert main(["ph2", "--src", str(src), "--out", str(tmp_path / "out")]) == 0
    text = capsys.readouterr().out
    assert "converted 1, reused 0, skipped 2" in text
    assert "IMD003.bmp: image without mask (no IMD003/IMD003_lesion/IMD003_lesion.bmp)" in text
    assert "IMD004_lesion.bmp: mask without image" in text


def test_ph2_resized_layout_and_unknown_layout(tmp_path, capsys):
    for i in range(4):
        save(tmp_path / "ph2/images" / f"IMD00{i}.png", rgb_image(19, 25, i))
        save(tmp_path / "ph2/masks" / f"IMD00{i}.png", blob_mask(19, 25, i) * 255)
    assert main(["ph2", "--src", str(tmp_path / "ph2"), "--out", str(tmp_path / "out")]) == 0
    assert "note: PH2 layout: resized" in capsys.readouterr().out
    (tmp_path / "empty").mkdir()
    assert main(["ph2", "--src", str(tmp_path / "empty"), "--out", str(tmp_path / "o2")]) == 1
    assert "neither 'PH2 Dataset images/IMDxxx" in capsys.readouterr().err


def test_isic2016_sections(tmp_path, capsys):
    src = make_isic2016(tmp_path / "src", n_train=10, n_test=3)
    (src / "ISBI2016_ISIC_Part1_Training_Data" / "ATTRIBUTION.txt").write_text("ignored")
    out = tmp_path / "out"
    assert main(["isic2016", "--src", str(src), "--out", str(out), "--val-fraction", "0.2"]) == 0
    assert "converted 13, reused 0, skipped 0 (training 8, validation 2, test 3)" in capsys.readouterr().out
    dl = read_json(out / "datalist.json")
    assert dl["test"][0] == {"image": "images/isic_test/ISIC_0000100.png", "label": "labels/isic_test/ISIC_0000100.png"}
    assert set(np.unique(read_png(out / dl["training"][0]["label"]))) == {0, 1}
    assert read_png(out / dl["training"][0]["image"]).shape == (30, 40, 3)


def test_isic2016_missing_test_folder_is_an_error(tmp_path, capsys):
    src = make_isic2016(tmp_path / "src", n_train=2, n_test=0)
    assert main(["isic2016", "--src", str(src), "--out", str(tmp_path / "out")]) == 1
    assert "missing folder" in capsys.readouterr().err


def test_isic2016_to_ph2_protocol(tmp_path, capsys):
    isic = make_isic2016(tmp_path / "isic", n_train=10, n_test=0)
    ph2 = make_ph2_distributed(tmp_path / "ph2", {"IMD002": (20, 24), "IMD003": (22, 24)})
    out = tmp_path / "out"
    assert main(["isic2016_ph2", "--src", str(isic), "--ph2-src", str(ph2), "--out", str(out)]) == 0
    assert "converted 12, reused 0, skipped 0 (training 9, validation 1, test 2)" in capsys.readouterr().out
    dl = read_json(out / "datalist.json")
    assert [e["image"] for e in dl["test"]] == ["images/ph2/IMD002.png", "images/ph2/IMD003.png"]
    assert all(e["image"].startswith("images/isic/") for e in dl["training"] + dl["validation"])


@pytest.mark.realdata
def test_real_ph2_resized_copy(real_dataset, tmp_path, capsys):
    src = real_dataset("ph2")
    out = tmp_path / "out"
    assert main(["ph2", "--src", str(src), "--out", str(out), "--limit", "10"]) == 0
    assert "ph2: converted 10, reused 0, skipped 0 (training 7, validation 1, test 2)" in capsys.readouterr().out
    dl = read_json(out / "datalist.json")
    e = dl["training"][0]
    image, label = read_png(out / e["image"]), read_png(out / e["label"])
    assert image.shape == (192, 256, 3) and label.shape == (192, 256)
    assert set(np.unique(label)) == {0, 1}
    summary = read_json(out / "summary.json")
    assert 0.05 < summary["labels"]["training"]["lesion_fraction"]["mean"] < 0.9
