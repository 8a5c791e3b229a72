"""Capture sources of edge-run. Each yields ``("video", t, rgb)`` and/or ``("audio", t, samples)``.

- ``VideoFileSource``: one pass of PyAV over a file (audio + video demuxed together), audio to 16 kHz
  mono with soxr's streaming resampler (the training front end's resampler); as fast as possible, or
  paced like a live source with ``realtime``.
- ``CameraSource`` (OpenCV / V4L2) and ``PiCameraSource`` (picamera2's low-resolution stream): a
  capture thread writes into a one-slot mailbox; a frame not taken before the next one arrives is
  dropped and counted, so no queue can grow. A camera that fails is reopened with backoff.
- ``MicSource`` (pyaudio, 16 kHz mono): the callback appends into a bounded ring; overflows are
  counted.

Nothing is ever written to disk.
"""
from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from edge.params import Params
from edge.vision.video import VideoError

log = logging.getLogger(__name__)


class SourceError(RuntimeError):
    """A capture device cannot be opened or stopped delivering."""


class VideoFileSource:
    def __init__(self, path: str | Path, use_video: bool = True, use_audio: bool = True, realtime: bool = False,
                 p: Params = Params(), max_side: int | None = 640):
        """``max_side``: frames larger than this are scaled down while decoding (the loop works at 640 px).
        ``realtime``: paced like a live source; video frames more than ``max_lag_s`` late are dropped (counted)."""
        self.path, self.realtime, self.p, self.max_side = Path(path), realtime, p, max_side
        self.max_lag_s, self.dropped = 0.2, 0
        if not self.path.is_file():
            raise VideoError(f"video file not found: {self.path}")
        import av
        import av.error
        try:
            self._c = av.open(str(self.path), mode="r", metadata_errors="replace")
        except (av.error.FFmpegError, OSError, ValueError) as e:
            raise VideoError(f"cannot open video {self.path}: {e}") from e
        self.has_video = bool(self._c.streams.video) and use_video
        self.has_audio = bool(self._c.streams.audio) and use_audio
        if not self.has_video and not self.has_audio:
            self._c.close()
            wanted = " and ".join(k for k, u in (("video", use_video), ("audio", use_audio)) if u)
            raise VideoError(f"{self.path}: no {wanted} track")

    def __iter__(self) -> Iterator[tuple[str, float, np.ndarray]]:
        import av
        import av.error
        import soxr
        streams = {}
        if self.has_video:
            streams["video"] = 0
        if self.has_audio:
            streams["audio"] = 0
        res = None
        to_float = av.AudioResampler(format="fltp") if self.has_audio else None
        audio_t = None
        wall0, media0 = time.monotonic(), None
        n_video = n_audio = 0
        try:
            for frame in self._c.decode(**streams):
                t = float(frame.time) if frame.time is not None else 0.0
                if self.realtime:
                    media0 = t if media0 is None else media0
                    lag = (t - media0) - (time.monotonic() - wall0)
                    if lag > 0:
                        time.sleep(lag)
                    elif lag < -self.max_lag_s and not isinstance(frame, av.AudioFrame):
                        self.dropped += 1                     # behind a live pace: skip video, never audio
                        continue
                if isinstance(frame, av.AudioFrame):
                    for f in to_float.resample(frame):
                        x = f.to_ndarray().astype(np.float32)          # (channels, n) planar float
                        x = x.mean(axis=0) if x.ndim == 2 else x
                        if res is None:
                            res = soxr.ResampleStream(f.sample_rate, self.p.sample_rate, 1, dtype="float32",
                                                      quality="VHQ")
                            audio_t = t
                        y = res.resample_chunk(x)
                        if len(y):
                            yield "audio", audio_t, y
                            audio_t += len(y) / self.p.sample_rate
                            n_audio += len(y)
                else:
                    n_video += 1
                    w, h = frame.width, frame.height
                    if self.max_side and max(w, h) > self.max_side:     # scale in swscale, with the conversion
                        k = self.max_side / max(w, h)
                        yield "video", t, frame.to_ndarray(width=round(w * k) // 2 * 2, height=round(h * k) // 2 * 2,
                                                           format="rgb24", interpolation="AREA")
                    else:
                        yield "video", t, frame.to_ndarray(format="rgb24")
            if res is not None:
                y = res.resample_chunk(np.zeros(0, np.float32), last=True)
                if len(y):
                    yield "audio", audio_t, y
                    n_audio += len(y)
        except (av.error.FFmpegError, ValueError) as e:
            raise VideoError(f"{self.path}: cannot decode after {n_video} frames / {n_audio} samples: {e}") from e
        finally:
            self._c.close()
        if n_video == 0 and n_audio == 0:
            raise VideoError(f"{self.path}: nothing decodable (no frame, no audio sample)")


class _Mailbox:
    """One slot: put() replaces an untaken item (counted as dropped)."""

    def __init__(self):
        self._item, self._lock, self._event = None, threading.Lock(), threading.Event()
        self.dropped = 0

    def put(self, item) -> None:
        with self._lock:
            if self._item is not None:
                self.dropped += 1
            self._item = item
            self._event.set()

    def take(self, timeout: float):
        if not self._event.wait(timeout):
            return None
        with self._lock:
            item, self._item = self._item, None
            self._event.clear()
            return item


