"""training.speaker_skew: per-speaker statistics recomputed from a subset of a speaker's clips."""
from __future__ import annotations

import numpy as np
import pytest

from edge.params import Params
from training.speaker_skew import kept_stats_probs, markdown, plot, renormalised, summarise
from training.speech import (
    PSEUDO_SPEAKER,
    SpeechRecipe,
    Standardizer,
    clip_accuracy,
    normalize_log_mel,
    trunk_patches,
    with_test_copies,
)


class FakeTrunk:
    """(n, 96, 64) log-mel patches -> (n, 24, 16, 64): 4x4 block means, spread over 64 channels."""
    w = np.random.default_rng(0).normal(size=64).astype(np.float32)

    def predict_on_batch(self, x):
        x = np.asarray(x, np.float32)
        return x.reshape(len(x), 24, 4, 16, 4).mean((2, 4))[..., None] * self.w


class FakeHead:
    """Softmax of a fixed linear map of each patch's channel means."""
    w = np.random.default_rng(1).normal(size=(64, 8))

    def predict(self, x, batch_size=256, verbose=0):
        z = np.asarray(x, np.float64).mean((1, 2)) @ self.w
        e = np.exp(z - z.max(1, keepdims=True))
        return (e / e.sum(1, keepdims=True)).astype(np.float32)


def test_renormalising_on_a_subset_equals_normalising_the_raw_log_mels_there():
    rng = np.random.default_rng(2)
    raw = [rng.normal(3, 2, (int(rng.integers(50, 90)), 64)) for _ in range(8)]
    actor = np.array([1, 1, 1, 1, 2, 2, 2, 2])
    normed = normalize_log_mel(raw, actor, "actor")
    sub = np.array([0, 2, 5, 6, 7])
    got = renormalised(normed, sub, actor)
    assert sorted(got) == sub.tolist()
    for a in (1, 2):
        mine = sub[actor[sub] == a]
        mu = np.concatenate([raw[i] for i in mine]).mean(0)
        for i in mine:
            np.testing.assert_allclose(got[int(i)], raw[i] - mu, atol=1e-9)


def _prep(r: SpeechRecipe, p: Params):
    rng = np.random.default_rng(3)
    real = np.repeat([1, 2, 3], 4)                                       # 3 actors, 4 clips each
    n = len(real)
    versions = 1 + len(r.copies())
    clip_actor = np.concatenate([real + PSEUDO_SPEAKER * k for k in range(versions)])
    labels = np.tile(np.arange(n) % 8, versions)
    # each actor's clips sit at different levels: a subset's mean is not the actor's
    raw = [rng.normal(0, 1, (int(rng.integers(100, 160)), 64)).astype(np.float32) + a % PSEUDO_SPEAKER
           + (0.7 + np.linspace(-1, 1, 64, dtype=np.float32)) * (i % 4) for i, a in enumerate(clip_actor)]
    mels = normalize_log_mel(raw, clip_actor, "actor")
    trunk = FakeTrunk()
    n_train = n * r.n_training_versions()
    train_ps = trunk_patches(trunk, mels[:n_train], r.train_hop_frames, p, progress=False)
    test_ps = trunk_patches(trunk, mels, r.test_hop_frames, p, progress=False)
    return {"clip_actor": clip_actor, "labels": labels, "mels": mels, "train_ps": train_ps, "test_ps": test_ps}, trunk


@pytest.mark.parametrize("recipe", [SpeechRecipe(speed_perturb=(), test_speeds=()),
                                    SpeechRecipe(speed_perturb=(0.9,), test_speeds=(0.9, 1.2)),
                                    SpeechRecipe(feature_norm="global", speed_perturb=(), test_speeds=())])
def test_kept_clip_statistics_with_every_clip_kept_are_the_recipes_own(recipe):
    p = Params()
    prep, trunk = _prep(recipe, p)
    clip_actor = prep["clip_actor"]
    n_train = 12 * recipe.n_training_versions()
    fit = np.flatnonzero((clip_actor % PSEUDO_SPEAKER != 3) & (np.arange(len(clip_actor)) < n_train))
    std = Standardizer.fit(prep["train_ps"], clip_actor, fit, recipe.feature_norm, prep["test_ps"])
    tested = np.flatnonzero(clip_actor == 3)                            # actor 3's recorded clips
    eval_clips = with_test_copies(tested, clip_actor, recipe)
    want = clip_accuracy(FakeHead(), prep["test_ps"], eval_clips, prep["labels"], std, clip_actor)[4]
    got, rows = kept_stats_probs(FakeHead(), std, prep, recipe, tested, trunk, p)
    assert np.array_equal(np.sort(rows), np.sort(prep["test_ps"].clip[prep["test_ps"].of_clips(eval_clips)]))
    np.testing.assert_allclose(got, want, atol=2e-3)
    # half of the clips: other statistics, other probabilities, only those clips' rows
    half, half_rows = kept_stats_probs(FakeHead(), std, prep, recipe, tested[:2], trunk, p)
    assert set(half_rows % 12) == set(tested[:2].tolist())
    assert not np.allclose(half, want[np.isin(prep["test_ps"].clip[prep["test_ps"].of_clips(eval_clips)] % 12,
                                                tested[:2])], atol=2e-3)


