#!/usr/bin/env python
"""How well does the fuzzy partition find wrong labels? Statistics on the TRAINING labels of injected-noise PH2.

Each training case of a noisy copy keeps its clean label beside the noisy one (``python -m data_prep noise``), so
every training pixel is known to be wrongly or rightly labelled. For every partition setting (the options of
:class:`dale_monai.transforms.FuzzyPartition`: entropy form × combination of the normalised scores × patch size,
and the label-boundary band × width × profile) this reports, pooled over all training pixels of all training
cases: the share of wrong and of right pixels in the fuzzy region (``M^f > 0.5``, and ``M^f ≥ τ``), the mean
M^f of each, and the ROC AUC of M^f as a score for "this pixel is wrongly labelled" (Mann-Whitney U, ties
counted half). Only the training section is read; validation and test are never touched.

Noise: the profile's ``dilate_erode`` levels (the datasets of ``accuracy.py``) and two protocols whose noise is
not, or not only, a uniform boundary shift: ``elastic`` (smooth random warp) and ``components`` (whole lesions
dropped, false blobs added). A label-boundary band reads the noisy label only, so it finds boundary noise by
construction; ``components`` is the check that is not circular.

Usage::

    python benchmarks/partition_noise.py [--profile quick] [--work data/bench] [--out results/partition_noise_quick.md]

The datasets are converted with ``python -m data_prep`` into ``--work`` the first time (from ``$DALE_DATA_DIR``,
default ``../shared/data``). About 2 minutes on one CPU thread at the quick profile.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from scipy.stats import rankdata

sys.path.insert(0, str(Path(__file__).resolve().parent))

from accuracy_core import PROFILES, REPO, DataMissing, data_dir, load_split, prepare_dataset  # noqa: E402
import provenance  # noqa: E402

from dale_monai.partition import BAND_PROFILES, ENTROPY_FORMS, fuzzy_masks_batch  # noqa: E402

__all__ = ["EXTRA_NOISE", "PREVIOUS_SETTINGS", "settings_grid", "setting_name", "roc_auc", "noise_stats", "main"]

TAU = 0.9
#: non-dilate/erode noise copies of the clean PH2 split (``python -m data_prep noise`` options; PH2 masks are
#: 256×192 px, so sizes are about 2.5× those at the quick profile's 96 px)
EXTRA_NOISE: dict[str, list[str]] = {
    # smooth random warp of the mask: boundary noise of varying width (label Dice about that of dilate_erode k5)
    "elastic_a8": ["--protocol", "elastic", "--alpha", "8", "--sigma", "10"],
    # a quarter of the lesions missed entirely and 1-3 false blobs of radius 10-25 px added per image
    "components": ["--protocol", "components", "--drop-prob", "0.25", "--max-drop-size", "1000000000",
                   "--n-add", "1-3", "--add-radius", "10-25"],
}
#: the settings of the previous table (commit 8b26e40), at the profile's patch size
PREVIOUS_SETTINGS: tuple[dict, ...] = (
    {}, {"entropy": "shannon"}, {"entropy": "shannon", "bins": 16}, {"bins": 16}, {"use_entropy": False},
    {"use_edges": False},
)
_COMBINES = (("max", None), ("weighted", 0.75), ("weighted", 0.5), ("weighted", 0.25), ("ae", None))


def settings_grid(patches=(4, 8, 16), widths=(1, 1.5, 2, 3, 4, 6, 8)) -> list[dict]:
    """Partition options compared: entropy form × combination × patch size, ER alone, and band width × profile."""
    grid: list[dict] = []
    for patch in patches:
        for entropy in ENTROPY_FORMS:
            for combine, weight in _COMBINES:
                kw = {"patch_size": patch, "entropy": entropy, "combine": combine}
                if weight is not None:
                    kw["ae_weight"] = weight
                grid.append(kw)
        grid.append({"patch_size": patch, "combine": "er"})  # no entropy: the form does not matter
    for profile in BAND_PROFILES:
        for width in widths:
            grid.append({"mode": "band", "band_width": width, "band_profile": profile})
    return grid


def setting_name(kw: dict) -> str:
    """Short readable name of a setting."""
    if kw.get("mode") == "band":
        return f"band {kw['band_profile']}, width {kw['band_width']:g}"
    combine = kw.get("combine", "max")
    if combine == "er":
        return f"ER only, patch {kw['patch_size']}"
    entropy = "Eq. 3" if kw.get("entropy", "paper") == "paper" else "Shannon"
    weight = kw.get("ae_weight", 0.5)
    how = {"max": "max", "ae": "AE only"}.get(combine, f"{weight:g}·AE + {1 - weight:g}·ER")
    tag = " (paper)" if combine == "max" and entropy == "Eq. 3" else ""
    return f"{entropy}, {how}, patch {kw['patch_size']}{tag}"


def roc_auc(score: np.ndarray, positive: np.ndarray) -> float:
    """ROC AUC of ``score`` for the boolean ``positive``: Mann-Whitney U / (n⁺ n⁻), ties counted half."""
    n_pos = int(positive.sum())
    n_neg = positive.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = rankdata(score, method="average")
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def noise_stats(mask_f: np.ndarray, wrong: np.ndarray, tau: float = TAU) -> dict[str, float]:
    """Pooled statistics of ``mask_f`` against the wrong-pixel map (both ``(N, 1, *spatial)``)."""
    f, w = mask_f.reshape(-1), wrong.reshape(-1)
    fuzzy, strict = f > 0.5, f >= tau
    return {
        "wrong_fuzzy": float(fuzzy[w].mean()), "right_fuzzy": float(fuzzy[~w].mean()),
        "wrong_tau": float(strict[w].mean()), "right_tau": float(strict[~w].mean()),
        "mf_wrong": float(f[w].mean()), "mf_right": float(f[~w].mean()), "auc": roc_auc(f, w),
    }


def previous_stats(mask_f: np.ndarray, wrong: np.ndarray, tau: float = TAU) -> dict[str, float]:
    """The previous table's statistics: means over cases, fuzzy = ``M^f ≥ τ``."""
    has = wrong.reshape(len(wrong), -1).any(axis=1)
    fuzzy = mask_f >= tau
    axes = tuple(range(1, mask_f.ndim))

    def case_mean(values, select):
        return (values * select).sum(axis=axes) / np.maximum(select.sum(axis=axes), 1)

    return {
        "wrong_in_fuzzy": float(case_mean(fuzzy, wrong)[has].mean()),
        "right_in_fuzzy": float(case_mean(fuzzy, ~wrong).mean()),
        "mask_f_wrong": float(case_mean(mask_f, wrong)[has].mean()),
        "mask_f_right": float(case_mean(mask_f, ~wrong).mean()),
        "fuzzy_fraction": float(fuzzy.mean(axis=axes).mean()),
    }


