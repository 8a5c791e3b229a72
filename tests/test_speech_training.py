"""A reduced actor-independent run that must learn: >= 35% clip accuracy on 6 unseen actors (chance 12.5%)."""
import dataclasses

import numpy as np
import pytest

from edge.params import Params

pytest.importorskip("keras")


@pytest.fixture(scope="module")
def reduced_run(ravdess_speech, yamnet_tflite, tmp_path_factory):
    from training.speech import SpeechRecipe
    from training.speech_cv import prepare, run_cv
    recipe = SpeechRecipe(epochs=8, patches_per_clip=3, val_actors=2, patience=8, train_hop_frames=16,
                          test_speeds=(0.9, 1.1, 0.95),   # test-time augmentation (0.95x test-only): paired figure too
                          snapshots=3, refit=False)       # a snapshot ensemble (not with the refit, tested below),
    #                                                               the best epoch alone paired
    cache = tmp_path_factory.mktemp("cache")
    prep = prepare(ravdess_speech, str(yamnet_tflite), recipe, Params(), cache=cache, progress=False)
    return prep, run_cv(prep, recipe, Params(), folds=[0], progress=False)


def test_reduced_cv_learns_on_held_out_actors(reduced_run):
    prep, res = reduced_run
    fold = res["folds"][0]
    assert fold["test_actors"] == [1, 2, 3, 4, 5, 6]
    assert fold["n_test_clips"] == 360
    assert fold["clip_accuracy"] >= 0.35, fold
    assert fold["clip_accuracy_without_test_speeds"] >= 0.35, fold     # the same models, recorded clips only
    assert fold["clip_accuracy_trained_test_speeds"] >= 0.35, fold     # ... with the 0.9x, 1.1x copies only
    assert res["mean_clip_accuracy_trained_test_speeds"] == fold["clip_accuracy_trained_test_speeds"]
    assert fold["clip_accuracy_best_epoch"] >= 0.35, fold              # the best epoch's model without its snapshots
    (snaps,) = fold["snapshot_epochs"]
    assert len(set(snaps)) == 3 and snaps[0] == fold["best_epochs"][0]
    recorded = prep["test_ps"].of_clips(np.flatnonzero(np.isin(prep["clip_actor"], fold["test_actors"]))).size
    assert fold["n_test_patches"] > 3.5 * recorded                     # the 0.9x, 1.1x and 0.95x copies voted too
    n = len(prep["clips"])
    assert prep["train_ps"].clip.max() == 3 * n - 1                   # the test-only 0.95x copy never trains
    assert prep["test_ps"].clip.max() == 4 * n - 1
    assert not set(fold["val_actors"]) & set(fold["test_actors"])
    assert res["params"] <= 500_000
    per_actor = fold["actor_clip_accuracy"]                            # each test actor's 60 clips
    assert sorted(map(int, per_actor)) == fold["test_actors"] and res["actor_clip_accuracy"] == per_actor
    assert np.isclose(np.mean(list(per_actor.values())), fold["clip_accuracy"])
    assert np.isclose((res["mean_clip_accuracy_male"] + res["mean_clip_accuracy_female"]) / 2, fold["clip_accuracy"])


def test_the_speaker_dependent_split_learns_and_splits_by_sex(reduced_run, tmp_path):
    """The optimistic split (every actor in train and test), reduced to one fold of 4 epochs; resumable."""
    from training.speech import SpeechRecipe
    from training.speech_cv import speaker_dependent
    prep, _ = reduced_run
    recipe = SpeechRecipe(epochs=4, patches_per_clip=3, train_hop_frames=16, test_speeds=(0.9, 1.1, 0.95))
    sd = speaker_dependent(prep, recipe, Params(), eval_folds=1, progress=False, checkpoints=tmp_path)
    assert sd["mean_clip_accuracy"] >= 0.35, sd
    (acc,) = sd["fold_clip_accuracy"]
    assert min(sd["mean_clip_accuracy_male"], sd["mean_clip_accuracy_female"]) <= acc
    assert acc <= max(sd["mean_clip_accuracy_male"], sd["mean_clip_accuracy_female"])
    assert speaker_dependent(prep, recipe, Params(), eval_folds=1, progress=False, checkpoints=tmp_path) == sd


def test_report_files(reduced_run, tmp_path):
    from training.speech_cv import write_reports
    _, res = reduced_run
    write_reports(res, tmp_path, command="edge-train speech --folds 0")
    import json
    j = json.loads((tmp_path / "speech_cv.json").read_text())
    for key in ("folds", "mean_clip_accuracy", "std_clip_accuracy", "params", "patches_per_clip"):
        assert key in j
    assert set(j["patches_per_clip"]) >= {"mean", "min", "max"}
    assert (tmp_path / "speech_confusion.png").stat().st_size > 10_000
    assert (tmp_path / "speech_actors.png").stat().st_size > 10_000
    assert "Mean clip accuracy" in (tmp_path / "speech.md").read_text()
    assert "- **Actors.**" in (tmp_path / "speech.md").read_text()
    cm = np.array(j["confusion"])
    assert cm.shape == (8, 8) and cm.sum() == 360


