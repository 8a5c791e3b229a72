"""The model that ships: speech branch (RAVDESS speech) + face branch (FER2013) + a fusion head trained
on label-paired triples, in one graph with three heads (fused, speech-only, face-only).

No face video paired with RAVDESS audio exists on these machines, so the fusion head learns from
*label-paired* triples: a RAVDESS patch with FER2013 faces of the same emotion (calm, absent from
FER2013, is paired with neutral faces). Both branches are trained on their own data first and then
frozen; only the fusion head (~17 k parameters) trains on their hidden layers. That keeps each
single-modality head exactly the single-branch model, so the device's fallbacks lose nothing.
The fusion head trains on the speech-validation actors only (actors the speech head did not fit),
so it sees speech embeddings as confident as those of unseen speakers.

    edge-train ship --data ../shared/data/ravdess/speech16k --fer ../shared/data/fer2013 \\
        --yamnet ../shared/weights/yamnet/yamnet.tflite

4-fold evaluation on held-out actors (test patches paired with FER2013 *validation* faces) ->
reports/ship_cv.json; then the release model on all 24 actors -> <cache>/ship/ (shipped.keras +
ship_meta.json), which ``edge-export`` turns into the device's int8 graph.
"""
from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

from edge.params import Params
from training.speech import SpeechRecipe, majority_vote, train_fold

log = logging.getLogger(__name__)

# Speaker normalisation the device can reproduce online (edge/audio/norm.py): per-speaker log-mel
# mean removal; activation_3 standardised with fixed (global) statistics baked into the graph.
# the shipped release was trained before label smoothing, speed perturbation, weight averaging and refitting (with
# a 20-epoch selection run) joined the speech recipe: pinned here so that `edge-train ship` reproduces it
# (--set label_smoothing=0.1 to train the next one with it)
SHIP_RECIPE = SpeechRecipe(logmel_norm="actor", feature_norm="global", label_smoothing=0.0, speed_perturb=(),
                           test_speeds=(), weight_ema=0.0, refit=False, epochs=30, patience=10)


def default_face_model() -> Path:
    from training.face import FaceRecipe
    from training.paths import cache_dir
    return cache_dir() / "face" / f"full_{FaceRecipe().key()}" / "best.keras"


def load_face_model(path: str | Path):
    import keras
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"face model {path} not found: train it with `edge-train face` or pass --face-model")
    return keras.saving.load_model(path, compile=False)


# ------------------------------------------------------------------ models

def embedder(model, layer: str):
    """model.input -> (hidden layer ``layer``, probabilities)."""
    import keras
    return keras.Model(model.input, [model.get_layer(layer).output, model.output])


def build_fusion_head(s_dim: int, f_dim: int, p: Params = Params(), dense: int = 64, dropout: float = 0.3):
    """(speech_embedding, face_embedding) -> fused probabilities (the paper's model-level fusion)."""
    import keras
    from keras import layers as L
    s_in = keras.Input((s_dim,), name="speech_embedding_in")
    f_in = keras.Input((f_dim,), name="face_embedding_in")
    z = L.Concatenate(name="fusion_concat")([L.Dropout(dropout, name="fusion_speech_drop")(s_in),
                                             L.Dropout(dropout, name="fusion_face_drop")(f_in)])
    z = L.Dense(dense, activation="relu", name="fusion_dense")(z)
    z = L.Dropout(dropout, name="fusion_dropout")(z)
    out = L.Dense(p.num_classes, activation="softmax", name="fused_probs")(z)
    model = keras.Model([s_in, f_in], out, name="fusion_head")
    model.compile(optimizer=keras.optimizers.Adam(p.learning_rate), loss="categorical_crossentropy")
    return model