def _prepare_extra(name: str, options: list[str], work: Path, src: Path) -> Path:
    out = work / f"ph2_partition_{name}"
    datalist = out / "datalist.json"
    if not datalist.is_file():
        clean = prepare_dataset("ph2", src, work)
        cmd = [sys.executable, "-m", "data_prep", "noise", "--datalist", str(clean), "--out", str(out), *options,
               "--seed", "0"]
        print("+", " ".join(cmd), file=sys.stderr, flush=True)
        subprocess.run(cmd, cwd=REPO, check=True, capture_output=True, text=True)
    return datalist


def _noise_level(datalist: Path) -> str:
    report = json.loads((datalist.parent / "noise_report.json").read_text())
    o = report["overall"]
    return f"label Dice {o['dice_mean']:.3f} (mean over cases), {100 * o['wrong_pixel_fraction']:.1f} % of pixels wrong"


def _commit() -> str:
    return provenance.commit_label(short=True, paths=("dale_monai", "benchmarks/partition_noise.py"))


def _meets(st: dict, which: str = "fuzzy") -> bool:
    """The goal: at least half of the wrong pixels in the region, at most a fifth of the right ones."""
    return st[f"wrong_{which}"] >= 0.5 and st[f"right_{which}"] <= 0.2


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--profile", default="quick", choices=list(PROFILES))
    parser.add_argument("--work", default=str(REPO / "data" / "bench"))
    parser.add_argument("--data-dir", default=None, help="real-data folder (default $DALE_DATA_DIR or ../shared/data)")
    parser.add_argument("--out", default=None, help="Markdown file to write (default: print only)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    profile = PROFILES[args.profile]
    work, src = Path(args.work), data_dir(args.data_dir)
    start = time.time()
    try:
        datasets = {f"ph2_{lv.name}": prepare_dataset(f"ph2_{lv.name}", src, work, lv) for lv in profile.noise_levels}
        for name, options in EXTRA_NOISE.items():
            datasets[f"ph2_{name}"] = _prepare_extra(name, options, work, src)
    except DataMissing as err:
        print(f"SKIPPED: {err}", file=sys.stderr)
        return 0
    grid = settings_grid()
    results: dict[str, list[tuple[str, dict]]] = {}
    previous: dict[str, list[tuple[str, dict]]] = {}
    levels: dict[str, str] = {}
    n_cases = {}
    for ds, datalist in datasets.items():
        items = load_split(datalist, "training", profile.size)
        n_cases[ds] = len(items)
        levels[ds] = _noise_level(datalist)
        images = np.stack([it["image"] for it in items])
        labels = np.stack([it["label"] for it in items])
        wrong = labels != np.stack([it["label_clean"] for it in items])
        rows = []
        for kw in grid:
            _, mask_f = fuzzy_masks_batch(images, labels, tau=TAU, **{"patch_size": profile.patch, **kw})
            st = noise_stats(mask_f.numpy(), wrong)
            rows.append((setting_name(kw), st))
            print(f"{ds} | {rows[-1][0]} | " + " ".join(f"{k} {v:.3f}" for k, v in st.items()), flush=True)
        results[ds] = rows
        prev = []
        for kw in PREVIOUS_SETTINGS:
            _, mask_f = fuzzy_masks_batch(images, labels, patch_size=profile.patch, tau=TAU, **kw)
            name = ", ".join(f"{k}={v}" for k, v in kw.items()) or "default (paper Eq. 3, 256 bins)"
            prev.append((name, previous_stats(mask_f.numpy(), wrong)))
        previous[ds] = prev
    elapsed = time.time() - start
    text = _report(profile, results, previous, levels, n_cases, elapsed, argv)
    if args.out:
        Path(args.out).write_text(text)
        print(f"wrote {args.out}", file=sys.stderr)
    else:
        print(text)
    return 0


def _report(profile, results, previous, levels, n_cases, elapsed, argv) -> str:
    cmd = "python benchmarks/partition_noise.py " + " ".join(argv if argv is not None else sys.argv[1:])
    lines = [
        f"# Partition vs injected label noise (training labels, {profile.name} profile: {profile.size} px, τ {TAU})",
        "",
        f"`{cmd.strip()}` at commit {_commit()}, {elapsed / 60:.1f} min on one CPU thread. Only the training "
        f"section of each noisy PH2 copy is read ({', '.join(f'{ds}: {n}' for ds, n in n_cases.items())} cases); the "
        "clean label of each case tells which pixels are wrong.",
        "",
        "Columns, pooled over all training pixels: share of wrong / right pixels with M^f > 0.5 and with M^f ≥ τ, "
        "mean M^f of wrong / right pixels, ROC AUC of M^f for wrong pixels. Goal: ≥ 50 % of the wrong pixels in the "
        "fuzzy region (M^f > 0.5) with ≤ 20 % of the right ones (✓). Patch settings: patch size in pixels at "
        f"{profile.size} px (the profile's is {profile.patch}), 256 bins, morph edges; `band` = `mode=\"band\"` "
        "(hard: M^f = 1 within `band_width` px of another class; linear: then fading to 0 at twice the width).",
        "",
        "The band reads only the noisy label: it finds noise that lies along the observed boundary by construction "
        "(dilate/erode, elastic); `ph2_components` (whole lesions dropped, false blobs added) is the noise it "
        "cannot see except along the blobs' rims.",
        "",
        "Noise levels: " + "; ".join(f"`{ds}` {lv}" for ds, lv in levels.items()) + ".",
        "",
    ]
    names = [n for n, _ in next(iter(results.values()))]
    for which, title in (("fuzzy", "M^f > 0.5"), ("tau", "M^f ≥ τ")):
        lines += [f"## Settings meeting the goal with {title} on some dataset", ""]
        if which == "tau":
            lines += ["In the patch modes M^n = 1 wherever m < τ (Eq. 6), so the pixels with M^f ≥ τ are the ones "
                      "the partition takes (partly) out of the non-fuzzy step; in band mode M^n = 1 − M^f.", ""]
        lines += ["| setting | " + " | ".join(f"{ds} wrong / right" for ds in results) + " |",
                  "|---|" + "---|" * len(results)]
        for i, name in enumerate(names):
            stats = [rows[i][1] for rows in results.values()]
            if any(_meets(st, which) for st in stats):
                cells = [f"{st[f'wrong_{which}']:.3f} / {st[f'right_{which}']:.3f}{' ✓' if _meets(st, which) else ''}"
                         for st in stats]
                lines.append(f"| {name} | " + " | ".join(cells) + " |")
        lines.append("")
    lines += ["## Paper form and best AUC per dataset", ""]
    lines += ["| dataset | paper form (patch %d): wrong / right, AUC | best AUC: setting, wrong / right, AUC |"
              % profile.patch, "|---|---|---|"]
    paper = setting_name({"patch_size": profile.patch, "entropy": "paper", "combine": "max"})
    for ds, rows in results.items():
        p = dict(rows)[paper]
        best_name, best = max(rows, key=lambda r: r[1]["auc"])
        lines.append(f"| {ds} | {p['wrong_fuzzy']:.3f} / {p['right_fuzzy']:.3f}, {p['auc']:.3f} | {best_name}: "
                     f"{best['wrong_fuzzy']:.3f} / {best['right_fuzzy']:.3f}, {best['auc']:.3f} |")
    for ds, rows in results.items():
        lines += ["", f"## {ds}", "",
                  "| setting | wrong M^f>0.5 | right M^f>0.5 | wrong M^f≥τ | right M^f≥τ | mean M^f wrong | "
                  "mean M^f right | AUC | goal |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for name, st in rows:
            lines.append(f"| {name} | {st['wrong_fuzzy']:.3f} | {st['right_fuzzy']:.3f} | {st['wrong_tau']:.3f} | "
                         f"{st['right_tau']:.3f} | {st['mf_wrong']:.3f} | {st['mf_right']:.3f} | {st['auc']:.3f} | "
                         f"{'✓' if _meets(st) else ''} |")
    lines += ["", f"## Previous table's settings (patch {profile.patch}; means over cases, fuzzy = M^f ≥ τ)", "",
              "The definitions of the table this file held at commit 8b26e40, recomputed: the paper-form rows "
              "match it.", "",
              "| dataset | setting | wrong in fuzzy | right in fuzzy | mean M^f wrong | mean M^f right "
              "| fuzzy fraction |",
              "|---|---|---|---|---|---|---|"]
    for ds, rows in previous.items():
        for name, st in rows:
            lines.append(f"| {ds} | {name} | {st['wrong_in_fuzzy']:.3f} | {st['right_in_fuzzy']:.3f} | "
                         f"{st['mask_f_wrong']:.3f} | {st['mask_f_right']:.3f} | {st['fuzzy_fraction']:.3f} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
