"""Model-level fusion of the speech branch with a small action-unit branch (the real paired result).

The only visual signal paired with RAVDESS audio on these machines is the per-clip mean of 35
OpenFace 2.0 action units (17 intensities, 18 presences) of each audio-visual video. Each
speech patch of a clip is paired with that clip's AU vector, the paper's triple (S_i, F_i, L_i)
with the face replaced by the AU vector. The model has three heads from one graph:

    speech patch (activation_3) -> speech layers -> speech_embedding -+-> speech_probs
    AU vector (35)              -> au layers     -> au_embedding     -+-> au_probs
                                           concat -> dense -> fused_probs

All three train together (summed cross-entropies) so each single-modality head stays usable as a
fallback. Same actor-independent folds as speech; clip prediction = majority vote of patches.

    edge-train fusion-au --data ../shared/data/ravdess/speech16k --au ../shared/data/ravdess/openface_au_clip_means.csv
"""
from __future__ import annotations

import csv
import dataclasses
import logging
import time
from pathlib import Path

import numpy as np

from edge.params import Params
from training.ravdess import parse_name
from training.speech import (
    ModelSelector,
    SpeechRecipe,
    Standardizer,
    build_head,
    fold_clips,
    mixup,
    spec_augment,
    trainable,
    vote,
)

log = logging.getLogger(__name__)

HEADS = ("fused", "speech", "au")


def load_au(csv_path: str | Path) -> dict[str, np.ndarray]:
    """clip_key -> (35,) float32 action units. Rows with a bad clip_id or non-finite values are refused."""
    csv_path = Path(csv_path)
    if not csv_path.is_file():
        raise FileNotFoundError(f"action-unit table not found: {csv_path} (set --au or AVE_SHARED)")
    out = {}
    with csv_path.open() as f:
        reader = csv.DictReader(f)
        cols = [c for c in reader.fieldnames or [] if c.startswith("AU")]
        if len(cols) != 35:
            raise ValueError(f"{csv_path}: expected 35 AU columns, found {len(cols)}")
        for i, row in enumerate(reader, start=2):
            v = np.array([float(row[c]) for c in cols], np.float32)
            if not np.all(np.isfinite(v)):
                raise ValueError(f"{csv_path}:{i}: non-finite action unit in {row['clip_id']}")
            out[parse_name(row["clip_id"]).clip_key] = v
    return out


