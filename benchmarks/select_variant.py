#!/usr/bin/env python
"""Choose how DALE's partition masks enter training, on VALIDATION Dice only (never the test set).

``DALETrainer`` has two options the paper does not settle by experiment: ``mask_mode`` (targets multiplied by the
mask, Eq. 7, or targets kept and the loss weighted by the mask) and ``mask_inputs`` (the steps see M ⊙ X, Eq. 7,
or the image X itself), and ``OmegaMetaStep`` has its ``reduction``. This script trains the candidate arms of
``accuracy.py`` on PH2 (clean and with injected noise, quick profile) and ranks them by the validation Dice of
their final weights (the 12 clean-labelled validation cases of the fixed split). The runs go to the same cache as
``accuracy.py``, so the protocols reuse them; their test metrics are computed there but not read here.

Usage::

    python benchmarks/select_variant.py --profile quick --seeds 2 [--seed-offset 0]
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from accuracy import ARMS  # noqa: E402
from accuracy_core import (  # noqa: E402
    PROFILES,
    REPO,
    RunConfig,
    code_version,
    data_dir,
    load_split,
    prepare_dataset,
    profile_fields,
    run_cached,
)

__all__ = ["CANDIDATES", "main"]

CANDIDATES = ("standard", "dale", "dale_weight", "dale_unmasked", "dale_sum_unmasked")
# a further question asked the same way: does L_W help (``dale_unmasked``) or not (``+omega``, α = 0)?
#   python benchmarks/select_variant.py --seeds 3 --arms standard,dale_unmasked,+omega


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--profile", default="quick", choices=list(PROFILES))
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--seed-offset", type=int, default=0, help="first seed (run seeds in parallel processes)")
    parser.add_argument("--arms", default=",".join(CANDIDATES))
    parser.add_argument("--work", default=str(REPO / "data" / "bench"))
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "accuracy"))
    args = parser.parse_args(argv)
    profile = PROFILES[args.profile]
    arms = args.arms.split(",")
    work, src = Path(args.work), data_dir()
    level = profile.noise_levels[-1]  # the strongest level of the profile
    datasets = {"ph2": None, f"ph2_{level.name}": level}
    seeds = range(args.seed_offset, args.seed_offset + args.seeds)
    rows = []
    for ds, noise in datasets.items():
        datalist = prepare_dataset(ds, src, work, noise)
        splits = {s: load_split(datalist, s, profile.size) for s in ("training", "validation", "test")}
        for seed in seeds:
            for arm in arms:
                cfg = RunConfig(dataset=ds, seed=seed, profile=profile.name, profile_fields=profile_fields(profile, ds),
                                **ARMS[arm])
                rec, _, _ = run_cached(cfg, profile, splits, work / "runs")
                curve = [p["val_dice"] for p in rec["curve"]]
                rows.append({"dataset": ds, "arm": arm, "seed": seed, "final_val_dice": curve[-1],
                             "last3_val_dice": float(np.mean(curve[-3:])), "train_cpu_s": rec["train_cpu_s"]})
                print(f"{ds:>22} seed {seed} {arm:>18}: final val Dice {curve[-1]:.4f}, mean of last 3 "
                      f"{rows[-1]['last3_val_dice']:.4f}", flush=True)
    outdir = Path(args.out) / f"selection_{profile.name}"
    outdir.mkdir(parents=True, exist_ok=True)
    part = outdir / f"runs_seeds{seeds.start}-{seeds.stop - 1}.json"
    part.write_text(json.dumps({"profile": profile.name, "command": "python benchmarks/select_variant.py " + shlex.join(sys.argv[1:] if argv is None else argv),
                                "code_version": code_version(), "rows": rows}, indent=1))
    _write_report(outdir)
    return 0


def _write_report(outdir: Path) -> None:
    """Merge every ``runs_seeds*.json`` of ``outdir`` into its README (validation Dice, mean ± std over seeds)."""
    parts = [json.loads(p.read_text()) for p in sorted(outdir.glob("runs_seeds*.json"))]
    # a run shared by several parts (the same dataset, arm and seed) counts once
    rows = list({(r["dataset"], r["arm"], r["seed"]): r for p in parts for r in p["rows"]}.values())
    lines = ["# Choosing the mask options on validation Dice", "",
             "Validation Dice of the final weights (clean validation labels; the test set is not used), profile "
             + ", ".join(sorted({p.get("profile", "quick") for p in parts})) + ". Commands: " + "; ".join(f"`{p['command']}`" for p in parts) + ". Code version(s): "
             + ", ".join(sorted({p["code_version"] for p in parts})) + " (`accuracy_core.code_version()`).", "",
             "| dataset | arm | seeds | final val Dice | mean of last 3 val points |", "|---|---|---|---|---|"]
    for ds in dict.fromkeys(r["dataset"] for r in rows):
        for arm in dict.fromkeys(r["arm"] for r in rows):
            rs = [r for r in rows if r["dataset"] == ds and r["arm"] == arm]
            if not rs:
                continue
            f = np.array([r["final_val_dice"] for r in rs])
            l3 = np.array([r["last3_val_dice"] for r in rs])
            lines.append(f"| {ds} | {arm} | {len(rs)} | {f.mean():.3f} ± {f.std(ddof=1) if len(f) > 1 else 0:.3f} | "
                         f"{l3.mean():.3f} ± {l3.std(ddof=1) if len(l3) > 1 else 0:.3f} |")
    (outdir / "README.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    sys.exit(main())
