"""The shared conversion engine: decoding, skips, resume, atomic outputs, splits."""

from __future__ import annotations

import io
from functools import partial
from pathlib import Path

import numpy as np
import pytest
from fixtures_datasets import blob_mask, grey_image, read_json, read_png, save, save_jpeg
from hypothesis import given, settings
from hypothesis import strategies as st

from data_prep.convert import (
    ConversionJob,
    Pair,
    Sample,
    assign_sections,
    list_files,
    load_binary_pair,
    match_pairs,
    natural_sorted,
    run_conversion,
)
from data_prep.io import DataPrepError
from data_prep.masks import binary_mask, class_mask, soft_mask


def _pairs_from(folder: Path, n: int, section: str = "training") -> list[Pair]:
    pairs = []
    for i in range(n):
        img = save(folder / f"img{i}.png", grey_image(12, 10, i))
        msk = save(folder / f"msk{i}.png", blob_mask(12, 10, i) * 255)
        pairs.append(Pair(f"case{i}", section, partial(load_binary_pair, img, msk), (str(img), str(msk))))
    return pairs


def _job(pairs, **kw) -> ConversionJob:
    return ConversionJob("unit", Path("src"), pairs, **kw)


# ---------------------------------------------------------------------------------------------- masks


def test_binary_mask_accepts_0_1_and_0_255_only(tmp_path):
    m = blob_mask(8, 8)
    assert np.array_equal(binary_mask(m, "a.png"), m)
    assert np.array_equal(binary_mask(m * 255, "a.png"), m)
    with pytest.raises(DataPrepError, match=r"b\.png: unexpected mask values \[0, 1, 2\]"):
        binary_mask(np.array([[0, 1], [2, 1]]), "b.png")
    with pytest.raises(DataPrepError, match="unexpected mask values"):
        binary_mask(np.array([[0, 128], [255, 0]]), "c.bmp")
    # an explicit threshold binarises what strict decoding rejects
    assert binary_mask(np.array([[0, 128], [255, 0]]), "c.bmp", threshold=128).tolist() == [[0, 1], [1, 0]]


def test_jpeg_mask_is_thresholded_at_128(tmp_path):
    m = blob_mask(48, 64, 3)
    path = save_jpeg(tmp_path / "m.jpg", m * 255)
    from data_prep.io import read_mask_2d

    raw = read_mask_2d(path)
    assert len(np.unique(raw)) > 2  # JPEG really smeared the values
    decoded = binary_mask(raw, path)
    assert set(np.unique(decoded)) <= {0, 1}
    assert (decoded != m).mean() < 0.01


def test_jpeg_mask_that_is_not_binary_is_rejected(tmp_path):
    grey = save_jpeg(tmp_path / "grey.jpg", grey_image(32, 32))
    from data_prep.io import read_mask_2d

    with pytest.raises(DataPrepError, match=r"grey\.jpg: not a binary mask"):
        binary_mask(read_mask_2d(grey), grey)
    zero_one = save_jpeg(tmp_path / "01.jpg", blob_mask(32, 32), quality=95)
    with pytest.raises(DataPrepError, match=r"01\.jpg: mask values only up to"):
        binary_mask(read_mask_2d(zero_one), zero_one)


def test_soft_and_class_masks():
    soft = np.array([[0, 127, 128, 255]])
    label, kept = soft_mask(soft, "s.png", 128)
    assert label.tolist() == [[0, 0, 1, 1]] and kept.tolist() == soft.tolist() and kept.dtype == np.uint8
    assert soft_mask(soft, "s.png", 100)[0].tolist() == [[0, 1, 1, 1]]
    assert class_mask(np.array([[0, 1, 2]]), "p.png", 3).tolist() == [[0, 1, 2]]
    with pytest.raises(DataPrepError, match=r"p\.png: unexpected label values \[3\]"):
        class_mask(np.array([[0, 3]]), "p.png", 3)


# ---------------------------------------------------------------------------------------------- pairing