def test_freq_warp_stretches_the_frequency_axis():
    from training.speech import freq_warp

    class Fixed:                                   # a generator that always draws the same factor
        def __init__(self, a):
            self.a = a

        def uniform(self, lo, hi, n):
            assert lo <= self.a <= hi
            return np.full(n, self.a)
    ramp = np.broadcast_to(np.arange(16, dtype=np.float32)[None, None, :, None], (3, 24, 16, 8)).copy()
    np.testing.assert_allclose(freq_warp(ramp, 0.2, Fixed(1.0)), ramp, atol=1e-6)
    up = freq_warp(ramp, 0.25, Fixed(1.25))        # stretched: bin f shows what was at f / 1.25
    np.testing.assert_allclose(up[0, 0, :, 0], np.arange(16) / 1.25, atol=1e-5)
    down = freq_warp(ramp, 0.25, Fixed(0.8))       # squeezed: the top bins repeat the edge
    np.testing.assert_allclose(down[0, 0, :, 0], np.minimum(np.arange(16) / 0.8, 15), atol=1e-5)
    x = np.random.default_rng(0).random((4, 24, 16, 8)).astype(np.float32)
    assert freq_warp(x, 0.0, np.random.default_rng(0)) is x
    y = freq_warp(x, 0.2, np.random.default_rng(1))
    assert y.shape == x.shape and y.min() >= x.min() - 1e-6 and y.max() <= x.max() + 1e-6


def test_an_interrupted_cv_resumes_after_its_last_finished_fold(tmp_path, monkeypatch):
    from types import SimpleNamespace

    import training.speech_cv as cv
    from training.speech import PatchSet, SpeechRecipe
    n = 24 * 2
    prep = {"labels": np.arange(n) % 8, "clip_actor": np.repeat(np.arange(1, 25), 2), "skipped": [],
            "clips": [SimpleNamespace(path=f"Actor_{i // 2 + 1:02d}/clip{i}.flac") for i in range(n)],
            "feats": [SimpleNamespace(seconds_in=3.0, seconds_trimmed=2.0)] * n,
            "test_ps": PatchSet(np.zeros((n, 1), np.float16), np.arange(n), np.zeros(n, int))}
    calls = []

    def fake_fold(prep, recipe, p, fi, progress, checkpoints=None):
        calls.append(fi)
        if fi == 2 and len(calls) == 2:
            raise KeyboardInterrupt                                      # the run is killed during fold 2
        return {"fold": {"test_actors": list(p.folds[fi]), "clip_accuracy": 0.5 + fi / 10, "patch_accuracy": 0.4,
                         "minutes": 1.0}, "true": [0, 1], "pred": [0, 0]}

    monkeypatch.setattr(cv, "_run_fold", fake_fold)
    # folds without the paired figure; every lever added after checkpoints existed at its off value
    recipe = SpeechRecipe(epochs=3, test_speeds=(), weight_ema=0.0, refit=False)   # snapshots turn on below
    with pytest.raises(KeyboardInterrupt):
        cv.run_cv(prep, recipe, Params(), folds=[0, 2], checkpoints=tmp_path)
    res = cv.run_cv(prep, recipe, Params(), folds=[0, 2], checkpoints=tmp_path)
    assert calls == [0, 2, 2]                                            # fold 0 came from its checkpoint
    assert [f["clip_accuracy"] for f in res["folds"]] == [0.5, 0.7] and res["cv_minutes"] == 2.0
    cv.run_cv(prep, recipe.replace(epochs=4), Params(), folds=[0], checkpoints=tmp_path)
    assert calls == [0, 2, 2, 0]                                         # another recipe: trained afresh
    assert not list(tmp_path.rglob("*.tmp"))
    key = cv.checkpoint_file(tmp_path, prep, recipe, Params(), "fold", 0)
    older = {k: v for k, v in dataclasses.asdict(recipe).items() if k not in cv.KEY_NEUTRAL}
    monkeypatch.setattr(cv, "asdict", lambda r: older if r is recipe else dataclasses.asdict(r))
    assert cv.checkpoint_file(tmp_path, prep, recipe, Params(), "fold", 0) == key   # a recipe from before a lever
    turned_on = {"snapshots": 3, "speaker_bn": True, "speaker_adversary": 0.3, "keep_tempo": True,
                 "pitch_perturb": (0.9,), "self_train": 0.5, "self_train_epochs": 3,
                 "patch_frames": 144, "pitch_norm": 0.5, "weight_ema": 0.99, "pooling": "attention_stats",
                 "freq_pool": 2, "aux_intensity": 0.3}
    assert set(turned_on) == set(cv.KEY_NEUTRAL)                         # a lever added later needs its line here
    for field, value in turned_on.items():                              # ... turned on: another key
        on = recipe.replace(**{field: value})
        assert cv.checkpoint_file(tmp_path, prep, on, Params(), "fold", 0) != key


