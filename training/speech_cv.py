"""4-fold actor-independent cross-validation of the speech branch, and its reports.

    edge-train speech --data ../shared/data/ravdess/speech16k --yamnet ../shared/weights/yamnet/yamnet.tflite

writes reports/speech_cv.json, reports/speech_confusion.png and reports/speech.md.
"""
from __future__ import annotations

import hashlib
import json
import logging
import platform
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

from edge.params import Params
from training.ravdess import index_speech, load_features
from training.speech import (
    PSEUDO_SPEAKER,
    SpeechRecipe,
    actor_centred,
    centring_under_skew,
    mean_figures,
    n_recorded,
    normalize_log_mel,
    recorded_clip,
    soft_vote,
    stretch_frames,
    train_fold,
    trunk_patches,
    vote,
)

log = logging.getLogger(__name__)


def prepare(data: str | Path, yamnet: str, recipe: SpeechRecipe, p: Params = Params(),
            cache: Path | None = None, progress: bool = True, keep_mels: bool = False) -> dict:
    """Index, features (cached), log-mel normalisation, and trunk activations at train and test hop
    (``keep_mels``: the normalised log-mels too, under "mels")."""
    from training.yamnet import build_trunk, load_weights
    weights = load_weights(yamnet)                       # fail early on a bad weights path
    clips, skipped_names = index_speech(data)
    clips, feats, skipped_audio = load_features(clips, p, cache, progress)
    n_real = len(clips)
    clip_actor = np.array([c.actor for c in clips])
    labels = np.array([c.label for c in clips])
    intensity = np.array([c.name.intensity - 1 for c in clips])     # 0 normal, 1 strong
    factors = pitch_factors(clips, recipe.pitch_norm, p, progress) if recipe.pitch_norm else {}
    mel_list = [f.log_mel for f in (_at_speed(clips, 1.0, factors, p, cache) if factors else feats)]
    # speed-perturbed copies: clip n_real k + i is clip i at the k-th speed, spoken by pseudo speaker actor +
    # PSEUDO_SPEAKER k (normalised on its own statistics, as a new speaker would be); training speeds first, then
    # test-only ones (no training patches)
    # (pitch copies: speed copies stretched back to the clip's frame count)
    for k, (speed, keep_tempo) in enumerate(recipe.copies(), 1):
        sf = _at_speed(clips, speed, factors, p, cache, progress)
        mel_list += [stretch_frames(f.log_mel, len(m)) if keep_tempo else f.log_mel
                     for f, m in zip(sf, mel_list[:n_real], strict=True)]
        clip_actor = np.concatenate([clip_actor, clip_actor[:n_real] + PSEUDO_SPEAKER * k])
        labels = np.concatenate([labels, labels[:n_real]])
        intensity = np.concatenate([intensity, intensity[:n_real]])
    mels = normalize_log_mel(mel_list, clip_actor, recipe.logmel_norm)
    trunk = build_trunk(weights, frames=recipe.patch_frames)
    n_train = n_real * recipe.n_training_versions()
    train_ps = trunk_patches(trunk, mels[:n_train], recipe.train_hop_frames, p, progress=progress,
                             frames=recipe.patch_frames)
    test_ps = train_ps if recipe.test_hop_frames == recipe.train_hop_frames and len(mels) == n_train else \
        trunk_patches(trunk, mels if recipe.test_speeds else mels[:n_real], recipe.test_hop_frames, p,
                      progress=progress, frames=recipe.patch_frames)
    return {"clips": clips, "feats": feats, "clip_actor": clip_actor, "labels": labels, "intensity": intensity,
            "train_ps": train_ps, "test_ps": test_ps,
            "skipped": skipped_names + skipped_audio, **({"mels": mels} if keep_mels else {})}


def pitch_factors(clips: list, gamma: float, p: Params = Params(), progress: bool = True) -> dict:
    """Each actor's pitch-normalisation speed (training.pitch.speaker_factors) from the median F0 of all its
    trimmed clips: label-free, like the per-actor normalisation statistics."""
    from tqdm import tqdm

    from edge.audio.io import load_audio
    from edge.audio.vad import trim_silence
    from training.pitch import median_f0, speaker_factors
    waves: dict[int, list] = {}
    for c in tqdm(clips, desc="F0", unit="clip", disable=not progress):
        waves.setdefault(c.actor, []).append(trim_silence(load_audio(c.path, p), p, source=str(c.path))[0])
    medians = {a: median_f0(w, p.sample_rate) for a, w in waves.items()}
    factors = speaker_factors(medians, gamma)
    log.info("pitch normalisation (gamma %g): actor: median F0 Hz -> speed %s", gamma,
             ", ".join(f"{a}: {medians[a]:.0f} -> {factors[a]:.2f}" for a in sorted(factors)))
    return factors


def _at_speed(clips: list, speed: float, factors: dict, p: Params, cache: Path | None,
              progress: bool = False) -> list:
    """The features of every clip (in order) played at ``speed`` times its actor's pitch-normalisation factor
    (``factors``; none: ``speed`` alone). Raises when a clip the originals passed fails at its speed."""
    groups: dict[float, list[int]] = {}
    for i, c in enumerate(clips):
        groups.setdefault(round(speed * factors.get(c.actor, 1.0), 2), []).append(i)
    out: list = [None] * len(clips)
    for s, idx in groups.items():
        kept, feats, bad = load_features([clips[i] for i in idx], p, cache, progress and len(groups) == 1, speed=s)
        if len(kept) != len(idx):
            raise ValueError(f"speed {s}: {len(bad)} clips failed that the originals passed: {bad[:3]}")
        for i, f in zip(idx, feats, strict=True):
            out[i] = f
    return out


# recipe fields added after reports were first written -> the value runs made before them ran with (the lever off,
# whatever the field's default is now), as JSON values
FIELDS_ADDED_OFF = {"freq_warp": 0.0, "refit": False, "seeds": [0], "speed_perturb": [], "test_speeds": [],
                    "pool_speeds": False, "lr_decay": "none", "select_with_test_speeds": False, "snapshots": 1,
                    "speaker_bn": False, "speaker_adversary": 0.0, "keep_tempo": False, "pitch_perturb": [],
                    "self_train": 0.0, "self_train_epochs": 8, "patch_frames": 96, "pitch_norm": 0.0,
                    "weight_ema": 0.0, "pooling": "attention", "freq_pool": 4,
                    "aux_intensity": 0.0}
# of those, the ones added after fold checkpoints were written: at their off value they leave a fold's result
# unchanged and stay out of its checkpoint key, so those checkpoints still serve the recipe
KEY_NEUTRAL = ("snapshots", "speaker_bn", "speaker_adversary", "keep_tempo", "pitch_perturb", "self_train",
               "self_train_epochs", "patch_frames", "pitch_norm", "weight_ema", "pooling", "freq_pool",
               "aux_intensity")


def as_json(value):
    """A value as it reads back from a report (tuples become lists)."""
    return json.loads(json.dumps(value))


def checkpoint_file(checkpoints: Path | None, prep: dict, recipe: SpeechRecipe, p: Params, kind: str,
                    fold: int) -> Path | None:
    """Where a finished fold of this run is kept: keyed by recipe, Params and the clips (names and labels), so an
    interrupted run resumes at the first unfinished fold and any change starts afresh."""
    if checkpoints is None:
        return None
    rec = {k: v for k, v in asdict(recipe).items() if k not in KEY_NEUTRAL or as_json(v) != FIELDS_ADDED_OFF[k]}
    ident = json.dumps({"recipe": rec, "params": asdict(p), "labels": np.asarray(prep["labels"]).tolist(),
                        "clips": [Path(c.path).name for c in prep["clips"]]}, sort_keys=True, default=str)
    return checkpoints / hashlib.sha256(ident.encode()).hexdigest()[:16] / f"{kind}_{fold}.json"


def _load_checkpoint(f: Path | None) -> dict | None:
    if f is None or not f.is_file():
        return None
    log.info("%s: finished earlier, read from the checkpoint", f)
    return json.loads(f.read_text())


def _save_checkpoint(f: Path | None, content: dict) -> None:
    if f is None:
        return
    f.parent.mkdir(parents=True, exist_ok=True)
    tmp = f.with_suffix(".tmp")
    tmp.write_text(json.dumps(content))
    tmp.replace(f)                         # atomic: a killed run never leaves half a fold


def machine_record() -> dict:
    """Cores, Python and CPU model: the same recipe trains slightly differently on another CPU's floating point (and
    at another speed: ``cpu_features``, recorded from session 20 on)."""
    from edge.machine import cpu_features, cpu_model
    return {"cpu_count": __import__("os").cpu_count(), "python": platform.python_version(), "cpu": cpu_model(),
            "cpu_features": cpu_features()}


# what a fold keeps of each training run (besides its arrays: test_rows and the probs_* of the test patches)
RUN_META = ("val_actors", "best_epoch", "val_clip_accuracy", "clip_accuracy", "patch_accuracy", "snapshot_epochs",
            "self_train_clips", "minutes")


