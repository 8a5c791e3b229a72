"""Parity of the exported graph: Keras float vs TFLite float vs TFLite int8 vs ONNX on real data.

Held-out speech: the RAVDESS actors the release speech head never trained on (its 4 validation
actors, listed in ship_meta.json), every patch paired with 5 FER2013 validation faces of the clip's
emotion. Faces: all FER2013 validation faces, 5 to a call. Accuracies per head, top-1 agreement
between backends, and the largest output difference.
"""
from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edge.params import Params

log = logging.getLogger(__name__)

Predict = Callable[[np.ndarray, np.ndarray], dict[str, np.ndarray]]   # (b,96,64), (b,5,60,60,1) -> outputs


@dataclass
class ParityData:
    log_mel: np.ndarray        # (n_patches, 96, 64) speaker-normalised
    patch_clip: np.ndarray     # (n_patches,)
    clip_label: np.ndarray     # (n_clips,)
    patch_faces: np.ndarray    # (n_patches, 5) indices into fer_x
    fer_x: np.ndarray          # (n_faces, 60, 60, 1) float32 in [0, 1]
    fer_y: np.ndarray          # (n_faces,)


def heldout_data(data: str | Path, fer: str | Path, actors: list[int], p: Params = Params(),
                 cache: Path | None = None, seed: int = 0) -> ParityData:
    from edge.audio.features import patches_from_log_mel
    from training.face import to_model_input
    from training.fer2013 import load_split
    from training.ravdess import index_speech, load_features
    from training.ship import paired_faces
    from training.speech import normalize_log_mel
    clips, _ = index_speech(data)
    clips, feats, _ = load_features(clips, p, cache, progress=False)
    keep = [i for i, c in enumerate(clips) if c.actor in actors]
    if not keep:
        raise ValueError(f"no RAVDESS clips of actors {actors} under {data}")
    actor = np.array([clips[i].actor for i in keep])
    mels = normalize_log_mel([feats[i].log_mel for i in keep], actor, "actor")
    pats = [patches_from_log_mel(m, p) for m in mels]
    log_mel = np.concatenate(pats).astype(np.float32)
    patch_clip = np.concatenate([np.full(len(x), k) for k, x in enumerate(pats)])
    clip_label = np.array([clips[i].label for i in keep])
    val = load_split(fer, "validation", p=p)
    rng = np.random.default_rng(seed)
    faces = paired_faces(clip_label[patch_clip], val.y, p.faces_per_patch, rng, p)
    return ParityData(log_mel, patch_clip, clip_label, faces, to_model_input(val.x, p), val.y)


def run_backend(predict: Predict, d: ParityData, p: Params = Params(), batch: int = 64) -> dict[str, np.ndarray]:
    """All outputs: speech (n_patches, 8), fused (n_patches, 5, 8), face on FER val (n_faces, 8)."""
    n5 = p.faces_per_patch
    sp, fu = [], []
    for s in range(0, len(d.log_mel), batch):
        o = predict(d.log_mel[s:s + batch], d.fer_x[d.patch_faces[s:s + batch]])
        sp.append(o["speech"])
        fu.append(o["fused"])
    n = len(d.fer_x)
    groups = np.arange(int(np.ceil(n / n5)) * n5) % n                       # pad the last group by wrapping
    groups = groups.reshape(-1, n5)
    blank = np.repeat(d.log_mel[:1], min(batch, len(groups)), axis=0)
    fa = []
    for s in range(0, len(groups), batch):
        g = groups[s:s + batch]
        fa.append(predict(blank[:len(g)], d.fer_x[g])["face"].reshape(-1, p.num_classes))
    face = np.concatenate(fa)[:n]
    return {"speech": np.concatenate(sp), "fused": np.concatenate(fu), "face": face}


def accuracies(out: dict[str, np.ndarray], d: ParityData, p: Params = Params()) -> dict[str, float]:
    from training.speech import majority_vote
    ids = np.unique(d.patch_clip)
    sp = [majority_vote(out["speech"][d.patch_clip == c]) for c in ids]
    fu = [majority_vote(out["fused"][d.patch_clip == c].reshape(-1, p.num_classes)) for c in ids]
    return {"speech_clip": float(np.mean(np.array(sp) == d.clip_label[ids])),
            "fused_clip": float(np.mean(np.array(fu) == d.clip_label[ids])),
            "face_fer_val": float(np.mean(out["face"].argmax(1) == d.fer_y))}


def agreement(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> float:
    """Top-1 agreement over every prediction (speech patches, fused triples, FER faces)."""
    same = total = 0
    for k in ("speech", "fused", "face"):
        x, y = a[k].argmax(-1).ravel(), b[k].argmax(-1).ravel()
        same += int(np.sum(x == y))
        total += x.size
    return same / total


def agreement_by_head(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> dict[str, float]:
    return {k: float(np.mean(a[k].argmax(-1) == b[k].argmax(-1))) for k in ("speech", "fused", "face")}


def max_abs_diff(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> float:
    return float(max(np.max(np.abs(a[k] - b[k])) for k in ("speech", "fused", "face")))


# ------------------------------------------------------------------ backends as Predict

def keras_predict(model) -> Predict:
    def f(lm, faces):
        o = model({"log_mel": lm, "faces": faces}, training=False)
        return {k: np.asarray(v) for k, v in o.items()}
    return f


def edge_predict(backend) -> Predict:
    """A batch-1 edge backend (LiteRT or ONNX) looped over the batch."""
    def f(lm, faces):
        outs = [backend.predict({"log_mel": lm[i:i + 1], "faces": faces[i:i + 1]}) for i in range(len(lm))]
        return {k: np.concatenate([o[k] for o in outs]) for k in outs[0]}
    return f
