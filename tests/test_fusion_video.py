"""The paper's fusion pipeline end to end on RAVDESS-named links to the real CREMA-D clips."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from training.fusion import triples

REPO = Path(__file__).resolve().parents[1]
CREMA_TO_RAVDESS = {"NEU": 1, "HAP": 3, "SAD": 4, "ANG": 5, "FEA": 6, "DIS": 7}


def test_triples_follow_the_paper():
    rng = np.random.default_rng(0)
    t = triples(n_s=4, n_f=13, per_patch=5, rng=rng)            # m = 3
    assert t.shape == (20, 2)
    for p in range(4):
        faces = t[t[:, 0] == p, 1]
        assert len(faces) == 5 and faces.min() >= 3 * p and faces.max() < 3 * (p + 1)
    short = triples(n_s=4, n_f=2, per_patch=5, rng=rng)        # fewer faces than patches
    assert short[:, 1].tolist() == [0] * 10 + [1] * 10
    assert triples(3, 0, 5, rng).shape == (0, 2)


@pytest.fixture(scope="module")
def fake_ravdess(cremad_dir, tmp_path_factory):
    """Six clips over four folds' actors: fold 0 (actors 1, 2) is tested, 7, 8, 13, 19 train."""
    root = tmp_path_factory.mktemp("ravdess_av")
    actors = [1, 7, 13, 19, 2, 8]
    for actor, (crema, code) in zip(actors, sorted(CREMA_TO_RAVDESS.items()), strict=True):
        d = root / f"Actor_{actor:02d}"
        d.mkdir()
        (d / f"01-01-{code:02d}-01-01-01-{actor:02d}.flv").symlink_to(cremad_dir / f"1001_DFA_{crema}_XX.flv")
    return root


def test_fusion_command_end_to_end(fake_ravdess, yamnet_tflite, tmp_path):
    r = subprocess.run([sys.executable, "-m", "training.cli", "fusion", "--ravdess-video", str(fake_ravdess),
                        "--yamnet", str(yamnet_tflite), "--folds", "0", "--set", "epochs=2", "--small-face",
                        "--out", str(tmp_path), "--quiet"],
                       cwd=REPO, capture_output=True, text=True, timeout=900,
                       env={**__import__("os").environ, "AVE_CACHE": str(tmp_path / "cache")})
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads((tmp_path / "fusion_video_cv.json").read_text())
    fold = res["folds"][0]
    assert fold["test_actors"] == [1, 2] and fold["n_clips"] == 2
    assert all(0.0 <= fold[h] <= 1.0 for h in ("fused", "speech", "face"))
    assert res["counts"]["videos"] == 6 and not res["counts"]["no_face"]
    assert "Paper: 81.04%" in (tmp_path / "fusion_video.md").read_text()
