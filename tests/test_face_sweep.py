"""The FER2013 recipe sweep's bookkeeping: budget rescaling, merging calls, the report table."""
import json

import pytest

from edge.params import Params
from training import face_sweep as fs


def test_epochs_that_fit_keeps_plan_when_it_fits():
    assert fs.epochs_that_fit(planned=40, done=3, seconds_per_epoch=2.0, elapsed=10.0, budget=400.0) == 40


def test_epochs_that_fit_cuts_to_budget():
    # 3 done after 30 s, 10 s an epoch, 400 s budget -> 37 more fit
    assert fs.epochs_that_fit(planned=200, done=3, seconds_per_epoch=10.0, elapsed=30.0, budget=400.0) == 40


def test_epochs_that_fit_never_below_done():
    assert fs.epochs_that_fit(planned=200, done=3, seconds_per_epoch=10.0, elapsed=900.0, budget=400.0) == 3
    with pytest.raises(ValueError, match="seconds_per_epoch"):
        fs.epochs_that_fit(planned=10, done=3, seconds_per_epoch=0.0, elapsed=1.0, budget=10.0)


def _run(name, val, **kw):
    return {"name": name, "widths": fs.WIDTHS[20], "overrides": {}, "params": 246700, "epochs_planned": 75,
            "epochs_run": 75, "epochs_done": 75, "best_val": val, "best_epoch": 70, "best_val_tta": val + 0.01,
            "last_val": val, "wall_s": 100.0, "backend": "jax", "train_jpeg_quality": 90,
            "history": [{"epoch": 1, "acc": 0.7}], **kw}


def test_report_merges_calls_and_names_best(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    (a / "fer_sweep.json").write_text(json.dumps({"x": _run("x", 0.60)}))
    legacy = _run("y", 0.65)
    legacy.pop("widths"), legacy.pop("overrides"), legacy.pop("train_jpeg_quality")
    legacy["cfg"] = {"w": 40, "epochs": 200, "dropout": 0.2}
    (b / "fer_sweep.json").write_text(json.dumps({"y": legacy}))
    doc = fs.report([a, b], tmp_path / "rep")
    assert doc["best"] == "y"
    assert [r["call"] for r in doc["runs"]] == [1, 2]
    assert doc["runs"][1]["widths"] == fs.WIDTHS[40] and doc["runs"][1]["overrides"] == {"dropout": 0.2}
    md = (tmp_path / "rep" / fs.REPORT_MD).read_text()
    assert "| 2 | 40,80,80,160,160,320 |" in md and "65.00%" in md and "66.00%" in md


def test_report_continues_an_earlier_report_and_pairs_levers(tmp_path):
    """A new call appends to the committed report (its calls kept, numbering on); a lever run is compared with
    the plain run of its own call, widths and seed only."""
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    (a / "fer_sweep.json").write_text(json.dumps({"x": _run("x", 0.60)}))
    first = fs.report([a], tmp_path / "rep")
    w16 = {"widths": fs.WIDTHS[16]}
    (b / "fer_sweep.json").write_text(json.dumps({
        "p1": _run("p1", 0.64, **w16), "ls1": _run("ls1", 0.65, overrides={"label_smoothing": 0.1}, **w16),
        "p2": _run("p2", 0.62, overrides={"seed": 2}, **w16),
        "ls2": _run("ls2", 0.61, overrides={"label_smoothing": 0.1, "seed": 2}, **w16),
        "mx": _run("mx", 0.70, overrides={"mixup_alpha": 0.2}, **w16)}))
    doc = fs.report([tmp_path / "rep" / fs.REPORT_JSON, b], tmp_path / "rep")
    assert first["runs"][0] == doc["runs"][0] and [r["call"] for r in doc["runs"]] == [1, 2, 2, 2, 2, 2]
    eff = {e["lever"]: e for e in fs.lever_effects(doc["runs"])}
    ls = eff['{"label_smoothing": 0.1}']
    assert ls["pairs"] == ["ls1 vs p1", "ls2 vs p2"] and ls["mean_delta"] == pytest.approx(0.0)
    assert eff['{"mixup_alpha": 0.2}']["deltas"] == [pytest.approx(0.06)]
    md = (tmp_path / "rep" / fs.REPORT_MD).read_text()
    assert "| 16,32,32,64,64,128 | `{\"label_smoothing\": 0.1}` | 2 | +1.00, -1.00 | +0.00 pt |" in md


def test_report_rejects_failed_or_missing_runs(tmp_path):
    with pytest.raises(FileNotFoundError, match="fer_sweep.json"):
        fs.collect([tmp_path])
    (tmp_path / "fer_sweep.json").write_text(json.dumps({"z": {"error": "CUDA out of memory"}}))
    with pytest.raises(ValueError, match="run z failed: CUDA out of memory"):
        fs.collect([tmp_path])


def test_pack_round_trip(tmp_path):
    import cv2
    import numpy as np
    rng = np.random.default_rng(0)
    root = tmp_path / "fer"
    faces = {}
    for split in ("train", "validation"):
        for cls in ("happy", "sad"):
            (root / split / cls).mkdir(parents=True)
            for i in range(3):
                im = cv2.GaussianBlur(rng.integers(0, 256, (48, 48), dtype=np.uint8), (5, 5), 0)
                cv2.imwrite(str(root / split / cls / f"{i}.png"), im)
                faces[(split, cls, i)] = im
    info = fs.pack(root, tmp_path / "fer.npz", quality=90, cache=tmp_path / "cache")
    assert info["train"] == 6 and info["validation"] == 6 and 0 < info["train_mean_abs_diff"] < 4
    tx, ty, vx, vy, q = fs.load_packed(tmp_path / "fer.npz")
    assert q == 90 and tx.shape == (6, 48, 48) and len(ty) == 6
    want = np.stack([faces[("validation", c, i)] for c in ("happy", "sad") for i in range(3)])
    assert np.array_equal(vx, want)                  # validation exact, train only close
    assert 0 < np.abs(tx.astype(int) - np.stack([faces[("train", c, i)] for c in ("happy", "sad")
                                                 for i in range(3)])).mean() < 4


@pytest.mark.parametrize("name", ["w16_e88", "w16_e88_all_sgd"])
def test_run_one_trains_through_fit_epoch_and_cuts_to_budget(tmp_path, name):
    """A sweep run trains with training.face.fit_epoch (train_face's epoch) and, past epoch 3, only as many
    epochs as its budget fits (never fewer than done); also with every lever on (smoothing, mixup, erasing, SGD)."""
    import cv2
    import numpy as np
    rng = np.random.default_rng(1)
    root = tmp_path / "fer"
    for split in ("train", "validation"):
        for cls in ("happy", "sad", "angry"):
            (root / split / cls).mkdir(parents=True)
            for i in range(4):
                cv2.imwrite(str(root / split / cls / f"{i}.png"), rng.integers(0, 256, (48, 48), dtype=np.uint8))
    fs.pack(root, tmp_path / "fer.npz", quality=90, cache=tmp_path / "cache")
    res = fs.run_one(name, tmp_path / "fer.npz", budget=1e-3, out=tmp_path)
    assert res["epochs_planned"] == 88 and res["epochs_run"] == res["epochs_done"] == 3
    assert [h["epoch"] for h in res["history"]] == [1, 2, 3] and all(np.isfinite(h["loss"]) for h in res["history"])
    assert json.loads((tmp_path / f"{name}.json").read_text())["epochs_done"] == 3
    assert 0 <= res["best_val"] <= 1
    assert res["history"][0]["lr"] == pytest.approx(fs.RUNS[name][2].get("lr", Params().learning_rate))
