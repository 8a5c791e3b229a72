"""MTCNN face detector in numpy on the ``mtcnn`` package's nets exported to TFLite.

    from edge.vision.mtcnn import MTCNN, FaceTracker
    detector = MTCNN(min_face_size=20)                 # edge/models/mtcnn_{p,r,o}net.tflite
    faces = detector.detect(frame)                     # frame (H, W, 3) uint8 RGB
    faces.boxes, faces.scores, faces.landmarks         # (n, 4) x1 y1 x2 y2 px, (n,), (n, 5, 2) px

The cascade mirrors ``mtcnn`` 1.0.0 (``MTCNN().detect_faces``) step by step, so the boxes
match the package's to float precision: input normalised as (x - 127.5) / 128 in RGB order,
the package's pyramid (count from the short side, first scale 12 / min_face_size, factor
0.709, sizes truncated), area resampling (OpenCV INTER_AREA == TF AREA for downscaling),
P-net boxes regressed at each scale before NMS, the package's one-pass NMS (a box is dropped
if any higher-scored box overlaps it, suppressed or not), un-rounded squaring, bilinear
crop-and-resize with TF's sampling grid and zero (= grey) fill outside the frame, boxes clipped
to the frame at the end (landmarks are not). Differences, on purpose: a pyramid level too
small for P-net (< 11 px, only when min_face_size > ~24) is skipped, where the package raises
internally and returns no face at all; for min_face_size < 12 the first levels are upscaled
with OpenCV's INTER_AREA (bilinear), not TF's AREA.

Speed options: ``min_face_size`` (fewer, smaller pyramid levels), ``downscale`` (detect on a
downscaled frame, boxes mapped back) and ``FaceTracker`` (detect every N frames, track the face
by template matching in between).
"""
from __future__ import annotations

import logging
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from edge.runtime import Backend, load_model

log = logging.getLogger(__name__)

MODEL_DIR = Path(__file__).resolve().parent.parent / "models"
NET_FILES = {"pnet": "mtcnn_pnet.tflite", "rnet": "mtcnn_rnet.tflite", "onet": "mtcnn_onet.tflite"}
PNET_STRIDE = 2       # px, P-net output cell -> input offset
PNET_CELL = 12        # px, P-net receptive field
PNET_MIN_INPUT = 11   # px, smallest side P-net's valid convs accept
LANDMARKS = ("left_eye", "right_eye", "nose", "mouth_left", "mouth_right")


@dataclass(frozen=True)
class Detections:
    """Faces found in one frame, best score first."""

    boxes: np.ndarray      # (n, 4) float64 x1, y1, x2, y2, px in the input frame
    scores: np.ndarray     # (n,) O-net face probability
    landmarks: np.ndarray  # (n, 5, 2) x, y px, in LANDMARKS order

    def __len__(self) -> int:
        return len(self.scores)

    @property
    def areas(self) -> np.ndarray:
        """(n,) box areas, px^2."""
        return (self.boxes[:, 2] - self.boxes[:, 0]) * (self.boxes[:, 3] - self.boxes[:, 1])

    def largest(self) -> int | None:
        """Index of the largest box, None if there is no face."""
        return int(np.argmax(self.areas)) if len(self) else None

    @staticmethod
    def empty() -> Detections:
        return Detections(np.zeros((0, 4)), np.zeros(0), np.zeros((0, 5, 2)))


class _Net:
    """One TFLite net, one interpreter per input shape (built once, reused: no re-allocation)."""

    def __init__(self, path: Path, threads: int, backend: str, max_shapes: int = 32):
        self.path, self.threads, self.backend, self.max_shapes = path, threads, backend, max_shapes
        self._models: OrderedDict[tuple[int, ...], Backend] = OrderedDict()
        self._models[()] = load_model(path, backend=backend, threads=threads)  # fail early

    def __call__(self, x: np.ndarray) -> dict[int, np.ndarray]:
        """Outputs keyed by their last dimension (unique per MTCNN net)."""
        shape = tuple(x.shape)
        model = self._models.get(shape)
        if model is None:
            model = self._models.pop(()) if () in self._models else \
                load_model(self.path, backend=self.backend, threads=self.threads)
            model.resize_input(shape)
            self._models[shape] = model
            while len(self._models) > self.max_shapes:
                self._models.popitem(last=False)
        else:
            self._models.move_to_end(shape)
        out = model.predict({model.input_names[0]: x})
        return {v.shape[-1]: v for v in out.values()}