def test_match_pairs_reports_each_unmatched_file(tmp_path):
    for name in ("a.png", "b.png", "10.png", "2.png"):
        save(tmp_path / "img" / name, grey_image(4, 4))
    for name in ("a.png", "10.png", "2.png", "z.png"):
        save(tmp_path / "msk" / name, grey_image(4, 4))
    save(tmp_path / "img" / "a.jpg", grey_image(4, 4))  # two files named 'a'
    images, skips = list_files(tmp_path / "img")
    masks, _ = list_files(tmp_path / "msk")
    pairs, unmatched = match_pairs(images, masks)
    assert [p[0] for p in pairs] == ["2", "10"]
    reasons = {(Path(s.files[0]).name, s.reason) for s in unmatched}
    assert reasons == {("b.png", "image without mask"), ("a.png", "mask without image"),
                       ("z.png", "mask without image")}
    assert "several files share the name 'a'" in skips[0].reason and len(skips[0].files) == 2
    assert natural_sorted(["b10", "b9", "a"]) == ["a", "b9", "b10"]


@settings(max_examples=25, deadline=None)
@given(n=st.integers(1, 40), groups=st.integers(1, 6), seed=st.integers(0, 10))
def test_assign_sections_is_fixed_by_seed_and_keeps_groups_together(n, groups, seed):
    keys = [f"vol{i % groups}/s{i}" for i in range(n)]
    a = assign_sections(keys, (0.6, 0.2, 0.2), seed, group=lambda k: k.split("/")[0])
    assert a == assign_sections(list(reversed(keys)), (0.6, 0.2, 0.2), seed, group=lambda k: k.split("/")[0])
    by_group = {}
    for k, section in a.items():
        by_group.setdefault(k.split("/")[0], set()).add(section)
    assert all(len(s) == 1 for s in by_group.values())


# ---------------------------------------------------------------------------------------------- engine


def test_conversion_writes_outputs_datalist_and_summary(tmp_path):
    out = tmp_path / "out"
    stream = io.StringIO()
    result = run_conversion(_job(_pairs_from(tmp_path / "src", 3), labels={"0": "bg", "1": "fg"}), out, stream=stream)
    assert (result.converted, result.reused, result.skipped) == (3, 0, [])
    assert "unit: converted 3, reused 0, skipped 0 (training 3, validation 0, test 0)" in stream.getvalue()
    dl = read_json(out / "datalist.json")
    assert dl["training"][0] == {"image": "images/case0.png", "label": "labels/case0.png"}
    assert dl["labels"] == {"0": "bg", "1": "fg"} and dl["validation"] == [] and dl["test"] == []
    assert np.array_equal(read_png(out / "labels/case0.png"), blob_mask(12, 10, 0))
    assert np.array_equal(read_png(out / "images/case0.png"), grey_image(12, 10, 0))
    summary = read_json(out / "summary.json")
    assert summary["counts"] == {"training": 3, "validation": 0, "test": 0}
    assert summary["labels"]["training"]["count"] == 3 and set(summary["labels"]["training"]["label_values"]) == {
        "0", "1"}


def test_rerun_reuses_finished_pairs_and_converts_the_rest(tmp_path):
    pairs = _pairs_from(tmp_path / "src", 4)
    out = tmp_path / "out"
    run_conversion(_job(pairs[:2]), out, stream=io.StringIO())
    stamp = (out / "images/case0.png").stat().st_mtime_ns
    calls = []
    counted = [Pair(p.key, p.section, (lambda p=p: calls.append(p.key) or p.load()), p.sources) for p in pairs]
    stream = io.StringIO()
    result = run_conversion(_job(counted), out, stream=stream)
    assert (result.converted, result.reused) == (2, 2) and calls == ["case2", "case3"]
    assert "converted 2, reused 2" in stream.getvalue()
    assert (out / "images/case0.png").stat().st_mtime_ns == stamp
    assert read_json(out / "summary.json")["reused"] == 2
    assert read_json(out / "summary.json")["labels"]["training"]["count"] == 4  # reused labels counted too
    result = run_conversion(_job(counted), out, overwrite=True, stream=io.StringIO())
    assert (result.converted, result.reused) == (4, 0)


def test_interrupted_run_leaves_no_partial_datalist_and_resumes(tmp_path):
    pairs = _pairs_from(tmp_path / "src", 3)

    def crash():
        raise KeyboardInterrupt

    broken = pairs[:2] + [Pair("case2", "training", crash, pairs[2].sources)]
    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        run_conversion(_job(broken), out, stream=io.StringIO())
    assert not (out / "datalist.json").exists()
    assert not any(p.name.startswith(".") and p.suffix == ".png" for p in out.rglob("*"))  # no temp files left
    result = run_conversion(_job(pairs), out, stream=io.StringIO())
    assert (result.converted, result.reused) == (1, 2)
    assert len(read_json(out / "datalist.json")["training"]) == 3