def build_shipped_model(trunk_weights, speech_head, feat_mean: np.ndarray, feat_std: np.ndarray, face_model,
                        fusion_head, p: Params = Params(), batch_size: int | None = 1, name: str = "av_emotion",
                        logit_floor: dict[str, float] | None = None):
    """One graph, three heads.

    Inputs: ``log_mel`` (b, 96, 64) speaker-normalised log-mel patch; ``faces`` (b, 5, 60, 60, 1) grey
    faces in [0, 1] (the paper's 5 faces per patch). Outputs: ``fused`` (b, 5, 8), one distribution per
    (patch, face) triple; ``speech`` (b, 8); ``face`` (b, 5, 8).

    ``logit_floor`` ({"speech": c, "face": c, "fused": c}, the device graph of ``edge-export``): each head's
    output layer becomes softmax(max(logits, c)) (its bias lowered by c, a ReLU, then softmax, which ignores
    the shift). The layers passed in are changed in place, so pass copies.
    """
    import keras
    from keras import layers as L

    from training.yamnet import build_trunk
    n = p.faces_per_patch
    lm = keras.Input((p.patch_frames, p.mel_bands), batch_size=batch_size, name="log_mel")
    faces = keras.Input((n, p.face_size, p.face_size, 1), batch_size=batch_size, name="faces")
    a3 = build_trunk(trunk_weights)(lm)                                           # (b, 24, 16, 64)
    z = L.Normalization(axis=-1, mean=feat_mean, variance=np.square(feat_std), name="a3_standardize")(a3)
    s_emb, s_probs = embedder(speech_head, "speech_embedding")(z)                   # (b, 128), (b, 8)
    # two outputs, not one concatenated tensor: int8 quantises a tensor with one scale, and a concat of the
    # embedding (0..~5) with the probabilities (0..1) gave the face probabilities a 6x coarser step
    f_both = keras.Model(face_model.input, [face_model.get_layer("face_embedding").output, face_model.output],
                         name="face_branch")
    # the 5 faces go through the CNN as one batch of 5 (a reshape, not 5 unrolled copies of the CNN)
    flat = keras.ops.reshape(faces, (-1, p.face_size, p.face_size, 1))            # (b * 5, 60, 60, 1)
    f_emb_flat, f_probs_flat = f_both(flat)
    f_emb = keras.ops.reshape(f_emb_flat, (-1, n, f_emb_flat.shape[-1]))          # (b, 5, 128)
    f_probs = keras.ops.reshape(f_probs_flat, (-1, n, p.num_classes))             # (b, 5, 8)
    s_rep = L.RepeatVector(n, name="speech_repeat")(s_emb)                          # (b, 5, 128)
    h = L.Concatenate(name="fusion_concat")([s_rep, f_emb])
    dense, out = fusion_head.get_layer("fusion_dense"), fusion_head.get_layer("fused_probs")
    fused = out(dense(h))                                                         # (b, 5, 8)
    heads = {"fused": out, "speech": speech_head.get_layer("speech_probs"), "face": face_model.get_layer("face_probs")}
    final = {k: L.Identity(name=k) for k in heads}
    for k, c in (logit_floor or {}).items():
        w, b = heads[k].get_weights()
        heads[k].set_weights([w, b - np.float32(c)])
        heads[k].activation = keras.activations.get("relu")
        final[k] = L.Softmax(name=k)
    outputs = {"fused": final["fused"](fused), "speech": final["speech"](s_probs), "face": final["face"](f_probs)}
    return keras.Model({"log_mel": lm, "faces": faces}, outputs, name=name)


def shipped_parts(model) -> dict:
    """The parts :func:`build_shipped_model` was given, read back from a built three-head model."""
    import keras

    from training.yamnet import LAYER_DEFS
    trunk = model.get_layer("yamnet_activation_3")
    norm = model.get_layer("a3_standardize").get_config()
    speech = next((m for m in model.layers if hasattr(m, "layers") and
                   any(x.name == "speech_bilstm" for x in m.layers)), None)
    if speech is None:
        raise ValueError(f"{model.name}: no speech head (a nested model with a layer 'speech_bilstm')")
    fb = model.get_layer("face_branch")
    face = keras.Model(fb.inputs[0], fb.get_layer("face_probs").output, name="face_cnn")
    return {"trunk_weights": {ld.name: trunk.get_layer(ld.name).get_weights() for ld in LAYER_DEFS},
            "speech_head": keras.Model(speech.inputs[0], speech.get_layer("speech_probs").output, name="speech_head"),
            "feat_mean": np.asarray(norm["mean"], np.float32),
            "feat_std": np.sqrt(np.asarray(norm["variance"], np.float32)),
            "face_model": face, "fusion_head": model}


