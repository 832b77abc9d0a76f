"""Benchmark profiles of ``accuracy.py``: sizes, network, loss options and budgets (every number a run depends on).

Kept apart from ``accuracy_core.py`` (whose source is part of every run's cache key) because a run depends on its
own profile's fields, which its key holds through :func:`accuracy_core.profile_fields`, and not on the other
profiles: adding or changing one profile leaves the cached runs of the others valid.
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["Profile", "PROFILES", "NoiseLevel", "dataset_kind"]


def dataset_kind(dataset: str) -> str:
    """The key of ``Profile.epochs`` for a prepared dataset (every PH2 noise level is ``ph2``)."""
    return "ph2" if dataset.startswith("ph2") else dataset



@dataclass(frozen=True)
class NoiseLevel:
    """One injected-noise level of protocol 2: a ``python -m data_prep noise`` protocol and its strength."""

    protocol: str
    k: int

    @property
    def name(self) -> str:
        return f"{self.protocol}_k{self.k}"


@dataclass(frozen=True)
class Profile:
    """Sizes and budget of a benchmark profile; every number the results depend on is here.

    Args:
        name: profile name.
        size: square input side in pixels (images resized bilinear, labels nearest).
        channels, strides, res_units: MONAI ``UNet`` (2D).
        batch: batch size.
        lr: Adam learning rate (both paradigms, both DALE steps).
        patch: partition patch side, scaled with ``size`` so that the patch grid stays close to the paper's
            14×14 (16 px at 224 px).
        epochs: epochs per prepared dataset kind (``covid_pseudo``, ``covid_both``, ``covid_doctor``, ``ph2``), or
            per dataset name where a profile gives one (the semi-supervised datasets ``ph2_l10``, ``ph2_l25``,
            ``covid_semi``, whose labelled sets differ in size; see :meth:`Profile.epochs_for`).
            On COVID the network first collapses to all-background and leaves that phase only after about 500
            iterations (validation curve of the quick profile), so COVID gets at least 720 iterations.
        covid_subset: pseudo-labelled slices drawn (fixed seed 0) from the 1,600; ``None`` = all. The
            doctor-labelled training slices of ``covid_both`` are always all kept.
        seeds: default number of seeds.
        noise_levels: protocol-2 levels (radius in pixels of the 256×192 PH2 masks).
        val_points: validation evaluations per run (convergence curves).
        meta_size: cases in the clean meta set of the meta re-weighting arms (:func:`meta_split`).
        epochs_scale: factor on every dataset's epochs (:meth:`epochs_for`), e.g. ``--set epochs_scale=2`` gives
            standard training as many optimizer steps as DALE, which takes two per iteration.
        dice_weight: weight of the (per-pixel weighted) Dice term of ``DALELoss`` next to CE.
        dice_batch: compute that Dice term over the whole batch (one value per class, nnU-Net's "batch Dice")
            instead of per image (see BENCHMARKS.md, protocol 1's all-background collapse).
        norm: the UNet's normalisation layers (``"batch"`` or ``"instance"``, MONAI ``Norm`` names).
        threads: torch CPU threads (1 on a shared 2-core machine: more threads contend and run far slower).
        device: ``"cpu"`` or ``"cuda"``.
    """

    name: str
    size: int
    channels: tuple[int, ...]
    strides: tuple[int, ...]
    res_units: int
    batch: int
    lr: float
    patch: int
    epochs: dict = field(hash=False)
    covid_subset: int | None
    seeds: int
    noise_levels: tuple[NoiseLevel, ...]
    val_points: int = 10
    meta_size: int = 10
    epochs_scale: float = 1.0
    dice_weight: float = 1.0
    dice_batch: bool = False
    norm: str = "batch"
    threads: int | None = 1
    device: str = "cpu"

    def epochs_for(self, dataset: str) -> int:
        """Training epochs of a prepared dataset: the profile's entry for the dataset if it has one, else for its
        kind (:func:`dataset_kind`), times ``epochs_scale`` (at least 1).

        Raises:
            ValueError: the profile has neither (e.g. a semi-supervised dataset under a profile made for protocols
                1-5).
        """
        for k in (dataset, dataset_kind(dataset)):
            if k in self.epochs:
                return max(1, round(self.epochs[k] * self.epochs_scale))
        raise ValueError(f"profile {self.name!r} has no epochs for dataset {dataset!r} (its epochs: "
                         f"{sorted(self.epochs)}); use a profile that has, e.g. --profile semi for protocol 6")

    def describe(self) -> str:
        net = (f"UNet channels {list(self.channels)}, strides {list(self.strides)}, {self.res_units} residual unit(s), "
               f"{self.norm} norm")
        ep = ", ".join(f"{k} {v}" for k, v in self.epochs.items())
        if self.epochs_scale != 1:
            ep += f" (each × {self.epochs_scale:g})"
        subset = "all 1,600" if self.covid_subset is None else f"{self.covid_subset} of 1,600 (seed 0)"
        return (
            f"`{self.name}`: {self.size}×{self.size} px, {net}; batch {self.batch}, Adam lr {self.lr:g}; "
            f"loss DALELoss(CE + {self.dice_weight:g}·weighted Dice{' over the batch' if self.dice_batch else ''}); "
            f"partition patch {self.patch} px, τ 0.9; "
            f"epochs: {ep}; COVID pseudo-labels: {subset}; {self.seeds} seeds; {self.val_points} validation points; "
            f"device {self.device}, {self.threads or 'default'} thread(s)"
        )


_LEVELS_QUICK = (NoiseLevel("dilate_erode", 5), NoiseLevel("dilate_erode", 15))
_LEVELS_FULL = (NoiseLevel("dilate_erode", 5), NoiseLevel("dilate_erode", 10), NoiseLevel("dilate_erode", 15),
                NoiseLevel("dilate_erode", 25))

PROFILES: dict[str, Profile] = {
    # about 10-15 min per protocol on 2 shared CPU cores
    "quick": Profile("quick", 96, (8, 16, 32, 64), (2, 2, 2), 1, 8, 1e-3, 8,
                     {"covid_pseudo": 16, "covid_both": 16, "covid_doctor": 144, "ph2": 20}, 320, 3, _LEVELS_QUICK),
    # a few hours per protocol on 2 CPU cores
    "full": Profile("full", 128, (16, 32, 64, 128), (2, 2, 2), 2, 8, 1e-3, 8,
                    {"covid_pseudo": 16, "covid_both": 16, "covid_doctor": 300, "ph2": 60}, 800, 5, _LEVELS_FULL),
    # the paper's settings (224 px, batch 24, Adam 3e-4, patch 16), for a GPU
    "gpu": Profile("gpu", 224, (32, 64, 128, 256, 512), (2, 2, 2, 2), 2, 24, 3e-4, 16,
                   {"covid_pseudo": 50, "covid_both": 50, "covid_doctor": 300, "ph2": 200}, None, 5, _LEVELS_FULL,
                   threads=None, device="cuda"),
    # long enough on 2 CPU cores for standard training to memorise noisy labels: on PH2 with 15 px noise its
    # clean-validation Dice peaks after a few hundred iterations and then declines (issue 14); about 2,000
    # iterations per run, validation every 80 (PH2), final and best-validation weights both scored
    # The shared configuration is the quick profile's network without residual units, with instance norm and
    # batch Dice: chosen on protocol 1's validation Dice, it removes the all-background collapse that decided
    # 2 of 5 COVID seeds (results/accuracy/collapse_quick/). Likely mechanism: with residual units MONAI's UNet
    # passes the one-channel output map through Norm + PReLU before its last convolution; without them the top
    # layer is a plain transposed convolution.
    "long": Profile("long", 96, (8, 16, 32, 64), (2, 2, 2), 0, 8, 1e-3, 8,
                    {"covid_pseudo": 50, "covid_both": 45, "covid_doctor": 400, "ph2": 200}, 320, 5,
                    (NoiseLevel("dilate_erode", 15),), val_points=25, dice_batch=True, norm="instance"),
    # the quick profile's budgets (200-720 iterations, 3 seeds) on the long profile's shared configuration (no
    # residual units, instance norm, batch Dice): the quick profile's own configuration collapses to all-background
    # on 2 of 5 COVID seeds, which would decide every comparison (issue 14); the paradigm table (issue 11) uses it
    "short": Profile("short", 96, (8, 16, 32, 64), (2, 2, 2), 0, 8, 1e-3, 8,
                     {"covid_pseudo": 16, "covid_both": 16, "covid_doctor": 144, "ph2": 20}, 320, 3, _LEVELS_QUICK,
                     dice_batch=True, norm="instance"),
    # protocol 6 (semi-supervised): the long profile's network and loss with 600 iterations per run for every
    # dataset: the epoch is one pass over the labelled loader (8 labelled PH2 images at 10 %: 1 batch of 8; 21 at
    # 25 %: 2; the 84 of the fully labelled upper bound: 10; the 40 COVID doctor slices: 5), so the epochs differ
    # per dataset and the iterations do not; 320 of the 1,600 COVID images unlabelled, as the quick profile
    "semi": Profile("semi", 96, (8, 16, 32, 64), (2, 2, 2), 0, 8, 1e-3, 8,
                    {"ph2_l10": 600, "ph2_l25": 300, "ph2": 60, "covid_semi": 120}, 320, 3, (),
                    val_points=20, dice_batch=True, norm="instance"),
    # protocol 6 on a GPU: the gpu profile's network, resolution and optimizer with labelled batches of 8 (the
    # labelled loader drops its last partial batch, and PH2 at 10 % has 8 labelled images) and 4,000 iterations per
    # run for every dataset (epochs as in the semi profile: one pass over the labelled loader)
    "gpu_semi": Profile("gpu_semi", 224, (32, 64, 128, 256, 512), (2, 2, 2, 2), 2, 8, 3e-4, 16,
                        {"ph2_l10": 4000, "ph2_l25": 2000, "ph2": 400, "covid_semi": 800}, None, 5, (),
                        val_points=20, threads=None, device="cuda"),
    # seconds, for the smoke test only: numbers meaningless
    "toy": Profile("toy", 32, (4, 8), (2,), 0, 4, 1e-3, 8,
                   {"covid_pseudo": 1, "covid_both": 1, "covid_doctor": 1, "ph2": 1}, 8, 2, (NoiseLevel("dilate_erode", 3),),
                   val_points=2, meta_size=3),
}