class MTCNN:
    """The three-stage MTCNN cascade on TFLite nets; ``detect(frame)`` -> ``Detections``."""

    def __init__(self, model_dir: str | Path = MODEL_DIR, min_face_size: float = 20,
                 scale_factor: float = 0.709, thresholds: tuple[float, float, float] = (0.6, 0.7, 0.8),
                 downscale: float = 1.0, threads: int = 1, backend: str = "litert",
                 batch_buckets: bool = True):
        """``min_face_size`` px in the (downscaled) detection frame; ``downscale`` in (0, 1]:
        detect on a frame resized by this factor (faces smaller than min_face_size / downscale
        px in the original frame are missed). ``batch_buckets``: pad R-/O-net batches to a power
        of two so that a few interpreters serve every count."""
        if not 0 < downscale <= 1:
            raise ValueError(f"downscale must be in (0, 1], got {downscale}")
        if min_face_size <= 0 or not 0 < scale_factor < 1:
            raise ValueError(f"bad pyramid: min_face_size={min_face_size}, scale_factor={scale_factor}")
        model_dir = Path(model_dir)
        self.pnet, self.rnet, self.onet = (_Net(model_dir / NET_FILES[k], threads, backend)
                                           for k in ("pnet", "rnet", "onet"))
        self.min_face_size, self.scale_factor = float(min_face_size), float(scale_factor)
        self.thresholds, self.downscale, self.batch_buckets = thresholds, float(downscale), batch_buckets
        self.nms_pnet = (0.5, 0.7)  # per scale, across scales (IoU over union)
        self.nms_rnet = 0.7         # union
        self.nms_onet = 0.7         # IoU over the smaller box ("min")

    # ----- public -----
    def detect(self, image: np.ndarray) -> Detections:
        """Faces in one (H, W, 3) uint8 RGB frame, boxes/landmarks in its pixel coordinates."""
        if image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"expected an (H, W, 3) RGB frame, got shape {image.shape}")
        frame = image
        if self.downscale < 1:
            h, w = image.shape[:2]
            size = (max(1, round(w * self.downscale)), max(1, round(h * self.downscale)))
            frame = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
        x = (frame.astype(np.float32) - 127.5) / 128.0  # (H, W, 3) in [-1, 1]
        boxes = self._stage_p(x)
        if len(boxes):
            boxes = self._stage_r(x, boxes)
        if not len(boxes):
            return Detections.empty()
        boxes = self._stage_o(x, boxes)  # (n, 15): x1 y1 x2 y2 score, 5 landmark x, 5 landmark y
        if not len(boxes):
            return Detections.empty()
        h, w = x.shape[:2]
        boxes[:, [0, 2]] = np.clip(boxes[:, [0, 2]], 0, w - 1)  # package: fit_to_image=True
        boxes[:, [1, 3]] = np.clip(boxes[:, [1, 3]], 0, h - 1)
        landmarks = np.stack([boxes[:, 5:10], boxes[:, 10:15]], axis=-1)  # (n, 5, 2)
        if self.downscale < 1:
            sx, sy = image.shape[1] / w, image.shape[0] / h
            boxes[:, [0, 2]] *= sx
            boxes[:, [1, 3]] *= sy
            landmarks = landmarks * (sx, sy)
        return Detections(boxes[:, :4].copy(), boxes[:, 4].copy(), landmarks)

    def scales(self, height: int, width: int) -> np.ndarray:
        """Pyramid scales for a frame, the package's formula; levels P-net can't take dropped."""
        return pyramid_scales(height, width, self.min_face_size, self.scale_factor)

    # ----- stages; rows are x1 y1 x2 y2 score [landmarks], float64 like the package -----
    def _stage_p(self, x: np.ndarray) -> np.ndarray:
        h, w = x.shape[:2]
        per_scale = []
        for scale in self.scales(h, w):
            hs, ws = (np.asarray([h, w]) * scale).astype(int)  # TF truncates the float size
            xs = cv2.resize(x, (int(ws), int(hs)), interpolation=cv2.INTER_AREA)
            out = self.pnet(xs[None])
            b = pnet_boxes(out[4][0], out[2][0], self.thresholds[0])
            b[:, :4] /= scale
            per_scale.append(b[nms(b, self.nms_pnet[0], "union")])
        if not per_scale:
            return np.zeros((0, 5))
        b = sort_by_score(np.concatenate(per_scale, axis=0))
        return square(b[nms(b, self.nms_pnet[1], "union")])

    def _stage_r(self, x: np.ndarray, boxes: np.ndarray) -> np.ndarray:
        out = self._batched(self.rnet, crop_and_resize(x, boxes, 24))
        boxes = boxes.copy()
        boxes[:, 4] = out[2][:, 1]
        boxes = regress(boxes, out[4])
        boxes = boxes[boxes[:, 4] > self.thresholds[1]]
        boxes = sort_by_score(boxes)
        return square(boxes[nms(boxes, self.nms_rnet, "union")])

    def _stage_o(self, x: np.ndarray, boxes: np.ndarray) -> np.ndarray:
        out = self._batched(self.onet, crop_and_resize(x, boxes, 48))
        lm = out[10].astype(np.float64)  # (n, 10) x1..x5, y1..y5 relative to the box
        w = boxes[:, 2:3] - boxes[:, 0:1] + 1
        h = boxes[:, 3:4] - boxes[:, 1:2] + 1
        lm = np.concatenate([w * lm[:, 0:5] + boxes[:, 0:1] - 1,
                             h * lm[:, 5:10] + boxes[:, 1:2] - 1], axis=1)
        boxes = boxes.copy()
        boxes[:, 4] = out[2][:, 1]
        boxes = np.concatenate([regress(boxes, out[4]), lm], axis=1)
        boxes = boxes[boxes[:, 4] > self.thresholds[2]]
        boxes = sort_by_score(boxes)
        return boxes[nms(boxes, self.nms_onet, "min")]

    def _batched(self, net: _Net, patches: np.ndarray) -> dict[int, np.ndarray]:
        n = len(patches)
        if not self.batch_buckets:
            return net(patches)
        bucket = 1 << max(0, (n - 1).bit_length())
        padded = np.zeros((bucket,) + patches.shape[1:], np.float32)
        padded[:n] = patches
        return {k: v[:n] for k, v in net(padded).items()}


