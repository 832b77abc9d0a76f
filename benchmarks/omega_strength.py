#!/usr/bin/env python
"""How strongly does each ω option down-weight wrong labels? Injected noise on PH2, the quick profile's network.

The released ω update (``reduction="mean"``) moves ω by about ±0.01, ``"sum"`` by ±0.1: either way a wrong
label keeps at least 90 % of its weight. This script compares the options of
:class:`dale_monai.meta.OmegaMetaStep` (reduction, ``lr``, K, the ``l2rw`` rule, the ``first_order`` method and
the ``head`` scope) on the same network weights and the same batches:

1. converts PH2 and its injected-noise copies with ``python -m data_prep`` (as ``benchmarks/accuracy.py`` does,
   sharing its ``--work`` folder); the training entries keep their clean label beside the noisy one;
2. trains the profile's UNet with DALE as the bundles ship it (``OmegaMetaStep()``, the Wasserstein term
   α = 0.05, masks as loss weights on the whole image) on the noisy training labels;
3. at each snapshot (``--snapshots``, training iterations), for each option and each of the first
   ``--eval-batches`` training batches (no augmentation, partition of the profile), runs one DALE iteration from
   copies of the network and optimizer and keeps the ω it computed;
4. reports, over the pixels of the fuzzy patches (M^f ≥ 0.9) of those batches, pooled: mean ω on wrongly and
   on correctly labelled pixels (noisy label ≠ clean label), the share of each with ω < 1, the wrong pixels' share
   of the total weight Σ ω (their share of the pixels when ω ≡ 1), the AUROC of ω as a
   detector of wrong labels (the probability that a random wrong pixel gets a lower ω than a random right one,
   ties counted half), and the seconds per DALE iteration of the option.

Usage::

    python benchmarks/omega_strength.py                       # quick profile, writes results/omega_strength_quick.md
    python benchmarks/omega_strength.py --snapshots 40,200 --eval-batches 4 --out /tmp/omega

Skips with a message (exit 0) when the PH2 data are not under ``DALE_DATA_DIR`` (default ``../shared/data``).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from accuracy_core import PROFILES, REPO, DataMissing, Profile, data_dir, load_split, prepare_dataset  # noqa: E402
import provenance  # noqa: E402
from ignite.engine import Events  # noqa: E402
from monai.data import DataLoader, Dataset  # noqa: E402
from monai.networks.nets import UNet  # noqa: E402
from monai.transforms import Compose, RandFlipd, RandRotate90d  # noqa: E402
from monai.utils import set_determinism  # noqa: E402
from scipy.stats import rankdata  # noqa: E402

from dale_monai.engines import DALEEvents, DALEKeys, DALETrainer  # noqa: E402
from dale_monai.handlers import WassersteinAlignment  # noqa: E402
from dale_monai.losses import DALELoss  # noqa: E402
from dale_monai.meta import OmegaMetaStep  # noqa: E402
from dale_monai.transforms import FuzzyPartition, FuzzyPartitiond  # noqa: E402

__all__ = ["OPTIONS", "omega_stats", "main"]

#: (label, OmegaMetaStep arguments): the options compared, the released one first
OPTIONS: tuple[tuple[str, dict], ...] = (
    ("jvp, mean, lr 0.1 (released)", {}),
    ("jvp, mean, lr 1.0", {"lr": 1.0}),
    ("jvp, sum, lr 0.1", {"reduction": "sum"}),
    ("jvp, normalized, lr 0.1", {"reduction": "normalized"}),
    ("jvp, sum, lr 1.0", {"reduction": "sum", "lr": 1.0}),
    ("jvp, sum, lr 0.1, K 3", {"reduction": "sum", "steps": 3}),
    ("jvp, sum, lr 1.0, K 3", {"reduction": "sum", "lr": 1.0, "steps": 3}),
    ("jvp, l2rw", {"rule": "l2rw"}),
    ("first_order, sum, lr 0.1", {"method": "first_order", "reduction": "sum"}),
    ("first_order, sum, lr 1.0", {"method": "first_order", "reduction": "sum", "lr": 1.0}),
    ("first_order, l2rw", {"method": "first_order", "rule": "l2rw"}),
    ("first_order head, sum, lr 0.1", {"method": "first_order", "scope": "head", "reduction": "sum"}),
    ("first_order head, sum, lr 1.0", {"method": "first_order", "scope": "head", "reduction": "sum", "lr": 1.0}),
    ("first_order head, l2rw", {"method": "first_order", "scope": "head", "rule": "l2rw"}),
)
FUZZY_TAU = 0.9  # a pixel is in a fuzzy patch where M^f >= τ (the partition's threshold)
TRAINER_KW = {"mask_mode": "weight", "mask_inputs": False}  # as the bundles ship


def _network(profile: Profile, in_channels: int) -> torch.nn.Module:
    """The accuracy benchmarks' network of the profile (``accuracy_core``: MONAI UNet, batch norm)."""
    return UNet(2, in_channels, 1, channels=profile.channels, strides=profile.strides,
                num_res_units=profile.res_units, norm="batch")


