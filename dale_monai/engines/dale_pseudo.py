"""DALEPseudoLabelTrainer: DALE's alternating steps on a teacher's pseudo-labels of unlabelled images."""

from __future__ import annotations

from functools import partial
from typing import Any, Callable, Iterable, Sequence

import torch
import torch.distributed as dist
from ignite.engine import Engine, EventEnum
from monai.engines.utils import IterationEvents, default_prepare_batch
from monai.utils.enums import CommonKeys as Keys
from torch import Tensor, nn
from torch.optim import Optimizer
from torch.utils.data import DataLoader

from ..meta import OmegaMetaStep, head_parameters, network_closures, virtual_norm_mode
from ..feature_layers import unwrap_model
from ..partition import check_options, check_patch_size, fuzzy_masks_batch
from ..semisup import hard_labels
from .mean_teacher import TeacherMixin
from .multi_network import pixel_loss_map, weighted_loss
from .semisup import SemiSupervisedKeys, SemiSupervisedTrainer
from ..distributed import all_reduce_mean, is_distributed
from .dale_events import DALEKeys

__all__ = ["DALEPseudoLabelTrainer"]


class DALEPseudoLabelTrainer(TeacherMixin, SemiSupervisedTrainer):
    """DALE on pseudo-labels: a teacher's pseudo-labels of the unlabelled batch treated as noisy labels.

    No published method has it; it joins the mean teacher (:class:`~dale_monai.engines.MeanTeacherTrainer`) and
    DALE (:class:`~dale_monai.engines.DALETrainer`). Per iteration, with the student θ = ``networks[0]``:

    1. the EMA teacher labels the unlabelled batch X_u: hard pseudo-labels Ŷ (:func:`dale_monai.semisup.hard_labels`);
    2. the fuzzy partition of (X_u, Ŷ) (:func:`dale_monai.partition.fuzzy_masks_batch`, the bundle's ``dale#``
       settings) gives the soft masks M^n, M^f: pseudo-labels are least trustworthy where the image is ambiguous
       and along the boundaries they draw;
    3. **non-fuzzy step** (θ → θ_n): L_n = L_sup(X_l, Y_l) + w(t)·L(X_u^n, Ŷ; weight M^n), the labelled batch and
       the unlabelled one in one forward;
    4. **ω meta step** (:class:`dale_monai.meta.OmegaMetaStep`): per-pixel confidence ω* of the fuzzy pixels, from
       the agreement of each pixel's pseudo-label loss gradient (the loss map ℓ(X_u^f, Ŷ) at θ_n) with the gradient
       of the non-fuzzy step's objective L_n, which holds the clean labelled batch;
    5. **fuzzy step** (θ_n → θ_f): L_f = w(t)·L(X_u^f, Ŷ; weight ω* ⊙ M^f), its forward with batch statistics that
       write nothing into the normalisation buffers (DALE's ``norm_stats="nonfuzzy"``);
    6. the teacher follows the student by EMA (:func:`dale_monai.semisup.ema_update_`).

    X^n = M^n ⊙ X and X^f = M^f ⊙ X with ``mask_inputs=True`` (the paper's Eq. 7); by default (``False``, the
    bundles' setting) both steps see the image and the masks only weight the losses. The targets are never
    multiplied by the masks (DALE's ``mask_mode="weight"``): pseudo-labels are hard. Left out of DALE: the
    Wasserstein term L_W (its handler hooks :class:`~dale_monai.engines.DALETrainer`'s events).

    Defaults: the teacher as the mean teacher's (``ema_decay`` 0.99, SSL4MIS), ``unsup_weight`` 1 ramped up over
    the whole run (**ours**: the pseudo-label terms weigh as much as the supervised loss once the teacher is
    trained), the partition and ω settings of the bundle's ``dale`` section.

    Cost: two optimizer steps; the ω meta step (as in DALE, about 2.6–3× a standard iteration with ``"jvp"``),
    a teacher forward and the partition of the unlabelled batch.

    **Checkpoints.** ``model``, ``optimizer`` and ``teacher`` (:meth:`checkpoint_objects`).

    Args:
        as :class:`~dale_monai.engines.SemiSupervisedTrainer` with one network, and:
        teacher, ema_decay: as in :class:`~dale_monai.engines.MeanTeacherTrainer`.
        omega_step: the ω meta step; ``None`` keeps ω = 1 (the "without ω" ablation).
        inner_lr: η of the virtual step; ``None`` reads the optimizer's current learning rate.
        patch_size, tau, bins, edge, entropy: the fuzzy partition (:func:`dale_monai.partition.fuzzy_masks`).
        mask_inputs: see above.

    Raises:
        ValueError: an out-of-range partition setting, ``inner_lr <= 0``, a non-boolean ``mask_inputs``, and the
            errors of :class:`~dale_monai.engines.MeanTeacherTrainer`.
    """

    num_networks = 1
    default_unsup_weight = 1.0

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
        omega_step: OmegaMetaStep | None = None,
        inner_lr: float | None = None,
        patch_size: int | Sequence[int] = 16,
        tau: float = 0.9,
        bins: int = 256,
        edge: str = "morph",
        entropy: str = "paper",
        mask_inputs: bool = False,
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
        try:
            check_patch_size(patch_size)
            check_options(tau, bins, edge, entropy, True, True, "patch", "max", 0.5, None, "hard")
        except ValueError as e:
            raise ValueError(f"{owner}: {e}") from None
        if inner_lr is not None and not inner_lr > 0:
            raise ValueError(f"{owner}: inner_lr must be > 0 or None, got {inner_lr!r}")
        if not isinstance(mask_inputs, bool):
            raise ValueError(f"{owner}: mask_inputs must be True or False, got {mask_inputs!r}")
        self.partition = partial(fuzzy_masks_batch, patch_size=patch_size, tau=tau, bins=bins, edge=edge,
                                 entropy=entropy)
        self.omega_step = omega_step
        self.inner_lr = inner_lr
        self.mask_inputs = mask_inputs
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

    # ----------------------------------------------------------------------------------------- steps
    def _step(self, engine: DALEPseudoLabelTrainer, loss: Tensor, term: str, keep_grad: bool = False
              ) -> dict[str, Tensor | None] | None:
        """Backward and optimizer step of the network; with ``keep_grad`` a copy of the (unscaled) gradient."""
        self._check_finite(engine, loss.detach(), term)
        net, opt = self.networks[0], self.optimizers[0]
        scaler = engine.scaler if engine.amp else None
        kept = None
        if scaler is not None:
            scaler.scale(loss).backward()
            if self.clip_grad_norm is not None or keep_grad:
                scaler.unscale_(opt)
        else:
            loss.backward()
            grads = [p.grad.detach().norm() for p in net.parameters() if p.grad is not None]
            if grads:
                self._check_finite(engine, torch.stack(grads), f"the gradient of the {term}")
        if keep_grad:
            kept = {n: None if p.grad is None else p.grad.detach().clone()
                    for n, p in unwrap_model(net).named_parameters() if p.requires_grad}
        if self.clip_grad_norm is not None:
            nn.utils.clip_grad_norm_(net.parameters(), self.clip_grad_norm)
        if scaler is not None:
            scaler.step(opt)
            scaler.update()
        else:
            opt.step()
        return kept

    def confidence(self, engine: DALEPseudoLabelTrainer, loss_map_f: Tensor, x_f: Tensor, pseudo: Tensor,
                   nonfuzzy_inputs: Tensor, nonfuzzy_objective: Callable[[Tensor], Tensor], mask_f: Tensor,
                   nonfuzzy_grad: dict | None) -> Tensor:
        """ω* per pixel of the unlabelled batch (DALE's Eqs. 8–11 with the non-fuzzy step's objective as L_n)."""
        step = self.omega_step
        if step is None:
            engine.state.output[DALEKeys.OMEGA_SMALL_GRAD] = float("nan")
            return torch.ones_like(loss_map_f).detach()
        if step.needs_nonfuzzy_grad and engine.amp and not all(
                bool(torch.isfinite(g).all()) for g in nonfuzzy_grad.values() if g is not None):
            engine.state.output[DALEKeys.OMEGA_SMALL_GRAD] = float("nan")  # the scaler skipped that step
            return torch.ones_like(loss_map_f).detach()
        net = unwrap_model(self.networks[0])
        params = (head_parameters(net, step.head_module(net)) if step.scope == "head"
                  else dict(net.named_parameters()))
        fuzzy_map, nonfuzzy_loss = network_closures(
            net, x_f, lambda out: pixel_loss_map(self.loss_function, out, pseudo), nonfuzzy_inputs, nonfuzzy_objective)
        eta = self.inner_lr if self.inner_lr is not None else float(self.optimizers[0].param_groups[0]["lr"])
        distributed = is_distributed()
        with virtual_norm_mode(net):
            result = step(loss_map_f, params, fuzzy_map, nonfuzzy_loss, eta,
                          grad_reducer=all_reduce_mean if distributed else None,
                          world_size=dist.get_world_size() if distributed else 1,
                          nonfuzzy_grad=nonfuzzy_grad, fuzzy_mask=mask_f)
        engine.state.output[DALEKeys.OMEGA_SMALL_GRAD] = result.frac_small_grad
        self._check_finite(engine, result.omega, "ω (meta step)")
        return result.omega

    def train_step(self, engine: DALEPseudoLabelTrainer, inputs: Tensor, targets: Tensor, unlabeled: Tensor) -> None:
        out = engine.state.output
        net, opt = self.networks[0], self.optimizers[0]
        w = out[SemiSupervisedKeys.UNSUP_WEIGHT]
        n = inputs.shape[0]

        pseudo = hard_labels(self.teacher_logits(engine, unlabeled))
        mask_n, mask_f = self.partition(unlabeled.detach(), pseudo)
        mask_n, mask_f = mask_n.to(unlabeled.device), mask_f.to(unlabeled.device)
        x_n, x_f = (unlabeled * mask_n, unlabeled * mask_f) if self.mask_inputs else (unlabeled, unlabeled)
        out[DALEKeys.FUZZY_FRACTION] = float(mask_f.mean())

        def nonfuzzy_objective(pred: Tensor) -> Tensor:
            return (self.supervised_loss(pred[:n], targets)
                    + w * weighted_loss(self.loss_function, pred[n:], pseudo, mask_n))

        # non-fuzzy step: the labelled batch and the non-fuzzy pseudo-labels
        nonfuzzy_inputs = torch.cat([inputs, x_n])
        pred = self.forward(engine, net, nonfuzzy_inputs)
        out[Keys.PRED] = pred[:n].detach()
        sup = self.supervised_loss(pred[:n], targets)
        unsup_n = weighted_loss(self.loss_function, pred[n:], pseudo, mask_n)
        loss_n = sup + w * unsup_n
        keep = self.omega_step is not None and self.omega_step.needs_nonfuzzy_grad
        kept = self._step(engine, loss_n, "non-fuzzy loss (supervised + pseudo-labels)", keep_grad=keep)

        # fuzzy forward at θ_n, batch statistics only
        opt.zero_grad(set_to_none=engine.optim_set_to_none)
        with virtual_norm_mode(unwrap_model(net)):
            pred_f = self.forward(engine, net, x_f)
        engine.fire_event(IterationEvents.FORWARD_COMPLETED)
        loss_map_f = pixel_loss_map(self.loss_function, pred_f, pseudo)
        self._check_finite(engine, loss_map_f.detach(), "the fuzzy pseudo-label loss map")
        omega = self.confidence(engine, loss_map_f, x_f, pseudo, nonfuzzy_inputs, nonfuzzy_objective, mask_f, kept)
        fuzzy = mask_f > 0
        out[DALEKeys.OMEGA_MEAN] = float(omega[fuzzy].mean()) if fuzzy.any() else 1.0
        out[DALEKeys.OMEGA_BELOW_ONE] = float((omega[fuzzy] < 1).float().mean()) if fuzzy.any() else 0.0

        # fuzzy step
        unsup_f = weighted_loss(self.loss_function, pred_f, pseudo, omega * mask_f)
        loss_f = w * unsup_f
        out[SemiSupervisedKeys.LOSS_SUP] = sup.detach()
        out[SemiSupervisedKeys.LOSS_UNSUP] = (unsup_n + unsup_f).detach()
        out[DALEKeys.LOSS_N] = loss_n.detach()
        out[DALEKeys.LOSS_F] = loss_f.detach()
        out[Keys.LOSS] = (loss_n + loss_f).detach()
        engine.fire_event(IterationEvents.LOSS_COMPLETED)
        self._step(engine, loss_f, "fuzzy pseudo-label loss")
        engine.fire_event(IterationEvents.BACKWARD_COMPLETED)

    def after_step(self, engine: DALEPseudoLabelTrainer) -> None:
        self.update_teacher(engine)
