"""CoTeachingTrainer: two networks, each trained on the pixels the other finds easiest (Han et al., NeurIPS 2018)."""

from __future__ import annotations

from typing import Any, Callable, Iterable, Sequence

import torch
from ignite.engine import Engine, EventEnum
from monai.engines.utils import default_prepare_batch
from torch import Tensor, nn
from torch.optim import Optimizer
from torch.utils.data import DataLoader

from ..coteaching import check_ramp, check_select_ratio, coteaching_weights, keep_ratio
from .multi_network import MultiNetworkKeys, MultiNetworkTrainer, pixel_loss_map, weighted_loss

__all__ = ["CoTeachingTrainer", "DEFAULT_RAMP_FRACTIONS"]

#: ramp start and end as shares of the run's iterations when not given: PyMIC's JSRT examples ramp from
#: iteration 1,000 to 8,000 of 10,000 (``PyMIC_examples/seg_noisy_label/JSRT/config/unet_cot.cfg``)
DEFAULT_RAMP_FRACTIONS = (0.1, 0.8)


class CoTeachingTrainer(MultiNetworkTrainer):
    """Co-teaching (Han et al., NeurIPS 2018) for segmentation, per pixel, as a MONAI trainer.

    Both networks forward the batch; each ranks the batch's pixels by its own per-pixel loss (the loss
    function's ``pixel_map``, cross-entropy for :class:`~dale_monai.losses.DALELoss`) and selects the
    ⌊r(t)·N⌋ smallest; network 0 is then trained on network 1's selection and network 1 on network 0's
    (:func:`dale_monai.coteaching.coteaching_weights`). The loss of a network is the loss function with the
    selection as per-pixel weight, normalised to mean 1, so its cross-entropy is the mean over the selected
    pixels as in PyMIC (a Dice term counts the selected pixels only). The keep ratio
    r(t) = 1 − (1 − s)·exp(−5·(1 − x)²) falls from about 1 to ``select_ratio`` s while x ramps from 0 to 1
    between ``ramp_start`` and ``ramp_end`` (:func:`dale_monai.coteaching.keep_ratio`), t being the number of
    iterations completed before the current one.

    Cost: two forward and backward passes per batch (2.1× standard training per iteration on the default
    bundle's network, ``benchmarks/results/paradigms_speed.md``), two networks' memory.
    Network 0 is the model that is validated and saved (see :class:`MultiNetworkTrainer`).

    ``engine.state.output`` adds ``keep_ratio`` (r(t)) and ``selected_i`` (share of pixels network i trained on)
    to :class:`MultiNetworkTrainer`'s keys.

    Example (the construction the benchmarks and bundles use)::

        nets = [make_net(), make_net()]  # two independently initialised instances
        opts = [torch.optim.Adam(n.parameters(), lr=1e-3) for n in nets]
        trainer = CoTeachingTrainer(device, max_epochs, loader, nets, opts, DALELoss(), select_ratio=0.85)

    Args:
        device, max_epochs, train_data_loader, networks, optimizers, loss_function, clip_grad_norm, and the
            :class:`monai.engines.SupervisedTrainer` arguments: as in :class:`MultiNetworkTrainer`.
        select_ratio: s ∈ [0, 1], the share of pixels each network selects after the ramp. Default 0.85, the
            Co-teaching example of PyMIC (``PyMIC_examples/seg_noisy_label/JSRT/config/unet_cot.cfg``); Han et
            al. set 1 − s to the noise rate when it is known.
        ramp_start: iteration at which r(t) starts falling; ``None``: 10 % of the run's iterations.
        ramp_end: iteration at which r(t) reaches s; ``None``: 80 % of the run's iterations (both defaults from
            the same PyMIC example, 1,000 and 8,000 of 10,000). The defaults are computed when the run starts,
            from ``max_epochs × epoch_length``.
        ramp: ``"sigmoid"`` (the formula above; PyMIC's Co-teaching) or ``"linear"`` (ramp(x) = x).
        per_sample: select ⌊r·N⌋ pixels in each image instead of across the batch (default: across the batch,
            as PyMIC and the paper's mini-batch selection).

    Raises:
        ValueError: s ∉ [0, 1], a negative ramp iteration, ``ramp_end < ramp_start``, an unknown ``ramp`` (each
            naming the option), and the errors of :class:`MultiNetworkTrainer`.
    """

    num_networks = 2
    default_select_ratio = 0.85
    default_ramp = "sigmoid"

    def __init__(
        self,
        device: str | torch.device,
        max_epochs: int,
        train_data_loader: Iterable | DataLoader,
        networks: Sequence[nn.Module],
        optimizers: Sequence[Optimizer],
        loss_function: Callable,
        select_ratio: float | None = None,
        ramp_start: int | None = None,
        ramp_end: int | None = None,
        ramp: str | None = None,
        per_sample: bool = False,
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
        self.select_ratio = check_select_ratio(
            self.default_select_ratio if select_ratio is None else select_ratio, owner)
        self.ramp = self.default_ramp if ramp is None else ramp
        check_ramp(ramp_start, ramp_end, self.ramp, owner)
        if not isinstance(per_sample, bool):
            raise ValueError(f"{owner}: per_sample must be True or False, got {per_sample!r}")
        self.ramp_start, self.ramp_end = ramp_start, ramp_end
        self.per_sample = per_sample
        super().__init__(
            device=device, max_epochs=max_epochs, train_data_loader=train_data_loader, networks=networks,
            optimizers=optimizers, loss_function=loss_function, clip_grad_norm=clip_grad_norm,
            epoch_length=epoch_length, non_blocking=non_blocking, prepare_batch=prepare_batch,
            iteration_update=iteration_update, inferer=inferer, postprocessing=postprocessing,
            key_train_metric=key_train_metric, additional_metrics=additional_metrics, metric_cmp_fn=metric_cmp_fn,
            train_handlers=train_handlers, amp=amp, event_names=event_names, event_to_attr=event_to_attr,
            decollate=decollate, optim_set_to_none=optim_set_to_none, to_kwargs=to_kwargs, amp_kwargs=amp_kwargs,
        )

    def ramp_window(self, engine: CoTeachingTrainer) -> tuple[int, int]:
        """(ramp_start, ramp_end) in iterations: the given ones, or :data:`DEFAULT_RAMP_FRACTIONS` of the run's
        ``max_epochs × epoch_length`` (a missing end never precedes a given start, nor a missing start a given end)."""
        total = int(engine.state.max_epochs or 0) * int(engine.state.epoch_length or 0)
        if total == 0 and (self.ramp_start is None or self.ramp_end is None):
            raise ValueError(f"{type(self).__name__}: ramp_start and ramp_end default to shares of the run's "
                             "iterations, which are unknown (a data loader without a length and no epoch_length); "
                             "give both in iterations")
        start = self.ramp_start if self.ramp_start is not None else round(DEFAULT_RAMP_FRACTIONS[0] * total)
        end = self.ramp_end if self.ramp_end is not None else round(DEFAULT_RAMP_FRACTIONS[1] * total)
        if self.ramp_start is None:
            start = min(start, end)
        if self.ramp_end is None:
            end = max(end, start)
        return start, end

    def current_keep_ratio(self, engine: CoTeachingTrainer) -> float:
        """r(t) of the current iteration, t = iterations completed before it."""
        start, end = self.ramp_window(engine)
        return keep_ratio(engine.state.iteration - 1, self.select_ratio, start, end, self.ramp)

    def selection_weights(self, loss_maps: list[Tensor], ratio: float) -> list[Tensor]:
        """The paradigm's exchange rule: per-pixel weights of each network from all networks' loss maps."""
        return coteaching_weights(loss_maps, ratio, self.per_sample)

    def network_losses(self, engine: CoTeachingTrainer, preds: list[Tensor], targets: Tensor) -> list[Tensor]:
        ratio = self.current_keep_ratio(engine)
        maps = [pixel_loss_map(self.loss_function, pred, targets).detach() for pred in preds]
        for i, m in enumerate(maps):
            self._check_finite(engine, m, f"the loss map of network {i}")
        weights = self.selection_weights(maps, ratio)
        out = engine.state.output
        out[MultiNetworkKeys.KEEP_RATIO] = ratio
        for i, w in enumerate(weights):
            out[MultiNetworkKeys.selected(i)] = float((w > 0).float().mean())
        return [weighted_loss(self.loss_function, pred, targets, w) for pred, w in zip(preds, weights)]
