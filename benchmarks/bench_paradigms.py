#!/usr/bin/env python
"""Training time per iteration of every noisy-label paradigm against MONAI's standard trainer (issue 11, "cost").

The default bundle's network and settings (``bundles/synthetic2d_unet``: its ``network_def``, batch 8, 96 × 96,
Adam at its learning rate, ``DALELoss`` CE + Dice), the same synthetic batches for every paradigm, one
process. The paradigms are interleaved round-robin (round r runs one iteration of every paradigm on batch r)
so that machine noise hits all of them alike; an iteration is timed from Ignite's ``ITERATION_STARTED`` to
``ITERATION_COMPLETED`` and the first ``--warmup`` rounds are dropped. Reported: the median seconds per
iteration and its ratio to ``standard``. Paradigms:

- ``standard``: :class:`monai.engines.SupervisedTrainer` (the plain overlay);
- ``gce``, ``sce``: the same trainer with :class:`~dale_monai.robust_losses.GeneralizedCELoss` /
  :class:`~dale_monai.robust_losses.SymmetricCELoss`;
- ``coteaching``, ``trinet``: :class:`~dale_monai.engines.CoTeachingTrainer`,
  :class:`~dale_monai.engines.TriNetTrainer`;
- ``mwnet``, ``l2rw``: :class:`~dale_monai.engines.MetaReweightTrainer` (rules ``mwnet``, ``l2rw``), meta batches
  of the same size;
- ``dale``: :class:`~dale_monai.engines.DALETrainer` as the bundles ship it (ω ``jvp``, Wasserstein handler);
- ``clcs``: :class:`~dale_monai.engines.CLCSTrainer` with its defaults, timed in the selection phase (no warm-up,
  thresholds of a half-learned curriculum, so the selection, its per-class guarantee and NBL all run).

Usage::

    python benchmarks/bench_paradigms.py                 # writes benchmarks/results/paradigms_speed.{md,json}
    python benchmarks/bench_paradigms.py --rounds 2 --warmup 1 --size 32 --out /tmp/bench   # smoke
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run from a checkout without installing the package
    sys.path.insert(0, str(REPO))
if str(REPO / "benchmarks") not in sys.path:  # imported by file path (tests), not run as a script
    sys.path.insert(0, str(REPO / "benchmarks"))

import provenance  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from ignite.engine import Events  # noqa: E402
from monai.engines import SupervisedTrainer  # noqa: E402

from dale_monai.clcs import ClassCurriculum, class_thresholds  # noqa: E402
from dale_monai.engines import (  # noqa: E402
    CLCSTrainer,
    CoTeachingTrainer,
    DALETrainer,
    MetaReweightTrainer,
    TriNetTrainer,
)
from dale_monai.handlers import WassersteinAlignment  # noqa: E402
from dale_monai.losses import DALELoss  # noqa: E402
from dale_monai.meta import OmegaMetaStep  # noqa: E402
from dale_monai.robust_losses import GeneralizedCELoss, SymmetricCELoss  # noqa: E402
from dale_monai.transforms import FuzzyPartition  # noqa: E402

PARADIGMS = ("standard", "gce", "sce", "coteaching", "trinet", "mwnet", "l2rw", "dale", "clcs")
BUNDLE = REPO / "bundles" / "synthetic2d_unet" / "configs" / "train.json"


def bundle_settings() -> dict:
    """The default bundle's network definition, batch size, learning rate and DALE patch size."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(BUNDLE))
    return {"network_def": parser.config["network_def"], "batch": parser["batch_size"], "lr": parser["learning_rate"],
            "size": parser["spatial_size"][0], "patch": parser["dale"]["patch_size"], "parser": parser}


def make_batches(size: int, batch: int, count: int, patch: int, seed: int = 0) -> list[dict]:
    """``count`` batches of synthetic lesions with noisy labels (``data_prep.synthetic``) and DALE's masks."""
    from data_prep.synthetic import generate_case

    partition = FuzzyPartition(patch_size=patch, tau=0.9)
    batches = []
    for b in range(count):
        items = []
        for i in range(batch):
            case = generate_case(np.random.default_rng([seed, b, i]), size=size, dims=2)
            image = torch.from_numpy(case.image)[None].float()
            label = torch.from_numpy(case.label_noisy)[None].float()
            mask_n, mask_f = partition(image, label)
            items.append({"image": image, "label": label, "mask_n": mask_n, "mask_f": mask_f})
        batches.append({k: torch.stack([it[k] for it in items]) for k in items[0]})
    return batches


