#!/usr/bin/env python
"""Peak memory of a 3D DALE iteration against a standard one, at the bundle's patch size and batch (issue 18).

DALE keeps the fuzzy forward's graph for the ω meta step (a virtual step and a Jacobian-vector product through
the network, ``dale_monai.meta.OmegaMetaStep``), so an iteration holds more than the standard trainer's one
forward/backward. Both run through the ``synthetic3d_unet`` bundle's own ``train.json`` (DALE: ``DALETrainer``,
the partition on the patches, the Wasserstein term; standard: ``plain_train.json``, MONAI's
``SupervisedTrainer``), on patches the bundle's pipeline crops from a small synthetic set: batches of
``batch_size`` volumes x ``patch#num_samples`` patches (2 x 2 by default, the bundle's).

Each (patch side, variant) runs in a fresh subprocess, the variants of one side one after the other, so that the
ratio is measured side by side. On the CPU the kernel's peak-RSS mark is reset after set-up (the dataset is
cached, the network and optimizer built; ``/proc/self/clear_refs``) and ``VmHWM`` read after ``--iterations``
iterations: the increment is the iterations' working memory (activations, gradients, optimizer state, allocator
slack), as ``benchmarks/bench_speed.py`` measures it. With ``--device cuda`` the peak is
``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats`` at the same point.

The largest patch that fits a memory budget is extrapolated from a least-squares line through the measured
increments against the number of voxels per batch (activations grow linearly with it): the largest cubic side, a
multiple of 16, whose predicted increment stays under each ``--budgets`` value (GiB). It is an extrapolation of
the measured points, stated as such in the results.

Usage::

    OMP_NUM_THREADS=1 python benchmarks/memory_3d.py                 # CPU: 16, 32, 48 voxel patches
    python benchmarks/memory_3d.py --device cuda --patches 32 64 96 128 --out benchmarks/results --tag gpu

Results: ``<out>/memory_3d[_<tag>].{json,md}`` with the command and the git commit.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO / "benchmarks") not in sys.path:  # imported by file path (tests), not run as a script
    sys.path.insert(0, str(REPO / "benchmarks"))

import provenance  # noqa: E402
BUNDLE = REPO / "bundles" / "synthetic3d_unet" / "configs"
VARIANTS = ("standard", "dale")
GIB = 1024 ** 3


def _status_kib(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def _reset_peak() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def child(args: argparse.Namespace) -> dict:
    """In a fresh process: build the bundle's trainer for one (side, variant), run, report the peak increment."""
    import gc

    import torch
    from monai.bundle import ConfigWorkflow

    torch.set_num_threads(args.threads)
    side, variant = args.child
    overlays = [str(BUNDLE / "train.json")] + ([str(BUNDLE / "plain_train.json")] if variant == "standard" else [])
    workflow = ConfigWorkflow(
        config_file=overlays, workflow_type="train", bundle_root=args.root, dataset_dir=args.data,
        spatial_size=[side] * 3, num_epochs=1, seed=args.seed,
        device=f"$torch.device('{args.device}')",
        # no validation or checkpoints: only training iterations are measured
        **{"train#handlers": [], "train#trainer#epoch_length": args.iterations})
    workflow.initialize()
    trainer = workflow.trainer
    gc.collect()
    cuda = args.device.startswith("cuda")
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
    reset = _reset_peak()
    rss_before = _status_kib("VmRSS")
    start = time.perf_counter()
    trainer.run()
    seconds = time.perf_counter() - start
    out = {"side": side, "variant": variant, "iterations": trainer.state.iteration, "seconds": seconds,
           "trainer": type(trainer).__name__}
    if cuda:
        torch.cuda.synchronize()
        out.update(method="torch.cuda.max_memory_allocated after reset_peak_memory_stats",
                   before_mib=before / 2 ** 20, peak_mib=torch.cuda.max_memory_allocated() / 2 ** 20,
                   increment_mib=(torch.cuda.max_memory_allocated() - before) / 2 ** 20)
    else:
        peak = _status_kib("VmHWM") if reset else None
        if peak is None:
            import resource

            peak, method = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, "ru_maxrss (peak since start)"
        else:
            method = "VmHWM after clear_refs reset"
        out.update(method=method, before_mib=(rss_before or 0) / 1024, peak_mib=peak / 1024,
                   increment_mib=(peak - (rss_before or 0)) / 1024)
    workflow.finalize()
    return out


def run_child(args: argparse.Namespace, side: int, variant: str, data: Path, root: Path) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", str(side), variant, "--data", str(data),
           "--root", str(root), "--device", args.device, "--threads", str(args.threads), "--iterations",
           str(args.iterations), "--seed", str(args.seed)]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else "no output"
        print(f"{side}^3 {variant}: failed (exit {proc.returncode}): {tail}", file=sys.stderr, flush=True)
        return {"side": side, "variant": variant, "error": f"exit {proc.returncode}: {tail}"}
    return json.loads(lines[-1])


def fit_largest(rows: list[dict], batch_patches: int, budgets: list[float]) -> dict:
    """Least-squares line increment = a + b * voxels per batch, and the largest side (multiple of 16) per budget."""
    import numpy as np

    ok = [r for r in rows if "increment_mib" in r]
    if len(ok) < 2:
        return {}
    x = np.array([batch_patches * r["side"] ** 3 for r in ok], float)
    y = np.array([r["increment_mib"] for r in ok], float)
    b, a = np.polyfit(x, y, 1)
    out = {"intercept_mib": float(a), "mib_per_megavoxel": float(b * 1e6), "largest_side": {}}
    for budget in budgets:
        side = 16
        while a + b * batch_patches * (side + 16) ** 3 <= budget * 1024:
            side += 16
        fits = a + b * batch_patches * side ** 3 <= budget * 1024
        out["largest_side"][f"{budget:g}"] = side if fits else None
    return out


