"""``folder`` (generic images/masks) and ``mosmed`` (LViT layout)."""

from __future__ import annotations

import numpy as np
from fixtures_datasets import blob_mask, grey_image, make_mosmed, read_json, read_png, rgb_image, save, save_jpeg

from data_prep.__main__ import main


def _folder(tmp_path):
    src = tmp_path / "src"
    save(src / "images/a.png", grey_image(20, 22, 0))
    save(src / "masks/a_mask.png", blob_mask(20, 22, 0))  # 0/1
    save(src / "images/b.bmp", rgb_image(20, 22, 1))
    save(src / "masks/b_segmentation.bmp", blob_mask(20, 22, 1) * 255)
    save(src / "images/c.tif", rgb_image(20, 22, 2))
    save(src / "masks/c.png", blob_mask(20, 22, 2), palette=True)  # palette 0/1
    save_jpeg(src / "images/d.jpg", rgb_image(20, 22, 3))
    save_jpeg(src / "masks/d_mask.jpg", blob_mask(40, 44, 3) * 255)  # wrong size
    save(src / "images/e.png", grey_image(20, 22, 4))  # no mask
    save(src / "masks/f_mask.png", blob_mask(20, 22, 5))  # no image
    return src


def test_folder_matches_stems_with_suffixes_and_reports_the_rest(tmp_path, capsys):
    src = _folder(tmp_path)
    out = tmp_path / "out"
    assert main(["folder", "--src", str(src), "--out", str(out), "--split", "1", "0", "0"]) == 0
    text = capsys.readouterr().out
    assert "folder: converted 3, reused 0, skipped 3 (training 3, validation 0, test 0)" in text
    assert "images/e.png: image without mask" in text and "masks/f_mask.png: mask without image" in text
    assert "image/mask size mismatch (image 20x22x3, mask 40x44)" in text
    for name, i in (("a", 0), ("b", 1), ("c", 2)):
        assert np.array_equal(read_png(out / f"labels/{name}.png"), blob_mask(20, 22, i))
    assert read_png(out / "images/a.png").ndim == 2 and read_png(out / "images/b.png").shape == (20, 22, 3)


def test_folder_explicit_suffix_and_multiclass(tmp_path, capsys):
    src = tmp_path / "src"
    for i in range(3):
        save(src / "imgs" / f"s{i}.png", grey_image(10, 10, i))
        save(src / "gts" / f"s{i}_gt.png", (blob_mask(10, 10, i) * (i + 1)).astype(np.uint8))
    argv = ["folder", "--src", str(src), "--out", str(tmp_path / "out"), "--images-dir", "imgs", "--masks-dir", "gts",
            "--mask-suffix", "_gt", "--classes", "4", "--split", "1", "0", "0"]
    assert main(argv) == 0
    assert np.array_equal(read_png(tmp_path / "out/labels/s2.png"), blob_mask(10, 10, 2) * 3)
    argv[argv.index("4")] = "3"
    argv[argv.index(str(tmp_path / "out"))] = str(tmp_path / "out3")
    assert main(argv) == 0
    assert "s2_gt.png: unexpected label values [3] (expected class indices 0..2)" in capsys.readouterr().out


def test_mosmed_keeps_the_lvit_split(tmp_path, capsys):
    src = make_mosmed(tmp_path / "src")
    save(src / "Test_Folder/labelcol/study_Te_1.png", blob_mask(32, 32, 1))  # 0/1 masks are fine too
    out = tmp_path / "out"
    assert main(["mosmed", "--src", str(src), "--out", str(out)]) == 0
    assert "mosmed: converted 7, reused 0, skipped 0 (training 3, validation 2, test 2)" in capsys.readouterr().out
    dl = read_json(out / "datalist.json")
    assert dl["validation"][0] == {"image": "images/validation/study_Va_0.png",
                                   "label": "labels/validation/study_Va_0.png"}
    assert np.array_equal(read_png(out / "labels/test/study_Te_1.png"), blob_mask(32, 32, 1))
    import shutil

    shutil.rmtree(src / "Val_Folder/labelcol")
    assert main(["mosmed", "--src", str(src), "--out", str(tmp_path / "o2")]) == 1
    assert "missing folder" in capsys.readouterr().err
