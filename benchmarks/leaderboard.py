#!/usr/bin/env python
"""One leaderboard: every paradigm on every protocol, the same seeds and budgets, with cost (issue 17).

One command trains what the cache lacks and rebuilds the whole comparison:

- **Settings** (:data:`SETTINGS`): protocols 1-3 of ``accuracy.py`` (real noisy COVID labels, injected PH2 noise,
  clean labels) in the ``short`` profile, the DALE issue's noisy-label profile ``long`` on its two datasets, and the
  semi-supervised protocol 6 in the ``semi`` profile. Every noisy-label arm of :data:`NOISY_ARMS` runs on the first
  five settings (the ``long`` ones also DALE without L_W, :data:`LONG_ARMS`), every semi-supervised arm of
  :data:`SEMI_ARMS` on the sixth; all arms of a setting share seeds, network, loss, optimizer, budget, data order
  and initialisation (``accuracy_core.train_and_evaluate``).
- **Training** goes through ``accuracy.main`` per setting, which caches every run by configuration and code version
  under ``--work``: killed halfway, the same command trains only what is missing. Each setting also writes its
  full ``accuracy.py`` record (per-protocol README, ``runs.csv``, curves, figures) to ``--protocols-out``.
- **Statistics** per setting, for the final and the best-validation weights (``X@best``; the validation set
  selects): mean ± std over seeds of test Dice, HD95 (pixels at the profile's resolution) and fuzzy-region Dice;
  the paired difference of Dice to ``standard`` (same seeds) with the two-sided paired t-test, corrected for the
  setting's multiple comparisons by **Holm's step-down method** (family = every arm ≠ standard × dataset × weights
  kind of the setting); training CPU seconds per run (mean, and its ratio to ``standard``); peak training memory per
  arm from ``arm_memory.py`` where it has measured the setting's profile and dataset.
- **Outputs** in ``--out``: ``leaderboard.md`` (a table per setting and weights kind, the best of each column in
  bold, a figure per setting), ``leaderboard.csv`` (one row per setting, dataset, arm and weights kind), a PNG per
  setting (Dice per seed as points, mean and 95 % t-interval); ``--update-benchmarks`` puts ``leaderboard.md`` at the
  top of ``BENCHMARKS.md`` (between ``<!-- leaderboard:start -->`` and ``<!-- leaderboard:end -->``).

``--gpu`` swaps every setting's CPU profile for its GPU profile (``gpu``: the paper's 224 px, batch 24, Adam 3e-4,
50-200 epochs; ``gpu_semi`` for protocol 6) and writes to ``benchmarks/results/leaderboard_gpu``.

Usage::

    python benchmarks/leaderboard.py                      # train what is missing (hours on 2 CPU cores), rebuild
    python benchmarks/leaderboard.py --report-only        # rebuild from the committed records, train nothing
    python benchmarks/leaderboard.py --settings p1,p6 --seeds 5
    python benchmarks/leaderboard.py --gpu                # the same leaderboard in the paper's settings, on a GPU
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
from scipy import stats

sys.path.insert(0, str(Path(__file__).resolve().parent))

from accuracy_report import paired_comparison  # noqa: E402

REPO = Path(__file__).resolve().parents[1]

__all__ = ["NOISY_ARMS", "LONG_ARMS", "SEMI_ARMS", "SETTINGS", "Setting", "holm", "load_runs", "setting_rows",
           "markdown", "main"]

#: every noisy-label arm (``accuracy.ARMS``): standard training, DALE as the paper prints it, as the bundles ship
#: it, with the fast ω, the robust losses, co-teaching, TriNet, MW-Net and CLCS
NOISY_ARMS = ("standard", "dale", "dale_unmasked", "dale_fast", "gce", "sce", "coteaching", "trinet", "mwnet",
              "clcs")
#: the `long` settings (the DALE issue's profile) add DALE as shipped without L_W (α = 0), whose runs the DALE issue
#: trained there: the leaderboard writes the same record, so it keeps them
LONG_ARMS = NOISY_ARMS + ("+omega",)
#: every semi-supervised arm of protocol 6 (``full``: the fully labelled upper bound, PH2 only)
SEMI_ARMS = ("standard", "meanteacher", "cps", "fixeddynamic", "dalepl", "gapmatch", "arco", "full")

#: what each arm is, for the tables
ARM_NAMES = {
    "standard": "standard (MONAI SupervisedTrainer)", "dale": "DALE, as the paper prints it",
    "dale_unmasked": "DALE, as the bundles ship it", "+omega": "DALE as shipped without L_W (α = 0)",
    "dale_fast": "DALE, fast ω (first order, head)",
    "gce": "GCE loss", "sce": "SCE loss", "coteaching": "co-teaching", "trinet": "TriNet",
    "mwnet": "MW-Net", "clcs": "CLCS", "meanteacher": "mean teacher", "cps": "cross pseudo supervision",
    "fixeddynamic": "fixed + dynamic pseudo-labels", "dalepl": "DALE on pseudo-labels", "gapmatch": "GapMatch",
    "arco": "ARCO", "full": "all labels (upper bound)",
}

BEST = "@best"
#: the metrics of the tables: (runs.csv column, header, higher is better)
METRICS = (("dice", "Dice", True), ("hd95", "HD95", False), ("fuzzy_dice", "fuzzy Dice", True))


@dataclass(frozen=True)
class Setting:
    """One comparison of the leaderboard: an ``accuracy.py`` protocol on its datasets with a profile.

    Args:
        name: short name (``--settings``).
        title: heading of its tables.
        protocol: ``accuracy.py`` protocol name.
        datasets: datasets passed as ``--datasets``; ``None``: the protocol's own for the profile.
        arms: the arms compared (``standard`` first: the baseline of the paired tests).
        profile: the CPU profile (``accuracy_profiles.PROFILES``).
        gpu_profile: the profile ``--gpu`` uses instead.
    """

    name: str
    title: str
    protocol: str
    datasets: tuple[str, ...] | None
    arms: tuple[str, ...]
    profile: str
    gpu_profile: str


SETTINGS: tuple[Setting, ...] = (
    Setting("p1", "Protocol 1: real noisy labels (COVID-SemiSeg pseudo-labels + 40 doctor slices; radiologists' "
            "test masks)", "noisy_covid", None, NOISY_ARMS, "short", "gpu"),
    Setting("p2", "Protocol 2: injected boundary noise (PH2 clean and dilate/erode; clean test labels)",
            "injected_noise", None, NOISY_ARMS, "short", "gpu"),
    Setting("p3", "Protocol 3: clean labels (COVID doctor labels, PH2)", "clean", None, NOISY_ARMS, "short", "gpu"),
    Setting("long_ph2", "Noisy-label profile `long` (DALE issue): PH2, 15 px boundary noise, 2,000 iterations",
            "injected_noise", ("ph2_dilate_erode_k15",), LONG_ARMS, "long", "gpu"),
    Setting("long_covid", "Noisy-label profile `long` (DALE issue): COVID pseudo-labels, 2,000 iterations",
            "noisy_covid", ("covid_both",), LONG_ARMS, "long", "gpu"),
    Setting("p6", "Protocol 6: semi-supervised (PH2 with 25 % and 10 % of the labels, COVID 40 labelled slices)",
            "semisup", None, SEMI_ARMS, "semi", "gpu_semi"),
)


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values (Holm 1979, *Scand. J. Statist.* 6:65-70): the k-th smallest of m
    p-values is multiplied by m − k + 1, the results made monotone and capped at 1. NaN stays NaN and does not
    count in m. Controls the family-wise error rate like Bonferroni, with more power."""
    p = np.asarray(pvalues, float)
    out = np.full(p.shape, math.nan)
    ok = np.flatnonzero(~np.isnan(p))
    m = ok.size
    running = 0.0
    for rank, i in enumerate(ok[np.argsort(p[ok], kind="stable")]):
        running = max(running, min(1.0, (m - rank) * p[i]))
        out[i] = running
    return out.tolist()


