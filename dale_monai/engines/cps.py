"""CrossPseudoSupervisionTrainer: two networks teach each other with hard pseudo-labels (Chen et al., CVPR 2021)."""

from __future__ import annotations

import torch
from monai.utils.enums import CommonKeys as Keys
from torch import Tensor

from ..semisup import hard_labels
from .multi_network import pixel_loss_map
from .semisup import SemiSupervisedKeys, SemiSupervisedTrainer

__all__ = ["CrossPseudoSupervisionTrainer"]


class CrossPseudoSupervisionTrainer(SemiSupervisedTrainer):
    """Cross pseudo supervision (Chen et al., CVPR 2021) for segmentation, as in SSL4MIS, as a MONAI trainer.

    Both networks forward cat([X_l, X_u]). Network i's loss is the supervised loss on X_l plus
    w(t)·mean(ℓ(f_i(X_u), ŷ_j)), ŷ_j the other network's hard pseudo-label on the unlabelled batch
    (:func:`dale_monai.semisup.hard_labels`, detached) and ℓ the loss function's per-pixel map (cross-entropy for
    :class:`~dale_monai.losses.DALELoss`). One backward of the sum, one step per network.

    Defaults are SSL4MIS's (``code/train_cross_pseudo_supervision_2D.py``): weight 0.1 ramped up with the sigmoid
    over the whole run (``consistency`` 0.1, ``consistency_rampup`` 200 × 150 of 30,000 iterations), the
    pseudo-supervision on the unlabelled part of the batch only, cross-entropy. The CPS paper weights it by λ = 1.5
    (PASCAL VOC) or 6 (Cityscapes) without a ramp and applies it to the labelled images as well;
    ``--cps#unsup_weight 1.5 --cps#rampup_length 0`` gives its weighting. SSL4MIS initialises the two networks
    differently (Kaiming and Xavier); here they are two independently initialised copies of ``network_def``.

    Cost: two networks' forward and backward of B_l + B_u images per iteration (about twice supervised training on
    the concatenated batch), two networks' memory. ``networks[0]`` is validated and saved.

    Args:
        as :class:`~dale_monai.engines.SemiSupervisedTrainer`, with two networks and optimizers; ``unsup_weight``
            default 0.1.
    """

    num_networks = 2
    default_unsup_weight = 0.1

    def semi_supervised_losses(self, engine: CrossPseudoSupervisionTrainer, inputs: Tensor, targets: Tensor,
                               unlabeled: Tensor) -> list[Tensor]:
        out = engine.state.output
        n = inputs.shape[0]
        both = torch.cat([inputs, unlabeled])
        preds = [self.split(self.forward(engine, net, both), n) for net in self.networks]
        out[Keys.PRED] = preds[0][0].detach()
        pseudo = [hard_labels(pred_u) for _, pred_u in preds]
        sup = [self.supervised_loss(pred_l, targets) for pred_l, _ in preds]
        unsup = [pixel_loss_map(self.loss_function, preds[i][1], pseudo[1 - i]).mean() for i in range(2)]
        for i, u in enumerate(unsup):
            self._check_finite(engine, u.detach(), f"the pseudo-supervision loss of network {i}")
        out[SemiSupervisedKeys.LOSS_SUP] = torch.stack([s.detach() for s in sup]).mean()
        out[SemiSupervisedKeys.LOSS_UNSUP] = torch.stack([u.detach() for u in unsup]).mean()
        w = out[SemiSupervisedKeys.UNSUP_WEIGHT]
        return [sup[i] + w * unsup[i] for i in range(2)]
