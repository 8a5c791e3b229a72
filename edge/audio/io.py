"""Load any audio file (wav, flac, mp3, the audio track of a video) as 16 kHz mono float32.

Decoding is PyAV (FFmpeg), resampling soxr (VHQ); channels are averaged to mono.

    wave = load_audio("03-01-05-02-01-02-12.wav")   # (n,) float32 in [-1, 1] at 16 kHz
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from edge.params import Params

log = logging.getLogger(__name__)


class AudioError(ValueError):
    """An audio file is missing, unreadable, empty or holds non-finite samples."""


def resample(wave: np.ndarray, rate_in: int, rate_out: int) -> np.ndarray:
    """(n,) or (n, channels) float -> resampled float32 with soxr VHQ."""
    if rate_in == rate_out:
        return wave.astype(np.float32, copy=False)
    import soxr
    return soxr.resample(wave.astype(np.float32, copy=False), rate_in, rate_out, quality="VHQ").astype(np.float32)


def to_mono(wave: np.ndarray) -> np.ndarray:
    """(n, channels) -> (n,) by averaging channels."""
    return wave if wave.ndim == 1 else wave.mean(axis=1, dtype=np.float32)


def decode_audio(path: str | Path) -> tuple[np.ndarray, int]:
    """Decode the first audio stream: returns ((n, channels) float32, sample_rate).

    Every sample format is converted to planar float by PyAV's resampler (rate and layout kept):
    channels are averaged later by ``to_mono``, not by swresample's down-mix matrix.
    """
    import av
    import av.error
    path = Path(path)
    if not path.is_file():
        raise AudioError(f"{path}: no such file")
    if path.stat().st_size == 0:
        raise AudioError(f"{path}: empty file (0 bytes)")
    chunks: list[np.ndarray] = []
    rate = 0
    try:
        with av.open(str(path), metadata_errors="replace") as container:
            if not container.streams.audio:
                raise AudioError(f"{path}: no audio track")
            stream = container.streams.audio[0]
            to_float = av.AudioResampler(format="fltp")
            for frame in container.decode(stream):
                rate = frame.sample_rate or rate
                chunks.extend(f.to_ndarray() for f in to_float.resample(frame))   # (channels, n)
            chunks.extend(f.to_ndarray() for f in to_float.resample(None))      # flush
    except AudioError:
        raise
    except (av.error.FFmpegError, ValueError, OSError) as e:
        raise AudioError(f"{path}: cannot decode audio ({e})") from e
    if not chunks or sum(c.shape[1] for c in chunks) == 0:
        raise AudioError(f"{path}: no audio samples decoded")
    if rate <= 0:
        raise AudioError(f"{path}: unknown sample rate")
    return np.concatenate(chunks, axis=1).T.astype(np.float32, copy=False), rate


def load_audio(path: str | Path, p: Params = Params()) -> np.ndarray:
    """Any file, any rate, any channel count -> (n,) float32 mono at p.sample_rate.

    Raises AudioError naming the file for missing, empty, corrupt or non-finite input.
    """
    wave, rate = decode_audio(path)
    if not np.all(np.isfinite(wave)):
        raise AudioError(f"{path}: holds NaN or infinite samples")
    mono = to_mono(wave)
    out = resample(mono, rate, p.sample_rate)
    log.debug("%s: %d Hz x %d ch, %.2f s -> %d samples at %d Hz",
              path, rate, wave.shape[1], len(mono) / rate, len(out), p.sample_rate)
    return out
