"""The paradigms of the accuracy benchmarks besides ``standard`` and ``dale``: noisy-label, semi-supervised.

Each is registered with :func:`accuracy_core.register_paradigm`: its cached runs depend on the core sources,
the library files listed here and the source of its own build function, so adding or changing one paradigm
leaves the cached runs of the others valid. Every paradigm trains the profile's network(s) with the profile's
optimizer settings, epochs, batches, data order and augmentations; network 0 gets the same initialisation as
``standard`` with the same seed (the extra networks of co-teaching and TriNet are initialised after it), and
network 0 is the one evaluated, as the bundles save it.

Defaults are the library's (``dale_monai.robust_losses``, ``dale_monai.engines``), whose docstrings give their
sources: GCE q = 0.5 (Zhang & Sabuncu 2018), SCE α = β = 0.5 (Wang et al. 2019), co-teaching keep ratio
s = 0.85 (PyMIC), TriNet s = 0.9 (PyMIC), ramps from 10 % to 80 % of the run; MW-Net's weight network
1 → 100 → 1 with Adam 1e-3 (Shu et al. 2019's code) and L2RW (Ren et al. 2018) on a clean meta set of 10
trusted training cases (``accuracy_core.meta_split``); CLCS (issue 12) with the defaults
of ``CLCSTrainer`` and ``ClassCurriculum``, most of them this project's choices (the paper's equations were not
available; see their docstrings).
"""

from __future__ import annotations

from typing import Any

from accuracy_core import RunConfig, register_paradigm
from monai.engines import SupervisedTrainer

from dale_monai.clcs import ClassCurriculum
from dale_monai.engines.clcs import CLCSKeys, CLCSTrainer
from dale_monai.engines.coteaching import CoTeachingTrainer
from dale_monai.engines.mwnet import MetaReweightTrainer
from dale_monai.engines.trinet import TriNetTrainer
from dale_monai.robust_losses import GeneralizedCELoss, SymmetricCELoss

__all__: list[str] = []  # importing the module registers the paradigms


@register_paradigm("gce", files=("dale_monai/robust_losses.py",))
def _build_gce(cfg: RunConfig, common: dict, extras: dict) -> tuple[Any, None]:
    """Standard training with the generalised cross-entropy (q = 0.5) in place of CE + Dice."""
    return SupervisedTrainer(**{**common, "loss_function": GeneralizedCELoss()}), None


@register_paradigm("sce", files=("dale_monai/robust_losses.py",))
def _build_sce(cfg: RunConfig, common: dict, extras: dict) -> tuple[Any, None]:
    """Standard training with the symmetric cross-entropy (α = β = 0.5) in place of CE + Dice."""
    return SupervisedTrainer(**{**common, "loss_function": SymmetricCELoss()}), None


def _networks(common: dict, extras: dict, n: int) -> tuple[list, list]:
    import torch

    nets = [common["network"]] + [extras["make_network"]() for _ in range(n - 1)]
    opts = [common["optimizer"]] + [torch.optim.Adam(net.parameters(), lr=extras["lr"]) for net in nets[1:]]
    return nets, opts


@register_paradigm("coteaching", files=("dale_monai/coteaching.py", "dale_monai/engines/coteaching.py",
                                        "dale_monai/engines/multi_network.py"))
def _build_coteaching(cfg: RunConfig, common: dict, extras: dict) -> tuple[Any, None]:
    """Co-teaching: two networks, each trained on the other's small-loss pixels (the run's loss, CE + Dice)."""
    nets, opts = _networks(common, extras, 2)
    rest = {k: v for k, v in common.items() if k not in ("network", "optimizer")}
    return CoTeachingTrainer(networks=nets, optimizers=opts, **rest), None


@register_paradigm("trinet", files=("dale_monai/coteaching.py", "dale_monai/engines/coteaching.py",
                                    "dale_monai/engines/trinet.py", "dale_monai/engines/multi_network.py"))
def _build_trinet(cfg: RunConfig, common: dict, extras: dict) -> tuple[Any, None]:
    """TriNet: three networks, each trained on the pixels both others select."""
    nets, opts = _networks(common, extras, 3)
    rest = {k: v for k, v in common.items() if k not in ("network", "optimizer")}
    return TriNetTrainer(networks=nets, optimizers=opts, **rest), None


@register_paradigm("mwnet", files=("dale_monai/mwnet.py", "dale_monai/engines/mwnet.py", "dale_monai/meta.py"))
def _build_mwnet(cfg: RunConfig, common: dict, extras: dict) -> tuple[Any, None]:
    """MW-Net: a weight network maps each pixel's loss to its weight, meta-learned on the clean meta set
    (``accuracy_core.meta_split``: 10 trusted training cases), exact ``jvp`` meta gradient."""
    return MetaReweightTrainer(**common, meta_data_loader=extras["meta_loader"](), rule="mwnet"), None


