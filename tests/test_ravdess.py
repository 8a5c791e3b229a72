"""RAVDESS names, the index, folds, voting; a hypothesis fuzz of the name parser."""
import os

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge.params import Params
from training.ravdess import RavdessNameError, index_speech, parse_name
from training.speech import choose_val_actors, vote


def test_parse_valid_names():
    n = parse_name("Actor_12/03-01-05-02-01-02-12.flac")
    assert (n.modality, n.emotion, n.intensity, n.actor, n.label) == (3, 5, 2, 12, 4)
    assert n.clip_key == parse_name("01-01-05-02-01-02-12.mp4").clip_key   # speech <-> AV video pairing


@pytest.mark.parametrize("name", ["03-01-09-01-01-01-01.flac", "03-01-05-01-01-01-25.flac", "03-01-01-02-01-01-01.wav",
                                  "04-01-05-01-01-01-01.flac", "03-01-05-01-01-01.flac", "notes.flac",
                                  "03-01-05-01-01-01-1a.flac", ""])
def test_bad_names_are_refused_with_the_name(name):
    with pytest.raises(RavdessNameError) as e:
        parse_name(name)
    assert name in str(e.value)


@settings(max_examples=2000, deadline=None)
@given(st.text(max_size=40))
def test_fuzz_parser_only_raises_its_own_error(s):
    try:
        n = parse_name(s)
    except RavdessNameError:
        return
    assert 1 <= n.emotion <= 8 and 1 <= n.actor <= 24


def test_index_skips_and_counts_bad_names(tmp_path, ravdess_speech):
    src = sorted((ravdess_speech / "Actor_01").glob("*.flac"))[:3]
    d = tmp_path / "Actor_01"
    d.mkdir()
    for f in src:
        os.symlink(f, d / f.name)
    (d / "03-01-09-01-01-01-01.flac").write_bytes(b"x")     # emotion 09 does not exist
    (d / "readme.txt").write_text("not audio")               # ignored: not an audio extension
    clips, skipped = index_speech(tmp_path)
    assert len(clips) == 3 and len(skipped) == 1 and "03-01-09" in skipped[0]
    (d / "03-01-05-01-01-01-02.flac").symlink_to(src[0])    # actor 02 in Actor_01
    with pytest.raises(RavdessNameError, match="folder"):
        index_speech(tmp_path)


def test_index_of_the_real_corpus(ravdess_speech):
    clips, skipped = index_speech(ravdess_speech)
    assert len(clips) == 1440 and not skipped
    p = Params()
    for fold in p.folds:
        assert sum(c.actor in fold for c in clips) == 360
    assert np.bincount([c.label for c in clips]).tolist() == [96] + [192] * 7


def test_vote_majority_and_ties():
    probs = np.array([[0.6, 0.4, 0], [0.6, 0.4, 0], [0.1, 0.9, 0],      # clip 0: class 0 by 2 votes to 1
                      [0.55, 0.45, 0], [0.1, 0.9, 0]])                  # clip 1: tie 1-1 -> summed probs: class 1
    ids, pred = vote(probs, np.array([0, 0, 0, 1, 1]))
    assert ids.tolist() == [0, 1] and pred.tolist() == [0, 1]


def test_soft_vote_sums_probabilities_where_the_majority_counts():
    from training.speech import soft_vote
    probs = np.array([[0.6, 0.4, 0], [0.6, 0.4, 0], [0.0, 1.0, 0],      # 2 votes to 1 for class 0, but class 1
                      [0.2, 0.1, 0.7]])                                 # sums to 1.8 against 1.2
    clip = np.array([3, 3, 3, 7])
    assert vote(probs, clip)[1].tolist() == [0, 2]
    ids, pred = soft_vote(probs, clip)
    assert ids.tolist() == [3, 7] and pred.tolist() == [1, 2]