def test_an_ensemble_of_seeds_reuses_the_runs_it_shares_with_a_smaller_one(tmp_path, monkeypatch):
    """Each seed's run of a fold is kept: 3 seeds after 2 train only the third, and the first-k-seeds curve and the
    soft vote come from the same probabilities."""
    from types import SimpleNamespace

    import training.speech_cv as cv
    from training.speech import PatchSet, SpeechRecipe
    n = 24 * 2                                                          # 2 clips an actor, 2 patches a clip
    prep = {"labels": np.arange(n) % 8, "clip_actor": np.repeat(np.arange(1, 25), 2), "skipped": [],
            "clips": [SimpleNamespace(path=f"Actor_{i // 2 + 1:02d}/clip{i}.flac") for i in range(n)],
            "train_ps": None,
            "test_ps": PatchSet(np.zeros((2 * n, 1), np.float16), np.repeat(np.arange(n), 2), np.zeros(2 * n, int))}
    trained = []

    def fake_train(train_ps, test_ps, labels, clip_actor, test_actors, r, p, seed, progress, intensity=None):
        trained.append(seed)
        rows = test_ps.of_clips(np.flatnonzero(np.isin(clip_actor, test_actors)))
        probs = np.full((len(rows), 8), 0.1)
        right = labels[test_ps.clip[rows]]
        probs[np.arange(len(rows)), (right + (seed == 0) * (np.arange(len(rows)) % 2)) % 8] = 0.3  # seed 0: half wrong
        return {"probs": probs, "test_rows": rows, "val_actors": [7, 8], "best_epoch": seed + 3,
                "val_clip_accuracy": 0.5, "clip_accuracy": 0.0, "model": object()}
    monkeypatch.setattr(cv, "train_fold", fake_train)
    clock = iter(range(0, 6000, 60))
    monkeypatch.setattr(cv, "time", SimpleNamespace(time=lambda: float(next(clock))))
    r2 = SpeechRecipe(seeds=(0, 1), test_speeds=(), speed_perturb=())
    two = cv._run_fold(prep, r2, Params(), 0, False, tmp_path)
    three = cv._run_fold(prep, r2.replace(seeds=(0, 1, 2)), Params(), 0, False, tmp_path)
    assert trained == [0, 1, 2]                                         # seeds 0 and 1 read back, not retrained
    assert three["fold"]["best_epochs"] == [3, 4, 5] and three["fold"]["val_actors"] == [7, 8]
    assert len(three["fold"]["clip_accuracy_first_seeds"]) == 3
    assert three["fold"]["clip_accuracy_first_seeds"][:2] == two["fold"]["clip_accuracy_first_seeds"]
    assert three["fold"]["clip_accuracy_first_seeds"][1:] == [1.0, 1.0]  # seed 1 outvotes seed 0's errors
    assert 0.0 < two["fold"]["clip_accuracy_soft_vote"] <= 1.0
    assert not list(tmp_path.rglob("*.tmp*"))
    # a fold's minutes: its own clock, plus what the runs it read back took (each clock reading is a minute on)
    assert two["fold"]["minutes"] == 5.0 and three["fold"]["minutes"] == 3.0 + 2 * 1.0
    cv._run_fold(prep, r2.replace(seeds=(1,)), Params(), 0, False, tmp_path)
    assert trained == [0, 1, 2]                                         # a single seed reuses its run too


class _Weights:
    """A stand-in model whose weights are the epoch it was asked at."""
    epoch = 0

    def get_weights(self):
        return [self.epoch]


def test_the_selector_keeps_the_best_epochs_as_snapshots():
    from training.speech import ModelSelector
    model, sel = _Weights(), ModelSelector(patience=3, keep=3)
    stopped = []
    for epoch, score in enumerate([0.2, 0.5, 0.4, 0.5, 0.6, 0.1, 0.3, 0.2], start=1):
        model.epoch = epoch
        stopped.append(sel.update(model, score, epoch))
    assert [(s, e) for s, e, _ in sel.snapshots] == [(0.6, 5), (0.5, 2), (0.5, 4)]   # ties: the earlier epoch first
    assert [w for _, _, (w,) in sel.snapshots] == [5, 2, 4]
    assert sel.best_epoch == 5 and sel.best_weights == [5]
    assert stopped == [False] * 7 + [True]                             # patience counts from the best epoch
    assert ModelSelector(3).snapshots == [] and ModelSelector(3, keep=1).update(model, 0.3, 1) is False


