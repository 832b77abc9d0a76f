#!/usr/bin/env python
"""Resized whole-volume inference against sliding-window inference at the native spacing (issue 18).

On the realistic synthetic 3D set (``python -m data_prep synthetic --dims 3 --realistic``: 0.8 x 0.8 x 2.5 mm
voxels, 256 x 256 x 40, lesions of 2.5-6 mm radius with faint borders), everything through the
``synthetic3d_unet`` bundle's own configs, with MONAI's standard trainer (``plain_train.json``, to keep it cheap):

- ``native``: trained on patches of ``--patch`` voxels at the data's own spacing (``target_spacing`` = 0.8 x 0.8
  x 2.5), validated and tested with the Gaussian sliding window, masks inverted onto the input grid: the
  bundles' pipeline since issue 18;
- ``resized``: the pipeline before issue 18: every volume resampled to a fixed ``--grid`` (48³ by default, the
  old bundle's ``spatial_size``), trained and tested on the whole resampled volume. All volumes of the set have
  one shape, so ``target_spacing`` = extent / grid with ``spatial_size`` = grid is exactly that resize (one
  window = one whole-volume pass, ``tests/test_bundles_3d.py``);
- ``native_weights_resized``: the ``native`` run's weights tested the ``resized`` way: the same weights, the
  two inference procedures side by side.

Test Dice, HD95 and ASD are computed on each test image's original grid against its clean label (the bundle's
``evaluate.json``: ``Invertd`` back to the input, ``CaseMetricsSaver``). Model selection is on the validation
section only (the bundle keeps the best validation Dice as ``models/model.pt``).

Runs are cached under ``--cache`` (data, bundle roots with their checkpoints, evaluation outputs): a finished
step is never redone, and an interrupted run resumes at the first unfinished step. Results:
``<out>/resize_vs_sliding.{json,md}`` with the command and the git commit.

Usage (CPU, one thread, in the background)::

    OMP_NUM_THREADS=1 nohup python benchmarks/resize_vs_sliding.py > /tmp/resize_vs_sliding.log 2>&1 &
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shlex
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO / "benchmarks") not in sys.path:  # imported by file path (tests), not run as a script
    sys.path.insert(0, str(REPO / "benchmarks"))

import provenance  # noqa: E402
BUNDLE = REPO / "bundles" / "synthetic3d_unet" / "configs"
DEFAULT_CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "dale_monai" / "resize_vs_sliding"


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help=f"cache folder (default {DEFAULT_CACHE})")
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results", help="results folder")
    p.add_argument("--size", type=int, default=256, help="in-plane voxels of the realistic volumes (default 256)")
    p.add_argument("--depth", type=int, default=40, help="slices (default 40)")
    p.add_argument("--n-train", type=int, default=12)
    p.add_argument("--n-val", type=int, default=3)
    p.add_argument("--n-test", type=int, default=6)
    p.add_argument("--epochs", type=int, default=30, help="training epochs of each run (default 30)")
    p.add_argument("--val-interval", type=int, default=10)
    p.add_argument("--patch", type=int, nargs=3, default=[64, 64, 16], help="native patch/window (default 64 64 16)")
    p.add_argument("--num-samples", type=int, default=2, help="patches per volume and iteration (default 2)")
    p.add_argument("--grid", type=int, nargs=3, default=[48, 48, 48], help="the resized grid (default 48 48 48)")
    p.add_argument("--batch", type=int, default=2, help="volumes per iteration (default 2)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def _settings(args: argparse.Namespace, spacing: list[float]) -> dict[str, dict]:
    extent = [args.size * spacing[0], args.size * spacing[1], args.depth * spacing[2]]
    resized_spacing = [e / g for e, g in zip(extent, args.grid)]
    return {
        "native": {"target_spacing": spacing, "spatial_size": list(args.patch),
                   "patch#num_samples": args.num_samples},
        "resized": {"target_spacing": resized_spacing, "spatial_size": list(args.grid), "patch#num_samples": 1},
    }


def _done(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None


def train(name: str, root: Path, data: Path, overrides: dict, args: argparse.Namespace) -> float:
    """Train one run into ``root`` unless it finished before; returns its training time in seconds."""
    from monai.bundle import run

    marker = root / "trained.json"
    if (previous := _done(marker)) is not None:
        print(f"{name}: trained before ({previous['seconds']:.0f} s)", flush=True)
        return float(previous["seconds"])
    start = time.perf_counter()
    run("training", config_file=[str(BUNDLE / "train.json"), str(BUNDLE / "plain_train.json")],
        bundle_root=str(root), dataset_dir=str(data), num_epochs=args.epochs, val_interval=args.val_interval,
        batch_size=args.batch, seed=args.seed, **overrides)
    seconds = time.perf_counter() - start
    marker.write_text(json.dumps({"seconds": seconds, "overrides": overrides}))
    return seconds


def evaluate(name: str, root: Path, weights: Path, data: Path, overrides: dict) -> dict:
    """Test-section metrics of ``weights`` with the inference settings ``overrides``, cached in ``root``."""
    from monai.bundle import run

    out = root / "eval_test"
    marker = out / "done.json"
    if (previous := _done(marker)) is not None:
        return previous
    start = time.perf_counter()
    run("evaluating", config_file=[str(BUNDLE / "inference.json"), str(BUNDLE / "evaluate.json")],
        bundle_root=str(root), ckpt_path=str(weights), output_dir=str(out), dataset_dir=str(data),
        **{k: v for k, v in overrides.items() if not k.startswith("patch#")})
    with open(out / "test_per_case.csv") as f:
        rows = list(csv.DictReader(f))
    result = {"name": name, "weights": str(weights), "inference": overrides, "seconds": time.perf_counter() - start,
              "summary": json.loads((out / "test_summary.json").read_text()),
              "per_case": [{k: row[k] for k in ("case", "dice", "hd95", "asd")} for row in rows]}
    marker.write_text(json.dumps(result, indent=2))
    return result


def render(results: dict) -> str:
    env = results["environment"]
    lines = [
        "# Resized whole-volume inference vs sliding window at the native spacing",
        "",
        f"Command: `{env['command']}`  ",
        f"Commit: `{env['commit']}`{' (worktree dirty)' if env['worktree_dirty'] else ''}, {env['date_utc']}, "
        f"torch {env['torch']}, MONAI {env['monai']}, {env['threads']} thread(s).",
        "",
        f"Data: {results['data']['description']}.",
        "",
        "| run | weights | inference | test Dice (mean ± std) | HD95 mm | ASD mm | train s | test s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for key, run in results["runs"].items():
        s = run["summary"]

        def m(metric: str, spec: str = ".3f") -> str:
            v = s.get(metric, {})
            return f"{v.get('mean', float('nan')):{spec}} ± {v.get('std', float('nan')):{spec}}"

        lines.append(f"| {key} | {run['weights_run']} | {run['inference_desc']} | {m('dice')} | {m('hd95', '.1f')} | "
                     f"{m('asd', '.2f')} | {run['train_seconds']:.0f} | {run['seconds']:.0f} |")
    lines += ["", "Per-case test Dice:", "", "| case | " + " | ".join(results["runs"]) + " |",
              "|---|" + "---|" * len(results["runs"])]
    cases = [r["case"] for r in next(iter(results["runs"].values()))["per_case"]]
    for i, case in enumerate(cases):
        lines.append(f"| {Path(case).name} | " + " | ".join(f"{float(r['per_case'][i]['dice']):.3f}"
                                                          for r in results["runs"].values()) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    import monai
    import torch

    from data_prep.synthetic import REALISTIC_SPACING, make_synthetic_dataset

    torch.set_num_threads(args.threads)
    # the code that runs is the code at the start, whatever is committed while it runs
    commit, dirty = provenance.commit(), provenance.code_changed()
    cache = args.cache.expanduser().resolve()
    data = cache / f"data_{args.size}x{args.depth}_seed{args.seed}"
    summary = make_synthetic_dataset(data, dims=3, realistic=True, size=args.size, depth=args.depth,
                                     n_train=args.n_train, n_val=args.n_val, n_test=args.n_test, seed=args.seed)
    spacing = list(REALISTIC_SPACING)
    settings = _settings(args, spacing)
    tag = f"e{args.epochs}_b{args.batch}_s{args.seed}"
    roots = {name: cache / f"{name}_{'x'.join(map(str, args.patch if name == 'native' else args.grid))}_{tag}"
             for name in settings}
    train_seconds = {name: train(name, roots[name], data, settings[name], args) for name in settings}
    grid = "x".join(map(str, args.grid))
    patch = "x".join(map(str, args.patch))
    plan = {
        "native": ("native", "native", f"sliding window {patch} at 0.8x0.8x2.5 mm (overlap 0.5, Gaussian)"),
        "resized": ("resized", "resized", f"whole volume resized to {grid}"),
        "native_weights_resized": ("native", "resized", f"whole volume resized to {grid}"),
    }
    runs = {}
    for key, (weights_run, inference, desc) in plan.items():
        root = roots[weights_run] if weights_run == inference else cache / f"{key}_{tag}"
        result = evaluate(key, root, roots[weights_run] / "models" / "model.pt", data, settings[inference])
        runs[key] = {**result, "weights_run": weights_run, "inference_desc": desc,
                     "train_seconds": train_seconds[weights_run]}
        print(f"{key}: test Dice {result['summary']['dice']['mean']:.4f}", flush=True)
    results = {
        "environment": {
            "command": " ".join(shlex.quote(a) for a in ["python", "benchmarks/resize_vs_sliding.py", *argv]),
            "commit": commit,
            "worktree_dirty": dirty,
            "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "torch": torch.__version__, "monai": monai.__version__, "threads": torch.get_num_threads(),
        },
        "data": {"description": f"data_prep synthetic --dims 3 --realistic, {args.size}x{args.size}x{args.depth} "
                                f"voxels of 0.8x0.8x2.5 mm, {args.n_train} training (noisy labels) / {args.n_val} "
                                f"validation / {args.n_test} test volumes, seed {args.seed}; training "
                                f"{args.epochs} epochs, batch {args.batch}, MONAI's SupervisedTrainer "
                                "(plain_train.json)",
                 "noise": {k: summary["noise"][k] for k in ("dice_mean", "wrong_pixel_fraction")}},
        "settings": settings,
        "runs": runs,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "resize_vs_sliding.json").write_text(json.dumps(results, indent=2) + "\n")
    (args.out / "resize_vs_sliding.md").write_text(render(results))
    print(render(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
