"""Small synthetic media files for the bad-input tests (written with PyAV; nothing downloaded)."""
from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np


def write_video(path: Path, seconds: float = 1.0, size: tuple[int, int] = (320, 240), fps: int = 15,
                audio_rate: int | None = 16000, video: bool = True, codec: str = "libx264",
                channels: int = 1) -> Path:
    """An mp4 (H.264 + AAC by default) with a moving square and a 220 Hz tone."""
    rng = np.random.default_rng(0)
    with av.open(str(path), "w") as c:
        vs = c.add_stream(codec, rate=fps) if video else None
        if vs is not None:
            vs.width, vs.height, vs.pix_fmt = size[0], size[1], "yuv420p"
        ast = c.add_stream("aac", rate=audio_rate) if audio_rate else None
        if ast is not None:
            ast.layout = "stereo" if channels == 2 else "mono"
        if vs is not None:
            for i in range(int(seconds * fps)):
                img = np.full((size[1], size[0], 3), 40, np.uint8)
                x = (i * 7) % max(1, size[0] - 40)
                img[20:60, x:x + 40] = 220
                f = av.VideoFrame.from_ndarray(img, format="rgb24")
                f.pts, f.time_base = i, Fraction(1, fps)
                for pkt in vs.encode(f):
                    c.mux(pkt)
            for pkt in vs.encode():
                c.mux(pkt)
        if ast is not None:
            n = int(seconds * audio_rate)
            t = np.arange(n) / audio_rate
            x = (0.3 * np.sin(2 * np.pi * 220 * t) + 0.01 * rng.standard_normal(n)).astype(np.float32)
            x = np.stack([x] * channels)                                    # (channels, n) planar
            step = 1024
            for s in range(0, n, step):
                f = av.AudioFrame.from_ndarray(np.ascontiguousarray(x[:, s:s + step]), format="fltp",
                                               layout=ast.layout.name)
                f.sample_rate, f.pts, f.time_base = audio_rate, s, Fraction(1, audio_rate)
                for pkt in ast.encode(f):
                    c.mux(pkt)
            for pkt in ast.encode():
                c.mux(pkt)
    return path


def write_wav(path: Path, samples: np.ndarray, rate: int) -> Path:
    """A float32 WAV (samples (n,) or (n, channels)); NaN/inf are written as they are."""
    x = np.asarray(samples, np.float32)
    x = x[:, None] if x.ndim == 1 else x
    with av.open(str(path), "w", format="wav") as c:
        s = c.add_stream("pcm_f32le", rate=rate)
        s.layout = "stereo" if x.shape[1] == 2 else "mono"
        f = av.AudioFrame.from_ndarray(np.ascontiguousarray(x.reshape(1, -1)), format="flt", layout=s.layout.name)
        f.sample_rate, f.pts = rate, 0
        for pkt in s.encode(f):
            c.mux(pkt)
        for pkt in s.encode():
            c.mux(pkt)
    return path


def tone(seconds: float, rate: int, hz: float = 220.0) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (0.3 * np.sin(2 * np.pi * hz * t)).astype(np.float32)
