#!/usr/bin/env python
"""CLCS on imbalanced multi-class noisy labels (issue 12), through the ``covid_multiclass`` bundle.

COVID-SemiSeg's 3-class slices (background, ground-glass opacity, consolidation; consolidation is the rarest)
are converted once (``python -m data_prep covid_semiseg --task multiclass``); their training labels are
corrupted with the class-dependent, pixel-dependent ``class_boundary`` protocol (``python -m data_prep noise``,
noise seed 0, the per-class noise level in its ``noise_report.json``): by default the minority class
(consolidation, 2) flips to its neighbouring class at twice the boundary rate of ground-glass opacity
(``--noise-rates 1:0.3,2:0.6``, this project's choice); validation and test keep the radiologists' labels.
Every arm then trains the same bundle with its overlay and the same seeds and budget
(``python -m monai.bundle run training``, the run's ``seed`` sets MONAI's determinism), and is scored on the test
section by ``evaluate.json`` (best-validation weights, ``models/model.pt``): per-class Dice, mean Dice, and the
minority class's Dice (the foreground class with the fewest clean training pixels) reported separately.

The accuracy harness of ``accuracy.py`` is binary (one sigmoid channel); this script is its multi-class
counterpart, built on the bundles instead (their softmax networks, transforms, validation and evaluation).

Usage::

    python benchmarks/clcs_multiclass.py --profile quick --seeds 3
    python benchmarks/clcs_multiclass.py --profile gpu --seeds 3 --arms standard,sce,coteaching,dale,clcs

Outputs in ``<out>/clcs_multiclass_<profile>/``: ``runs.csv`` (one row per run), ``summary.csv`` (mean ± std
over seeds), ``README.md`` (tables, the noise level per class, profile, commit, commands). Converted data and the
runs go to ``--work`` (default ``<repo>/data/bench``, gitignored); a finished run (its test summary, the exact
command that made it and the hash of the code it ran, :data:`RUN_CODE`) is reused unless ``--no-cache`` or the
command or that code changed.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import math
import os
import shlex
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO / "benchmarks") not in sys.path:  # imported by file path (tests), not run as a script
    sys.path.insert(0, str(REPO / "benchmarks"))

import provenance  # noqa: E402
BUNDLE = "covid_multiclass_unet"
#: the code a run executes (``provenance.source_hash``): the library, the converters and the bundle's configs
RUN_CODE: tuple[str, ...] = ("dale_monai", "data_prep", f"bundles/{BUNDLE}/configs")

__all__ = ["ARMS", "PROFILES", "RUN_CODE", "Profile", "main"]

#: arm → overlay on the bundle's train.json (None: train.json itself, i.e. DALE as the bundles ship it)
ARMS: dict[str, str | None] = {
    "standard": "plain_train.json",
    "sce": "sce_train.json",
    "gce": "gce_train.json",
    "coteaching": "coteaching_train.json",
    "dale": None,
    "clcs": "clcs_train.json",
}
DEFAULT_ARMS = ("standard", "sce", "coteaching", "dale", "clcs")
CLASSES = {1: "ground-glass opacity", 2: "consolidation"}


@dataclass(frozen=True)
class Profile:
    """Budget of every arm (bundle overrides); identical for all arms and seeds.

    Args:
        name: profile name.
        overrides: ``monai.bundle`` overrides of every run (size, epochs, batch, network width, ...).
        val_fraction: share of the 50 multi-class training slices used for validation (``data_prep --val-fraction``).
    """

    name: str
    overrides: dict = field(hash=False)
    val_fraction: float = 0.2


PROFILES: dict[str, Profile] = {
    # seconds, for the smoke test only: numbers meaningless
    "toy": Profile("toy", {"spatial_size": [32, 32], "num_epochs": 2, "batch_size": 2, "val_interval": 1,
                           "network_def#channels": [8, 16, 32, 64, 128], "clcs#warmup_epochs": 1,
                           "device": "$torch.device('cpu')"}, val_fraction=0.34),
    # CPU: 96 px, a narrower UNet, 300 iterations (40 training slices, batch 8)
    "quick": Profile("quick", {"spatial_size": [96, 96], "num_epochs": 60, "batch_size": 8, "val_interval": 5,
                               "network_def#channels": [16, 32, 64, 128, 256], "device": "$torch.device('cpu')"}),
    # the bundle as shipped (352 px, 100 epochs, UNet [32..512]), on a GPU
    "gpu": Profile("gpu", {"num_epochs": 100}),
}


class DataMissing(RuntimeError):
    """COVID-SemiSeg is not where ``--data-dir`` (or ``DALE_DATA_DIR``) says."""


def _run(cmd: list[str], log: Path | None = None) -> None:
    print("+", shlex.join(cmd), flush=True)
    path = os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env = {**os.environ, "PYTHONPATH": path}
    res = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env=env)
    if log is not None:
        log.parent.mkdir(parents=True, exist_ok=True)
        log.write_text(res.stdout + res.stderr)
    if res.returncode != 0:
        raise RuntimeError(f"command failed ({shlex.join(cmd)}):\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}")


def _tag(noise: dict) -> str:
    """A folder-name form of the noise options."""
    text = "_".join(f"{k}{v}" for k, v in sorted(noise.items()))
    return text.replace(">", "to").replace(":", "-").replace(",", "_")


def prepare(data_dir: Path, work: Path, profile: Profile, noise: dict) -> Path:
    """Convert COVID-SemiSeg's multi-class part and write its noisy copy (once); return the noisy folder."""
    src = data_dir / "covid_semiseg"
    if not src.is_dir():
        raise DataMissing(f"COVID-SemiSeg not found at {src} (set DALE_DATA_DIR or --data-dir)")
    clean = work / f"covid_multiclass_val{profile.val_fraction:g}"
    if not (clean / "datalist.json").is_file():
        _run([sys.executable, "-m", "data_prep", "covid_semiseg", "--src", str(src), "--out", str(clean), "--task",
              "multiclass", "--val-fraction", str(profile.val_fraction), "--seed", "0"])
    noisy = work / f"{clean.name}_class_boundary_{_tag(noise)}"
    args = [f"--{k}={v}" for k, v in sorted(noise.items())]
    # the noise command itself skips an up-to-date copy
    _run([sys.executable, "-m", "data_prep", "noise", "--datalist", str(clean / "datalist.json"), "--out", str(noisy),
          "--protocol", "class_boundary", "--seed", "0", *args])
    return noisy