class CameraSource:
    """OpenCV camera N (V4L2 on Linux) in a capture thread; retries with backoff when it fails."""

    def __init__(self, index: int | str, width: int = 640, height: int = 480, fps: float = 15.0,
                 backoff_s: tuple[float, float] = (0.5, 10.0), opener=None):
        self.index, self.size, self.fps, self.backoff = index, (width, height), fps, backoff_s
        self._opener = opener or self._open_cv
        self.box, self.status = _Mailbox(), "starting"
        self.failures = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="camera", daemon=True)

    @property
    def dropped(self) -> int:
        return self.box.dropped

    def _open_cv(self):
        import cv2
        cap = cv2.VideoCapture(self.index)
        if not cap.isOpened():
            raise SourceError(f"camera {self.index} cannot be opened")
        cap.set(cv2.CAP_PROP_FRAME_WIDTH, self.size[0])
        cap.set(cv2.CAP_PROP_FRAME_HEIGHT, self.size[1])
        cap.set(cv2.CAP_PROP_FPS, self.fps)

        def read():
            ok, bgr = cap.read()
            if not ok:
                raise SourceError(f"camera {self.index} returned no frame")
            return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
        return read, cap.release

    def start(self) -> "CameraSource":
        self._thread.start()
        return self

    def _run(self) -> None:
        delay = self.backoff[0]
        while not self._stop.is_set():
            try:
                read, close = self._opener()
            except Exception as e:  # device missing / busy: retry with backoff
                self.failures += 1
                self.status = f"camera unavailable ({e}); retry in {delay:.1f} s"
                log.warning(self.status)
                self._stop.wait(delay)
                delay = min(delay * 2, self.backoff[1])
                continue
            self.status, delay = "ok", self.backoff[0]
            try:
                while not self._stop.is_set():
                    self.box.put(("video", time.monotonic(), read()))
            except Exception as e:  # unplugged mid-run
                self.failures += 1
                self.status = f"camera lost ({e}); reopening"
                log.warning(self.status)
            finally:
                close()

    def read(self, timeout: float = 0.5):
        return self.box.take(timeout)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2.0)


class PiCameraSource(CameraSource):
    """picamera2's low-resolution ("lores") stream, converted to RGB."""

    def __init__(self, width: int = 640, height: int = 480, fps: float = 15.0):
        try:
            import picamera2  # noqa: F401
        except ImportError:
            raise SourceError("--picamera needs picamera2, which only works on a Raspberry Pi: "
                              "sudo apt install python3-picamera2 (and a venv with --system-site-packages)") from None
        super().__init__("picamera", width, height, fps, opener=self._open_pi)

    def _open_pi(self):
        import cv2
        from picamera2 import Picamera2
        cam = Picamera2()
        cfg = cam.create_video_configuration(main={"size": (1280, 720)}, lores={"size": self.size, "format": "YUV420"})
        cam.configure(cfg)
        cam.start()

        def read():
            yuv = cam.capture_array("lores")
            return cv2.cvtColor(yuv, cv2.COLOR_YUV420p2RGB)
        return read, cam.stop


class MicSource:
    """pyaudio input at 16 kHz mono float32; the callback fills a bounded ring (overflow counted)."""

    def __init__(self, device: int | None = None, p: Params = Params(), chunk_s: float = 0.1, max_s: float = 3.0):
        try:
            import pyaudio
        except ImportError:
            raise SourceError("--mic needs pyaudio: sudo apt install python3-pyaudio (or portaudio19-dev, then "
                              "pip install pyaudio)") from None
        self.p, self.device = p, device
        self.chunk = int(chunk_s * p.sample_rate)
        self._q: deque[tuple[float, np.ndarray]] = deque(maxlen=max(1, int(max_s / chunk_s)))
        self.overflows, self.status, self.errors = 0, "starting", 0
        self._pa = pyaudio.PyAudio()
        try:
            self._stream = self._open()
        except OSError as e:
            self._pa.terminate()
            raise SourceError(f"microphone {device if device is not None else '(default)'} cannot be opened: "
                              f"{e}") from e
        self.status = "ok"

    def _open(self):
        import pyaudio
        return self._pa.open(format=pyaudio.paFloat32, channels=1, rate=self.p.sample_rate, input=True,
                             input_device_index=self.device, frames_per_buffer=self.chunk,
                             stream_callback=self._callback)

    def _callback(self, data, frames, time_info, flags):
        import pyaudio
        if len(self._q) == self._q.maxlen:
            self.overflows += 1
        self._q.append((time.monotonic() - frames / self.p.sample_rate, np.frombuffer(data, np.float32).copy()))
        return None, pyaudio.paContinue

    def read(self) -> list[tuple[str, float, np.ndarray]]:
        """Chunks captured since the last call; raises SourceError while the stream is down (and
        tries to reopen it at most once a second)."""
        if not self._stream.is_active():
            self.status = "microphone stream stopped"
            now = time.monotonic()
            if now - getattr(self, "_last_reopen", 0.0) > 1.0:
                self._last_reopen = now
                try:
                    self._stream.close()
                    self._stream = self._open()
                    self.status = "ok"
                except OSError as e:
                    raise SourceError(f"microphone {self.device}: {e}") from e
            else:
                raise SourceError("microphone stream stopped")
        out = []
        while self._q:
            t, x = self._q.popleft()
            out.append(("audio", t, x))
        return out

    def stop(self) -> None:
        try:
            self._stream.stop_stream()
            self._stream.close()
        finally:
            self._pa.terminate()
