"""``kvasir``, ``cvc_clinicdb`` and ``polyp_benchmark``."""

from __future__ import annotations

import numpy as np
from fixtures_datasets import (
    blob_mask,
    grey_image,
    make_cvc_clinicdb,
    make_kvasir,
    make_polyp_benchmark,
    read_json,
    read_png,
    save_jpeg,
)

from data_prep.__main__ import main


def test_kvasir_jpeg_masks_are_thresholded(tmp_path, capsys):
    src = make_kvasir(tmp_path / "src", n=5)
    out = tmp_path / "out"
    assert main(["kvasir", "--src", str(src), "--out", str(out), "--split", "0.6", "0.2", "0.2"]) == 0
    assert "kvasir: converted 5, reused 0, skipped 0 (training 3, validation 1, test 1)" in capsys.readouterr().out
    dl = read_json(out / "datalist.json")
    for e in dl["training"] + dl["validation"] + dl["test"]:
        i = int(e["image"][len("images/cju"):][:2])
        label = read_png(out / e["label"])
        assert label.shape == (48, 64) and set(np.unique(label)) == {0, 1}
        assert (label != blob_mask(48, 64, i)).mean() < 0.01  # JPEG edges only
        assert read_png(out / e["image"]).shape == (48, 64, 3)


def test_kvasir_grey_jpeg_in_masks_is_skipped(tmp_path, capsys):
    src = make_kvasir(tmp_path / "src", n=3)
    name = sorted((src / "Kvasir-SEG/masks").iterdir())[0].name
    save_jpeg(src / "Kvasir-SEG/masks" / name, grey_image(48, 64))
    assert main(["kvasir", "--src", str(src / "Kvasir-SEG"), "--out", str(tmp_path / "out")]) == 0
    text = capsys.readouterr().out
    assert "converted 2, reused 0, skipped 1" in text and f"{name}: not a binary mask" in text


def test_cvc_clinicdb_tif_and_png_variants(tmp_path, capsys):
    tif = make_cvc_clinicdb(tmp_path / "tif", n=5, variant="tif")
    png = make_cvc_clinicdb(tmp_path / "png", n=5, variant="png")
    assert main(["cvc_clinicdb", "--src", str(tif), "--out", str(tmp_path / "o1")]) == 0
    assert main(["cvc_clinicdb", "--src", str(png), "--out", str(tmp_path / "o2")]) == 0
    a, b = read_json(tmp_path / "o1/datalist.json"), read_json(tmp_path / "o2/datalist.json")
    assert a == b and sum(len(a[s]) for s in ("training", "validation", "test")) == 5
    for e in a["training"]:
        assert np.array_equal(read_png(tmp_path / "o1" / e["label"]), read_png(tmp_path / "o2" / e["label"]))
    assert main(["cvc_clinicdb", "--src", str(tmp_path), "--out", str(tmp_path / "o3")]) == 1
    assert "no 'Original' + 'Ground Truth' folders" in capsys.readouterr().err


def test_polyp_benchmark_sections(tmp_path, capsys):
    src = make_polyp_benchmark(tmp_path / "src", n_train=10, n_test=2)
    out = tmp_path / "out"
    assert main(["polyp_benchmark", "--src", str(src), "--out", str(out)]) == 0
    assert "converted 20, reused 0, skipped 0" in capsys.readouterr().out
    dl = read_json(out / "datalist.json")
    assert len(dl["training"]) == 9 and len(dl["validation"]) == 1 and len(dl["test"]) == 10
    for name in ("Kvasir", "CVC-ClinicDB", "CVC-ColonDB", "ETIS-LaribPolypDB", "CVC-300"):
        assert [e["image"] for e in dl[f"test_{name}"]] == [f"images/test/{name}/0.png", f"images/test/{name}/1.png"]
    label = read_png(out / "labels/test/Kvasir/0.png")
    assert label[0, 0] == 1 and set(np.unique(label)) == {0, 1}  # 200 thresholded at 128


def test_polyp_benchmark_missing_test_dataset(tmp_path, capsys):
    src = make_polyp_benchmark(tmp_path / "src", n_train=2, n_test=1)
    import shutil

    shutil.rmtree(src / "TestDataset")
    assert main(["polyp_benchmark", "--src", str(src), "--out", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert "missing folder" in err and "TestDataset" in err