def _override_args(overrides: dict) -> list[str]:
    out = []
    for key, value in overrides.items():
        out += [f"--{key}", value if isinstance(value, str) else json.dumps(value)]
    return out


def _configs(*files: str) -> str:
    return json.dumps([f"bundles/{BUNDLE}/configs/{f}" for f in files])


def commands(arm: str, seed: int, root: Path, dataset: Path, profile: Profile) -> list[list[str]]:
    """The training and the evaluation command of one run."""
    overlay = ARMS[arm]
    train = ("train.json",) if overlay is None else ("train.json", overlay)
    common = {"bundle_root": str(root), "dataset_dir": str(dataset)}
    train_ovr = {**common, **profile.overrides, "seed": seed}
    if overlay != "clcs_train.json":
        train_ovr = {k: v for k, v in train_ovr.items() if not k.startswith("clcs#")}
    evaluate_ovr = {**common, **{k: v for k, v in profile.overrides.items()
                                 if k in ("spatial_size", "device") or k.startswith("network_def#")}}
    bundle = [sys.executable, "-m", "monai.bundle", "run"]
    return [bundle + ["training", "--config_file", _configs(*train)] + _override_args(train_ovr),
            bundle + ["evaluating", "--config_file", _configs("inference.json", "evaluate.json")]
            + _override_args(evaluate_ovr)]