# ----- numpy mirrors of mtcnn.utils (boxes as rows x1 y1 x2 y2 score ...) -----
def pyramid_scales(height: int, width: int, min_face_size: float, scale_factor: float = 0.709,
                   min_size: int = PNET_CELL) -> np.ndarray:
    """mtcnn's ``build_scale_pyramid``, minus levels whose short side is < 11 px."""
    min_dim = min(width, height)
    count = round(-((np.log(min_dim / min_size) / np.log(scale_factor)) + 1))
    scales = (min_size / min_face_size) * scale_factor ** np.arange(max(count, 0))
    sizes = (np.asarray([height, width])[None] * scales[:, None]).astype(int)
    return scales[sizes.min(axis=1) >= PNET_MIN_INPUT]


def pnet_boxes(reg: np.ndarray, prob: np.ndarray, threshold: float) -> np.ndarray:
    """P-net maps (h, w, 4) offsets and (h, w, 2) softmax -> (k, 5) boxes at this scale, best first."""
    ys, xs = np.where(prob[:, :, 1] > threshold)
    r = reg[ys, xs].T.astype(np.float64)  # (4, k)
    x1, y1 = xs * PNET_STRIDE + 1, ys * PNET_STRIDE + 1
    x2, y2 = xs * PNET_STRIDE + PNET_CELL, ys * PNET_STRIDE + PNET_CELL
    size = PNET_CELL - 1  # the package's (x2 - x1) of the cell
    b = np.stack([x1 + r[0] * size, y1 + r[1] * size, x2 + r[2] * size, y2 + r[3] * size,
                  prob[ys, xs, 1]], axis=1).astype(np.float64)
    return sort_by_score(b)


def sort_by_score(boxes: np.ndarray) -> np.ndarray:
    """Descending score, with the package's exact tie order (reversed argsort)."""
    return boxes[np.argsort(boxes[:, 4])[::-1]]