@register_paradigm("l2rw", files=("dale_monai/mwnet.py", "dale_monai/engines/mwnet.py", "dale_monai/meta.py"))
def _build_l2rw(cfg: RunConfig, common: dict, extras: dict) -> tuple[Any, None]:
    """Learning to re-weight: per-pixel weights max(−g, 0) from the clean meta set's gradient, normalised."""
    return MetaReweightTrainer(**common, meta_data_loader=extras["meta_loader"](), rule="l2rw"), None


class _CLCSStats:
    """CLCS diagnostics, means over the iterations of a run (stored in the run record's ``dale_stats``).

    ``clcs_selected``: share of pixels selected as clean; ``clcs_selected_after_warmup``: the same over the
    iterations after the warm-up; with a clean reference label in the batch (injected noise), ``clcs_rejected_noisy``
    / ``clcs_rejected_clean``: the share of wrongly / correctly labelled pixels the selection rejected (after the
    warm-up; the selection should reject the wrong ones).
    """

    def __init__(self) -> None:
        self.sums: dict[str, float] = {}
        self.counts: dict[str, int] = {}
        self.snapshot: dict = {}

    def _add(self, key: str, value: float) -> None:
        self.sums[key] = self.sums.get(key, 0.0) + float(value)
        self.counts[key] = self.counts.get(key, 0) + 1

    def attach(self, engine) -> None:
        from ignite.engine import Events

        engine.add_event_handler(Events.ITERATION_COMPLETED, self)

    def __call__(self, engine) -> None:
        import torch

        out, batch = engine.state.output, engine.state.batch
        self._add("clcs_selected", out[CLCSKeys.SELECTED])
        if out[CLCSKeys.WARMUP]:
            return
        self._add("clcs_selected_after_warmup", out[CLCSKeys.SELECTED])
        if "label_clean" in batch:
            keep = out[CLCSKeys.MASK].detach().cpu() > 0
            wrong = (out["label"].detach().cpu() > 0.5) != (torch.as_tensor(batch["label_clean"]) > 0.5)
            if wrong.any():
                self._add("clcs_rejected_noisy", float((~keep[wrong]).float().mean()))
            if (~wrong).any():
                self._add("clcs_rejected_clean", float((~keep[~wrong]).float().mean()))

    def means(self) -> dict[str, float]:
        return {k: self.sums[k] / self.counts[k] for k in self.sums}


@register_paradigm("clcs", files=("dale_monai/clcs.py", "dale_monai/engines/clcs.py",
                                  "dale_monai/engines/multi_network.py", "dale_monai/coteaching.py",
                                  "dale_monai/robust_losses.py", "dale_monai/feature_layers.py"))
def _build_clcs(cfg: RunConfig, common: dict, extras: dict) -> tuple[Any, _CLCSStats]:
    """CLCS: two branches vote; per-epoch class-aware thresholds select clean pixels, NBL, feature discrepancy."""
    nets, opts = _networks(common, extras, 2)
    rest = {k: v for k, v in common.items() if k not in ("network", "optimizer")}
    trainer = CLCSTrainer(networks=nets, optimizers=opts, curriculum=ClassCurriculum(num_classes=2), **rest)
    stats = _CLCSStats()
    stats.attach(trainer)
    return trainer, stats


# ------------------------------------------------------------------------------------------ semi-supervised (issue 13)
# Protocol 6. Each trains on the labelled loader and extras["unlabeled_loader"] (registered with unlabeled=True);
# the epoch is one pass over the labelled loader (the trainers' default), so every arm of a dataset takes the
# iterations of `standard` on the labelled part; the unsupervised weight ramps up over the whole run; every other
# setting is the trainer's default (their docstrings give the sources: SSL4MIS for the mean teacher and CPS, the
# USB-style re-implementation for GapMatch, ours where no source exists).
_SEMI_FILES = ("dale_monai/semisup.py", "dale_monai/engines/semisup.py", "dale_monai/engines/multi_network.py")


def _semi_kwargs(common: dict, extras: dict) -> dict:
    rest = {k: v for k, v in common.items() if k not in ("network", "optimizer")}
    return {**rest, "unlabeled_data_loader": extras["unlabeled_loader"]}


