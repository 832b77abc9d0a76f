"""CLCS (collaborative learning with curriculum selection) as plain torch functions (no Ignite).

Guo, Wang, Zhao, Zhou, "Imbalanced Medical Image Segmentation with Pixel-dependent Noisy Labels" (arXiv
2501.06678, IEEE TMI 2025). Only the paper's summary was available to this project
(``../shared/papers/clcs_summary__002_4077a2a813fca2ac.txt``): it names the parts but gives **no equations and no
constants**, and no official code is public (``../shared/PARADIGMS.md`` §1). What the summary says, and what this
module makes of it:

1. **Curriculum noisy-label sample selection (CNS).** Two branches vote the class probabilities of each pixel
   (p̄, their mean) and "a curriculum dynamic threshold is adopted to select clean-label samples through probability
   voting"; the threshold is "class-aware", has a "convex curvature" and adapts "to model learning progress", so that
   minority classes are not filtered out by one fixed threshold. *This project's choices* (each an option):

   - the threshold of class c is τ_c(t) = τ · M(β_c(t)) with the convex map M(x) = x / (2 − x)
     (:func:`curriculum_map`), FlexMatch's curriculum pseudo-labelling (Zhang et al., NeurIPS 2021) carried over
     from images to pixels; τ = 0.9 is the fixed threshold of 2BDenoise (``train_utils.py``, ``base_threshold``),
     the closest public two-branch denoiser for segmentation;
   - the learning status β_c is measured over the previous epoch (:class:`ClassCurriculum`): by default the share of
     the pixels *labelled* c that the vote predicts as c with confidence ≥ τ (``status="recall"``: independent of
     how frequent a class is, so a rare class that is learned well is not mistaken for an unlearned one), or
     FlexMatch's share of all pixels confidently predicted as c (``status="count"``); then normalised as in
     FlexMatch with its threshold warm-up, β_c = s_c / max(max_k s_k, u), u the share of pixels not yet
     confidently learned (:func:`learning_status`);
   - a pixel's label y is clean when p̄_y ≥ τ_y (``criterion="label"``), or also when the vote's arg-max is y
     (``"label_or_argmax"``, 2BDenoise's default ``case3``); and each class keeps at least ⌈``min_keep`` · n_c⌉ of
     its n_c labelled pixels of the batch (those with the highest p̄_y), so that no class that has labelled
     pixels is ever left without clean ones (:func:`selection_mask`).

2. **Discrepancy loss.** "A two-branch network with discrepancy loss ... so that different feature
   representations of the same instance could be extracted from distinct views". *This project's choice*: the
   mean absolute cosine similarity between the two branches' feature vectors at each position
   (:func:`discrepancy_loss`), on their pre-head features (default) or their class probabilities; minimising it
   makes the views orthogonal rather than opposite.

3. **Noise balance loss (NBL).** "Instead of directly dropping the suspiciously noisy labels, we further adopt a
   robust loss", "a mixed CE and RCE loss weighted by confidence". *This project's choice*
   (:func:`noise_balance_loss_map`): selected pixels get CE; rejected pixels get λ_r·(w·CE + (1 − w)·RCE) with
   w = p̄_y, the vote's probability of the given label (detached), and RCE the reverse cross-entropy of
   :mod:`dale_monai.robust_losses` (A = ln 1e-4, as in 2BDenoise's ``SCELoss``). On a batch where every pixel
   is selected, NBL is exactly the cross-entropy.

Classes: a one-channel (sigmoid) network is a two-class problem, background (1 − p) and foreground p; a network
with C > 1 channels is a softmax over C classes (:func:`class_probabilities`). Labels are class indices.
"""

from __future__ import annotations

import math
from typing import Any, Mapping

import torch
from torch import Tensor

from .coteaching import small_loss_mask

__all__ = [
    "MAPPINGS",
    "STATUS_RULES",
    "CRITERIA",
    "DEFAULT_TAU",
    "DEFAULT_MIN_KEEP",
    "COUNT_ROWS",
    "class_probabilities",
    "class_indices",
    "curriculum_map",
    "class_thresholds",
    "status_counts",
    "learning_status",
    "selection_mask",
    "noise_balance_loss_map",
    "rejected_loss_map",
    "discrepancy_loss",
    "ClassCurriculum",
]