def fold_standardization(parts: dict) -> dict:
    """activation_3 / std folded into the trunk's last (depthwise, ReLU) layer: relu(z) / s = relu(z / s) for
    s > 0, so its kernel and bias are divided per channel and the standardisation keeps only mean / std.
    Exact in float. For int8 it matters: one activation scale serves all 64 channels, and dividing the
    quantised activation_3 by a per-channel std (0.18 .. 1.7) amplified the rounding noise of the
    low-variance channels (relative error 7% after the standardisation, 3.7% before it)."""
    sd = np.maximum(np.asarray(parts["feat_std"], np.float64), 1e-6)
    tw = dict(parts["trunk_weights"])
    k, b = tw["layer3_depthwise_conv"]
    tw["layer3_depthwise_conv"] = [(k / sd[None, None, :, None]).astype(np.float32), (b / sd).astype(np.float32)]
    return parts | {"trunk_weights": tw, "feat_mean": (parts["feat_mean"] / sd).astype(np.float32),
                    "feat_std": np.ones_like(parts["feat_std"], dtype=np.float32)}


# ------------------------------------------------------------------ label-paired triples

def face_targets(labels: np.ndarray, p: Params = Params()) -> np.ndarray:
    """The face label paired with each speech label: calm -> neutral (FER2013 has no calm)."""
    calm, neutral = p.emotions.index("calm"), p.emotions.index("neutral")
    return np.where(labels == calm, neutral, labels)


def paired_faces(labels: np.ndarray, face_y: np.ndarray, per: int, rng: np.random.Generator,
                 p: Params = Params()) -> np.ndarray:
    """(n, per) indices into the face set: faces whose label matches each speech label (calm -> neutral)."""
    tgt = face_targets(np.asarray(labels), p)
    out = np.empty((len(tgt), per), np.int64)
    for k in np.unique(tgt):
        pool = np.flatnonzero(face_y == k)
        if not len(pool):
            raise ValueError(f"no face labelled {p.emotions[k]!r} to pair with speech of that emotion")
        rows = np.flatnonzero(tgt == k)
        out[rows] = rng.choice(pool, (len(rows), per))
    return out


def train_fusion_head(s_emb: np.ndarray, labels: np.ndarray, f_emb: np.ndarray, f_y: np.ndarray,
                      p: Params = Params(), epochs: int = 30, seed: int = 0):
    """Fit the fusion head on frozen embeddings; new label-paired faces every epoch."""
    import keras
    keras.utils.set_random_seed(seed)
    rng = np.random.default_rng(seed)
    head = build_fusion_head(s_emb.shape[1], f_emb.shape[1], p)
    n = p.faces_per_patch
    y = np.eye(p.num_classes, dtype=np.float32)[np.repeat(labels, n)]
    s = np.repeat(s_emb, n, axis=0)
    for _ in range(epochs):
        fi = paired_faces(labels, f_y, n, rng, p).reshape(-1)
        head.fit([s, f_emb[fi]], y, batch_size=64, epochs=1, verbose=0, shuffle=True)
    return head


# ------------------------------------------------------------------ evaluation

def evaluate_fold(s_emb: np.ndarray, s_probs: np.ndarray, clip: np.ndarray, labels: np.ndarray, head,
                  f_emb: np.ndarray, f_probs: np.ndarray, f_y: np.ndarray, p: Params = Params(),
                  seed: int = 0) -> dict:
    """Clip accuracy of the three heads on test patches paired with held-out faces of the same emotion."""
    rng = np.random.default_rng(seed)
    n = p.faces_per_patch
    patch_labels = labels[clip]
    fi = paired_faces(patch_labels, f_y, n, rng, p)                              # (n_patches, 5)
    fused = head.predict([np.repeat(s_emb, n, axis=0), f_emb[fi.reshape(-1)]], batch_size=1024, verbose=0)
    fused = fused.reshape(len(s_emb), n, -1)
    ids = np.unique(clip)
    acc = {"fused": [], "speech": [], "face": []}
    for c in ids:
        rows = clip == c
        acc["fused"].append(majority_vote(fused[rows].reshape(-1, p.num_classes)) == labels[c])
        acc["speech"].append(majority_vote(s_probs[rows]) == labels[c])
        acc["face"].append(majority_vote(f_probs[fi[rows].reshape(-1)]) == face_targets(labels[c:c + 1], p)[0])
    return {k: float(np.mean(v)) for k, v in acc.items()} | {"n_test_clips": int(len(ids)),
                                                             "n_test_patches": int(len(clip))}


# ------------------------------------------------------------------ the run