def render(results: dict) -> str:
    env = results["environment"]
    unit = "GPU allocated" if env["device"].startswith("cuda") else "CPU RSS"
    lines = [
        f"# 3D DALE vs standard: peak memory per iteration ({env['device']})",
        "",
        f"Command: `{env['command']}`  ",
        f"Commit: `{env['commit']}`{' (worktree dirty)' if env['worktree_dirty'] else ''}, {env['date_utc']}, "
        f"torch {env['torch']}, MONAI {env['monai']}, {env['threads']} thread(s).",
        "",
        f"Bundle synthetic3d_unet (UNet 16-32-64-128, batch norm), batches of {results['batch_patches']} patches "
        f"({results['batch_volumes']} volumes x {results['num_samples']} patches), {env['iterations']} iterations; "
        f"increment of the peak {unit} over the set-up, MiB.",
        "",
        "| patch | standard MiB | DALE MiB | DALE / standard | standard s/it | DALE s/it |",
        "|---|---|---|---|---|---|",
    ]
    for side, pair in results["by_side"].items():
        s, d = pair.get("standard", {}), pair.get("dale", {})
        if "increment_mib" not in s or "increment_mib" not in d:
            lines.append(f"| {side}³ | {s.get('error', '')} | {d.get('error', '')} | | | |")
            continue
        lines.append(f"| {side}³ | {s['increment_mib']:.0f} | {d['increment_mib']:.0f} | "
                     f"{d['increment_mib'] / s['increment_mib']:.2f} | {s['seconds'] / s['iterations']:.2f} | "
                     f"{d['seconds'] / d['iterations']:.2f} |")
    lines += ["", "Largest cubic patch (multiple of 16) whose extrapolated increment fits the budget "
              f"(least-squares line through the points above, batch of {results['batch_patches']} patches; an "
              "extrapolation, not a measurement):", "",
              "| budget GiB | " + " | ".join(VARIANTS) + " |", "|---|" + "---|" * len(VARIANTS)]
    for budget in results["budgets"]:
        cells = []
        for v in VARIANTS:
            fit = results["fit"].get(v, {})
            side = fit.get("largest_side", {}).get(f"{budget:g}")
            cells.append(f"{side}³" if side else "< 16³")
        lines.append(f"| {budget:g} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--patches", type=int, nargs="+", default=[16, 32, 48], help="cubic patch sides (default 16 32 48)")
    p.add_argument("--iterations", type=int, default=2, help="iterations per measurement (default 2)")
    p.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--budgets", type=float, nargs="+", default=[4, 8, 16, 24, 40, 80],
                   help="memory budgets in GiB for the largest-patch table")
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    p.add_argument("--tag", default="", help="suffix of the result files (e.g. gpu)")
    p.add_argument("--child", nargs=2, default=None, help=argparse.SUPPRESS)
    p.add_argument("--data", default=None, help=argparse.SUPPRESS)
    p.add_argument("--root", default=None, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if args.child is not None:
        args.child = (int(args.child[0]), args.child[1])
        print(json.dumps(child(args)), flush=True)
        return 0
    import monai
    import torch
    from monai.bundle import ConfigParser

    from data_prep.synthetic import make_synthetic_dataset

    commit, dirty = provenance.commit(), provenance.code_changed()
    parser = ConfigParser()
    parser.read_config(str(BUNDLE / "train.json"))
    batch_volumes, num_samples = int(parser["batch_size"]), int(parser["patch"]["num_samples"])
    results: dict = {"by_side": {}, "fit": {}, "budgets": args.budgets, "batch_volumes": batch_volumes,
                     "num_samples": num_samples, "batch_patches": batch_volumes * num_samples}
    with tempfile.TemporaryDirectory(prefix="memory_3d_") as tmp:
        data = Path(tmp) / "data"
        # volumes a little larger than the largest patch, one batch of them
        make_synthetic_dataset(data, dims=3, n_train=batch_volumes, n_val=1, n_test=1,
                               size=max(args.patches) + 8, seed=args.seed, verbose=False)
        for side in args.patches:
            results["by_side"][str(side)] = {}
            for variant in VARIANTS:
                row = run_child(args, side, variant, data, Path(tmp) / f"{variant}_{side}")
                results["by_side"][str(side)][variant] = row
                print(f"{side}^3 {variant}: {row.get('increment_mib', float('nan')):.0f} MiB", flush=True)
    for variant in VARIANTS:
        results["fit"][variant] = fit_largest([r[variant] for r in results["by_side"].values()],
                                              results["batch_patches"], args.budgets)
    results["environment"] = {
        "command": " ".join(shlex.quote(a) for a in ["python", "benchmarks/memory_3d.py", *argv]),
        "commit": commit, "worktree_dirty": dirty, "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "torch": torch.__version__, "monai": monai.__version__, "threads": args.threads, "device": args.device,
        "iterations": args.iterations,
    }
    name = "memory_3d" + (f"_{args.tag}" if args.tag else "")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{name}.json").write_text(json.dumps(results, indent=2) + "\n")
    (args.out / f"{name}.md").write_text(render(results))
    print(render(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