def run_one(arm: str, seed: int, runs: Path, dataset: Path, profile: Profile, use_cache: bool) -> dict:
    """Train and evaluate one (arm, seed), or reuse its finished result; returns its runs.csv row."""
    cmds = commands(arm, seed, runs / f"{arm}_seed{seed}", dataset, profile)
    code = provenance.source_hash(RUN_CODE)
    key = hashlib.sha1(json.dumps([code, [c[1:] for c in cmds]]).encode()).hexdigest()[:12]
    root = runs / f"{arm}_seed{seed}"
    done = root / "run.json"
    summary_path = root / "eval" / "test_summary.json"
    if not (use_cache and done.is_file() and json.loads(done.read_text()).get("key") == key and summary_path.is_file()):
        done.unlink(missing_ok=True)
        _run(cmds[0], root / "train.log")
        _run(cmds[1], root / "evaluate.log")
        done.write_text(json.dumps({"key": key, "code": code, "commands": [shlex.join(c) for c in cmds]}, indent=1))
    summary = json.loads(summary_path.read_text())
    row = {"arm": arm, "seed": seed, "cases": summary.get("cases", 0)}
    for metric in ("dice", "miou", "hd95", "asd", *(f"dice_{c}" for c in CLASSES)):
        stats = summary.get(metric)
        row[metric] = stats["mean"] if isinstance(stats, dict) else math.nan
    return row


def _minority(noise_report: dict) -> int:
    """The foreground class with the fewest clean training pixels."""
    per_class = noise_report["overall"]["per_class"]
    present = {int(c): e["clean_pixels"] for c, e in per_class.items() if int(c) in CLASSES}
    return min(present, key=present.get) if present else max(CLASSES)


def summarize(rows: list[dict], minority: int) -> list[dict]:
    """Mean ± std over seeds per arm, with the minority class's Dice and paired differences to ``standard``."""
    from scipy import stats

    out = []
    std_rows = {r["seed"]: r for r in rows if r["arm"] == "standard"}
    for arm in dict.fromkeys(r["arm"] for r in rows):
        rs = [r for r in rows if r["arm"] == arm]
        entry: dict = {"arm": arm, "n": len(rs)}
        for metric in ("dice", *(f"dice_{c}" for c in CLASSES), "hd95"):
            v = np.array([r[metric] for r in rs], float)
            entry[f"{metric}_mean"] = float(np.nanmean(v)) if np.isfinite(v).any() else math.nan
            entry[f"{metric}_std"] = float(np.nanstd(v, ddof=1)) if np.isfinite(v).sum() > 1 else math.nan
        entry["minority_dice_mean"] = entry[f"dice_{minority}_mean"]
        for metric in ("dice", f"dice_{minority}"):
            pairs = [(r[metric], std_rows[r["seed"]][metric]) for r in rs if r["seed"] in std_rows]
            a, b = (np.array(x, float) for x in zip(*pairs)) if pairs else (np.array([]), np.array([]))
            name = "dice" if metric == "dice" else "minority_dice"
            entry[f"{name}_diff_vs_standard"] = float(np.mean(a - b)) if len(a) else math.nan
            entry[f"{name}_p_vs_standard"] = float(stats.ttest_rel(a, b).pvalue) if len(a) > 1 and arm != "standard" \
                and np.any(a != b) else math.nan
        out.append(entry)
    return out


def _write_csv(path: Path, rows: list[dict]) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def _commit() -> str:
    return provenance.commit_label()


def _fmt(mean: float, std: float) -> str:
    return "–" if not math.isfinite(mean) else f"{mean:.3f}" + (f" ± {std:.3f}" if math.isfinite(std) else "")