def test_speaker_batchnorm_removes_a_speakers_offset():
    """AdaBN: a speaker whose features are another's plus a per-channel offset gets the same probabilities once
    each speaker's BatchNorm statistics are its own; the model's statistics are restored afterwards."""
    import keras

    from training.speech import predict_speaker_bn
    keras.utils.set_random_seed(0)
    x_in = keras.Input((4, 3, 2))
    h = keras.layers.Conv2D(5, 1)(x_in)
    h = keras.layers.BatchNormalization()(h)
    h = keras.layers.ReLU()(h)
    h = keras.layers.Dense(6)(keras.layers.Flatten()(h))
    h = keras.layers.BatchNormalization()(h)
    model = keras.Model(x_in, keras.layers.Dense(8, activation="softmax")(h))
    a = np.random.default_rng(0).normal(size=(40, 4, 3, 2)).astype(np.float32)
    x = np.concatenate([a, a + np.array([3.0, -2.0], np.float32)])
    speakers = np.repeat([1, 2], 40)
    before = [w.copy() for w in model.get_weights()]
    adapted = predict_speaker_bn(model, x, speakers)
    np.testing.assert_allclose(adapted[:40], adapted[40:], atol=1e-5)
    plain = model.predict(x, verbose=0)
    assert np.abs(plain[:40] - plain[40:]).max() > 1e-2                  # the trained statistics keep the offset
    for w0, w1 in zip(before, model.get_weights(), strict=True):
        np.testing.assert_array_equal(w0, w1)


def _tiny(**kw):
    """A speech head recipe small enough to train a batch in a test."""
    from training.speech import SpeechRecipe
    return SpeechRecipe(conv_filters=(8, 8), lstm_units=8, attention_units=8, batch_size=16, **kw)


def test_gradient_reversal_is_identity_forward_and_flips_the_gradient():
    import keras
    import tensorflow as tf

    from training.speech import gradient_reversal
    grl = gradient_reversal()
    x = tf.constant([[1.0, -2.0, 3.0]])
    grl.build(x.shape)
    grl.scale.assign(0.7)
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = grl(x)
        loss = keras.ops.sum(y * tf.constant([[1.0, 2.0, 3.0]]))
    np.testing.assert_allclose(y.numpy(), x.numpy(), rtol=1e-6)
    np.testing.assert_allclose(tape.gradient(loss, x).numpy(), [[-0.7, -1.4, -2.1]], rtol=1e-6)


def test_adversarial_epochs_carry_speakers_mixed_like_the_labels():
    from training.speech import PSEUDO_SPEAKER, PatchSet, SpeechRecipe, Standardizer, adversary_scale, make_epoch
    real = np.repeat(np.arange(1, 25), 3)
    clip_actor = np.concatenate([real, real + PSEUDO_SPEAKER])
    clip = np.repeat(np.arange(len(clip_actor)), 5)
    rng = np.random.default_rng(0)
    ps = PatchSet(rng.normal(size=(len(clip), 24, 16, 64)).astype(np.float16), clip, np.zeros(len(clip), int))
    labels = np.arange(len(clip_actor)) % 8
    train = np.flatnonzero(np.isin(clip_actor % PSEUDO_SPEAKER, [1, 2, 3]))   # 3 actors x 2 versions: 6 speakers
    std = Standardizer.fit(ps, clip_actor, train, "global")
    r = SpeechRecipe(speaker_adversary=0.5, mixup_alpha=0.0)
    x, (y, s) = make_epoch(ps, train, labels, std, clip_actor, r, np.random.default_rng(1), 8)
    assert s.shape == (len(x), 6) and y.shape == (len(x), 8)
    x0, y0 = make_epoch(ps, train, labels, std, clip_actor, r.replace(speaker_adversary=0.0),
                        np.random.default_rng(1), 8)
    np.testing.assert_array_equal(x, x0)                                  # the same draws as without it
    np.testing.assert_array_equal(y, y0)
    speakers = np.unique(clip_actor[train])
    crop_speaker = speakers[s.argmax(1)]
    assert set(crop_speaker.tolist()) == set(speakers.tolist())
    x, (y, s) = make_epoch(ps, train, labels, std, clip_actor, r.replace(mixup_alpha=0.2), np.random.default_rng(1), 8)
    np.testing.assert_allclose(s.sum(1), 1, rtol=1e-6)
    assert (s.max(1) < 1).any()                                           # mixed
    assert adversary_scale(r, 0) == 0 and 0.49 < adversary_scale(r, r.epochs - 1) <= 0.5
    with pytest.raises(ValueError, match="speaker_adversary"):
        SpeechRecipe(speaker_adversary=-1)