def test_speed_copies_train_with_their_actor_and_never_validate_or_test():
    from training.speech import PSEUDO_SPEAKER, fold_clips
    real = np.repeat(np.arange(1, 25), 3)                              # 3 clips per actor
    clip_actor = np.concatenate([real, real + PSEUDO_SPEAKER, real + 2 * PSEUDO_SPEAKER])
    test = list(Params().folds[0])
    fit, val, tst, val_actors = fold_clips(clip_actor, test, 4, seed=3)
    n = len(real)
    assert np.all(val < n) and np.all(tst < n)                          # originals only
    assert sorted(set(clip_actor[tst])) == test and sorted(set(clip_actor[val])) == val_actors
    fit_real = set(clip_actor[fit] % PSEUDO_SPEAKER)
    assert not fit_real & (set(test) | set(val_actors)) and len(fit_real) == 24 - 6 - 4
    assert len(fit) == 3 * 3 * len(fit_real)                            # each fit clip with both copies
    plain = fold_clips(real, test, 4, seed=3)                           # without copies: the same split
    assert plain[3] == val_actors and np.array_equal(plain[0], fit[fit < n])


def test_test_time_copies_vote_for_their_recorded_clip():
    from training.speech import PSEUDO_SPEAKER, SpeechRecipe, recorded_clip, with_test_copies
    real = np.repeat(np.arange(1, 25), 3)
    clip_actor = np.concatenate([real, real + PSEUDO_SPEAKER, real + 2 * PSEUDO_SPEAKER])   # speeds 0.9, 1.1
    n = len(real)
    tst = np.flatnonzero(clip_actor == 5)
    r = SpeechRecipe(speed_perturb=(0.9, 1.1), test_speeds=(1.1,))
    both = with_test_copies(tst, clip_actor, r)
    assert both.tolist() == tst.tolist() + (tst + 2 * n).tolist()         # 1.1 is the second copy block
    assert np.array_equal(recorded_clip(both, clip_actor), np.concatenate([tst, tst]))
    assert np.array_equal(with_test_copies(tst, clip_actor, SpeechRecipe(test_speeds=())), tst)    # off
    extra = SpeechRecipe(speed_perturb=(0.9, 1.1), test_speeds=(1.1, 0.8))   # 0.8: a test-only copy, block 3
    assert extra.copies() == ((0.9, False), (1.1, False), (0.8, False))
    pitched = extra.replace(pitch_perturb=(0.9,))                       # a pitch copy is block 3, 0.8 moves to 4
    assert pitched.copies() == ((0.9, False), (1.1, False), (0.9, True), (0.8, False))
    assert pitched.n_training_versions() == 4
    assert with_test_copies(tst, clip_actor, pitched.replace(test_speeds=(0.8,))).tolist() == \
        tst.tolist() + (tst + 4 * n).tolist()
    assert SpeechRecipe(keep_tempo=True).copies()[0] == (0.9, True)
    assert with_test_copies(tst, np.concatenate([clip_actor, real + 3 * PSEUDO_SPEAKER]), extra).tolist() == \
        tst.tolist() + (tst + 2 * n).tolist() + (tst + 3 * n).tolist()
    for bad in (1.0, 3.0):
        with pytest.raises(ValueError, match="speeds"):
            SpeechRecipe(test_speeds=(bad,))


def test_speed_perturbation_changes_tempo_and_is_cached_apart(ravdess_speech, tmp_path):
    from training.ravdess import clip_features, index_speech
    path = index_speech(ravdess_speech)[0][0].path
    base = clip_features(path, Params(), tmp_path)
    fast, slow = clip_features(path, Params(), tmp_path, 1.1), clip_features(path, Params(), tmp_path, 0.9)
    assert fast.seconds_trimmed == pytest.approx(base.seconds_trimmed / 1.1, rel=1e-3)
    assert slow.seconds_trimmed == pytest.approx(base.seconds_trimmed / 0.9, rel=1e-3)
    assert fast.log_mel.shape[1] == 64 and not np.array_equal(fast.log_mel, base.log_mel)
    assert len({d.name for d in tmp_path.iterdir()}) == 3              # one cache folder per speed
    from training.speech import stretch_frames
    pitched = stretch_frames(fast.log_mel, len(base.log_mel))         # a pitch copy: the clip's tempo, higher pitch
    assert pitched.shape == base.log_mel.shape

    def centroid(m):                                                   # energy-weighted mean mel band
        e = np.exp(m).sum(0)
        return float((np.arange(64) * e).sum() / e.sum())
    assert centroid(pitched) > centroid(base.log_mel) > centroid(slow.log_mel)
    again = clip_features(path, Params(), tmp_path, 1.1)                # from the cache
    assert np.array_equal(again.log_mel, fast.log_mel)
    with pytest.raises(ValueError, match="speed"):
        clip_features(path, Params(), None, 0.0)