@register_paradigm("meanteacher", unlabeled=True, files=_SEMI_FILES + ("dale_monai/engines/mean_teacher.py",))
def _build_meanteacher(cfg: RunConfig, common: dict, extras: dict) -> tuple[Any, None]:
    """Mean teacher: EMA teacher (0.99), consistency MSE weight 0.1 ramped over the run, input noise 0.1/0.2."""
    from dale_monai.engines.mean_teacher import MeanTeacherTrainer

    return MeanTeacherTrainer(networks=[common["network"]], optimizers=[common["optimizer"]],
                              **_semi_kwargs(common, extras)), None


@register_paradigm("cps", unlabeled=True, files=_SEMI_FILES + ("dale_monai/engines/cps.py",))
def _build_cps(cfg: RunConfig, common: dict, extras: dict) -> tuple[Any, None]:
    """Cross pseudo supervision: two networks, hard pseudo-labels both ways, weight 0.1 ramped over the run."""
    from dale_monai.engines.cps import CrossPseudoSupervisionTrainer

    nets, opts = _networks(common, extras, 2)
    return CrossPseudoSupervisionTrainer(networks=nets, optimizers=opts, **_semi_kwargs(common, extras)), None


@register_paradigm("fixeddynamic", unlabeled=True, files=_SEMI_FILES + ("dale_monai/fixed_dynamic.py",
                                                                         "dale_monai/engines/fixed_dynamic.py"))
def _build_fixeddynamic(cfg: RunConfig, common: dict, extras: dict) -> tuple[Any, None]:
    """Fixed + dynamic pseudo-labels: two subnets, shifted crops, COM, CutMix (the trainer's defaults, but crops
    rounded to a multiple of the profile's UNet stride instead of 32: 72 px crops at 96 px, shifted by 9 px)."""
    from dale_monai.engines.fixed_dynamic import FixedDynamicTrainer

    nets, opts = _networks(common, extras, 2)
    stride = 2 ** len(extras["profile"].strides)
    return FixedDynamicTrainer(networks=nets, optimizers=opts, size_multiple=stride,
                               **_semi_kwargs(common, extras)), None


@register_paradigm("dalepl", unlabeled=True, files=_SEMI_FILES + (
        "dale_monai/engines/dale_pseudo.py", "dale_monai/engines/mean_teacher.py", "dale_monai/meta.py",
        "dale_monai/engines/dale_events.py", "dale_monai/feature_layers.py"))
def _build_dalepl(cfg: RunConfig, common: dict, extras: dict) -> tuple[Any, None]:
    """DALE on pseudo-labels: the EMA teacher's pseudo-labels through the partition (the profile's patch, τ 0.9)
    and the ω meta step (``OmegaMetaStep`` reduction mean, as protocol 1's ``dale``), weight 1 ramped."""
    from dale_monai.engines.dale_pseudo import DALEPseudoLabelTrainer
    from dale_monai.meta import OmegaMetaStep

    return DALEPseudoLabelTrainer(networks=[common["network"]], optimizers=[common["optimizer"]],
                                  omega_step=OmegaMetaStep(reduction="mean", method="jvp"),
                                  patch_size=extras["profile"].patch, tau=0.9, **_semi_kwargs(common, extras)), None


@register_paradigm("gapmatch", unlabeled=True, files=_SEMI_FILES + ("dale_monai/gapmatch.py",
                                                                     "dale_monai/fixed_dynamic.py",
                                                                     "dale_monai/engines/gapmatch.py"))
def _build_gapmatch(cfg: RunConfig, common: dict, extras: dict) -> tuple[Any, None]:
    """GapMatch (reconstructed): p_cutoff 0.95, ε 0.01, α 1, weight 1 ramped over the run."""
    from dale_monai.engines.gapmatch import GapMatchTrainer

    return GapMatchTrainer(networks=[common["network"]], optimizers=[common["optimizer"]],
                           **_semi_kwargs(common, extras)), None


@register_paradigm("arco", unlabeled=True, files=_SEMI_FILES + ("dale_monai/arco.py", "dale_monai/engines/arco.py",
                                                                 "dale_monai/engines/mean_teacher.py",
                                                                 "dale_monai/feature_layers.py"))
def _build_arco(cfg: RunConfig, common: dict, extras: dict) -> tuple[Any, None]:
    """ARCO: the mean teacher (as ``meanteacher``) plus the stratified-sampling pixel contrastive loss on the UNet's
    pre-head features with the public code's defaults (k1 0.01, τ 0.5, 256 anchors, 512 negatives, banks of
    30,000 / 50,000)."""
    from dale_monai.engines.arco import ARCOTrainer

    return ARCOTrainer(networks=[common["network"]], optimizers=[common["optimizer"]],
                       **_semi_kwargs(common, extras)), None
