#!/usr/bin/env python
"""How well does the fuzzy partition find wrong labels? Statistics on the TRAINING labels of the injected-noise
PH2 datasets of ``accuracy.py`` (the clean label of each training case is kept beside its noisy one).

For each partition setting it prints, averaged over the training cases: the share of wrongly / correctly
labelled pixels inside fuzzy patches (M^f ≥ τ), the mean M^f of each, and the fuzzy fraction. Run
``python benchmarks/accuracy.py injected_noise --profile quick`` (or ``select_variant.py``) once first: it converts
the datasets into ``--work``.

Usage::

    python benchmarks/partition_noise.py [--profile quick] [--work data/bench]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from accuracy_core import PROFILES, REPO, load_split  # noqa: E402

from dale_monai.transforms import FuzzyPartition  # noqa: E402

__all__ = ["SETTINGS", "partition_noise_stats", "main"]

#: partition settings compared (on top of the profile's patch size and τ = 0.9)
SETTINGS: tuple[dict, ...] = (
    {}, {"entropy": "shannon"}, {"entropy": "shannon", "bins": 16}, {"bins": 16}, {"use_entropy": False},
    {"use_edges": False},
)


def partition_noise_stats(items: list[dict], part: FuzzyPartition, tau: float = 0.9) -> dict[str, float]:
    """Means over ``items`` (``image``, noisy ``label``, ``label_clean``) of the partition's noise statistics."""
    keys = ("wrong_in_fuzzy", "right_in_fuzzy", "mask_f_wrong", "mask_f_right", "fuzzy_fraction")
    acc: dict[str, list[float]] = {k: [] for k in keys}
    for it in items:
        _, mask_f = part(torch.as_tensor(it["image"]), torch.as_tensor(it["label"]))
        mask_f = np.asarray(mask_f[0])
        wrong = it["label"][0] != it["label_clean"][0]
        fuzzy = mask_f >= tau
        if wrong.any():
            acc["wrong_in_fuzzy"].append(float(fuzzy[wrong].mean()))
            acc["mask_f_wrong"].append(float(mask_f[wrong].mean()))
        acc["right_in_fuzzy"].append(float(fuzzy[~wrong].mean()))
        acc["mask_f_right"].append(float(mask_f[~wrong].mean()))
        acc["fuzzy_fraction"].append(float(fuzzy.mean()))
    return {k: float(np.mean(v)) if v else float("nan") for k, v in acc.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--profile", default="quick", choices=list(PROFILES))
    parser.add_argument("--work", default=str(REPO / "data" / "bench"))
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    profile = PROFILES[args.profile]
    print("| dataset | setting | wrong in fuzzy | right in fuzzy | mean M^f wrong | mean M^f right | fuzzy fraction |")
    print("|---|---|---|---|---|---|---|")
    for level in profile.noise_levels:
        datalist = Path(args.work) / f"ph2_{level.name}" / "datalist.json"
        if not datalist.is_file():
            print(f"SKIPPED: {datalist} missing; run `python benchmarks/accuracy.py injected_noise --profile "
                  f"{profile.name}` first", file=sys.stderr)
            return 0
        items = load_split(datalist, "training", profile.size)
        for setting in SETTINGS:
            part = FuzzyPartition(patch_size=profile.patch, tau=0.9, **setting)
            st = partition_noise_stats(items, part)
            name = ", ".join(f"{k}={v}" for k, v in setting.items()) or "default (paper Eq. 3, 256 bins)"
            print(f"| ph2_{level.name} | {name} | {st['wrong_in_fuzzy']:.3f} | {st['right_in_fuzzy']:.3f} | "
                  f"{st['mask_f_wrong']:.3f} | {st['mask_f_right']:.3f} | {st['fuzzy_fraction']:.3f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