def build(paradigm: str, make_net: Callable[[], torch.nn.Module], lr: float, batches: list, meta: list) -> object:
    """The trainer of ``paradigm``, constructed the simple way a benchmark arm does it."""
    nets = [make_net() for _ in range({"coteaching": 2, "trinet": 3, "clcs": 2}.get(paradigm, 1))]
    opts = [torch.optim.Adam(n.parameters(), lr=lr) for n in nets]
    loss = DALELoss(ce_weight=1.0, dice_weight=1.0)
    common = dict(device="cpu", max_epochs=1, train_data_loader=batches, loss_function=loss, decollate=False)
    if paradigm in ("standard", "gce", "sce"):
        if paradigm != "standard":
            common["loss_function"] = GeneralizedCELoss() if paradigm == "gce" else SymmetricCELoss()
        return SupervisedTrainer(network=nets[0], optimizer=opts[0], **common)
    if paradigm == "coteaching":
        return CoTeachingTrainer(networks=nets, optimizers=opts, **common)
    if paradigm == "trinet":
        return TriNetTrainer(networks=nets, optimizers=opts, **common)
    if paradigm in ("mwnet", "l2rw"):
        return MetaReweightTrainer(network=nets[0], optimizer=opts[0], meta_data_loader=meta, rule=paradigm, **common)
    if paradigm == "dale":
        trainer = DALETrainer(network=nets[0], optimizer=opts[0], omega_step=OmegaMetaStep(method="jvp"),
                              mask_mode="weight", mask_inputs=False, **common)
        WassersteinAlignment(alpha=0.05).attach(trainer)
        return trainer
    if paradigm == "clcs":
        curriculum = ClassCurriculum(num_classes=2)
        status = torch.full((2,), 0.5, dtype=torch.float64)
        curriculum.load_state_dict({"counts": torch.zeros(3, 2, dtype=torch.float64), "status": status,
                                    "thresholds": class_thresholds(status, curriculum.tau)})
        return CLCSTrainer(networks=nets, optimizers=opts, curriculum=curriculum, warmup_epochs=0, **common)
    raise ValueError(f"unknown paradigm {paradigm!r}; choose from {PARADIGMS}")


class Stepper:
    """Runs a trainer one iteration per call (Ignite's interrupt/resume) and records each iteration's time."""

    def __init__(self, trainer) -> None:
        self.trainer = trainer
        self.times: list[float] = []
        trainer.add_event_handler(Events.ITERATION_STARTED, self._start)
        trainer.add_event_handler(Events.ITERATION_COMPLETED, self._stop)

    def _start(self, _) -> None:
        self._t0 = time.perf_counter()

    def _stop(self, engine) -> None:
        self.times.append(time.perf_counter() - self._t0)
        engine.interrupt()

    def step(self) -> None:
        self.trainer.run()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--paradigms", default=",".join(PARADIGMS), help="comma-separated subset of " + ",".join(PARADIGMS))
    p.add_argument("--rounds", type=int, default=12, help="iterations timed per paradigm (after the warm-up)")
    p.add_argument("--warmup", type=int, default=2, help="first rounds left out")
    p.add_argument("--size", type=int, default=None, help="image side (default: the bundle's)")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results", help="output folder")
    args = p.parse_args(argv)
    paradigms = [x for x in args.paradigms.split(",") if x]
    unknown = sorted(set(paradigms) - set(PARADIGMS))
    if unknown:
        p.error(f"unknown paradigm(s) {unknown}; choose from {PARADIGMS}")
    torch.set_num_threads(args.threads)
    settings = bundle_settings()
    size = args.size or settings["size"]
    parser = settings["parser"]
    parser["spatial_size"] = [size, size]
    n = args.rounds + args.warmup
    batches = make_batches(size, settings["batch"], n, settings["patch"])
    meta = make_batches(size, settings["batch"], n, settings["patch"], seed=1)
    steppers = {}
    for paradigm in paradigms:
        torch.manual_seed(0)
        steppers[paradigm] = Stepper(build(paradigm, lambda: parser.get_parsed_content("network_def", lazy=False),
                                           settings["lr"], batches, meta))
    for _ in range(n):
        for stepper in steppers.values():
            stepper.step()
    for stepper in steppers.values():
        stepper.step()  # no iteration left: the run completes instead of staying suspended
        assert stepper.trainer.state.iteration == n
    median = {k: statistics.median(s.times[args.warmup:]) for k, s in steppers.items()}
    base = median.get("standard")
    results = {
        "command": "python " + " ".join([Path(__file__).relative_to(REPO).as_posix(), *(argv or sys.argv[1:])]),
        "commit": provenance.commit(short=True),
        "dirty": provenance.code_changed(("dale_monai",)),
        "machine": f"{platform.processor() or platform.machine()}, torch {torch.__version__}, {args.threads} thread(s)",
        "bundle": "synthetic2d_unet", "image": [size, size], "batch": settings["batch"], "rounds": args.rounds,
        "seconds_per_iteration": median, "ratio_to_standard": {k: v / base for k, v in median.items()} if base else {},
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "paradigms_speed.json").write_text(json.dumps(results, indent=2) + "\n")
    rows = "\n".join(f"| {k} | {median[k]:.3f} | {results['ratio_to_standard'].get(k, float('nan')):.2f} |"
                     for k in paradigms)
    md = (f"# Training time per iteration by paradigm\n\n`{results['command']}` at commit `{results['commit']}`"
          f"{' (dale_monai modified)' if results['dirty'] else ''}; {results['machine']}; bundle synthetic2d_unet's "
          f"network, batch {settings['batch']} of {size}x{size}, median of {args.rounds} interleaved iterations.\n\n"
          f"| paradigm | s / iteration | × standard |\n|---|---|---|\n{rows}\n")
    (args.out / "paradigms_speed.md").write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