def test_bad_pairs_are_skipped_and_named(tmp_path):
    src = tmp_path / "src"
    good = _pairs_from(src, 2)
    small = save(src / "small.png", blob_mask(5, 5) * 255)
    img0 = Path(good[0].sources[0])
    truncated = src / "trunc.png"
    truncated.write_bytes(save(src / "full.png", grey_image(40, 40)).read_bytes()[:120])
    odd = save(src / "odd.png", (blob_mask(12, 10) * 7).astype(np.uint8))
    pairs = good + [
        Pair("mismatch", "training", partial(load_binary_pair, img0, small), (str(img0), str(small))),
        Pair("trunc", "training", partial(load_binary_pair, truncated, small), (str(truncated), str(small))),
        Pair("odd", "test", partial(load_binary_pair, img0, odd), (str(img0), str(odd))),
        Pair("../../escape", "test", good[0].load, good[0].sources),
    ]
    stream = io.StringIO()
    out = tmp_path / "out"
    result = run_conversion(_job(pairs), out, stream=stream)
    assert result.converted == 2 and len(result.skipped) == 4
    text = stream.getvalue()
    assert "skipped 4" in text
    assert "small.png: image/mask size mismatch (image 12x10, mask 5x5)" in text
    assert "trunc.png: unreadable or truncated image" in text
    assert "odd.png: unexpected mask values [0, 7]" in text
    assert "resolves outside the output directory" in text
    summary = read_json(out / "summary.json")
    assert summary["skipped"] == 4 and {Path(f).name for s in summary["skipped_files"] for f in s["files"]} >= {
        "small.png", "trunc.png", "odd.png"}
    assert not (tmp_path / "escape.png").exists()


def test_nothing_converted_is_an_error_with_summary(tmp_path):
    img = save(tmp_path / "i.png", grey_image(4, 4))
    bad = save(tmp_path / "m.png", grey_image(4, 4))
    with pytest.raises(DataPrepError, match="no pair could be converted"):
        run_conversion(_job([Pair("a", "training", partial(load_binary_pair, img, bad), (str(img), str(bad)))]),
                       tmp_path / "out", stream=io.StringIO())
    assert read_json(tmp_path / "out/summary.json")["skipped"] == 1
    assert not (tmp_path / "out/datalist.json").exists()


def test_changed_settings_are_refused_without_overwrite(tmp_path):
    pairs = _pairs_from(tmp_path / "src", 1)
    run_conversion(_job(pairs, settings={"threshold": 128}), tmp_path / "out", stream=io.StringIO())
    with pytest.raises(DataPrepError, match="other settings.*--overwrite"):
        run_conversion(_job(pairs, settings={"threshold": 100}), tmp_path / "out", stream=io.StringIO())
    result = run_conversion(_job(pairs, settings={"threshold": 100}), tmp_path / "out", overwrite=True,
                            stream=io.StringIO())
    assert result.converted == 1


def test_duplicate_keys_and_extras_and_nifti(tmp_path):
    pairs = _pairs_from(tmp_path / "src", 1)
    with pytest.raises(DataPrepError, match="two pairs would be written as 'case0'"):
        run_conversion(_job(pairs + pairs), tmp_path / "dup", stream=io.StringIO())
    affine = np.diag([2.0, 3.0, 4.0, 1.0])
    vol = np.random.default_rng(0).random((4, 5, 3)).astype(np.float32)
    lab = (vol > 0.5).astype(np.uint8)
    pair = Pair("v/vol", "test", lambda: Sample(vol, lab, {"label_soft": lab * 255}, affine), ("vol",),
                extras=("label_soft",), sections=("test_extra",))
    out = tmp_path / "nii"
    run_conversion(_job([pair], image_format="nifti", label_format="nifti"), out, stream=io.StringIO())
    import nibabel as nib

    img = nib.load(str(out / "images/v/vol.nii.gz"))
    assert np.allclose(img.affine, affine) and np.allclose(img.get_fdata(), vol)
    assert np.array_equal(np.asarray(nib.load(str(out / "labels/v/vol.nii.gz")).dataobj), lab)
    dl = read_json(out / "datalist.json")
    assert dl["test"] == dl["test_extra"] == [{"image": "images/v/vol.nii.gz", "label": "labels/v/vol.nii.gz",
                                               "label_soft": "label_soft/v/vol.nii.gz"}]
