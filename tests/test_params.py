import dataclasses

import pytest

from edge.params import EMOTIONS, Params


def test_derived_values_match_yamnet():
    p = Params()
    assert (p.stft_window_samples, p.stft_hop_samples, p.fft_length, p.spectrogram_bins) == (400, 160, 512, 257)
    assert (p.patch_frames, p.patch_hop_frames, p.patch_samples) == (96, 48, 15600)
    assert p.key_face_window == 9 and p.num_classes == 8


def test_folds_are_actor_independent_and_gender_balanced():
    p = Params()
    actors = [a for f in p.folds for a in f]
    assert sorted(actors) == list(range(1, 25)), "every actor in exactly one fold"
    for f in p.folds:
        assert len(f) == 6
        assert sum(a % 2 for a in f) == 3, f"fold {f} is not 3 male + 3 female"
    assert p.fold_of_actor(13) == 2
    with pytest.raises(ValueError, match="actor 25"):
        p.fold_of_actor(25)


def test_params_frozen_and_keyed():
    p = Params()
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.sample_rate = 8000
    assert p.frontend_key() == Params().frontend_key()
    assert p.replace(vad_threshold_db=-30).frontend_key() != p.frontend_key()
    # the patch hop is a run-time tunable: it does not invalidate cached log-mels
    assert p.replace(patch_hop_seconds=0.24).frontend_key() == p.frontend_key()
    assert EMOTIONS[0] == "neutral" and EMOTIONS[7] == "surprised"
