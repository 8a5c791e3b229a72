"""The six real CREMA-D audio-visual clips (one actor, one clip per emotion): clip-level votes.

CREMA-D (Cao et al. 2014, Open Database License) has 6 of our 8 emotions; the table maps its
codes to the RAVDESS emotion names of Params.emotions.

    votes = face_votes(model, "../shared/data/cremad")     # per clip: key faces, vote, truth
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from edge.params import Params

log = logging.getLogger(__name__)

CREMA_TO_EMOTION = {"NEU": "neutral", "HAP": "happy", "SAD": "sad", "ANG": "angry", "FEA": "fearful",
                    "DIS": "disgust"}


def cremad_clips(root: str | Path) -> list[tuple[Path, int]]:
    """(path, RAVDESS label index) of every ``*_{ANG,DIS,FEA,HAP,NEU,SAD}_*.flv`` under root."""
    p = Params()
    out = []
    for f in sorted(Path(root).glob("*.flv")):
        parts = f.stem.split("_")
        if len(parts) >= 3 and parts[2] in CREMA_TO_EMOTION:
            out.append((f, p.emotions.index(CREMA_TO_EMOTION[parts[2]])))
    return out


def face_votes(model, root: str | Path, p: Params = Params()) -> list[dict]:
    """Key faces of each clip (edge MTCNN cascade) -> face CNN -> majority vote, with the counts."""
    from edge.vision.faces import FaceExtractor, key_faces
    from edge.vision.video import iter_frames
    from training.face import predict_probs, to_model_input, vote_faces
    rows = []
    extractor = FaceExtractor(params=p)
    for path, label in cremad_clips(root):
        extractor.stats = type(extractor.stats)()
        faces, _ = extractor.extract(iter_frames(path))
        keep = key_faces(faces, p.key_face_radius)
        row = {"clip": path.name, "true": p.emotions[label], "frames": extractor.stats.frames,
               "faces": int(len(faces)), "key_faces": int(len(keep))}
        if len(keep):
            probs = predict_probs(model, to_model_input(faces[keep], p))
            counts = np.bincount(probs.argmax(1), minlength=p.num_classes)
            row.update({"predicted": p.emotions[vote_faces(probs)],
                        "votes": {p.emotions[i]: int(c) for i, c in enumerate(counts) if c}})
        else:
            row.update({"predicted": None, "votes": {}})
        row["correct"] = row["predicted"] == row["true"]
        rows.append(row)
        log.info("%s: %s -> %s %s", path.name, row["true"], row["predicted"], row["votes"])
    return rows