def test_validation_actors_come_from_training_actors():
    train = [a for a in range(1, 25) if a not in Params().folds[0]]
    val = choose_val_actors(train, 4, seed=3)
    assert set(val) <= set(train) and sum(a % 2 for a in val) == 2


def test_mixup_mixes_inputs_and_labels_alike():
    from training.speech import mixup
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(32, 3, 2)), rng.normal(size=(32, 5))
    y = np.eye(4)[rng.integers(0, 4, 32)]
    (ma, mb), my = mixup([a, b], y, 0.4, rng)
    assert ma.shape == a.shape and mb.shape == b.shape
    np.testing.assert_allclose(my.sum(1), 1.0)
    assert (my.max(1) >= 0.5 - 1e-6).all()                  # each sample keeps the larger share
    (same,), y2 = mixup([a], y, 0.0, rng)
    assert same is a and y2 is y


def test_channel_stats_in_chunks_equal_one_pass(monkeypatch):
    """Above ONE_SHOT_VALUES the statistics are summed in chunks (bounded memory): same values."""
    import training.speech as sp
    rng = np.random.default_rng(0)
    x = (rng.normal(size=(300, 4, 3, 5)) * rng.uniform(0.5, 3, 5) + rng.normal(size=5)).astype(np.float16)
    rows = np.sort(rng.choice(300, 250, replace=False))
    m1, s1 = sp.channel_stats(x, rows)
    monkeypatch.setattr(sp, "ONE_SHOT_VALUES", 10)
    m2, s2 = sp.channel_stats(x, rows, chunk=7)
    np.testing.assert_allclose(m2, m1, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(s2, s1, rtol=1e-5)
    assert m2.dtype == s2.dtype == np.float32 and m2.shape == (5,)


def test_half_to_single_is_numpys_cast_for_every_float16():
    from training.speech import to_float32
    every = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16).view(np.float16).reshape(16, 64, 64)
    np.testing.assert_array_equal(to_float32(every), every.astype(np.float32))    # zeros, subnormals, inf, nan
    assert to_float32(every).dtype == np.float32 and to_float32(every).shape == every.shape
    x = np.arange(6.0).reshape(2, 3)
    assert to_float32(x).dtype == np.float32 and (to_float32(x) == x).all()


def test_standardizer_applies_each_rows_speaker_statistics():
    from training.speech import PatchSet, Standardizer
    rng = np.random.default_rng(0)
    clip_actor = np.array([1, 1, 2, 2, 3])
    clip = np.repeat(np.arange(5), 4)
    ps = PatchSet((rng.normal(size=(20, 2, 3, 4)) * 3 + 1).astype(np.float16), clip, np.zeros(20, int))
    std = Standardizer.fit(ps, clip_actor, np.array([0, 1, 2, 3]), "actor")
    actors = np.array([2, 1, 7, 2, 1] * 4)                                # 7: no statistics of its own -> global
    out = std.apply(ps.x, actors)
    for i, a in enumerate(actors):
        key = int(a) if int(a) in std.mean else "global"
        np.testing.assert_array_equal(out[i], (ps.x[i].astype(np.float32) - std.mean[key]) / std.std[key])
    assert out.dtype == np.float32