def test_the_speaker_adversary_trains_the_shared_head():
    """The adversarial trainer fits both outputs; the head (shared layers) is what changes and what predicts."""
    import keras

    from training.speech import build_head, fit_epoch, head_trainer
    keras.utils.set_random_seed(0)
    r = _tiny(speaker_adversary=1.0)
    head = build_head(r)
    trainer = head_trainer(head, r, 5)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(32, 24, 16, 64)).astype(np.float32)
    y = np.eye(8, dtype=np.float32)[rng.integers(0, 8, 32)]
    s = np.eye(5, dtype=np.float32)[rng.integers(0, 5, 32)]
    before = [w.copy() for w in head.get_weights()]
    losses = fit_epoch(trainer, x, (y, s), r, 10)
    assert {"loss"} < set(losses) and all(np.isfinite(v) for v in losses.values())
    assert trainer.get_layer("speaker_grl").scale.numpy() > 0.5
    assert any(np.abs(a - b).max() > 0 for a, b in zip(before, head.get_weights(), strict=True))
    assert head.predict(x, verbose=0).shape == (32, 8)


def test_weight_ema_averages_every_batch_and_swaps_back():
    """The callback's average follows momentum * average + (1 - momentum) * weights after each batch (the first
    batch starts it); swapped() puts the average in the model and the raw weights back, even on an error."""
    import keras

    from training.speech import SpeechRecipe, build_head, compile_head, fit_epoch, weight_ema
    keras.utils.set_random_seed(0)
    r = _tiny()
    head = compile_head(build_head(r), r)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(32, 24, 16, 64)).astype(np.float32)
    y = np.eye(8, dtype=np.float32)[rng.integers(0, 8, 32)]
    seen = []

    class Record(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            seen.append(head.get_weights())

    ema = weight_ema(head, 0.9)
    with pytest.raises(RuntimeError, match="no batch"):
        with ema.swapped():
            pass
    fit_epoch(head, x, y, r, 0, callbacks=[Record(), ema])               # 2 batches
    assert len(seen) == 2
    expected = [0.9 * a + 0.1 * b for a, b in zip(seen[0], seen[1], strict=True)]
    for got, want in zip(ema.average, expected, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)
    raw = head.get_weights()
    assert any(np.abs(a - b).max() > 0 for a, b in zip(raw, expected, strict=True))
    with pytest.raises(ValueError):
        with ema.swapped() as m:
            for got, want in zip(m.get_weights(), expected, strict=True):
                np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)
            raise ValueError("inside")
    for got, want in zip(head.get_weights(), raw, strict=True):
        np.testing.assert_array_equal(got, want)
    with pytest.raises(ValueError, match="weight_ema"):
        SpeechRecipe(weight_ema=1.0)


def test_training_without_selection_ends_with_the_weight_average():
    """fit_epochs (refit, self-training) leaves the model with the moving average of its weights, as selection does:
    two one-batch epochs at momentum 0.9 give 0.9 * (weights after the first) + 0.1 * (after the second)."""
    import keras

    from training.speech import build_head, compile_head, fit_epoch, fit_epochs
    r = _tiny(weight_ema=0.9)
    rng = np.random.default_rng(0)
    data = [(rng.normal(size=(16, 24, 16, 64)).astype(np.float32), np.eye(8, dtype=np.float32)[rng.integers(0, 8, 16)])
            for _ in range(2)]
    keras.utils.set_random_seed(0)
    init = build_head(r).get_weights()

    def fresh():
        keras.utils.set_random_seed(1)
        m = compile_head(build_head(r), r)
        m.set_weights(init)
        return m

    raw = fresh()
    steps = []
    for epoch, (x, y) in enumerate(data):
        fit_epoch(raw, x, y, r, epoch)
        steps.append(raw.get_weights())
    averaged = fresh()
    fit_epochs(averaged, averaged, iter(data), r)
    for got, a, b in zip(averaged.get_weights(), *steps, strict=True):
        np.testing.assert_allclose(got, 0.9 * a + 0.1 * b, rtol=1e-4, atol=1e-5)
    plain = fresh()
    fit_epochs(plain, plain, iter(data), r.replace(weight_ema=0.0))
    for got, b in zip(plain.get_weights(), steps[1], strict=True):
        np.testing.assert_allclose(got, b, rtol=1e-4, atol=1e-5)


def test_refit_trains_the_validation_actors_too_and_never_the_test_actors():
    """With refit the tested model is a fresh one trained on all 18 training actors (the 4 validation actors only
    chose its epoch count); without it, on the 14 fit actors. Test actors train in neither."""
    from training.speech import PatchSet, train_fold
    rng = np.random.default_rng(0)
    clip_actor = np.repeat(np.arange(1, 25), 2)                            # 24 actors, 2 clips each
    clip = np.repeat(np.arange(len(clip_actor)), 2)
    ps = PatchSet(rng.normal(size=(len(clip), 24, 16, 64)).astype(np.float16), clip, np.zeros(len(clip), int))
    labels = np.arange(len(clip_actor)) % 8
    test = [1, 2, 3, 4, 5, 6]
    r = _tiny(epochs=2, patience=2, speed_perturb=(), test_speeds=())
    assert r.refit                                                         # the recipe refits
    out = train_fold(ps, ps, labels, clip_actor, test, r, progress=False)
    assert out["trained_actors"] == list(range(7, 25)) and len(out["val_actors"]) == 4
    assert 1 <= out["best_epoch"] <= 2 and out["probs"].shape == (len(test) * 4, 8)
    plain = train_fold(ps, ps, labels, clip_actor, test, r.replace(refit=False), progress=False)
    assert plain["trained_actors"] == [a for a in range(7, 25) if a not in plain["val_actors"]]
    with pytest.raises(ValueError, match="refit=false"):
        r.replace(snapshots=3)


