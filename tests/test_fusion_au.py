"""Speech + action-unit fusion: the AU table, the three-head model, and a tiny training that must learn."""
import numpy as np
import pytest

from training.fusion_au import HEADS, build_fusion, load_au, train_fold
from training.speech import PatchSet, SpeechRecipe

pytest.importorskip("keras")


def test_real_au_table_pairs_every_speech_clip(shared_dir):
    from training.paths import ravdess_speech_dir
    from training.ravdess import index_speech
    au = load_au(shared_dir / "data/ravdess/openface_au_clip_means.csv")
    assert len(au) == 1440 and all(v.shape == (35,) for v in au.values())
    clips, _ = index_speech(ravdess_speech_dir())
    assert all(c.name.clip_key in au for c in clips)


def test_bad_au_tables(tmp_path):
    with pytest.raises(FileNotFoundError, match="au.csv"):
        load_au(tmp_path / "au.csv")
    f = tmp_path / "few.csv"
    f.write_text("clip_id,AU01_r\n01-01-01-01-01-01-01,0.5\n")
    with pytest.raises(ValueError, match="35 AU columns"):
        load_au(f)
    cols = ",".join(f"AU{i:02d}_r" for i in range(35))
    f.write_text(f"clip_id,{cols}\n01-01-01-01-01-01-01," + ",".join(["nan"] * 35) + "\n")
    with pytest.raises(ValueError, match="few.csv:2"):
        load_au(f)


def test_three_heads_in_one_graph():
    m = build_fusion(SpeechRecipe())
    assert len(m.outputs) == 3
    out = m.predict([np.zeros((2, 24, 16, 64), np.float32), np.zeros((2, 35), np.float32)], verbose=0)
    assert set(out) == {f"{h}_probs" for h in HEADS}
    assert all(v.shape == (2, 8) for v in out.values())


def test_fusion_learns_from_the_au_branch():
    """Speech features are noise here and AUs carry the label: the fused and AU heads must learn."""
    rng = np.random.default_rng(0)
    n = 192
    labels = rng.integers(0, 8, n)
    actors = np.resize(np.arange(1, 25), n)
    ps = PatchSet(rng.normal(size=(n * 2, 24, 16, 64)).astype(np.float16), np.repeat(np.arange(n), 2),
                  np.zeros(n * 2, int))
    au = rng.normal(size=(n, 35)).astype(np.float32)
    au[:, :8] += 4 * np.eye(8)[labels]
    prep = {"train_ps": ps, "test_ps": ps, "labels": labels, "clip_actor": actors}
    res = train_fold(prep, au, [1, 2, 3, 4, 5, 6], SpeechRecipe(epochs=10, val_actors=0, patches_per_clip=8),
                     per_actor_au=False)
    assert res["au"] >= 0.6 and res["fused"] >= 0.5, res       # chance 0.125 (one clip in 8)


def test_frozen_two_stage_keeps_single_heads_equal_to_single_branches():
    """--frozen: the speech and AU heads inside the fused graph ARE the single-branch models."""
    from training.fusion_au import train_fold_frozen
    rng = np.random.default_rng(1)
    n = 192
    labels = rng.integers(0, 8, n)
    actors = np.resize(np.arange(1, 25), n)
    x = rng.normal(size=(n * 2, 24, 16, 64)).astype(np.float32)
    x[:, :, :, :8] += 0.8 * np.eye(8)[np.repeat(labels, 2)][:, None, None, :]     # a weak speech cue
    ps = PatchSet(x.astype(np.float16), np.repeat(np.arange(n), 2), np.zeros(n * 2, int))
    au = rng.normal(size=(n, 35)).astype(np.float32)
    au[:, :8] += 5 * np.eye(8)[labels]
    prep = {"train_ps": ps, "test_ps": ps, "labels": labels, "clip_actor": actors}
    res = train_fold_frozen(prep, au, [1, 2, 3, 4, 5, 6], SpeechRecipe(epochs=6, val_actors=4, patches_per_clip=4,
                                                                       patience=3), per_actor_au=False)
    assert res["speech"] == res["speech_branch_alone"], res
    assert res["au"] == res["au_branch_alone"] and res["au"] >= 0.5, res


def test_report_compares_with_the_speech_cv_figure_on_recorded_clips(tmp_path):
    import dataclasses
    import json

    from training.fusion_au import markdown
    from training.speech import SpeechRecipe
    recipe = dataclasses.asdict(SpeechRecipe())                          # test_speeds (0.9, 1.1) by default
    (tmp_path / "speech_cv.json").write_text(json.dumps(
        {"recipe": recipe, "mean_clip_accuracy": 0.70, "mean_clip_accuracy_without_test_speeds": 0.65}))
    res = {"command": "edge-train fusion-au --frozen", "folds": [{"test_actors": [1], "fused": 0.8, "speech": 0.65,
                                                                  "au": 0.7}],
           "fused": 0.8, "speech": 0.65, "au": 0.7, "recipe": recipe, "cv_minutes": 1.0}
    md = markdown(res, tmp_path)
    assert "not on its test copies): 65.00%" in md and "**+15.0 points** above it" in md
    assert "+0.0 points against the standalone" in md and "earlier speech recipe" not in md
    res["recipe"] = {**recipe, "label_smoothing": 0.0}                   # a training difference is still flagged
    assert "earlier speech recipe" in markdown(res, tmp_path)