def nms(boxes: np.ndarray, threshold: float, method: str = "union", chunk: int = 512) -> np.ndarray:
    """Indices kept by mtcnn's one-pass NMS: box i goes if any box j < i overlaps it > threshold.

    Unlike greedy NMS a suppressed box still suppresses later ones. Rows must be sorted best
    first. Overlap: intersection / union (``"union"``) or / smaller area (``"min"``), areas
    without the +1. Computed in column chunks so memory stays O(n * chunk).
    """
    n = len(boxes)
    keep = np.ones(n, dtype=bool)
    b = boxes[:, :4].astype(np.float64)
    area = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    for s in range(0, n, chunk):
        e = min(n, s + chunk)
        bj, bi = b[:e, None, :], b[None, s:e, :]  # j: earlier rows, i: this chunk
        iw = np.maximum(0, np.minimum(bj[..., 2], bi[..., 2]) - np.maximum(bj[..., 0], bi[..., 0]))
        ih = np.maximum(0, np.minimum(bj[..., 3], bi[..., 3]) - np.maximum(bj[..., 1], bi[..., 1]))
        inter = iw * ih  # (e, e - s)
        if method == "union":
            denom = area[:e, None] + area[None, s:e] - inter
        elif method == "min":
            denom = np.minimum(area[:e, None], area[None, s:e])
        else:
            raise ValueError(f"method must be 'union' or 'min', got {method!r}")
        with np.errstate(divide="ignore", invalid="ignore"):
            over = inter / denom > threshold  # NaN (0/0) compares False, like the package
        earlier = np.arange(e)[:, None] < np.arange(s, e)[None, :]
        keep[s:e] = ~(over & earlier).any(axis=0)
    return np.flatnonzero(keep)


def square(boxes: np.ndarray) -> np.ndarray:
    """Grow the short side to the long one about the centre (no rounding, like the package)."""
    boxes = boxes.copy()
    w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    side = np.maximum(w, h)
    boxes[:, 0] += w * 0.5 - side * 0.5
    boxes[:, 1] += h * 0.5 - side * 0.5
    boxes[:, 2] = boxes[:, 0] + side
    boxes[:, 3] = boxes[:, 1] + side
    return boxes


