"""The ω mechanism works, measured: on synthetic images whose training labels are wrong where the lesion border
is faint, a short DALE run gives ω < 1 far more often on wrongly labelled fuzzy pixels than on correct ones."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.networks.nets import UNet

from data_prep.synthetic import generate_case
from dale_monai.engines import DALEEvents, DALEKeys, DALETrainer
from dale_monai.losses import DALELoss
from dale_monai.meta import OmegaMetaStep
from dale_monai.partition import fuzzy_masks


def _batches(n_batches=6, batch=4, size=64, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n_batches):
        cases = [generate_case(rng, size=size, dims=2, noise_px=5) for _ in range(batch)]
        img = torch.stack([torch.as_tensor(c.image, dtype=torch.float32)[None] / 255.0 for c in cases])
        noisy = torch.stack([torch.as_tensor(c.label_noisy, dtype=torch.float32)[None] for c in cases])
        clean = torch.stack([torch.as_tensor(c.label, dtype=torch.float32)[None] for c in cases])
        masks = [fuzzy_masks(i, y, patch_size=8) for i, y in zip(img, noisy)]
        out.append({"image": img, "label": noisy, "label_clean": clean,
                    "mask_n": torch.stack([m[0] for m in masks]), "mask_f": torch.stack([m[1] for m in masks])})
    return out


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_omega_is_below_one_on_wrong_labels(reduction):
    torch.manual_seed(0)
    data = _batches()
    net = UNet(2, 1, 1, (8, 16, 32), (2, 2), num_res_units=1, norm="batch")
    trainer = DALETrainer("cpu", 4, data, net, torch.optim.Adam(net.parameters(), lr=3e-3), DALELoss(),
                          omega_step=OmegaMetaStep(reduction=reduction))
    wrong_low, right_low = [], []

    def collect(engine):
        if engine.state.epoch < 3:  # let the network first learn what a lesion looks like
            return
        out = engine.state.output
        batch = engine.state.batch
        fuzzy = out[DALEKeys.MASK_F] > 0.5
        wrong = (batch["label"] != batch["label_clean"]) & fuzzy
        right = (batch["label"] == batch["label_clean"]) & fuzzy
        below = out[DALEKeys.OMEGA] < 1
        wrong_low.append((below[wrong].sum().item(), wrong.sum().item()))
        right_low.append((below[right].sum().item(), right.sum().item()))

    trainer.add_event_handler(DALEEvents.OMEGA_COMPLETED, collect)
    trainer.run()
    w = sum(a for a, _ in wrong_low) / max(1, sum(b for _, b in wrong_low))
    r = sum(a for a, _ in right_low) / max(1, sum(b for _, b in right_low))
    assert sum(b for _, b in wrong_low) > 100, "the synthetic noise must put wrong labels in fuzzy regions"
    print(f"reduction={reduction}: ω<1 on {w:.1%} of wrong fuzzy pixels vs {r:.1%} of right ones")
    assert w > 2 * r and w > 0.3, (w, r)