def test_stretch_frames_restores_a_speed_copys_duration():
    from training.speech import stretch_frames
    m = np.stack([np.arange(10, dtype=np.float32)] * 3, axis=1)          # a ramp in every band
    out = stretch_frames(m, 19)
    assert out.shape == (19, 3) and out.dtype == np.float32
    np.testing.assert_allclose(out[:, 0], np.arange(19) / 2)             # the ramp, twice as slow
    np.testing.assert_allclose(stretch_frames(m, 5)[:, 1], [0, 2.25, 4.5, 6.75, 9])
    assert stretch_frames(m, 10) is m
    with pytest.raises(ValueError, match="0 frames"):
        stretch_frames(m[:0], 4)


def test_actor_freq_standardisation_zeroes_each_speakers_bins():
    from training.speech import PatchSet, Standardizer, channel_stats
    rng = np.random.default_rng(0)
    clip_actor = np.array([1, 1, 2, 2])
    clip = np.repeat(np.arange(4), 6)
    tilt = np.linspace(-2, 2, 16)[None, None, :, None]                  # a speaker-specific spectral tilt
    x = rng.normal(size=(24, 24, 16, 64)) + np.where(clip_actor[clip] == 2, 1.0, -1.0)[:, None, None, None] * tilt
    ps = PatchSet(x.astype(np.float16), clip, np.zeros(24, int))
    std = Standardizer.fit(ps, clip_actor, np.arange(4), "actor_freq")
    assert std.mean[1].shape == (16, 64) and std.mean["global"].shape == (16, 64)
    out = std.apply(ps.x, clip_actor[clip])
    for a in (1, 2):
        np.testing.assert_allclose(out[clip_actor[clip] == a].mean(axis=(0, 1)), 0, atol=1e-4)
    chan = Standardizer.fit(ps, clip_actor, np.arange(4), "actor").apply(ps.x, clip_actor[clip])
    assert np.abs(chan[clip_actor[clip] == 2].mean(axis=(0, 1))).max() > 1   # per channel alone keeps the tilt
    m1, s1 = channel_stats(ps.x, np.arange(24), per_freq=True)
    import training.speech as sp
    old, sp.ONE_SHOT_VALUES = sp.ONE_SHOT_VALUES, 0                       # the chunked path agrees
    try:
        m2, s2 = channel_stats(ps.x, np.arange(24), chunk=5, per_freq=True)
    finally:
        sp.ONE_SHOT_VALUES = old
    np.testing.assert_allclose(m1, m2, atol=1e-5)
    np.testing.assert_allclose(s1, s2, atol=1e-4)
    with pytest.raises(ValueError, match="actor_freq"):
        Standardizer.fit(ps, clip_actor, np.arange(4), "speaker")


def test_pseudo_labels_take_the_surest_fraction_of_each_voted_class():
    from training.speech import pseudo_labels
    clip_actor = np.array([1, 1, 2, 2, 2, 101, 101, 102, 102, 102])     # 5 recorded clips, then their copies
    p = np.full((10, 8), 0.01, np.float32)
    conf = {0: 0.9, 1: 0.5, 2: 0.8, 3: 0.6, 4: 0.7}                     # clip -> its class's probability
    cls = {0: 2, 1: 2, 2: 2, 3: 5, 4: 5}                                 # clip -> the class it votes
    rows = np.arange(10)                                                 # row i: clip i (i >= 5: a copy of i - 5)
    for i in rows:
        p[i, cls[i % 5]] = conf[i % 5]
    clips, guess = pseudo_labels(p, rows, clip_actor, 0.5)
    assert clips.tolist() == [0, 2, 4] and guess.tolist() == [2, 2, 5]  # ceil(1.5) = 2 of class 2, 1 of class 5
    assert pseudo_labels(p, rows, clip_actor, 1.0)[0].tolist() == [0, 1, 2, 3, 4]
    assert pseudo_labels(p, rows, clip_actor, 0.0)[0].size == 0