def build_au_branch(n_au: int = 35, p: Params = Params(), units: int = 64, dropout: float = 0.3):
    """(None, n_au) standardized action units -> (None, 8); hidden layer ``au_embedding``."""
    import keras
    from keras import layers as L
    au_in = keras.Input((n_au,), name="au")
    a = L.Dense(units, activation="relu", name="au_dense1")(au_in)
    a = L.Dropout(dropout, name="au_dropout")(a)
    emb = L.Dense(units // 2, activation="relu", name="au_embedding")(a)
    return keras.Model(au_in, L.Dense(p.num_classes, activation="softmax", name="au_probs")(emb), name="au_branch")


def build_fusion(recipe: SpeechRecipe, n_au: int = 35, p: Params = Params()):
    """Three-head model: inputs activation_3 (24,16,64) and AU (n_au,), outputs fused/speech/au probs."""
    from training.fusion import fuse
    return fuse(build_head(recipe, p), build_au_branch(n_au, p, dropout=recipe.dropout), "au", p,
                dropout=recipe.dropout)


def _au_standardize(au: np.ndarray, clip_actor: np.ndarray, fit_clips: np.ndarray, per_actor: bool) -> np.ndarray:
    out = np.empty_like(au)
    mu, sd = au[fit_clips].mean(0), au[fit_clips].std(0) + 1e-3
    for a in np.unique(clip_actor):
        rows = clip_actor == a
        if per_actor:
            mu_a, sd_a = au[rows].mean(0), au[rows].std(0) + 1e-3
            out[rows] = (au[rows] - mu_a) / sd_a
        else:
            out[rows] = (au[rows] - mu) / sd
    return out


def _predict(model, ps, rows, std, clip_actor, au_z) -> dict[str, np.ndarray]:
    x = std.apply(ps.x[rows], clip_actor[ps.clip[rows]])
    out = model.predict([x, au_z[ps.clip[rows]]], batch_size=256, verbose=0)
    return {h: out[f"{h}_probs"] for h in HEADS}


def _clip_acc(probs: np.ndarray, clip: np.ndarray, labels: np.ndarray) -> float:
    ids, pred = vote(probs, clip)
    return float(np.mean(pred == labels[ids]))


def _fit_and_test(model, prep: dict, std, au_z: np.ndarray, fit_clips: np.ndarray, val_clips: np.ndarray,
                  test_clips: np.ndarray, r: SpeechRecipe, p: Params, rng: np.random.Generator,
                  augment: bool) -> tuple[dict, int]:
    """Train the three-head model epoch by epoch (selection: fused clip accuracy on the validation actors);
    returns the heads' clip accuracy on the test clips and the selected epoch."""
    train_ps, test_ps, labels, clip_actor = prep["train_ps"], prep["test_ps"], prep["labels"], prep["clip_actor"]
    eye = np.eye(p.num_classes, dtype=np.float32)
    val_rows = test_ps.of_clips(val_clips)
    selector = ModelSelector(r.patience, bool(len(val_rows)))
    for epoch in range(r.epochs):
        rows = np.concatenate([rng.choice(np.flatnonzero(train_ps.clip == c), r.patches_per_clip)
                               for c in fit_clips])
        rng.shuffle(rows)
        x = std.apply(train_ps.x[rows], clip_actor[train_ps.clip[rows]])
        a = au_z[train_ps.clip[rows]]
        y = eye[labels[train_ps.clip[rows]]]
        if augment:
            x += rng.normal(0, r.noise_std, x.shape).astype(np.float32) if r.noise_std else 0
            x = spec_augment(x, r, rng)
            a = a + rng.normal(0, 0.1, a.shape).astype(np.float32)
            (x, a), y = mixup([x, a], y, r.mixup_alpha, rng)
        model.fit([x, a], {"fused_probs": y, "speech_probs": y, "au_probs": y}, batch_size=r.batch_size,
                  epochs=1, verbose=0)
        val = _clip_acc(_predict(model, test_ps, val_rows, std, clip_actor, au_z)["fused"],
                        test_ps.clip[val_rows], labels) if len(val_rows) else 0.0
        log.debug("epoch %d val fused %.3f", epoch + 1, val)
        if selector.update(model, val, epoch + 1):
            break
    model.set_weights(selector.best_weights)
    rows = test_ps.of_clips(test_clips)
    probs = _predict(model, test_ps, rows, std, clip_actor, au_z)
    return {h: _clip_acc(probs[h], test_ps.clip[rows], labels) for h in HEADS}, selector.best_epoch


def train_fold(prep: dict, au: np.ndarray, test_actors: list[int], r: SpeechRecipe, p: Params = Params(),
               seed: int = 0, per_actor_au: bool = True) -> dict:
    import keras
    keras.utils.set_random_seed(seed)
    rng = np.random.default_rng(seed)
    train_ps, clip_actor = prep["train_ps"], prep["clip_actor"]
    fit_clips, val_clips, test_clips, val_actors = fold_clips(clip_actor, test_actors, r.val_actors, seed)
    fit_clips = trainable(fit_clips, train_ps)
    std = Standardizer.fit(train_ps, clip_actor, fit_clips, r.feature_norm, prep["test_ps"])
    au_z = _au_standardize(au, clip_actor, fit_clips, per_actor_au)
    model = build_fusion(r, au.shape[1], p)
    acc, best_epoch = _fit_and_test(model, prep, std, au_z, fit_clips, val_clips, test_clips, r, p, rng, augment=True)
    res = {"test_actors": test_actors, "val_actors": val_actors, "best_epoch": best_epoch,
           "n_test_clips": int(len(test_clips)), **acc}
    return res


def train_au_branch(au_z: np.ndarray, labels: np.ndarray, fit_clips: np.ndarray, val_clips: np.ndarray,
                    r: SpeechRecipe, p: Params, rng: np.random.Generator, epochs: int = 200):
    """The AU branch alone on clip-level vectors (selection on the validation actors)."""
    import keras
    model = build_au_branch(au_z.shape[1], p, dropout=r.dropout)
    model.compile(optimizer=keras.optimizers.Adam(p.learning_rate), loss="categorical_crossentropy")
    eye = np.eye(p.num_classes, dtype=np.float32)
    selector = ModelSelector(30, bool(len(val_clips)))
    for epoch in range(epochs):
        x = au_z[fit_clips] + rng.normal(0, 0.1, (len(fit_clips), au_z.shape[1])).astype(np.float32)
        model.fit(x, eye[labels[fit_clips]], batch_size=32, epochs=1, verbose=0, shuffle=True)
        val = float(np.mean(model.predict(au_z[val_clips], verbose=0).argmax(1) == labels[val_clips]))
        if selector.update(model, val, epoch + 1):
            break
    model.set_weights(selector.best_weights)
    return model


def train_fold_frozen(prep: dict, au: np.ndarray, test_actors: list[int], r: SpeechRecipe, p: Params = Params(),
                      seed: int = 0, per_actor_au: bool = True) -> dict:
    """Two stages: each branch trained alone (the speech branch exactly as in speech_cv), then frozen; only
    the fusion layers train on their hidden layers. The single-modality heads ARE the single-branch models."""
    import keras

    from training.speech import train_fold as train_speech
    keras.utils.set_random_seed(seed)
    rng = np.random.default_rng(seed)
    train_ps, test_ps, labels, clip_actor = prep["train_ps"], prep["test_ps"], prep["labels"], prep["clip_actor"]
    sr = train_speech(train_ps, test_ps, labels, clip_actor, test_actors, r, p, seed, progress=False)
    speech, std = sr["model"], sr["standardizer"]
    fit_clips, val_clips, test_clips, val_actors = fold_clips(clip_actor, test_actors, r.val_actors, seed)
    fit_clips = trainable(fit_clips, train_ps)
    assert val_actors == sr["val_actors"], (val_actors, sr["val_actors"])    # the speech branch's own split
    au_z = _au_standardize(au, clip_actor, fit_clips, per_actor_au)
    au_model = train_au_branch(au_z, labels, fit_clips, val_clips, r, p, rng)
    au_alone = float(np.mean(au_model.predict(au_z[test_clips], verbose=0).argmax(1) == labels[test_clips]))
    speech.trainable = False
    au_model.trainable = False
    from training.fusion import fuse
    model = fuse(speech, au_model, "au", p, dropout=r.dropout)
    acc, best_epoch = _fit_and_test(model, prep, std, au_z, fit_clips, val_clips, test_clips, r, p, rng,
                                    augment=False)
    return {"test_actors": test_actors, "val_actors": val_actors, "best_epoch": best_epoch,
            "n_test_clips": int(len(test_clips)), "speech_branch_alone": sr["clip_accuracy"],
            "au_branch_alone": au_alone, **acc}


def run_cv(prep: dict, au_table: dict[str, np.ndarray], r: SpeechRecipe, p: Params = Params(),
           folds: list[int] | None = None, progress: bool = True, frozen: bool = False) -> dict:
    from tqdm import tqdm
    t0 = time.time()
    missing = [c.path.name for c in prep["clips"] if c.name.clip_key not in au_table]
    if missing:
        raise ValueError(f"{len(missing)} speech clips have no action-unit row, e.g. {missing[:3]}")
    au = np.stack([au_table[c.name.clip_key] for c in prep["clips"]])
    au = np.concatenate([au] * (len(prep["labels"]) // len(au)))     # speed-perturbed copies: the same face
    out = []
    for fi in tqdm(folds if folds is not None else range(len(p.folds)), desc="fusion-au folds", disable=not progress):
        res = (train_fold_frozen if frozen else train_fold)(prep, au, list(p.folds[fi]), r, p)
        log.info("fold %s: fused %.3f speech %.3f au %.3f", res["test_actors"], res["fused"], res["speech"], res["au"])
        out.append(res)
    summary = {h: float(np.mean([f[h] for f in out])) for h in HEADS}
    for k in ("speech_branch_alone", "au_branch_alone"):
        if all(k in f for f in out):
            summary[k] = float(np.mean([f[k] for f in out]))
    training = ("two stages: each branch trained alone, then frozen; only the fusion layers train (the speech and "
                "AU heads are the single-branch models)" if frozen else
                "one stage: the three heads train together (summed cross-entropies)")
    from training.speech_cv import machine_record
    return {**summary, "folds": out, "training": training, "frozen_branches": frozen,
            "protocol": "actor-independent 4-fold CV, clip = majority vote of patch "
            "predictions; AU = per-clip OpenFace means of the RAVDESS AV video", "recipe": dataclasses.asdict(r),
            "folds_map": [list(f) for f in p.folds], "cv_minutes": (time.time() - t0) / 60,
            "machine": machine_record()}


def markdown(res: dict, reports: Path) -> str:
    """reports/fusion_au.md from the fusion_au_cv.json content (+ the speech-only CV, when present)."""
    import json
    lines = ["# Model-level fusion: speech + OpenFace action units (RAVDESS, actor-independent 4-fold)", "",
             f"Command: `{res['command']}`", "",
             "The only real visual signal paired with RAVDESS audio here: the per-clip means of 35 OpenFace 2.0 "
             "action units of each audio-visual video. Each speech patch is paired with its clip's AU vector; one "
             "graph has three heads (fused, speech, AU). Training: " + res.get("training", "one stage") + "; the "
             "fused head selects the epoch on validation actors; a clip is the majority vote of its patches. AUs are "
             "standardised per actor like the speech features (the test actor's unlabelled statistics).", "",
             "| test actors | fused | speech head | AU head |", "|---|---|---|---|"]
    lines += [f"| {f['test_actors']} | {100 * f['fused']:.2f}% | {100 * f['speech']:.2f}% | {100 * f['au']:.2f}% |"
              for f in res["folds"]]
    lines += [f"| **mean** | **{100 * res['fused']:.2f}%** | {100 * res['speech']:.2f}% | {100 * res['au']:.2f}% |", ""]
    speech = reports / "speech_cv.json"
    from training.speech_cv import recipe_changes
    sj = json.loads(speech.read_text()) if speech.is_file() else None
    differs = recipe_changes(sj["recipe"], res["recipe"]) if sj is not None else {}
    differs.pop("test_speeds", None)      # an evaluation choice: fusion-au votes on the recorded clips (below)
    if differs:
        lines += [f"`reports/speech_cv.json` ({100 * sj['mean_clip_accuracy']:.2f}%) ran an earlier speech recipe "
                  f"(this run: {', '.join(f'{k}={v}' for k, v in differs.items())}), so it is not compared here; "
                  f"the fused head is **{100 * (res['fused'] - res['speech']):+.1f} points** above this run's own "
                  f"speech head.", ""]
    elif sj is not None:
        s = sj.get("mean_clip_accuracy_without_test_speeds", sj["mean_clip_accuracy"])   # recorded clips, as here
        lines += [f"Speech branch alone (`reports/speech_cv.json`, voting on the recorded clips as this run does"
                  f"{'' if s == sj['mean_clip_accuracy'] else ', not on its test copies'}): {100 * s:.2f}%; the fused head is "
                  f"**{100 * (res['fused'] - s):+.1f} points** above it. The speech head inside the fused graph "
                  f"scores {100 * (res['speech'] - s):+.1f} points against the standalone speech model"
                  + ("." if res.get("machine") == sj.get("machine") else
                     " (the two runs do not share a machine record: this one predates it or ran elsewhere, and the "
                     "same recipe trains slightly differently on another CPU's floating point).") , ""]
    if res.get("frozen_branches"):
        lines += [f"Single branches in these folds: speech {100 * res['speech_branch_alone']:.2f}%, AU "
                  f"{100 * res['au_branch_alone']:.2f}%; the heads of the fused graph equal them exactly (frozen).", ""]
    other = reports / "fusion_au_joint_cv.json"
    if other.is_file() and res.get("frozen_branches"):
        j = json.loads(other.read_text())
        lines += [f"The one-stage variant (all heads trained together, `{j.get('command', '')}`, "
                  f"[fusion_au_joint_cv.json](fusion_au_joint_cv.json)): fused {100 * j['fused']:.2f}%, speech head "
                  f"{100 * j['speech']:.2f}%, AU head {100 * j['au']:.2f}%. Its speech head falls below the speech "
                  "branch alone; the two-stage model keeps it.", ""]
    lines += [f"Paper (speech + face video): 81.04%. CV time {res['cv_minutes']:.1f} min.", ""]
    return "\n".join(lines)
