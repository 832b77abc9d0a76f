"""MeanTeacherTrainer: a student and its EMA teacher (Tarvainen & Valpola, NeurIPS 2017), as a MONAI trainer."""

from __future__ import annotations

from typing import Any, Callable, Iterable, Sequence

import torch
from ignite.engine import Engine, EventEnum
from monai.engines.utils import default_prepare_batch
from monai.utils.enums import CommonKeys as Keys
from torch import Tensor, nn
from torch.optim import Optimizer
from torch.utils.data import DataLoader

from ..meta import logits_of, virtual_norm_mode
from ..feature_layers import unwrap_model
from ..semisup import consistency_mse, ema_teacher, ema_update_, input_noise
from .semisup import SemiSupervisedKeys, SemiSupervisedTrainer

__all__ = ["MeanTeacherTrainer", "MeanTeacherKeys", "TeacherMixin"]


class MeanTeacherKeys:
    """Keys of ``engine.state.output`` added by the trainers with an EMA teacher."""

    EMA_ALPHA = "ema_alpha"  # the decay α of this iteration's EMA update


class TeacherMixin:
    """An EMA teacher beside ``networks[0]``: its construction checks, forward and update (shared by the mean
    teacher and DALE on pseudo-labels)."""

    teacher: nn.Module
    ema_decay_value: float

    def _init_teacher(self, owner: str, student: nn.Module, teacher: nn.Module | None, ema_decay: float) -> None:
        if isinstance(ema_decay, bool) or not isinstance(ema_decay, (int, float)) or not 0 <= ema_decay <= 1:
            raise ValueError(f"{owner}: ema_decay must lie in [0, 1], got {ema_decay!r}")
        if teacher is None:
            teacher = ema_teacher(student)
        if teacher is unwrap_model(student):
            raise ValueError(f"{owner}: the teacher must be its own copy of the network (in a bundle config: "
                             "dale_monai.semisup.ema_teacher(@network))")
        if any(p.requires_grad for p in teacher.parameters()):
            raise ValueError(f"{owner}: the teacher's parameters must not require gradients (it follows the student "
                             "by EMA only); build it with dale_monai.semisup.ema_teacher")
        self.teacher = teacher
        self.ema_decay_value = float(ema_decay)

    def teacher_logits(self, engine: Any, inputs: Tensor) -> Tensor:
        """The teacher's logits, without gradient, in train mode with batch statistics that write nothing into
        its normalisation buffers (these follow the student by EMA, :func:`~dale_monai.semisup.ema_update_`)."""
        self.teacher.train()
        with torch.no_grad(), virtual_norm_mode(self.teacher):
            if engine.amp and engine.scaler is not None:
                with torch.autocast("cuda", **engine.amp_kwargs):
                    return logits_of(engine.inferer(inputs, self.teacher)).float()
            return logits_of(engine.inferer(inputs, self.teacher))

    def update_teacher(self, engine: Any) -> None:
        """EMA update after the student's step, with t = iterations completed before this one."""
        alpha = ema_update_(self.teacher, engine.networks[0], self.ema_decay_value, engine.state.iteration - 1)
        engine.state.output[MeanTeacherKeys.EMA_ALPHA] = alpha