def test_the_report_names_the_change_at_the_most_one_sided_mix(tmp_path):
    fold = {"test_actors": [1], "clip_accuracy": 0.70, "clip_accuracy_restated": 0.70, "minutes": 5.0,
            "alphas": {"5": {"clips_per_actor": 36.0, "all_clip_stats": 0.69, "kept_clip_stats": 0.68,
                             "kept_clip_stats_centred": 0.71},
                       "0.3": {"clips_per_actor": 16.0, "all_clip_stats": 0.68, "kept_clip_stats": 0.61,
                               "kept_clip_stats_centred": 0.55}}}
    res = summarise([fold], SpeechRecipe(), 8, "python -m training.speaker_skew")
    md = markdown(res)
    assert "| 0.3 | 16 | 68.00% | 61.00% | 55.00% |" in md
    assert "At alpha 0.3 (16 clips per actor)" in md and "by -7.00 points" in md and "by -6.00 points" in md
    plot(res, tmp_path / "s.png")
    assert (tmp_path / "s.png").stat().st_size > 1000


def test_the_shipped_recipes_figures_get_their_own_section(tmp_path):
    def fold(kept):
        return {"test_actors": [1], "clip_accuracy": 0.60, "clip_accuracy_restated": 0.60, "minutes": 2.0,
                "alphas": {"0.3": {"clips_per_actor": 16.0, "all_clip_stats": 0.6, "kept_clip_stats": kept,
                                   "kept_clip_stats_centred": 0.5}}}
    res = summarise([fold(0.61)], SpeechRecipe(), 8, "python -m training.speaker_skew")
    assert "shipped recipe" not in markdown(res)
    res["ship"] = summarise([fold(0.55)], SpeechRecipe(feature_norm="global"), 8,
                            "python -m training.speaker_skew --recipe ship")
    md = markdown(res)
    assert "## The shipped recipe" in md and "`python -m training.speaker_skew --recipe ship`" in md
    assert md.count("| 0.3 | 16 | 60.00% |") == 2 and "by -5.00 points" in md and "by +1.00 points" in md
    plot(res, tmp_path / "s.png")


def test_a_recipe_without_per_speaker_log_mel_statistics_is_refused():
    from training.speaker_skew import fold_table
    with pytest.raises(ValueError, match="logmel_norm='clip'"):
        fold_table({}, SpeechRecipe(logmel_norm="clip"), 0, None, (1.0,), 1)


def test_a_population_prior_shrinks_the_kept_clips_mean_as_the_device_does():
    from types import SimpleNamespace

    from edge.audio.norm import SpeakerNorm
    from training.speaker_skew import population_prior
    rng = np.random.default_rng(5)
    raw = [rng.normal(a, 1, (int(rng.integers(40, 80)), 64)) for a in (1, 1, 1, 2, 2, 2, 3, 3, 3)]
    actor = np.repeat([1, 2, 3], 3)
    prep = {"feats": [SimpleNamespace(log_mel=m) for m in raw], "mels": normalize_log_mel(raw, actor, "actor"),
            "clip_actor": actor}
    prior = population_prior(prep, [3])
    pop = np.concatenate(raw[:6]).mean(0)                               # the other actors' frames
    kept = np.array([6, 8])
    got = renormalised(prep["mels"], kept, actor, 500.0, prior)
    norm = SpeakerNorm(pop, prior_frames=500.0, max_frames=1e9)         # the device's running mean, fed the kept clips
    for i in kept:
        norm.update(raw[i])
    for i in kept:
        np.testing.assert_allclose(got[int(i)], raw[i] - norm.mean, atol=1e-9)
    with pytest.raises(ValueError, match="without speed or pitch copies"):
        population_prior({**prep, "mels": prep["mels"] + prep["mels"]}, [3])


def test_population_prior_columns_and_their_note():
    row = {"clips_per_actor": 16.0, "all_clip_stats": 0.57, "kept_clip_stats": 0.51, "kept_clip_stats_centred": 0.44,
           "kept_clip_stats_prior_100": 0.512, "kept_clip_stats_prior_3000": 0.534}
    even = {**row, "clips_per_actor": 36.0, "kept_clip_stats": 0.566, "kept_clip_stats_prior_100": 0.566,
            "kept_clip_stats_prior_3000": 0.5657}
    res = {"alphas": {"5": even, "0.3": row}}
    from training.speaker_skew import _prior_note, _table
    table = _table(res)
    assert table[0].endswith("population prior of 100 frames | kept clips, log-mel mean with a population prior of "
                             "3000 frames |")
    assert table[-1] == "| 0.3 | 16 | 57.00% | 51.00% | 44.00% | 51.20% | 53.40% |"
    note = _prior_note(res)[0]
    assert "at alpha 0.3 / alpha 5: 100 frames +0.20 / +0.00; 3000 frames +2.40 / -0.03 points" in note


def test_a_few_clips_per_speaker_get_their_own_table():
    from training.speaker_skew import _few_table
    row = {"clips_per_actor": 1.0, "all_clip_stats": 0.58, "kept_clip_stats": 0.41, "kept_clip_stats_prior_3000": 0.5}
    folds = [{"test_actors": [1], "clip_accuracy": 0.6, "clip_accuracy_restated": 0.6, "minutes": 1.0,
              "alphas": {"1": {**row, "clips_per_actor": 24.0, "kept_clip_stats_centred": 0.5}},
              "few": {"1": row, "4": {**row, "clips_per_actor": 4.0, "kept_clip_stats": 0.5}}}]
    res = summarise(folds, SpeechRecipe(), 8, "python -m training.speaker_skew --few 1,4")
    assert res["few"]["4"]["kept_clip_stats"] == 0.5
    table = _few_table(res)
    assert "| clips heard per speaker |" in table[2] and "centred" not in table[2]
    assert "| 1 | 58.00% | 41.00% | 50.00% |" in table and "| 4 | 58.00% | 50.00% | 50.00% |" in table
    no_few = {k: v for k, v in folds[0].items() if k != "few"}
    assert _few_table(summarise([no_few], SpeechRecipe(), 8, "")) == []