def _eval_batches(items: list[dict], profile: Profile, count: int) -> list[dict]:
    """The first ``count`` batches of the training items, unaugmented, with partition masks and clean labels."""
    part = FuzzyPartition(patch_size=profile.patch, tau=FUZZY_TAU)
    batches = []
    for start in range(0, min(count * profile.batch, len(items) - profile.batch + 1), profile.batch):
        chunk = items[start:start + profile.batch]
        image = torch.as_tensor(np.stack([it["image"] for it in chunk]))
        label = torch.as_tensor(np.stack([it["label"] for it in chunk]))
        masks = [part(img, lab) for img, lab in zip(image, label)]
        batches.append({"image": image, "label": label,
                        "label_clean": torch.as_tensor(np.stack([it["label_clean"] for it in chunk])),
                        "mask_n": torch.stack([torch.as_tensor(m[0]) for m in masks]),
                        "mask_f": torch.stack([torch.as_tensor(m[1]) for m in masks])})
    return batches


def omega_stats(omega: np.ndarray, wrong: np.ndarray) -> dict[str, float]:
    """Statistics of ω on wrongly / correctly labelled pixels (1D arrays of the same pixels).

    Returns:
        ``n_wrong``, ``n_right``, ``mean_wrong``, ``mean_right``, ``below1_wrong``, ``below1_right`` (share with
        ω < 1), ``mean_abs_dev`` (mean |ω − 1| over all), ``weight_share_wrong`` (Σ_wrong ω / Σ ω: the wrong pixels'
        share of the loss weight, to compare with their share of the pixels, ω ≡ 1), ``auroc`` (P(ω_wrong <
        ω_right), ties half; NaN without both kinds).
    """
    omega, wrong = np.asarray(omega, np.float64), np.asarray(wrong, bool)
    out: dict[str, float] = {"n_wrong": int(wrong.sum()), "n_right": int((~wrong).sum()),
                             "mean_abs_dev": float(np.abs(omega - 1).mean()) if omega.size else float("nan")}
    for name, sel in (("wrong", wrong), ("right", ~wrong)):
        out[f"mean_{name}"] = float(omega[sel].mean()) if sel.any() else float("nan")
        out[f"below1_{name}"] = float((omega[sel] < 1).mean()) if sel.any() else float("nan")
    total = float(omega.sum())
    out["weight_share_wrong"] = float(omega[wrong].sum()) / total if total > 0 else float("nan")
    n_w, n_r = out["n_wrong"], out["n_right"]
    if n_w and n_r:
        ranks = rankdata(-omega)  # high rank = low ω; the Mann–Whitney U of the wrong pixels
        out["auroc"] = float((ranks[wrong].sum() - n_w * (n_w + 1) / 2) / (n_w * n_r))
    else:
        out["auroc"] = float("nan")
    return out