def actor_figures(folds: list[dict]) -> dict:
    """Each test actor's clip accuracy over the folds, and the mean over the male (odd) and female (even) actors
    (RAVDESS numbering), when every fold recorded it."""
    if not folds or not all("actor_clip_accuracy" in f for f in folds):
        return {}
    acc = {a: v for f in folds for a, v in f["actor_clip_accuracy"].items()}
    out = {"actor_clip_accuracy": acc}
    for sex, odd in (("male", 1), ("female", 0)):
        of_sex = [v for a, v in acc.items() if int(a) % 2 == odd]
        if of_sex:
            out[f"mean_clip_accuracy_{sex}"] = float(np.mean(of_sex))
    return out


def centring_figures(folds: list[dict]) -> dict:
    """The actor centring's skew table averaged over the folds, when every fold recorded it."""
    if not folds or not all("actor_centring_skew" in f for f in folds):
        return {}
    tables = [f["actor_centring_skew"] for f in folds]
    return {"actor_centring_skew": {alpha: mean_figures([t[alpha] for t in tables]) for alpha in tables[0]}}


def _seed_run(prep: dict, recipe: SpeechRecipe, p: Params, fi: int, seed: int, progress: bool,
              checkpoints: Path | None) -> dict:
    """One training run of a fold (one seed), kept as .npz beside the fold checkpoints: an ensemble of seeds
    reuses the runs of smaller ones (and of the single-seed recipe), and an interrupted ensemble resumes."""
    f = checkpoint_file(checkpoints, prep, recipe.replace(seeds=(seed,)), p, "run", fi)
    f = f.with_suffix(".npz") if f is not None else None
    if f is not None and f.is_file():
        log.info("%s: run of seed %d finished earlier, read from it", f, seed)
        with np.load(f, allow_pickle=False) as z:
            return {**{k: z[k] for k in z.files if k != "meta"}, **json.loads(str(z["meta"])), "from_cache": True}
    t0 = time.time()
    run = train_fold(prep["train_ps"], prep["test_ps"], prep["labels"], prep["clip_actor"], list(p.folds[fi]),
                     recipe, p, seed, progress, prep.get("intensity"))
    run["minutes"] = (time.time() - t0) / 60
    if f is not None:
        f.parent.mkdir(parents=True, exist_ok=True)
        tmp = f.with_suffix(".tmp.npz")
        meta = json.dumps({k: run[k] for k in RUN_META if k in run}, default=lambda v: v.item())
        np.savez(tmp, meta=np.array(meta), **{k: np.asarray(v) for k, v in run.items()
                                              if k == "test_rows" or k.startswith("probs")})
        tmp.replace(f)                     # atomic, as a fold checkpoint
    return run


def _run_fold(prep: dict, recipe: SpeechRecipe, p: Params, fi: int, progress: bool,
              checkpoints: Path | None = None) -> dict:
    """One fold (every seed of the recipe): its report row and the votes behind the confusion matrix."""
    t0 = time.time()
    labels, clip_actor, test_ps = prep["labels"], prep["clip_actor"], prep["test_ps"]
    test_actors = list(p.folds[fi])
    runs = [_seed_run(prep, recipe, p, fi, seed, progress, checkpoints) for seed in recipe.seeds]
    probs = np.mean([r["probs"] for r in runs], axis=0)           # ensemble of seeds
    rows = runs[0]["test_rows"]
    clip_of_row = recorded_clip(test_ps.clip[rows], clip_actor)        # copies vote for their recorded clip

    def accuracy(voted: tuple[np.ndarray, np.ndarray]) -> float:
        return float(np.mean(voted[1] == labels[voted[0]]))
    ids, pred = vote(probs, clip_of_row)
    fold = {"test_actors": test_actors, "val_actors": runs[0]["val_actors"], "clip_accuracy": accuracy((ids, pred)),
            "patch_accuracy": float(np.mean(probs.argmax(1) == labels[test_ps.clip[rows]])),
            "n_test_clips": int(len(ids)), "n_test_patches": int(len(rows)),
            "best_epochs": [r["best_epoch"] for r in runs],
            "val_clip_accuracy": [r["val_clip_accuracy"] for r in runs],
            "single_seed_clip_accuracy": [r["clip_accuracy"] for r in runs]}
    def paired(key: str) -> float:   # the clip accuracy of the same runs' other probabilities (own where none)
        return accuracy(vote(np.mean([r.get(key, r["probs"]) for r in runs], axis=0), clip_of_row))
    # each test actor's clips alone (the recorded clips' votes, copies included as in the headline)
    right, actor_of_clip = pred == labels[ids], clip_actor[ids]
    fold["actor_clip_accuracy"] = {str(int(a)): float(right[actor_of_clip == a].mean()) for a in np.unique(actor_of_clip)}
    # the same probabilities summed per clip instead of counted (not the paper's rule: a paired figure)
    fold["clip_accuracy_soft_vote"] = accuracy(soft_vote(probs, clip_of_row))
    # each test actor's mean clip score removed before voting (transductive: not the paper's rule), and what that
    # costs when a speaker's clips do not cover the emotions evenly
    c_ids, c_vote, c_scores = actor_centred(probs, clip_of_row, clip_actor)
    fold["clip_accuracy_actor_centred"] = accuracy((c_ids, c_vote))
    fold["clip_accuracy_actor_centred_scores"] = accuracy((c_ids, c_scores))
    fold["actor_centring_skew"] = centring_under_skew(probs, clip_of_row, clip_actor, labels, seed=fi)
    if len(runs) > 1:                                  # the ensemble of the first k seeds, k = 1 .. all
        firsts = [np.mean([r["probs"] for r in runs[:k]], axis=0) for k in range(1, len(runs) + 1)]
        fold["clip_accuracy_first_seeds"] = [accuracy(vote(pr, clip_of_row)) for pr in firsts]
        fold["clip_accuracy_first_seeds_soft_vote"] = [accuracy(soft_vote(pr, clip_of_row)) for pr in firsts]
    if any("probs_best_epoch" in r for r in runs):  # the best epochs' models alone, without their snapshots
        fold["clip_accuracy_best_epoch"] = paired("probs_best_epoch")
        fold["snapshot_epochs"] = [r.get("snapshot_epochs", [r["best_epoch"]]) for r in runs]
    if recipe.speaker_bn:                           # the best epochs' models with their trained BatchNorm statistics
        fold["clip_accuracy_without_speaker_bn"] = paired("probs_without_speaker_bn")
    if recipe.self_train:                           # the same models before self-training on the test speakers
        fold["clip_accuracy_without_self_train"] = paired("probs_without_self_train")
        fold["self_train_clips"] = [r["self_train_clips"] for r in runs]
    if recipe.test_speeds:            # the same models without test-time augmentation: a paired figure
        rec = test_ps.clip[rows] < n_recorded(clip_actor)
        fold["clip_accuracy_without_test_speeds"] = accuracy(vote(probs[rec], clip_of_row[rec]))
        trained = [s for s in recipe.test_speeds if s in recipe.speed_perturb]
        if trained and len(trained) < len(recipe.test_speeds):   # and with the copies at training speeds alone
            keep = test_ps.clip[rows] < n_recorded(clip_actor) * (1 + len(recipe.speed_perturb))
            fold["clip_accuracy_trained_test_speeds"] = accuracy(vote(probs[keep], clip_of_row[keep]))
    # this fold's own time: what ran now, and what the runs read back took when they ran
    fold["minutes"] = (time.time() - t0) / 60 + sum(r["minutes"] for r in runs if r.get("from_cache"))
    return {"fold": fold, "true": labels[ids].tolist(), "pred": pred.tolist()}


# paired figures a fold may carry besides clip_accuracy (clip_accuracy_<name>: the same runs voted another way)
PAIRED = ("without_speaker_bn", "best_epoch", "trained_test_speeds", "without_self_train", "soft_vote",
          "actor_centred", "actor_centred_scores")


