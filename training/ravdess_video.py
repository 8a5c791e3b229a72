"""RAVDESS audio-visual videos for users who own them: index, folds, and cached key faces.

The videos (``Actor_NN/01-01-EE-II-SS-RR-AA.mp4``, 1280x720 H.264 + AAC, ~24 GB) are not on
the development machines; the reader is tested on RAVDESS-named links to real CREMA-D clips.
Clips pair with the speech corpus through ``RavdessName.clip_key``; folds are Params.folds.

    videos, skipped = index_video("/data/RAVDESS/video")
    faces, stats = video_key_faces(videos[0].path, cache=cache_dir())   # (n_key, 60, 60) uint8
"""
from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import numpy as np

from edge.params import Params
from training.ravdess import Clip, RavdessName, file_hash, index_tree

log = logging.getLogger(__name__)

VIDEO_EXTS = (".mp4", ".mov", ".mkv", ".avi", ".flv")


# A video is indexed like a speech clip: its path and parsed RAVDESS name.
VideoClip = Clip


def index_video(root: str | Path) -> tuple[list[VideoClip], list[str]]:
    """Audio-visual (01) or video-only (02) speech videos under root/Actor_NN/; bad names skipped and returned."""
    def accept(f: Path, n: RavdessName):
        if n.modality not in (1, 2) or n.channel != 1:
            return f"{f}: not a speech video (modality {n.modality}, channel {n.channel})"
        return VideoClip(f, n)
    return index_tree(root, VIDEO_EXTS, accept, "video")


def _key(path: Path, p: Params, detector_kwargs: dict) -> str:
    d = {"file": file_hash(path), "face_size": p.face_size, "radius": p.key_face_radius, "det": detector_kwargs}
    return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:24]


def video_key_faces(path: str | Path, p: Params = Params(), cache: Path | None = None,
                    detector_kwargs: dict | None = None) -> tuple[np.ndarray, dict]:
    """Key faces of one video: (n_key, 60, 60) uint8 and counters (frames, faces, key faces, no-face frames).

    Cached on disk by file content + face parameters. A video with no face gives (0, 60, 60) and is
    counted by the caller, never an error; an unreadable video raises VideoError naming the file.
    """
    from edge.vision.faces import FaceExtractor, key_faces
    from edge.vision.mtcnn import MTCNN
    from edge.vision.video import iter_frames
    path = Path(path)
    detector_kwargs = detector_kwargs or {}
    f = None
    if cache is not None:
        f = cache / "keyfaces" / f"{_key(path, p, detector_kwargs)}.npz"
        if f.is_file():
            with np.load(f) as z:
                return z["faces"], json.loads(str(z["stats"]))
    extractor = FaceExtractor(MTCNN(**detector_kwargs), params=p)
    faces, _ = extractor.extract(iter_frames(path))
    keep = key_faces(faces, p.key_face_radius)
    out = faces[keep]
    stats = {**extractor.stats.as_dict(), "key_faces": int(len(out))}
    if f is not None:
        f.parent.mkdir(parents=True, exist_ok=True)
        tmp = f.with_suffix(".tmp.npz")
        np.savez_compressed(tmp, faces=out, stats=json.dumps(stats))
        tmp.replace(f)
    return out, stats