def load_runs(folder: Path) -> list[dict]:
    """The rows of an ``accuracy.py`` record's ``runs.csv`` with numbers parsed (``[]`` if it has none yet)."""
    path = folder / "runs.csv"
    if not path.is_file():
        return []
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    for r in rows:
        r["seed"] = int(r["seed"])
        for k in ("dice", "hd95", "fuzzy_dice", "train_cpu_s"):
            r[k] = float(r[k]) if r.get(k) not in (None, "") else math.nan
    return rows


def _record_folders(folder: Path, setting: Setting, profile: str, protocols_out: Path) -> list[Path]:
    """The ``accuracy.py`` records of a setting: its own folder when it has runs, else, for a setting on the
    protocol's own datasets, the per-dataset records of a protocol run in parts (``--datasets D`` one at a time)."""
    if (folder / "runs.csv").is_file() or setting.datasets:
        return [folder] if (folder / "runs.csv").is_file() else []
    import accuracy  # noqa: E402
    from accuracy_profiles import PROFILES

    protocol = accuracy.PROTOCOLS[setting.protocol]
    datasets = [d for d in protocol.datasets if d != "noise"] + (
        [f"ph2_{lv.name}" for lv in PROFILES[profile].noise_levels] if "noise" in protocol.datasets else [])
    parts = [protocols_out / accuracy.result_folder(setting.protocol, profile, [ds]) for ds in datasets]
    return [f for f in parts if (f / "runs.csv").is_file()]