class MeanTeacherTrainer(TeacherMixin, SemiSupervisedTrainer):
    """Mean teacher (Tarvainen & Valpola, NeurIPS 2017) for segmentation, as in SSL4MIS, as a MONAI trainer.

    Per iteration: the student forwards cat([X_l, X_u]); its loss is the supervised loss on X_l plus
    w(t)·mean((p_s(X_u) − p_t(X_u + n))²) with the teacher's probabilities p_t on the unlabelled batch plus
    noise n = clamp(``noise_std``·N(0, 1), ±``noise_clip``) (:func:`dale_monai.semisup.consistency_mse`,
    :func:`~dale_monai.semisup.input_noise`); after the student's step the teacher's weights move to
    α·θ_t + (1 − α)·θ_s with α = min(1 − 1/(t + 1), ``ema_decay``) (:func:`~dale_monai.semisup.ema_update_`).
    The student is ``networks[0]``, the model that is validated and saved (SSL4MIS validates the student too).

    Defaults are SSL4MIS's (``code/train_mean_teacher_2D.py``): ``ema_decay`` 0.99, consistency weight 0.1
    ramped up with the sigmoid over the whole run (200 × 150 of 30,000 iterations), noise 0.1 clipped at 0.2.
    SSL4MIS also sets the consistency loss to 0 for its first 1,000 iterations (3.3 % of the run); that cut is
    left out: the ramp keeps the weight below 1 % of its final value for the first 4 % of its length anyway.

    Cost: one student forward and backward of B_l + B_u images and one teacher forward of B_u per iteration;
    the teacher doubles the network's memory for weights, not for activations.

    **Checkpoints.** :meth:`checkpoint_objects` adds ``teacher`` to ``model``/``optimizer``: give all three to
    :class:`~dale_monai.handlers.LastCheckpoint` (a ``LastCheckpoint`` missing one is refused).

    Example::

        trainer = MeanTeacherTrainer(device, max_epochs, labeled_loader, [net], [opt], DALELoss(dice_weight=1.0),
                                     unlabeled_data_loader=unlabeled_loader)

    Args:
        device, max_epochs, train_data_loader, networks, optimizers, loss_function, unlabeled_data_loader,
            epoch_length, unsup_weight, rampup_length, and the MONAI arguments: as in
            :class:`~dale_monai.engines.SemiSupervisedTrainer`; one network (the student). ``unsup_weight`` is the
            consistency weight (default 0.1).
        teacher: the teacher network, a frozen copy of the student (:func:`dale_monai.semisup.ema_teacher`);
            ``None`` makes one. A bundle defines it in its config so that its ``LastCheckpoint`` can save it.
        ema_decay: the EMA decay (default 0.99).
        noise_std: standard deviation of the teacher's input noise (default 0.1; 0 switches it off).
        noise_clip: the noise is clamped to ±``noise_clip`` (default 0.2).

    Raises:
        ValueError: ``ema_decay`` outside [0, 1], a negative noise setting, a teacher that is the student or has
            trainable parameters, and the errors of :class:`~dale_monai.engines.SemiSupervisedTrainer`.
    """

    num_networks = 1
    default_unsup_weight = 0.1

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
        networks = list(networks)
        if networks:  # set before the base checks that a LastCheckpoint saves every object, the teacher included
            self._init_teacher(owner, networks[0], teacher, ema_decay)
        for name, value in (("noise_std", noise_std), ("noise_clip", noise_clip)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < float("inf"):
                raise ValueError(f"{owner}: {name} must be a finite number >= 0, got {value!r}")
        self.noise_std, self.noise_clip = float(noise_std), float(noise_clip)
        super().__init__(
            device=device, max_epochs=max_epochs, train_data_loader=train_data_loader, networks=networks,
            optimizers=optimizers, loss_function=loss_function, unlabeled_data_loader=unlabeled_data_loader,
            epoch_length=epoch_length, unsup_weight=unsup_weight, rampup_length=rampup_length,
            clip_grad_norm=clip_grad_norm, non_blocking=non_blocking, prepare_batch=prepare_batch,
            iteration_update=iteration_update, inferer=inferer, postprocessing=postprocessing,
            key_train_metric=key_train_metric, additional_metrics=additional_metrics, metric_cmp_fn=metric_cmp_fn,
            train_handlers=train_handlers, amp=amp, event_names=event_names, event_to_attr=event_to_attr,
            decollate=decollate, optim_set_to_none=optim_set_to_none, to_kwargs=to_kwargs, amp_kwargs=amp_kwargs,
        )
        self.teacher.to(self.state.device)

    def checkpoint_objects(self) -> dict[str, Any]:
        """``model``, ``optimizer`` and ``teacher``."""
        return {**super().checkpoint_objects(), "teacher": self.teacher}

    def semi_supervised_losses(self, engine: MeanTeacherTrainer, inputs: Tensor, targets: Tensor,
                               unlabeled: Tensor) -> list[Tensor]:
        out = engine.state.output
        n = inputs.shape[0]
        pred_l, pred_u = self.split(self.forward(engine, self.networks[0], torch.cat([inputs, unlabeled])), n)
        out[Keys.PRED] = pred_l.detach()
        teacher = self.teacher_logits(engine, input_noise(unlabeled, self.noise_std, self.noise_clip))
        sup = self.supervised_loss(pred_l, targets)
        consistency = consistency_mse(pred_u, teacher)
        out[SemiSupervisedKeys.LOSS_SUP] = sup.detach()
        out[SemiSupervisedKeys.LOSS_UNSUP] = consistency.detach()
        return [sup + out[SemiSupervisedKeys.UNSUP_WEIGHT] * consistency]

    def after_step(self, engine: MeanTeacherTrainer) -> None:
        self.update_teacher(engine)

