"""Label-trouble signals of the training cases, per case and per pixel, and their combination.

Every case-level signal is a *suspicion*: higher means the label is more likely wrong.

- ``cleanlab``: 1 - cleanlab's label-quality score of the case (``cleanlab.segmentation.rank``, ``softmin`` of the
  per-pixel self-confidence p[label]) from out-of-fold probabilities; per pixel 1 - p[label]; the pixels
  ``cleanlab.segmentation.filter.find_label_issues`` flags (confident learning) are the suspected pixels.
- ``disagreement``: 1 - the Dice overlap of the out-of-fold prediction (argmax) with the label, averaged over
  the foreground classes either has: the model-versus-label disagreement used for segmentation quality control
  (Robinson et al., "Automated quality control in image segmentation", J. Cardiovasc. Magn. Reson. 2019).
  Unlike pixel counts it is relative to the size of the structure, so a large lesion's uncertain rim does not
  outweigh a small lesion's wrong outline.
- ``partition``: DALE's fuzzy mask M^f (paper Eqs. 3-6; :class:`dale_monai.transforms.FuzzyPartition`) of the
  image and its label, per pixel; per case its mean.
- ``loss``: the mean per-case training loss over the run (:class:`dale_monai.handlers.CaseStatsHandler`).
- ``omega``: 1 - the mean ω* over the case's fuzzy pixels during DALE training (same handler).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

__all__ = ["CASE_SIGNALS", "DEFAULT_COMBINED", "PIXEL_SIGNALS", "cleanlab_signals", "disagreement_signal",
           "partition_signal", "weak_folds", "stats_signals",
           "rank_average", "percentile_ranks", "agreeing_signals", "combine_pixel_maps"]

#: case-level signals, in report order
CASE_SIGNALS = ("cleanlab", "cleanlab_issues", "disagreement", "partition", "loss", "omega")
#: the signals combined by default. ``partition`` is reported but not combined: M^f is min-max normalised within
#: each image (DALE Eq. 5), so its mean is about the same for every case by construction; it locates hard pixels
#: inside a case rather than ranking cases
DEFAULT_COMBINED = ("cleanlab", "cleanlab_issues", "disagreement", "loss", "omega")
#: signals that also give a per-pixel map
PIXEL_SIGNALS = ("cleanlab", "partition")


def cleanlab_signals(labels: Sequence[np.ndarray], probs: Sequence[np.ndarray], temperature: float = 0.1
                     ) -> tuple[np.ndarray, list[np.ndarray], list[np.ndarray]]:
    """cleanlab's segmentation label-quality scores and label issues of a set of cases.

    Cases may have different grids: their pixels are laid side by side as one ``(1, 1, P)`` image for
    ``find_label_issues`` (with ``downsample=1`` it works on single pixels, and its per-class confident-learning
    thresholds are meant to be estimated over the whole dataset), and each case is scored on its own with
    ``get_label_quality_scores`` (the softmin of its pixels does not depend on the other cases).

    Args:
        labels: per case, class indices on the probabilities' grid, ``(*grid)``.
        probs: per case, out-of-sample class probabilities ``(K, *grid)``.
        temperature: of cleanlab's softmin (its default, 0.1).

    Returns:
        ``(suspicion, pixel_suspicion, issues)``: per case 1 - the label-quality score; per case the map
        1 - p[label] ``(*grid)``; per case the boolean label-issue mask ``(*grid)``.

    Raises:
        ImportError: when cleanlab is not installed (``pip install dale-monai[audit]``).
        ValueError: when a label and its probabilities have other grids, or a label value has no class.
    """
    try:
        from cleanlab.segmentation.filter import find_label_issues
        from cleanlab.segmentation.rank import get_label_quality_scores
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("the label audit needs cleanlab: pip install cleanlab (or dale-monai[audit])") from e
    flat_l, flat_p = [], []
    for i, (lab, p) in enumerate(zip(labels, probs)):
        if tuple(lab.shape) != tuple(p.shape[1:]):
            raise ValueError(f"case {i}: label grid {lab.shape} differs from its probabilities' {p.shape[1:]}")
        if lab.size and (lab.min() < 0 or lab.max() >= p.shape[0]):
            raise ValueError(f"case {i}: label values {lab.min()}..{lab.max()} outside the {p.shape[0]} classes")
        flat_l.append(lab.reshape(-1).astype(np.int64))
        flat_p.append(p.reshape(p.shape[0], -1).astype(np.float32))
    all_l = np.concatenate(flat_l)[None, None]
    all_p = np.concatenate(flat_p, axis=1)[None, :, None]
    issues_all = find_label_issues(all_l, all_p, downsample=1, n_jobs=1, verbose=False)[0, 0]
    suspicion, pixel, issues = [], [], []
    start = 0
    for lab, fl, fp in zip(labels, flat_l, flat_p):
        score, pix = get_label_quality_scores(fl[None, None], fp[:, None][None], method="softmin",
                                              temperature=temperature, verbose=False)
        suspicion.append(1.0 - float(score[0]))
        pixel.append((1.0 - pix[0, 0]).reshape(lab.shape).astype(np.float32))
        issues.append(issues_all[start:start + fl.size].reshape(lab.shape))
        start += fl.size
    return np.asarray(suspicion), pixel, issues


def disagreement_signal(labels: Sequence[np.ndarray], probs: Sequence[np.ndarray]) -> np.ndarray:
    """Per case, 1 - the mean Dice of the predicted classes (argmax of ``probs`` ``(K, *grid)``) with the label
    ``(*grid)`` over the foreground classes present in either (0 when neither has foreground)."""
    out = []
    for lab, p in zip(labels, probs):
        pred = np.argmax(p, axis=0)
        dices = []
        for c in range(1, p.shape[0]):
            a, b = pred == c, lab == c
            total = a.sum() + b.sum()
            if total:
                dices.append(2.0 * (a & b).sum() / total)
        out.append(1.0 - float(np.mean(dices)) if dices else 0.0)
    return np.asarray(out)


def weak_folds(disagreement: Sequence[float], fold_of: Sequence[int], factor: float = 3.0) -> dict[int, float]:
    """Folds whose models disagree with their cases' labels far more than the others': a failed fold (a
    collapsed or diverged model) gives its cases poor probabilities, which no signal can tell from bad labels.

    Args:
        disagreement: per case, the ``disagreement`` signal (1 - Dice of the out-of-fold prediction).
        fold_of: per case, the fold that scored it.
        factor: a fold is weak when its median disagreement exceeds ``factor`` times the median over the cases
            of the other folds, and 0.2. On the PH2 audits of ``benchmarks/audit_ph2.py`` the folds' medians were
            0.07-0.27 (a fold holding many of the corrupted cases reaches 0.25) and the one failed fold's 0.57.

    Returns:
        weak fold -> its median disagreement.
    """
    d, f = np.asarray(disagreement, np.float64), np.asarray(fold_of)
    out = {}
    for k in np.unique(f):
        others = d[f != k]
        if not others.size:
            continue
        mine = float(np.median(d[f == k]))
        if mine > max(factor * float(np.median(others)), 0.2):
            out[int(k)] = mine
    return out


def partition_signal(mask_f: Sequence[np.ndarray]) -> np.ndarray:
    """Per case, the mean of DALE's fuzzy mask M^f ``(*grid)``."""
    return np.asarray([float(np.mean(m)) for m in mask_f])