def _omega_of(network, optimizer, batch: dict, step: OmegaMetaStep, lr: float, loss: DALELoss
              ) -> tuple[np.ndarray, float]:
    """ω of one DALE iteration on ``batch`` from copies of ``network`` and ``optimizer``, and its seconds."""
    net = copy.deepcopy(network)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    opt.load_state_dict(copy.deepcopy(optimizer.state_dict()))
    trainer = DALETrainer("cpu", 1, [batch], net, opt, loss, omega_step=step, decollate=False, **TRAINER_KW)
    seen: dict[str, torch.Tensor] = {}
    trainer.add_event_handler(DALEEvents.OMEGA_COMPLETED, lambda e: seen.update(omega=e.state.output[DALEKeys.OMEGA]))
    t0 = time.perf_counter()
    trainer.run()
    return seen["omega"].detach().cpu().numpy(), time.perf_counter() - t0


def evaluate_options(network, optimizer, batches: list[dict], lr: float, loss: DALELoss) -> dict[str, dict]:
    """Per option: :func:`omega_stats` over the fuzzy pixels of ``batches`` and the median seconds per iteration."""
    results = {}
    for label, kwargs in OPTIONS:
        omegas, wrongs, seconds = [], [], []
        for batch in batches:
            omega, dt = _omega_of(network, optimizer, batch, OmegaMetaStep(**kwargs), lr, loss)
            fuzzy = batch["mask_f"].numpy() >= FUZZY_TAU
            wrong = (batch["label"].numpy() > 0.5) != (batch["label_clean"].numpy() > 0.5)
            omegas.append(omega[fuzzy])
            wrongs.append(wrong[fuzzy])
            seconds.append(dt)
        stats = omega_stats(np.concatenate(omegas), np.concatenate(wrongs))
        stats["seconds_per_iteration"] = float(np.median(seconds))
        results[label] = stats
        print(f"  {label:34s} ω wrong {stats['mean_wrong']:.3f}  right {stats['mean_right']:.3f}  "
              f"AUROC {stats['auroc']:.3f}  ({stats['seconds_per_iteration']:.2f} s/it)", flush=True)
    return results


