"""YAMNet-compatible log-mel front end in numpy (the reference on the device).

waveform (16 kHz mono float32) -> pad like YAMNet -> frames (400, hop 160) x periodic Hann
-> |rfft 512| (257 bins) -> HTK mel 64 bands 125-7500 Hz -> log(mel + 0.001)
-> patches of 96 frames with a hop of Params.patch_hop_frames.

    from edge.params import Params
    from edge.audio.features import waveform_to_patches
    patches = waveform_to_patches(wave, Params())   # (n_patches, 96, 64) float32
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np

from edge.params import Params

_MEL_BREAK_HZ = 700.0
_MEL_HIGH_Q = 1127.0


def hertz_to_mel(hz: np.ndarray) -> np.ndarray:
    """HTK mel scale, as tf.signal / YAMNet: 1127 ln(1 + f / 700)."""
    return _MEL_HIGH_Q * np.log1p(np.asarray(hz, np.float64) / _MEL_BREAK_HZ)


@lru_cache(maxsize=8)
def mel_matrix(p: Params = Params()) -> np.ndarray:
    """(257, 64) float32 mel weights, identical in construction to tf.signal.linear_to_mel_weight_matrix."""
    n_bins = p.spectrogram_bins
    nyquist = p.sample_rate / 2.0
    linear_hz = np.linspace(0.0, nyquist, n_bins)[1:]            # bin 0 (DC) gets no weight
    spec_mel = hertz_to_mel(linear_hz)[:, None]                   # (256, 1)
    edges = np.linspace(hertz_to_mel(p.mel_min_hz), hertz_to_mel(p.mel_max_hz), p.mel_bands + 2)
    lower, center, upper = edges[:-2], edges[1:-1], edges[2:]     # (64,) each
    lower_slopes = (spec_mel - lower) / (center - lower)
    upper_slopes = (upper - spec_mel) / (upper - center)
    weights = np.maximum(0.0, np.minimum(lower_slopes, upper_slopes))
    weights = np.concatenate([np.zeros((1, p.mel_bands)), weights], axis=0)
    m = weights.astype(np.float32)
    m.setflags(write=False)
    return m


@lru_cache(maxsize=8)
def hann_window(n: int) -> np.ndarray:
    """Periodic Hann window of n samples (tf.signal.hann_window default)."""
    w = (0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(n) / n)).astype(np.float32)
    w.setflags(write=False)
    return w


@lru_cache(maxsize=8)
def dft_matrices(p: Params = Params()) -> tuple[np.ndarray, np.ndarray]:
    """Real and imaginary DFT matrices, each (400, 257) float32: frame @ m = rfft(frame, 512).

    The frame is implicitly zero-padded from 400 to 512 samples.
    """
    n = np.arange(p.stft_window_samples)[:, None]
    k = np.arange(p.spectrogram_bins)[None, :]
    ang = 2.0 * np.pi * n * k / p.fft_length
    re, im = np.cos(ang).astype(np.float32), (-np.sin(ang)).astype(np.float32)
    re.setflags(write=False)
    im.setflags(write=False)
    return re, im


def pad_waveform(wave: np.ndarray, p: Params = Params()) -> np.ndarray:
    """Zero-pad like YAMNet: at least one patch (15600 samples), then to a whole patch hop.

    A clip shorter than one patch is padded with silence to one full patch (as YAMNet does).
    """
    min_samples = p.patch_samples
    hop = int(round(p.patch_hop_seconds * p.sample_rate))
    n = len(wave)
    pad = max(0, min_samples - n)
    n_after_first = max(n, min_samples) - min_samples
    hops = -(-n_after_first // hop)  # ceil
    pad += hop * hops - n_after_first
    return np.pad(wave.astype(np.float32, copy=False), (0, pad))


def frame(x: np.ndarray, length: int, hop: int) -> np.ndarray:
    """(n,) -> (1 + (n - length) // hop, length) view; no padding at the end (tf.signal.frame)."""
    n_frames = 1 + (len(x) - length) // hop
    if n_frames < 1:
        return np.zeros((0, length), x.dtype)
    return np.lib.stride_tricks.as_strided(
        x, shape=(n_frames, length), strides=(x.strides[0] * hop, x.strides[0]), writeable=False)


def windowed_frames(wave: np.ndarray, p: Params = Params()) -> np.ndarray:
    """(n_samples,) -> (n_frames, 400) framed, Hann-windowed float32."""
    frames = frame(np.ascontiguousarray(wave, np.float32), p.stft_window_samples, p.stft_hop_samples)
    return frames * hann_window(p.stft_window_samples)


def log_mel(wave: np.ndarray, p: Params = Params()) -> np.ndarray:
    """(n_samples,) float waveform at p.sample_rate -> (n_frames, 64) float32 log-mel (no padding)."""
    wf = windowed_frames(wave, p)                                   # (n_frames, 400)
    mag = np.abs(np.fft.rfft(wf, n=p.fft_length, axis=1))          # (n_frames, 257)
    mel = mag.astype(np.float32) @ mel_matrix(p)                   # (n_frames, 64)
    return np.log(mel + p.log_offset).astype(np.float32)


def patches_from_log_mel(lm: np.ndarray, p: Params = Params(), hop_frames: int | None = None) -> np.ndarray:
    """(n_frames, 64) -> (n_patches, 96, 64) with a hop of hop_frames (default p.patch_hop_frames)."""
    hop = p.patch_hop_frames if hop_frames is None else int(hop_frames)
    if hop < 1:
        raise ValueError(f"patch hop must be >= 1 frame, got {hop}")
    n = 1 + (len(lm) - p.patch_frames) // hop if len(lm) >= p.patch_frames else 0
    if n < 1:
        return np.zeros((0, p.patch_frames, p.mel_bands), np.float32)
    idx = np.arange(n)[:, None] * hop + np.arange(p.patch_frames)[None, :]
    return lm[idx]


def waveform_to_log_mel(wave: np.ndarray, p: Params = Params()) -> np.ndarray:
    """YAMNet's padding then log-mel: (n_samples,) -> (n_frames >= 96, 64)."""
    return log_mel(pad_waveform(wave, p), p)


def waveform_to_patches(wave: np.ndarray, p: Params = Params()) -> np.ndarray:
    """(n_samples,) 16 kHz mono -> (n_patches >= 1, 96, 64) float32 log-mel patches."""
    return patches_from_log_mel(waveform_to_log_mel(wave, p), p)