def _face_embeddings(face_model, x_uint8: np.ndarray, p: Params):
    from training.face import to_model_input
    emb = embedder(face_model, "face_embedding")
    outs = [emb.predict(to_model_input(x_uint8[s:s + 2048], p), batch_size=256, verbose=0)
            for s in range(0, len(x_uint8), 2048)]
    return np.concatenate([o[0] for o in outs]), np.concatenate([o[1] for o in outs])


def _speech_embeddings(model, std, ps, rows: np.ndarray, clip_actor: np.ndarray):
    x = std.apply(ps.x[rows], clip_actor[ps.clip[rows]])
    e, pr = embedder(model, "speech_embedding").predict(x, batch_size=256, verbose=0)
    return e, pr


def run(data: str | Path, fer: str | Path | None, yamnet: str, face_model_path: str | Path | None = None,
        out_dir: Path | None = None, reports: Path | None = None, cache: Path | None = None,
        folds: list[int] | None = None, fusion_epochs: int = 30, final: bool = True, p: Params = Params(),
        recipe: SpeechRecipe = SHIP_RECIPE, progress: bool = True, save_folds: Path | None = None) -> dict:
    """4-fold evaluation of the shipped recipe, then (``final``) the release model on all actors."""
    from training.fer2013 import load_split
    from training.speech_cv import prepare
    from training.yamnet import load_weights
    t0 = time.time()
    if fer is None:
        from training.paths import shared_root
        fer = shared_root() / "data" / "fer2013"
    face_path = Path(face_model_path) if face_model_path else default_face_model()
    face_model = load_face_model(face_path)
    fer_train = load_split(fer, "train", p=p, progress=progress)
    fer_val = load_split(fer, "validation", p=p, progress=progress)
    ftr_emb, _ = _face_embeddings(face_model, fer_train.x, p)
    fva_emb, fva_probs = _face_embeddings(face_model, fer_val.x, p)
    log.info("face embeddings: %d train, %d validation", len(ftr_emb), len(fva_emb))
    prep = prepare(data, yamnet, recipe, p, cache, progress)
    weights = load_weights(yamnet) if (final or save_folds is not None) else None   # read once, used per graph
    labels, clip_actor, test_ps = prep["labels"], prep["clip_actor"], prep["test_ps"]

    fold_results = []
    for fi in (folds if folds is not None else range(len(p.folds))):
        test_actors = list(p.folds[fi])
        r = train_fold(prep["train_ps"], test_ps, labels, clip_actor, test_actors, recipe, p, 0, progress)
        model, std = r["model"], r["standardizer"]
        val_rows = test_ps.of_clips(np.flatnonzero(np.isin(clip_actor, r["val_actors"])))
        s_val, _ = _speech_embeddings(model, std, test_ps, val_rows, clip_actor)
        head = train_fusion_head(s_val, labels[test_ps.clip[val_rows]], ftr_emb, fer_train.y, p, fusion_epochs)
        rows = r["test_rows"]
        s_te, s_pr = _speech_embeddings(model, std, test_ps, rows, clip_actor)
        res = evaluate_fold(s_te, s_pr, test_ps.clip[rows], labels, head, fva_emb, fva_probs, fer_val.y, p)
        res.update({"test_actors": test_actors, "val_actors": r["val_actors"], "best_epoch": r["best_epoch"],
                    "speech_branch_alone": r["clip_accuracy"]})
        if save_folds is not None:        # each fold's graph, for export parity on its test actors
            save_folds.mkdir(parents=True, exist_ok=True)
            build_shipped_model(weights, model, std.mean["global"], std.std["global"], face_model, head,
                                p, batch_size=None).save(save_folds / f"fold{fi}.keras")
            (save_folds / f"fold{fi}.json").write_text(json.dumps({"fold": fi, **res}, indent=2) + "\n")
        log.info("fold %s: fused %.3f speech %.3f face %.3f", test_actors, res["fused"], res["speech"], res["face"])
        fold_results.append(res)

    result = {
        "protocol": "actor-independent 4-fold CV on RAVDESS speech (same folds as speech_cv); each test patch is "
                    "paired with 5 FER2013 *validation* faces of the clip's emotion (calm -> neutral faces); clip = "
                    "majority vote over its triples (fused), patches (speech) or faces (face). Label-paired: no "
                    "real face video is paired with this audio, so `fused` measures the model, not a real scene.",
        "folds": fold_results,
        **{k: (float(np.mean([f[k] for f in fold_results])) if fold_results else None)
           for k in ("fused", "speech", "face", "speech_branch_alone")},
        "face_branch_alone_fer2013_val": float(np.mean(fva_probs.argmax(1) == fer_val.y)),
        "speech_recipe": asdict(recipe), "fusion_epochs": fusion_epochs, "face_model": str(face_path),
        "folds_map": [list(f) for f in p.folds], "emotions": list(p.emotions),
        "cv_minutes": (time.time() - t0) / 60,
    }
    if reports is not None and fold_results:
        reports.mkdir(parents=True, exist_ok=True)
        (reports / "ship_cv.json").write_text(json.dumps(result, indent=2) + "\n")
    if final:
        result["release"] = train_release(prep, face_model, ftr_emb, fer_train.y, weights,
                                          out_dir, recipe, p, fusion_epochs, progress)
    return result


