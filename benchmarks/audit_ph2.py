"""Label-audit benchmark: how well ``python -m dale_monai audit`` finds the corrupted PH2 training labels.

PH2 (the fixed seed-0 70/10/20 split of ``python -m data_prep ph2``) gets 15 px dilate/erode noise on a seeded
fraction of its training cases (``python -m data_prep noise --fraction``); the clean reference of every training
label is kept (``label_clean``), so the truly corrupted cases and the truly wrong pixels are known. The audit
(:class:`dale_monai.audit.LabelAudit`, bundle ``ph2_unet`` at 96 px with the quick profile's small UNet, K-fold
cross-validation) ranks the training cases; this script scores, for every signal and for the combination:

- case level: ROC AUC of the case suspicion against "corrupted", and precision among the ``n`` most suspect
  cases, ``n`` the true number of corrupted cases;
- pixel level, on the network grid, pooled over all training pixels: ROC AUC of each per-pixel map against
  "noisy label != clean label", and precision/recall of the suspected pixels (cleanlab's label issues; M^f >= 0.9
  for the partition).

Each arm (``standard``: the bundle's ``plain_train.json``; ``dale``: its ``train.json``) is one audit folder
under ``--work``; finished folds are reused, so the script resumes where it stopped.

    OMP_NUM_THREADS=1 python benchmarks/audit_ph2.py --arms standard dale
    python benchmarks/audit_ph2.py --covid-figure /tmp/covid_audit   # COVID pseudo-labels, figure outside git

Results: ``benchmarks/results/audit_ph2.md`` and ``.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
if str(REPO / "benchmarks") not in sys.path:
    sys.path.insert(0, str(REPO / "benchmarks"))

from accuracy_core import _data_prep, data_dir, prepare_dataset  # noqa: E402
import provenance  # noqa: E402

from dale_monai.audit import LabelAudit  # noqa: E402

#: the quick profile's network and resolution (benchmarks/accuracy_core.py), through the bundle's overrides
OVERRIDES = {"spatial_size": [96, 96], "network_def#channels": [8, 16, 32, 64], "network_def#strides": [2, 2, 2],
             "network_def#num_res_units": 1, "batch_size": 8, "learning_rate": 1e-3, "dale#patch_size": 8,
             "val_interval": 1000, "device": "$torch.device('cpu')"}
ARMS = {"standard": ["plain_train.json"], "dale": []}
SIGNALS = ("cleanlab", "cleanlab_issues", "disagreement", "partition", "loss", "omega", "combined")
PIXEL_MAPS = ("cleanlab", "partition", "mean")


def _noisy_dataset(work: Path, src: Path, k: int, fraction: float, seed: int) -> Path:
    clean = prepare_dataset("ph2", src, work)
    out = work / f"ph2_audit_k{k}_f{fraction:g}_s{seed}"
    if not (out / "datalist.json").is_file():
        _data_prep(["noise", "--datalist", clean, "--out", out, "--protocol", "dilate_erode", "--k", k, "--seed",
                    seed, "--fraction", fraction])
    return out / "datalist.json"


def _precision_at(scores: np.ndarray, truth: np.ndarray, n: int) -> float:
    order = np.argsort(-scores, kind="stable")[:n]
    return float(truth[order].mean()) if n else float("nan")


def _pr(pred: np.ndarray, truth: np.ndarray) -> tuple[float, float]:
    tp = float((pred & truth).sum())
    return (tp / pred.sum() if pred.sum() else float("nan")), (tp / truth.sum() if truth.sum() else float("nan"))


def evaluate(result, datalist: Path, bundle: Path, configs: list[str], overrides: dict | None = None) -> dict:
    """Case- and pixel-level scores of one audit against the clean reference labels of ``datalist`` (the
    training entries' ``label_clean``), the clean labels taken to the network grid by the bundle's validation
    preprocessing with ``overrides`` (default :data:`OVERRIDES`)."""
    from sklearn.metrics import roc_auc_score

    from dale_monai.audit import BundleTraining

    doc = json.loads(datalist.read_text())
    root = datalist.parent
    clean_of = {str((root / e["label"]).resolve()): str((root / e["label_clean"]).resolve())
                for e in doc["training"]}
    names = [c["case"] for c in result.cases]
    truth = np.asarray([clean_of[str(Path(c["label"]).resolve())] != str(Path(c["label"]).resolve())
                        for c in result.cases])
    out: dict = {"n_cases": len(names), "n_corrupted": int(truth.sum()), "case": {}, "pixel": {}}
    signals = dict(result.signals)
    signals["combined"] = result.combined
    for name in SIGNALS:
        if name not in signals:
            continue
        s = np.asarray(signals[name], np.float64)
        out["case"][name] = {"auc": float(roc_auc_score(truth, s)),
                             "precision_at_n": _precision_at(s, truth, int(truth.sum()))}
    # the clean labels on the network grid, through the same validation preprocessing
    parser = BundleTraining(bundle, configs, OVERRIDES if overrides is None else overrides).parser(
        [], [], Path("/nonexistent"), 0)
    pre = parser.get_parsed_content("validate#preprocessing")
    wrong, maps, flagged, fuzzy = [], {m: [] for m in PIXEL_MAPS}, [], []
    for c in result.cases:
        clean = np.asarray(pre({"image": c["image"], "label": clean_of[str(Path(c["label"]).resolve())]})["label"])[0]
        lab = result.labels[c["case"]]
        wrong.append(((lab > 0) != (clean > 0.5)).ravel())
        pm = result.pixel_maps[c["case"]]
        maps["cleanlab"].append(pm["cleanlab"].ravel())
        maps["partition"].append(pm["partition"].ravel())
        maps["mean"].append(((pm["cleanlab"] + pm["partition"]) / 2).ravel())
        flagged.append(result.issues[c["case"]].ravel())
        fuzzy.append((pm["partition"] >= 0.9).ravel())
    wrong_all = np.concatenate(wrong)
    for m in PIXEL_MAPS:
        out["pixel"][m] = {"auc": float(roc_auc_score(wrong_all, np.concatenate(maps[m])))}
    p, r = _pr(np.concatenate(flagged), wrong_all)
    out["pixel"]["cleanlab"].update({"precision": p, "recall": r,
                                     "flagged_fraction": float(np.concatenate(flagged).mean())})
    p, r = _pr(np.concatenate(fuzzy), wrong_all)
    out["pixel"]["partition"].update({"precision": p, "recall": r,
                                      "flagged_fraction": float(np.concatenate(fuzzy).mean())})
    out["wrong_pixel_fraction"] = float(wrong_all.mean())
    # pixel AUC inside the corrupted cases only: locating the error once the case is found
    idx = np.flatnonzero(truth)
    w_c = np.concatenate([wrong[i] for i in idx])
    out["pixel_corrupted_cases"] = {m: float(roc_auc_score(w_c, np.concatenate([maps[m][i] for i in idx])))
                                    for m in PIXEL_MAPS}
    return out


def _fmt(x: float) -> str:
    return "–" if x is None or (isinstance(x, float) and np.isnan(x)) else f"{x:.3f}"


def code_commit() -> str:
    """The checked-out commit, with a note when the code differs from it (read when the run starts)."""
    return provenance.commit_label(short=True)


def write_report(path: Path, results: dict, args: argparse.Namespace, command: str, commit: str) -> None:
    lines = ["# Label audit on PH2 with injected noise", "",
             f"Command: `{command}`  ",
             f"Commit: `{commit}` (checked out when the run started; the numbers below are measured)  ",
             f"Data: PH2 seed-0 split, training cases corrupted by `data_prep noise --protocol dilate_erode --k "
             f"{args.k} --fraction {args.fraction} --seed {args.seed}`; bundle `ph2_unet` with overrides "
             f"`{json.dumps(OVERRIDES)}`"
             f", {args.epochs} epochs per fold, {args.folds} folds, 1 CPU thread.", ""]
    for arm, res in results.items():
        ev = res["eval"]
        lines += [f"## Arm `{arm}` ({res['configs'] or ['train.json']}; {res['seconds']:.0f} s for the audit)", "",
                  f"{ev['n_cases']} training cases, {ev['n_corrupted']} corrupted; "
                  f"{ev['wrong_pixel_fraction']:.2%} of the training pixels are wrong.", "",
                  "| signal | case ROC AUC | precision at n = corrupted |", "|---|---|---|"]
        for name, v in ev["case"].items():
            lines.append(f"| {name} | {_fmt(v['auc'])} | {_fmt(v['precision_at_n'])} |")
        lines += ["", "| pixel map | pixel ROC AUC (all cases) | pixel ROC AUC (corrupted cases) | precision | recall |"
                  " flagged share |", "|---|---|---|---|---|---|"]
        for m, v in ev["pixel"].items():
            lines.append(f"| {m} | {_fmt(v['auc'])} | {_fmt(ev['pixel_corrupted_cases'][m])} | "
                         f"{_fmt(v.get('precision'))} | {_fmt(v.get('recall'))} | {_fmt(v.get('flagged_fraction'))} |")
        lines.append("")
    lines += ["Suspected pixels: cleanlab's `find_label_issues` mask for `cleanlab`, M^f >= 0.9 for `partition`; "
              "`mean` is the average of the two maps (AUC only). `combined` ranks cases by the rank average of "
              "the default signals (cleanlab, cleanlab_issues, disagreement, loss, omega where present).", ""]
    path.write_text("\n".join(lines))


def covid_figure(out_dir: Path, work: Path, src: Path, args: argparse.Namespace) -> None:
    """Audit the COVID pseudo-labels (no clean reference) and draw the ten worst and ten best cases and the score
    distribution into ``out_dir``, which must lie outside the repository (data licence)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from PIL import Image

    out_dir = out_dir.resolve()
    if out_dir == REPO or REPO in out_dir.parents:
        raise SystemExit(f"--covid-figure {out_dir}: pictures of COVID-SemiSeg must stay outside the repository")
    full = prepare_dataset("covid_pseudo", src, work)
    doc = json.loads(full.read_text())
    keep = np.sort(np.random.default_rng(0).permutation(len(doc["training"]))[: args.covid_subset])
    root = full.parent
    absolute = (lambda e: {k: str((root / e[k]).resolve()) for k in ("image", "label")})
    datalist = work / f"covid_pseudo_subset{args.covid_subset}.json"
    datalist.write_text(json.dumps({"training": [absolute(doc["training"][i]) for i in keep],
                                    "validation": [absolute(e) for e in doc.get("validation", [])]}))
    audit = LabelAudit(REPO / "bundles" / "covid_semiseg_unet", configs=["plain_train.json"],
                       overrides={**OVERRIDES, "num_epochs": args.epochs}, folds=args.folds,
                       seed=args.seed, worst=10, progress=False)
    result = audit.run(datalist, work / f"audit_covid_pseudo_subset{args.covid_subset}_e{args.epochs}_f{args.folds}",
                       overwrite=True)
    rows = result.rows
    fig, axes = plt.subplots(3, 10, figsize=(20, 7))
    for j, row in enumerate(rows[:10] + rows[-10:]):
        ax = axes.ravel()[j]
        ax.imshow(np.asarray(Image.open(row["image"]).convert("L")), cmap="gray")
        ax.contour(np.asarray(Image.open(row["label"])) > 0, levels=[0.5], colors="lime", linewidths=0.7)
        ax.set_title(f"{'worst' if j < 10 else 'best'} {row['rank']}: {row['score']:.2f}", fontsize=7)
        ax.axis("off")
    for ax in axes[2]:
        ax.axis("off")
    hist = fig.add_subplot(3, 1, 3)
    hist.hist([r["score"] for r in rows], bins=40)
    hist.set_xlabel("audit score (lower = more suspect)")
    out_dir.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(out_dir / "covid_pseudo_audit.png", dpi=90)
    print(f"wrote {out_dir / 'covid_pseudo_audit.png'}")
    scores = np.asarray([r["score"] for r in rows])
    quantiles = np.quantile(scores, [0, .1, .25, .5, .75, .9, 1]).tolist()
    summary = {"n_cases": len(rows),
               "score_quantiles": dict(zip(["min", "p10", "p25", "median", "p75", "p90", "max"], quantiles)),
               "suspected_pixel_fraction_median": float(np.median([r["suspected_pixel_fraction"] for r in rows])),
               "worst10": [r["case"] for r in rows[:10]], "best10": [r["case"] for r in rows[-10:]]}
    print(json.dumps(summary, indent=1))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arms", nargs="+", default=["standard"], choices=sorted(ARMS))
    parser.add_argument("--k", type=int, default=15, help="dilate/erode radius in pixels of the 256x192 masks")
    parser.add_argument("--fraction", type=float, default=0.3, help="share of training cases corrupted")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=30, help="epochs per fold (8 iterations each on PH2)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work", default=str(REPO / "data" / "audit"), help="converted data and audits (not in git)")
    parser.add_argument("--data-dir", default=None, help="real data folder (default $DALE_DATA_DIR or ../shared/data)")
    parser.add_argument("--results", default=str(REPO / "benchmarks" / "results" / "audit_ph2"))
    parser.add_argument("--overwrite", action="store_true", help="replace finished audits")
    parser.add_argument("--covid-figure", default=None, metavar="DIR",
                        help="instead: audit the COVID pseudo-labels and write the figure into DIR (outside git)")
    parser.add_argument("--covid-subset", type=int, default=200,
                        help="pseudo-labelled training slices audited (drawn with seed 0; default 200 of 1,600)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    work, src = Path(args.work), data_dir(args.data_dir)
    if args.covid_figure:
        covid_figure(Path(args.covid_figure), work, src, args)
        return 0
    commit = code_commit()
    datalist = _noisy_dataset(work, src, args.k, args.fraction, args.seed)
    command = "python benchmarks/audit_ph2.py " + " ".join(argv if argv is not None else sys.argv[1:])
    results = {}
    for arm in args.arms:
        configs = ARMS[arm]
        audit_dir = work / f"audit_{datalist.parent.name}_{arm}_e{args.epochs}_f{args.folds}"
        t0 = time.perf_counter()
        audit = LabelAudit(REPO / "bundles" / "ph2_unet", configs=configs,
                           overrides={**OVERRIDES, "num_epochs": args.epochs}, folds=args.folds, seed=args.seed,
                           progress=False)
        result = audit.run(datalist, audit_dir, overwrite=True)  # folds are reused; the tables are rewritten
        seconds = time.perf_counter() - t0
        results[arm] = {"configs": configs, "seconds": seconds,
                        "eval": evaluate(result, datalist, REPO / "bundles" / "ph2_unet", configs)}
        print(json.dumps({arm: results[arm]}, indent=1), flush=True)
    res = Path(args.results)
    res.parent.mkdir(parents=True, exist_ok=True)
    res.with_suffix(".json").write_text(json.dumps(results, indent=1))
    write_report(res.with_suffix(".md"), results, args, command, commit)
    print(f"wrote {res.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