def test_self_training_labels_only_the_fit_clips_and_the_guessed_ones():
    from training.speech import PatchSet, SpeechRecipe, make_epoch, with_pseudo_labels
    n_real = 6
    clip_actor = np.r_[[1, 1, 2, 2, 3, 3], np.array([1, 1, 2, 2, 3, 3]) + 100, np.array([1, 1, 2, 2, 3, 3]) + 200]
    labels = np.tile(np.arange(n_real), 3)
    ps = PatchSet(np.zeros((18, 24, 16, 64), np.float16), np.arange(18), np.zeros(18, int))
    r = SpeechRecipe(speed_perturb=(0.9, 1.1), test_speeds=())
    fit = np.array([0, 1, 6, 7, 12, 13])                                 # actor 1 and its two copies
    clips, train_labels = with_pseudo_labels(fit, labels, np.array([4]), np.array([7]), clip_actor, ps, r)
    assert sorted(clips.tolist()) == [0, 1, 4, 6, 7, 10, 12, 13, 16]    # clip 4 (actor 3) and its copies join
    assert train_labels[[4, 10, 16]].tolist() == [7, 7, 7]               # ... with the guess, not their label 4
    assert (train_labels[np.setdiff1d(np.arange(18), clips)] == -1).all()
    with pytest.raises(ValueError, match="no label"):                    # a clip without a label cannot train
        make_epoch(ps, np.array([2]), train_labels, None, clip_actor, r, np.random.default_rng(0), 8)
    with pytest.raises(ValueError, match="self_train"):
        SpeechRecipe(self_train=0.5, snapshots=3, refit=False)


def test_longer_patches_reach_the_head_and_short_clips_are_padded(yamnet_weights):
    from training.speech import SpeechRecipe, build_head, pad_to, trunk_patches
    from training.yamnet import build_trunk
    rng = np.random.default_rng(0)
    short, long = rng.normal(size=(120, 64)).astype(np.float32), rng.normal(size=(200, 64)).astype(np.float32)
    assert pad_to(long, 144) is long
    padded = pad_to(short, 144)
    assert padded.shape == (144, 64) and (padded[:120] == short).all() and (padded[120:] == short.min(0)).all()
    ps = trunk_patches(build_trunk(yamnet_weights, frames=144), [short, long], 48, progress=False, frames=144)
    assert ps.x.shape[1:] == (36, 16, 64) and ps.clip.tolist() == [0, 1, 1]      # the short clip kept: 1 patch
    ref = trunk_patches(build_trunk(yamnet_weights), [long[:96]], 48, progress=False)
    # the trunk is convolutional: a longer patch's first steps are the 0.96 s patch's (up to its right edge)
    np.testing.assert_allclose(ps.x[1, :20].astype(np.float32), ref.x[0, :20].astype(np.float32), atol=2e-2)
    head = build_head(SpeechRecipe(patch_frames=144, conv_filters=(8, 8), lstm_units=8, attention_units=8))
    assert head.predict(ps.x.astype(np.float32), verbose=0).shape == (3, 8)
    with pytest.raises(ValueError, match="patch_frames"):
        SpeechRecipe(patch_frames=100)


def test_a_fold_votes_test_copies_for_their_recorded_clip_in_every_paired_figure(tmp_path, monkeypatch):
    """With test-time copies (one at a training speed, one test-only), the recorded-clip-only and training-speed
    figures vote exactly the rows they name: a copy's patches count for its recorded clip."""
    from types import SimpleNamespace

    import training.speech_cv as cv
    from training.speech import PSEUDO_SPEAKER, PatchSet, SpeechRecipe, vote
    real = np.repeat(np.arange(1, 25), 2)                               # 2 clips an actor
    n = len(real)
    clip_actor = np.concatenate([real + PSEUDO_SPEAKER * k for k in range(4)])   # speeds 0.9, 1.1, 0.85
    labels = np.tile(np.arange(n) % 8, 4)
    ps = PatchSet(np.zeros((len(clip_actor), 1), np.float16), np.arange(len(clip_actor)), np.zeros(len(clip_actor)))
    prep = {"labels": labels, "clip_actor": clip_actor, "train_ps": None, "test_ps": ps,
            "clips": [SimpleNamespace(path=f"c{i}.flac") for i in range(n)]}
    r = SpeechRecipe(speed_perturb=(0.9, 1.1), test_speeds=(0.9, 0.85))
    tst = np.flatnonzero(np.isin(real, Params().folds[0]))
    run_rows = np.concatenate([tst, tst + n, tst + 3 * n])             # recorded, 0.9x and 0.85x (one patch each)
    probs = np.random.default_rng(0).random((len(run_rows), 8))

    def fake_train(train_ps, test_ps, labels, clip_actor, test_actors, r, p, seed, progress, intensity=None):
        return {"probs": probs, "test_rows": run_rows, "val_actors": [7], "best_epoch": 1,
                "val_clip_accuracy": 0.5, "clip_accuracy": 0.0}
    monkeypatch.setattr(cv, "train_fold", fake_train)
    fold = cv._run_fold(prep, r, Params(), 0, False, None)["fold"]
    clip = run_rows % n
    recorded = run_rows < n
    ids, pred = vote(probs[recorded], clip[recorded])
    assert fold["clip_accuracy_without_test_speeds"] == float(np.mean(pred == labels[ids]))
    trained = run_rows < 3 * n                                          # recorded + the training-speed copies
    ids, pred = vote(probs[trained], clip[trained])
    assert fold["clip_accuracy_trained_test_speeds"] == float(np.mean(pred == labels[ids]))
    ids, pred = vote(probs, clip)
    assert fold["clip_accuracy"] == float(np.mean(pred == labels[ids])) and fold["n_test_clips"] == 12
    from training.speech import actor_centred
    c_ids, c_vote, c_scores = actor_centred(probs, clip, clip_actor)   # copies count for their recorded clip's actor
    assert fold["clip_accuracy_actor_centred"] == float(np.mean(c_vote == labels[c_ids]))
    assert fold["clip_accuracy_actor_centred_scores"] == float(np.mean(c_scores == labels[c_ids]))
    assert set(fold["actor_centring_skew"]) == {"5", "1", "0.3"}