def regress(boxes: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Apply (n, 4) R-/O-net offsets, scaled by the box size with the package's +1."""
    boxes = boxes.copy()
    w = boxes[:, 2] - boxes[:, 0] + 1
    h = boxes[:, 3] - boxes[:, 1] + 1
    sizes = np.stack([w, h, w, h], axis=-1).astype(np.float32)
    boxes[:, :4] += offsets.astype(np.float32) * sizes  # float32 product, as TF does it there
    return boxes


def crop_and_resize(image: np.ndarray, boxes: np.ndarray, size: int) -> np.ndarray:
    """``tf.image.crop_and_resize`` (bilinear, extrapolation 0) of boxes in px -> (n, size, size, C).

    As the package calls it: box corners divided by the frame's H and W, then TF's grid
    ``y1 * (H - 1) + i * (y2 - y1) * (H - 1) / (size - 1)``, in float32.
    """
    img_h, img_w = image.shape[:2]
    f32 = np.float32
    y1 = (boxes[:, 1] / img_h).astype(f32)
    x1 = (boxes[:, 0] / img_w).astype(f32)
    y2 = (boxes[:, 3] / img_h).astype(f32)
    x2 = (boxes[:, 2] / img_w).astype(f32)
    steps = np.arange(size, dtype=f32)
    ys = y1[:, None] * f32(img_h - 1) + steps * ((y2 - y1) * f32(img_h - 1) / f32(size - 1))[:, None]
    xs = x1[:, None] * f32(img_w - 1) + steps * ((x2 - x1) * f32(img_w - 1) / f32(size - 1))[:, None]
    valid = (((ys >= 0) & (ys <= img_h - 1))[:, :, None]
             & ((xs >= 0) & (xs <= img_w - 1))[:, None, :])  # (n, size, size)
    y0f, x0f = np.floor(ys), np.floor(xs)
    dy = (ys - y0f)[:, :, None, None]  # (n, size, 1, 1)
    dx = (xs - x0f)[:, None, :, None]  # (n, 1, size, 1)
    top = np.clip(y0f, 0, img_h - 1).astype(np.intp)[:, :, None]
    bottom = np.clip(np.ceil(ys), 0, img_h - 1).astype(np.intp)[:, :, None]
    left = np.clip(x0f, 0, img_w - 1).astype(np.intp)[:, None, :]
    right = np.clip(np.ceil(xs), 0, img_w - 1).astype(np.intp)[:, None, :]
    tl, tr = image[top, left], image[top, right]  # (n, size, size, C)
    bl, br = image[bottom, left], image[bottom, right]
    upper = tl + (tr - tl) * dx
    lower = bl + (br - bl) * dx
    out = upper + (lower - upper) * dy
    out[~valid] = 0.0
    return out.astype(np.float32)


def iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(n, m) intersection over union of (n, 4) and (m, 4) x1 y1 x2 y2 boxes."""
    a, b = np.asarray(a, np.float64)[:, None, :4], np.asarray(b, np.float64)[None, :, :4]
    iw = np.maximum(0, np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0]))
    ih = np.maximum(0, np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1]))
    inter = iw * ih
    area_a = (a[..., 2] - a[..., 0]) * (a[..., 3] - a[..., 1])
    area_b = (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.nan_to_num(inter / (area_a + area_b - inter))


class FaceTracker:
    """Detect every ``detect_every`` frames; in between follow one face by template matching.

    The followed face is the detection that best overlaps the previous box (IoU >= ``min_iou``),
    else the largest. Between detections the face (grey, shrunk to <= ``template_px`` on its
    long side) is searched in the box grown by ``search_margin`` of its size on each side with
    normalised cross-correlation; a score below ``min_match`` runs the detector at once.
    ``update(frame)`` returns the box (4,) x1 y1 x2 y2 px or None; ``last_detections`` holds
    the detector's output when it ran on this frame, else None.
    """

    def __init__(self, detector: MTCNN, detect_every: int = 5, min_iou: float = 0.3,
                 search_margin: float = 0.25, min_match: float = 0.6, template_px: int = 32):
        if detect_every < 1:
            raise ValueError(f"detect_every must be >= 1, got {detect_every}")
        self.detector, self.detect_every = detector, detect_every
        self.min_iou, self.search_margin = min_iou, search_margin
        self.min_match, self.template_px = min_match, template_px
        self.reset()

    def reset(self) -> None:
        self.box: np.ndarray | None = None
        self.last_detections: Detections | None = None
        self._template: np.ndarray | None = None
        self._scale = 1.0
        self._since_detect = 0

    def update(self, frame: np.ndarray) -> np.ndarray | None:
        """Box of the followed face in this (H, W, 3) uint8 RGB frame, or None."""
        self.last_detections = None
        if self.box is not None and self._since_detect < self.detect_every - 1:
            grey = cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY)
            box = self._match(grey)
            if box is not None:
                self.box = box
                self._since_detect += 1
                return box
        return self._detect(frame)

    def _detect(self, frame: np.ndarray) -> np.ndarray | None:
        dets = self.detector.detect(frame)
        self.last_detections, self._since_detect = dets, 0
        if not len(dets):
            self.box = self._template = None
            return None
        i = dets.largest()
        if self.box is not None:
            overlap = iou(self.box[None], dets.boxes)[0]
            if overlap.max() >= self.min_iou:
                i = int(np.argmax(overlap))
        self.box = dets.boxes[i].copy()
        grey = cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY)
        x1, y1, x2, y2 = np.round(self.box).astype(int)
        self._scale = min(1.0, self.template_px / max(x2 - x1, y2 - y1, 1))
        patch = grey[y1:y2, x1:x2]
        self._template = _shrink(patch, self._scale) if patch.size else None
        return self.box

    def _match(self, grey: np.ndarray) -> np.ndarray | None:
        if self._template is None or min(self._template.shape) < 4:
            return None
        x1, y1, x2, y2 = self.box
        mx, my = self.search_margin * (x2 - x1), self.search_margin * (y2 - y1)
        h, w = grey.shape
        sx1, sy1 = int(max(0, np.floor(x1 - mx))), int(max(0, np.floor(y1 - my)))
        sx2, sy2 = int(min(w, np.ceil(x2 + mx))), int(min(h, np.ceil(y2 + my)))
        region = _shrink(grey[sy1:sy2, sx1:sx2], self._scale)
        th, tw = self._template.shape
        if region.shape[0] < th or region.shape[1] < tw:
            return None
        scores = cv2.matchTemplate(region, self._template, cv2.TM_CCOEFF_NORMED)
        _, best, _, (bx, by) = cv2.minMaxLoc(scores)
        if best < self.min_match:
            return None
        nx1, ny1 = sx1 + bx / self._scale, sy1 + by / self._scale
        return np.array([nx1, ny1, nx1 + (x2 - x1), ny1 + (y2 - y1)])


def _shrink(grey: np.ndarray, scale: float) -> np.ndarray:
    if scale >= 1.0:
        return grey
    size = (max(1, round(grey.shape[1] * scale)), max(1, round(grey.shape[0] * scale)))
    return cv2.resize(grey, size, interpolation=cv2.INTER_AREA)
