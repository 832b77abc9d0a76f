"""Cross-validation folds over the training cases: each case is held out (and scored) by exactly one fold."""

from __future__ import annotations

import numpy as np

__all__ = ["kfold_indices"]


def kfold_indices(n_cases: int, n_folds: int, seed: int = 0) -> list[np.ndarray]:
    """The held-out case indices of each of ``n_folds`` folds over ``n_cases`` cases.

    The cases are shuffled with ``seed`` and split into ``n_folds`` nearly equal parts (sizes differ by at most
    one), as scikit-learn's ``KFold(shuffle=True)`` does; fold ``k`` is trained on every case outside part ``k``
    and scores the cases of part ``k`` only, so a case's out-of-sample probabilities never come from a model
    that saw its label (the cross-validated ``pred_probs`` cleanlab's confident learning expects: Northcutt et
    al., "Confident Learning", JAIR 2021, Sec. 4).

    Args:
        n_cases: number of training cases.
        n_folds: number of folds, at least 2 and at most ``n_cases``.
        seed: seed of the shuffle (the same seed gives the same folds).

    Returns:
        ``n_folds`` sorted integer arrays that partition ``range(n_cases)``.

    Raises:
        ValueError: when ``n_folds`` is below 2 or above ``n_cases``.
    """
    if n_folds < 2:
        raise ValueError(f"folds must be at least 2 (a case must be scored by a model trained without it), "
                         f"got {n_folds}")
    if n_folds > n_cases:
        raise ValueError(f"folds ({n_folds}) must not exceed the number of training cases ({n_cases})")
    order = np.random.default_rng(int(seed)).permutation(n_cases)
    return [np.sort(part) for part in np.array_split(order, n_folds)]