def _commit(folder: Path) -> str:
    readme = folder / "README.md"
    m = re.search(r"- Commit: `([^`]*)`", readme.read_text()) if readme.is_file() else None
    return m.group(1) if m else "unknown"


def _memory(results: Path, profile: str, datasets: Sequence[str]) -> tuple[dict[str, float], str | None]:
    """Training working memory (MiB above the level at the start of training, ``arm_memory.py``'s
    ``increment_mib``) per arm for a profile, and the dataset it was measured on: the first of ``datasets`` with a
    report, else any report of the profile (every dataset of a profile has the same image size and batch)."""
    paths = [results / f"arm_memory_{profile}_{ds}.json" for ds in datasets]
    paths += sorted(results.glob(f"arm_memory_{profile}_*.json"))
    for path in paths:
        if path.is_file():
            d = json.loads(path.read_text())
            return {a: float(v["increment_mib"]) for a, v in d.get("arms", {}).items()
                    if v.get("increment_mib") is not None}, d.get("dataset")
    return {}, None


def setting_rows(setting: Setting, runs: list[dict], memory: dict[str, float] | None = None) -> list[dict]:
    """One row per dataset, arm and weights kind of a setting's runs: means, stds, paired Dice difference to
    ``standard`` with its raw and Holm-adjusted p (the family: all of the setting's rows but ``standard``'s),
    CPU seconds and peak memory with their ratios to ``standard``."""
    memory = memory or {}
    by: dict[tuple[str, str], dict[int, dict]] = {}
    for r in runs:
        by.setdefault((r["dataset"], r["arm"]), {})[r["seed"]] = r
    datasets = list(dict.fromkeys(r["dataset"] for r in runs))
    out = []
    for ds in datasets:
        for weights, suffix in (("final", ""), ("best", BEST)):
            base = by.get((ds, "standard" + suffix), {})
            base_cpu = np.nanmean([r["train_cpu_s"] for r in base.values()]) if base else math.nan
            for arm in setting.arms:
                cur = by.get((ds, arm + suffix))
                if not cur:
                    continue
                row = {"setting": setting.name, "dataset": ds, "arm": arm, "weights": weights, "n_seeds": len(cur),
                       "seeds": " ".join(str(s) for s in sorted(cur))}
                for m, _, _ in METRICS:
                    v = np.array([r[m] for r in cur.values()], float)
                    row[f"{m}_mean"] = float(np.nanmean(v)) if np.isfinite(v).any() else math.nan
                    row[f"{m}_std"] = float(np.nanstd(v, ddof=1)) if np.isfinite(v).sum() > 1 else math.nan
                row["train_cpu_s"] = float(np.nanmean([r["train_cpu_s"] for r in cur.values()]))
                row["cpu_vs_standard"] = row["train_cpu_s"] / base_cpu if base_cpu else math.nan
                row["peak_mib"] = memory.get(arm, math.nan)
                row["mem_vs_standard"] = (memory[arm] / memory["standard"]) if arm in memory and \
                    memory.get("standard") else math.nan
                row["code_versions"] = " ".join(sorted({r.get("code_version", "") for r in cur.values()}))
                if arm != "standard":
                    seeds = sorted(set(cur) & set(base))
                    c = paired_comparison([cur[s]["dice"] for s in seeds], [base[s]["dice"] for s in seeds])
                    row.update(n_pairs=c["n"], dice_diff=c["diff_mean"], p=c["p"])
                out.append(row)
    compared = [i for i, r in enumerate(out) if r["arm"] != "standard"]
    for i, q in zip(compared, holm([out[i]["p"] for i in compared])):
        out[i]["p_holm"] = q
    return out


