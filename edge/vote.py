"""The one majority-vote rule of the product (training, evaluation and the device loop use it)."""
from __future__ import annotations

import numpy as np


def majority_vote(probs: np.ndarray) -> int:
    """One decision from (n >= 1, k) probabilities: majority of argmaxes, ties by summed probabilities."""
    probs = np.asarray(probs, dtype=np.float64)
    if probs.ndim != 2 or len(probs) == 0:
        raise ValueError(f"a vote needs (n >= 1, n_classes) probabilities, got {probs.shape}")
    counts = np.bincount(probs.argmax(1), minlength=probs.shape[1])
    tied = counts == counts.max()
    return int(np.argmax(np.where(tied, probs.sum(0), -np.inf)))


def majority_votes(probs: np.ndarray, group: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """:func:`majority_vote` for every group of rows at once: (group ids, one decision per group)."""
    probs = np.asarray(probs, dtype=np.float64)
    if probs.ndim != 2 or len(probs) != len(group):
        raise ValueError(f"a vote needs (n, n_classes) probabilities and n group ids, got {probs.shape} and "
                         f"{np.shape(group)}")
    ids, inv = np.unique(group, return_inverse=True)
    counts = np.zeros((len(ids), probs.shape[1]))
    np.add.at(counts, (inv, probs.argmax(1)), 1)
    sums = np.zeros_like(counts)
    np.add.at(sums, inv, probs)
    return ids, np.where(counts == counts.max(1, keepdims=True), sums, -np.inf).argmax(1)
