"""The edge MTCNN (numpy + TFLite) against the ``mtcnn`` package, plus faces and tracking.

Tests that compare with the package import TensorFlow and skip without it; the edge side
itself must never import it (checked in a subprocess).
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edge.params import Params
from edge.vision.faces import FaceExtractor, FaceStats, crop_face
from edge.vision.mtcnn import (
    MODEL_DIR,
    MTCNN,
    NET_FILES,
    Detections,
    FaceTracker,
    crop_and_resize,
    iou,
    nms,
    pyramid_scales,
)
from edge.vision.video import read_frames

REPO = Path(__file__).resolve().parents[1]
EMOTIONS = ("ANG", "DIS", "FEA", "HAP", "NEU", "SAD")
MIN_IOU = 0.9


@pytest.fixture(scope="module")
def edge_detector() -> MTCNN:
    return MTCNN()


@pytest.fixture(scope="module")
def package_detector():
    pytest.importorskip("tensorflow")
    mtcnn = pytest.importorskip("mtcnn")
    return mtcnn.MTCNN()


@pytest.fixture(scope="module")
def cremad_frames(cremad_dir) -> dict[str, np.ndarray]:
    """Four frames (0, 20, 40, 60) of each clip: (4, 360, 480, 3) uint8 RGB."""
    return {e: read_frames(cremad_dir / f"1001_DFA_{e}_XX.flv", every_n=20, max_frames=4)[1]
            for e in EMOTIONS}


def package_faces(detector, frame: np.ndarray) -> Detections:
    out = detector.detect_faces(frame, output_type="numpy", box_format="xyxy")
    if not len(out):
        return Detections.empty()
    return Detections(out[:, 1:5], out[:, 5], np.stack([out[:, 6:11], out[:, 11:16]], axis=-1))


def assert_same_faces(ref: Detections, got: Detections) -> np.ndarray:
    """Same count, each package face matched with IoU >= 0.9; returns the IoUs."""
    assert len(got) == len(ref)
    if not len(ref):
        return np.zeros(0)
    best = iou(ref.boxes, got.boxes).max(axis=1)
    assert (best >= MIN_IOU).all(), best
    return best


# ----- device contract -----
def test_edge_vision_does_not_import_tensorflow():
    code = ("import sys, edge.vision.mtcnn, edge.vision.faces, edge.vision.video; "
            "bad = [m for m in ('tensorflow', 'keras', 'mtcnn', 'training', 'export') if m in sys.modules]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True)


def test_model_files_are_small_float_tflite():
    for name in NET_FILES.values():
        path = MODEL_DIR / name
        assert path.is_file(), f"{path}: run python -m export.mtcnn_nets --out edge/models"
        assert path.stat().st_size < 2_000_000


# ----- numpy pieces against the package's own helpers -----
def test_nms_matches_package():
    bboxes = pytest.importorskip("mtcnn.utils.bboxes")
    rng = np.random.default_rng(0)
    xy = rng.uniform(0, 200, (300, 2))
    wh = rng.uniform(5, 60, (300, 2))
    boxes = np.concatenate([xy, xy + wh, rng.uniform(0, 1, (300, 1))], axis=1)
    boxes = boxes[np.argsort(boxes[:, 4])[::-1]]
    with_id = np.concatenate([np.zeros((300, 1)), boxes], axis=1)
    for method, thr in (("union", 0.5), ("union", 0.7), ("min", 0.7)):
        ref = bboxes.smart_nms_from_bboxes(with_id, thr, method=method, initial_sort=False)
        np.testing.assert_array_equal(boxes[nms(boxes, thr, method, chunk=64)], ref[:, 1:])


def test_pyramid_matches_package():
    images = pytest.importorskip("mtcnn.utils.images")
    for h, w in ((360, 480), (360, 640), (720, 1280), (100, 90)):
        np.testing.assert_allclose(pyramid_scales(h, w, 20), images.build_scale_pyramid(w, h, 20, 0.709))
    # min_face_size 40 on 360 px: the package's last levels are < 11 px (it fails); we drop them
    assert (np.floor(360 * pyramid_scales(360, 480, 40)) >= 11).all()


def test_crop_and_resize_matches_tf():
    tf = pytest.importorskip("tensorflow")
    rng = np.random.default_rng(0)
    image = rng.uniform(-1, 1, (50, 70, 3)).astype(np.float32)
    boxes = np.array([[10.3, 5.2, 40.7, 35.9], [-8.0, -4.5, 20.0, 23.5], [55.0, 30.0, 90.0, 65.0]])
    norm = boxes[:, [1, 0, 3, 2]] / np.array([50, 70, 50, 70])
    for size in (24, 48):
        ref = tf.image.crop_and_resize(image[None], norm, np.zeros(3, np.int32), (size, size)).numpy()
        np.testing.assert_allclose(crop_and_resize(image, boxes, size), ref, atol=1e-5)


def test_tflite_nets_match_keras():
    pytest.importorskip("tensorflow")
    pytest.importorskip("mtcnn")
    from export.mtcnn_nets import NETS, keras_net, parity

    for name, (_, _, _, shapes) in NETS.items():
        assert parity(keras_net(name), MODEL_DIR / NET_FILES[name], shapes) <= 1e-5


# ----- whole cascade against the package -----
@pytest.mark.shared
@pytest.mark.parametrize("emotion", EMOTIONS)
def test_same_faces_as_package_cremad(emotion, cremad_frames, edge_detector, package_detector):
    for frame in cremad_frames[emotion]:
        ref = package_faces(package_detector, frame)
        got = edge_detector.detect(frame)
        assert len(ref) == 1  # one actor in every CREMA-D frame
        assert assert_same_faces(ref, got).min() > 0.999
        np.testing.assert_allclose(got.landmarks, ref.landmarks, atol=0.05)  # px
        np.testing.assert_allclose(got.scores, ref.scores, atol=1e-4)


def test_same_faces_as_package_astronaut(edge_detector, package_detector):
    data = pytest.importorskip("skimage.data", reason="scikit-image not installed (astronaut image)")
    frame = data.astronaut()  # (512, 512, 3) uint8 RGB
    assert_same_faces(package_faces(package_detector, frame), edge_detector.detect(frame))


@pytest.mark.parametrize("shape", [(360, 640, 3), (120, 160, 3)])
def test_no_face_in_flat_or_noise_frames(shape, edge_detector):
    assert len(edge_detector.detect(np.full(shape, 127, np.uint8))) == 0
    noise = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
    assert len(edge_detector.detect(noise)) <= 1  # noise may fool P/R-net, rarely O-net


def test_tiny_frame_has_no_pyramid_level(edge_detector):
    assert len(edge_detector.detect(np.zeros((10, 10, 3), np.uint8))) == 0
    with pytest.raises(ValueError):
        edge_detector.detect(np.zeros((10, 10), np.uint8))


# ----- speed options -----
@pytest.mark.shared
def test_downscale_and_min_face_size_keep_the_face(cremad_frames, edge_detector):
    fast = [MTCNN(downscale=0.5), MTCNN(min_face_size=40), MTCNN(min_face_size=60, downscale=0.75)]
    for frame in cremad_frames["HAP"]:
        ref = edge_detector.detect(frame)
        for det in fast:
            got = det.detect(frame)
            assert len(got) == 1 and iou(ref.boxes, got.boxes)[0, 0] > 0.8


@pytest.mark.shared
def test_tracker_follows_the_face(cremad_dir, edge_detector):
    _, frames = read_frames(cremad_dir / "1001_DFA_ANG_XX.flv", max_frames=30)
    tracker = FaceTracker(edge_detector, detect_every=5)
    detector_runs = 0
    for frame in frames:
        box = tracker.update(frame)
        detector_runs += tracker.last_detections is not None
        ref = edge_detector.detect(frame)
        assert box is not None and iou(box[None], ref.boxes)[0, 0] > 0.7
    assert detector_runs <= 8  # 6 scheduled (every 5th of 30) + a couple of re-detections


def test_tracker_loses_and_recovers(edge_detector):
    tracker = FaceTracker(edge_detector, detect_every=3)
    blank = np.full((120, 160, 3), 127, np.uint8)
    assert tracker.update(blank) is None and tracker.last_detections is not None
    assert tracker.update(blank) is None  # no box to follow: detector runs again
    with pytest.raises(ValueError):
        FaceTracker(edge_detector, detect_every=0)


# ----- crops and counters -----
def test_crop_face_shape_and_borders():
    frame = np.zeros((100, 120, 3), np.uint8)
    frame[20:80, 30:90] = 200
    face = crop_face(frame, np.array([30.0, 20.0, 90.0, 80.0]))
    assert face.shape == (Params().face_size,) * 2 and face.dtype == np.uint8
    assert face.min() >= 190  # the square box is exactly the bright patch
    edge = crop_face(frame, np.array([-20.0, -10.0, 40.0, 50.0]))  # partly outside: replicated
    assert edge.shape == (60, 60)
    wide = crop_face(frame, np.array([30.0, 40.0, 90.0, 60.0]), square=False)
    assert wide.shape == (60, 60) and wide.min() >= 190


def test_extractor_counts_frames_without_faces(edge_detector):
    extractor = FaceExtractor(edge_detector)
    blank = np.full((120, 160, 3), 127, np.uint8)
    faces, pts = extractor.extract([(0.0, blank), (0.04, blank)])
    assert faces.shape == (0, 60, 60) and pts.shape == (0,)
    assert extractor.stats == FaceStats(frames=2, with_face=0, no_face=2, multi_face=0)


@pytest.mark.shared
def test_extractor_on_cremad(cremad_dir, edge_detector):
    from edge.vision.faces import key_faces
    from edge.vision.video import iter_frames

    extractor = FaceExtractor(tracker=FaceTracker(edge_detector, detect_every=5))
    faces, pts = extractor.extract(iter_frames(cremad_dir / "1001_DFA_NEU_XX.flv"))
    stats = extractor.stats
    assert stats.frames == stats.with_face == len(faces) > 30 and stats.no_face == 0
    assert faces.shape[1:] == (60, 60) and faces.dtype == np.uint8 and (np.diff(pts) > 0).all()
    keys = key_faces(faces)
    assert len(keys) == 1 + int(np.ceil((len(faces) - 9) / 4))
