"""Semi-supervised segmentation as plain torch functions: ramp-up, pseudo-labels, the EMA teacher, consistency.

The standard baselines that the semi-supervised paradigms of this package build on:

- **Mean teacher** (Tarvainen & Valpola, "Mean teachers are better role models", NeurIPS 2017): a teacher whose
  weights are the exponential moving average of the student's (:func:`ema_update_`) gives targets on unlabelled
  images; the student minimises the squared distance between its probabilities and the teacher's
  (:func:`consistency_mse`) on top of the supervised loss, with a weight ramped up over training
  (:func:`sigmoid_rampup`). The teacher sees the image with a little Gaussian noise (:func:`input_noise`).
- **Cross pseudo supervision** (Chen et al., "Semi-supervised semantic segmentation with cross pseudo
  supervision", CVPR 2021): two networks, each trained with cross-entropy on the other's hard pseudo-labels
  (:func:`hard_labels`).

The reference implementation for medical segmentation is SSL4MIS (``HiLab-git/SSL4MIS``:
``code/train_mean_teacher_2D.py``, ``code/train_cross_pseudo_supervision_2D.py``, ``code/utils/ramps.py``); its
defaults are the ones the trainers quote (EMA decay 0.99, consistency weight 0.1 ramped up with
exp(−5(1 − t)²) over the 30,000 iterations of the run, teacher noise clamp(0.1·N(0, 1), −0.2, 0.2)).

Binary networks have one logit channel (sigmoid), multi-class networks ``C > 1`` (softmax), as everywhere in
this package; hard labels come out in the format :class:`dale_monai.losses.DALELoss` takes as a target (a
``{0, 1}`` map for one channel, class indices ``(B, 1, *spatial)`` otherwise).
"""

from __future__ import annotations

import copy
import math

import torch
from torch import Tensor, nn

from .feature_layers import unwrap_model

__all__ = ["sigmoid_rampup", "probabilities", "hard_labels", "ema_teacher", "ema_decay", "ema_update_",
           "consistency_mse", "input_noise"]


def sigmoid_rampup(current: float, length: float) -> float:
    """The ramp-up exp(−5·(1 − t)²), t = clip(current / length, 0, 1) (Laine & Aila, "Temporal ensembling for
    semi-supervised learning", ICLR 2017; SSL4MIS ``utils/ramps.py::sigmoid_rampup``).

    Args:
        current: the position, e.g. the number of iterations completed.
        length: the ramp's length in the same unit; 0 gives 1 at once.

    Returns:
        a factor in (0, 1]: about 0.0067 at the start, 1 from ``length`` on.

    Raises:
        ValueError: a negative or non-finite ``length``.
    """
    if not (isinstance(length, (int, float)) and math.isfinite(length) and length >= 0):
        raise ValueError(f"sigmoid_rampup: length must be a finite number >= 0, got {length!r}")
    if length == 0:
        return 1.0
    t = min(max(float(current) / float(length), 0.0), 1.0)
    return math.exp(-5.0 * (1.0 - t) ** 2)


def probabilities(logits: Tensor) -> Tensor:
    """Class probabilities of logits ``(B, C, *spatial)``: sigmoid for one channel (the foreground probability),
    softmax over the channels otherwise. Half precision is computed in float32."""
    x = logits if logits.dtype in (torch.float32, torch.float64) else logits.float()
    return torch.sigmoid(x) if x.shape[1] == 1 else torch.softmax(x, dim=1)


def hard_labels(logits_or_probs: Tensor, from_probabilities: bool = False) -> Tensor:
    """Hard pseudo-labels ``(B, 1, *spatial)`` as a loss target: ``{0, 1}`` for one channel (foreground where the
    probability exceeds 0.5), the arg-max class index for ``C > 1``; float, detached.

    Args:
        logits_or_probs: ``(B, C, *spatial)`` logits, or probabilities with ``from_probabilities=True``.
        from_probabilities: the input holds probabilities (threshold 0.5 instead of logit 0).
    """
    x = logits_or_probs.detach()
    if x.shape[1] == 1:
        return (x > (0.5 if from_probabilities else 0.0)).to(torch.float32)
    return x.argmax(dim=1, keepdim=True).to(torch.float32)


