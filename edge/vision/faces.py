"""Frames -> 60x60 grey face crops -> key faces.

    from edge.vision.faces import FaceExtractor, key_faces
    extractor = FaceExtractor()                      # MTCNN on edge/models, largest face
    faces, pts = extractor.extract(iter_frames("clip.flv"))   # (n, 60, 60) uint8, (n,) s
    keep = key_faces(faces, radius=4)                # indices into faces, one per window
    extractor.stats                                  # FaceStats(frames=67, with_face=67, ...)

A frame without a face is counted and skipped, never an error.
"""
from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import asdict, dataclass

import cv2
import numpy as np

from edge.params import Params
from edge.vision.mtcnn import MTCNN, FaceTracker

log = logging.getLogger(__name__)


@dataclass
class FaceStats:
    """Per-stream counters. ``multi_face`` counts frames where the detector ran and saw > 1 face."""

    frames: int = 0
    with_face: int = 0
    no_face: int = 0
    multi_face: int = 0

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


def crop_face(frame: np.ndarray, box: np.ndarray, size: int = Params().face_size,
              square: bool = True) -> np.ndarray:
    """Grey (size, size) uint8 crop of ``box`` (x1, y1, x2, y2 px) from an (H, W, 3) RGB frame.

    ``square``: grow the short side of the box to the long one about its centre first, so the
    face keeps its aspect ratio. Parts outside the frame are filled by replicating the border.
    Grey is ITU-R 601 luma (OpenCV RGB2GRAY); downscaling uses area averaging.
    """
    x1, y1, x2, y2 = (float(v) for v in box[:4])
    if square:
        side = max(x2 - x1, y2 - y1)
        cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
        x1, x2, y1, y2 = cx - side / 2, cx + side / 2, cy - side / 2, cy + side / 2
    ix1, iy1 = int(np.floor(x1)), int(np.floor(y1))
    ix2, iy2 = max(int(np.ceil(x2)), ix1 + 1), max(int(np.ceil(y2)), iy1 + 1)
    grey = frame if frame.ndim == 2 else cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY)
    h, w = grey.shape
    pad = (max(0, -iy1), max(0, iy2 - h), max(0, -ix1), max(0, ix2 - w))  # top bottom left right
    if any(pad):
        grey = cv2.copyMakeBorder(grey, *pad, cv2.BORDER_REPLICATE)
        ix1, ix2, iy1, iy2 = ix1 + pad[2], ix2 + pad[2], iy1 + pad[0], iy2 + pad[0]
    patch = grey[iy1:iy2, ix1:ix2]
    interp = cv2.INTER_AREA if patch.shape[0] > size else cv2.INTER_LINEAR
    return cv2.resize(patch, (size, size), interpolation=interp)


class FaceExtractor:
    """One face a frame: the largest detection, or the tracked one when a ``FaceTracker`` is given."""

    def __init__(self, detector: MTCNN | None = None, tracker: FaceTracker | None = None,
                 params: Params = Params(), square: bool = True):
        if detector is None and tracker is None:
            detector = MTCNN()
        self.detector = tracker.detector if tracker is not None else detector
        self.tracker, self.size, self.square = tracker, params.face_size, square
        self.stats = FaceStats()

    def __call__(self, frame: np.ndarray) -> np.ndarray | None:
        """(60, 60) uint8 grey face of one (H, W, 3) uint8 RGB frame, None if no face."""
        self.stats.frames += 1
        if self.tracker is not None:
            box = self.tracker.update(frame)
            dets = self.tracker.last_detections
        else:
            dets = self.detector.detect(frame)
            box = dets.boxes[dets.largest()] if len(dets) else None
        if dets is not None and len(dets) > 1:
            self.stats.multi_face += 1
        if box is None:
            self.stats.no_face += 1
            return None
        self.stats.with_face += 1
        return crop_face(frame, box, self.size, self.square)

    def extract(self, frames: Iterable[tuple[float, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
        """Faces of a ``(pts, frame)`` stream: (n, 60, 60) uint8 and their pts (n,) s."""
        faces, pts = [], []
        for t, frame in frames:
            face = self(frame)
            if face is not None:
                faces.append(face)
                pts.append(t)
        log.debug("faces: %s", self.stats)
        if not faces:
            return np.zeros((0, self.size, self.size), np.uint8), np.zeros(0)
        return np.stack(faces), np.asarray(pts, dtype=np.float64)


def key_faces(faces: np.ndarray, radius: int = Params().key_face_radius,
              unique: bool = False) -> np.ndarray:
    """Indices of the key faces of a (n, H, W) sequence, one per window, in order.

    The paper's rule: a window of 2r + 1 consecutive faces; keep the face with the least total
    L2 distance to the others in the window (the medoid; the earliest on a tie); shift the
    window by r; repeat until a window reaches the last face. Windows start at 0, r, 2r, ...;
    the last one is shortened to end at the last face (so every face is in some window), and
    fewer than 2r + 1 faces make one window of all of them. n = 0 gives no index. Overlapping
    windows may pick the same face: ``unique=True`` keeps only its first pick.
    """
    if radius < 1:
        raise ValueError(f"radius must be >= 1, got {radius}")
    n = len(faces)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    x = np.asarray(faces, dtype=np.float64).reshape(n, -1)  # (n, H*W)
    window = 2 * radius + 1
    keep: list[int] = []
    start = 0
    while start < n:
        end = min(start + window, n)
        w = x[start:end]
        dist = np.sqrt(((w[:, None, :] - w[None, :, :]) ** 2).sum(axis=-1))  # (k, k) L2, exact
        keep.append(start + int(np.argmin(dist.sum(axis=1))))
        if end == n:
            break
        start += radius
    idx = np.asarray(keep, dtype=np.int64)
    if unique and len(idx):
        _, first = np.unique(idx, return_index=True)
        idx = idx[np.sort(first)]
    return idx


def _medoid(window: np.ndarray) -> int:
    x = np.asarray(window, dtype=np.float64).reshape(len(window), -1)
    dist = np.sqrt(((x[:, None, :] - x[None, :, :]) ** 2).sum(axis=-1))
    return int(np.argmin(dist.sum(axis=1)))


class KeyFaceStream:
    """``key_faces`` on a live stream, holding at most one window (2r + 1 faces).

    ``push(t, face)`` returns the key faces (t, face) completed by this face (0 or 1); ``flush()``
    returns the last, shortened window's key face at the end of a stream. Same picks as the offline
    ``key_faces`` on the whole sequence.
    """

    def __init__(self, radius: int = Params().key_face_radius):
        if radius < 1:
            raise ValueError(f"radius must be >= 1, got {radius}")
        self.radius, self.window = radius, 2 * radius + 1
        self._buf: list[tuple[float, np.ndarray]] = []     # faces from the current window start on
        self._ended_at_last = False                      # the last full window ended at the newest face

    def push(self, t: float, face: np.ndarray) -> list[tuple[float, np.ndarray]]:
        self._buf.append((t, face))
        self._ended_at_last = False
        if len(self._buf) < self.window:
            return []
        k = _medoid(np.stack([f for _, f in self._buf]))
        key = self._buf[k]
        self._buf = self._buf[self.radius:]              # shift by r
        self._ended_at_last = True
        return [key]

    def flush(self) -> list[tuple[float, np.ndarray]]:
        out = []
        if self._buf and not self._ended_at_last:
            out = [self._buf[_medoid(np.stack([f for _, f in self._buf]))]]
        self._buf, self._ended_at_last = [], False
        return out
