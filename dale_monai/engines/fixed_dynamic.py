"""FixedDynamicTrainer: two subnets co-trained with fixed and dynamic pseudo-labels and CutMix (Kumari & Singh)."""

from __future__ import annotations

from typing import Any, Callable, Iterable, Sequence

import torch
from ignite.engine import Engine, EventEnum
from monai.engines.utils import default_prepare_batch
from monai.utils.enums import CommonKeys as Keys
from torch import Tensor, nn
from torch.optim import Optimizer
from torch.utils.data import DataLoader

from ..fixed_dynamic import (
    crop_at,
    crop_geometry,
    cutmix,
    cutmix_masks,
    dynamic_pseudo_label,
    random_crop_starts,
    shift_offsets,
)
from ..meta import logits_of, virtual_norm_mode
from ..feature_layers import unwrap_model
from ..semisup import probabilities
from .multi_network import pixel_loss_map
from .semisup import SemiSupervisedKeys, SemiSupervisedTrainer

__all__ = ["FixedDynamicTrainer", "FixedDynamicKeys"]


class FixedDynamicKeys:
    """Keys of ``engine.state.output`` added by :class:`FixedDynamicTrainer`."""

    LOSS_FIXED = "loss_fixed"  # mean over both directions, before its weight
    LOSS_DYNAMIC = "loss_dynamic"
    DYNAMIC_CHANGED = "dynamic_changed"  # share of the crop where the dynamic label differs from the fixed one