def test_pooled_speeds_draw_a_clips_crops_from_all_its_versions():
    from training.speech import PSEUDO_SPEAKER, PatchSet, SpeechRecipe, Standardizer, make_epoch
    real = np.repeat(np.arange(1, 25), 3)
    clip_actor = np.concatenate([real, real + PSEUDO_SPEAKER, real + 2 * PSEUDO_SPEAKER])
    n = len(real)
    clip = np.repeat(np.arange(3 * n), 5)                                # 5 patches a clip and copy
    x = np.broadcast_to(clip[:, None, None, None], (len(clip), 24, 16, 64)).astype(np.float16)  # x = its clip
    ps = PatchSet(x, clip, np.zeros(len(clip), int))
    train = np.flatnonzero(np.isin(clip_actor % PSEUDO_SPEAKER, [1, 2]))  # 6 recorded clips + 12 copies
    labels = np.zeros(3 * n, int)
    std = Standardizer.fit(ps, clip_actor, train, "global")
    quiet = dict(time_masks=0, freq_masks=0, mixup_alpha=0.0, noise_std=0.0, patches_per_clip=4)
    x, _ = make_epoch(ps, train, labels, std, clip_actor, SpeechRecipe(**quiet), np.random.default_rng(0), 8)
    assert len(x) == 4 * 18                                              # 4 crops per version
    x, _ = make_epoch(ps, train, labels, std, clip_actor, SpeechRecipe(**quiet, pool_speeds=True),
                      np.random.default_rng(0), 8)
    assert len(x) == 4 * 6                                               # 4 per recorded clip: no copies' steps
    assert len(np.unique(x[:, 0, 0, 0])) > 6                             # drawn from the copies too


def test_cosine_lr_decay_falls_from_the_papers_rate_to_five_percent():
    from edge.params import Params
    from training.speech import SpeechRecipe, learning_rate
    lr0 = Params().learning_rate
    flat = SpeechRecipe(epochs=20)
    assert [learning_rate(flat, e) for e in (0, 10, 19)] == [lr0] * 3
    cos = SpeechRecipe(epochs=20, lr_decay="cosine")
    rates = [learning_rate(cos, e) for e in range(20)]
    assert rates[0] == pytest.approx(lr0) and rates[-1] == pytest.approx(0.05 * lr0)
    assert all(a > b for a, b in zip(rates, rates[1:], strict=False))
    with pytest.raises(ValueError, match="lr_decay 'step'"):
        SpeechRecipe(lr_decay="step")


@pytest.mark.parametrize("with_copies", [False, True])
def test_model_selection_can_vote_validation_clips_with_their_test_copies(monkeypatch, with_copies):
    import training.speech as sp
    real = np.repeat(np.arange(1, 25), 2)
    clip_actor = np.concatenate([real, real + sp.PSEUDO_SPEAKER, real + 2 * sp.PSEUDO_SPEAKER])
    n = len(real)
    clip = np.repeat(np.arange(3 * n), 2)
    rng = np.random.default_rng(0)
    ps = sp.PatchSet(rng.normal(size=(len(clip), 24, 16, 64)).astype(np.float16), clip, np.zeros(len(clip), int))
    labels = np.tile(np.arange(n) % 8, 3)
    seen = []
    real_accuracy = sp.clip_accuracy

    def spy(model, ps_, clips, *a):
        seen.append(np.sort(clips))
        return real_accuracy(model, ps_, clips, *a)
    monkeypatch.setattr(sp, "clip_accuracy", spy)
    r = sp.SpeechRecipe(epochs=1, patches_per_clip=1, select_with_test_speeds=with_copies, test_speeds=(0.9, 1.1))
    out = sp.train_fold(ps, ps, labels, clip_actor, [1, 2, 3, 4, 5, 6], r, progress=False)
    val = np.flatnonzero(np.isin(clip_actor, out["val_actors"]))            # recorded clips of the val actors
    expected = np.sort(np.concatenate([val, val + n, val + 2 * n])) if with_copies else val
    np.testing.assert_array_equal(seen[0], expected)                       # the first call is the selection