#: curriculum maps M: [0, 1] → [0, 1] (FlexMatch, Zhang et al., NeurIPS 2021): convex x/(2 − x), linear x,
#: concave log2(1 + x)
MAPPINGS = ("convex", "linear", "concave")
#: how a class's learning status is measured (see :func:`learning_status`)
STATUS_RULES = ("recall", "count")
#: which pixels count as clean (see :func:`selection_mask`)
CRITERIA = ("label", "label_or_argmax")
#: τ, the threshold of a fully learned class: 2BDenoise's fixed ``base_threshold`` (this project's choice for CLCS)
DEFAULT_TAU = 0.9
#: least share of each class's labelled pixels kept as clean per batch (this project's choice)
DEFAULT_MIN_KEEP = 0.1
#: rows of :func:`status_counts`: labelled pixels, confidently and correctly predicted ones, confidently predicted
COUNT_ROWS = ("labelled", "confident_correct", "confident_predicted")


# ----------------------------------------------------------------------------------------------- options
def _unit(owner: str, name: str, value: Any, low_open: bool = True) -> float:
    """``value`` as a float in (0, 1] (``low_open``) or [0, 1]."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or not (
            (0 < value if low_open else 0 <= value) and value <= 1):
        raise ValueError(f"{owner}: {name} must lie in {'(0, 1]' if low_open else '[0, 1]'}, got {value!r}")
    return float(value)


def _choice(owner: str, name: str, value: Any, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise ValueError(f"{owner}: {name} must be one of {choices}, got {value!r}")
    return value


# ----------------------------------------------------------------------------------------------- classes
def class_probabilities(logits: Tensor) -> Tensor:
    """Class probabilities ``(B, K, *spatial)`` of a segmentation network's logits, in float32 (or float64).

    Args:
        logits: ``(B, C, *spatial)``; C = 1 is one sigmoid channel (K = 2 classes: 1 − p, p), C > 1 a softmax over
            K = C classes.

    Raises:
        ValueError: for fewer than three dimensions.
    """
    if logits.ndim < 3:
        raise ValueError(f"class_probabilities: logits must be (B, C, *spatial), got shape {tuple(logits.shape)}")
    x = logits if logits.dtype in (torch.float32, torch.float64) else logits.float()
    if x.shape[1] == 1:
        p = torch.sigmoid(x)
        return torch.cat((1 - p, p), dim=1)
    return torch.softmax(x, dim=1)


def class_indices(target: Tensor, num_classes: int) -> Tensor:
    """Class-index labels ``(B, *spatial)`` (int64) from a target ``(B, 1, *spatial)`` of indices (integer or
    integer-valued floats, 0/1 for a one-channel network) or one-hot ``(B, K, *spatial)``.

    Args:
        target: the batch's labels.
        num_classes: K, including background.

    Raises:
        ValueError: for soft (non-integer) labels, indices outside [0, K − 1], or a channel count that is neither
            1 nor K, naming what was found.
    """
    if target.ndim < 3:
        raise ValueError(f"class_indices: target must be (B, 1 or K, *spatial), got shape {tuple(target.shape)}")
    if target.shape[1] == num_classes and num_classes > 1 and target.shape[1] != 1:
        return target.argmax(1)
    if target.shape[1] != 1:
        raise ValueError(f"class_indices: target has {target.shape[1]} channels; expected 1 (class indices) or "
                         f"{num_classes} (one-hot)")
    t = target[:, 0]
    if t.is_floating_point():
        if bool((t != torch.round(t)).any()):
            raise ValueError("class_indices: CLCS selects pixels by their class label, but the target holds "
                             "non-integer (soft) values; give hard labels (class indices)")
    idx = t.long()
    if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= num_classes):
        raise ValueError(f"class_indices: labels must lie in [0, {num_classes - 1}] for {num_classes} classes, got "
                         f"[{int(idx.min())}, {int(idx.max())}]")
    return idx


# ----------------------------------------------------------------------------------------------- curriculum
def curriculum_map(x: Tensor, mapping: str = "convex") -> Tensor:
    """The curriculum map M of the thresholds τ·M(β): monotone increasing on [0, 1], M(0) = 0, M(1) = 1.

    ``"convex"``: x / (2 − x) (FlexMatch's choice, and this project's default for CLCS's "convex curvature"
    threshold: a class far from learned gets a much lower threshold, one close to it nearly τ); ``"linear"``: x;
    ``"concave"``: log2(1 + x).

    Args:
        x: learning status values in [0, 1] (any shape).
        mapping: one of :data:`MAPPINGS`.

    Raises:
        ValueError: an unknown mapping.
    """
    _choice("curriculum_map", "mapping", mapping, MAPPINGS)
    if mapping == "convex":
        return x / (2 - x)
    if mapping == "linear":
        return x.clone()
    return torch.log2(1 + x)


def class_thresholds(status: Tensor, tau: float = DEFAULT_TAU, mapping: str = "convex") -> Tensor:
    """Class-aware dynamic thresholds τ_c = τ · M(β_c) (this project's form of CLCS's curriculum threshold).

    Args:
        status: learning status β ``(K,)`` in [0, 1] (:func:`learning_status`).
        tau: τ ∈ (0, 1], the threshold of a fully learned class (β = 1).
        mapping: the map M (:func:`curriculum_map`).

    Returns:
        thresholds ``(K,)`` in [0, τ], monotone increasing in each β_c.

    Raises:
        ValueError: τ ∉ (0, 1] or an unknown mapping.
    """
    tau = _unit("class_thresholds", "tau", tau)
    return tau * curriculum_map(status.clamp(0, 1), mapping)


def status_counts(probs: Tensor, labels: Tensor, tau: float = DEFAULT_TAU) -> Tensor:
    """Per-class pixel counts of one batch from which the learning status is measured.

    Args:
        probs: the vote p̄ ``(B, K, *spatial)`` (:func:`class_probabilities`, averaged over the branches).
        labels: class indices ``(B, *spatial)`` (:func:`class_indices`).
        tau: the confidence a prediction needs to count (the curriculum's τ).

    Returns:
        float64 ``(3, K)`` on ``probs``' device, rows :data:`COUNT_ROWS`: pixels labelled c; pixels labelled c
        predicted c with confidence ≥ τ; pixels predicted c with confidence ≥ τ (whatever their label).
    """
    k = probs.shape[1]
    # plain tensors: counts of MONAI MetaTensors would carry their metadata into the curriculum and its checkpoint
    probs = probs.detach().as_subclass(torch.Tensor)
    labels = labels.as_subclass(torch.Tensor)
    conf, pred = probs.max(1)
    confident = conf >= tau
    lab = labels.reshape(-1)
    rows = (torch.bincount(lab, minlength=k),
            torch.bincount(lab[(confident & (pred == labels)).reshape(-1)], minlength=k),
            torch.bincount(pred[confident].reshape(-1), minlength=k))
    return torch.stack([r[:k] for r in rows]).to(torch.float64)


def learning_status(counts: Tensor, rule: str = "recall", threshold_warmup: bool = True,
                    previous: Tensor | None = None) -> Tensor:
    """Each class's learning status β_c ∈ [0, 1] from accumulated :func:`status_counts` (this project's choice).

    The raw status s_c and the share u of pixels not yet confidently learned are

    - ``"recall"`` (default): s_c = (labelled c, predicted c with confidence ≥ τ) / (labelled c), and
      u = 1 − Σ_c (confident correct) / Σ_c (labelled): a class's progress on its own pixels, so class frequency does
      not enter (with noisy labels s_c is at most 1 − the class's noise rate);
    - ``"count"``: s_c = (predicted c with confidence ≥ τ) / N and u = 1 − Σ_c s_c, N all pixels: FlexMatch's σ_c
      (Zhang et al., NeurIPS 2021) on pixels, where a frequent class always leads;

    and β_c = s_c / max(max_k s_k, u) with ``threshold_warmup`` (FlexMatch's threshold warm-up: early in training,
    when most pixels are unlearned, β stays small for every class), else s_c / max_k s_k. A class with no labelled
    pixel in the counts (``"recall"``) keeps its ``previous`` status (0 without one).

    Args:
        counts: ``(3, K)`` rows :data:`COUNT_ROWS`, summed over any number of batches.
        rule: one of :data:`STATUS_RULES`.
        threshold_warmup: use FlexMatch's warm-up denominator.
        previous: the status ``(K,)`` before these counts.

    Returns:
        β ``(K,)`` float64 in [0, 1] (all zeros when nothing has been learned confidently).

    Raises:
        ValueError: an unknown rule, or counts that are not ``(3, K)``.
    """
    _choice("learning_status", "rule", rule, STATUS_RULES)
    if counts.ndim != 2 or counts.shape[0] != 3:
        raise ValueError(f"learning_status: counts must be (3, K), got {tuple(counts.shape)}")
    c = counts.detach().to(torch.float64)
    labelled, correct, predicted = c[0], c[1], c[2]
    k = c.shape[1]
    prev = torch.zeros(k, dtype=torch.float64, device=c.device) if previous is None else \
        previous.detach().to(device=c.device, dtype=torch.float64)
    total = labelled.sum()
    if total <= 0:
        return prev.clone()
    if rule == "recall":
        seen = labelled > 0
        s = torch.where(seen, correct / labelled.clamp_min(1), torch.zeros_like(labelled))
        u = 1 - correct.sum() / total
    else:
        seen = torch.ones(k, dtype=torch.bool, device=c.device)
        s = predicted / total
        u = 1 - s.sum()
    top = s[seen].max() if bool(seen.any()) else s.new_zeros(())
    denom = torch.maximum(top, u.clamp_min(0)) if threshold_warmup else top
    beta = torch.where(denom > 0, s / denom.clamp_min(torch.finfo(torch.float64).tiny), torch.zeros_like(s))
    return torch.where(seen, beta.clamp(0, 1), prev)


# ----------------------------------------------------------------------------------------------- selection
def selection_mask(probs: Tensor, labels: Tensor, thresholds: Tensor, criterion: str = "label",
                   min_keep: float = DEFAULT_MIN_KEEP) -> Tensor:
    """CNS's clean-label mask: the pixels whose label passes its class's threshold under the vote.

    A pixel with label y is clean when p̄_y ≥ τ_y (``criterion="label"``), or when that holds or the vote's
    arg-max is y (``"label_or_argmax"``, 2BDenoise's ``case3``). Then every class c with n_c > 0 labelled pixels in
    the batch keeps at least ⌈``min_keep`` · n_c⌉ of them: its pixels with the highest p̄_y are added (exactly that
    many, ties broken by position, :func:`dale_monai.coteaching.small_loss_mask`). The selection is over the whole
    batch (this project's choice, as Co-teaching's mini-batch selection).

    Args:
        probs: the vote p̄ ``(B, K, *spatial)``.
        labels: class indices ``(B, *spatial)``.
        thresholds: τ_c ``(K,)`` (:func:`class_thresholds`).
        criterion: one of :data:`CRITERIA`.
        min_keep: least share per class, in [0, 1] (0 disables the guarantee).

    Returns:
        bool ``(B, 1, *spatial)``, True = clean.

    Raises:
        ValueError: an unknown criterion, ``min_keep`` ∉ [0, 1], or shapes that do not fit.
    """
    owner = "selection_mask"
    _choice(owner, "criterion", criterion, CRITERIA)
    min_keep = _unit(owner, "min_keep", min_keep, low_open=False)
    if labels.shape != probs.shape[:1] + probs.shape[2:]:
        raise ValueError(f"{owner}: labels {tuple(labels.shape)} do not fit probabilities {tuple(probs.shape)}")
    if thresholds.shape != (probs.shape[1],):
        raise ValueError(f"{owner}: thresholds must be ({probs.shape[1]},), got {tuple(thresholds.shape)}")
    p = probs.detach()
    lab = labels.unsqueeze(1)
    p_y = p.gather(1, lab)
    mask = p_y >= thresholds.to(device=p.device, dtype=p.dtype)[lab]
    if criterion == "label_or_argmax":
        mask = mask | (p.argmax(1, keepdim=True) == lab)
    if min_keep > 0:
        for c in torch.unique(labels).tolist():
            in_c = lab == c
            n_c = int(in_c.sum())
            need = max(1, math.ceil(min_keep * n_c - 1e-9))  # min_keep·n_c may land just above an integer
            if int((mask & in_c).sum()) >= need:
                continue
            # the `need` most confident pixels of class c: smallest −p̄_y
            top = small_loss_mask(-p_y[in_c].reshape(1, -1), need / n_c)
            mask[in_c] = mask[in_c] | top.reshape(-1)
    return mask


def _check_nbl(owner: str, maps: tuple[Tensor, ...], noisy_weight: float) -> None:
    if isinstance(noisy_weight, bool) or not isinstance(noisy_weight, (int, float)) or not (
            math.isfinite(noisy_weight) and noisy_weight >= 0):
        raise ValueError(f"{owner}: noisy_weight must be a finite number >= 0, got {noisy_weight!r}")
    shapes = {tuple(t.shape) for t in maps}
    if len(shapes) != 1:
        raise ValueError(f"{owner}: the maps must have one shape, got {sorted(shapes)}")


def rejected_loss_map(ce_map: Tensor, rce_map: Tensor, mask: Tensor, confidence: Tensor,
                      noisy_weight: float = 1.0) -> Tensor:
    """The rejected pixels' part of NBL: (1 − m)·λ_r·(w·CE + (1 − w)·RCE) (see :func:`noise_balance_loss_map`)."""
    _check_nbl("rejected_loss_map", (ce_map, rce_map, mask, confidence), noisy_weight)
    m = mask.to(ce_map.dtype)
    w = confidence.detach().to(ce_map.dtype).clamp(0, 1)
    return (1 - m) * noisy_weight * (w * ce_map + (1 - w) * rce_map)


def noise_balance_loss_map(ce_map: Tensor, rce_map: Tensor, mask: Tensor, confidence: Tensor,
                           noisy_weight: float = 1.0) -> Tensor:
    """NBL per pixel (this project's form): m·CE + (1 − m)·λ_r·(w·CE + (1 − w)·RCE).

    Args:
        ce_map: cross-entropy per pixel ``(B, 1, *spatial)``, with its graph.
        rce_map: reverse cross-entropy per pixel, same shape (:func:`dale_monai.robust_losses.reverse_ce_map`).
        mask: the clean selection m (bool or {0, 1}), same shape.
        confidence: w ∈ [0, 1], the vote's probability of the given label p̄_y; detached here (it weights, it is not
            trained).
        noisy_weight: λ_r >= 0, the weight of the rejected pixels' robust term (0 drops them, as plain selection).

    Returns:
        the map ``(B, 1, *spatial)``; its mean is the loss. With m = 1 everywhere it is ``ce_map``.

    Raises:
        ValueError: a negative or non-finite ``noisy_weight``, or maps of different shapes.
    """
    _check_nbl("noise_balance_loss_map", (ce_map, rce_map, mask, confidence), noisy_weight)
    return mask.to(ce_map.dtype) * ce_map + rejected_loss_map(ce_map, rce_map, mask, confidence, noisy_weight)


def discrepancy_loss(a: Tensor, b: Tensor, eps: float = 1e-8) -> Tensor:
    """Mean absolute cosine similarity of two branches' feature vectors, position by position (this project's form
    of CLCS's discrepancy loss): 0 when the views are orthogonal everywhere, 1 when they are parallel.

    Args:
        a, b: ``(B, F, *spatial)`` features (or class probabilities) of the two branches, with their graphs; the
            gradient reaches both.
        eps: guards the norms of all-zero vectors.

    Returns:
        a scalar in [0, 1].

    Raises:
        ValueError: for tensors of different shapes or fewer than two dimensions.
    """
    if a.shape != b.shape or a.ndim < 2:
        raise ValueError(f"discrepancy_loss: the branches' features must have one shape (B, F, ...), got "
                         f"{tuple(a.shape)} and {tuple(b.shape)}")
    a = a if a.dtype in (torch.float32, torch.float64) else a.float()
    b = b if b.dtype in (torch.float32, torch.float64) else b.float()
    return torch.cosine_similarity(a, b, dim=1, eps=eps).abs().mean()


# ----------------------------------------------------------------------------------------------- state
class ClassCurriculum:
    """The class-aware dynamic thresholds of CLCS and the statistics behind them, checkpointable.

    During an epoch the trainer adds each batch's :func:`status_counts` (:meth:`accumulate`); at the start of the
    next epoch :meth:`step` turns them into the learning status β (:func:`learning_status`) and the thresholds
    τ_c = τ·M(β_c) (:func:`class_thresholds`) used for that whole epoch, then clears them. Before any statistics
    β = 0, so every threshold is 0 (every label passes: plain training). Updating once per epoch is this project's
    choice (FlexMatch updates after every batch from the latest prediction of each unlabelled image; pixels of
    augmented images have no such identity); it makes the thresholds a per-epoch quantity that handlers log.

    ``state_dict()`` holds tensors only (a checkpoint loads with ``weights_only=True``): the counts of the epoch in
    progress, β and the thresholds; a run resumed from an epoch-end checkpoint continues exactly.

    Args:
        num_classes: K, background included (2 for a one-channel network); ``None``: taken from the first batch.
        tau: τ ∈ (0, 1], threshold of a fully learned class and the confidence a prediction needs to count as
            learned. Default 0.9 (2BDenoise's fixed threshold).
        mapping: the curriculum map M, one of :data:`MAPPINGS`; default ``"convex"`` (x / (2 − x)).
        status: how β is measured, one of :data:`STATUS_RULES`; default ``"recall"``.
        threshold_warmup: FlexMatch's warm-up denominator in β (default True).

    Raises:
        ValueError: an out-of-range option, naming it.
    """

    def __init__(self, num_classes: int | None = None, tau: float = DEFAULT_TAU, mapping: str = "convex",
                 status: str = "recall", threshold_warmup: bool = True) -> None:
        owner = "ClassCurriculum"
        if num_classes is not None and (isinstance(num_classes, bool) or not isinstance(num_classes, int)
                                        or num_classes < 2):
            raise ValueError(f"{owner}: num_classes must be an integer >= 2 (background included; 2 for a one-channel "
                             f"network) or None, got {num_classes!r}")
        self.tau = _unit(owner, "tau", tau)
        self.mapping = _choice(owner, "mapping", mapping, MAPPINGS)
        self.status_rule = _choice(owner, "status", status, STATUS_RULES)
        if not isinstance(threshold_warmup, bool):
            raise ValueError(f"{owner}: threshold_warmup must be True or False, got {threshold_warmup!r}")
        self.threshold_warmup = threshold_warmup
        self.num_classes = num_classes
        self.counts = torch.zeros(0, dtype=torch.float64)
        self.status = torch.zeros(0, dtype=torch.float64)
        self.thresholds = torch.zeros(0, dtype=torch.float64)
        if num_classes is not None:
            self._init(num_classes)

    def _init(self, k: int) -> None:
        self.num_classes = k
        self.counts = torch.zeros(3, k, dtype=torch.float64)
        self.status = torch.zeros(k, dtype=torch.float64)
        self.thresholds = torch.zeros(k, dtype=torch.float64)

    def ensure_classes(self, k: int) -> None:
        """Size the state for K classes (first batch), or check that K matches.

        Raises:
            ValueError: when the network's classes differ from ``num_classes``.
        """
        if self.status.numel() == 0:
            if self.num_classes is not None and self.num_classes != k:
                raise ValueError(f"ClassCurriculum: num_classes is {self.num_classes} but the network predicts {k} "
                                 "classes (a one-channel network has 2)")
            self._init(k)
        elif self.status.numel() != k:
            raise ValueError(f"ClassCurriculum: the state holds {self.status.numel()} classes but the network predicts "
                             f"{k} (a one-channel network has 2); set num_classes to match the network")

    def accumulate(self, counts: Tensor) -> None:
        """Add one batch's :func:`status_counts` ``(3, K)``."""
        self.ensure_classes(int(counts.shape[1]))
        self.counts = self.counts + counts.detach().as_subclass(torch.Tensor).to("cpu", torch.float64)

    def step(self) -> bool:
        """Turn the accumulated counts into β and the thresholds, and clear them.

        Returns:
            whether there were counts to turn (False leaves β and the thresholds as they were).
        """
        if self.counts.numel() == 0 or float(self.counts[0].sum()) <= 0:
            return False
        self.status = learning_status(self.counts, self.status_rule, self.threshold_warmup, self.status)
        self.thresholds = class_thresholds(self.status, self.tau, self.mapping)
        self.counts = torch.zeros_like(self.counts)
        return True

    def state_dict(self) -> dict[str, Tensor]:
        """The counts of the epoch in progress, β and the thresholds (tensors only)."""
        return {"counts": self.counts.clone(), "status": self.status.clone(), "thresholds": self.thresholds.clone()}

    def load_state_dict(self, state: Mapping[str, Tensor]) -> None:
        """Restore :meth:`state_dict`'s output.

        Raises:
            ValueError: a state of another number of classes than ``num_classes``, or a malformed state.
        """
        try:
            counts, status, thresholds = (torch.as_tensor(state[k], dtype=torch.float64).as_subclass(torch.Tensor)
                                          for k in ("counts", "status", "thresholds"))
        except KeyError as e:
            raise ValueError(f"ClassCurriculum: the saved state has no {e.args[0]!r} (has {sorted(state)})") from None
        k = status.numel()
        if counts.shape != (3, k) or thresholds.shape != (k,):
            raise ValueError(f"ClassCurriculum: malformed saved state (counts {tuple(counts.shape)}, status ({k},), "
                             f"thresholds {tuple(thresholds.shape)})")
        if k and self.num_classes is not None and k != self.num_classes:
            raise ValueError(f"ClassCurriculum: the saved state has {k} classes, this curriculum num_classes="
                             f"{self.num_classes}")
        if k:
            self.num_classes = k
        self.counts, self.status, self.thresholds = counts.clone(), status.clone(), thresholds.clone()
