"""Read a video file's frames (with timestamps) and its audio track with PyAV.

    from edge.vision.video import iter_frames, read_audio
    for pts, frame in iter_frames("clip.flv", every_n=2):   # pts in s, frame (H, W, 3) uint8 RGB
        ...
    audio, sr = read_audio("clip.flv")                        # (n,) float32 mono, 16000 Hz

Works on any container/codec the bundled FFmpeg decodes (CREMA-D's FLV VP6 + MP3, H.264 +
AAC in MP4, ...). Timestamps are the container's presentation times in seconds, not rebased
to the first frame, so they share a time line with the audio track. Every failure (missing
file, corrupt bytes, no video/audio track, nothing decodable) raises ``VideoError``, whose
message names the file.
"""
from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import av
import av.error
import numpy as np

log = logging.getLogger(__name__)

SAMPLE_RATE = 16000  # Hz, the audio front end's rate (Params.sample_rate)


class VideoError(ValueError):
    """A video file cannot be read: missing, corrupt, or lacking the requested track."""


@dataclass(frozen=True)
class VideoInfo:
    path: str
    width: int            # px
    height: int           # px
    fps: float            # average frame rate, 0.0 if unknown
    duration_s: float     # container duration, 0.0 if unknown
    video_codec: str
    audio_codec: str | None  # None: no audio track


def _open(path: str | Path) -> av.container.InputContainer:
    try:
        return av.open(str(path), mode="r", metadata_errors="replace")
    except (av.error.FFmpegError, OSError) as e:
        raise VideoError(f"cannot open video {path}: {e}") from e


def _stream(container: av.container.InputContainer, kind: str, path: str | Path):
    streams = container.streams.video if kind == "video" else container.streams.audio
    if not streams:
        container.close()
        raise VideoError(f"{path}: no {kind} track")
    return streams[0]


def probe(path: str | Path) -> VideoInfo:
    """Size, frame rate, duration and codecs of a video file (no decoding)."""
    with _open(path) as container:
        video = _stream(container, "video", path)
        audio = container.streams.audio[0] if container.streams.audio else None
        rate = video.average_rate
        duration = container.duration / av.time_base if container.duration else 0.0
        return VideoInfo(
            path=str(path), width=video.codec_context.width, height=video.codec_context.height,
            fps=float(rate) if rate else 0.0, duration_s=float(duration),
            video_codec=video.codec_context.name,
            audio_codec=audio.codec_context.name if audio is not None else None,
        )


def iter_frames(path: str | Path, max_frames: int | None = None,
                every_n: int = 1) -> Iterator[tuple[float, np.ndarray]]:
    """Yield ``(pts_seconds, frame)`` with frame (H, W, 3) uint8 RGB.

    ``every_n``: keep decoded frames 0, n, 2n, ... (all frames are decoded; skipped ones are not
    converted). ``max_frames``: stop after this many yielded frames. The file is opened and its
    video track checked now; decoding errors and "no frame decoded" raise while iterating.
    """
    if every_n < 1:
        raise ValueError(f"every_n must be >= 1, got {every_n}")
    if max_frames is not None and max_frames < 1:
        raise ValueError(f"max_frames must be >= 1 or None, got {max_frames}")
    container = _open(path)
    stream = _stream(container, "video", path)
    return _frames(container, stream, path, max_frames, every_n)


def _frames(container, stream, path, max_frames, every_n) -> Iterator[tuple[float, np.ndarray]]:
    rate = float(stream.average_rate) if stream.average_rate else 0.0
    decoded = yielded = 0
    try:
        for frame in container.decode(stream):
            i, decoded = decoded, decoded + 1
            if i % every_n:
                continue
            if frame.pts is not None:
                pts = float(frame.pts * stream.time_base)
            else:  # no timestamp: fall back to the nominal frame rate
                pts = i / rate if rate else float(i)
            yield pts, frame.to_ndarray(format="rgb24")
            yielded += 1
            if max_frames is not None and yielded >= max_frames:
                return
    except av.error.FFmpegError as e:
        raise VideoError(f"{path}: cannot decode video after {decoded} frames: {e}") from e
    finally:
        container.close()
    if decoded == 0:
        raise VideoError(f"{path}: video track has no decodable frame")
    log.debug("%s: %d frames decoded, %d yielded", path, decoded, yielded)


def read_frames(path: str | Path, max_frames: int | None = None,
                every_n: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """All frames at once: pts (n,) float64 s and frames (n, H, W, 3) uint8 RGB."""
    pts, frames = zip(*iter_frames(path, max_frames=max_frames, every_n=every_n), strict=True)
    return np.asarray(pts, dtype=np.float64), np.stack(frames)


def read_audio(path: str | Path, sample_rate: int = SAMPLE_RATE) -> tuple[np.ndarray, int]:
    """The first audio track as (n,) float32 mono in [-1, 1] at ``sample_rate`` Hz.

    The audio front end's own loader (PyAV decode, channels averaged, soxr VHQ, as the shared
    RAVDESS 16 kHz files were made); its errors are re-raised as ``VideoError`` naming the file.
    """
    from edge.audio.io import AudioError, decode_audio, resample, to_mono
    try:
        wave, rate_in = decode_audio(path)
    except AudioError as e:
        raise VideoError(str(e)) from e
    audio = resample(to_mono(wave), rate_in, sample_rate)
    log.debug("%s: audio %d Hz -> %d Hz, %d samples", path, rate_in, sample_rate, audio.size)
    return audio, sample_rate
