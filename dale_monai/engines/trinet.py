"""TriNetTrainer: three networks, each trained on the pixels both others select (Zhang et al., MICCAI 2020)."""

from __future__ import annotations

from torch import Tensor

from ..coteaching import trinet_weights
from .coteaching import CoTeachingTrainer

__all__ = ["TriNetTrainer"]


class TriNetTrainer(CoTeachingTrainer):
    """TriNet (Zhang et al., "Robust medical image segmentation from non-expert annotations with tri-network",
    MICCAI 2020) as a MONAI trainer.

    Three networks forward the batch; each selects the ⌊r(t)·N⌋ pixels with its smallest per-pixel loss, and
    network i is trained on the pixels that both other networks selected
    (:func:`dale_monai.coteaching.trinet_weights`), with the selection as loss weight normalised to mean 1 (the
    mean loss over the agreed pixels, as in PyMIC's ``nll_trinet.py``). An empty agreement gives that network
    no update for the batch instead of PyMIC's 0/0. Everything else (arguments, ramp, outputs, checkpoints,
    network 0 as the model) is as in :class:`~dale_monai.engines.CoTeachingTrainer`, with other defaults:

    - ``select_ratio`` 0.9 (``trinet_select_ratio`` of ``PyMIC_examples/seg_noisy_label/JSRT/config/unet_trinet.cfg``);
    - ``ramp`` ``"linear"`` (PyMIC's TriNet calls ``get_rampup_ratio`` with its default, linear, mode), from 10 % to
      80 % of the run's iterations (1,000 and 8,000 of 10,000 in the same example).

    PyMIC thresholds each loss at ``torch.quantile``; this selects exactly ⌊r·N⌋ pixels with ``kthvalue``,
    which also works above 2^24 pixels.

    Cost: three forward and backward passes per batch (3.1× standard training per iteration on the default
    bundle's network, ``benchmarks/results/paradigms_speed.md``), three networks' memory.
    """

    num_networks = 3
    default_select_ratio = 0.9
    default_ramp = "linear"

    def selection_weights(self, loss_maps: list[Tensor], ratio: float) -> list[Tensor]:
        return trinet_weights(loss_maps, ratio, self.per_sample)
