"""Tables (CSV, Markdown), paired statistics and figures (PNG) of the accuracy benchmarks.

matplotlib is imported inside the plotting functions only: without it the tables are still written and
the figures are skipped with a message (it is an optional ``benchmarks`` dependency).
"""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from scipy import stats

__all__ = [
    "RUN_COLUMNS",
    "SUMMARY_COLUMNS",
    "COMPARISON_COLUMNS",
    "paired_comparison",
    "write_csv",
    "summary_rows",
    "comparison_rows",
    "markdown_tables",
    "plot_metric_by_arm",
    "plot_noise",
    "plot_curves",
    "plot_examples",
    "plot_partition",
    "time_to_target",
]

RUN_COLUMNS = ("protocol", "profile", "dataset", "arm", "seed", "weights", "dice", "miou", "hd95", "asd", "fuzzy_dice",
               "iterations", "train_wall_s", "train_cpu_s", "final_val_dice", "best_val_dice", "best_iteration",
               "fuzzy_fraction", "omega_mean",
               "omega_abs_dev", "omega_frac_below_1", "omega_frac_small_grad", "loss_w", "noisy_in_fuzzy",
               "mask_f_noisy", "mask_f_clean", "omega_below1_noisy", "omega_below1_clean", "omega_mean_noisy",
               "omega_mean_clean", "key", "code_version")
SUMMARY_COLUMNS = ("dataset", "arm", "n_seeds", "dice_mean", "dice_std", "miou_mean", "miou_std", "hd95_mean",
                   "hd95_std", "asd_mean", "asd_std", "fuzzy_dice_mean", "fuzzy_dice_std", "train_cpu_s_mean")
COMPARISON_COLUMNS = ("dataset", "arm", "baseline", "metric", "n", "arm_mean", "baseline_mean", "diff_mean",
                      "diff_std", "rel_diff", "t", "p")
#: lower is better for these
LOWER_BETTER = ("hd95", "asd")


