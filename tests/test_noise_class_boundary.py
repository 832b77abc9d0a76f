"""The class-dependent, pixel-dependent ``class_boundary`` noise protocol and the per-class noise level."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage as ndi

from data_prep.io import DataPrepError
from data_prep.noise import (
    DiceAccumulator,
    add_parser,
    apply_protocol,
    class_boundary_flip,
    make_noisy_dataset,
    parse_rates,
    read_label,
)


def halves(rows: int = 400, split: int = 100, width: int = 200) -> np.ndarray:
    """Class 1 in columns [0, split), class 2 in [split, width): a straight boundary, no background."""
    m = np.full((rows, width), 2, np.uint8)
    m[:, :split] = 1
    return m


def _flip_rate(clean: np.ndarray, noisy: np.ndarray, column: int) -> float:
    return float(np.mean(noisy[:, column] != clean[:, column]))


def test_flip_probability_decays_from_the_boundary_as_stated():
    clean = halves()
    rates = {d: [] for d in (1, 2, 4, 8)}
    for seed in range(4):
        noisy = class_boundary_flip(clean, seed, rate=0.4, scale=3.0, smooth=0.0, imbalance=0.0)
        # only the two classes swap, never anything new
        assert set(np.unique(noisy)) <= {1, 2}
        for d in rates:
            rates[d].append(_flip_rate(clean, noisy, 100 - d))  # class-1 pixel at distance d from class 2
            rates[d].append(_flip_rate(clean, noisy, 100 + d - 1))  # class-2 pixel at distance d from class 1
    for d, values in rates.items():
        expected = 0.4 * math.exp(-(d - 1) / 3.0)
        assert np.mean(values) == pytest.approx(expected, abs=0.03), d  # 3200 Bernoulli draws per distance
    # far from the boundary nothing flips in practice; flipped class-1 pixels became class 2 and vice versa
    noisy = class_boundary_flip(clean, 0, rate=0.4, scale=3.0, smooth=0.0, imbalance=0.0)
    assert (noisy[:, :60] == 1).mean() > 0.999
    assert set(np.unique(noisy[:, :100][noisy[:, :100] != 1])) <= {2}


def test_rarer_classes_flip_more_often():
    clean = halves(split=150)  # class 1: 150 columns, class 2: 50 (3 times rarer)
    hits = {1: [], 2: []}
    for seed in range(4):
        noisy = class_boundary_flip(clean, seed, rate=0.3, scale=3.0, smooth=0.0, imbalance=0.5)
        hits[1].append(_flip_rate(clean, noisy, 149))
        hits[2].append(_flip_rate(clean, noisy, 150))
    assert np.mean(hits[1]) == pytest.approx(0.3, abs=0.035)
    assert np.mean(hits[2]) == pytest.approx(0.3 * math.sqrt(3), abs=0.035)
    flat = class_boundary_flip(clean, 0, rate=0.3, smooth=0.0, imbalance=0.0)
    assert abs(_flip_rate(clean, flat, 149) - _flip_rate(clean, flat, 150)) < 0.1


def test_rates_per_class_and_per_pair_and_background():
    m = np.zeros((60, 60), np.uint8)
    m[10:50, 10:30] = 1
    m[10:50, 30:50] = 2  # class 2 touches class 1 and background
    never_to_1 = class_boundary_flip(m, 0, rates="2>1:0", rate=0.9, smooth=0.0)
    moved = (m == 2) & (never_to_1 != 2)
    assert moved.any() and not (never_to_1[moved] == 1).any()  # class 2 only lost pixels to background
    only_1 = class_boundary_flip(m, 0, rates={"2": 0.0, "1": 1.0}, scale=1e-6, smooth=0.0)
    assert np.array_equal(only_1[m == 2], m[m == 2])
    # a rate of 1 with a vanishing scale flips exactly the pixels touching another class
    edge = (m == 1) & (ndi.distance_transform_edt(m == 1) <= 1)
    assert np.array_equal(only_1 != m, edge)
    # background does not flip unless a rate names it
    assert not ((m == 0) & (class_boundary_flip(m, 0, rate=1.0, smooth=0.0) != 0)).any()
    grown = class_boundary_flip(m, 0, rates="0:1", rate=0.0, scale=1e-6, smooth=0.0)
    assert ((m == 0) & (grown != 0)).any() and ((m != 0) & (grown != m)).sum() == 0


def test_smooth_field_gives_patches_and_seeds_repeat():
    clean = halves(rows=200)
    a = class_boundary_flip(clean, 3, rate=0.5, scale=6.0, smooth=3.0)
    assert np.array_equal(a, class_boundary_flip(clean, 3, rate=0.5, scale=6.0, smooth=3.0))
    assert not np.array_equal(a, class_boundary_flip(clean, 4, rate=0.5, scale=6.0, smooth=3.0))
    b = class_boundary_flip(clean, 3, rate=0.5, scale=6.0, smooth=0.0)
    pieces = [ndi.label(x != clean)[1] / max(1, int((x != clean).sum())) for x in (a, b)]
    assert pieces[0] < pieces[1] / 3  # far fewer, larger flipped patches
    assert 0.5 < (a != clean).sum() / (b != clean).sum() < 2  # the same marginal probability


def test_3d_spacing_empty_and_single_class_masks():
    vol = np.zeros((12, 12, 8), np.int16)
    vol[2:10, 2:6, 2:6] = 1
    vol[2:10, 6:10, 2:6] = 3
    out = apply_protocol(vol, "class_boundary", 0, rate=0.8, spacing=(1.0, 1.0, 3.0))
    assert out.dtype == np.int16 and set(np.unique(out)) <= {0, 1, 3} and (out != vol).any()
    assert not class_boundary_flip(np.zeros((8, 8), np.uint8), 0).any()
    full = np.full((8, 8), 255, np.uint8)
    assert np.array_equal(class_boundary_flip(full, 0, rate=1.0), full)


@pytest.mark.parametrize(("kw", "match"), [
    ({"rate": 1.5}, "--rate"), ({"scale": 0.0}, "--scale"), ({"smooth": -1.0}, "--smooth"),
    ({"imbalance": float("nan")}, "--imbalance"), ({"rates": "a:0.5"}, "--rates"), ({"rates": "1>2:2"}, "--rates"),
    ({"rates": "1"}, "--rates"),
])
def test_bad_options_are_named(kw, match):
    with pytest.raises(DataPrepError, match=match):
        class_boundary_flip(halves(rows=4, split=2, width=4), 0, **kw)


def test_parse_rates():
    assert parse_rates("2>1:0.6, 1:0.3") == {"2>1": 0.6, "1": 0.3}
    assert parse_rates({"0": 1}) == {"0": 1.0}
    assert parse_rates(None) == {}


def test_accumulator_per_class_noise_level_hand_computed():
    clean = np.zeros((10, 10), np.uint8)
    clean[:4, :5] = 1  # 20 px
    clean[6:, :5] = 2  # 20 px
    noisy = clean.copy()
    noisy[:4, 4] = 2  # 4 class-1 pixels relabelled 2
    noisy[6:8, :5] = 0  # 10 class-2 pixels relabelled background
    acc = DiceAccumulator()
    acc.add("a", noisy, clean)
    per_class = acc.summary()["per_class"]
    assert per_class["0"] == {"clean_pixels": 60, "relabelled_fraction": 0.0, "relabelled_to": {}}
    assert per_class["1"]["relabelled_fraction"] == pytest.approx(4 / 20)
    assert per_class["1"]["relabelled_to"] == {"2": pytest.approx(0.2)}
    assert per_class["1"]["dice"] == pytest.approx(2 * 16 / (16 + 20))
    assert per_class["2"]["relabelled_fraction"] == pytest.approx(0.5)
    assert per_class["2"]["dice"] == pytest.approx(2 * 10 / (14 + 20))


def _multiclass_png_dataset(root: Path, n: int = 4) -> Path:
    """3-class palette-like PNG masks (0 background, 1 a large region, 2 a small one beside it)."""
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    entries = []
    for i in range(n + 1):
        mask = np.zeros((48, 48), np.uint8)
        mask[8:40, 6:30] = 1
        mask[16:28, 30:36 + i] = 2
        Image.fromarray(mask).save(root / "masks" / f"m{i}.png")
        Image.fromarray((mask * 80).astype(np.uint8)).save(root / "images" / f"m{i}.png")
        entries.append({"image": f"images/m{i}.png", "label": f"masks/m{i}.png"})
    (root / "datalist.json").write_text(json.dumps({"training": entries[:n], "validation": entries[n:]}))
    return root / "datalist.json"


def test_noise_command_writes_per_class_levels_and_the_minority_class_is_noisier(tmp_path, capsys):
    datalist = _multiclass_png_dataset(tmp_path / "src")
    parser = argparse.ArgumentParser(prog="python -m data_prep")
    add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["noise", "--datalist", str(datalist), "--out", str(tmp_path / "o"),
                              "--protocol", "class_boundary", "--rate", "0.3", "--imbalance", "1", "--seed", "2"])
    assert args.func(args) == 0
    printed = capsys.readouterr().out
    assert "class 2" in printed and "relabelled" in printed
    report = json.loads((tmp_path / "o" / "noise_report.json").read_text())
    assert report["config"]["protocol"] == "class_boundary"
    assert report["config"]["options"] == {"rate": 0.3, "scale": 3.0, "smooth": 2.0, "imbalance": 1.0, "rates": None,
                                           "spacing": None}
    per_class = report["overall"]["per_class"]
    assert set(per_class) == {"0", "1", "2"} and per_class["0"]["relabelled_fraction"] == 0.0
    assert per_class["2"]["relabelled_fraction"] > per_class["1"]["relabelled_fraction"] > 0
    assert set(per_class["2"]["relabelled_to"]) <= {"0", "1"}
    # the written labels are the protocol's output for each case's own stream
    doc = json.loads((tmp_path / "o" / "datalist.json").read_text())
    for i, entry in enumerate(doc["training"]):
        clean = read_label(tmp_path / "o" / entry["label_clean"])[0]
        noisy = read_label(tmp_path / "o" / entry["label"])[0]
        expected = apply_protocol(clean, "class_boundary", np.random.default_rng([2, 1, i]), rate=0.3, imbalance=1.0)
        assert np.array_equal(noisy, expected)
    # per-pair rates from the command line; an option of another protocol is refused
    args = parser.parse_args(["noise", "--datalist", str(datalist), "--out", str(tmp_path / "p"),
                              "--protocol", "class_boundary", "--rates", "2>1:0,2>0:0,1:0"])
    assert args.func(args) == 0
    report = json.loads((tmp_path / "p" / "noise_report.json").read_text())
    assert all(e["relabelled_fraction"] == 0 for e in report["overall"]["per_class"].values())
    args = parser.parse_args(["noise", "--datalist", str(datalist), "--out", str(tmp_path / "q"),
                              "--protocol", "dilate", "--rate", "0.2"])
    with pytest.raises(DataPrepError, match="--rate does not apply to the 'dilate' protocol"):
        args.func(args)


def test_per_class_levels_for_every_protocol(tmp_path):
    datalist = _multiclass_png_dataset(tmp_path / "src", n=2)
    report = make_noisy_dataset(datalist, tmp_path / "o", "dilate", seed=0, k=1, verbose=False)
    per_class = report["overall"]["per_class"]
    assert per_class["0"]["relabelled_fraction"] > 0 and per_class["1"]["relabelled_fraction"] == 0
