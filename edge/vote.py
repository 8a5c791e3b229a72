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
