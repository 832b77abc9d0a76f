"""GapMatchTrainer: confidence-filtered weak → strong pseudo-labels plus a SAM-style model perturbation."""

from __future__ import annotations

from typing import Any, Callable, Iterable, Sequence

import torch
import torch.distributed as dist
from ignite.engine import Engine, EventEnum
from monai.engines.utils import IterationEvents, default_prepare_batch
from monai.utils.enums import CommonKeys as Keys
from torch import Tensor, nn
from torch.optim import Optimizer
from torch.utils.data import DataLoader

from ..fixed_dynamic import cutmix, cutmix_masks
from ..gapmatch import confidence_mask, perturbation, strong_view
from ..meta import logits_of, virtual_norm_mode
from ..feature_layers import unwrap_model
from ..semisup import hard_labels
from .multi_network import pixel_loss_map
from .semisup import SemiSupervisedKeys, SemiSupervisedTrainer
from ..distributed import all_reduce_mean, is_distributed

__all__ = ["GapMatchTrainer", "GapMatchKeys"]


class GapMatchKeys:
    """Keys of ``engine.state.output`` added by :class:`GapMatchTrainer`."""

    CONFIDENT = "confident_fraction"  # share of unlabelled pixels whose pseudo-label passed p_cutoff
    LOSS_PERTURBED = "loss_unsup_perturbed"  # L_u at θ* (before its weight)