def _ci95(v: np.ndarray) -> float:
    return float(stats.t.ppf(0.975, v.size - 1) * v.std(ddof=1) / math.sqrt(v.size)) if v.size > 1 else math.nan


def plot_setting(path: Path, setting: Setting, runs: list[dict]) -> bool:
    """Test Dice per seed (points; final weights filled, best-validation weights open) with the mean and its 95 %
    t-interval, one panel per dataset. Returns False without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: leaderboard figures skipped (pip install matplotlib)")
        return False
    datasets = list(dict.fromkeys(r["dataset"] for r in runs))
    arms = [a for a in setting.arms if any(r["arm"] == a for r in runs)]
    fig, axes = plt.subplots(1, len(datasets), figsize=(max(4.0, 0.75 * len(arms)) * len(datasets), 3.8),
                             squeeze=False)
    for ax, ds in zip(axes[0], datasets):
        ref = [r["dice"] for r in runs if r["dataset"] == ds and r["arm"] == "standard"]
        if ref:
            ax.axhline(float(np.mean(ref)), ls=":", lw=0.8, color="#7f7f7f")  # the baseline every arm is tested against
        for x, arm in enumerate(arms):
            for dx, suffix, filled in ((-0.15, "", True), (0.15, BEST, False)):
                v = np.array([r["dice"] for r in runs if r["dataset"] == ds and r["arm"] == arm + suffix], float)
                if not v.size:
                    continue
                ax.plot(np.full(v.size, x + dx), v, "o", ms=3.5, color="#1f4e79",
                        mfc="#1f4e79" if filled else "none", alpha=0.8)
                ax.errorbar(x + dx + 0.07, v.mean(), yerr=_ci95(v) if v.size > 1 else None, fmt="_", ms=9,
                            color="#c0392b", capsize=2, lw=1)
        ax.set_xticks(range(len(arms)))
        ax.set_xticklabels(arms, rotation=35, ha="right", fontsize=8)
        ax.set_title(ds, fontsize=9)
        ax.set_ylabel("test Dice")
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle(f"{setting.title}\nfilled: final weights, open: best-validation weights; red: mean and 95 % CI; "
                 "dotted: standard's mean (final weights)",
                 fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def _fmt(v: float, digits: int = 3) -> str:
    return "—" if v is None or v != v else f"{v:.{digits}f}"


def _fmt_p(p: float) -> str:
    return "—" if p != p else (f"{p:.2f}" if p >= 0.01 else f"{p:.1g}")


def _table(setting: Setting, rows: list[dict], weights: str, seeds: int) -> list[str]:
    rows = [r for r in rows if r["weights"] == weights]
    datasets = list(dict.fromkeys(r["dataset"] for r in rows))
    arms = [a for a in setting.arms if any(r["arm"] == a for r in rows)]
    cell = {(r["dataset"], r["arm"]): r for r in rows}
    best = {}
    for ds in datasets:
        for m, _, higher in METRICS:
            vals = [(cell[(ds, a)][f"{m}_mean"], a) for a in arms if (ds, a) in cell
                    and cell[(ds, a)][f"{m}_mean"] == cell[(ds, a)][f"{m}_mean"]]
            if vals:
                best[(ds, m)] = (max if higher else min)(vals)[1]
    head = ["arm"]
    for ds in datasets:
        head += [f"{ds} Dice", "Δ Dice (p Holm)", "HD95", "fuzzy Dice"]
    head += ["train CPU s (× std)", "peak MiB (× std)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    cpu_best = min((np.nanmean([cell[(ds, a)]["train_cpu_s"] for ds in datasets if (ds, a) in cell]), a)
                   for a in arms)[1] if arms else None
    for a in arms:
        cells = [a]
        for ds in datasets:
            r = cell.get((ds, a))
            if r is None:
                cells += ["not run"] + ["—"] * 3
                continue
            n = f" (n={r['n_seeds']})" if r["n_seeds"] < seeds else ""
            for m, _, _ in METRICS:
                txt = _fmt(r[f"{m}_mean"], 3 if m != "hd95" else 1)
                if m == "dice":
                    txt += f" ± {_fmt(r['dice_std'])}{n}"
                if best.get((ds, m)) == a:
                    txt = f"**{txt}**"
                cells.append(txt)
                if m == "dice":
                    cells.append("" if a == "standard" else
                                 f"{r['dice_diff']:+.3f} ({_fmt_p(r.get('p_holm', math.nan))})")
        cpu = [cell[(ds, a)] for ds in datasets if (ds, a) in cell]
        cpu_s = np.nanmean([r["train_cpu_s"] for r in cpu])
        cpu_txt = f"{cpu_s:.0f} ({np.nanmean([r['cpu_vs_standard'] for r in cpu]):.1f}×)"
        cells.append(f"**{cpu_txt}**" if a == cpu_best else cpu_txt)
        mib = [r["peak_mib"] for r in cpu if r["peak_mib"] == r["peak_mib"]]
        cells.append(f"{np.mean(mib):.0f} ({np.nanmean([r['mem_vs_standard'] for r in cpu]):.1f}×)" if mib else "—")
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def markdown(blocks: list[tuple[Setting, str, list[dict], str, str | None]], command: str, seeds: int) -> str:
    """The leaderboard's Markdown: per setting its provenance line, a table for the final and one for the
    best-validation weights, and its figure. ``blocks``: (setting, profile, rows, record folder, figure name)."""
    out = ["# Leaderboard: every paradigm, the same seeds and budgets", "",
           f"Built by `{command}` from the records named below (each with its commit and the code version of its runs: "
           "a hash of the training sources, part of every run's cache key). Test metrics on each dataset's test "
           "section; HD95 in pixels at the profile's resolution; fuzzy Dice inside the fuzzy region of the test "
           f"image. Mean ± std over seeds (goal: {seeds} seeds; fewer are marked n=…). Δ Dice: paired difference "
           "to `standard` on the same seeds, in brackets its two-sided paired t-test p **adjusted by Holm's step-down "
           "method** over every comparison of the setting (all arms ≠ standard × datasets × both weights kinds). "
           "Bold: the best of each column. CPU seconds: training only, per run, mean over datasets; peak MiB: "
           "`benchmarks/arm_memory.py`'s training working memory (the peak resident memory of the arm's first "
           "training iterations above the level at their start, median of 3 fresh processes), where it ran for the "
           "setting's profile. The same leaderboard with the paper's settings on a GPU: "
           "`python benchmarks/leaderboard.py --gpu` (every setting's GPU profile in "
           "`benchmarks/accuracy_profiles.py`: `gpu`, 224 px, batch 24, Adam 3e-4, 50-200 epochs; `gpu_semi` for "
           "protocol 6), written to `benchmarks/results/leaderboard_gpu` and resumed from the run cache the same way.",
           ""]
    for setting, profile, rows, folder, fig in blocks:
        out += [f"## {setting.title}", ""]
        if not rows:
            out += [f"Not run yet ({folder} has no runs).", ""]
            continue
        runs_cv = sorted({v for r in rows for v in r["code_versions"].split()})
        mem = rows[0].get("memory_dataset")
        commits = ", ".join(f"`{c[:7]}`" for c in dict.fromkeys(r["commit"] for r in rows))
        out += [f"Profile `{profile}`; record(s) {folder} (commit(s) {commits}, code versions of the runs "
                f"{', '.join(runs_cv)})"
                + (f"; peak memory measured on `{mem}`" if mem else "; peak memory not measured for this profile")
                + ".", ""]
        missing = [a for a in setting.arms if not any(r["arm"] == a for r in rows)]
        short = sorted({r["dataset"] for r in rows if r["n_seeds"] < seeds})
        status = ("complete" if not missing and not short else
                  "**incomplete**" + (f": arms not run {', '.join(f'`{a}`' for a in missing)}" if missing else "")
                  + (f"{';' if missing else ':'} fewer than {seeds} seeds on {', '.join(short)}" if short else ""))
        out += [f"Status: {status}.", ""]
        for weights, title in (("final", "final weights"), ("best", "best-validation weights")):
            out += [f"Test, {title}:", "", *_table(setting, rows, weights, seeds), ""]
        if fig:
            out += [f"![{setting.name}]({fig})", ""]
    return "\n".join(out) + "\n"


def update_benchmarks(path: Path, md: str, figures_rel: str) -> None:
    """Put the leaderboard at the top of ``BENCHMARKS.md`` between the markers (replacing a previous one)."""
    start, end = "<!-- leaderboard:start -->", "<!-- leaderboard:end -->"
    body = re.sub(r"!\[([^\]]*)\]\(([^)/]+\.png)\)", lambda m: f"![{m.group(1)}]({figures_rel}/{m.group(2)})", md)
    body = body.replace("# Leaderboard:", "## Leaderboard:", 1).replace("\n## ", "\n### ")
    body = body.replace("### Leaderboard:", "## Leaderboard:", 1)
    text = path.read_text() if path.is_file() else ""
    block = f"{start}\n{body}{end}\n"
    if start in text and end in text:
        text = text[:text.index(start)] + block + text[text.index(end) + len(end) + 1:]
    else:
        first, _, rest = text.partition("\n")
        text = f"{first}\n\n{block}\n{rest.lstrip()}" if first.startswith("# ") else block + "\n" + text
    path.write_text(text)


def _measure_memory(setting: Setting, profile: str, dataset: str, args: argparse.Namespace) -> None:
    """``arm_memory.py`` for the setting's arms on one of its datasets (cached per arm: only what is missing runs),
    its report rewritten in ``--results``."""
    import arm_memory  # noqa: E402

    arms = [a for a in setting.arms if a not in arm_memory.ARM_DATASETS or dataset in arm_memory.ARM_DATASETS[a]]
    results = arm_memory.measure(profile, dataset, arms, Path(args.work), repeats=3, data=args.data_dir)
    command = (f"python benchmarks/arm_memory.py --profile {profile} --dataset {dataset} --arms {','.join(arms)} "
               f"--repeats 3 --overwrite")
    arm_memory.write_report(results, arm_memory.resolve_profile(profile), dataset, Path(args.results), command,
                            overwrite=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--settings", default=",".join(s.name for s in SETTINGS),
                   help="comma-separated subset of " + ",".join(s.name for s in SETTINGS))
    p.add_argument("--seeds", type=int, default=5, help="seeds per arm")
    p.add_argument("--gpu", action="store_true", help="every setting's GPU profile (the paper's settings)")
    p.add_argument("--report-only", action="store_true",
                   help="train nothing: rebuild the leaderboard from the records in --protocols-out")
    p.add_argument("--work", default=str(REPO / "data" / "bench"), help="converted data and the run cache")
    p.add_argument("--data-dir", default=None, help="real data (default $DALE_DATA_DIR or ../shared/data)")
    p.add_argument("--protocols-out", default=str(REPO / "benchmarks" / "results" / "accuracy"),
                   help="where each setting's accuracy.py record is written and read")
    p.add_argument("--out", default=None,
                   help="leaderboard folder (default benchmarks/results/leaderboard, or leaderboard_gpu with --gpu)")
    p.add_argument("--results", default=str(REPO / "benchmarks" / "results"),
                   help="where arm_memory.py's arm_memory_<profile>_<dataset>.json are read")
    p.add_argument("--no-memory", action="store_true",
                   help="do not measure peak memory (arm_memory.py) for the settings that train")
    p.add_argument("--update-benchmarks", action="store_true", help="put the leaderboard at the top of BENCHMARKS.md")
    args = p.parse_args(argv)
    chosen = args.settings.split(",")
    known = {s.name: s for s in SETTINGS}
    unknown = [s for s in chosen if s not in known]
    if unknown:
        p.error(f"unknown setting(s) {unknown}; choose from {list(known)}")
    if args.seeds < 1:
        p.error("--seeds must be at least 1")
    out = Path(args.out or REPO / "benchmarks" / "results" / ("leaderboard_gpu" if args.gpu else "leaderboard"))
    protocols_out = Path(args.protocols_out)

    import accuracy  # noqa: E402  (torch and MONAI: only when training or naming folders)

    blocks, all_rows = [], []
    for name in chosen:
        setting = known[name]
        profile = setting.gpu_profile if args.gpu else setting.profile
        folder = protocols_out / accuracy.result_folder(setting.protocol, profile, setting.datasets)
        if not args.report_only:
            acc_args = [setting.protocol, "--profile", profile, "--seeds", str(args.seeds), "--arms",
                        ",".join(setting.arms), "--work", args.work, "--out", str(protocols_out)]
            if setting.datasets:
                acc_args += ["--datasets", ",".join(setting.datasets)]
            if args.data_dir:
                acc_args += ["--data-dir", args.data_dir]
            print(f"== {setting.name}: python benchmarks/accuracy.py {' '.join(acc_args)}", flush=True)
            rc = accuracy.main(acc_args)
            if rc:
                print(f"setting {setting.name}: accuracy.py exited with {rc}", file=sys.stderr)
                return rc
        folders = _record_folders(folder, setting, profile, protocols_out)
        runs = [dict(r, commit=_commit(f)) for f in folders for r in load_runs(f)
                if r["seed"] < args.seeds and r["arm"].removesuffix(BEST) in setting.arms]
        datasets = list(dict.fromkeys(r["dataset"] for r in runs))
        if datasets and not args.report_only and not args.no_memory:
            _measure_memory(setting, profile, datasets[0], args)
        memory, mem_ds = _memory(Path(args.results), profile, datasets)
        rows = setting_rows(setting, runs, memory)
        for r in rows:
            r["memory_dataset"] = mem_ds
        commits = {r["dataset"]: r["commit"] for r in runs}
        for r in rows:
            r["commit"] = commits[r["dataset"]]
        out.mkdir(parents=True, exist_ok=True)
        fig = f"{setting.name}.png" if runs and plot_setting(out / f"{setting.name}.png", setting, runs) else None
        rel = [str(f.resolve().relative_to(REPO) if f.resolve().is_relative_to(REPO) else f) for f in folders]
        blocks.append((setting, profile, rows, ", ".join(f"`{x}`" for x in rel) or f"`{folder}`", fig))
        all_rows += rows
    cmd = "python benchmarks/leaderboard.py " + " ".join(argv if argv is not None else sys.argv[1:])
    md = markdown(blocks, cmd.strip(), args.seeds)
    out.mkdir(parents=True, exist_ok=True)
    (out / "leaderboard.md").write_text(md)
    cols = ["setting", "dataset", "arm", "weights", "n_seeds", "seeds", "dice_mean", "dice_std", "hd95_mean",
            "hd95_std", "fuzzy_dice_mean", "fuzzy_dice_std", "n_pairs", "dice_diff", "p", "p_holm", "train_cpu_s",
            "cpu_vs_standard", "peak_mib", "mem_vs_standard", "memory_dataset", "commit", "code_versions"]
    with open(out / "leaderboard.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols, extrasaction="ignore")
        w.writeheader()
        for r in all_rows:
            w.writerow({c: ("" if isinstance(r.get(c), float) and r[c] != r[c] else
                            (f"{r[c]:.6g}" if isinstance(r.get(c), float) else r.get(c, ""))) for c in cols})
    if args.update_benchmarks:
        rel = out.resolve().relative_to(REPO) if out.resolve().is_relative_to(REPO) else out
        update_benchmarks(REPO / "BENCHMARKS.md", md, str(rel))
    print(f"leaderboard: {out / 'leaderboard.md'}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
