"""MONAI networks adapted so that every bundle's ``network_def`` returns one logits tensor.

MONAI's :class:`~monai.networks.nets.BasicUNetPlusPlus` returns a list (one tensor per deep-supervision head),
which inference, ``ckpt_export`` and MONAI Label do not expect. :class:`UNetPlusPlus` is a subclass, so its
``state_dict`` keys are exactly those of ``BasicUNetPlusPlus``: weights move between the two unchanged.
"""

from __future__ import annotations

from typing import Any

import torch
from monai.networks.nets import BasicUNetPlusPlus

__all__ = ["UNetPlusPlus"]


class UNetPlusPlus(BasicUNetPlusPlus):
    """U-Net++ (MONAI's ``BasicUNetPlusPlus`` without deep supervision) whose forward returns one tensor.

    The heads ``final_conv_0_1`` .. ``final_conv_0_3`` of the parent are kept (unused, as in the parent without
    deep supervision) so that checkpoints load into either class; under ``DistributedDataParallel`` this needs
    ``find_unused_parameters=True``. TorchScript cannot compile the ``super()`` call: export with
    ``ckpt_export ... --use_trace True --input_shape [...]``.

    Args:
        args, kwargs: as :class:`monai.networks.nets.BasicUNetPlusPlus`; ``deep_supervision`` must stay False
            (train with the parent class to use the auxiliary heads).

    Raises:
        ValueError: when ``deep_supervision=True``.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        if kwargs.get("deep_supervision", False):
            raise ValueError(
                "UNetPlusPlus returns only the final output; deep_supervision=True would silently drop the auxiliary "
                "heads. Use monai.networks.nets.BasicUNetPlusPlus with a loss over its list output instead."
            )
        super().__init__(*args, **kwargs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        """Logits of the full-resolution head ``final_conv_0_4``, ``(B, out_channels, *spatial)``."""
        return super().forward(x)[-1]