def paired_comparison(a: Sequence[float], b: Sequence[float]) -> dict[str, float]:
    """Paired comparison of ``a`` (e.g. DALE) against ``b`` (standard) over seeds: mean difference, its std,
    relative difference of the means and the two-sided paired t-test (NaN with fewer than 2 pairs)."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    d = a - b
    n = int(d.size)
    out = {"n": n, "arm_mean": float(a.mean()) if n else math.nan, "baseline_mean": float(b.mean()) if n else math.nan,
           "diff_mean": float(d.mean()) if n else math.nan, "diff_std": float(d.std(ddof=1)) if n > 1 else math.nan}
    out["rel_diff"] = out["diff_mean"] / out["baseline_mean"] if n and out["baseline_mean"] else math.nan
    if n > 1 and np.any(d != d[0]):
        res = stats.ttest_rel(a, b)
        out["t"], out["p"] = float(res.statistic), float(res.pvalue)
    else:
        out["t"] = out["p"] = math.nan
    return out


def write_csv(path: Path, rows: list[dict], columns: Sequence[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(columns), extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({c: _fmt_csv(r.get(c, "")) for c in columns})


def _fmt_csv(v: Any) -> Any:
    if isinstance(v, float):
        return "" if math.isnan(v) else f"{v:.6g}"
    return v


def _group(runs: list[dict]) -> dict[tuple[str, str], dict[int, dict]]:
    g: dict[tuple[str, str], dict[int, dict]] = {}
    for r in runs:
        g.setdefault((r["dataset"], r["arm"]), {})[r["seed"]] = r
    return g


def summary_rows(runs: list[dict], datasets: Sequence[str], arms: Sequence[str]) -> list[dict]:
    """Mean ± std over seeds of every metric, per (dataset, arm)."""
    g = _group(runs)
    out = []
    for ds in datasets:
        for arm in arms:
            rs = list(g.get((ds, arm), {}).values())
            if not rs:
                continue
            row: dict[str, Any] = {"dataset": ds, "arm": arm, "n_seeds": len(rs)}
            for m in ("dice", "miou", "hd95", "asd", "fuzzy_dice"):
                v = np.array([r[m] for r in rs], float)
                row[f"{m}_mean"] = float(v.mean())
                row[f"{m}_std"] = float(v.std(ddof=1)) if v.size > 1 else math.nan
            row["train_cpu_s_mean"] = float(np.mean([r["train_cpu_s"] for r in rs]))
            out.append(row)
    return out


def comparison_rows(runs: list[dict], datasets: Sequence[str], arms: Sequence[str], baseline: str) -> list[dict]:
    """Each arm against the baseline, paired by seed, for every metric."""
    g = _group(runs)
    out = []
    for ds in datasets:
        base = g.get((ds, baseline), {})
        for arm in arms:
            if arm == baseline:
                continue
            cur = g.get((ds, arm), {})
            if not cur:  # an arm without runs on this dataset (e.g. `full` has no COVID dataset): nothing to compare
                continue
            seeds = sorted(set(base) & set(cur))
            for m in ("dice", "miou", "hd95", "asd", "fuzzy_dice"):
                c = paired_comparison([cur[s][m] for s in seeds], [base[s][m] for s in seeds])
                out.append({"dataset": ds, "arm": arm, "baseline": baseline, "metric": m, **c})
    return out


def _pm(mean: float, std: float, digits: int = 3) -> str:
    if mean != mean:
        return "n/a"
    return f"{mean:.{digits}f} ± {std:.{digits}f}" if std == std else f"{mean:.{digits}f}"


def markdown_tables(summary: list[dict], comparisons: list[dict], dataset_notes: dict[str, str] | None = None) -> str:
    """Markdown: one results table (mean ± std over seeds) and one paired-comparison table."""
    notes = dataset_notes or {}
    lines = ["| dataset | arm | seeds | Dice | mIoU | HD95 (px) | ASD (px) | fuzzy-region Dice | train CPU s |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in summary:
        ds = r["dataset"] + (f" ({notes[r['dataset']]})" if r["dataset"] in notes else "")
        lines.append(
            f"| {ds} | {r['arm']} | {r['n_seeds']} | {_pm(r['dice_mean'], r['dice_std'])} | "
            f"{_pm(r['miou_mean'], r['miou_std'])} | {_pm(r['hd95_mean'], r['hd95_std'], 2)} | "
            f"{_pm(r['asd_mean'], r['asd_std'], 2)} | {_pm(r['fuzzy_dice_mean'], r['fuzzy_dice_std'])} | "
            f"{r['train_cpu_s_mean']:.0f} |")
    lines += ["", "Paired over seeds (arm − baseline; two-sided paired t-test):", "",
              "| dataset | arm vs baseline | metric | Δ mean ± std | relative | p |", "|---|---|---|---|---|---|"]
    for c in comparisons:
        if c["metric"] not in ("dice", "hd95", "fuzzy_dice"):
            continue
        rel = f"{100 * c['rel_diff']:+.1f} %" if c["rel_diff"] == c["rel_diff"] else "n/a"
        p = f"{c['p']:.3f}" if c["p"] == c["p"] else "n/a"
        lines.append(f"| {c['dataset']} | {c['arm']} vs {c['baseline']} | {c['metric']} | "
                     f"{c['diff_mean']:+.4f} ± {c['diff_std']:.4f} | {rel} | {p} |")
    return "\n".join(lines) + "\n"


def time_to_target(curve: list[dict], target: float, clock: str) -> float:
    """First ``clock`` value (``iteration``, ``wall_s`` or ``cpu_s``) at which the validation Dice reaches
    ``target``; NaN if never."""
    for pt in curve:
        if pt["val_dice"] >= target:
            return float(pt[clock])
    return math.nan


# ---------------------------------------------------------------------------------------------- figures


def _plt():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: figures skipped (pip install matplotlib)")
        return None
    return plt


def plot_metric_by_arm(path: Path, runs: list[dict], datasets: Sequence[str], arms: Sequence[str],
                       metric: str = "dice", title: str = "") -> bool:
    """One panel per dataset: the metric of every seed (dots, seeds joined across arms) and the mean (bar)."""
    plt = _plt()
    if plt is None:
        return False
    g = _group(runs)
    fig, axes = plt.subplots(1, len(datasets), figsize=(max(4, 1.3 * len(arms)) * len(datasets), 3.6),
                             squeeze=False)
    for ax, ds in zip(axes[0], datasets):
        seeds = sorted({s for a in arms for s in g.get((ds, a), {})})
        means = [np.mean([r[metric] for r in g.get((ds, a), {}).values()]) if g.get((ds, a)) else np.nan
                 for a in arms]
        ax.bar(range(len(arms)), means, color="#c8d7e8", edgecolor="#4a6fa5")
        for s in seeds:
            ys = [g.get((ds, a), {}).get(s, {}).get(metric, np.nan) for a in arms]
            ax.plot(range(len(arms)), ys, "o-", color="#333333", alpha=0.6, lw=0.8, ms=3)
        ax.set_xticks(range(len(arms)))
        ax.set_xticklabels(arms, rotation=30, ha="right", fontsize=8)
        ax.set_title(ds, fontsize=9)
        ax.set_ylabel(metric)
        finite = [v for v in means if v == v]
        if finite and metric not in LOWER_BETTER:
            lo = min(min(r[metric] for r in g.get((ds, a), {}).values()) for a in arms if g.get((ds, a)))
            ax.set_ylim(max(0, lo - 0.05), min(1, max(finite) + 0.05))
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def plot_noise(path: Path, summary: list[dict], levels: dict[str, float], arms: Sequence[str], baseline: str) -> bool:
    """Test Dice (mean ± std over seeds) against the measured noise level, and the gap to the baseline."""
    plt = _plt()
    if plt is None:
        return False
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(9, 3.6))
    by = {(r["dataset"], r["arm"]): r for r in summary}
    order = sorted(levels, key=lambda d: levels[d])
    xs = [1 - levels[d] for d in order]
    for arm in arms:
        m = [by[(d, arm)]["dice_mean"] if (d, arm) in by else np.nan for d in order]
        s = [by[(d, arm)]["dice_std"] if (d, arm) in by else np.nan for d in order]
        a1.errorbar(xs, m, yerr=s, marker="o", capsize=3, label=arm)
        if arm != baseline:
            gap = [by[(d, arm)]["dice_mean"] - by[(d, baseline)]["dice_mean"]
                   if (d, arm) in by and (d, baseline) in by else np.nan for d in order]
            a2.plot(xs, gap, "o-", label=f"{arm} − {baseline}")
    a1.set_xlabel("label noise (1 − Dice of training labels vs clean)")
    a1.set_ylabel("test Dice (clean labels)")
    a1.legend(fontsize=8)
    a2.axhline(0, color="k", lw=0.6)
    a2.set_xlabel("label noise (1 − Dice of training labels vs clean)")
    a2.set_ylabel("Δ test Dice")
    a2.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def plot_curves(path: Path, runs: list[dict], dataset: str, arms: Sequence[str]) -> bool:
    """Validation Dice against iterations, training wall time and training CPU time (one line per seed)."""
    plt = _plt()
    if plt is None:
        return False
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, arm in enumerate(arms):
        for j, r in enumerate(sorted((r for r in runs if r["dataset"] == dataset and r["arm"] == arm),
                                     key=lambda r: r["seed"])):
            c = r["curve"]
            for ax, clock in zip(axes, ("iteration", "wall_s", "cpu_s")):
                ax.plot([p[clock] for p in c], [p["val_dice"] for p in c], "-o", ms=2, lw=1, alpha=0.8,
                        color=colors[i % len(colors)], label=arm if j == 0 else None)
    for ax, name in zip(axes, ("iterations", "training wall time (s)", "training CPU time (s)")):
        ax.set_xlabel(name)
        ax.set_ylabel("validation Dice")
        ax.legend(fontsize=8)
    fig.suptitle(f"convergence on {dataset} (validation set, one line per seed)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def _show(ax, img: np.ndarray, title: str = "", cmap: str | None = "gray", **kw) -> None:
    img = np.asarray(img)
    if img.ndim == 3 and img.shape[0] == 3:
        img, cmap = np.moveaxis(img, 0, -1), None
    elif img.ndim == 3:
        img = img[0]
    ax.imshow(img, cmap=cmap, interpolation="nearest", **kw)
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title, fontsize=8)


def plot_examples(path: Path, images: list[np.ndarray], truths: list[np.ndarray], preds: dict[str, list[np.ndarray]],
                  names: list[str]) -> bool:
    """Grid: one row per case; columns image, truth, then one prediction per arm (green = truth contour)."""
    plt = _plt()
    if plt is None:
        return False
    cols = 2 + len(preds)
    fig, axes = plt.subplots(len(images), cols, figsize=(1.9 * cols, 1.9 * len(images)), squeeze=False)
    for i, (img, gt) in enumerate(zip(images, truths)):
        _show(axes[i, 0], img, names[i])
        _show(axes[i, 1], gt, "truth" if i == 0 else "")
        for j, (arm, ps) in enumerate(preds.items()):
            _show(axes[i, 2 + j], ps[i], arm if i == 0 else "")
            axes[i, 2 + j].contour(np.asarray(gt).reshape(ps[i].shape), levels=[0.5], colors="lime", linewidths=0.6)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def plot_partition(path: Path, snap: dict[str, np.ndarray], title: str = "") -> bool:
    """Last training batch of a DALE run: image, training label, (where it differs from the clean label), M^f,
    and ω* − 1."""
    plt = _plt()
    if plt is None or "snap_image" not in snap:
        return False
    n = snap["snap_image"].shape[0]
    has_clean = "snap_label_clean" in snap
    cols = 5 if has_clean else 4
    fig, axes = plt.subplots(n, cols, figsize=(2.1 * cols, 2.1 * n), squeeze=False)
    dev = snap["snap_omega"] - 1
    lim = float(np.abs(dev).max()) or 1e-12
    for i in range(n):
        c = 0
        _show(axes[i, c], snap["snap_image"][i], "image" if i == 0 else "")
        c += 1
        _show(axes[i, c], snap["snap_label"][i], "training label" if i == 0 else "")
        c += 1
        if has_clean:
            wrong = (snap["snap_label"][i] > 0.5) != (snap["snap_label_clean"][i] > 0.5)
            _show(axes[i, c], wrong, "noisy pixels (≠ clean label)" if i == 0 else "")
            c += 1
        _show(axes[i, c], snap["snap_mask_f"][i], "M^f (fuzzy)" if i == 0 else "", cmap="magma", vmin=0, vmax=1)
        c += 1
        _show(axes[i, c], dev[i], f"ω*−1 (±{lim:.2g}; blue: ω*<1)" if i == 0 else "", cmap="coolwarm",
              vmin=-lim, vmax=lim)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True
