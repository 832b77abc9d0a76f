"""ARCO's pixel-level contrastive loss as plain torch functions: stratified sampling, memory banks, the loss.

ARCO (You et al., "Rethinking semi-supervised medical image segmentation: a variance-reduction perspective",
NeurIPS 2023; official code ``charlesyou999648/ARCO``, ``code/loss_helper.py``; the seed document
``arco_gapmatch__003`` holds its abstract) adds to a mean teacher a U2PL-style pixel contrastive loss whose
anchors and negatives are drawn by *stratified* (grid Monte Carlo) sampling, which reduces the variance of the
sampled loss. Only the abstract and the public code were read (``../shared/PARADIGMS.md``); what follows is what the
code does, and where this module departs from it, it says so.

Per class c, with the teacher's class probabilities p and the entropy masks of the batch (:func:`entropy_masks`,
α_t = 20·(1 − t/T) percent):

- **anchors**: student features of pixels labelled c (ground truth on labelled images, the teacher's hard
  pseudo-label on unlabelled ones) in the low-entropy mask with p_c > 0.3, ``anchors_per_class`` (256) of them
  drawn by :func:`stratified_indices`;
- **positive**: the mean teacher feature of the pixels labelled c (the class prototype);
- **negatives**: a bounded per-class memory bank (:class:`ClassMemoryBank`; 30,000 entries, 50,000 for the
  background class) of teacher features of high-entropy pixels with p_c < 0.97 that are not labelled c;
  ``negatives_per_anchor`` (512) per anchor drawn by :func:`stratified_indices`;
- ℓ_c = CE([cos(a, k⁺), cos(a, k⁻₁), …, cos(a, k⁻₅₁₂)] / τ, 0) averaged over the anchors (τ = 0.5, the function
  default of the public code: its ``--temp`` is never passed); the loss is the mean of ℓ_c over the classes that
  have anchors, a prototype and a non-empty bank (:func:`arco_contrastive_loss`).

**Ours** (departures from the public code): the negatives of class c are the pixels not labelled c (the public code
keeps, on unlabelled images, the pixels whose c ranks 3rd to 19th among the teacher's classes, and on labelled
ones those where c is in the top 3 but not the label: a rule for 19 Cityscapes classes that is empty for binary
segmentation); the sampling grid has side ⌈√N⌉ so that every index lies in a stratum, and the draws are spread over
the non-empty strata exactly (the public code rounds the side, drops the indices past N and pads with uniform
draws); percentiles are the nearest-rank order statistic (NumPy's ``percentile`` interpolates).
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "stratified_indices",
    "strata_of",
    "ClassMemoryBank",
    "class_probabilities",
    "class_targets",
    "entropy_masks",
    "pixel_contrastive_loss",
    "arco_contrastive_loss",
]


def strata_of(n: int, cuts: int = 4) -> Tensor:
    """The stratum of each index 0…n−1: the indices laid out row by row on a square grid of side e = ⌈√n⌉, cut
    into ``cuts`` × ``cuts`` blocks of e // cuts rows and columns (the last row and column of blocks take the rest).

    Returns:
        ``(n,)`` long, stratum ids in [0, cuts²); for small n some ids have no index.

    Raises:
        ValueError: ``n < 1`` or ``cuts < 1``.
    """
    if n < 1 or cuts < 1:
        raise ValueError(f"strata_of: n and cuts must be >= 1, got n={n}, cuts={cuts}")
    edge = math.isqrt(n - 1) + 1  # ⌈√n⌉
    block = max(1, edge // cuts)
    i = torch.arange(n)
    row = torch.clamp(i // edge // block, max=cuts - 1)
    col = torch.clamp(i % edge // block, max=cuts - 1)
    return row * cuts + col


def stratified_indices(n: int, count: int, cuts: int = 4, generator: torch.Generator | None = None) -> Tensor:
    """``count`` indices in [0, n) by stratified (grid Monte Carlo) sampling, ARCO's ``--func smc``.

    The indices are cut into strata (:func:`strata_of`); each of the S non-empty strata gets ⌊count / S⌋ draws and
    ``count mod S`` strata, chosen at random, one more; each draw is uniform within its stratum (with replacement,
    as the public code). The result is shuffled. Every non-empty stratum is sampled when ``count >= S``.

    Args:
        n: number of candidates (e.g. masked pixels in (batch, *spatial) order, or memory-bank entries).
        count: number of indices to draw (>= 0).
        cuts: strata per grid side (the public code's ``cut_count`` 4: 16 strata).
        generator: random generator (default: the global one, which a resumed run restores).

    Returns:
        ``(count,)`` long on the CPU.

    Raises:
        ValueError: ``n < 1``, ``count < 0`` or ``cuts < 1``.
    """
    if count < 0:
        raise ValueError(f"stratified_indices: count must be >= 0, got {count}")
    strata = strata_of(n, cuts)
    present = torch.unique(strata)
    s = int(present.numel())
    per = torch.full((s,), count // s, dtype=torch.long)
    per[torch.randperm(s, generator=generator)[: count % s]] += 1
    order = torch.argsort(strata, stable=True)  # indices grouped by stratum, in stratum order
    sizes = torch.bincount(strata, minlength=cuts * cuts)[present]
    starts = torch.cumsum(sizes, 0) - sizes
    which = torch.repeat_interleave(torch.arange(s), per)  # the stratum of each draw
    offsets = (torch.rand(count, generator=generator) * sizes[which]).long().clamp_(max=sizes[which] - 1)
    out = order[starts[which] + offsets]
    return out[torch.randperm(count, generator=generator)]


class ClassMemoryBank:
    """Bounded first-in first-out queues of feature vectors, one per class (ARCO's, U2PL's ``memobank``).

    Class 0 is the background. A push appends and drops the oldest entries beyond the class's capacity, so a
    bank never holds more than ``background_capacity`` + (classes − 1)·``capacity`` vectors. Queues are created at
    their first push, with the feature width of that push. :meth:`state_dict` / :meth:`load_state_dict` make it a
    checkpoint object (Ignite ``Checkpoint``), so a resumed run continues with the same negatives.

    Args:
        capacity: entries per foreground class (public code: 30,000).
        background_capacity: entries of class 0 (public code: 50,000).

    Raises:
        ValueError: a capacity below 1.
    """

    def __init__(self, capacity: int = 30000, background_capacity: int = 50000) -> None:
        for name, value in (("capacity", capacity), ("background_capacity", background_capacity)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"ClassMemoryBank: {name} must be an integer >= 1, got {value!r}")
        self.capacity = capacity
        self.background_capacity = background_capacity
        self.queues: dict[int, Tensor] = {}

    def capacity_of(self, cls: int) -> int:
        """The capacity of class ``cls``."""
        return self.background_capacity if cls == 0 else self.capacity

    @torch.no_grad()
    def push(self, cls: int, features: Tensor) -> None:
        """Append ``features`` ``(n, D)`` (detached) to class ``cls``'s queue, keeping its newest entries.

        Raises:
            ValueError: not a 2D tensor, or a width other than the queue's.
        """
        if features.ndim != 2:
            raise ValueError(f"ClassMemoryBank.push: features must be (n, D), got {tuple(features.shape)}")
        old = self.queues.get(cls)
        if old is not None and old.shape[1] != features.shape[1]:
            raise ValueError(f"ClassMemoryBank.push: class {cls} holds {old.shape[1]}-wide features, got "
                             f"{features.shape[1]}")
        new = features.detach() if old is None else torch.cat([old.to(features.device), features.detach()])
        self.queues[cls] = new[-self.capacity_of(cls):].clone()

    def get(self, cls: int) -> Tensor | None:
        """Class ``cls``'s queue ``(n, D)``, oldest first, or ``None`` before its first push."""
        return self.queues.get(cls)

    def __len__(self) -> int:
        return sum(int(q.shape[0]) for q in self.queues.values())

    def state_dict(self) -> dict[str, Any]:
        """The capacities and every queue (on the CPU)."""
        return {"capacity": self.capacity, "background_capacity": self.background_capacity,
                "queues": {int(c): q.detach().cpu() for c, q in self.queues.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`'s queues (capacities must match).

        Raises:
            ValueError: other capacities than this bank's.
        """
        got = (int(state["capacity"]), int(state["background_capacity"]))
        if got != (self.capacity, self.background_capacity):
            raise ValueError(f"ClassMemoryBank.load_state_dict: the checkpoint's capacities {got} differ from this "
                             f"bank's {(self.capacity, self.background_capacity)}")
        self.queues = {int(c): q.clone() for c, q in state["queues"].items()}


def class_probabilities(logits: Tensor) -> Tensor:
    """``(B, K, *spatial)`` class probabilities: softmax for K > 1 channels, [1 − σ, σ] for one channel (K = 2)."""
    x = logits.float()
    if x.shape[1] == 1:
        p = torch.sigmoid(x)
        return torch.cat([1 - p, p], dim=1)
    return torch.softmax(x, dim=1)


def class_targets(targets: Tensor) -> Tensor:
    """``(B, *spatial)`` long class indices of a label ``(B, 1, *spatial)`` (indices or {0, 1}) or one-hot
    ``(B, K, *spatial)``."""
    if targets.shape[1] == 1:
        return targets[:, 0].round().long()
    return targets.argmax(dim=1)


def _nearest_rank(x: Tensor, q: float) -> Tensor:
    flat = x.flatten().sort().values
    return flat[int(round(q / 100.0 * (flat.numel() - 1)))]


def entropy_masks(probs: Tensor, percent: float) -> tuple[Tensor, Tensor]:
    """Low- and high-entropy pixels of a batch: entropy ≤ its ``percent``-th percentile, and ≥ its
    (100 − ``percent``)-th (over all pixels of the batch; nearest-rank percentiles).

    Args:
        probs: ``(B, K, *spatial)`` class probabilities.
        percent: α in [0, 100] (ARCO: α_t = 20·(1 − t/T)).

    Returns:
        two ``(B, *spatial)`` bool masks.

    Raises:
        ValueError: ``percent`` outside [0, 100].
    """
    if not 0 <= percent <= 100:
        raise ValueError(f"entropy_masks: percent must lie in [0, 100], got {percent!r}")
    entropy = -(probs * torch.log(probs + 1e-10)).sum(dim=1)
    return entropy <= _nearest_rank(entropy, percent), entropy >= _nearest_rank(entropy, 100.0 - percent)


def pixel_contrastive_loss(anchors: Tensor, positive: Tensor, negatives: Tensor, temperature: float = 0.5) -> Tensor:
    """InfoNCE of anchors against one positive and their own negatives, on cosine similarities.

    ℓ = mean over anchors a of −log(exp(cos(a, k⁺)/τ) / (exp(cos(a, k⁺)/τ) + Σ_m exp(cos(a, k⁻_m)/τ))).

    Args:
        anchors: ``(A, D)``.
        positive: ``(D,)`` (shared, e.g. a class prototype) or ``(A, D)``.
        negatives: ``(A, M, D)``.
        temperature: τ > 0.

    Raises:
        ValueError: a non-positive temperature or mismatched shapes.
    """
    if not temperature > 0:
        raise ValueError(f"pixel_contrastive_loss: temperature must be > 0, got {temperature!r}")
    if anchors.ndim != 2 or negatives.ndim != 3 or negatives.shape[0] != anchors.shape[0] or (
            negatives.shape[2] != anchors.shape[1] or positive.shape[-1] != anchors.shape[1]):
        raise ValueError(f"pixel_contrastive_loss: expected anchors (A, D), positive (D,) or (A, D), negatives "
                         f"(A, M, D); got {tuple(anchors.shape)}, {tuple(positive.shape)}, {tuple(negatives.shape)}")
    a = F.normalize(anchors, dim=-1)
    pos = (a * F.normalize(positive, dim=-1)).sum(-1, keepdim=True)
    neg = torch.einsum("ad,amd->am", a, F.normalize(negatives, dim=-1))
    logits = torch.cat([pos, neg], dim=1) / temperature
    return F.cross_entropy(logits, torch.zeros(a.shape[0], dtype=torch.long, device=a.device))


def _resize(x: Tensor, size: tuple[int, ...], mode: str) -> Tensor:
    return x if tuple(x.shape[2:]) == tuple(size) else F.interpolate(x, size=size, mode=mode)


def arco_contrastive_loss(
    student_features: Tensor,
    teacher_features: Tensor,
    teacher_probs: Tensor,
    labels: Tensor,
    bank: ClassMemoryBank,
    percent: float = 20.0,
    temperature: float = 0.5,
    anchors_per_class: int = 256,
    negatives_per_anchor: int = 512,
    anchor_threshold: float = 0.3,
    negative_threshold: float = 0.97,
    cuts: int = 4,
) -> tuple[Tensor, int]:
    """ARCO's contrastive loss of one batch (see the module docstring); pushes this batch's negatives first.

    Probabilities and labels are resampled to the features' size (area and nearest) when they differ (e.g. a
    MONAI ``UNet``'s pre-head features at half resolution).

    Args:
        student_features: ``(N, D, *s)`` with gradient (anchors).
        teacher_features: ``(N, D, *s)`` (prototypes and negatives; detached here).
        teacher_probs: ``(N, K, *S)`` the teacher's class probabilities (:func:`class_probabilities`).
        labels: ``(N, *S)`` long class per pixel: ground truth on labelled images, the teacher's hard
            pseudo-label on unlabelled ones.
        bank: the memory bank (updated in place).
        percent: α of :func:`entropy_masks`.
        temperature: τ.
        anchors_per_class, negatives_per_anchor: sample sizes.
        anchor_threshold: anchors need p_c above it.
        negative_threshold: negatives need p_c below it.
        cuts: strata per grid side of :func:`stratified_indices`.

    Returns:
        the loss (a zero connected to ``student_features`` when no class qualifies) and the number of classes
        that contributed.

    Raises:
        ValueError: inconsistent shapes.
    """
    # plain tensors: boolean indexing of MONAI MetaTensors (features of a MetaTensor batch) collates their metadata
    student_features, teacher_features, teacher_probs, labels = (
        x.as_subclass(Tensor) for x in (student_features, teacher_features, teacher_probs, labels))
    n, d = student_features.shape[:2]
    size = tuple(student_features.shape[2:])
    if teacher_features.shape != student_features.shape or teacher_probs.shape[0] != n or (
            labels.shape[0] != n or tuple(labels.shape[1:]) != tuple(teacher_probs.shape[2:])):
        raise ValueError(f"arco_contrastive_loss: inconsistent shapes: student features {tuple(student_features.shape)}"
                         f", teacher features {tuple(teacher_features.shape)}, teacher probabilities "
                         f"{tuple(teacher_probs.shape)}, labels {tuple(labels.shape)}")
    probs = _resize(teacher_probs.detach().float(), size, "area")
    lab = _resize(labels[:, None].float(), size, "nearest")[:, 0].long()
    low, high = entropy_masks(probs, percent)
    fs = student_features.float().movedim(1, -1)  # (N, *s, D)
    ft = teacher_features.detach().float().movedim(1, -1)
    num_classes = probs.shape[1]
    for c in range(num_classes):
        negative = (lab != c) & high & (probs[:, c] < negative_threshold)
        if negative.any():
            bank.push(c, ft[negative])
    losses = []
    for c in range(num_classes):
        is_c = lab == c
        candidates = is_c & low & (probs[:, c] > anchor_threshold)
        negatives = bank.get(c)
        if not candidates.any() or negatives is None or negatives.shape[0] == 0:
            continue
        prototype = ft[is_c].mean(dim=0)
        pool = fs[candidates]
        anchors = pool[stratified_indices(pool.shape[0], anchors_per_class, cuts).to(pool.device)]
        pick = stratified_indices(negatives.shape[0], anchors_per_class * negatives_per_anchor, cuts)
        keys = negatives[pick.to(negatives.device)].to(fs.device).reshape(anchors_per_class, negatives_per_anchor, d)
        losses.append(pixel_contrastive_loss(anchors, prototype, keys, temperature))
    if not losses:
        return student_features.sum() * 0.0, 0
    return torch.stack(losses).mean(), len(losses)