def run_cv(prep: dict, recipe: SpeechRecipe, p: Params = Params(), folds: list[int] | None = None,
           progress: bool = True, checkpoints: Path | None = None) -> dict:
    """Run the folds (all by default); returns the speech_cv.json content. With ``checkpoints`` (a folder) each
    finished fold is kept there and a rerun of the same run resumes after it."""
    test_ps = prep["test_ps"]
    fold_results, all_true, all_pred = [], [], []
    for fi in (folds if folds is not None else range(len(p.folds))):
        f = checkpoint_file(checkpoints, prep, recipe, p, "fold", fi)
        done = _load_checkpoint(f)
        if done is None:
            done = _run_fold(prep, recipe, p, fi, progress, checkpoints)
            _save_checkpoint(f, done)
        fold = done["fold"]
        log.info("fold %s: clip %.3f patch %.3f", fold["test_actors"], fold["clip_accuracy"], fold["patch_accuracy"])
        fold_results.append(fold)
        all_true.append(np.array(done["true"], int))
        all_pred.append(np.array(done["pred"], int))
    accs = [f["clip_accuracy"] for f in fold_results]
    n_real = n_recorded(prep["clip_actor"])
    n_per_clip = np.bincount(test_ps.clip, minlength=n_real)[:n_real]
    trimmed = np.array([f.seconds_trimmed for f in prep["feats"]])
    original = np.array([f.seconds_in for f in prep["feats"]])
    from training.speech import build_head
    result = {
        "protocol": "actor-independent 4-fold CV (6 test actors a fold: 3 male + 3 female); model selection "
                    "on validation actors held out of the training actors"
                    + ("; the tested model then retrained on all training actors for the selected epoch count"
                       if recipe.refit and recipe.val_actors else "") + "; clip = majority vote of patches",
        "folds": fold_results,
        "mean_clip_accuracy": float(np.mean(accs)), "std_clip_accuracy": float(np.std(accs)),
        "mean_patch_accuracy": float(np.mean([f["patch_accuracy"] for f in fold_results])),
        **({"mean_clip_accuracy_without_test_speeds":
            float(np.mean([f["clip_accuracy_without_test_speeds"] for f in fold_results]))} if recipe.test_speeds else {}),
        **{f"mean_clip_accuracy_{name}": float(np.mean([f[f"clip_accuracy_{name}"] for f in fold_results]))
           for name in PAIRED if fold_results and all(f"clip_accuracy_{name}" in f for f in fold_results)},
        **{f"mean_clip_accuracy_{name}": np.mean([f[f"clip_accuracy_{name}"] for f in fold_results], axis=0).tolist()
           for name in ("first_seeds", "first_seeds_soft_vote")
           if fold_results and all(f"clip_accuracy_{name}" in f for f in fold_results)},
        **({"mean_clip_accuracy_each_seed": np.mean([f["single_seed_clip_accuracy"] for f in fold_results],
                                                    axis=0).tolist()} if len(recipe.seeds) > 1 else {}),
        **actor_figures(fold_results),
        **centring_figures(fold_results),
        "params": int(build_head(recipe, p).count_params()),
        "patches_per_clip": {"mean": float(n_per_clip.mean()), "min": int(n_per_clip.min()),
                             "max": int(n_per_clip.max()), "hop_seconds": recipe.test_hop_frames / 100},
        "vad": {"mean_seconds_in": float(original.mean()), "mean_seconds_trimmed": float(trimmed.mean()),
                "mean_trimmed_fraction": float(1 - (trimmed / original).mean())},
        "n_clips": int(n_real), "skipped": prep["skipped"],
        "recipe": asdict(recipe), "folds_map": [list(f) for f in p.folds],
        "emotions": list(p.emotions),
        "confusion": confusion(np.concatenate(all_true), np.concatenate(all_pred), p.num_classes).tolist(),
        "cv_minutes": sum(f["minutes"] for f in fold_results),       # resumed folds count their own time
        "machine": machine_record(),
    }
    return result


