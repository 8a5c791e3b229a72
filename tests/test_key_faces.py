"""Key faces: medoid of each window of 2r + 1 consecutive faces, window shifted by r."""
from __future__ import annotations

import math

import numpy as np
import pytest

from edge.params import Params
from edge.vision.faces import key_faces


def flat_faces(levels) -> np.ndarray:
    """(n, 60, 60) uint8 faces of constant grey level: L2 distance = 60 * |level_i - level_j|."""
    return np.stack([np.full((60, 60), v, np.uint8) for v in levels])


def expected_windows(n: int, r: int) -> int:
    w = 2 * r + 1
    return 0 if n == 0 else 1 if n <= w else 1 + math.ceil((n - w) / r)


def reference(faces: np.ndarray, r: int) -> list[int]:
    """Plain-loop version of the rule, for comparison."""
    x = faces.reshape(len(faces), 60 * 60).astype(np.float64)
    out, start = [], 0
    while start < len(x):
        end = min(start + 2 * r + 1, len(x))
        totals = [sum(np.linalg.norm(x[i] - x[j]) for j in range(start, end)) for i in range(start, end)]
        out.append(start + int(np.argmin(totals)))
        if end == len(x):
            break
        start += r
    return out


def test_known_medoid_is_the_median_level():
    # on a line the medoid is the median: levels 0, 90, 10, 80, 40 (median), 70, 20, 60, 30
    levels = [0, 90, 10, 80, 40, 70, 20, 60, 30]
    assert key_faces(flat_faces(levels), radius=4).tolist() == [4]


def test_each_window_picks_its_own_medoid():
    rng = np.random.default_rng(1)
    r = 4
    levels = rng.permutation(200)[:25]  # distinct levels, so medians are unique
    got = key_faces(flat_faces(levels), radius=r)
    starts = [0, 4, 8, 12, 16]  # windows [0,9) [4,13) [8,17) [12,21) [16,25)
    want = [s + int(np.argsort(levels[s:s + 9])[4]) for s in starts]
    assert got.tolist() == want


def test_outlier_is_never_a_key_face():
    rng = np.random.default_rng(2)
    faces = rng.integers(100, 120, size=(9, 60, 60), dtype=np.uint8)
    faces[3] = 255  # a blink / bad crop
    assert 3 not in key_faces(faces, radius=4)


@pytest.mark.parametrize("n", list(range(0, 41)))
def test_counts_and_reference(n):
    r = 4
    faces = np.random.default_rng(n).integers(0, 256, size=(n, 60, 60), dtype=np.uint8)
    got = key_faces(faces, radius=r)
    assert got.dtype == np.int64 and len(got) == expected_windows(n, r)
    assert got.tolist() == reference(faces, r)
    assert ((got >= 0) & (got < max(n, 1))).all()


def test_short_sequences_make_one_window():
    levels = [10, 50, 30]  # fewer than 2r + 1 faces: one window of all of them
    assert key_faces(flat_faces(levels), radius=4).tolist() == [2]
    assert key_faces(flat_faces([7]), radius=4).tolist() == [0]
    assert key_faces(np.zeros((0, 60, 60), np.uint8), radius=4).tolist() == []


def test_shorter_last_window():
    # 10 faces, r = 4: windows [0, 9) and [4, 10) (6 faces, reaches the end)
    levels = [0, 1, 2, 3, 4, 100, 101, 102, 103, 104]
    got = key_faces(flat_faces(levels), radius=4)
    assert len(got) == 2
    assert got[0] == 4  # median of levels[0:9] = 4
    # window [4, 10): levels 4, 100..104; an even count on a line: the two middle levels
    # (101 at index 6, 102 at index 7) have the same total distance, the earliest wins
    assert got[1] == 6


def test_ties_pick_the_earliest():
    faces = flat_faces([50] * 17)  # all distances 0
    assert key_faces(faces, radius=4).tolist() == [0, 4, 8]


def test_unique_drops_repeated_picks():
    # a constant block makes consecutive windows agree on the same face
    levels = [0, 1, 2, 3, 50, 50, 50, 50, 50, 50, 50, 50, 97, 98, 99, 100, 101]
    faces = flat_faces(levels)
    picks = key_faces(faces, radius=4)
    uniq = key_faces(faces, radius=4, unique=True)
    assert len(uniq) == len(set(picks.tolist())) <= len(picks)
    assert list(dict.fromkeys(picks.tolist())) == uniq.tolist()


def test_uint8_does_not_wrap():
    faces = flat_faces([0, 255, 250, 5, 245])  # uint8 differences would wrap around
    assert key_faces(faces, radius=4).tolist() == [4]  # sorted 0 5 245 250 255: median 245


def test_default_radius_from_params():
    assert Params().key_face_radius == 4
    faces = np.random.default_rng(3).integers(0, 256, size=(30, 60, 60), dtype=np.uint8)
    np.testing.assert_array_equal(key_faces(faces), key_faces(faces, radius=4))
    with pytest.raises(ValueError):
        key_faces(faces, radius=0)
