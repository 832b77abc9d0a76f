"""ARCOTrainer: a mean teacher plus ARCO's stratified-sampling pixel contrastive loss (You et al., NeurIPS 2023)."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Callable, Iterable, Iterator, Sequence

import torch
from ignite.engine import Engine, EventEnum
from monai.engines.utils import default_prepare_batch
from torch import Tensor, nn
from torch.optim import Optimizer
from torch.utils.data import DataLoader

from ..arco import ClassMemoryBank, arco_contrastive_loss, class_probabilities, class_targets
from ..feature_layers import default_feature_layer, resolve_layer, unwrap_model
from .mean_teacher import MeanTeacherTrainer

__all__ = ["ARCOTrainer", "ARCOKeys"]


class ARCOKeys:
    """Keys of ``engine.state.output`` added by :class:`ARCOTrainer`."""

    LOSS_CONTRAST = "loss_contrast"  # the contrastive loss L_contra, before its weight
    CONTRAST_CLASSES = "contrast_classes"  # classes that contributed to L_contra this iteration
    ENTROPY_PERCENT = "entropy_percent"  # α_t of the entropy masks


@contextmanager
def _capture_input(layer: nn.Module) -> Iterator[list[Tensor]]:
    """Record the input of every call of ``layer`` while the context is open."""
    seen: list[Tensor] = []
    handle = layer.register_forward_pre_hook(lambda module, args: seen.append(args[0]))
    try:
        yield seen
    finally:
        handle.remove()


class ARCOTrainer(MeanTeacherTrainer):
    """ARCO (You et al., NeurIPS 2023): the mean teacher plus a pixel contrastive loss with stratified sampling.

    Per iteration: the mean teacher's losses (:class:`~dale_monai.engines.MeanTeacherTrainer`: supervised loss on
    X_l, w(t)-weighted consistency on X_u), plus ``contrast_weight`` · L_contra
    (:func:`dale_monai.arco.arco_contrastive_loss`): anchors are student features of the student's forward of
    cat([X_l, X_u]); prototypes and the memory-bank negatives are features of a teacher forward of the same clean
    batch; classes are the ground truth on X_l and the teacher's hard pseudo-labels on X_u; anchors and negatives
    are drawn by stratified (grid Monte Carlo) sampling; the entropy masks use α_t = ``entropy_percent`` ·
    max(0, 1 − t/T), t the iterations completed and T = ``entropy_length`` (``None``: the whole run, max_epochs ×
    epoch_length, as the public code's 20·(1 − epoch/max_epoch); a run that is resumed with more epochs needs a
    fixed T to repeat the same schedule, as ``rampup_length``).

    **Features.** The input of the network's segmentation head, found by the feature-layer lookup
    (:func:`dale_monai.feature_layers.default_feature_layer`, or ``feature_layer``), in the student and in the
    teacher; no projection head. Why: it is the representation the head classifies (the one DALE's calibration
    uses), it exists for every MONAI network the lookup knows, and it adds no parameters, so the optimizer, the
    checkpoint and the EMA teacher stay the mean teacher's. The public code instead concatenates all five decoder
    levels of its own UNet (496 channels at full resolution) and projects them with a two-layer 1×1 convolution
    that has its own EMA copy; MONAI's networks expose no such levels uniformly (a ``UNet``'s pre-head features are
    2·channels[0] wide at 1/strides[0] resolution: labels and probabilities are resampled to them).

    **Defaults** from the public code (``code/train_arco_2d.py``, ``code/loss_helper.py``): ``contrast_weight``
    (k1) 0.01, ``temperature`` 0.5, ``anchors_per_class`` 256, ``negatives_per_anchor`` 512, memory banks of
    30,000 entries per class and 50,000 for the background, ``entropy_percent`` 20, anchor threshold p_c > 0.3,
    negative threshold p_c < 0.97, 4 × 4 strata; the mean teacher's defaults otherwise (SSL4MIS; the public code's
    EMA decay is 0.99 too).

    **Left out** (optional extras of the public code): the self-distillation pretraining stage (``pretrain_2D.py``,
    ISD, whose checkpoint the public training script requires), the TPS equivariance loss L_eqv, the queue loss L_q,
    the antithetic sampler variant (``asmc``), the momentum class prototypes, the projection head over all decoder
    levels (see above), and the public unsupervised term (CE to confidence-weighted teacher pseudo-labels under
    geometric augmentation, CutMix and colour jitter), for which the mean teacher's consistency loss stands; and
    the negatives rule is this project's (see :mod:`dale_monai.arco`).

    Cost: the mean teacher's, plus a teacher forward of B_l + B_u images and the sampled similarities
    (anchors_per_class × (1 + negatives_per_anchor) per class); the banks hold at most 50,000 + 30,000·(K − 1)
    feature vectors. Several processes: each keeps its own banks (fed by its own shard; nothing is gathered).

    **Checkpoints.** ``model``, ``optimizer``, ``teacher`` and ``memory_bank`` (:meth:`checkpoint_objects`), so a
    resumed run samples from the same negatives.

    Args:
        as :class:`~dale_monai.engines.MeanTeacherTrainer`, and:
        memory_bank: the banks (:class:`dale_monai.arco.ClassMemoryBank`); ``None`` makes one with the public
            code's capacities. A bundle defines it in its config so that its ``LastCheckpoint`` can save it.
        contrast_weight: k1 (>= 0).
        temperature: τ (> 0).
        anchors_per_class, negatives_per_anchor: sample sizes (>= 1).
        entropy_percent: α_0 in [0, 100].
        entropy_length: T in iterations (>= 1) or ``None`` (see above).
        anchor_threshold, negative_threshold: in [0, 1].
        strata_cuts: strata per grid side (>= 1).
        feature_layer: dotted path of the module whose input are the features (default: the segmentation head of
            a MONAI network, :func:`~dale_monai.feature_layers.default_feature_layer`).

    Raises:
        ValueError: an option out of range, a network without a known feature layer, and the errors of
            :class:`~dale_monai.engines.MeanTeacherTrainer`; at an iteration, a feature layer the forward did not
            call exactly once.
    """

    def __init__(
        self,
        device: str | torch.device,
        max_epochs: int,
        train_data_loader: Iterable | DataLoader,
        networks: Sequence[nn.Module],
        optimizers: Sequence[Optimizer],
        loss_function: Callable,
        unlabeled_data_loader: Iterable | DataLoader | None = None,
        teacher: nn.Module | None = None,
        memory_bank: ClassMemoryBank | None = None,
        contrast_weight: float = 0.01,
        temperature: float = 0.5,
        anchors_per_class: int = 256,
        negatives_per_anchor: int = 512,
        entropy_percent: float = 20.0,
        entropy_length: int | None = None,
        anchor_threshold: float = 0.3,
        negative_threshold: float = 0.97,
        strata_cuts: int = 4,
        feature_layer: str | None = None,
        ema_decay: float = 0.99,
        noise_std: float = 0.1,
        noise_clip: float = 0.2,
        epoch_length: int | str | None = None,
        unsup_weight: float | None = None,
        rampup_length: int | None = None,
        clip_grad_norm: float | None = None,
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

        def number(name: str, value: Any, low: float, high: float, open_low: bool = False) -> float:
            ok = not isinstance(value, bool) and isinstance(value, (int, float)) and low <= value <= high and (
                not open_low or value > low)
            if not ok:
                raise ValueError(f"{owner}: {name} must lie in {'(' if open_low else '['}{low:g}, {high:g}], "
                                 f"got {value!r}")
            return float(value)

        self.contrast_weight = number("contrast_weight", contrast_weight, 0, float("inf"))
        self.temperature = number("temperature", temperature, 0, float("inf"), open_low=True)
        self.entropy_percent = number("entropy_percent", entropy_percent, 0, 100)
        self.anchor_threshold = number("anchor_threshold", anchor_threshold, 0, 1)
        self.negative_threshold = number("negative_threshold", negative_threshold, 0, 1)
        for name, value in (("anchors_per_class", anchors_per_class), ("negatives_per_anchor", negatives_per_anchor),
                            ("strata_cuts", strata_cuts)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{owner}: {name} must be an integer >= 1, got {value!r}")
        if entropy_length is not None and (isinstance(entropy_length, bool) or not isinstance(entropy_length, int)
                                           or entropy_length < 1):
            raise ValueError(f"{owner}: entropy_length must be an iteration count >= 1 or None, got {entropy_length!r}")
        self.entropy_length = entropy_length
        self.anchors_per_class, self.negatives_per_anchor = anchors_per_class, negatives_per_anchor
        self.strata_cuts = strata_cuts
        if memory_bank is not None and not isinstance(memory_bank, ClassMemoryBank):
            raise ValueError(f"{owner}: memory_bank must be a dale_monai.arco.ClassMemoryBank, got "
                             f"{type(memory_bank).__name__}")
        # set before the base checks that a LastCheckpoint saves every object, the bank included
        self.memory_bank = memory_bank if memory_bank is not None else ClassMemoryBank()
        super().__init__(
            device=device, max_epochs=max_epochs, train_data_loader=train_data_loader, networks=networks,
            optimizers=optimizers, loss_function=loss_function, unlabeled_data_loader=unlabeled_data_loader,
            teacher=teacher, ema_decay=ema_decay, noise_std=noise_std, noise_clip=noise_clip,
            epoch_length=epoch_length, unsup_weight=unsup_weight, rampup_length=rampup_length,
            clip_grad_norm=clip_grad_norm, non_blocking=non_blocking, prepare_batch=prepare_batch,
            iteration_update=iteration_update, inferer=inferer, postprocessing=postprocessing,
            key_train_metric=key_train_metric, additional_metrics=additional_metrics, metric_cmp_fn=metric_cmp_fn,
            train_handlers=train_handlers, amp=amp, event_names=event_names, event_to_attr=event_to_attr,
            decollate=decollate, optim_set_to_none=optim_set_to_none, to_kwargs=to_kwargs, amp_kwargs=amp_kwargs,
        )
        student = self.networks[0]
        if feature_layer is None:
            self.student_layer, self.teacher_layer = default_feature_layer(student), default_feature_layer(self.teacher)
        else:
            self.student_layer = resolve_layer(student, feature_layer)
            self.teacher_layer = resolve_layer(self.teacher, feature_layer)
        self.feature_layer = feature_layer

    def checkpoint_objects(self) -> dict[str, Any]:
        """``model``, ``optimizer``, ``teacher`` and ``memory_bank``."""
        return {**super().checkpoint_objects(), "memory_bank": self.memory_bank}

    def entropy_percent_at(self, engine: ARCOTrainer) -> float:
        """α_t = ``entropy_percent`` · max(0, 1 − t/T), t the iterations completed, T = ``entropy_length`` or the
        iterations of the whole run."""
        total = self.entropy_length
        if total is None:
            total = int(engine.state.max_epochs or 0) * int(engine.state.epoch_length or 0)
        t = engine.state.iteration - 1
        return self.entropy_percent * max(0.0, 1.0 - t / total) if total > 0 else self.entropy_percent

    def _features(self, seen: list[Tensor], which: str) -> Tensor:
        if len(seen) != 1:
            where = self.feature_layer or f"the default feature layer of {type(unwrap_model(self.networks[0])).__name__}"
            raise ValueError(f"{type(self).__name__}: {where} was called {len(seen)} times in the {which}'s forward "
                             "(expected once: a sliding-window or ensembling inferer, or a layer outside the forward "
                             "path); use a SimpleInferer for training or give feature_layer=")
        return seen[0]

    def semi_supervised_losses(self, engine: ARCOTrainer, inputs: Tensor, targets: Tensor,
                               unlabeled: Tensor) -> list[Tensor]:
        out = engine.state.output
        with _capture_input(self.student_layer) as seen:  # the mean teacher's student forward of cat([X_l, X_u])
            losses = super().semi_supervised_losses(engine, inputs, targets, unlabeled)
        student_features = self._features(seen, "student")
        both = torch.cat([inputs, unlabeled])
        with _capture_input(self.teacher_layer) as seen_t:
            teacher_logits = self.teacher_logits(engine, both)
        teacher_features = self._features(seen_t, "teacher")
        probs = class_probabilities(teacher_logits)
        n = inputs.shape[0]
        labels = torch.cat([class_targets(targets.detach()).to(probs.device), probs[n:].argmax(dim=1)])
        percent = self.entropy_percent_at(engine)
        contrast, classes = arco_contrastive_loss(
            student_features, teacher_features, probs, labels, self.memory_bank, percent=percent,
            temperature=self.temperature, anchors_per_class=self.anchors_per_class,
            negatives_per_anchor=self.negatives_per_anchor, anchor_threshold=self.anchor_threshold,
            negative_threshold=self.negative_threshold, cuts=self.strata_cuts)
        self._check_finite(engine, contrast.detach(), "the contrastive loss")
        out[ARCOKeys.LOSS_CONTRAST] = contrast.detach()
        out[ARCOKeys.CONTRAST_CLASSES] = classes
        out[ARCOKeys.ENTROPY_PERCENT] = percent
        return [losses[0] + self.contrast_weight * contrast]