def test_prefetched_epochs_are_the_sequential_calls_in_order():
    from training.speech import prefetched
    rng = np.random.default_rng(3)
    got = [a.copy() for a in prefetched(4, rng.normal, 0.0, 1.0, 5)]
    ref = np.random.default_rng(3)
    want = [ref.normal(0.0, 1.0, 5) for _ in range(4)]
    assert len(got) == 4 and all(np.array_equal(g, w) for g, w in zip(got, want, strict=True))
    calls = []
    gen = prefetched(10, calls.append, 1)
    next(gen)
    gen.close()                                  # an early stop: at most the one epoch built ahead
    assert len(calls) <= 2
    assert list(prefetched(0, calls.append, 1)) == []


def test_grouped_votes_follow_the_single_vote_rule_ties_included():
    from edge.vote import majority_vote, majority_votes
    rng = np.random.default_rng(4)
    probs = rng.dirichlet(np.ones(4), size=300)
    probs[:40] = np.tile([[0.5, 0.3, 0.1, 0.1], [0.2, 0.6, 0.1, 0.1]], (20, 1))   # groups of 2: 1-1 ties
    group = np.concatenate([np.repeat(np.arange(20), 2), rng.integers(20, 60, 260)])
    ids, pred = majority_votes(probs, group)
    assert ids.tolist() == sorted(set(group.tolist()))
    assert pred.tolist() == [majority_vote(probs[group == g]) for g in ids]
    assert set(pred[:20].tolist()) == {1}                               # each tie goes to the larger sum (0.9)
    with pytest.raises(ValueError, match="group ids"):
        majority_votes(probs, group[:-1])


def _leaning_speakers(rng, lean=2.5, per_class=6, patches=3):
    """Two actors, 8 emotions, `per_class` clips of each: patch probabilities that know the emotion a little
    and lean towards one emotion per actor (actor 1 towards 3, actor 2 towards 5) whatever is said."""
    clip_actor, labels = [], []
    for a in (1, 2):
        clip_actor += [a] * 8 * per_class
        labels += [e for e in range(8) for _ in range(per_class)]
    clip_actor, labels = np.array(clip_actor), np.array(labels)
    clip = np.repeat(np.arange(len(labels)), patches)
    logits = 1.0 * np.eye(8)[labels[clip]] + rng.normal(0, 1.0, (len(clip), 8))
    logits[:, 3] += lean * (clip_actor[clip] == 1)
    logits[:, 5] += lean * (clip_actor[clip] == 2)
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    return probs, clip, clip_actor, labels


def test_actor_centring_removes_what_a_speaker_leans_towards():
    from training.speech import actor_centred
    probs, clip, clip_actor, labels = _leaning_speakers(np.random.default_rng(0))
    ids, plain = vote(probs, clip)
    c_ids, c_vote, c_scores = actor_centred(probs, clip, clip_actor)
    assert np.array_equal(ids, c_ids)
    assert np.mean(plain == labels[ids]) < 0.4                          # the lean wins most votes
    assert np.mean(c_vote == labels[ids]) > np.mean(plain == labels[ids]) + 0.2
    assert np.mean(c_scores == labels[ids]) > np.mean(plain == labels[ids]) + 0.2
    # an actor's offset is its mean clip score: a clip repeated in more patches does not weigh more
    doubled = np.concatenate([clip, clip[clip == 0]])
    p2 = np.concatenate([probs, probs[clip == 0]])
    assert np.array_equal(actor_centred(p2, doubled, clip_actor)[2], c_scores)


def test_actor_centring_costs_when_a_speakers_clips_are_one_sided():
    from training.speech import centring_under_skew
    probs, clip, clip_actor, labels = _leaning_speakers(np.random.default_rng(1), lean=0.0, per_class=8)
    table = centring_under_skew(probs, clip, clip_actor, labels, alphas=(100.0, 0.05), draws=20)
    assert set(table) == {"100", "0.05"}
    even, skewed = table["100"], table["0.05"]
    assert even["clips_per_actor"] > 40 > 20 > skewed["clips_per_actor"]
    # no lean to remove: with even clips centring is harmless, with one-sided clips it takes their emotion away
    assert abs(even["centred_vote"] - even["vote"]) < 0.05
    assert skewed["centred_scores"] < skewed["vote"] - 0.2 and skewed["centred_vote"] < skewed["vote"] - 0.2
