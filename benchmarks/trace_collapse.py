#!/usr/bin/env python
"""Trace the first iterations of standard training on a benchmark dataset: does the network separate lesion
from background, or only lower every probability (the all-background collapse of protocol 1)?

Prints, every ``--every`` iterations, the loss, its cross-entropy and Dice parts, and the mean predicted
probability on lesion and on background pixels of the training batch. Same data, network, loss, optimizer,
order and augmentations as ``accuracy.py``'s ``standard`` arm of the given profile and seed::

    python benchmarks/trace_collapse.py --seed 1 --iterations 300                       # quick profile: collapses
    python benchmarks/trace_collapse.py --seed 1 --set res_units=0 --set norm=instance  # does not
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import accuracy  # noqa: E402
import accuracy_core as ac  # noqa: E402
from monai.data import DataLoader, Dataset  # noqa: E402
from monai.utils import set_determinism  # noqa: E402

from dale_monai.losses import DALELoss  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", default="covid_both")
    parser.add_argument("--profile", default="quick", choices=list(ac.PROFILES))
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--iterations", type=int, default=300)
    parser.add_argument("--every", type=int, default=15)
    parser.add_argument("--work", default=str(ac.REPO / "data" / "bench"))
    args = parser.parse_args(argv)
    profile = accuracy._profile_with(ac.PROFILES[args.profile], args.set)
    try:
        datalist = ac.prepare_dataset(args.dataset, ac.data_dir(), Path(args.work))
    except ac.DataMissing as e:
        print(f"SKIPPED: {e}", file=sys.stderr)
        return 0
    subset = profile.covid_subset if args.dataset.startswith("covid") else None
    train = ac.load_split(datalist, "training", profile.size, subset)
    if profile.threads:
        torch.set_num_threads(profile.threads)
    set_determinism(args.seed)
    torch.manual_seed(args.seed)  # as accuracy_core.train_and_evaluate: same initialisation and order
    net = ac._network(profile, int(train[0]["image"].shape[0]))
    cfg = ac.RunConfig(dataset=args.dataset, paradigm="standard", seed=args.seed, profile=profile.name,
                       profile_fields="")
    data = [{k: torch.as_tensor(it[k]) for k in ("image", "label")} for it in train]
    loader = DataLoader(Dataset(data, transform=ac._train_transform(cfg, profile, ("image", "label"))),
                        batch_size=profile.batch, shuffle=True, drop_last=True)
    opt = torch.optim.Adam(net.parameters(), lr=profile.lr)
    loss = DALELoss(1.0, profile.dice_weight, batch=profile.dice_batch)
    it = 0
    while it < args.iterations:
        for batch in loader:
            x, y = batch["image"], batch["label"]
            out = net(x)
            total = loss(out, y)
            ce = loss.pixel_map(out, y).mean()
            opt.zero_grad()
            total.backward()
            opt.step()
            it += 1
            if it % args.every == 0:
                p = torch.sigmoid(out.detach())
                print(f"iteration {it:4d}: loss {total.item():.3f} (CE {ce.item():.3f}, Dice {(total - ce).item():.3f}); "
                      f"mean p on lesion {p[y > 0].mean():.3f}, on background {p[y == 0].mean():.3f}; "
                      f"pixels predicted lesion {(out > 0).float().mean():.4f}", flush=True)
            if it >= args.iterations:
                break
    return 0


if __name__ == "__main__":
    sys.exit(main())