def speaker_dependent(prep: dict, recipe: SpeechRecipe, p: Params = Params(), n_folds: int = 4,
                      eval_folds: int = 2, progress: bool = True, checkpoints: Path | None = None) -> dict:
    """Random clip-level 4-fold split (every actor in train and test): the optimistic, speaker-DEPENDENT figure."""
    import keras

    from training.speech import (
        Standardizer,
        build_head,
        clip_accuracy,
        fit_epochs,
        head_trainer,
        make_epoch,
        prefetched,
        trainable,
        with_test_copies,
    )
    labels, clip_actor = prep["labels"], prep["clip_actor"]
    rng = np.random.default_rng(0)
    n_real = n_recorded(clip_actor)
    order = rng.permutation(n_real)
    accs, folds = [], []
    for k in range(eval_folds):
        ckpt = checkpoint_file(checkpoints, prep, recipe, p, f"speaker_dependent_{n_folds}", k)
        done = _load_checkpoint(ckpt)
        if done is not None and "clip_accuracy_male" in done:       # (older checkpoints lack the split: rerun)
            accs.append(done["clip_accuracy"])
            folds.append(done)
            continue
        test = np.sort(order[k::n_folds])
        train = np.setdiff1d(np.arange(n_real), test)
        train = np.concatenate([train + n_real * j for j in range(len(labels) // n_real)])   # with their copies
        train = trainable(train, prep["train_ps"])
        keras.utils.set_random_seed(k)
        std = Standardizer.fit(prep["train_ps"], clip_actor, train, recipe.feature_norm, prep["test_ps"])
        model = build_head(recipe, p)
        trainer = head_trainer(model, recipe, len(np.unique(clip_actor[train])), p)
        erng = np.random.default_rng(k)
        fit_epochs(trainer, model, prefetched(recipe.epochs, make_epoch, prep["train_ps"], train, labels, std,
                                              clip_actor, recipe, erng, p.num_classes), recipe, p)
        acc, _, ids, pred, _ = clip_accuracy(model, prep["test_ps"], with_test_copies(test, clip_actor, recipe),
                                             labels, std, clip_actor, recipe.speaker_bn)
        right, odd = pred == labels[ids], clip_actor[ids] % 2 == 1       # RAVDESS: odd actors male
        folds.append({"clip_accuracy": acc, "clip_accuracy_male": float(right[odd].mean()),
                      "clip_accuracy_female": float(right[~odd].mean())})
        accs.append(acc)
        _save_checkpoint(ckpt, folds[-1])
        log.info("speaker-dependent fold %d: %.3f", k, accs[-1])
    return {"protocol": f"speaker-DEPENDENT random {n_folds}-fold split over clips (same actors in train and test), "
                        f"first {eval_folds} folds evaluated, fixed {recipe.epochs} epochs", "fold_clip_accuracy": accs,
            "mean_clip_accuracy": float(np.mean(accs)),
            **{f"mean_clip_accuracy_{sex}": float(np.mean([f[f"clip_accuracy_{sex}"] for f in folds]))
               for sex in ("male", "female")}}


def confusion(true: np.ndarray, pred: np.ndarray, k: int) -> np.ndarray:
    m = np.zeros((k, k), int)
    np.add.at(m, (true, pred), 1)
    return m


def plot_confusion(cm: np.ndarray, labels: list[str], path: Path, title: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    norm = cm / np.maximum(cm.sum(1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(6.4, 5.6))
    im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right")
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for i in range(len(labels)):
        for j in range(len(labels)):
            ax.text(j, i, f"{norm[i, j]:.2f}\n({cm[i, j]})", ha="center", va="center", fontsize=6.5,
                    color="white" if norm[i, j] > 0.5 else "black")
    ax.set_title(title, fontsize=10)
    fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


CV_BUDGET_MINUTES = 30      # the speech CV's time target on 2 cores (issue 3): ensembles within it are not research-only

# Ablation variants: (name, what changes vs the recipe, overrides). Each runs the same folds.
ABLATION = (
    ("naive", "no speaker normalisation, no augmentation (patch model + vote)",
     dict(logmel_norm="none", feature_norm="global", time_masks=0, freq_masks=0, mixup_alpha=0.0, noise_std=0.0)),
    ("no-speaker-norm", "recipe without per-actor normalisation (global standardisation only)",
     dict(logmel_norm="none", feature_norm="global")),
    ("clip-cmn", "per-clip log-mel mean removal instead of per-actor (device-friendly, no speaker stats)",
     dict(logmel_norm="clip", feature_norm="global")),
    ("no-augment", "recipe without SpecAugment, mixup and noise",
     dict(time_masks=0, freq_masks=0, mixup_alpha=0.0, noise_std=0.0)),
    ("recipe", "the chosen recipe (per-actor log-mel + feature norm, SpecAugment, mixup, 0.08 s crops, label "
               "smoothing 0.1, speed perturbation 0.9/1.1, test clips also voted at six speeds 0.85x-1.15x)", dict()),
    ("test-hop-0.24", "recipe, patches every 0.24 s at test (more votes)", dict(test_hop_frames=24)),
    ("refit", "recipe, then retrain on all 18 training actors for the selected epoch count (measured before "
              "it joined the recipe, against the recipe of its time)", dict(refit=True)),
    ("ensemble-3", "recipe, 3 seeds (different validation actors and initialisations), probabilities averaged",
     dict(seeds=(0, 1, 2))),
    ("ensemble-5", "recipe, 5 seeds (as ensemble-3, two more), probabilities averaged", dict(seeds=(0, 1, 2, 3, 4))),
    ("ensemble-2-20ep", "recipe, 2 seeds, each run 20 epochs at most (patience 5): an ensemble sized for the "
                        "30-minute budget", dict(seeds=(0, 1), epochs=20, patience=5)),
    ("device-norm", "the shipped model's normalisation: per-speaker log-mel mean, global feature statistics",
     dict(feature_norm="global")),
    ("freq-warp-0.1", "recipe + VTLP-like frequency warp of activation_3 by up to +-10% per training patch",
     dict(freq_warp=0.1)),
    ("freq-warp-0.2", "recipe + frequency warp up to +-20%", dict(freq_warp=0.2)),
    ("no-label-smoothing", "recipe without label smoothing (the recipe until label smoothing 0.1 joined it)",
     dict(label_smoothing=0.0)),
    ("no-speed-perturb", "recipe without speed perturbation (the recipe until speed perturbation joined it)",
     dict(speed_perturb=(), test_speeds=())),
    ("speed-perturb-4", "recipe with four training speeds (0.8, 0.9, 1.1, 1.2) instead of two; 20 epochs at most "
                        "(patience 7), as each epoch holds 5/3 of the crops",
     dict(speed_perturb=(0.8, 0.9, 1.1, 1.2), epochs=20, patience=7)),
    ("val-actors-2", "recipe with 2 validation actors (1 M + 1 F) instead of 4: 16 training actors, not 14",
     dict(val_actors=2)),
    ("no-speed-same-steps", "recipe without speed perturbation but 12 crops per clip an epoch: the same training "
                            "steps as the recipe (whose copies triple an epoch)",
     dict(speed_perturb=(), test_speeds=(), patches_per_clip=12)),
    ("pooled-speeds", "recipe, but each clip's 4 crops an epoch drawn from it and its two speed copies together: "
                      "the epoch size (and time) of a run without copies", dict(pool_speeds=True)),
    ("cosine-lr", "recipe with Adam's rate falling from 1e-3 to 5e-5 over the 30 epochs (cosine) instead of constant",
     dict(lr_decay="cosine")),
    ("select-with-copies", "recipe, model selection voting the validation clips with their 0.9x/1.1x copies, as the "
                           "test clips are voted", dict(select_with_test_speeds=True)),
    ("snapshots-3", "recipe, test patches get the mean probabilities of the models of each run's 3 best validation "
                    "epochs (a snapshot ensemble: one training run; not with the refit, which tests one retrained model)",
     dict(snapshots=3, refit=False)),
    ("speaker-bn", "recipe, test speakers predicted with BatchNorm statistics of their own patches (AdaBN)",
     dict(speaker_bn=True)),
    ("speaker-adversary-0.3", "recipe + a speaker classifier on the attention context trained through a gradient "
                              "reversal of weight 0.3 (DANN; every speed copy a speaker)",
     dict(speaker_adversary=0.3)),
    ("speaker-adversary-0.1", "speaker-adversary-0.3 with a reversed-gradient weight of 0.1",
     dict(speaker_adversary=0.1)),
    ("pitch-copies", "recipe, every speed copy (training and test) stretched back to its clip's duration: copies "
                     "that move pitch and spectral envelope but keep the tempo",
     dict(keep_tempo=True)),
    ("pitch-copies-4", "pitch-copies with four training pitches (0.8, 0.9, 1.1, 1.2) instead of two; 20 epochs at "
                       "most (patience 7), as speed-perturb-4",
     dict(keep_tempo=True, speed_perturb=(0.8, 0.9, 1.1, 1.2), epochs=20, patience=7)),
    ("speed-and-pitch", "recipe + training pitch copies at 0.9 and 1.1 (tempo kept) beside the speed copies: five "
                        "versions of a clip; 20 epochs at most (patience 7), as speed-perturb-4",
     dict(pitch_perturb=(0.9, 1.1), epochs=20, patience=7)),
    ("actor-freq-norm", "recipe with activation_3 standardised per actor, frequency bin and channel (16 x 64 "
                        "statistics a speaker) instead of per actor and channel",
     dict(feature_norm="actor_freq")),
    ("self-train-0.5", "recipe, then 8 more epochs with the test speakers' most confident half of clips (per voted "
                       "class) labelled with the model's own vote: transductive self-training, test labels unread",
     dict(self_train=0.5)),
    ("lstm-128", "recipe with a BiLSTM of 128 units a direction instead of 64 (487k head parameters, under the "
                 "500k budget, against 248k)", dict(lstm_units=128)),
    ("patch-1.44s", "recipe with patches of 1.44 s (144 log-mel frames) instead of YAMNet's 0.96 s: activation_3 "
                    "of 36 x 16 x 64, the BiLSTM over 18 steps; more context a sample, fewer votes a clip",
     dict(patch_frames=144)),
    ("patch-2.24s", "recipe with 2.24 s patches (224 log-mel frames, about a whole trimmed clip: a shorter clip is "
                    "padded to one patch, a longer one cropped), 2 crops a clip an epoch instead of 4 (about the "
                    "recipe's compute): near a clip-level model", dict(patch_frames=224, patches_per_clip=2)),
    ("pitch-norm-0.5", "recipe + pitch normalisation: every actor's clips (training and test) played at (reference "
                       "F0 / the actor's median F0) ** 0.5, clipped to 0.8-1.25x, the speed copies taken from there "
                       "(a row designed after the per-actor figures showed male actors 12 points below female ones)",
     dict(pitch_norm=0.5)),
    ("dropout-0.5", "recipe with dropout 0.5 instead of 0.3 (spatial dropout after each conv 0.25 instead of 0.15)",
     dict(dropout=0.5)),
    ("no-weight-ema", "recipe with the raw weights of the best epoch selected and tested, not their moving "
                      "average (the recipe until weight averaging joined it)", dict(weight_ema=0.0)),
    ("no-weight-ema-seed-1", "no-weight-ema with seed 1: the lever again on another seed, against the seed-1 row",
     dict(weight_ema=0.0, seeds=(1,))),
    ("ensemble-2", "recipe, 2 seeds (0 and 1: the recipe's and seed-1's runs), probabilities averaged",
     dict(seeds=(0, 1))),
    ("no-refit", "recipe without the refit: the selection run's model tested, its run up to 30 epochs (patience "
                 "10) (the recipe until refitting joined it)", dict(refit=False, epochs=30, patience=10)),
    ("no-refit-seed-1", "no-refit with seed 1: the lever again on another seed, against the seed-1 row",
     dict(refit=False, epochs=30, patience=10, seeds=(1,))),
    ("no-refit-ensemble-2", "no-refit, 2 seeds (0 and 1: no-refit's and no-refit-seed-1's runs), probabilities "
                            "averaged", dict(refit=False, epochs=30, patience=10, seeds=(0, 1))),
    ("refit-30ep", "recipe with a selection run of up to 30 epochs (patience 10) before the refit, instead of 20 "
                   "(5): over the 30-minute budget", dict(epochs=30, patience=10)),
    ("refit-30ep-seed-1", "refit-30ep with seed 1, against the seed-1 row", dict(epochs=30, patience=10, seeds=(1,))),
    ("refit-30ep-ensemble-2", "refit-30ep, 2 seeds (0 and 1: refit-30ep's and refit-30ep-seed-1's runs), "
                              "probabilities averaged", dict(epochs=30, patience=10, seeds=(0, 1))),
    ("fixed-12ep", "recipe without a selection run: one model trains on all 18 training actors for 12 epochs (the "
                   "median of the 8 epoch counts the validation actors chose in the recipe's runs, seeds 0 and 1) "
                   "and is tested", dict(val_actors=0, epochs=12)),
    ("fixed-12ep-ensemble-2", "fixed-12ep, 2 seeds, probabilities averaged: about the recipe's training time",
     dict(val_actors=0, epochs=12, seeds=(0, 1))),
    ("weight-ema-0.998", "recipe with a longer weight average (momentum 0.998 a batch, about 3.3 epochs, instead of "
                         "0.995): the refit tests its last epoch's average, which no selection guards",
     dict(weight_ema=0.998)),
    ("attention-stats", "recipe with attentive statistics pooling: the attention's weighted mean of the BiLSTM steps "
                        "and their weighted variance side by side (a 256-wide embedding, not 128)",
     dict(pooling="attention_stats")),
    ("freq-pool-2", "recipe with the first head conv pooling time only: 8 frequency bins reach the BiLSTM instead of 4 "
                    "(512 features a step, 379k head parameters against 248k)", dict(freq_pool=2)),
    ("aux-intensity-0.3", "recipe + multi-task training: a second softmax on the embedding learns each clip's "
                          "intensity (normal or strong), its loss weighted 0.3", dict(aux_intensity=0.3)),
    ("seed-1", "the recipe with seed 1 (validation actors, initialisation and every draw) instead of 0: not a "
               "lever, a measure of run-to-run noise", dict(seeds=(1,))),
    ("test-speeds-2", "recipe, test clips voted with their 0.9x/1.1x copies only (the training speeds; the recipe "
                      "until the four test-only speeds joined it)", dict(test_speeds=(0.9, 1.1))),
    ("no-test-speeds", "recipe without test-time augmentation (the recipe until it joined): test clips voted as "
                       "recorded, not also at other speeds", dict(test_speeds=())),
)


# overrides of a row that its base keeps: the row repeats a lever on another seed, against that seed's row (or
# the lever cannot run without the override)
KEPT_IN_BASE = {"no-weight-ema-seed-1": ("seeds",), "no-refit-seed-1": ("seeds",), "refit-30ep-seed-1": ("seeds",),
                "snapshots-3": ("refit",)}       # a snapshot ensemble needs the refit off: so does its base
# rows of a lever measured before it joined the recipe (their rows now read as the recipe): the base they were
# measured against had these values, not the current recipe's
LEVER_BASE = {"refit": dict(refit=False, epochs=30, patience=10)}


def recipe_as_run(stored: dict) -> dict:
    """A recipe stored in a report as JSON values, with the fields it predates as they were before they existed
    (``FIELDS_ADDED_OFF``, else the field's default)."""
    return {**as_json(asdict(SpeechRecipe())), **FIELDS_ADDED_OFF, **as_json(stored)}


def current_recipe() -> dict:
    """The recipe `edge-train speech` runs now (the ablation's reference: `--ablation` measures against it, even
    when the headline run in speech_cv.json predates a change to it)."""
    return as_json(asdict(SpeechRecipe()))


def recipe_changes(old: dict, new: dict) -> dict:
    """Fields of stored recipe ``new`` that differ from stored recipe ``old`` (both read as run), with new's values."""
    a, b = recipe_as_run(old), recipe_as_run(new)
    return {k: v for k, v in b.items() if a.get(k) != v}


def ablation_base(row: dict, rows: list[dict], current: dict) -> tuple[dict, dict | None]:
    """What ``row`` of the ablation was measured against: (its fields that differ from ``current`` beyond its own
    overrides, the row measured with that base recipe on the same folds or None). ``current``: the headline
    recipe. A row run before the recipe changed has a non-empty first part."""
    over = {n: o for n, _, o in ABLATION}.get(row["name"])
    if over is None:
        return {}, None
    have = recipe_as_run(row["recipe"])
    cur = recipe_as_run(current)
    base = {**have, **{k: cur[k] for k in over if k not in KEPT_IN_BASE.get(row["name"], ())},
            **as_json(LEVER_BASE.get(row["name"], {}))}
    differs = recipe_changes(cur, base)
    match = next((b for b in rows if b["name"] != row["name"] and b["folds"] == row["folds"]
                  and recipe_as_run(b["recipe"]) == base), None)
    return differs, match


def _other_cpu(row: dict, headline: dict) -> str:
    """A note for a minutes cell when the row ran on a CPU other than the headline run's (rows record their machine
    from session 20 on): two CPUs with one model name ("AMD EPYC") can train at very different speeds."""
    m = row.get("machine")
    if not m or m.get("cpu_features") == headline.get("machine", {}).get("cpu_features"):
        return ""
    return f" ({' '.join(filter(None, (m.get('cpu'), m['cpu_features'])))}, not the recipe run's CPU)"


def base_label(row: dict, ablation: list[dict]) -> str:
    """The ablation table's base column: "recipe", or "recipe with k=v, ..." for a row of an earlier recipe."""
    differs, _ = ablation_base(row, ablation, current_recipe())
    return "recipe" if not differs else "recipe with " + ", ".join(f"{k}={v}" for k, v in differs.items())


def four_fold_rows(ablation: list[dict]) -> list[dict]:
    """The ablation rows measured on all four folds that recorded their patch accuracy."""
    return [a for a in ablation if a["folds"] in ([0, 1, 2, 3], "all") and "mean_patch_accuracy" in a]


def n_seeds(row: dict) -> int:
    """How many training runs (seeds) an ablation row's figures average."""
    return len(recipe_as_run(row["recipe"])["seeds"])


def plot_actors(r: dict, path: Path, paper: float = 0.7222) -> None:
    """Each test actor's clip accuracy, one bar an actor coloured by its fold (hatched: female), with the mean and
    the paper's figure as lines: how much of the fold spread is a few actors."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    acc = {int(a): 100 * v for a, v in r["actor_clip_accuracy"].items()}
    fold_of = {a: i for i, f in enumerate(r["folds"]) for a in f["test_actors"]}
    actors = sorted(acc)
    fig, ax = plt.subplots(figsize=(8.4, 3.6))
    for a in actors:
        ax.bar(a, acc[a], color=f"C{fold_of.get(a, 0)}", hatch="//" if a % 2 == 0 else None, edgecolor="white")
    ax.axhline(100 * r["mean_clip_accuracy"], color="black", lw=1, label=f"mean {100 * r['mean_clip_accuracy']:.1f}%")
    ax.axhline(100 * paper, color="tab:red", lw=1, ls="--", label=f"paper {100 * paper:.2f}%")
    ax.axhline(100 / len(r["emotions"]), color="grey", lw=1, ls=":", label="chance")
    ax.set_xticks(actors)
    ax.set_xlabel("test actor (odd male, even female hatched; colour: fold)")
    ax.set_ylabel("clip accuracy %")
    ax.set_ylim(0, 100)
    ax.legend(fontsize=8, loc="lower right")
    ax.set_title("speech, actor-independent 4-fold: each actor's 60 clips", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


def _actors_finding(r: dict, ablation: list[dict] = ()) -> list[str]:
    """The spread over test actors (each voted by the model of the fold that held it out), male vs female, and
    the same split in the four-fold ablation rows that recorded it."""
    if "actor_clip_accuracy" not in r:
        return []
    acc = {int(a): v for a, v in r["actor_clip_accuracy"].items()}
    order = sorted(acc, key=lambda a: (acc[a], a))
    sexes = actor_figures([{"actor_clip_accuracy": r["actor_clip_accuracy"]}])

    def name(a: int) -> str:
        return f"{a} ({100 * acc[a]:.1f}%)"
    text = (f"- **Actors.** Each actor's clips, voted by the fold model that held the actor out, score "
            f"{100 * acc[order[0]]:.1f}–{100 * acc[order[-1]]:.1f}% (std {100 * float(np.std(list(acc.values()))):.1f} "
            f"points over {len(acc)} actors): hardest {', '.join(name(a) for a in order[:3])}; easiest "
            f"{', '.join(name(a) for a in order[::-1][:3])}. {sum(v >= 0.7222 for v in acc.values())} of {len(acc)} "
            f"actors reach the paper's 72.22%. Male actors {100 * sexes['mean_clip_accuracy_male']:.1f}%, female "
            f"{100 * sexes['mean_clip_accuracy_female']:.1f}%.")
    sd = r.get("speaker_dependent") or {}
    if "mean_clip_accuracy_male" in sd:
        gap = sexes["mean_clip_accuracy_female"] - sexes["mean_clip_accuracy_male"]
        sd_gap = sd["mean_clip_accuracy_female"] - sd["mean_clip_accuracy_male"]
        text += (f" With the test actors also in training (the speaker-dependent split) the gap is "
                 f"{100 * sd_gap:.1f} of these {100 * gap:.1f} points (male {100 * sd['mean_clip_accuracy_male']:.1f}%, "
                 f"female {100 * sd['mean_clip_accuracy_female']:.1f}%): "
                 + ("most of it comes with the actors' clips, not with generalising to new speakers."
                    if sd_gap > gap / 2 else "most of it comes with generalising to new speakers."))
    split = [a for a in four_fold_rows(list(ablation)) if a["name"] != "recipe" and "mean_clip_accuracy_male" in a]
    if split:
        text += " The same split in the ablation rows that record it: " + "; ".join(
            f"`{a['name']}` male {100 * a['mean_clip_accuracy_male']:.1f}%, female "
            f"{100 * a['mean_clip_accuracy_female']:.1f}%" for a in split) + "."
    return [text + "\n\n  ![actors](speech_actors.png)"]


def plot_levers(rows: list[dict], path: Path, paper: float = 0.7222) -> None:
    """Patch accuracy against clip accuracy, one point a 4-fold ablation row (the recipe highlighted), with the
    paper's clip accuracy as a line: whether the levers that make better patches make better clips."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7.2, 5.2))
    placed: list[tuple[float, float, int]] = []                  # labels drawn: (x, y, vertical offset)
    for a in rows:
        x, y = 100 * a["mean_patch_accuracy"], 100 * a["mean_clip_accuracy"]
        recipe, ensemble = a["name"] == "recipe", n_seeds(a) > 1
        ax.scatter(x, y, s=60 if recipe else 28, color="tab:red" if recipe else "tab:orange" if ensemble
                   else "tab:blue", marker="D" if ensemble else "o", zorder=3,
                   label="ensemble of seeds" if ensemble else None)
        off = 3
        while any(abs(x - px) < 1.2 and abs(y - py) < 0.1 and off == po for px, py, po in placed):
            off -= 9                                                  # a crowded label goes one line lower
        ax.annotate(a["name"], (x, y), textcoords="offset points", xytext=(4, off), fontsize=7)
        placed.append((x, y, off))
    ax.axhline(100 * paper, color="grey", linestyle="--", linewidth=1)
    ax.text(ax.get_xlim()[0], 100 * paper, f" paper {100 * paper:.2f}%", va="bottom", fontsize=8, color="grey")
    if any(n_seeds(a) > 1 for a in rows):
        handles, labels = ax.get_legend_handles_labels()
        ax.legend(handles[:1], labels[:1], loc="lower right", fontsize=8)
    ax.set_xlabel("mean patch accuracy, % (test patches, copies included)")
    ax.set_ylabel("mean clip accuracy, % (majority vote)")
    ax.set_title("speech levers over all four folds (reports/speech_ablation.json)", fontsize=10)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


def write_reports(result: dict, out: Path, ablation: list[dict] | None = None, command: str = "") -> None:
    out.mkdir(parents=True, exist_ok=True)
    public = {k: v for k, v in result.items() if not k.startswith("_")}
    public["command"] = command or public.get("command", "")
    (out / "speech_cv.json").write_text(json.dumps(public, indent=2))
    cm = np.array(result["confusion"])
    plot_confusion(cm, result["emotions"], out / "speech_confusion.png",
                   f"speech, actor-independent 4-fold: {100 * result['mean_clip_accuracy']:.1f}% clip accuracy")
    four = four_fold_rows(ablation or [])
    if len(four) > 1:
        plot_levers(four, out / "speech_levers.png")
    if "actor_clip_accuracy" in result:
        plot_actors(result, out / "speech_actors.png")
    (out / "speech.md").write_text(speech_markdown(public, ablation or [], public["command"], load_skew(out)))




def _stale_headline(r: dict) -> list[str]:
    """A warning when the headline run predates the recipe the code runs now."""
    have = recipe_as_run(r["recipe"])
    differs = recipe_changes(have, current_recipe())
    if not differs:
        return []
    return [f"*This 4-fold run predates the current recipe, which differs in "
            f"{', '.join(f'{k}={v}' for k, v in differs.items())} (it ran with "
            f"{', '.join(f'{k}={have.get(k)}' for k in differs)}); the ablation's `recipe` row measures the current "
            f"recipe on the ablation folds.*", ""]


def _paired_note(r: dict) -> list[str]:
    if "mean_clip_accuracy_without_test_speeds" not in r:
        return []
    speeds = ", ".join(f"{s:g}x" for s in r["recipe"]["test_speeds"])
    return [f"Test-time augmentation: each test clip is also voted at {speeds} (its speed copies, normalised as "
            f"their pseudo speaker). The same models voting on the recorded clips alone score "
            f"**{100 * r['mean_clip_accuracy_without_test_speeds']:.2f}%** (column *without test copies*)."
            + _trained_speeds_note(r), ""]


def _paired_figure(r: dict, name: str) -> str:
    """A paired figure of the headline, its mean in bold and each fold's: '**67.78%** (folds 74.2, ...)'."""
    folds = ", ".join(f"{100 * f[f'clip_accuracy_{name}']:.1f}" for f in r["folds"])
    return f"**{100 * r[f'mean_clip_accuracy_{name}']:.2f}%** (folds {folds})"


def _trained_speeds_note(r: dict) -> str:
    if "mean_clip_accuracy_trained_test_speeds" not in r:
        return ""
    rec = r["recipe"]
    trained = ", ".join(f"{s:g}x" for s in rec["test_speeds"] if s in rec["speed_perturb"])
    only = ", ".join(f"{s:g}x" for s in rec["test_speeds"] if s not in rec["speed_perturb"])
    return (f" {only} are test-only copies (speeds never trained on); voting with the copies at the training speeds "
            f"({trained}) alone, the same models score {_paired_figure(r, 'trained_test_speeds')}.")


# paired figures beside clip_accuracy (the same runs voted another way): what each is, in an ablation row
PAIRED_ROW_TEXT = {"best_epoch": "from each run's best epoch alone",
                   "without_speaker_bn": "from the same models with their trained BatchNorm statistics",
                   "without_self_train": "from the same models before self-training",
                   "soft_vote": "voting each clip by its summed probabilities instead of the majority",
                   "actor_centred": "with each test actor's mean clip score removed before the vote (transductive)"}


def _lever_notes(r: dict) -> list[str]:
    """A paragraph for each lever of the headline run that carries a paired figure."""
    rec = r["recipe"]
    notes = {
        "best_epoch": lambda: (
            f"Snapshot ensemble: test patches get the mean probabilities of the models of the {rec['snapshots']} "
            f"best validation epochs of one training run (epochs per fold: "
            f"{'; '.join(str(f['snapshot_epochs'][0]) for f in r['folds'])}). The best epoch's model alone, voting "
            f"the same clips, scores {_paired_figure(r, 'best_epoch')}."),
        "without_speaker_bn": lambda: (
            "Speaker BatchNorm (AdaBN): each test speaker (and speed copy) is predicted with BatchNorm statistics "
            "of its own patches (model selection used the trained ones). With their trained statistics the same "
            f"models score {_paired_figure(r, 'without_speaker_bn')}."),
        "without_self_train": lambda: (
            f"Self-training (transductive): after model selection, the {100 * rec['self_train']:.0f}% of each "
            f"voted class the model is surest of among the test clips train {rec['self_train_epochs']} more epochs "
            "with its own vote as their label (test labels are never read). Before it the same models score "
            f"{_paired_figure(r, 'without_self_train')}."),
        "soft_vote": lambda: (
            "Voting rule: the paper's majority of patch decisions (ties by summed probabilities). Voting each clip "
            f"by its summed probabilities instead, the same models score {_paired_figure(r, 'soft_vote')}.")}
    return ([line for name, text in notes.items() if f"mean_clip_accuracy_{name}" in r for line in (text(), "")]
            + _centring_note(r))


def _centring_note(r: dict) -> list[str]:
    """The speaker-prior figures of the headline's runs, and the skew table behind their caveat."""
    if "mean_clip_accuracy_actor_centred" not in r:
        return []
    lines = ["Speaker prior (transductive; not the paper's rule, and not what the device does): from the "
             "log-probabilities of each test actor's patches, that actor's mean clip score (a clip's score is the "
             "mean log-probability of its patches) is subtracted before they vote. It removes what the model "
             "leans towards for a voice, whatever is said. No label is read, but it presumes that a speaker's "
             "clips cover the emotions, as RAVDESS's script makes them (every actor: 4 neutral clips, 8 of each "
             f"other emotion). The same models score {_paired_figure(r, 'actor_centred')} with the paper's "
             f"majority vote and {_paired_figure(r, 'actor_centred_scores')} by the centred clip scores.", ""]
    skew = r.get("actor_centring_skew")
    if skew:
        lines += ["When a speaker's clips do not cover the emotions evenly, it costs. Each draw gives every test "
                  "actor an emotion mix from a Dirichlet(alpha), scaled so that its most frequent emotion keeps "
                  "all its clips, and the centring sees only the kept clips (50 draws a fold, means over the "
                  "draws and folds):", "",
                  "| alpha (smaller: more skewed) | clips per actor | majority vote | centred vote | "
                  "centred scores |", "|---|---|---|---|---|"]
        lines += [f"| {alpha} | {row['clips_per_actor']:.0f} | {100 * row['vote']:.2f}% | "
                  f"{100 * row['centred_vote']:.2f}% | {100 * row['centred_scores']:.2f}% |"
                  for alpha, row in skew.items()]
        lines.append("")
    return lines


def _prep_note(r: dict) -> str:
    if "prep_minutes" not in r:
        return ""
    return (f" (training and testing the folds; before them, {r['prep_minutes']:.1f} min of feature preparation: "
            "YAMNet's trunk on every clip and speed copy, log-mels read from the disk cache when present)")


def _patch_acc(row: dict) -> str:
    """An ablation row's mean patch accuracy; rows from before it was recorded have none (their fold checkpoints
    were gone, or belonged to another run of the same recipe)."""
    return f"{100 * row['mean_patch_accuracy']:.2f}%" if "mean_patch_accuracy" in row else "not recorded"


def load_skew(out: Path) -> dict | None:
    """reports/speaker_skew.json (``python -m training.speaker_skew``) beside speech_cv.json, if it was run."""
    f = Path(out) / "speaker_skew.json"
    return json.loads(f.read_text()) if f.is_file() else None


def speech_markdown(r: dict, ablation: list[dict], command: str, skew: dict | None = None) -> str:
    paired = "mean_clip_accuracy_without_test_speeds" in r
    lines = ["# Speech branch: RAVDESS, actor-independent 4-fold CV", "",
             f"Command: `{command}`" if command else "", "",
             f"**Mean clip accuracy {100 * r['mean_clip_accuracy']:.2f}% ± {100 * r['std_clip_accuracy']:.2f}** "
             f"(paper: 72.22%), patch accuracy {100 * r['mean_patch_accuracy']:.2f}%, "
             f"head parameters {r['params']:,}, CV time {r['cv_minutes']:.1f} min on "
             f"{r['machine']['cpu_count']} CPU cores{_prep_note(r)}.", "", *_stale_headline(r), *_paired_note(r), *_lever_notes(r),
             "| test actors | val actors | clip acc | " + ("without test copies | " if paired else "") +
             "patch acc | test clips | best epochs |", "|---|---|---|---|---|---|" + ("---|" if paired else "")]
    for f in r["folds"]:
        plain = f"{100 * f['clip_accuracy_without_test_speeds']:.2f}% | " if paired else ""
        lines.append(f"| {f['test_actors']} | {f['val_actors']} | {100 * f['clip_accuracy']:.2f}% | {plain}"
                     f"{100 * f['patch_accuracy']:.2f}% | {f['n_test_clips']} | {f['best_epochs']} |")
    ppc = r["patches_per_clip"]
    vad = r["vad"]
    lines += ["", f"Patches per clip at test (hop {ppc['hop_seconds']} s): mean {ppc['mean']:.2f}, "
              f"min {ppc['min']}, max {ppc['max']}. VAD: clips {vad['mean_seconds_in']:.2f} s on average, "
              f"{vad['mean_seconds_trimmed']:.2f} s after trimming leading/trailing silence "
              f"({100 * vad['mean_trimmed_fraction']:.1f}% removed). Skipped clips: {len(r['skipped'])}.", "",
              "![confusion](speech_confusion.png)", ""]
    if "speaker_dependent" in r:
        sd = r["speaker_dependent"]
        lines += ["## Speaker-DEPENDENT figure (not comparable to the paper's protocol)", "",
                  f"{sd['protocol']}: **{100 * sd['mean_clip_accuracy']:.2f}%** "
                  f"(folds {', '.join(f'{100 * a:.1f}' for a in sd['fold_clip_accuracy'])})"
                  + (f"; clips of male actors {100 * sd['mean_clip_accuracy_male']:.1f}%, of female actors "
                     f"{100 * sd['mean_clip_accuracy_female']:.1f}%" if "mean_clip_accuracy_male" in sd else "")
                  + ".", ""]
    if ablation:
        lines += ["## Ablation", "", "`edge-train speech --ablation --folds 0,2` (resumable; rows in "
                  "reports/speech_ablation.json; rows on all four folds: `--folds 0,1,2,3`). Each row changes one thing against the recipe it was measured "
                  "with: the current one, or where the base column says so, an earlier one (the row's full recipe "
                  "is in the json; the next `--ablation` run re-measures it).", "",
                  "| variant | change | base | folds | mean clip acc | patch acc | minutes |",
                  "|---|---|---|---|---|---|---|"]
        for a in ablation:
            base = base_label(a, ablation)
            paired = (f" ({100 * a['mean_clip_accuracy_without_test_speeds']:.2f}% from the same models without the "
                      "test copies)") if "mean_clip_accuracy_without_test_speeds" in a else ""
            paired += "".join(f" ({100 * a[f'mean_clip_accuracy_{name}']:.2f}% {text})"
                              for name, text in PAIRED_ROW_TEXT.items() if f"mean_clip_accuracy_{name}" in a)
            if len(a.get("mean_clip_accuracy_first_seeds", [])) > 1:
                paired += " (the first k seeds: " + ", ".join(
                    f"{100 * v:.2f}%" for v in a["mean_clip_accuracy_first_seeds"]) + ")"
            lines.append(f"| {a['name']} | {a['change']} | {base} | {a['folds']} | "
                         f"{100 * a['mean_clip_accuracy']:.2f}%{paired} | {_patch_acc(a)} | "
                         f"{a.get('cv_minutes', a['minutes']):.1f}{_other_cpu(a, r)} |")
    lines += ["", "## What limits it", ""] + limits(r, ablation, skew)
    lines += ["", "Recipe: `" + json.dumps(r["recipe"]) + "`", "", f"Folds (actors): {r['folds_map']}", ""]
    return "\n".join(lines)


def _tta_gains(*rows: dict) -> str:
    """The test copies' gain (with minus without, the same models) in each row that has the paired figure."""
    key = "mean_clip_accuracy_without_test_speeds"
    if not all(key in a for a in rows):
        return ""
    gains = [100 * (a["mean_clip_accuracy"] - a[key]) for a in rows]
    return " The test copies' paired gain was " + " and ".join(f"{g:+.1f}" for g in gains) + " points in these runs."


def _balance_finding(skew: dict | None) -> list[str]:
    """What the per-speaker statistics cost when a speaker's clips are one-sided (reports/speaker_skew.json)."""
    if not skew:
        return []
    from training.speaker_skew import most_one_sided
    most, m = most_one_sided(skew)
    return [f"- **Balanced speakers.** Each test actor is normalised (log-mel mean, feature mean and std) with "
            "statistics of all its clips, which cover every emotion. With statistics from one-sided speakers' "
            f"clips alone (each actor's emotion mix a Dirichlet({most}), {m['clips_per_actor']:.0f} clips per actor) "
            f"the same models score {100 * m['kept_clip_stats']:.1f}% against {100 * m['all_clip_stats']:.1f}% with "
            "all-clip statistics ([speaker_skew.md](speaker_skew.md)). The 4-fold figure presumes speakers whose "
            "speech covers the emotions, as the speaker prior does."]


SEED_ROW = "seed-1"                  # the recipe with another seed: how far a mean moves with no lever
NOISE_ROW = "recipe-noise-stream"    # the recipe re-run with another random stream (not a lever: run-to-run noise)


def limits(r: dict, ablation: list[dict], skew: dict | None = None) -> list[str]:
    """Findings computed from the reports: generalisation gap, the most confused pairs, fold spread."""
    out = []
    sd = r.get("speaker_dependent")
    if sd:
        out.append(f"- **New speakers.** The same recipe scores {100 * sd['mean_clip_accuracy']:.1f}% when the test "
                   f"actors are also seen in training, {100 * (sd['mean_clip_accuracy'] - r['mean_clip_accuracy']):.1f}"
                   f" points above the actor-independent {100 * r['mean_clip_accuracy']:.1f}%: most of the gap to the "
                   "paper is speaker variation, not model capacity.")
    accs = [f["clip_accuracy"] for f in r["folds"]]
    out.append(f"- **Fold spread.** Folds range {100 * min(accs):.1f}–{100 * max(accs):.1f}% (6 actors a fold): "
               "differences under ~4 points between recipes are within noise on 2 folds.")
    out += _actors_finding(r, ablation) + _balance_finding(skew)
    again = next((a for a in ablation if a["name"] == NOISE_ROW), None)
    base = next((a for a in ablation if again and a["name"] != NOISE_ROW and a["folds"] == again["folds"]
                 and recipe_as_run(a["recipe"]) == recipe_as_run(again["recipe"])), None)
    if again and base:
        diffs = [100 * (b - a) for a, b in zip(base["fold_clip_accuracy"], again["fold_clip_accuracy"], strict=True)]
        out.append(f"- **Run-to-run noise.** Row `{base['name']}` re-run with only its random stream changed (`{NOISE_ROW}`) "
                   f"moved the ablation folds by {', '.join(f'{d:+.1f}' for d in diffs)} points (mean "
                   f"{100 * base['mean_clip_accuracy']:.2f}% -> {100 * again['mean_clip_accuracy']:.2f}%): a "
                   "single-seed 2-fold difference of this size says nothing about a lever." + _tta_gains(base, again))
    for seeded in (a for a in ablation if a["name"] == SEED_ROW):
        base = next((a for a in ablation if a["name"] == "recipe" and a["folds"] == seeded["folds"]), None)
        if base is None:
            continue
        diffs = [100 * (b - a) for a, b in zip(base["fold_clip_accuracy"], seeded["fold_clip_accuracy"], strict=True)]
        out.append(f"- **Seed.** The recipe with seed 1 instead of 0 (other validation actors, initialisation and "
                   f"draws; `{SEED_ROW}`) on folds {seeded['folds']}: {100 * seeded['mean_clip_accuracy']:.2f}% "
                   f"against {100 * base['mean_clip_accuracy']:.2f}%, folds moved by "
                   f"{', '.join(f'{d:+.1f}' for d in diffs)} points. Single-seed rows differ from the recipe by "
                   "this much with no lever at all.")
    cm = np.array(r["confusion"])
    off = cm.astype(float)
    np.fill_diagonal(off, 0)
    pairs = sorted(((off[i, j] + off[j, i], i, j) for i in range(len(cm)) for j in range(i + 1, len(cm))), reverse=True)[:3]
    em = r["emotions"]
    out.append("- **Confusions.** Most confused pairs (both directions, clips): " +
               ", ".join(f"{em[i]}/{em[j]} {int(n)}" for n, i, j in pairs) + ".")
    out.append(f"- **Short context.** A patch is 0.96 s; a trimmed clip gives {r['patches_per_clip']['mean']:.1f} "
               f"patches on average, so a clip's vote has few voters (patch accuracy "
               f"{100 * r['mean_patch_accuracy']:.1f}% vs clip {100 * r['mean_clip_accuracy']:.1f}%).")
    four = [a for a in four_fold_rows(ablation) if n_seeds(a) == 1]    # one training run a fold: the levers
    if len(four) > 2:
        pa, ca = (np.array([100 * a[k] for a in four]) for k in ("mean_patch_accuracy", "mean_clip_accuracy"))
        out.append(f"- **Better patches, not better clips.** Over the {len(four)} single-run rows measured on all "
                   f"four folds that record it, the patch accuracy spans {pa.min():.1f}–{pa.max():.1f}% and the clip accuracy "
                   f"{ca.min():.1f}–{ca.max():.1f}% (correlation {np.corrcoef(pa, ca)[0, 1]:+.2f}). The row with "
                   f"the best patches (`{four[int(pa.argmax())]['name']}`) scores {ca[int(pa.argmax())]:.2f}% on "
                   "clips. (The ensembles of seeds, diamonds in the plot, raise both and are left out.)"
                   "\n\n  ![levers](speech_levers.png)")
    out += _seeds_finding(ablation)
    fold_sets = sorted({json.dumps(a["folds"]) for a in ablation}, key=len)
    for i, fs in enumerate(fold_sets):
        text = _levers(r, [a for a in ablation if json.dumps(a["folds"]) == fs], ablation)
        if text:
            out.append("- **Levers** (the recipe a row was measured against minus the row, points, on "
                       + ("the ablation folds" if i == 0 else f"folds {fs}") + "): " + text)
    return out


def largest_ensemble(ablation: list[dict]) -> dict | None:
    """The four-fold ablation row averaging the most seeds (None before any was measured); of rows with as many
    seeds, one of the current recipe (differing from it in the seeds alone)."""
    rows = [a for a in four_fold_rows(ablation) if len(a.get("mean_clip_accuracy_first_seeds", [])) > 1]
    cur = current_recipe()
    return max(rows, key=lambda a: (len(a["mean_clip_accuracy_first_seeds"]),
                                    set(recipe_changes(cur, a["recipe"])) <= {"seeds"}), default=None)


def _seeds_finding(ablation: list[dict]) -> list[str]:
    """What averaging more seeds' models buys, from the four-fold ensemble row with the most seeds."""
    a = largest_ensemble(ablation)
    if a is None:
        return []

    def curve(values: list[float]) -> str:
        return ", ".join(f"{k}: {100 * v:.2f}%" for k, v in enumerate(values, 1))
    base = base_label(a, ablation)
    of = "" if base == "recipe" else f", the {base}"
    text = (f"- **Seeds.** Averaging the probabilities of the first k seeds' models (`{a['name']}`, all four folds"
            f"{of}), k = {curve(a['mean_clip_accuracy_first_seeds'])}.")
    if "mean_clip_accuracy_each_seed" in a:
        each = a["mean_clip_accuracy_each_seed"]
        text += (" Each seed alone: " + ", ".join(f"{100 * v:.2f}%" for v in each)
                 + f" (mean {100 * float(np.mean(each)):.2f}%).")
    if "mean_clip_accuracy_first_seeds_soft_vote" in a:
        text += (" Voting each clip by its summed probabilities instead of the majority, k = "
                 + curve(a["mean_clip_accuracy_first_seeds_soft_vote"]) + ".")
    text += (f" Every seed is a whole training run: the {len(a['mean_clip_accuracy_first_seeds'])} took "
             f"{a.get('cv_minutes', a['minutes']):.0f} min on 2 cores.")
    for b in in_budget_ensembles(ablation):
        soft = (f" ({100 * b['mean_clip_accuracy_soft_vote']:.2f}% by summed probabilities)"
                if "mean_clip_accuracy_soft_vote" in b else "")
        bb = base_label(b, ablation)
        text += (f" Sized for the {CV_BUDGET_MINUTES}-minute budget (`{b['name']}`: {b['change'].split(':')[0]}"
                 f"{'' if bb == 'recipe' else ' (the ' + bb + ')'}, "
                 f"{b.get('cv_minutes', b['minutes']):.1f} min): {100 * b['mean_clip_accuracy']:.2f}%{soft}")
        if "mean_clip_accuracy_each_seed" in b:
            text += f", its first seed alone {100 * b['mean_clip_accuracy_each_seed'][0]:.2f}%"
        text += "."
    return [text]


def in_budget_ensembles(ablation: list[dict]) -> list[dict]:
    """The four-fold ensemble rows (more than one seed) whose CV took at most CV_BUDGET_MINUTES."""
    return [a for a in four_fold_rows(ablation) if n_seeds(a) > 1
            and a.get("cv_minutes", a["minutes"]) <= CV_BUDGET_MINUTES]


# what each ablation row's delta says in the Levers finding (the recipe a row was measured against minus the row);
# every ABLATION row but the recipe and the seed row has one (a test checks it)
LEVER_TEXT = {
    "naive": "over the naive patch model",
    "no-speaker-norm": "from per-actor normalisation",
    "clip-cmn": "of per-actor over per-clip normalisation",
    "no-augment": "from augmentation",
    "test-hop-0.24": "vs. twice the votes at test",
    "refit": "vs. refitting on the validation actors",
    "ensemble-3": "vs. a 3-seed ensemble (3x the training time)",
    "ensemble-5": "vs. a 5-seed ensemble (5x the training time)",
    "ensemble-2-20ep": "vs. a 2-seed ensemble of runs capped at 20 epochs (patience 5)",
    "device-norm": "of per-actor feature statistics over the device's fixed ones",
    "freq-warp-0.1": "vs. a frequency warp of activation_3 by up to 10%",
    "freq-warp-0.2": "vs. a frequency warp of activation_3 by up to 20%",
    "no-label-smoothing": "from label smoothing 0.1",
    "no-speed-perturb": "from speed perturbation (0.9, 1.1)",
    "speed-perturb-4": "vs. four training speeds (0.8-1.2)",
    "val-actors-2": "vs. 2 validation actors (16 training actors)",
    "no-speed-same-steps": "from speed perturbation at equal training steps",
    "pooled-speeds": "vs. pooling a clip's copies into its 4 crops (a third of the training steps)",
    "no-test-speeds": "from the test-time speed copies",
    "test-speeds-2": "from the four test-only speeds",
    "snapshots-3": "vs. a snapshot ensemble of each run's 3 best epochs",
    "speaker-bn": "vs. per-speaker BatchNorm statistics (AdaBN)",
    "speaker-adversary-0.3": "vs. speaker-adversarial training (weight 0.3)",
    "speaker-adversary-0.1": "vs. speaker-adversarial training (weight 0.1)",
    "pitch-copies": "of speed copies over pitch-only copies (tempo kept)",
    "pitch-copies-4": "vs. four training pitches (0.8-1.2, tempo kept)",
    "speed-and-pitch": "vs. pitch copies beside the speed copies",
    "actor-freq-norm": "vs. per-actor statistics per frequency bin too",
    "self-train-0.5": "vs. self-training on the test speakers' surest half (paired: the same models before it)",
    "patch-1.44s": "vs. 1.44 s patches",
    "patch-2.24s": "vs. 2.24 s patches (near a clip-level model)",
    "pitch-norm-0.5": "vs. pitch normalisation (each actor resampled towards a common median F0)",
    "lstm-128": "vs. a BiLSTM of 128 units (487k parameters)",
    "dropout-0.5": "vs. dropout 0.5",
    "select-with-copies": "vs. selecting the model on validation clips voted with their copies",
    "cosine-lr": "vs. a cosine learning-rate decay",
    "no-weight-ema": "from the moving average of the weights (Polyak)",
    "no-weight-ema-seed-1": "from the moving average of the weights with seed 1 (against the seed-1 row)",
    "ensemble-2": "vs. a 2-seed ensemble (2x the training time)",
    "no-refit": "from refitting on all 18 training actors (the recipe before it: no refit, 30-epoch selection)",
    "no-refit-seed-1": "from refitting with seed 1 (against the seed-1 row)",
    "no-refit-ensemble-2": "vs. a 2-seed ensemble without refitting (the recipe before it)",
    "refit-30ep": "vs. a 30-epoch selection run (patience 10) before the refit",
    "refit-30ep-seed-1": "vs. a 30-epoch selection run before the refit, seed 1 (against the seed-1 row)",
    "refit-30ep-ensemble-2": "vs. a 2-seed ensemble of refits after 30-epoch selection runs",
    "fixed-12ep": "vs. 12 fixed epochs on all 18 training actors, no selection run",
    "fixed-12ep-ensemble-2": "vs. a 2-seed ensemble of fixed 12-epoch runs",
    "weight-ema-0.998": "vs. a longer weight average (momentum 0.998)",
    "attention-stats": "vs. attentive statistics pooling (weighted mean and variance)",
    "freq-pool-2": "vs. 8 frequency bins into the BiLSTM instead of 4",
    "aux-intensity-0.3": "vs. learning the intensity beside the emotion (multi-task, weight 0.3)",
}


def _levers(r: dict, group: list[dict], ablation: list[dict]) -> str:
    """The levers of one set of folds: each row against the row of its base recipe on the same folds."""
    rows = {a["name"]: a for a in group}
    bases = {n: ablation_base(a, ablation, current_recipe())[1] for n, a in rows.items()}
    rows = {n: a for n, a in rows.items() if n == "recipe" or bases[n] is not None}
    if "recipe" in rows:
        def delta(name: str) -> str:
            return f"{100 * (bases[name]['mean_clip_accuracy'] - rows[name]['mean_clip_accuracy']):+.1f}"
        named = [(n, t) for n, t in LEVER_TEXT.items() if n in rows]
        text = "; ".join(f"{delta(n)} {t}" for n, t in named) + "."
        small = [n for n in ("no-augment", "test-hop-0.24", "refit") if n in rows and abs(float(delta(n))) < 2]
        if "no-speaker-norm" in rows and float(delta("no-speaker-norm")) > 3 and small:
            text += (" Speaker normalisation is the lever that matters; once speakers are normalised, "
                     + ", ".join(small) + " move the result by less than 2 points (within the fold noise).")
        return text
    return ""


def main(argv: list[str] | None = None) -> int:
    """Re-render speech.md and the confusion PNG from reports/speech_cv.json + speech_ablation.json."""
    import argparse

    from training.paths import reports_dir
    ap = argparse.ArgumentParser(description=main.__doc__)
    ap.add_argument("--out", default=str(reports_dir()), help="reports folder (default: %(default)s)")
    ap.add_argument("--command", default="", help="the command that produced speech_cv.json, if not recorded")
    args = ap.parse_args(argv)
    out = Path(args.out)
    result = json.loads((out / "speech_cv.json").read_text())
    abl = out / "speech_ablation.json"
    write_reports(result, out, json.loads(abl.read_text()) if abl.is_file() else [], args.command)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
