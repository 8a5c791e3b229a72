"""The shipped three-head model on the device: one int8 graph, loaded once.

    model = EmotionModel()                                  # edge/models/av_emotion_int8.tflite + manifest.json
    out = model.infer(log_mel_patch, faces)                 # (96, 64) normalised, (k, 60, 60) uint8 grey
    out["fused"]   # (5, 8) one distribution per (patch, face) triple   (both modalities)
    out["speech"]  # (8,)                                              (a patch was given)
    out["face"]    # (5, 8)                                            (faces were given)

A missing modality (``None``) gets a neutral filler input and its heads are left out of the result:
the device falls back to the other head without a second model.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

from edge.params import Params
from edge.runtime import ModelError, load_model

log = logging.getLogger(__name__)

MODELS_DIR = Path(__file__).resolve().parent / "models"
DEFAULT_MODEL = MODELS_DIR / "av_emotion_int8.tflite"


def load_manifest(model_path: Path, manifest: Path | None = None) -> dict:
    f = Path(manifest) if manifest else model_path.parent / "manifest.json"
    if not f.is_file():
        raise ModelError(f"no manifest.json next to {model_path}: it holds the emotions and the speaker-norm prior")
    try:
        m = json.loads(f.read_text())
    except ValueError as e:
        raise ModelError(f"{f}: unreadable manifest ({e})") from e
    missing = [k for k in ("emotions", "logmel_prior_mean") if k not in m]
    if missing:
        raise ModelError(f"{f}: unreadable manifest (missing {missing})")
    return m


class EmotionModel:
    """The int8 (or float) graph with inputs ``log_mel`` (1, 96, 64) and ``faces`` (1, 5, 60, 60, 1)."""

    def __init__(self, path: str | Path | None = None, threads: int = 1, delegate: str | None = None,
                 backend: str = "litert", p: Params = Params(), manifest: str | Path | None = None):
        """``manifest``: default ``manifest.json`` next to the model (emotions, speaker-norm prior)."""
        self.path = Path(path) if path else DEFAULT_MODEL
        self.p = p
        self.manifest = load_manifest(self.path, manifest)
        kwargs = {"delegate": delegate} if delegate else {}
        self.backend = load_model(self.path, backend=backend, threads=threads, **kwargs)
        need = {"log_mel", "faces"}
        if not need <= set(self.backend.input_names):
            raise ModelError(f"{self.path}: inputs {self.backend.input_names}, expected {sorted(need)}")
        self.emotions = tuple(self.manifest["emotions"])
        if self.emotions != p.emotions:
            raise ModelError(f"{self.path}: emotions {self.emotions} differ from Params {p.emotions}")
        self.n_faces = int(self.manifest.get("faces_per_patch", p.faces_per_patch))
        self.prior_mean = np.asarray(self.manifest["logmel_prior_mean"], np.float32)
        self._blank_patch = np.zeros((1, p.patch_frames, p.mel_bands), np.float32)
        self._blank_faces = np.full((1, self.n_faces, p.face_size, p.face_size, 1), 0.5, np.float32)

    def pick_faces(self, faces: np.ndarray) -> np.ndarray:
        """(k >= 1, 60, 60) -> (5, 60, 60): evenly spaced over the k faces (repeats when k < 5)."""
        k = len(faces)
        idx = np.floor((np.arange(self.n_faces) + 0.5) * k / self.n_faces).astype(int)
        return faces[np.clip(idx, 0, k - 1)]

    def infer(self, log_mel: np.ndarray | None, faces: np.ndarray | None) -> dict[str, np.ndarray]:
        s, f = self.p.face_size, self.p
        if log_mel is None and (faces is None or not len(faces)):
            raise ValueError("infer needs a log-mel patch, faces, or both")
        if log_mel is not None:
            log_mel = np.asarray(log_mel, np.float32)
            if log_mel.shape != (f.patch_frames, f.mel_bands):
                raise ValueError(f"log-mel patch must be ({f.patch_frames}, {f.mel_bands}), got {log_mel.shape}")
            lm = log_mel[None]
        else:
            lm = self._blank_patch
        have_faces = faces is not None and len(faces) > 0
        if have_faces:
            faces = np.asarray(faces)
            if faces.shape[1:] != (s, s):
                raise ValueError(f"faces must be (k, {s}, {s}) grey, got {faces.shape}")
            picked = faces if len(faces) == self.n_faces else self.pick_faces(faces)
            if picked.dtype == np.uint8:    # straight to the input's type (int8: one XOR, no float round trip)
                fx = self.backend.encode_u8("faces", picked)[None, ..., None]          # (1, 5, 60, 60, 1)
            else:
                fx = (picked.astype(np.float32) / 255.0)[None, ..., None]
        else:
            fx = self._blank_faces
        out = self.backend.predict({"log_mel": lm, "faces": fx})
        res = {}
        if log_mel is not None:
            res["speech"] = out["speech"][0]
        if have_faces:
            res["face"] = out["face"][0]
        if log_mel is not None and have_faces:
            res["fused"] = out["fused"][0]
        return res
