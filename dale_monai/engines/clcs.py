"""CLCSTrainer: two branches, curriculum noisy-label selection and the noise balance loss (Guo et al., TMI 2025)."""

from __future__ import annotations

from typing import Any, Callable, Iterable, Sequence

import torch
import torch.distributed as dist
from ignite.engine import Engine, Events, EventEnum
from monai.engines.utils import default_prepare_batch
from torch import Tensor, nn
from torch.optim import Optimizer
from torch.utils.data import DataLoader

from ..clcs import (
    CRITERIA,
    DEFAULT_MIN_KEEP,
    ClassCurriculum,
    class_indices,
    class_probabilities,
    discrepancy_loss,
    rejected_loss_map,
    selection_mask,
    status_counts,
)
from ..feature_layers import default_feature_layer, resolve_layer, unwrap_model
from ..robust_losses import RCE_LABEL_FLOOR, reverse_ce_map
from .multi_network import MultiNetworkKeys, MultiNetworkTrainer, pixel_loss_map, weighted_loss
from ..distributed import is_distributed

__all__ = ["CLCSTrainer", "CLCSKeys", "DISCREPANCIES", "DEFAULT_WARMUP_FRACTION"]

#: what the discrepancy loss compares: the branches' pre-head features, their class probabilities, or nothing
DISCREPANCIES = ("features", "predictions", "none")
#: warm-up epochs as a share of the run when not given: 2BDenoise warms up 10 of its 200 epochs
#: (``train_target_2B_fusion_optic.py``, ``num_warm_up``); at least one epoch
DEFAULT_WARMUP_FRACTION = 0.05


class CLCSKeys:
    """Keys written by :class:`CLCSTrainer`: per iteration in ``engine.state.output``, per epoch (thresholds and
    learning status of the epoch) in ``engine.state.metrics``."""

    SELECTED = "clcs_selected"  # share of the batch's pixels selected as clean (both branches train on the same)
    DISCREPANCY = "clcs_discrepancy"  # the discrepancy loss (mean |cos| of the branches' features), unweighted
    WARMUP = "clcs_warmup"  # 1.0 in a warm-up epoch (no selection), else 0.0
    MASK = "clcs_mask"  # the selection (B, 1, *spatial), 1.0 = clean

    @staticmethod
    def threshold(c: int) -> str:
        """Key of class c's threshold τ_c of the current epoch."""
        return f"clcs_threshold_{c}"

    @staticmethod
    def status(c: int) -> str:
        """Key of class c's learning status β_c of the current epoch."""
        return f"clcs_status_{c}"

    @staticmethod
    def class_selected(c: int) -> str:
        """Key of the share of the batch's pixels labelled c that were selected as clean."""
        return f"clcs_selected_{c}"