class GapMatchTrainer(SemiSupervisedTrainer):
    """GapMatch (Huang et al., AAAI 2025), **reconstructed** from its abstract and two public re-implementations.

    No official code exists and the paper body was not read; see :mod:`dale_monai.gapmatch` for the sources and
    what is this project's own choice. Per iteration (one network, ``networks[0]``):

    1. views: the unlabelled batch as loaded is the weak view (the pipeline's flips and rotations); the strong view
       is an intensity jitter and a CutMix of it (:func:`dale_monai.gapmatch.strong_view`);
    2. one forward of cat([X_l, X_weak, X_strong]); pseudo-labels Ŷ = hard labels of the weak view where its
       confidence reaches ``p_cutoff`` (:func:`~dale_monai.gapmatch.confidence_mask`), mixed with the same boxes;
       L_l = the loss function on X_l, L_u(θ) = mean(c ⊙ ℓ(f_θ(X_strong), Ŷ)) (ℓ the per-pixel map, c the mixed
       confidence mask; the mean runs over all pixels, as FixMatch's);
    3. g_l = ∇L_l, g₁ = ∇L_u(θ); θ* = θ + ε·g₁/‖g₁‖ (:func:`~dale_monai.gapmatch.perturbation`); g₂ = ∇L_u(θ*) with the
       same pseudo-labels (a forward at θ* with batch statistics that writes nothing into the normalisation
       buffers); θ restored;
    4. the optimizer steps on g_l + w(t)·(g₁ + α·g₂).

    Defaults: ``p_cutoff`` 0.95, ``eps`` 0.01, ``alpha`` 1, ``unsup_weight`` 1 (the USB-style re-implementation; it
    has no ramp-up: ``rampup_length=0``; the base trainer's default ramps over the whole run, as every paradigm
    here), ``jitter`` 0.25 (ours).

    Cost: two forwards of B_l + 2·B_u images and three backward passes per iteration. **Several processes:** the
    forwards run on the unwrapped network and the three gradients are averaged over the processes explicitly
    (so ‖g₁‖ and θ* are the same on every process); BatchNorm buffers are not broadcast between processes.
    AMP is refused (the gradients are taken with ``torch.autograd.grad``, outside a ``GradScaler``).

    Args:
        as :class:`~dale_monai.engines.SemiSupervisedTrainer` with one network, and:
        p_cutoff: confidence threshold of the pseudo-labels, in [0, 1].
        eps: ε, the size of the model perturbation (>= 0; 0 gives FixMatch with g_u = (1 + α)·g₁).
        alpha: α, the weight of g₂ (>= 0; 0 gives FixMatch).
        jitter: strength of the strong view's intensity jitter, in [0, 1].

    Raises:
        ValueError: an option out of range, or ``amp=True``; and the errors of
            :class:`~dale_monai.engines.SemiSupervisedTrainer`.
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
        p_cutoff: float = 0.95,
        eps: float = 0.01,
        alpha: float = 1.0,
        jitter: float = 0.25,
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
        for name, value, high in (("p_cutoff", p_cutoff, 1.0), ("eps", eps, None), ("alpha", alpha, None),
                                  ("jitter", jitter, 1.0)):
            ok = not isinstance(value, bool) and isinstance(value, (int, float)) and 0 <= value < float("inf") and (
                high is None or value <= high)
            if not ok:
                raise ValueError(f"{owner}: {name} must be a finite number >= 0"
                                 f"{'' if high is None else f' and <= {high:g}'}, got {value!r}")
        if amp:
            raise ValueError(f"{owner}: amp=True is not supported (the model perturbation takes its gradients with "
                             "torch.autograd.grad, outside a GradScaler); train in float32")
        self.p_cutoff, self.eps, self.alpha, self.jitter = float(p_cutoff), float(eps), float(alpha), float(jitter)
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

    def _unsup_loss(self, pred_strong: Tensor, pseudo: Tensor, confidence: Tensor) -> Tensor:
        return (confidence * pixel_loss_map(self.loss_function, pred_strong, pseudo)).mean()

    def train_step(self, engine: GapMatchTrainer, inputs: Tensor, targets: Tensor, unlabeled: Tensor) -> None:
        out = engine.state.output
        net, opt = unwrap_model(self.networks[0]), self.optimizers[0]
        params = [p for p in net.parameters() if p.requires_grad]
        n_l, n_u = inputs.shape[0], unlabeled.shape[0]
        distributed = is_distributed()

        masks = cutmix_masks(n_u, tuple(unlabeled.shape[2:]), device=unlabeled.device)
        strong = strong_view(unlabeled, masks, self.jitter)
        both = torch.cat([inputs, unlabeled, strong])
        logits = logits_of(engine.inferer(both, net))
        pred_l, weak, pred_s = logits[:n_l], logits[n_l:n_l + n_u], logits[n_l + n_u:]
        out[Keys.PRED] = pred_l.detach()
        engine.fire_event(IterationEvents.FORWARD_COMPLETED)
        pseudo = cutmix(hard_labels(weak), masks)
        confidence = cutmix(confidence_mask(weak, self.p_cutoff), masks)
        loss_l = self.supervised_loss(pred_l, targets)
        loss_u = self._unsup_loss(pred_s, pseudo, confidence)
        w = out[SemiSupervisedKeys.UNSUP_WEIGHT]
        out[SemiSupervisedKeys.LOSS_SUP] = loss_l.detach()
        out[SemiSupervisedKeys.LOSS_UNSUP] = loss_u.detach()
        out[GapMatchKeys.CONFIDENT] = float(confidence.mean())
        out[Keys.LOSS] = (loss_l + w * loss_u).detach()
        engine.fire_event(IterationEvents.LOSS_COMPLETED)
        for term, value in (("supervised loss", loss_l), ("unsupervised loss", loss_u)):
            self._check_finite(engine, value.detach(), f"the {term}")

        g_l = list(torch.autograd.grad(loss_l, params, retain_graph=True, allow_unused=True))
        g_1 = list(torch.autograd.grad(loss_u, params, allow_unused=True))
        if distributed:
            all_reduce_mean(g_l)
            all_reduce_mean(g_1)
        deltas = perturbation(g_1, self.eps)
        if deltas is None:  # no confident pixel (g₁ = 0) or ε = 0: θ* = θ
            g_2, loss_p = g_1, loss_u.detach()
        else:
            with torch.no_grad():
                for p, d in zip(params, deltas):
                    if d is not None:
                        p.add_(d)
            try:
                with virtual_norm_mode(net):
                    pred_p = logits_of(engine.inferer(both, net))[n_l + n_u:]
                loss_p = self._unsup_loss(pred_p, pseudo, confidence)
                g_2 = list(torch.autograd.grad(loss_p, params, allow_unused=True))
            finally:
                with torch.no_grad():
                    for p, d in zip(params, deltas):
                        if d is not None:
                            p.sub_(d)
            if distributed:
                all_reduce_mean(g_2)
            loss_p = loss_p.detach()
        out[GapMatchKeys.LOSS_PERTURBED] = loss_p
        for p, gl, g1, g2 in zip(params, g_l, g_1, g_2):
            parts = [g for g in (gl, None if g1 is None else w * g1, None if g2 is None else w * self.alpha * g2)
                     if g is not None]
            p.grad = torch.stack(parts).sum(0) if parts else None
        engine.fire_event(IterationEvents.BACKWARD_COMPLETED)
        grads = [p.grad.norm() for p in params if p.grad is not None]
        if grads:
            self._check_finite(engine, torch.stack(grads), "the gradient")
        if self.clip_grad_norm is not None:
            nn.utils.clip_grad_norm_(params, self.clip_grad_norm)
        opt.step()
