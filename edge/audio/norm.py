"""Speaker normalisation of the log-mel: subtract the running mean of the current speaker's frames.

Training removes each RAVDESS actor's mean log-mel (over all of the actor's speech). A device does
not know who speaks, so it estimates the same mean online from the speech it has heard, starting
from the training population's mean (a prior worth ``prior_frames`` frames):

    mean_t = (prior_frames * prior + sum of speech frames so far) / (prior_frames + n_frames)

with the count capped at ``max_frames`` (an exponential forgetting of older speech: a new speaker
takes over within ~max_frames / 100 seconds of speech). Reset it when the session changes. The
default prior, 1000 frames (10 s of speech), is edge-run's (``--speaker-prior``): against 1 s it read
speakers heard for a few utterances, or in one emotion, better (reports/speaker_skew.md).

    norm = SpeakerNorm(prior_mean)          # (64,) from the model manifest
    norm.update(log_mel_of_speech)          # (n_frames, 64)
    patch = norm.apply(patch)               # (96, 64)
"""
from __future__ import annotations

import numpy as np


class SpeakerNorm:
    """Running per-band mean of a speaker's log-mel frames, with a prior."""

    def __init__(self, prior_mean: np.ndarray, prior_frames: float = 1000.0, max_frames: float = 3000.0):
        prior_mean = np.asarray(prior_mean, np.float64).reshape(-1)
        if not np.all(np.isfinite(prior_mean)):
            raise ValueError("SpeakerNorm: the prior mean has non-finite values")
        if prior_frames < 0 or max_frames <= 0:
            raise ValueError(f"SpeakerNorm: prior_frames={prior_frames}, max_frames={max_frames} out of range")
        self.prior_mean, self.prior_frames, self.max_frames = prior_mean, float(prior_frames), float(max_frames)
        self.reset()

    def reset(self) -> None:
        self._sum = np.zeros_like(self.prior_mean)
        self._n = 0.0

    @property
    def frames(self) -> float:
        return self._n

    @property
    def mean(self) -> np.ndarray:
        if self.prior_frames + self._n == 0:      # no prior weight and nothing heard yet: the prior is all there is
            return self.prior_mean.copy()
        return (self.prior_frames * self.prior_mean + self._sum) / (self.prior_frames + self._n)

    def update(self, log_mel: np.ndarray) -> None:
        """Add (n_frames, bands) speech frames; non-finite frames are ignored."""
        lm = np.asarray(log_mel, np.float64)
        if lm.ndim != 2 or lm.shape[1] != len(self.prior_mean):
            raise ValueError(f"SpeakerNorm.update expects (n, {len(self.prior_mean)}) frames, got {lm.shape}")
        lm = lm[np.all(np.isfinite(lm), axis=1)]
        if not len(lm):
            return
        n = self._n + len(lm)
        s = self._sum + lm.sum(axis=0)
        if n > self.max_frames:                   # forget old speech in proportion
            s *= self.max_frames / n
            n = self.max_frames
        self._sum, self._n = s, n

    def apply(self, x: np.ndarray) -> np.ndarray:
        """(..., bands) log-mel minus the current mean, float32."""
        return (np.asarray(x, np.float32) - self.mean.astype(np.float32))
