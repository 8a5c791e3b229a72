"""Fundamental frequency (F0) of speech, and the per-speaker resampling factors of pitch normalisation.

Pitch normalisation (recipe field ``pitch_norm``, a research row of the speech ablation) plays every clip of a
speaker at one speed, so that the speaker's median F0 moves towards a common reference: a vocal-tract-length
normalisation by resampling. Speed scales F0 and the formants together, and F0 differs between speakers far more
than vocal-tract length does (about 1.7x between the median male and female RAVDESS voice, against 1.15-1.2x for
formants), so the factor is (reference / speaker median) ** gamma with gamma < 1, clipped to [0.8, 1.25].

    f0 = f0_track(wave)                                   # Hz per 10 ms frame, 0 where unvoiced
    factors = speaker_factors({actor: median_f0, ...}, gamma=0.5)
"""
from __future__ import annotations

import numpy as np

F0_MIN_HZ, F0_MAX_HZ = 60.0, 500.0
VOICING = 0.5            # normalised autocorrelation at the chosen lag needed to call a frame voiced
LOUD_DB = 35.0           # ... and a frame energy within this many dB of the clip's loudest frame
FACTOR_RANGE = (0.8, 1.25)
OCTAVE = 0.85            # a shorter lag wins when its peak is at least this fraction of the highest (octave errors)


def f0_track(wave: np.ndarray, sample_rate: int = 16000, hop_seconds: float = 0.010,
             window_seconds: float = 0.040) -> np.ndarray:
    """(n_samples,) -> (n_frames,) F0 in Hz per frame (hop 10 ms, 40 ms window), 0 where unvoiced.

    Normalised autocorrelation (computed by FFT, corrected for the Hann window's own autocorrelation); of its
    peaks between the lags of F0_MAX_HZ and F0_MIN_HZ the first within OCTAVE of the highest, refined by a
    parabola."""
    wave = np.asarray(wave, np.float64)
    hop, win = int(round(hop_seconds * sample_rate)), int(round(window_seconds * sample_rate))
    if wave.ndim != 1:
        raise ValueError(f"f0_track takes a mono waveform, got shape {wave.shape}")
    if len(wave) < win:
        wave = np.pad(wave, (0, win - len(wave)))
    n = 1 + (len(wave) - win) // hop
    frames = wave[np.arange(win)[None, :] + hop * np.arange(n)[:, None]]
    frames = frames - frames.mean(axis=1, keepdims=True)
    nfft = 1 << int(np.ceil(np.log2(2 * win)))
    hann = np.hanning(win)
    ac = np.fft.irfft(np.abs(np.fft.rfft(frames * hann, nfft)) ** 2, nfft)[:, :win]
    own = np.fft.irfft(np.abs(np.fft.rfft(hann, nfft)) ** 2, nfft)[:win]
    ac = ac / np.maximum(ac[:, :1], 1e-12) / np.maximum(own / own[0], 1e-3)
    lo, hi = int(sample_rate / F0_MAX_HZ), min(int(sample_rate / F0_MIN_HZ), win - 2)
    rows = np.arange(n)
    # the first local maximum within OCTAVE of the highest one: a periodic frame peaks as high at 2, 3 ... periods
    seg = ac[:, lo - 1:hi + 1]
    peak = (seg[:, 1:-1] > seg[:, :-2]) & (seg[:, 1:-1] >= seg[:, 2:])
    high = peak & (seg[:, 1:-1] >= OCTAVE * np.max(np.where(peak, seg[:, 1:-1], -np.inf), axis=1, keepdims=True))
    lag = lo + np.where(high.any(axis=1), high.argmax(axis=1), ac[:, lo:hi].argmax(axis=1))
    a, b, c = ac[rows, lag - 1], ac[rows, lag], ac[rows, lag + 1]
    curve = a - 2 * b + c
    shift = np.clip(0.5 * (a - c) / np.where(np.abs(curve) < 1e-9, -1e-9, curve), -1, 1)
    energy_db = 10 * np.log10((frames ** 2).mean(axis=1) + 1e-12)
    voiced = (b > VOICING) & (energy_db > energy_db.max() - LOUD_DB)
    return np.where(voiced, sample_rate / (lag + shift), 0.0)


def median_f0(waves: list[np.ndarray], sample_rate: int = 16000) -> float:
    """The median F0 over the voiced frames of all ``waves`` (one speaker's clips); NaN when none is voiced."""
    f0 = np.concatenate([f0_track(w, sample_rate) for w in waves]) if waves else np.zeros(0)
    voiced = f0[f0 > 0]
    return float(np.median(voiced)) if voiced.size else float("nan")


def speaker_factors(medians: dict, gamma: float, reference: float | None = None) -> dict:
    """Speed factor of each speaker: (reference / median) ** gamma, clipped to FACTOR_RANGE. ``reference``: the
    geometric mean of the speakers' medians by default. A speaker without voiced frames keeps speed 1."""
    known = {k: v for k, v in medians.items() if np.isfinite(v) and v > 0}
    if not known:
        return {k: 1.0 for k in medians}
    ref = reference if reference is not None else float(np.exp(np.mean(np.log(list(known.values())))))
    return {k: float(np.clip((ref / known[k]) ** gamma, *FACTOR_RANGE)) if k in known else 1.0 for k in medians}