class FixedDynamicTrainer(SemiSupervisedTrainer):
    """Fixed + dynamic pseudo-labels (Kumari & Singh, arXiv 2405.07256; CoTwin, CVPRW 2025) as a MONAI trainer.

    Reconstructed from the paper's abstract and figure captions only (its equations and settings were not
    available); see :mod:`dale_monai.fixed_dynamic` for what is the paper's and what is **ours**. Per iteration,
    with subnet A = ``networks[0]`` (validated and saved) and B = ``networks[1]``:

    1. a fixed crop x_f of every unlabelled image (random position, :func:`~dale_monai.fixed_dynamic.crop_geometry`
       gives its size and the shift s) and four crops shifted by (±s, ±s); the labelled images are cropped to the
       same size at random positions (so both batches go through a network in one forward, as in the paper's
       patch-based training);
    2. each subnet predicts the fixed and the shifted crops without gradient: its fixed pseudo-label (hard label on
       x_f) and its dynamic one (COM: the mean of the shifted predictions on the pixels all four cover, the fixed
       label elsewhere; :func:`~dale_monai.fixed_dynamic.dynamic_pseudo_label`);
    3. A learns from B on the original crops: L_A = α·L_sup(A) + w(t)·(λ_f·ℓ(A(x_f), ŷ_B^fix) + λ_d·ℓ(A(x_f),
       ŷ_B^dyn)); B learns from A on a CutMix of the crops: L_B = α·L_sup(B) + w(t)·(λ_f·ℓ(B(mix(x_f)),
       mix(ŷ_A^fix)) + λ_d·ℓ(B(mix(x_f)), mix(ŷ_A^dyn))), mix taking a box from the previous image of the batch
       (:func:`~dale_monai.fixed_dynamic.cutmix`); ℓ is the loss function's per-pixel map (cross-entropy for
       :class:`~dale_monai.losses.DALELoss`), L_sup the full loss on the labelled crops;
    4. one backward of L_A + L_B, one step of each subnet.

    The pseudo-label passes run in train mode with batch statistics and write nothing into the normalisation
    buffers (:func:`dale_monai.meta.virtual_norm_mode`), as the EMA teacher of the mean teacher does.

    Defaults, all **ours** (the paper reports an α sweep, Fig. 5, but not its values): ``alpha`` 1,
    ``fixed_weight`` = ``dynamic_weight`` = 1, ``unsup_weight`` 1 with the sigmoid ramp over the whole run (as the
    other paradigms), ``crop_fraction`` 0.75, ``size_multiple`` 32, ``shift_fraction`` 0.125.

    Cost per iteration: two graded forwards and backwards of B_l + B_u crops, two gradient-free forwards of 5·B_u
    crops; memory of two networks. ``engine.state.output`` adds ``loss_fixed``, ``loss_dynamic`` and
    ``dynamic_changed`` (:class:`FixedDynamicKeys`); ``image``, ``label`` and ``pred`` are the labelled crops.

    Args:
        as :class:`~dale_monai.engines.SemiSupervisedTrainer`, with two networks and optimizers, and:
        alpha: weight of the supervised loss of both subnets (> 0).
        fixed_weight: λ_f, weight of the fixed pseudo-label loss (>= 0).
        dynamic_weight: λ_d, weight of the dynamic pseudo-label loss (>= 0).
        crop_fraction, size_multiple, shift_fraction: the crops (:func:`~dale_monai.fixed_dynamic.crop_geometry`).

    Raises:
        ValueError: an option out of range, naming it, and the errors of
            :class:`~dale_monai.engines.SemiSupervisedTrainer`; at the first iteration, an input too small for the
            crops.
    """

    num_networks = 2
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
        alpha: float = 1.0,
        fixed_weight: float = 1.0,
        dynamic_weight: float = 1.0,
        crop_fraction: float = 0.75,
        size_multiple: int = 32,
        shift_fraction: float = 0.125,
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
        for name, value, low in (("alpha", alpha, None), ("fixed_weight", fixed_weight, 0),
                                 ("dynamic_weight", dynamic_weight, 0)):
            ok = not isinstance(value, bool) and isinstance(value, (int, float)) and value < float("inf") and (
                value > 0 if low is None else value >= 0)
            if not ok:
                raise ValueError(f"{owner}: {name} must be a finite number {'> 0' if low is None else '>= 0'}, "
                                 f"got {value!r}")
        try:  # the options alone; the input size is checked at the first iteration
            crop_geometry([10**6, 10**6], crop_fraction, size_multiple, shift_fraction)
        except ValueError as e:
            raise ValueError(f"{owner}: {e}") from None
        self.alpha, self.fixed_weight, self.dynamic_weight = float(alpha), float(fixed_weight), float(dynamic_weight)
        self.crop_fraction, self.size_multiple, self.shift_fraction = crop_fraction, size_multiple, shift_fraction
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

    def _pseudo_probabilities(self, engine: FixedDynamicTrainer, network: nn.Module, crops: Tensor) -> Tensor:
        net = unwrap_model(network)
        with torch.no_grad(), virtual_norm_mode(net):
            if engine.amp and engine.scaler is not None:
                with torch.autocast("cuda", **engine.amp_kwargs):
                    return probabilities(logits_of(engine.inferer(crops, net)))
            return probabilities(logits_of(engine.inferer(crops, net)))

    def pseudo_labels(self, engine: FixedDynamicTrainer, network: nn.Module, fixed: Tensor, shifted: list[Tensor],
                      offsets: list[tuple[int, ...]]) -> tuple[Tensor, Tensor]:
        """A subnet's fixed and dynamic hard pseudo-labels of the fixed crops (one gradient-free forward)."""
        n = fixed.shape[0]
        probs = self._pseudo_probabilities(engine, network, torch.cat([fixed, *shifted]))
        fixed_label, dynamic_label, _ = dynamic_pseudo_label(
            probs[:n], [probs[(k + 1) * n:(k + 2) * n] for k in range(len(shifted))], offsets)
        return fixed_label, dynamic_label

    def _unsup(self, pred: Tensor, fixed: Tensor, dynamic: Tensor) -> tuple[Tensor, Tensor]:
        return (pixel_loss_map(self.loss_function, pred, fixed).mean(),
                pixel_loss_map(self.loss_function, pred, dynamic).mean())

    def semi_supervised_losses(self, engine: FixedDynamicTrainer, inputs: Tensor, targets: Tensor,
                               unlabeled: Tensor) -> list[Tensor]:
        out = engine.state.output
        spatial = tuple(unlabeled.shape[2:])
        try:
            crop, shift = crop_geometry(spatial, self.crop_fraction, self.size_multiple, self.shift_fraction)
        except ValueError as e:
            raise ValueError(f"{type(self).__name__}: {e}") from None
        offsets = shift_offsets(shift)
        starts = random_crop_starts(unlabeled.shape[0], spatial, crop, shift)
        x_fixed = crop_at(unlabeled, starts, crop)
        shifted = [crop_at(unlabeled, starts + torch.tensor(o), crop) for o in offsets]
        label_starts = random_crop_starts(inputs.shape[0], tuple(inputs.shape[2:]), crop)
        x_l, y_l = crop_at(inputs, label_starts, crop), crop_at(targets, label_starts, crop)
        out[Keys.IMAGE], out[Keys.LABEL] = x_l, y_l

        net_a, net_b = self.networks
        fix_a, dyn_a = self.pseudo_labels(engine, net_a, x_fixed, shifted, offsets)
        fix_b, dyn_b = self.pseudo_labels(engine, net_b, x_fixed, shifted, offsets)
        masks = cutmix_masks(x_fixed.shape[0], crop, device=x_fixed.device)
        x_mix = cutmix(x_fixed, masks)

        n = x_l.shape[0]
        pred_a_l, pred_a_u = self.split(self.forward(engine, net_a, torch.cat([x_l, x_fixed])), n)
        pred_b_l, pred_b_u = self.split(self.forward(engine, net_b, torch.cat([x_l, x_mix])), n)
        out[Keys.PRED] = pred_a_l.detach()
        sup = [self.supervised_loss(pred_a_l, y_l), self.supervised_loss(pred_b_l, y_l)]
        a_fix, a_dyn = self._unsup(pred_a_u, fix_b, dyn_b)  # A learns from B on the original crops
        b_fix, b_dyn = self._unsup(pred_b_u, cutmix(fix_a, masks), cutmix(dyn_a, masks))  # B from A, mixed
        for name, value in (("fixed", a_fix), ("dynamic", a_dyn), ("fixed", b_fix), ("dynamic", b_dyn)):
            self._check_finite(engine, value.detach(), f"the {name} pseudo-label loss")
        unsup = [self.fixed_weight * a_fix + self.dynamic_weight * a_dyn,
                 self.fixed_weight * b_fix + self.dynamic_weight * b_dyn]
        out[SemiSupervisedKeys.LOSS_SUP] = torch.stack([s.detach() for s in sup]).mean()
        out[SemiSupervisedKeys.LOSS_UNSUP] = torch.stack([u.detach() for u in unsup]).mean()
        out[FixedDynamicKeys.LOSS_FIXED] = ((a_fix + b_fix) / 2).detach()
        out[FixedDynamicKeys.LOSS_DYNAMIC] = ((a_dyn + b_dyn) / 2).detach()
        out[FixedDynamicKeys.DYNAMIC_CHANGED] = float(torch.cat([(dyn_a != fix_a), (dyn_b != fix_b)]).float().mean())
        w = out[SemiSupervisedKeys.UNSUP_WEIGHT]
        return [self.alpha * sup[i] + w * unsup[i] for i in range(2)]
