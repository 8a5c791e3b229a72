"""edge.audio.norm.SpeakerNorm: the device's running speaker mean with a population prior."""
from __future__ import annotations

import numpy as np
import pytest

from edge.audio.norm import SpeakerNorm
from edge.loop import LoopConfig
from edge.params import Params


def test_the_mean_is_the_prior_weighted_by_its_frames_against_the_speech_heard():
    prior = np.zeros(4)
    norm = SpeakerNorm(prior, prior_frames=300.0)
    np.testing.assert_array_equal(norm.mean, prior)                      # nothing heard: the prior
    norm.update(np.full((100, 4), 2.0))
    np.testing.assert_allclose(norm.mean, 2.0 * 100 / 400)
    norm.update(np.full((200, 4), 2.0))
    np.testing.assert_allclose(norm.mean, 2.0 * 300 / 600)
    np.testing.assert_allclose(norm.apply(np.full((3, 4), 1.0)), 0.0, atol=1e-7)
    assert norm.apply(np.zeros((96, 4))).dtype == np.float32
    norm.reset()
    np.testing.assert_array_equal(norm.mean, prior)
    assert norm.frames == 0


def test_old_speech_is_forgotten_in_proportion_past_max_frames():
    norm = SpeakerNorm(np.zeros(2), prior_frames=0.0, max_frames=100.0)
    norm.update(np.full((100, 2), -1.0))                                  # one speaker, then another
    norm.update(np.full((300, 2), 3.0))
    assert norm.frames == 100.0
    np.testing.assert_allclose(norm.mean, (-100 + 900) / 400)              # the sum scaled down with the count
    norm.update(np.full((1000, 2), 3.0))
    assert norm.mean[0] == pytest.approx(3.0, abs=0.1)                     # the new voice has taken over


def test_without_a_prior_nothing_heard_is_not_a_nan():
    norm = SpeakerNorm(np.array([1.0, 2.0]), prior_frames=0.0)
    np.testing.assert_array_equal(norm.mean, [1.0, 2.0])
    assert np.all(np.isfinite(norm.apply(np.zeros((5, 2)))))
    norm.update(np.array([[5.0, 5.0]]))
    np.testing.assert_array_equal(norm.mean, [5.0, 5.0])


def test_non_finite_frames_are_skipped_and_bad_input_named():
    norm = SpeakerNorm(np.zeros(3), prior_frames=0.0)
    norm.update(np.array([[1.0, 1.0, 1.0], [np.nan, 0.0, 0.0], [np.inf, 1.0, 1.0]]))
    assert norm.frames == 1 and np.all(norm.mean == 1.0)
    with pytest.raises(ValueError, match=r"expects \(n, 3\)"):
        norm.update(np.zeros((4, 2)))
    with pytest.raises(ValueError, match="non-finite"):
        SpeakerNorm(np.array([0.0, np.nan]))
    with pytest.raises(ValueError, match="out of range"):
        SpeakerNorm(np.zeros(3), prior_frames=-1.0)


def test_the_class_default_is_edge_runs_default():
    assert SpeakerNorm(np.zeros(2)).prior_frames == pytest.approx(LoopConfig().speaker_prior_s
                                                                  / Params().stft_hop_seconds)