def test_attentive_statistics_pooling_gives_the_weighted_mean_and_variance_of_the_steps():
    import keras

    from training.speech import SpeechRecipe, build_head
    head = build_head(SpeechRecipe(pooling="attention_stats", conv_filters=(8, 8), lstm_units=8, attention_units=8))
    x = np.random.default_rng(0).normal(size=(3, 24, 16, 64)).astype(np.float32)
    h, a, z = keras.Model(head.input, [head.get_layer("speech_bilstm").output, head.get_layer("speech_att_weights").output,
                                       head.get_layer("speech_embedding").output]).predict(x, verbose=0)
    mean = np.einsum("bt,btc->bc", a, h)
    var = np.einsum("bt,btc->bc", a, (h - mean[:, None]) ** 2)
    assert z.shape == (3, 32) and var.max() > 1e-4         # 2 x (2 x 8): mean and variance of a 16-wide BiLSTM
    np.testing.assert_allclose(z[:, :16], mean, atol=1e-6)
    np.testing.assert_allclose(z[:, 16:], var, atol=1e-5)
    with pytest.raises(ValueError, match="pooling 'max'"):
        SpeechRecipe(pooling="max")


def test_freq_pool_2_keeps_8_frequency_bins_for_the_bilstm():
    from training.speech import SpeechRecipe, build_head
    r = SpeechRecipe(conv_filters=(8, 8), lstm_units=8, attention_units=8)
    assert build_head(r).get_layer("speech_to_sequence").output.shape[1:] == (12, 4 * 8)
    assert build_head(r.replace(freq_pool=2)).get_layer("speech_to_sequence").output.shape[1:] == (12, 8 * 8)
    with pytest.raises(ValueError, match="freq_pool 3"):
        r.replace(freq_pool=3)


def test_the_intensity_task_learns_each_crops_clip_intensity_beside_its_emotion():
    """aux_intensity: every crop carries its clip's intensity (mixed up with the emotion, same draws as without);
    the trainer fits both softmaxes on the shared embedding, and the head alone predicts the 8 emotions."""
    import keras

    from training.speech import PatchSet, Standardizer, build_head, fit_epoch, head_trainer, make_epoch
    n = 48
    clip_actor = np.repeat(np.arange(1, 5), n // 4)
    clip = np.repeat(np.arange(n), 3)
    rng = np.random.default_rng(0)
    ps = PatchSet(rng.normal(size=(len(clip), 24, 16, 64)).astype(np.float16), clip, np.zeros(len(clip), int))
    labels = np.arange(n) % 8
    intensity = (labels >= 4).astype(int)          # a clip's intensity readable from its label, to check the crops
    train = np.arange(n)
    std = Standardizer.fit(ps, clip_actor, train, "global")
    r = _tiny(aux_intensity=0.5, mixup_alpha=0.0)
    x, (y, s) = make_epoch(ps, train, labels, std, clip_actor, r, np.random.default_rng(1), 8, intensity)
    x0, y0 = make_epoch(ps, train, labels, std, clip_actor, r.replace(aux_intensity=0.0), np.random.default_rng(1), 8)
    np.testing.assert_array_equal(x, x0)
    np.testing.assert_array_equal(y, y0)
    assert s.shape == (len(x), 2)
    np.testing.assert_array_equal(s.argmax(1), y.argmax(1) >= 4)
    with pytest.raises(ValueError, match="intensities are needed"):
        make_epoch(ps, train, labels, std, clip_actor, r, np.random.default_rng(1), 8)
    keras.utils.set_random_seed(0)
    head = build_head(r)
    trainer = head_trainer(head, r, 4)
    before = [w.copy() for w in head.get_weights()]
    losses = fit_epoch(trainer, x, (y, s), r, 0)
    assert all(np.isfinite(v) for v in losses.values())
    assert trainer.get_layer("intensity_probs").output.shape[-1] == 2
    assert any(np.abs(a - b).max() > 0 for a, b in zip(before, head.get_weights(), strict=True))
    assert head.predict(x, verbose=0).shape == (len(x), 8)
    with pytest.raises(ValueError, match="aux_intensity"):
        r.replace(speaker_adversary=0.1)
