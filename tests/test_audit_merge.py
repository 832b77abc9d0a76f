"""``python -m data_prep merge-corrections``: corrected masks back into a datalist, the originals kept."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from data_prep.__main__ import main
from data_prep.corrections import merge_corrections
from data_prep.io import DataPrepError


def _dataset(root: Path, n: int = 4) -> Path:
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    entries = []
    for i in range(n):
        Image.fromarray(np.full((6, 5), 100, np.uint8)).save(root / "images" / f"IMD{i}.png")
        Image.fromarray(np.zeros((6, 5), np.uint8)).save(root / "masks" / f"IMD{i}_lesion.png")
        entries.append({"image": f"images/IMD{i}.png", "label": f"masks/IMD{i}_lesion.png"})
    path = root / "datalist.json"
    path.write_text(json.dumps({"training": entries, "test": [{"image": "images/IMD0.png"}], "name": "toy"}))
    return path


def _mask(path: Path, shape=(6, 5)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    m = np.zeros(shape, np.uint8)
    m[1:3, 1:3] = 1
    Image.fromarray(m).save(path)
    return path


def test_folder_of_corrections_wins_and_keeps_the_original(tmp_path):
    datalist = _dataset(tmp_path / "data")
    fixed = _mask(tmp_path / "fixed" / "IMD1_lesion.png")  # named like the label
    by_image = _mask(tmp_path / "fixed" / "IMD3.png")  # named like the image
    out = tmp_path / "new" / "datalist.json"
    assert main(["merge-corrections", "--datalist", str(datalist), "--corrections", str(tmp_path / "fixed"),
                 "--out", str(out)]) == 0
    doc = json.loads(out.read_text())
    train = doc["training"]
    resolve = (lambda p: (out.parent / p).resolve())
    assert resolve(train[1]["label"]) == fixed.resolve() and resolve(train[3]["label"]) == by_image.resolve()
    assert resolve(train[1]["label_original"]) == (tmp_path / "data" / "masks" / "IMD1_lesion.png").resolve()
    assert "label_original" not in train[0] and "label_original" not in train[2]
    assert resolve(train[0]["label"]).is_file() and resolve(doc["test"][0]["image"]).is_file()
    assert len(train[1]["corrected_sha256"]) == 64
    assert doc["corrections"][-1]["n_merged"] == 2 and doc["name"] == "toy"
    # the original datalist and masks are untouched
    assert json.loads(datalist.read_text())["training"][1]["label"] == "masks/IMD1_lesion.png"
    # a second round of corrections keeps the first original
    again = _mask(tmp_path / "fixed2" / "IMD1_lesion.png")
    merge_corrections(out, tmp_path / "fixed2", tmp_path / "new" / "round2.json")
    e = json.loads((tmp_path / "new" / "round2.json").read_text())["training"][1]
    assert resolve(e["label"]) == again.resolve()
    assert resolve(e["label_original"]) == (tmp_path / "data" / "masks" / "IMD1_lesion.png").resolve()


def test_review_datalist_as_corrections(tmp_path):
    datalist = _dataset(tmp_path / "data")
    fixed = _mask(tmp_path / "review" / "x.png")
    review = tmp_path / "review" / "review_datalist.json"
    review.write_text(json.dumps({"training": [{"case": "IMD2", "image": str(tmp_path / "data/images/IMD2.png"),
                                                "label": "x.png"}]}))
    report = merge_corrections(datalist, review, tmp_path / "out.json")
    assert [Path(m["label"]) for m in report["merged"]] == [fixed.resolve()]


def test_bad_corrections_are_refused(tmp_path):
    datalist = _dataset(tmp_path / "data")
    _mask(tmp_path / "fixed" / "IMD9.png")
    with pytest.raises(DataPrepError, match="(?s)match no entry.*IMD9.png"):
        merge_corrections(datalist, tmp_path / "fixed", tmp_path / "out.json")
    _mask(tmp_path / "wrong" / "IMD0.png", shape=(7, 5))
    with pytest.raises(DataPrepError, match="IMD0.png.*shape"):
        merge_corrections(datalist, tmp_path / "wrong", tmp_path / "out.json")
    with pytest.raises(DataPrepError, match="never over it"):
        merge_corrections(datalist, tmp_path / "wrong", datalist)
    (tmp_path / "exists.json").write_text("{}")
    with pytest.raises(DataPrepError, match="--overwrite"):
        merge_corrections(datalist, tmp_path / "wrong", tmp_path / "exists.json")
    with pytest.raises(DataPrepError, match="corrections not found"):
        merge_corrections(datalist, tmp_path / "nothing", tmp_path / "out.json")
    assert main(["merge-corrections", "--datalist", str(datalist), "--corrections", str(tmp_path / "fixed"),
                 "--out", str(tmp_path / "o.json")]) == 1
