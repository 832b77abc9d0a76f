"""Where the pre-head features of MONAI segmentation networks are: the input of their segmentation head.

DALE's representation calibration (paper Sec. 3.3) compares "feature representations before
entering the model's segmentation head". :func:`default_feature_layer` names that head for MONAI's
networks; a forward (pre-)hook on it captures its input. Other networks: give the head's dotted
module path to :func:`resolve_layer`.
"""

from __future__ import annotations

import difflib
import sys

from monai.networks.nets import (
    UNETR,
    AttentionUnet,
    BasicUNet,
    BasicUNetPlusPlus,
    DynUNet,
    SegResNet,
    SwinUNETR,
    UNet,
)
from torch import nn

__all__ = ["unwrap_model", "default_feature_layer", "resolve_layer", "is_submodule"]


def unwrap_model(net: nn.Module) -> nn.Module:
    """The network inside ``DistributedDataParallel``, ``DataParallel`` and ``torch.compile`` wrappers.

    Args:
        net: a network, possibly wrapped (several times).
    """
    # torch.compile's wrapper class lives in torch._dynamo, slow to import; if that module is not
    # loaded, no compiled wrapper can exist.
    eval_frame = sys.modules.get("torch._dynamo.eval_frame")
    compiled = getattr(eval_frame, "OptimizedModule", ())
    while True:
        if isinstance(net, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            net = net.module
        elif compiled and isinstance(net, compiled):
            net = net._orig_mod
        else:
            return net


def _unet_head(net: UNet) -> nn.Module:
    # MONAI's UNet is Sequential(down, SkipConnection(...), up) and its top ``up`` layer maps the
    # concatenated skip features straight to logits: a (transposed, stride ``strides[0]``) conv, and
    # with residual units a ResidualUnit at ``out_channels`` width after it. There is no full
    # resolution feature map wider than ``out_channels``, so the head is the whole top up layer
    # ``model.2`` and the features (2·channels[0] or channels[0] + channels[1] wide) are at
    # 1/strides[0] of the input resolution.
    return net.model[2]


def _segresnet_head(net: SegResNet) -> nn.Module:
    if not net.use_conv_final:
        raise ValueError(
            "SegResNet(use_conv_final=False) has no segmentation head to hook; pass feature_layer= "
            "naming the module whose input is the pre-head feature map."
        )
    return net.conv_final


# Most specific classes first: isinstance also matches user subclasses (e.g. SegResNetVAE).
_HEADS: tuple[tuple[type, str, object], ...] = (
    (BasicUNetPlusPlus, "final_conv_0_4", lambda n: n.final_conv_0_4),
    (BasicUNet, "final_conv", lambda n: n.final_conv),
    (AttentionUnet, "model.2", lambda n: n.model[2]),
    (UNet, "model.2", _unet_head),
    (SwinUNETR, "out", lambda n: n.out),
    (UNETR, "out", lambda n: n.out),
    (SegResNet, "conv_final", _segresnet_head),
    (DynUNet, "output_block", lambda n: n.output_block),
)


def default_feature_layer(net: nn.Module) -> nn.Module:
    """The segmentation head of a MONAI network; its INPUT is the pre-head feature map.

    ========================  =================  =====================================================
    network                   head               its input
    ========================  =================  =====================================================
    ``UNet``                  ``model.2``        concatenated top skip features, 1/strides[0] res.
    ``AttentionUnet``         ``model.2``        full-resolution decoder features (channels[0])
    ``BasicUNet``             ``final_conv``     full-resolution decoder features (features[5])
    ``BasicUNetPlusPlus``     ``final_conv_0_4`` x_0_4, the last nested decoder node (full resolution;
                                                 with deep supervision, the head of the final output)
    ``SwinUNETR``, ``UNETR``  ``out``            full-resolution decoder features (feature_size)
    ``SegResNet``             ``conv_final``     full-resolution decoder features (init_filters),
                                                 before the head's norm and activation
    ``DynUNet``               ``output_block``   full-resolution decoder features (filters[0])
    ========================  =================  =====================================================

    Args:
        net: a MONAI network, possibly wrapped by DDP, DataParallel or ``torch.compile``.

    Raises:
        ValueError: for other networks; pass ``feature_layer=`` (a dotted module path) instead.
    """
    inner = unwrap_model(net)
    for cls, _, head in _HEADS:
        if isinstance(inner, cls):
            return head(inner)  # type: ignore[operator]
    known = ", ".join(cls.__name__ for cls, _, _ in _HEADS)
    last = [name for name, _ in inner.named_modules() if name][-5:]
    raise ValueError(
        f"no default feature layer for {type(inner).__name__} (known: {known}); pass feature_layer= "
        f"with the dotted path of the module whose input is the pre-head feature map, e.g. one of its "
        f"last modules {last}."
    )


def resolve_layer(net: nn.Module, name: str) -> nn.Module:
    """The submodule of the (unwrapped) network at a dotted path such as ``"model.2"``.

    Paths are relative to the unwrapped network: a ``module.`` or ``_orig_mod.`` prefix copied from
    a wrapped model's ``state_dict`` is accepted and dropped.

    Args:
        net: a network, possibly wrapped.
        name: dotted module path, as in ``net.named_modules()``.
    """
    inner = unwrap_model(net)
    if not isinstance(name, str) or not name:
        raise ValueError(f"feature_layer must be a non-empty dotted module path, got {name!r}.")
    candidates = [name]
    for prefix in ("module.", "_orig_mod."):
        if name.startswith(prefix):
            candidates.append(name[len(prefix) :])
    for candidate in candidates:
        try:
            return inner.get_submodule(candidate)
        except AttributeError:
            continue
    names = [n for n, _ in inner.named_modules() if n]
    close = difflib.get_close_matches(name, names, n=5)
    raise ValueError(
        f"feature_layer {name!r} is not a submodule of {type(inner).__name__}"
        + (f"; close matches: {close}" if close else f"; its last modules are {names[-5:]}")
        + "."
    )


def is_submodule(net: nn.Module, layer: nn.Module) -> bool:
    """Whether ``layer`` is one of the modules of the (unwrapped) network ``net``."""
    return any(m is layer for m in unwrap_model(net).modules())

