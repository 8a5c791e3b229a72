"""The RAVDESS video reader, on a temporary tree of RAVDESS-named links to the real CREMA-D clips."""
import numpy as np
import pytest

from edge.params import Params
from training.ravdess_video import index_video, video_key_faces

# CREMA-D emotion -> RAVDESS emotion code (CREMA-D has 6 of our 8 emotions)
CREMA_TO_RAVDESS = {"NEU": 1, "HAP": 3, "SAD": 4, "ANG": 5, "FEA": 6, "DIS": 7}


@pytest.fixture(scope="module")
def fake_ravdess(cremad_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("ravdess_video")
    for i, (crema, code) in enumerate(sorted(CREMA_TO_RAVDESS.items())):
        actor = 1 + i % 2
        d = root / f"Actor_{actor:02d}"
        d.mkdir(exist_ok=True)
        src = cremad_dir / f"1001_DFA_{crema}_XX.flv"
        (d / f"01-01-{code:02d}-01-01-01-{actor:02d}.flv").symlink_to(src)
    (root / "Actor_01" / "01-01-99-01-01-01-01.flv").symlink_to(src)       # bad emotion code: skipped
    (root / "Actor_01" / "03-01-01-01-01-01-01.flv").symlink_to(src)       # audio-only modality: skipped
    return root


def test_index_and_folds(fake_ravdess):
    videos, skipped = index_video(fake_ravdess)
    assert len(videos) == 6 and len(skipped) == 2
    assert {v.actor for v in videos} == {1, 2} and all(Params().fold_of_actor(v.actor) == 0 for v in videos)
    assert sorted(v.label for v in videos) == [0, 2, 3, 4, 5, 6]


def test_key_faces_per_video_are_cached(fake_ravdess, tmp_path):
    videos, _ = index_video(fake_ravdess)
    faces, stats = video_key_faces(videos[0].path, cache=tmp_path)
    assert faces.dtype == np.uint8 and faces.shape[1:] == (60, 60)
    # ~2-3 s clips at 30 fps, r = 4: one key face per 4 frames
    assert stats["with_face"] >= 0.9 * stats["frames"]
    assert abs(len(faces) - stats["with_face"] / 4) <= 2
    again, stats2 = video_key_faces(videos[0].path, cache=tmp_path)
    np.testing.assert_array_equal(faces, again)
    assert stats2 == stats and len(list((tmp_path / "keyfaces").glob("*.npz"))) == 1


def test_missing_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        index_video(tmp_path / "nowhere")