def train_release(prep: dict, face_model, ftr_emb: np.ndarray, fer_y: np.ndarray, weights, out_dir: Path,
                  recipe: SpeechRecipe, p: Params, fusion_epochs: int, progress: bool) -> dict:
    """Speech head on all 24 actors (4 held out for selection and the fusion head), then one graph."""
    import hashlib
    labels, clip_actor, test_ps = prep["labels"], prep["clip_actor"], prep["test_ps"]
    r = train_fold(prep["train_ps"], test_ps, labels, clip_actor, [], recipe, p, 0, progress)
    model, std = r["model"], r["standardizer"]
    val_rows = test_ps.of_clips(np.flatnonzero(np.isin(clip_actor, r["val_actors"])))
    s_val, _ = _speech_embeddings(model, std, test_ps, val_rows, clip_actor)
    head = train_fusion_head(s_val, labels[test_ps.clip[val_rows]], ftr_emb, fer_y, p, fusion_epochs)
    shipped = build_shipped_model(weights, model, std.mean["global"], std.std["global"], face_model, head, p,
                                  batch_size=None)
    out_dir.mkdir(parents=True, exist_ok=True)
    shipped.save(out_dir / "shipped.keras")
    raw = np.concatenate([f.log_mel for f in prep["feats"]])                     # (frames, 64) before norm
    meta = {"emotions": list(p.emotions), "frontend_key": p.frontend_key(),
            "logmel_prior_mean": raw.mean(axis=0).tolist(),
            "speech_val_actors": r["val_actors"], "speech_best_epoch": r["best_epoch"],
            "speech_val_clip_accuracy": r["val_clip_accuracy"], "speech_recipe": asdict(recipe),
            "faces_per_patch": p.faces_per_patch,
            "inputs": {"log_mel": "(1, 96, 64) float32 log-mel patch minus the speaker's running mean "
                                  "(edge.audio.norm.SpeakerNorm, prior = logmel_prior_mean)",
                       "faces": "(1, 5, 60, 60, 1) float32 grey faces / 255"},
            "outputs": {"fused": "(1, 5, 8)", "speech": "(1, 8)", "face": "(1, 5, 8)"},
            "params": int(shipped.count_params())}
    (out_dir / "ship_meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    # representative data for int8 calibration and parity checks: real normalised patches of every actor
    rng = np.random.default_rng(0)
    from edge.audio.features import patches_from_log_mel
    from training.speech import normalize_log_mel
    n = len(prep["feats"])                    # the recorded clips (speed-perturbed training copies come after)
    mels = normalize_log_mel([f.log_mel for f in prep["feats"]], clip_actor[:n], recipe.logmel_norm)
    pick = rng.choice(len(mels), min(400, len(mels)), replace=False)
    pats = np.stack([patches_from_log_mel(mels[i], p)[0] for i in pick]).astype(np.float32)
    np.savez_compressed(out_dir / "calibration_speech.npz", log_mel=pats, label=labels[pick],
                        actor=clip_actor[pick])
    log.info("release model: %s (%d params), sha256 %s", out_dir / "shipped.keras", meta["params"],
             hashlib.sha256((out_dir / "shipped.keras").read_bytes()).hexdigest()[:16])
    return {"path": str(out_dir / "shipped.keras"), "params": meta["params"], "val_actors": r["val_actors"],
            "speech_val_clip_accuracy": r["val_clip_accuracy"]}