def stats_signals(cases: Sequence[str], summary: Mapping[str, Mapping[str, float]]) -> dict[str, np.ndarray]:
    """The ``loss`` and ``omega`` signals of ``cases`` from a :func:`~dale_monai.handlers.case_stats.
    summarise_case_stats` summary; a signal is left out when no case has a value, NaN for a case without one."""
    out = {}
    loss = np.asarray([summary.get(c, {}).get("loss", math.nan) for c in cases], dtype=np.float64)
    omega = np.asarray([1.0 - summary.get(c, {}).get("omega_mean", math.nan) for c in cases], dtype=np.float64)
    if np.isfinite(loss).any():
        out["loss"] = loss
    if np.isfinite(omega).any():
        out["omega"] = omega
    return out


def percentile_ranks(values: np.ndarray) -> np.ndarray:
    """Ranks in [0, 1] (0 the least, 1 the most suspect; ties share their mean rank); NaN stays NaN."""
    from scipy.stats import rankdata

    v = np.asarray(values, dtype=np.float64)
    out = np.full(v.shape, np.nan)
    ok = np.isfinite(v)
    if ok.sum() == 1:
        out[ok] = 1.0
    elif ok.any():
        out[ok] = (rankdata(v[ok]) - 1) / (ok.sum() - 1)
    return out


def rank_average(signals: Mapping[str, np.ndarray], use: Sequence[str] | None = None) -> np.ndarray:
    """The combined suspicion of each case: the mean of its percentile ranks in the signals ``use`` (default all),
    ignoring a signal a case lacks. Rank averaging makes signals of different units comparable without any
    weight fitted to labelled noise (the "rank averaging" ensemble of outlier scores, Aggarwal & Sathe,
    "Outlier Ensembles", 2017, Sec. 5.2)."""
    names = [n for n in (use or list(signals)) if n in signals]
    if not names:
        raise ValueError(f"no signal to combine among {list(use or [])}; available: {sorted(signals)}")
    ranks = np.stack([percentile_ranks(signals[n]) for n in names])
    with np.errstate(invalid="ignore"):
        return np.nanmean(ranks, axis=0)


def agreeing_signals(signals: Mapping[str, np.ndarray], top_fraction: float) -> list[list[str]]:
    """Per case, the signals that place it among their worst ``top_fraction`` of the cases."""
    n = len(next(iter(signals.values()))) if signals else 0
    out: list[list[str]] = [[] for _ in range(n)]
    for name, values in signals.items():
        ranks = percentile_ranks(values)
        for i, r in enumerate(ranks):
            if np.isfinite(r) and r >= 1.0 - top_fraction:
                out[i].append(name)
    return out


def combine_pixel_maps(maps: Mapping[str, np.ndarray], use: Sequence[str] | None = None) -> np.ndarray:
    """The combined per-pixel suspicion of one case: the mean of its maps ``use`` (default all), each in [0, 1]."""
    names = [n for n in (use or list(maps)) if n in maps]
    if not names:
        raise ValueError(f"no pixel map to combine among {list(use or [])}; available: {sorted(maps)}")
    return np.mean(np.stack([np.asarray(maps[n], np.float32) for n in names]), axis=0)
