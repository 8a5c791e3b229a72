"""The F0 tracker behind the pitch-normalisation research row, and the per-speaker factors."""
from __future__ import annotations

import numpy as np
import pytest

from training.pitch import FACTOR_RANGE, f0_track, median_f0, speaker_factors


def _voice(f0: float, seconds: float = 0.5, sr: int = 16000) -> np.ndarray:
    t = np.arange(int(seconds * sr)) / sr
    return sum(np.sin(2 * np.pi * k * f0 * t) / k for k in range(1, 8)) * 0.3


@pytest.mark.parametrize("f0", [95.0, 150.0, 220.0, 310.0])
def test_a_harmonic_voice_is_tracked_within_one_percent(f0):
    track = f0_track(_voice(f0))
    assert (track > 0).mean() > 0.9
    assert abs(np.median(track[track > 0]) / f0 - 1) < 0.01


def test_silence_noise_and_short_input_are_unvoiced_or_padded():
    rng = np.random.default_rng(0)
    assert (f0_track(rng.normal(size=16000)) > 0).mean() < 0.1
    quiet_then_voice = np.concatenate([1e-4 * rng.normal(size=8000), _voice(200.0)])
    track = f0_track(quiet_then_voice)
    assert (track[:40] == 0).all() and (track[60:] > 0).mean() > 0.9   # the quiet half is far below the loud one
    assert f0_track(np.zeros(100)).shape == (1,)
    assert np.isnan(median_f0([np.zeros(4000)]))
    with pytest.raises(ValueError, match="mono"):
        f0_track(np.zeros((2, 1000)))


def test_speaker_factors_move_each_median_towards_the_reference():
    f = speaker_factors({1: 100.0, 2: 200.0, 3: float("nan")}, gamma=0.5)
    assert f[3] == 1.0                                                    # no voiced frames: left alone
    ref = np.sqrt(100.0 * 200.0)
    assert np.isclose(f[1], (ref / 100.0) ** 0.5) and np.isclose(f[2], (ref / 200.0) ** 0.5)
    full = speaker_factors({1: 80.0, 2: 300.0}, gamma=1.0)
    assert full == {1: FACTOR_RANGE[1], 2: FACTOR_RANGE[0]}              # clipped
    assert speaker_factors({1: 150.0}, gamma=0.5, reference=150.0) == {1: 1.0}
