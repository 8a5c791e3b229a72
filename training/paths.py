"""Where the shared (read-only) data and weights are: flag > environment variable > default.

    AVE_SHARED   root of the shared folder   (default: ../shared next to the repository,
                                              else ./../shared from the working directory)
    AVE_YAMNET   YAMNet weights (.tflite, .h5 or a TF-Hub handle)
                                             (default: $AVE_SHARED/weights/yamnet/yamnet.tflite)
    AVE_CACHE    feature cache directory     (default: ~/.cache/av-emotion-edge)
"""
from __future__ import annotations

import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def shared_root() -> Path:
    env = os.environ.get("AVE_SHARED")
    if env:
        return Path(env)
    beside_repo = REPO.parent / "shared"
    return beside_repo if beside_repo.is_dir() else Path.cwd().parent / "shared"


def ravdess_speech_dir() -> Path:
    return shared_root() / "data" / "ravdess" / "speech16k"


def ravdess_au_csv() -> Path:
    return shared_root() / "data" / "ravdess" / "openface_au_clip_means.csv"


def yamnet_weights() -> str:
    return os.environ.get("AVE_YAMNET") or str(shared_root() / "weights" / "yamnet" / "yamnet.tflite")


def cache_dir() -> Path:
    d = Path(os.environ.get("AVE_CACHE") or Path.home() / ".cache" / "av-emotion-edge")
    d.mkdir(parents=True, exist_ok=True)
    return d


def reports_dir() -> Path:
    return REPO / "reports"