def run_level(profile: Profile, datalist: Path, snapshots: list[int], eval_batches: int, seed: int) -> dict:
    """Train on one noisy dataset and evaluate every option at each snapshot."""
    train = load_split(datalist, "training", profile.size)
    if not train or "label_clean" not in train[0]:
        raise SystemExit(f"{datalist}: its training entries have no 'label_clean' (not a data_prep noise datalist)")
    batches = _eval_batches(train, profile, eval_batches)
    if not batches:
        raise SystemExit(f"{datalist}: fewer training cases ({len(train)}) than one batch ({profile.batch})")
    set_determinism(seed)
    torch.manual_seed(seed)
    net = _network(profile, int(train[0]["image"].shape[0]))
    opt = torch.optim.Adam(net.parameters(), lr=profile.lr)
    keys = ("image", "label")
    transform = Compose([RandFlipd(keys, prob=0.5, spatial_axis=0), RandFlipd(keys, prob=0.5, spatial_axis=1),
                         RandRotate90d(keys, prob=0.5, spatial_axes=(0, 1)),
                         FuzzyPartitiond(keys, patch_size=profile.patch, tau=FUZZY_TAU)])
    data = [{k: torch.as_tensor(it[k]) for k in keys} for it in train]
    loader = DataLoader(Dataset(data, transform=transform), batch_size=profile.batch, shuffle=True, num_workers=0,
                        drop_last=True)
    last = max(snapshots)
    epochs = -(-last // len(loader))
    loss = DALELoss(ce_weight=1.0, dice_weight=profile.dice_weight)
    trainer = DALETrainer("cpu", epochs, loader, net, opt, loss, omega_step=OmegaMetaStep(), decollate=False,
                          **TRAINER_KW)
    WassersteinAlignment(alpha=0.05, seed=seed).attach(trainer)
    level: dict[str, Any] = {"n_train": len(train), "eval_batches": len(batches), "snapshots": {}}
    wrong = [((b["label"] > 0.5) != (b["label_clean"] > 0.5)) for b in batches]
    fuzzy = [b["mask_f"] >= FUZZY_TAU for b in batches]
    wrong_and_fuzzy = sum(int((w & f).sum()) for w, f in zip(wrong, fuzzy))
    level["wrong_share_of_fuzzy_pixels"] = wrong_and_fuzzy / max(1, sum(int(f.sum()) for f in fuzzy))
    level["wrong_in_fuzzy_patches"] = wrong_and_fuzzy / max(1, sum(int(w.sum()) for w in wrong))

    def snapshot(engine) -> None:
        it = engine.state.iteration
        if it in snapshots:
            print(f"[{datalist.parent.name}] iteration {it}: ω of each option on {len(batches)} batch(es)", flush=True)
            level["snapshots"][str(it)] = evaluate_options(net, opt, batches, profile.lr, loss)
            if it == last:
                engine.terminate()

    trainer.add_event_handler(Events.ITERATION_COMPLETED, snapshot)
    trainer.run()
    return level


def _f(x: float, spec: str = ".3f") -> str:
    return "n/a" if x is None or (isinstance(x, float) and np.isnan(x)) else format(x, spec)


def render_markdown(results: dict) -> str:
    env = results["environment"]
    lines = [
        f"# ω strength on injected label noise ({env['profile']} profile)",
        "",
        f"Command: `{env['command']}`  ",
        f"Commit: `{env['commit']}`{' (work tree had uncommitted changes)' if env['worktree_dirty'] else ''}, "
        f"{env['date_utc']}; torch {env['torch']}, {env['threads']} thread(s); load average at start "
        f"{_f(env['load_average_at_start'][0], '.2f') if env['load_average_at_start'] else 'n/a'} (a shared machine: "
        "seconds per iteration are indicative only).  ",
        f"Profile: {env['profile_description']}.  ",
        "Training: DALE as the bundles ship it (OmegaMetaStep() = jvp, mean reduction, lr 0.1; Wasserstein α 0.05; "
        "masks as loss weights on the whole image) on the noisy training labels, seed "
        f"{env['seed']}. At each snapshot every option computes ω in one DALE iteration from copies of the same "
        f"network and optimizer, on the same first {env['eval_batches']} training batch(es) (unaugmented).  ",
        "Pixels: those of the fuzzy patches (M^f ≥ 0.9), pooled over the batches; wrong = noisy label ≠ clean label. "
        "AUROC = P(ω of a wrong pixel < ω of a right one), ties half: how well ω ranks wrong labels below right ones, "
        "whatever its strength.",
    ]
    lines.append("Weight share of wrong = Σ_wrong ω / Σ ω over those pixels: the share of the fuzzy loss weight that "
                 "goes to wrong labels (with ω ≡ 1 it is their share of the pixels, given per dataset).")
    for name, level in results["levels"].items():
        lines += ["", f"## {name}: {level['n_train']} training cases", "",
                  f"{level['wrong_share_of_fuzzy_pixels']:.1%} of the fuzzy-patch pixels of the evaluated batches are "
                  f"wrongly labelled; the fuzzy patches hold {level['wrong_in_fuzzy_patches']:.1%} of their wrong "
                  "pixels."]
        for it, options in level["snapshots"].items():
            first = next(iter(options.values()))
            lines += ["", f"After {it} training iterations ({first['n_wrong']:,} wrong, {first['n_right']:,} right "
                      "fuzzy pixels):", "",
                      "| option | mean ω wrong | mean ω right | ω<1 wrong | ω<1 right | mean abs(ω−1) "
                      "| weight share of wrong | AUROC | s/iter |",
                      "|---|---|---|---|---|---|---|---|---|"]
            for label, s in options.items():
                lines.append(f"| {label} | {_f(s['mean_wrong'])} | {_f(s['mean_right'])} | "
                             f"{_f(s['below1_wrong'], '.1%')} | {_f(s['below1_right'], '.1%')} | "
                             f"{_f(s['mean_abs_dev'])} | {_f(s['weight_share_wrong'], '.1%')} | {_f(s['auroc'])} | "
                             f"{_f(s['seconds_per_iteration'], '.2f')} |")
    if results.get("skipped"):
        lines += ["", "Skipped: " + "; ".join(results["skipped"])]
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--profile", default="quick", choices=list(PROFILES))
    p.add_argument("--work", default=str(REPO / "data" / "bench"), help="converted data (shared with accuracy.py)")
    p.add_argument("--data-dir", default=None, help="real data folder (default $DALE_DATA_DIR or ../shared/data)")
    p.add_argument("--levels", default=None, help="comma-separated noise levels (default: the profile's)")
    p.add_argument("--snapshots", default="40,200", help="training iterations at which the options are compared")
    p.add_argument("--eval-batches", type=int, default=4, help="training batches each option computes ω on")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results"), help="folder of the results")
    args = p.parse_args(argv)
    try:
        args.snapshots = sorted({int(s) for s in args.snapshots.split(",") if s.strip()})
    except ValueError:
        p.error(f"--snapshots must be comma-separated integers, got {args.snapshots!r}")
    if not args.snapshots or args.snapshots[0] < 1:
        p.error(f"--snapshots must be iterations >= 1, got {args.snapshots}")
    if args.eval_batches < 1:
        p.error(f"--eval-batches must be >= 1, got {args.eval_batches}")
    return args


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    profile = PROFILES[args.profile]
    levels = {lv.name: lv for lv in profile.noise_levels}
    if args.levels:
        wanted = [s.strip() for s in args.levels.split(",") if s.strip()]
        bad = [w for w in wanted if w not in levels]
        if bad:
            raise SystemExit(f"--levels: {bad} are not noise levels of the {profile.name} profile ({list(levels)})")
        levels = {w: levels[w] for w in wanted}
    if profile.threads:
        torch.set_num_threads(profile.threads)
    src = data_dir(args.data_dir)
    results: dict[str, Any] = {
        "environment": {
            "command": " ".join(shlex.quote(a) for a in [sys.executable, "benchmarks/omega_strength.py", *argv]),
            "commit": provenance.commit(),
            "worktree_dirty": provenance.code_changed(),
            "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "torch": torch.__version__, "threads": torch.get_num_threads(),
            "load_average_at_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
            "profile": profile.name, "profile_description": profile.describe(), "seed": args.seed,
            "snapshots": args.snapshots, "eval_batches": args.eval_batches,
            "options": {label: kwargs for label, kwargs in OPTIONS},
        },
        "levels": {},
    }
    t0 = time.perf_counter()
    for name, level in levels.items():
        try:
            datalist = prepare_dataset(f"ph2_{name}", src, Path(args.work), level)
        except DataMissing as e:
            print(f"SKIPPED: {e}; nothing written", file=sys.stderr)
            return 0
        results["levels"][f"ph2_{name}"] = run_level(profile, datalist, args.snapshots, args.eval_batches, args.seed)
    results["environment"]["total_s"] = time.perf_counter() - t0
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = f"omega_strength_{profile.name}"
    (out / f"{stem}.json").write_text(json.dumps(results, indent=1) + "\n")
    (out / f"{stem}.md").write_text(render_markdown(results))
    print(f"wrote {out / (stem + '.md')} and {out / (stem + '.json')} in {results['environment']['total_s']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