def write_readme(path: Path, argv: list[str], profile: Profile, noise_report: dict, summary: list[dict],
                 minority: int, rows: list[dict]) -> None:
    lines = [f"# CLCS on multi-class COVID-SemiSeg with injected class_boundary noise (`{profile.name}`)", "",
             f"Command: `python benchmarks/clcs_multiclass.py {shlex.join(argv)}`  ", f"Commit: `{_commit()}`  ",
             f"Code the runs executed (`provenance.source_hash` of {', '.join(RUN_CODE)}): "
             f"`{provenance.source_hash(RUN_CODE)}`  ",
             f"Profile overrides of every run: `{json.dumps(profile.overrides)}`; validation share "
             f"{profile.val_fraction:g}.", "", "## Noise of the training labels (measured, `noise_report.json`)", "",
             "| class | clean pixels | relabelled | to | Dice noisy vs clean |", "|---|---|---|---|---|"]
    for c, e in noise_report["overall"]["per_class"].items():
        to = ", ".join(f"{v}: {s:.3f}" for v, s in e["relabelled_to"].items()) or "–"
        lines.append(f"| {c} | {e['clean_pixels']} | {e['relabelled_fraction']:.3f} | {to} | "
                     f"{e['dice']:.3f} |" if "dice" in e else f"| {c} | {e['clean_pixels']} | "
                     f"{e['relabelled_fraction']:.3f} | {to} | – |")
    lines += ["", f"Minority class: {minority} ({CLASSES[minority]}), the foreground class with the fewest clean "
              "training pixels.", "", "## Test Dice (best-validation weights), mean ± std over seeds", "",
              "| arm | n | mean Dice | " + " | ".join(f"Dice {c} ({n})" for c, n in CLASSES.items())
              + " | minority − standard (p) | mean − standard (p) |", "|---|---|---|" + "---|" * (len(CLASSES) + 2)]
    for e in summary:
        cells = [_fmt(e[f"dice_{c}_mean"], e[f"dice_{c}_std"]) for c in CLASSES]
        diff = [f"{e[f'{m}_diff_vs_standard']:+.3f} ({e[f'{m}_p_vs_standard']:.2g})"
                if math.isfinite(e[f"{m}_diff_vs_standard"]) and e["arm"] != "standard" else "–"
                for m in ("minority_dice", "dice")]
        lines.append(f"| {e['arm']} | {e['n']} | {_fmt(e['dice_mean'], e['dice_std'])} | " + " | ".join(cells)
                     + f" | {diff[0]} | {diff[1]} |")
    lines += ["", f"Runs: {len(rows)} (`runs.csv`); paired t-tests over seeds (`scipy.stats.ttest_rel`).", ""]
    path.write_text("\n".join(lines))


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", choices=sorted(PROFILES), default="quick")
    parser.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1 (the same for every arm)")
    parser.add_argument("--arms", default=",".join(DEFAULT_ARMS), help=f"comma-separated, of {sorted(ARMS)}")
    parser.add_argument("--noise-rates", default="1:0.3,2:0.6",
                        help="class_boundary --rates: flip rates per class (pair); '' for the rarity rule below")
    parser.add_argument("--noise-rate", type=float, default=0.4, help="class_boundary --rate (default 0.4)")
    parser.add_argument("--noise-imbalance", type=float, default=0.5, help="class_boundary --imbalance (default 0.5)")
    parser.add_argument("--data-dir", type=Path, default=None, help="folder holding covid_semiseg/ (DALE_DATA_DIR)")
    parser.add_argument("--work", type=Path, default=REPO / "data" / "bench")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    parser.add_argument("--no-cache", action="store_true")
    args = parser.parse_args(argv)
    arms = [a.strip() for a in args.arms.split(",") if a.strip()]
    unknown = [a for a in arms if a not in ARMS]
    if unknown or not arms:
        parser.error(f"--arms: unknown {unknown}; choose from {sorted(ARMS)}")
    if args.seeds < 1:
        parser.error("--seeds must be >= 1")
    profile = PROFILES[args.profile]
    data_dir = args.data_dir or Path(os.environ.get("DALE_DATA_DIR", REPO.parent / "shared" / "data"))
    noise = {"rate": args.noise_rate, "imbalance": args.noise_imbalance}
    if args.noise_rates:
        noise["rates"] = args.noise_rates
    try:
        dataset = prepare(data_dir, args.work, profile, noise)
    except DataMissing as e:
        print(f"SKIPPED: {e}", file=sys.stderr)
        return 0
    noise_report = json.loads((dataset / "noise_report.json").read_text())
    runs_dir = args.work / "clcs_multiclass_runs" / profile.name / dataset.name
    rows = [run_one(arm, seed, runs_dir, dataset, profile, not args.no_cache)
            for seed in range(args.seeds) for arm in arms]
    minority = _minority(noise_report)
    summary = summarize(rows, minority)
    out = args.out / f"clcs_multiclass_{profile.name}"
    out.mkdir(parents=True, exist_ok=True)
    _write_csv(out / "runs.csv", rows)
    _write_csv(out / "summary.csv", summary)
    record = {**asdict(profile), "noise": noise, "dataset": dataset.name}
    (out / "profile.json").write_text(json.dumps(record, indent=1))
    write_readme(out / "README.md", argv, profile, noise_report, summary, minority, rows)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
