"""Model-level fusion (the paper): hidden layers of the speech and face models concatenated ->
dense -> softmax, trained on triples (patch, face, label). One graph, three heads.

Triples, as the paper builds them: for the p-th of a video's n_s spectrogram patches, 5 faces are
drawn at random from its key faces (p-1)m+1 ... pm with m = floor(n_f / n_s), giving 5 n_s triples
per video, each labelled with the video's emotion. When a video has fewer key faces than patches
(m = 0) patch p takes the key face at floor(p n_f / n_s) (counted as ``short_faces``); a video with
no face at all is evaluated by the speech head alone and counted (``no_face``).

    edge-train fusion --ravdess-video /data/RAVDESS/video --yamnet ../shared/weights/yamnet/yamnet.tflite
"""
from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edge.params import Params
from training.speech import ModelSelector, SpeechRecipe, Standardizer, build_head, choose_val_actors, majority_vote

log = logging.getLogger(__name__)


# ------------------------------------------------------------------ the three-head model

def fuse(speech_head, other, other_name: str, p: Params = Params(), dense: int = 64, dropout: float = 0.3):
    """Join a speech head (input activation_3, layer ``speech_embedding``) with another branch whose
    model has a layer ``{other_name}_embedding`` and output ``{other_name}_probs``.

    Returns a compiled model with inputs [activation_3, other input] and outputs
    {"fused_probs", "speech_probs", "<other>_probs"}; the three cross-entropies are summed, so each
    single-modality head stays a usable fallback.
    """
    import keras
    from keras import layers as L
    s_emb = speech_head.get_layer("speech_embedding").output
    o_emb = other.get_layer(f"{other_name}_embedding").output
    z = L.Concatenate(name="fusion_concat")([L.Dropout(dropout, name="fusion_speech_drop")(s_emb), o_emb])
    z = L.Dense(dense, activation="relu", name="fusion_dense")(z)
    z = L.Dropout(dropout, name="fusion_dropout")(z)
    fused = L.Dense(p.num_classes, activation="softmax", name="fused_probs")(z)
    outputs = {"fused_probs": fused, "speech_probs": speech_head.output, f"{other_name}_probs": other.output}
    model = keras.Model([speech_head.input, other.input], outputs, name=f"fusion_speech_{other_name}")
    model.compile(optimizer=keras.optimizers.Adam(p.learning_rate),
                  loss={k: keras.losses.CategoricalCrossentropy() for k in outputs})
    return model


# ------------------------------------------------------------------ triples