class CLCSTrainer(MultiNetworkTrainer):
    """CLCS (Guo, Wang, Zhao, Zhou, "Imbalanced Medical Image Segmentation with Pixel-dependent Noisy Labels", IEEE
    TMI 2025, arXiv 2501.06678) as a MONAI trainer on :class:`MultiNetworkTrainer`.

    Only the paper's summary was available (``../shared/papers/clcs_summary__002_4077a2a813fca2ac.txt``): it names
    the parts, not their equations or constants. Every formula and default below that the summary does not give is
    **this project's choice**, marked (ours), and an option; :mod:`dale_monai.clcs` holds the mathematics.

    **Two branches.** Two copies of the bundle's backbone with their own initialisation (``networks``), each with
    its own optimizer. The summary's "two-branch network" could also be a shared encoder with two decoders; MONAI's
    backbones (``UNet``'s nested ``SkipConnection``, ``SwinUNETR``, ``SegResNet``, ...) have no common encoder /
    decoder split to share, so two full copies are the form that works for every bundle, reuses the multi-network
    machinery (checkpoints, DDP, AMP) and leaves network 0 a plain backbone that ``inference.json``, MONAI Label and
    ``predict`` load unchanged (ours). Network 0 is the model validated and saved; the vote is used in training only.

    Each iteration, after both branches forward the batch:

    1. **Vote.** p̄ = mean of the branches' class probabilities (sigmoid one-channel networks: 2 classes), detached.
    2. **Curriculum selection (CNS).** The label y of a pixel is clean when p̄_y ≥ τ_y (``criterion``), with the
       class-aware thresholds τ_c = τ·M(β_c) of the current epoch (``curriculum``,
       :class:`~dale_monai.clcs.ClassCurriculum`; M(x) = x/(2 − x), τ = 0.9, β_c the class's learning status over
       the previous epoch: ours), and each class keeps at least ⌈``min_keep``·n_c⌉ of its labelled pixels (ours). The
       batch's counts are added to the curriculum; at the start of every epoch it turns the previous epoch's counts
       into new thresholds. In the first ``warmup_epochs`` every pixel is clean (plain training).
    3. **Loss of branch i** (ours, :func:`~dale_monai.clcs.noise_balance_loss_map`)::

           L_i = loss_function(pred_i, y, weight=m) + mean((1 − m)·λ_r·(w·CE_i + (1 − w)·RCE_i)) + λ_d/2 · D

       m the selection, w = p̄_y, CE_i the loss function's per-pixel map (``pixel_map``: CE for ``DALELoss``),
       RCE_i the reverse cross-entropy, λ_r = ``noisy_weight``, D the discrepancy loss
       (:func:`~dale_monai.clcs.discrepancy_loss`: mean |cos| between the branches' pre-head features, found with
       :func:`dale_monai.feature_layers.default_feature_layer`), λ_d = ``discrepancy_weight``. D depends on both
       branches: half of it is in each branch's loss, so the summed backward gives each branch the gradient of
       λ_d·D. With ``DALELoss(dice_weight=0)`` and every pixel clean, L_i − λ_d/2·D is the mean cross-entropy; the
       bundles' Dice term is weighted by the selection (the rejected pixels get the robust term only).

    **Logged.** Every epoch (``EPOCH_STARTED``), the thresholds and learning status used in it go to
    ``engine.state.metrics`` as ``clcs_threshold_<c>`` and ``clcs_status_<c>`` (:class:`CLCSKeys`), so MONAI's
    ``StatsHandler`` prints them and ``TensorBoardStatsHandler`` writes them at the epoch's end. Each iteration,
    ``engine.state.output`` adds ``clcs_mask`` (the selection, 1 = clean), ``clcs_selected``, ``clcs_selected_<c>``,
    ``clcs_discrepancy``, ``clcs_warmup``, ``clcs_threshold_<c>`` and ``selected_i`` to :class:`MultiNetworkTrainer`'s
    keys.

    **Checkpoints.** :meth:`checkpoint_objects` adds ``clcs_curriculum`` (the counts of the epoch in progress, β and
    the thresholds) to the networks and optimizers; a ``LastCheckpoint`` missing it is refused. Under DDP the
    batch counts are summed over the processes every iteration, so every process (and rank 0's checkpoint) holds
    the same curriculum.

    Cost: two forward and backward passes per batch and two networks' memory, as Co-teaching; 2.42× standard
    training per iteration on the default bundle's network (Co-teaching 1.97× in the same run,
    ``benchmarks/results/paradigms_speed_clcs/paradigms_speed.md``).

    Example::

        nets = [make_net(), make_net()]  # independently initialised copies
        opts = [torch.optim.Adam(n.parameters(), lr=1e-3) for n in nets]
        trainer = CLCSTrainer(device, max_epochs, loader, nets, opts, DALELoss(dice_weight=1.0),
                              curriculum=ClassCurriculum(num_classes=3))

    Args:
        device, max_epochs, train_data_loader, networks, optimizers, loss_function, clip_grad_norm, and the
            :class:`monai.engines.SupervisedTrainer` arguments: as in :class:`MultiNetworkTrainer`.
        curriculum: the thresholds' state and options (τ, M, the status rule); ``None``: ``ClassCurriculum()``.
        criterion: one of :data:`dale_monai.clcs.CRITERIA`; ``"label"`` (p̄_y ≥ τ_y, default) or
            ``"label_or_argmax"`` (also clean when the vote predicts y, 2BDenoise's ``case3``).
        min_keep: least share of each class's labelled pixels of the batch kept as clean, in [0, 1]; default 0.1
            (ours); 0 lets a class lose all its pixels.
        noisy_weight: λ_r >= 0, weight of the rejected pixels' robust term; default 1 (ours); 0 is plain selection.
        discrepancy: one of :data:`DISCREPANCIES`: ``"features"`` (default), ``"predictions"`` (the class
            probabilities) or ``"none"``.
        discrepancy_weight: λ_d >= 0; default 0.1 (ours).
        feature_layer: the module whose input is the pre-head feature map (a dotted path of the unwrapped network,
            the same in both branches); ``None``: :func:`dale_monai.feature_layers.default_feature_layer`.
        warmup_epochs: epochs of plain training before selection starts (>= 0); ``None``: 5 % of ``max_epochs``,
            at least 1 (2BDenoise: 10 of 200), so a run resumed with another ``max_epochs`` warms up for another
            number of epochs: give a number for a fixed schedule.
        label_floor: the label clamp of RCE (A = ln label_floor), in (0, 1); default 1e-4 (2BDenoise's ``SCELoss``).

    Raises:
        ValueError: an out-of-range option (naming it), a network without a default feature layer when
            ``discrepancy="features"`` and no ``feature_layer``, and the errors of :class:`MultiNetworkTrainer`.
    """

    num_networks = 2

    def __init__(
        self,
        device: str | torch.device,
        max_epochs: int,
        train_data_loader: Iterable | DataLoader,
        networks: Sequence[nn.Module],
        optimizers: Sequence[Optimizer],
        loss_function: Callable,
        curriculum: ClassCurriculum | None = None,
        criterion: str = "label",
        min_keep: float = DEFAULT_MIN_KEEP,
        noisy_weight: float = 1.0,
        discrepancy: str = "features",
        discrepancy_weight: float = 0.1,
        feature_layer: str | None = None,
        warmup_epochs: int | None = None,
        label_floor: float = RCE_LABEL_FLOOR,
        clip_grad_norm: float | None = None,
        epoch_length: int | None = None,
        non_blocking: bool = False,
        prepare_batch: Callable = default_prepare_batch,
        iteration_update: Callable[[Engine, Any], Any] | None = None,
        inferer=None,
        postprocessing=None,
        key_train_metric: dict | None = None,
        additional_metrics: dict | None = None,
        metric_cmp_fn: Callable | None = None,
        train_handlers: Sequence | None = None,
        amp: bool = False,
        event_names: list[str | EventEnum | type[EventEnum]] | None = None,
        event_to_attr: dict | None = None,
        decollate: bool = True,
        optim_set_to_none: bool = False,
        to_kwargs: dict | None = None,
        amp_kwargs: dict | None = None,
    ) -> None:
        owner = type(self).__name__
        if curriculum is None:
            curriculum = ClassCurriculum()
        if not isinstance(curriculum, ClassCurriculum):
            raise ValueError(f"{owner}: curriculum must be a dale_monai.clcs.ClassCurriculum or None, got "
                             f"{type(curriculum).__name__}")
        if criterion not in CRITERIA:
            raise ValueError(f"{owner}: criterion must be one of {CRITERIA}, got {criterion!r}")
        self.min_keep = self._number(owner, "min_keep", min_keep, high=1.0)
        self.noisy_weight = self._number(owner, "noisy_weight", noisy_weight)
        if discrepancy not in DISCREPANCIES:
            raise ValueError(f"{owner}: discrepancy must be one of {DISCREPANCIES}, got {discrepancy!r}")
        self.discrepancy_weight = self._number(owner, "discrepancy_weight", discrepancy_weight)
        if warmup_epochs is not None and (isinstance(warmup_epochs, bool) or not isinstance(warmup_epochs, int)
                                          or warmup_epochs < 0):
            raise ValueError(f"{owner}: warmup_epochs must be an integer >= 0 or None, got {warmup_epochs!r}")
        if isinstance(label_floor, bool) or not isinstance(label_floor, (int, float)) or not 0 < label_floor < 1:
            raise ValueError(f"{owner}: label_floor must lie in (0, 1), got {label_floor!r}")
        if feature_layer is not None and (not isinstance(feature_layer, str) or not feature_layer):
            raise ValueError(f"{owner}: feature_layer must be a dotted module path or None, got {feature_layer!r}")
        self.curriculum = curriculum  # before the base's checkpoint check, which reads checkpoint_objects()
        super().__init__(
            device=device, max_epochs=max_epochs, train_data_loader=train_data_loader, networks=networks,
            optimizers=optimizers, loss_function=loss_function, clip_grad_norm=clip_grad_norm,
            epoch_length=epoch_length, non_blocking=non_blocking, prepare_batch=prepare_batch,
            iteration_update=iteration_update, inferer=inferer, postprocessing=postprocessing,
            key_train_metric=key_train_metric, additional_metrics=additional_metrics, metric_cmp_fn=metric_cmp_fn,
            train_handlers=train_handlers, amp=amp, event_names=event_names, event_to_attr=event_to_attr,
            decollate=decollate, optim_set_to_none=optim_set_to_none, to_kwargs=to_kwargs, amp_kwargs=amp_kwargs,
        )
        self.criterion = criterion
        self.discrepancy = discrepancy
        self.feature_layer = feature_layer
        self.warmup_epochs = warmup_epochs
        self.label_floor = float(label_floor)
        self._capture_index: int | None = None
        self._features: list[Tensor | None] = [None] * len(self.networks)
        if discrepancy == "features":
            for i, net in enumerate(self.networks):
                try:
                    layer = default_feature_layer(net) if feature_layer is None else resolve_layer(net, feature_layer)
                except ValueError as e:
                    raise ValueError(f"{owner}: discrepancy='features' needs the pre-head features of networks[{i}]: "
                                     f"{e} (or set discrepancy='predictions')") from None
                layer.register_forward_pre_hook(self._hook(i))
        self.add_event_handler(Events.EPOCH_STARTED, self._start_epoch)

    @staticmethod
    def _number(owner: str, name: str, value: Any, high: float = float("inf")) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not (0 <= value <= high) or \
                value != value or value == float("inf"):
            interval = f"[0, {high:g}]" if high != float("inf") else ">= 0 and finite"
            where = f"in {interval}" if high != float("inf") else interval
            raise ValueError(f"{owner}: {name} must be {where}, got {value!r}")
        return float(value)

    def checkpoint_objects(self) -> dict[str, Any]:
        """:class:`MultiNetworkTrainer`'s networks and optimizers and ``clcs_curriculum``."""
        return {**super().checkpoint_objects(), "clcs_curriculum": self.curriculum}

    # ----------------------------------------------------------------------------------------- curriculum
    def warmup(self, engine: CLCSTrainer) -> int:
        """The number of warm-up epochs: the given one, or 5 % of ``max_epochs`` (at least 1)."""
        if self.warmup_epochs is not None:
            return self.warmup_epochs
        return max(1, round(DEFAULT_WARMUP_FRACTION * int(engine.state.max_epochs or 0)))

    def _start_epoch(self, engine: CLCSTrainer) -> None:
        self.curriculum.step()
        self._log_curriculum(engine)

    def _log_curriculum(self, engine: CLCSTrainer) -> None:
        for c, (tau, beta) in enumerate(zip(self.curriculum.thresholds.tolist(), self.curriculum.status.tolist())):
            engine.state.metrics[CLCSKeys.threshold(c)] = tau
            engine.state.metrics[CLCSKeys.status(c)] = beta

    # ----------------------------------------------------------------------------------------- features
    def _hook(self, index: int) -> Callable:
        def capture(module: nn.Module, args: tuple) -> None:
            if self._capture_index == index:
                self._features[index] = args[0]

        return capture

    def _forward(self, engine: CLCSTrainer, network: nn.Module, inputs: Tensor, args: tuple,
                 kwargs: dict) -> Tensor:
        # only the trainer's own forwards are captured (not validation's, which runs network 0 too)
        self._capture_index = next(i for i, net in enumerate(self.networks) if net is network)
        try:
            return super()._forward(engine, network, inputs, args, kwargs)
        finally:
            self._capture_index = None

    def _branch_features(self, preds: list[Tensor], probs: list[Tensor]) -> list[Tensor]:
        if self.discrepancy == "predictions":
            return probs
        feats = list(self._features)
        self._features = [None] * len(self.networks)
        if any(f is None for f in feats):
            raise RuntimeError(f"{type(self).__name__}: no pre-head features were captured in this iteration's forward "
                               "passes; set feature_layer to the module whose input they are, or "
                               "discrepancy='predictions'")
        if feats[0].shape != feats[1].shape:
            raise ValueError(f"{type(self).__name__}: the branches' features differ in shape ({tuple(feats[0].shape)} "
                             f"and {tuple(feats[1].shape)}); the discrepancy loss needs two copies of one backbone, "
                             "or discrepancy='predictions'")
        return feats

    # ----------------------------------------------------------------------------------------- the paradigm
    def network_losses(self, engine: CLCSTrainer, preds: list[Tensor], targets: Tensor) -> list[Tensor]:
        out = engine.state.output
        probs = [class_probabilities(pred) for pred in preds]
        k = probs[0].shape[1]
        self.curriculum.ensure_classes(k)
        if CLCSKeys.threshold(0) not in engine.state.metrics:
            self._log_curriculum(engine)  # without num_classes, the classes are known from the first batch on
        vote = (probs[0].detach() + probs[1].detach()) / 2
        labels = class_indices(targets, k)
        counts = status_counts(vote, labels, self.curriculum.tau)
        if is_distributed():
            dist.all_reduce(counts, op=dist.ReduceOp.SUM)  # every process keeps the global curriculum
        self.curriculum.accumulate(counts)

        warm = engine.state.epoch <= self.warmup(engine)
        thresholds = self.curriculum.thresholds.to(vote.device)
        if warm:
            mask = torch.ones_like(labels, dtype=torch.bool).unsqueeze(1)
        else:
            mask = selection_mask(vote, labels, thresholds, self.criterion, self.min_keep)
        confidence = vote.gather(1, labels.unsqueeze(1))

        d = preds[0].new_zeros((), dtype=torch.float32)
        if self.discrepancy != "none" and self.discrepancy_weight > 0:
            d = discrepancy_loss(*self._branch_features(preds, probs))
        else:
            self._features = [None] * len(self.networks)
        weight = mask.to(vote.dtype)
        losses = []
        for i, pred in enumerate(preds):
            clean = weighted_loss(self.loss_function, pred, targets, weight)
            ce = pixel_loss_map(self.loss_function, pred, targets)
            rce = reverse_ce_map(pred if pred.dtype in (torch.float32, torch.float64) else pred.float(), targets,
                                 label_floor=self.label_floor, sigmoid=pred.shape[1] == 1)
            loss = clean + rejected_loss_map(ce, rce, mask, confidence, self.noisy_weight).mean()
            if self.discrepancy_weight > 0 and self.discrepancy != "none":
                loss = loss + 0.5 * self.discrepancy_weight * d
            losses.append(loss)

        share = float(mask.float().mean())
        out[CLCSKeys.MASK] = weight
        out[CLCSKeys.SELECTED] = share
        out[CLCSKeys.DISCREPANCY] = float(d.detach())
        out[CLCSKeys.WARMUP] = float(warm)
        for i in range(len(preds)):
            out[MultiNetworkKeys.selected(i)] = share
        lab = labels.unsqueeze(1)
        for c, tau in enumerate(self.curriculum.thresholds.tolist()):
            out[CLCSKeys.threshold(c)] = tau
            n_c = int((lab == c).sum())
            out[CLCSKeys.class_selected(c)] = float((mask & (lab == c)).sum()) / n_c if n_c else float("nan")
        return losses
