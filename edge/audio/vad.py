"""Energy VAD that trims leading and trailing silence (RAVDESS clips start with ~1 s of it).

A frame (25 ms, hop 10 ms) is voiced when its RMS energy is within |vad_threshold_db| of the
clip's loudest frame and above an absolute floor (vad_abs_floor_db dBFS). The clip is cut from
the first to the last voiced frame, widened by vad_margin_seconds on each side. Silence inside
the utterance is kept: only the ends are trimmed.

    from edge.audio.vad import trim_silence
    speech, (start, end) = trim_silence(wave, Params())
"""
from __future__ import annotations

import numpy as np

from edge.params import Params


class SilenceError(ValueError):
    """The whole signal is below the VAD's absolute floor."""


def frame_energy_db(wave: np.ndarray, p: Params = Params()) -> np.ndarray:
    """(n_samples,) -> (n_frames,) RMS level in dBFS of 25 ms frames, hop 10 ms."""
    win = int(round(p.vad_frame_seconds * p.sample_rate))
    hop = int(round(p.vad_hop_seconds * p.sample_rate))
    if len(wave) < win:
        wave = np.pad(wave, (0, win - len(wave)))
    n = 1 + (len(wave) - win) // hop
    # mean of squares per frame via a cumulative sum: O(n) memory, no frame matrix
    c = np.concatenate([[0.0], np.cumsum(wave.astype(np.float64) ** 2)])
    starts = np.arange(n) * hop
    ms = (c[starts + win] - c[starts]) / win
    return 10.0 * np.log10(np.maximum(ms, 1e-12))


def voiced_span(wave: np.ndarray, p: Params = Params()) -> tuple[int, int] | None:
    """(start, end) sample indices of the speech, or None when the signal is silence."""
    db = frame_energy_db(wave, p)
    if db.size == 0 or db.max() < p.vad_abs_floor_db:
        return None
    voiced = np.flatnonzero((db > db.max() + p.vad_threshold_db) & (db > p.vad_abs_floor_db))
    hop = int(round(p.vad_hop_seconds * p.sample_rate))
    win = int(round(p.vad_frame_seconds * p.sample_rate))
    margin = int(round(p.vad_margin_seconds * p.sample_rate))
    start = max(0, voiced[0] * hop - margin)
    end = min(len(wave), voiced[-1] * hop + win + margin)
    return int(start), int(end)


def trim_silence(wave: np.ndarray, p: Params = Params(), source: str = "<signal>") -> tuple[np.ndarray, tuple[int, int]]:
    """Cut leading/trailing silence. Raises SilenceError (naming ``source``) for a silent signal."""
    span = voiced_span(wave, p)
    if span is None:
        raise SilenceError(f"{source}: silence only (no frame above {p.vad_abs_floor_db} dBFS)")
    return wave[span[0]:span[1]], span