def triples(n_s: int, n_f: int, per_patch: int, rng: np.random.Generator) -> np.ndarray:
    """(n_s * per_patch, 2) int pairs (patch index, key-face index), the paper's sampling."""
    if n_s < 1 or n_f < 1:
        return np.zeros((0, 2), int)
    m = n_f // n_s
    out = []
    for p in range(n_s):
        if m >= 1:
            faces = rng.integers(p * m, (p + 1) * m, per_patch)              # key faces (p-1)m+1 .. pm
        else:
            faces = np.full(per_patch, (p * n_f) // n_s)                     # fewer faces than patches
        out.append(np.stack([np.full(per_patch, p), faces], axis=1))
    return np.concatenate(out)


# ------------------------------------------------------------------ data

@dataclass
class VideoData:
    """Per clip: activation_3 of its patches and its key faces."""
    a3: list[np.ndarray]          # each (n_s, 24, 16, 64) float16
    faces: list[np.ndarray]       # each (n_f, 60, 60) uint8
    labels: np.ndarray            # (n_clips,)
    actors: np.ndarray            # (n_clips,)
    names: list[str]
    counts: dict                  # skipped / fallback counters


def prepare_videos(root: str | Path, yamnet: str, p: Params = Params(), cache: Path | None = None,
                   progress: bool = True) -> VideoData:
    """Audio track -> VAD -> patches -> frozen trunk; frames -> MTCNN -> key faces (cached)."""
    from tqdm import tqdm

    from edge.audio.features import waveform_to_patches
    from edge.audio.vad import SilenceError, trim_silence
    from edge.vision.video import VideoError, read_audio
    from training.ravdess_video import index_video, video_key_faces
    from training.yamnet import build_trunk, load_weights
    trunk = build_trunk(load_weights(yamnet))
    videos, skipped = index_video(root)
    a3, faces, labels, actors, names = [], [], [], [], []
    counts = {"videos": len(videos), "skipped_names": skipped, "unreadable": [], "no_speech": [], "no_face": []}
    for v in tqdm(videos, desc="videos", unit="clip", disable=not progress):
        try:
            wave, _ = read_audio(v.path, p.sample_rate)
            speech, _ = trim_silence(wave, p, source=str(v.path))
            kf, _ = video_key_faces(v.path, p, cache)
        except VideoError as e:
            counts["unreadable"].append(str(e))
            log.warning("skipped: %s", e)
            continue
        except SilenceError as e:
            counts["no_speech"].append(str(e))
            log.warning("skipped: %s", e)
            continue
        if len(kf) == 0:
            counts["no_face"].append(str(v.path))
        a3.append(trunk.predict_on_batch(waveform_to_patches(speech, p)).astype(np.float16))
        faces.append(kf)
        labels.append(v.label)
        actors.append(v.actor)
        names.append(v.path.name)
    return VideoData(a3, faces, np.array(labels, int), np.array(actors, int), names, counts)


# ------------------------------------------------------------------ train / evaluate

def _to_faces(x: np.ndarray) -> np.ndarray:
    return (x.astype(np.float32) / 255.0)[..., None]                         # (n, 60, 60, 1)


def _flatten(data: VideoData, clips: np.ndarray, per_patch: int, rng: np.random.Generator):
    """Triples of the given clips: (a3 rows, faces, clip id of each triple)."""
    xs, fs, cs = [], [], []
    for c in clips:
        t = triples(len(data.a3[c]), len(data.faces[c]), per_patch, rng)
        if not len(t):
            continue
        xs.append(data.a3[c][t[:, 0]])
        fs.append(data.faces[c][t[:, 1]])
        cs.append(np.full(len(t), c))
    if not xs:
        return None
    return np.concatenate(xs), np.concatenate(fs), np.concatenate(cs)


def evaluate(model, data: VideoData, clips: np.ndarray, std: Standardizer, p: Params) -> dict:
    """Clip accuracy of each head: fused (vote over triples), speech (over patches), face (over key faces).

    A clip without faces is decided by the speech head (counted), the product's fallback."""
    rng = np.random.default_rng(0)
    true, pred = {h: [] for h in ("fused", "speech", "face")}, {h: [] for h in ("fused", "speech", "face")}
    fallback = 0
    blank_face = np.zeros((1, p.face_size, p.face_size, 1), np.float32)
    for c in clips:
        a3 = std.apply(data.a3[c], np.full(len(data.a3[c]), data.actors[c]))
        n = len(a3)
        out = model.predict([a3, np.repeat(blank_face, n, 0)], verbose=0)
        speech = majority_vote(out["speech_probs"])
        t = triples(n, len(data.faces[c]), p.faces_per_patch, rng)
        if len(t):
            fo = model.predict([a3[t[:, 0]], _to_faces(data.faces[c][t[:, 1]])], verbose=0)
            fused = majority_vote(fo["fused_probs"])
            fc = model.predict([a3[:1].repeat(len(data.faces[c]), 0), _to_faces(data.faces[c])], verbose=0)
            face = majority_vote(fc["face_probs"])
            true["face"].append(data.labels[c])
            pred["face"].append(face)
        else:
            fused, fallback = speech, fallback + 1
        for h, v in (("fused", fused), ("speech", speech)):
            true[h].append(data.labels[c])
            pred[h].append(v)
    acc = {h: float(np.mean(np.array(pred[h]) == np.array(true[h]))) if true[h] else None for h in true}
    return {**acc, "speech_fallback_clips": fallback, "n_clips": int(len(clips))}


def train_fold(data: VideoData, test_actors: list[int], r: SpeechRecipe, face_recipe, p: Params = Params(),
               seed: int = 0) -> dict:
    import keras

    from training.face import build_face_model
    keras.utils.set_random_seed(seed)
    rng = np.random.default_rng(seed)
    train_actors = sorted(set(data.actors.tolist()) - set(test_actors))
    n_val = r.val_actors if len(train_actors) > r.val_actors + 2 else 0
    val_actors = choose_val_actors(train_actors, n_val, seed) if n_val else []
    fit = np.flatnonzero(np.isin(data.actors, [a for a in train_actors if a not in val_actors]))
    val = np.flatnonzero(np.isin(data.actors, val_actors))
    test = np.flatnonzero(np.isin(data.actors, test_actors))
    if not len(fit) or not len(test):
        raise ValueError(f"fold {test_actors}: {len(fit)} training and {len(test)} test clips")
    # per-actor activation_3 statistics (as in the speech CV), via a PatchSet-like view
    from training.speech import PatchSet
    ps = PatchSet(np.concatenate(data.a3), np.concatenate([np.full(len(a), i) for i, a in enumerate(data.a3)]),
                  np.zeros(sum(len(a) for a in data.a3), int))
    std = Standardizer.fit(ps, data.actors, fit, r.feature_norm)
    model = fuse(build_head(r, p), build_face_model(face_recipe, p), "face", p)
    selector = ModelSelector(r.patience, bool(len(val)))
    eye = np.eye(p.num_classes, dtype=np.float32)
    for epoch in range(r.epochs):
        flat = _flatten(data, fit, p.faces_per_patch, rng)
        if flat is None:
            raise ValueError(f"fold {test_actors}: no training clip has both patches and faces")
        x, f, c = flat
        order = rng.permutation(len(c))
        x = std.apply(x[order], data.actors[c[order]])
        y = eye[data.labels[c[order]]]
        model.fit([x, _to_faces(f[order])], {"fused_probs": y, "speech_probs": y, "face_probs": y},
                  batch_size=r.batch_size, epochs=1, verbose=0)
        score = evaluate(model, data, val, std, p)["fused"] if len(val) else 0.0
        if selector.update(model, score, epoch + 1):
            break
    model.set_weights(selector.best_weights)
    res = evaluate(model, data, test, std, p)
    return {"test_actors": test_actors, "val_actors": val_actors, "best_epoch": selector.best_epoch, **res}


def run_cv(data: VideoData, r: SpeechRecipe, face_recipe, p: Params = Params(), folds: list[int] | None = None) -> dict:
    t0 = time.time()
    present = set(data.actors.tolist())
    out = []
    for fi in folds if folds is not None else range(len(p.folds)):
        test_actors = [a for a in p.folds[fi] if a in present]
        if not test_actors:
            log.warning("fold %d: none of its actors %s has a video: skipped", fi, p.folds[fi])
            continue
        res = train_fold(data, test_actors, r, face_recipe, p)
        log.info("fold %s: fused %s speech %s face %s", test_actors, res["fused"], res["speech"], res["face"])
        out.append(res)

    def mean(h):
        v = [f[h] for f in out if f[h] is not None]
        return float(np.mean(v)) if v else None
    return {"fused": mean("fused"), "speech": mean("speech"), "face": mean("face"), "folds": out,
            "counts": data.counts, "n_clips": int(len(data.labels)),
            "protocol": "actor-independent folds of Params.folds; triples (patch, 5 key faces of its segment, "
                        "label); clip = majority vote of its triples (fused), patches (speech), key faces (face)",
            "recipe": dataclasses.asdict(r), "face_recipe": dataclasses.asdict(face_recipe),
            "cv_minutes": (time.time() - t0) / 60}