def ema_teacher(network: nn.Module) -> nn.Module:
    """A teacher for :func:`ema_update_`: a copy of ``network`` (unwrapped from DDP or ``torch.compile``) on the
    same device, its parameters frozen (``requires_grad=False``). For bundle configs:
    ``{"_target_": "dale_monai.semisup.ema_teacher", "network": "@network"}``."""
    teacher = copy.deepcopy(unwrap_model(network))
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher


def ema_decay(decay: float, step: int) -> float:
    """The decay α used at ``step``: min(1 − 1/(step + 1), decay), the "true average until the exponential
    average is more correct" of Tarvainen & Valpola's code (``update_ema_variables``; SSL4MIS the same)."""
    return min(1.0 - 1.0 / (step + 1), decay)


@torch.no_grad()
def ema_update_(teacher: nn.Module, student: nn.Module, decay: float, step: int) -> float:
    """θ_teacher ← α·θ_teacher + (1 − α)·θ_student, in place, with α = :func:`ema_decay` (decay, step).

    Parameters are averaged as in the mean teacher's code; floating-point buffers (BatchNorm running statistics)
    are averaged the same way, so that a teacher evaluated in ``eval()`` mode has statistics matching its weights
    (the mean teacher's code averages parameters only; averaging buffers too is this project's choice, as
    ``timm``'s ``ModelEmaV2`` does); integer buffers (``num_batches_tracked``) are copied.

    Args:
        teacher: the teacher, same architecture as ``student``.
        student: the trained network (unwrapped from DDP here, so every rank averages the same weights).
        decay: the EMA decay in [0, 1] (SSL4MIS and ARCO: 0.99).
        step: the number of student updates before this one (0 at the first: the teacher becomes the student).

    Returns:
        the α used.

    Raises:
        ValueError: ``decay`` outside [0, 1], or parameter/buffer names that differ between the two networks.
    """
    if not (isinstance(decay, (int, float)) and 0 <= decay <= 1):
        raise ValueError(f"ema_update_: decay must lie in [0, 1], got {decay!r}")
    alpha = ema_decay(decay, step)
    t_params, s_params = dict(teacher.named_parameters()), dict(unwrap_model(student).named_parameters())
    t_buffers, s_buffers = dict(teacher.named_buffers()), dict(unwrap_model(student).named_buffers())
    if t_params.keys() != s_params.keys() or t_buffers.keys() != s_buffers.keys():
        raise ValueError("ema_update_: the teacher and the student must be the same architecture (their parameter "
                         "and buffer names differ)")
    for name, t in t_params.items():
        t.mul_(alpha).add_(s_params[name].detach(), alpha=1.0 - alpha)
    for name, t in t_buffers.items():
        s = s_buffers[name]
        if t.is_floating_point():
            t.mul_(alpha).add_(s, alpha=1.0 - alpha)
        else:
            t.copy_(s)
    return alpha


def consistency_mse(student_logits: Tensor, teacher_logits: Tensor) -> Tensor:
    """Mean squared difference of the two networks' probabilities (:func:`probabilities`), over every element:
    the mean teacher's consistency loss (SSL4MIS: ``torch.mean((outputs_soft − ema_output_soft) ** 2)``). The
    teacher's side is detached.

    Raises:
        ValueError: the two shapes differ.
    """
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(f"consistency_mse: student {tuple(student_logits.shape)} and teacher "
                         f"{tuple(teacher_logits.shape)} logits must have one shape")
    return torch.mean((probabilities(student_logits) - probabilities(teacher_logits).detach()) ** 2)


def input_noise(x: Tensor, std: float = 0.1, clip: float = 0.2) -> Tensor:
    """``x`` plus clamp(std·N(0, 1), −clip, clip), drawn from the global torch generator: the teacher's input
    perturbation of the mean teacher (SSL4MIS: std 0.1, clip 0.2, on intensities scaled to [0, 1]).

    Raises:
        ValueError: a negative ``std`` or ``clip``.
    """
    if std < 0 or clip < 0:
        raise ValueError(f"input_noise: std and clip must be >= 0, got std={std!r}, clip={clip!r}")
    if std == 0:
        return x
    return x + torch.clamp(torch.randn_like(x) * std, -clip, clip)
