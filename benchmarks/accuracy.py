#!/usr/bin/env python
"""Does DALE help? Accuracy benchmarks of DALE against standard training (issue 5), one command per protocol.

Protocols (``<protocol>`` may be the name or its number):

1. ``noisy_covid``: real noisy labels. COVID-SemiSeg, trained on the model-generated pseudo-labels (the
   profile's subset) together with 40 of the 50 doctor-labelled slices (``covid_both``; the other 10 validate),
   tested on the radiologists' masks. ``--datasets covid_pseudo`` trains on pseudo-labels only, as the issue
   first states; the pseudo-labelled slices come from other CT collections with another intensity window
   (air outside the body black, where it is white on the radiologists' slices), so that setting mixes
   domain shift into the label noise, and a few target-domain slices in training keep the comparison about
   the labels.
2. ``injected_noise``: PH2 (fixed seed-0 split) with clean training labels and with the training labels
   corrupted by ``python -m data_prep noise`` at the profile's levels; tested on clean labels.
3. ``clean``: clean training labels (COVID doctor-labelled slices, PH2 clean): does DALE cost accuracy?
4. ``ablation``: the paper's Table 4 on protocol 1's data: partition only (AE, ER, AE+ER: alternating steps
   with ω = 1 and no L_W), ``+omega`` (ω meta step, ``mean``), ``+L_W`` (the full method), all with the masks
   applied as the bundles apply them (``mask_mode="weight"``, ``mask_inputs=False``).
5. ``convergence``: validation Dice against iterations, training wall time and CPU time (protocol 1's runs,
   taken from the cache when protocol 1 ran first).
6. ``semisup``: semi-supervised training (issue 13). PH2 with 25 % and 10 % of the training labels
   (``ph2_l25``, ``ph2_l10``: ``data_prep ph2 --labeled-fraction``; the other training images unlabelled) and
   COVID-SemiSeg (``covid_semi``: the 40/10 doctor-labelled training/validation slices, the pseudo-labelled
   images as unlabelled, the profile's subset of them; ``data_prep covid_semiseg --unlabeled pseudo``). Arms:
   ``standard`` (supervised on the labelled part only), ``meanteacher``, ``cps``, ``fixeddynamic``, ``dalepl``,
   ``gapmatch``, ``arco``, and on PH2 ``full`` (supervised on all training labels, the same iterations: the
   upper bound). Run it with ``--profile semi`` (equal iterations for every dataset); the report adds the
   training CPU seconds per run and per iteration relative to ``standard``.

Arms: ``standard`` = MONAI ``SupervisedTrainer``; ``dale`` = ``DALETrainer`` as the paper prints it (masked inputs
and targets, Eq. 7) with ``OmegaMetaStep`` reduction ``mean`` (the released behaviour) and ``WassersteinAlignment``;
``dale_unmasked`` the same with the masks weighting the losses of the whole image (``mask_mode="weight"``,
``mask_inputs=False``: what the bundles ship, chosen on validation Dice by ``select_variant.py``); ``dale_sum``,
``dale_weight``, ``dale_sum_unmasked`` further variants.
All arms of a seed share network, loss (``DALELoss``), optimizer, epochs, batches, initialisation, data order
and augmentations. Every run is scored twice: its final weights (arm ``X``) and its weights at the best
validation Dice (arm ``X@best``; the validation section selects, never the test set). ``--test-datalist``
re-scores the cached runs' weights on the test section of any other datalist (independent held-out data)
without retraining; ``--set field=value`` changes a profile field (e.g. ``--set dice_batch=false``).

Outputs in ``<out>/<protocol>_<profile>/``: ``runs.csv`` (one row per run), ``summary.csv`` (mean ± std over
seeds), ``comparisons.csv`` (paired t-tests against ``standard``), ``curves.csv``, ``README.md`` (tables,
profile, commit, command) and PNG figures. Converted data go to ``--work`` (default ``<repo>/data/bench``,
gitignored); trained runs are cached there by configuration, so protocols sharing runs train them once.

Usage::

    python benchmarks/accuracy.py noisy_covid --profile quick
    python benchmarks/accuracy.py 2 --profile full --seeds 5
    python benchmarks/accuracy.py ablation --profile gpu --out /tmp/acc
    python benchmarks/accuracy.py 2 --profile long --test-datalist /data/other_site/datalist.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import provenance  # noqa: E402
from accuracy_core import (  # noqa: E402
    DALE_STATS,
    LABELED_FRACTIONS,
    PROFILES,
    REPO,
    DataMissing,
    RunConfig,
    Profile,
    data_dir,
    load_split,
    prepare_dataset,
    profile_fields,
    run_cached,
    score_external,
)
from accuracy_report import (  # noqa: E402
    COMPARISON_COLUMNS,
    RUN_COLUMNS,
    SUMMARY_COLUMNS,
    comparison_rows,
    markdown_tables,
    plot_curves,
    plot_examples,
    plot_metric_by_arm,
    plot_noise,
    plot_partition,
    summary_rows,
    time_to_target,
    write_csv,
)

__all__ = ["ARMS", "PROTOCOLS", "Protocol", "main", "result_folder"]

#: how the bundles apply the partition masks (chosen on validation Dice by select_variant.py)
_SHIPPED = dict(mask_mode="weight", mask_inputs=False)

#: a pixel-level fuzzy region: the pixels within 4 px of the (noisy) label boundary
_BAND = json.dumps({"mode": "band", "band_width": 4, "band_profile": "hard"}, sort_keys=True)

#: the fast ω of issue 14 (OmegaMetaStep options besides the reduction)
_FAST = json.dumps({"method": "first_order", "scope": "head", "lr": 1.0}, sort_keys=True)

#: RunConfig fields of each arm (identical configurations share one cached run: ``+L_W`` is ``dale``)
ARMS: dict[str, dict] = {
    "standard": dict(paradigm="standard", omega=None, wasserstein=False),
    "dale": dict(paradigm="dale", omega="mean", wasserstein=True),
    "dale_sum": dict(paradigm="dale", omega="sum", wasserstein=True),
    "dale_normalized": dict(paradigm="dale", omega="normalized", wasserstein=True),
    # how the partition masks enter the steps (DALETrainer mask_mode / mask_inputs), see select_variant.py
    "dale_weight": dict(paradigm="dale", omega="mean", wasserstein=True, mask_mode="weight"),
    "dale_unmasked": dict(paradigm="dale", omega="mean", wasserstein=True, **_SHIPPED),
    "dale_sum_unmasked": dict(paradigm="dale", omega="sum", wasserstein=True, **_SHIPPED),
    # ablation rows (paper Table 4) of the shipped configuration (mask_mode weight on unmasked inputs);
    # "+L_W" is the full method, the same run as "dale_unmasked"
    "AE": dict(paradigm="dale", omega=None, wasserstein=False, use_edges=False, **_SHIPPED),
    "ER": dict(paradigm="dale", omega=None, wasserstein=False, use_entropy=False, **_SHIPPED),
    "AE+ER": dict(paradigm="dale", omega=None, wasserstein=False, **_SHIPPED),
    "+omega": dict(paradigm="dale", omega="mean", wasserstein=False, **_SHIPPED),
    "+L_W": dict(paradigm="dale", omega="mean", wasserstein=True, **_SHIPPED),
    # issue 14: the fuzzy region as a band of 4 px around the label boundary (partition_noise.py: 56-100 % of the
    # wrongly labelled training pixels in it against 8-13 % of the right ones, boundary noise at 96 px)
    "dale_band": dict(paradigm="dale", omega="mean", wasserstein=True, **_SHIPPED, partition_opts=_BAND),
    "dale_band_noW": dict(paradigm="dale", omega="mean", wasserstein=False, **_SHIPPED, partition_opts=_BAND),
    # + the fast, stronger ω: first-order meta gradient over the segmentation head, sum reduction, Adam lr 1
    # (omega_strength.py: wrong pixels ω ≈ 0.8 against ≈ 1.7 for right ones; 2.0x a standard iteration), no L_W
    "dale_band_fast": dict(paradigm="dale", omega="sum", wasserstein=False, **_SHIPPED, partition_opts=_BAND,
                           omega_opts=_FAST),
    "dale_fast": dict(paradigm="dale", omega="sum", wasserstein=False, **_SHIPPED, omega_opts=_FAST),
    # the other noisy-label paradigms (issue 11; accuracy_paradigms.py)
    "gce": dict(paradigm="gce", omega=None, wasserstein=False),
    "sce": dict(paradigm="sce", omega=None, wasserstein=False),
    "coteaching": dict(paradigm="coteaching", omega=None, wasserstein=False),
    "trinet": dict(paradigm="trinet", omega=None, wasserstein=False),
    "mwnet": dict(paradigm="mwnet", omega=None, wasserstein=False),
    "l2rw": dict(paradigm="l2rw", omega=None, wasserstein=False),
    # CLCS (issue 12; accuracy_paradigms.py)
    "clcs": dict(paradigm="clcs", omega=None, wasserstein=False),
    # semi-supervised paradigms (issue 13, protocol 6; accuracy_paradigms.py): labelled + unlabelled loaders
    "meanteacher": dict(paradigm="meanteacher", omega=None, wasserstein=False),
    "cps": dict(paradigm="cps", omega=None, wasserstein=False),
    "fixeddynamic": dict(paradigm="fixeddynamic", omega=None, wasserstein=False),
    "dalepl": dict(paradigm="dalepl", omega=None, wasserstein=False),
    "gapmatch": dict(paradigm="gapmatch", omega=None, wasserstein=False),
    "arco": dict(paradigm="arco", omega=None, wasserstein=False),
    # the fully supervised upper bound of a semi-supervised PH2 dataset: standard training on the fully labelled
    # dataset it was made from (ARM_DATASETS), reported in the semi-supervised dataset's rows
    "full": dict(paradigm="standard", omega=None, wasserstein=False),
}

#: arms trained on another dataset than the row they are reported in: arm → {reported dataset: trained dataset};
#: an arm listed here is left out of the datasets it has no entry for (no fully labelled COVID-SemiSeg exists)
ARM_DATASETS: dict[str, dict[str, str]] = {"full": {"ph2_l10": "ph2", "ph2_l25": "ph2"}}


@dataclass(frozen=True)
class Protocol:
    number: int
    name: str
    title: str
    datasets: tuple[str, ...]  # "noise" expands to the profile's noise levels
    arms: tuple[str, ...]
    question: str


PROTOCOLS: dict[str, Protocol] = {p.name: p for p in (
    Protocol(1, "noisy_covid", "Real noisy labels (COVID-SemiSeg pseudo-labels → radiologists' masks)",
             ("covid_both",), ("standard", "dale", "dale_unmasked"),
             "Target: DALE's Dice ≥ +5 % relative to standard training, p < 0.05 over seeds."),
    Protocol(2, "injected_noise", "Injected label noise (PH2, clean test labels)",
             ("ph2", "noise"), ("standard", "dale", "dale_unmasked"),
             "Target: the DALE − standard gap grows with the noise level."),
    Protocol(3, "clean", "Clean labels (COVID doctor labels, PH2 clean)",
             ("covid_doctor", "ph2"), ("standard", "dale", "dale_unmasked"),
             "Target: DALE not worse than standard training (within one standard deviation)."),
    Protocol(4, "ablation", "Ablation (paper Table 4) on the COVID pseudo-labels",
             ("covid_both",), ("standard", "AE", "ER", "AE+ER", "+omega", "+L_W"),
             "Rows are cumulative: partition only (AE, ER, AE+ER; ω = 1, no L_W), then the ω meta step "
             "(reduction mean), then L_W (the full method)."),
    Protocol(5, "convergence", "Convergence against iterations and time (COVID pseudo-labels)",
             ("covid_both",), ("standard", "dale", "dale_unmasked"),
             "The paper claims DALE reaches a given accuracy in less total time."),
    Protocol(6, "semisup", "Semi-supervised training (few labels + unlabelled images)",
             ("ph2_l25", "ph2_l10", "covid_semi"),
             ("standard", "meanteacher", "cps", "fixeddynamic", "dalepl", "gapmatch", "arco", "full"),
             "Does training on the unlabelled images beat supervised training on the labelled part only "
             "(`standard`), and how far is each arm from the fully supervised upper bound (`full`, PH2)?"),
)}

#: suffix of the arm name under which a run's best-validation weights are reported
BEST = "@best"

_ALIASES = {**{str(p.number): n for n, p in PROTOCOLS.items()}, **{f"p{p.number}": n for n, p in PROTOCOLS.items()}}


def result_folder(protocol: str, profile: str, datasets: Sequence[str] | None = None, sets: Sequence[str] = ()) -> str:
    """Name of the results folder ``main`` writes for a protocol (its name, not number), a profile, the
    ``--datasets`` given (``None``: the protocol's own) and the ``--set FIELD=VALUE`` items, without
    ``--test-datalist``'s suffix."""
    suffix = ("_" + "+".join(datasets)) if datasets else ""
    return f"{protocol}_{profile}{suffix}" + "".join("_" + item.replace("=", "-") for item in sets)


def _commit() -> str:
    return provenance.commit_label()


def _noise_level(work: Path, dataset: str) -> float:
    """Measured noise of a dataset's training labels: 1 − mean Dice of the noisy vs the clean labels."""
    report = work / dataset / "noise_report.json"
    if not report.is_file():
        return 0.0
    return 1.0 - float(json.loads(report.read_text())["overall"]["dice_mean"])


def _run_row(protocol: str, profile: str, dataset: str, arm: str, seed: int, rec: dict,
             weights: str = "final") -> dict:
    """One row of ``runs.csv``: the metrics of the run's ``final`` weights (arm ``arm``) or of its ``best``
    validation weights (arm ``arm@best``)."""
    metrics = rec["metrics"] if weights == "final" else rec["metrics_best"]
    row = {"protocol": protocol, "profile": profile, "dataset": dataset,
           "arm": arm if weights == "final" else f"{arm}{BEST}", "seed": seed, "weights": weights,
           **metrics, "iterations": rec["iterations"], "train_wall_s": rec["train_wall_s"],
           "train_cpu_s": rec["train_cpu_s"], "key": rec["key"], "code_version": rec.get("code_version", "unknown"),
           "curve": rec["curve"], "best_iteration": rec.get("best_iteration", math.nan),
           "best_val_dice": rec.get("best_val_dice", math.nan)}
    row["final_val_dice"] = rec["curve"][-1]["val_dice"] if rec["curve"] else math.nan
    for k in DALE_STATS:
        row[k] = rec["dale_stats"].get(k, math.nan)
    return row


def _base_arm(arm: str) -> str:
    return arm[: -len(BEST)] if arm.endswith(BEST) else arm


def _profile_with(profile: Profile, settings: list[str]) -> Profile:
    """``profile`` with ``field=value`` settings applied (values parsed as JSON, else kept as strings)."""
    fields = {f.name: f for f in dataclasses.fields(Profile)}
    changes = {}
    for item in settings:
        name, sep, raw = item.partition("=")
        if not sep or name not in fields or name in ("name", "epochs", "noise_levels"):
            raise ValueError(f"--set {item!r}: expected FIELD=VALUE with FIELD one of "
                             f"{sorted(set(fields) - {'name', 'epochs', 'noise_levels'})}")
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        if isinstance(value, list):
            value = tuple(value)
        current = getattr(profile, name)
        if current is not None and not isinstance(value, type(current)) and not (
                isinstance(current, float) and isinstance(value, int) and not isinstance(value, bool)):
            raise ValueError(f"--set {item!r}: {name} is a {type(current).__name__}, got {value!r}")
        changes[name] = float(value) if isinstance(current, float) else value
    return dataclasses.replace(profile, **changes)


def _diagnostics_table(runs: list[dict], datasets, arms) -> str:
    keys = ("fuzzy_fraction", "omega_mean", "omega_abs_dev", "omega_frac_below_1", "omega_frac_small_grad",
            "loss_w", "noisy_in_fuzzy", "mask_f_noisy", "mask_f_clean", "omega_below1_noisy", "omega_below1_clean")
    lines = ["| dataset | arm | " + " | ".join(keys) + " |", "|---|---|" + "---|" * len(keys)]
    for ds in datasets:
        for arm in arms:
            rs = [r for r in runs if r["dataset"] == ds and r["arm"] == arm]
            if not rs or ARMS[_base_arm(arm)]["paradigm"] != "dale":
                continue
            vals = []
            for k in keys:
                v = np.array([r[k] for r in rs], float)
                v = v[~np.isnan(v)]
                vals.append(f"{v.mean():.3g}" if v.size else "–")
            lines.append(f"| {ds} | {arm} | " + " | ".join(vals) + " |")
    return "\n".join(lines) + "\n"


def _convergence(runs: list[dict], dataset: str, arms) -> tuple[str, list[dict]]:
    """Time to reach 95 % of the standard arm's mean final validation Dice, per arm (mean over seeds)."""
    std = [r["final_val_dice"] for r in runs if r["dataset"] == dataset and r["arm"] == "standard"]
    if not std:
        return "", []
    target = 0.95 * float(np.mean(std))
    rows, lines = [], [f"Target: validation Dice ≥ {target:.3f} (95 % of standard training's final validation Dice, "
                       "mean over seeds). Time excludes validation. 'never' = not reached within the budget.", "",
                       "| arm | reached (seeds) | iterations | training wall s | training CPU s | total iterations |"
                       " total CPU s |", "|---|---|---|---|---|---|---|"]
    for arm in arms:
        rs = [r for r in runs if r["dataset"] == dataset and r["arm"] == arm]
        if not rs:
            continue
        t = {c: [time_to_target(r["curve"], target, c) for r in rs] for c in ("iteration", "wall_s", "cpu_s")}
        for r, i, w, c in zip(rs, t["iteration"], t["wall_s"], t["cpu_s"]):
            rows.append({"arm": arm, "seed": r["seed"], "target": target, "iterations_to_target": i,
                         "wall_s_to_target": w, "cpu_s_to_target": c})
        reached = sum(v == v for v in t["iteration"])

        def m(v):
            v = [x for x in v if x == x]
            return f"{np.mean(v):.0f}" if v else "never"

        lines.append(f"| {arm} | {reached}/{len(rs)} | {m(t['iteration'])} | {m(t['wall_s'])} | {m(t['cpu_s'])} | "
                     f"{rs[0]['iterations']} | {np.mean([r['train_cpu_s'] for r in rs]):.0f} |")
    return "\n".join(lines) + "\n", rows


def _time_to_standard_best(runs: list[dict], dataset: str, arms) -> tuple[str, list[dict]]:
    """Training CPU seconds each arm needs to reach, on the validation set, the best validation Dice of standard
    training of the same seed (paired by seed; the paper's time-to-accuracy, read on validation only)."""
    std = {r["seed"]: r for r in runs if r["dataset"] == dataset and r["arm"] == "standard"}
    if not std:
        return "", []
    rows, lines = [], ["Target, per seed: the best validation Dice of standard training with that seed. Time excludes "
                       "validation. 'never' = not reached within the budget; the ratio is the arm's CPU time to the "
                       "target over standard's CPU time to its own best.", "",
                       "| arm | reached (seeds) | training CPU s to target | standard's CPU s to its best | ratio |",
                       "|---|---|---|---|---|"]
    for arm in arms:
        rs = [r for r in runs if r["dataset"] == dataset and r["arm"] == arm and r["seed"] in std]
        if not rs:
            continue
        pairs = []
        for r in rs:
            target = max(p["val_dice"] for p in std[r["seed"]]["curve"])
            c_arm = time_to_target(r["curve"], target, "cpu_s")
            c_std = time_to_target(std[r["seed"]]["curve"], target, "cpu_s")
            rows.append({"arm": arm, "seed": r["seed"], "target": target, "cpu_s_to_target": c_arm,
                         "standard_cpu_s_to_target": c_std})
            pairs.append((c_arm, c_std))
        reached = [(a, b) for a, b in pairs if a == a]
        cell = (f"{np.mean([a for a, _ in reached]):.0f}" if reached else "never")
        ratio = f"{np.mean([a / b for a, b in reached]):.2f}" if reached else "–"
        lines.append(f"| {arm} | {len(reached)}/{len(pairs)} | {cell} | "
                     f"{np.mean([b for a, b in reached]) if reached else float('nan'):.0f} | {ratio} |")
    return "\n".join(lines) + "\n", rows


def _cost_table(runs: list[dict], datasets, arms) -> tuple[str, list[dict]]:
    """Training CPU seconds per run and per iteration, and the per-iteration cost relative to ``standard`` of the
    same dataset (mean over the seeds of the ratio; validation time excluded, as in every CPU figure here)."""
    lines = ["Training CPU seconds (validation excluded), mean over seeds; per iteration relative to `standard` on "
             "the same dataset (mean over seeds of the ratio to the same seed's standard run).", "",
             "| dataset | arm | seeds | iterations | training CPU s | CPU s / iteration | per iteration vs standard |",
             "|---|---|---|---|---|---|---|"]
    rows = []
    for ds in datasets:
        std = {r["seed"]: r["train_cpu_s"] / r["iterations"] for r in runs
               if r["dataset"] == ds and r["arm"] == "standard" and r["weights"] == "final"}
        for arm in arms:
            rs = [r for r in runs if r["dataset"] == ds and r["arm"] == arm and r["weights"] == "final"]
            if not rs:
                continue
            per_it = [r["train_cpu_s"] / r["iterations"] for r in rs]
            ratios = [p / std[r["seed"]] for p, r in zip(per_it, rs) if r["seed"] in std]
            row = {"dataset": ds, "arm": arm, "seeds": len(rs), "iterations": rs[0]["iterations"],
                   "train_cpu_s": float(np.mean([r["train_cpu_s"] for r in rs])),
                   "cpu_s_per_iteration": float(np.mean(per_it)),
                   "per_iteration_vs_standard": float(np.mean(ratios)) if ratios else math.nan}
            rows.append(row)
            lines.append(f"| {ds} | {arm} | {row['seeds']} | {row['iterations']} | {row['train_cpu_s']:.0f} | "
                         f"{row['cpu_s_per_iteration']:.3f} | {row['per_iteration_vs_standard']:.2f} |")
    return "\n".join(lines) + "\n", rows


def _example_figures(outdir: Path, splits_by_ds: dict, arrays: dict, datasets, arms) -> list[str]:
    figs = []
    for ds in datasets:
        test = splits_by_ds[ds]["test"]
        preds = {a: arrays.get((ds, a, 0)) for a in arms}
        preds = {a: v["pred"] for a, v in preds.items() if v is not None and "pred" in v}
        if "standard" not in preds or not test:
            continue
        # cases at evenly spaced ranks of the standard arm's Dice (worst to best): a fixed rule, not a choice
        from dale_monai.metrics import dice

        d = [dice(p, t["label"][0] > 0) for p, t in zip(preds["standard"], test)]
        idx = [int(np.argsort(d)[int(round(q))]) for q in np.linspace(0, len(test) - 1, min(4, len(test)))]
        name = f"examples_{ds}.png"
        if plot_examples(outdir / name, [test[i]["image"] for i in idx], [test[i]["label"][0] for i in idx],
                         {a: [p[i] for i in idx] for a, p in preds.items()}, [test[i]["name"] for i in idx]):
            figs.append(name)
        for a in arms:
            snap = arrays.get((ds, a, 0))
            if snap is not None and "snap_image" in snap:
                name = f"partition_{ds}.png"
                if plot_partition(outdir / name, snap, f"{ds}, arm {a}, seed 0, last training batch"):
                    figs.append(name)
                break
    return figs


def _in_cache(cfg: RunConfig, cache: Path) -> bool:
    """Whether :func:`accuracy_core.run_cached` would read ``cfg``'s run from ``cache`` (its three files)."""
    key = cfg.key()
    return all((cache / f"{key}{ext}").is_file() for ext in (".json", ".npz", ".pt"))


def write_report(protocol: Protocol, profile, args, runs: list[dict], arrays: dict, splits_by_ds: dict,
                 datasets: list[str], arms: list[str], work: Path, outdir: Path, command: str,
                 finished: bool, missing: list[str] | None = None) -> None:
    outdir.mkdir(parents=True, exist_ok=True)
    write_csv(outdir / "runs.csv", runs, RUN_COLUMNS)
    best_arms = [a + BEST for a in arms]
    summary = summary_rows(runs, datasets, [*arms, *best_arms])
    write_csv(outdir / "summary.csv", summary, SUMMARY_COLUMNS)
    comps = comparison_rows(runs, datasets, arms, "standard") + comparison_rows(runs, datasets, best_arms,
                                                                                 "standard" + BEST)
    write_csv(outdir / "comparisons.csv", comps, COMPARISON_COLUMNS)
    curve_rows = [{"dataset": r["dataset"], "arm": r["arm"], "seed": r["seed"], **p} for r in runs
                  if r["weights"] == "final" for p in r["curve"]]
    write_csv(outdir / "curves.csv", curve_rows, ("dataset", "arm", "seed", "iteration", "wall_s", "cpu_s",
                                                  "val_dice"))
    levels = {ds: _noise_level(work, ds) for ds in datasets}
    notes = {ds: f"label noise {lv:.3f}" for ds, lv in levels.items() if lv > 0}
    figs = []
    if plot_metric_by_arm(outdir / "dice.png", runs, datasets, [*arms, *best_arms], "dice", protocol.title):
        figs.append("dice.png")
    if protocol.name == "injected_noise" and plot_noise(outdir / "dice_vs_noise.png", summary, levels, arms,
                                                        "standard"):
        figs.append("dice_vs_noise.png")
    conv_md = ""
    if protocol.name == "semisup":
        cost_md, cost_rows = _cost_table(runs, datasets, arms)
        write_csv(outdir / "cost.csv", cost_rows, ("dataset", "arm", "seeds", "iterations", "train_cpu_s",
                                                   "cpu_s_per_iteration", "per_iteration_vs_standard"))
        conv_md += cost_md + "\n"
    if protocol.name == "convergence":
        conv_md, conv_rows = _convergence(runs, datasets[0], arms)
        write_csv(outdir / "time_to_target.csv", conv_rows, ("arm", "seed", "target", "iterations_to_target",
                                                             "wall_s_to_target", "cpu_s_to_target"))
        if plot_curves(outdir / "convergence.png", runs, datasets[0], arms):
            figs.append("convergence.png")
    elif profile.val_points >= 20:  # a profile long enough for the curves to show memorisation
        tta_rows = []
        for ds in datasets:
            if plot_curves(outdir / f"curves_{ds}.png", runs, ds, arms):
                figs.append(f"curves_{ds}.png")
            md_ds, rows_ds = _time_to_standard_best(runs, ds, arms)
            if md_ds:
                conv_md += f"### {ds}\n\n{md_ds}\n"
                tta_rows += [{"dataset": ds, **r} for r in rows_ds]
        write_csv(outdir / "time_to_standard_best.csv", tta_rows, ("dataset", "arm", "seed", "target",
                                                                   "cpu_s_to_target", "standard_cpu_s_to_target"))
    figs += _example_figures(outdir, splits_by_ds, arrays, datasets, arms)
    seeds_done = sorted({r["seed"] for r in runs})
    md = [f"# Protocol {protocol.number}: {protocol.title}", "",
          f"{'Complete' if finished else 'PARTIAL'}: seeds {seeds_done}."
          + (f" Not in the cache yet ({len(missing)}): {'; '.join(missing)}." if missing else ""), "",
          f"- Command: `{command}`", f"- Commit: `{_commit()}`; code version of the runs (hash of the training sources, "
          f"`accuracy_core.code_version(paradigm)`): {', '.join(sorted({r['code_version'] for r in runs}))}",
          f"- Profile: {profile.describe()}",
          f"- Question: {protocol.question}",
          f"- Test set: {'`' + args.test_datalist + '` (test section; the runs trained on the datasets below)' if args.test_datalist else 'the datasets test sections'}.",
          "- Metrics on the test section at the profile's resolution (labels resized nearest): arm `X` = the final "
          "weights, `X@best` = the weights at the best validation Dice (the validation section selects); "
          "HD95/ASD in pixels of that resolution; fuzzy-region Dice inside M^f > 0.9 of the test image and its "
          "true label. Mean ± std over seeds of the per-run means over test cases.", ""]
    for ds in datasets:
        tr = splits_by_ds[ds]
        md.append(f"- `{ds}`: {len(tr['training'])} training, {len(tr['validation'])} validation, "
                  f"{len(tr['test'])} test cases" + (f"; {notes[ds]} (1 − mean Dice of training vs clean labels)"
                                                     if ds in notes else ""))
    md += ["", "## Results", "", markdown_tables(summary, comps, notes)]
    if any(ARMS[_base_arm(a)]["paradigm"] == "dale" for a in arms):
        md += ["## DALE diagnostics (means over iterations "
               "and seeds)", "", "fuzzy_fraction = mean M^f; omega_* over fuzzy pixels (M^f ≥ 0.9); omega_abs_dev = "
               "mean |ω*−1|; omega_frac_small_grad = share of pixels with |g| < Adam eps; with injected noise, "
               "noisy_in_fuzzy = share of wrongly labelled pixels in fuzzy patches, mask_f_noisy/clean = mean M^f of "
               "wrongly/correctly labelled pixels, omega_below1_noisy/clean = share of fuzzy wrongly/correctly "
               "labelled pixels with ω* < 1.", "", _diagnostics_table(runs, datasets, arms)]
    if conv_md:
        md += ["## Convergence" if protocol.name == "convergence" else "## Training cost and time to standard "
               "training's best validation Dice" if protocol.name == "semisup" else "## Time to standard training's "
               "best validation Dice", "", conv_md]
    if figs:
        md += ["## Figures", ""] + [f"![{f}]({f})" for f in figs]
    (outdir / "README.md").write_text("\n".join(md) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("protocol", help=f"one of {list(PROTOCOLS)} or its number 1-6")
    parser.add_argument("--profile", default="quick", choices=list(PROFILES))
    parser.add_argument("--seeds", type=int, default=None, help="number of seeds (default: the profile's)")
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "accuracy"),
                        help="results folder (a <protocol>_<profile> folder is written in it)")
    parser.add_argument("--data-dir", default=None, help="real data (default $DALE_DATA_DIR or ../shared/data)")
    parser.add_argument("--work", default=str(REPO / "data" / "bench"),
                        help="converted data and the run cache (keep it out of git)")
    parser.add_argument("--arms", default=None, help=f"comma-separated arms overriding the protocol's; from {list(ARMS)}")
    parser.add_argument("--datasets", default=None,
                        help="comma-separated datasets overriding the protocol's (covid_pseudo, covid_both, "
                             "covid_doctor, ph2, ph2_<protocol>_k<k> of the profile's noise levels); the results "
                             "folder then gets their names as a suffix")
    parser.add_argument("--no-cache", action="store_true", help="retrain runs found in the cache")
    parser.add_argument("--cached-only", action="store_true",
                        help="train nothing: report the runs found in the cache and list the missing ones (a "
                             "protocol still running, or run in parts with different --arms)")
    parser.add_argument("--test-datalist", default=None,
                        help="score every run's final and best-validation weights on the 'test' section of this "
                             "MONAI datalist (e.g. independent held-out data) instead of the dataset's own; runs "
                             "are trained (or taken from the cache) as usual; the results folder gets the suffix "
                             "_ext-<datalist folder name>")
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                        help="change a profile field for this command (repeatable; e.g. dice_batch=false, lr=3e-4); "
                             "runs are cached under the changed configuration; the results folder gets the suffix")
    args = parser.parse_args(argv)

    name = _ALIASES.get(args.protocol, args.protocol)
    if name not in PROTOCOLS:
        parser.error(f"unknown protocol {args.protocol!r}; choose one of {list(PROTOCOLS)} or 1-6")
    protocol, profile = PROTOCOLS[name], PROFILES[args.profile]
    try:
        profile = _profile_with(profile, args.set)
    except ValueError as e:
        parser.error(str(e))
    seeds = list(range(args.seeds if args.seeds is not None else profile.seeds))
    if not seeds:
        parser.error("--seeds must be at least 1")
    arms = args.arms.split(",") if args.arms else list(protocol.arms)
    unknown = [a for a in arms if a not in ARMS]
    if unknown:
        parser.error(f"unknown arm(s) {unknown}; choose from {list(ARMS)}")
    if "standard" not in arms:
        arms = ["standard", *arms]
    levels = {lv.name: lv for lv in profile.noise_levels}
    ds_names = args.datasets.split(",") if args.datasets else [d for d in protocol.datasets if d != "noise"] + (
        [f"ph2_{n}" for n in levels] if "noise" in protocol.datasets else [])
    work, src = Path(args.work), data_dir(args.data_dir)
    suffix = result_folder(protocol.name, profile.name, ds_names if args.datasets else None, args.set)[
        len(f"{protocol.name}_{profile.name}"):]
    ext_test = None
    if args.test_datalist:
        ext = Path(args.test_datalist)
        if not ext.is_file():
            parser.error(f"--test-datalist {ext}: no such file")
        suffix += f"_ext-{ext.resolve().parent.name}"
        try:
            ext_test = load_split(ext, "test", profile.size)
        except (KeyError, ValueError, OSError) as e:
            parser.error(f"--test-datalist {ext}: cannot read its 'test' section ({e})")
        if not ext_test:
            parser.error(f"--test-datalist {ext}: its 'test' section is empty")
    outdir = Path(args.out) / f"{protocol.name}_{profile.name}{suffix}"
    command = "python benchmarks/accuracy.py " + " ".join(shlex.quote(a) for a in (argv if argv is not None
                                                                                    else sys.argv[1:]))

    splits_by_ds = {}
    trained_ds = {ARM_DATASETS[a][ds] for a in arms if a in ARM_DATASETS for ds in ds_names if ds in ARM_DATASETS[a]}
    try:
        for ds in [*ds_names, *sorted(trained_ds - set(ds_names))]:
            noise = levels.get(ds[len("ph2_"):]) if ds.startswith("ph2_") else None
            if ds.startswith("ph2_") and noise is None and ds not in LABELED_FRACTIONS:
                parser.error(f"dataset {ds!r}: the {profile.name} profile's noise levels are {list(levels)}")
            datalist = prepare_dataset(ds, src, work, noise)
            subset = profile.covid_subset if ds.startswith("covid") else None
            sections = ["training", "validation", "test"]
            if "unlabeled" in json.loads(datalist.read_text()):
                sections.append("unlabeled")
            splits_by_ds[ds] = {s: load_split(datalist, s, profile.size,
                                              subset if s in ("training", "unlabeled") else None)
                                for s in sections}
    except DataMissing as e:
        print(f"SKIPPED protocol {protocol.name}: {e}", file=sys.stderr)
        return 0

    cache = work / "runs"
    runs, arrays = [], {}
    print(f"protocol {protocol.number} {protocol.name}, profile {profile.name}, seeds {seeds}, datasets {ds_names}, "
          f"arms {arms}", flush=True)
    missing = []
    for seed in seeds:  # seeds outermost: the report is rewritten, paired, after every seed
        for ds in ds_names:
            for arm in arms:
                if arm in ARM_DATASETS and ds not in ARM_DATASETS[arm]:
                    continue
                train_ds = ARM_DATASETS.get(arm, {}).get(ds, ds)
                cfg = RunConfig(dataset=train_ds, seed=seed, profile=profile.name,
                                profile_fields=profile_fields(profile, train_ds), **ARMS[arm])
                if args.cached_only and not _in_cache(cfg, cache):
                    missing.append(f"seed {seed} {ds} {arm}")
                    print(f"seed {seed} {ds:>22} {arm:>10}: not in the cache (--cached-only), left out", flush=True)
                    continue
                t0 = time.perf_counter()
                rec, arr, weights = run_cached(cfg, profile, splits_by_ds[train_ds], cache,
                                               use_cache=not args.no_cache)
                if ext_test is not None:
                    rec = score_external(rec, weights, profile, ext_test)
                    arr = {k: v for k, v in arr.items() if k != "pred"}  # predictions of the datasets' own test
                for weights_kind in ("final", "best"):
                    runs.append(_run_row(protocol.name, profile.name, ds, arm, seed, rec, weights_kind))
                arrays[(ds, arm, seed)] = arr
                print(f"seed {seed} {ds:>22} {arm:>10}: dice {rec['metrics']['dice']:.4f} (best-val weights "
                      f"{rec['metrics_best']['dice']:.4f} @ it {rec['best_iteration']}) hd95 "
                      f"{rec['metrics']['hd95']:.2f} ({rec['iterations']} it, cpu {rec['train_cpu_s']:.0f} s, "
                      f"{time.perf_counter() - t0:.0f} s now)", flush=True)
        write_report(protocol, profile, args, runs, arrays, splits_by_ds, ds_names, arms, work, outdir, command,
                     finished=seed == seeds[-1] and not missing, missing=missing)
    print(f"results: {outdir}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
