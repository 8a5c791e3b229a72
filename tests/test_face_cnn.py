"""Face CNN: architecture contract, FER -> RAVDESS labels, clip vote, and a reduced FER2013 run that must learn."""
import argparse
import json

import numpy as np
import pytest

from edge.params import Params

pytest.importorskip("keras")


# ------------------------------------------------------------------ model


@pytest.fixture(scope="module")
def model():
    from training.face import build_face_model
    return build_face_model()


def test_model_shapes_and_size(model):
    p = Params()
    assert model.input_shape == (None, p.face_size, p.face_size, 1)
    assert model.output_shape == (None, p.num_classes)
    assert model.count_params() <= 1_000_000
    emb = model.get_layer("face_embedding")
    assert len(emb.output.shape) == 2 and emb.output.shape[1] >= 32
    kinds = [type(layer).__name__ for layer in model.layers]
    assert kinds.count("Conv2D") == 6
    assert kinds.count("MaxPooling2D") == 3
    allowed = {"InputLayer", "Conv2D", "BatchNormalization", "ReLU", "MaxPooling2D",
               "GlobalAveragePooling2D", "Dense", "Dropout"}
    assert set(kinds) <= allowed, set(kinds) - allowed


def test_model_outputs_probabilities(model):
    x = np.random.default_rng(0).random((3, 60, 60, 1)).astype(np.float32)   # (3, 60, 60, 1)
    pr = model.predict(x, verbose=0)
    assert pr.shape == (3, 8)
    np.testing.assert_allclose(pr.sum(1), 1.0, rtol=1e-5)


# ------------------------------------------------------------------ labels, data, vote

def test_label_map_covers_fer_and_never_calm():
    from training.fer2013 import FER_TO_RAVDESS, fer_label_index
    p = Params()
    assert set(FER_TO_RAVDESS) == {"angry", "disgust", "fear", "happy", "neutral", "sad", "surprise"}
    assert "calm" not in FER_TO_RAVDESS.values()
    idx = [fer_label_index(c, p) for c in FER_TO_RAVDESS]
    assert len(set(idx)) == 7 and p.emotions.index("calm") not in idx
    assert all(p.emotions[fer_label_index(c, p)].startswith(c[:4]) for c in FER_TO_RAVDESS)
    with pytest.raises(KeyError):
        fer_label_index("contempt", p)


def test_augment_without_jitter_equals_resize():
    from training.face import FaceRecipe, augment, to_model_input
    faces = np.random.default_rng(1).integers(0, 256, (4, 48, 48), dtype=np.uint8)
    still = FaceRecipe(max_rotation_deg=0, max_shift_px=0, scale_range=(1, 1), flip=False, brightness=0,
                       contrast=(1, 1))
    a = augment(faces, still, np.random.default_rng(0))
    b = to_model_input(faces)                                                  # (4, 60, 60, 1)
    assert a.shape == b.shape == (4, 60, 60, 1)
    assert np.abs(a - b).max() <= 1.5 / 255                                    # rounding only
    jit = augment(faces, FaceRecipe(), np.random.default_rng(0))
    assert jit.dtype == np.float32 and 0.0 <= jit.min() and jit.max() <= 1.0


def test_label_smoothing_spreads_over_fer_classes_only():
    from training.face import FaceRecipe, soft_targets
    p = Params()
    y = np.array([p.emotions.index("happy"), p.emotions.index("sad")])
    t = soft_targets(y, FaceRecipe(label_smoothing=0.14), p)
    calm = p.emotions.index("calm")
    assert np.allclose(t.sum(1), 1) and np.all(t[:, calm] == 0)
    assert t[0, y[0]] == pytest.approx(0.86 + 0.02) and t[0, p.emotions.index("angry")] == pytest.approx(0.02)
    assert np.array_equal(soft_targets(y, FaceRecipe(), p), np.eye(p.num_classes, dtype=np.float32)[y])


def test_mixup_pairs_within_batches_and_keeps_own_label_larger():
    from training.face import mixup
    rng = np.random.default_rng(0)
    n, batch = 10, 4
    x = np.arange(n, dtype=np.float32)[:, None, None, None] * np.ones((1, 2, 2, 1), np.float32)
    y = np.eye(n, dtype=np.float32)
    xm, ym = mixup(x, y, 0.4, batch, rng)
    assert np.allclose(ym.sum(1), 1) and np.all(ym.argmax(1) == np.arange(n)) and np.all(ym.max(1) >= 0.5)
    for i in range(n):                                   # the partner is in the same batch of 4 rows
        j = [k for k in np.flatnonzero(ym[i] > 0) if k != i]
        assert all(k // batch == i // batch for k in j)
        lam = ym[i, i] if j else 1.0
        assert np.allclose(xm[i], lam * i + (1 - lam) * (j[0] if j else i), atol=1e-5)


def test_random_erase_changes_about_prob_of_faces_inside_one_rectangle():
    from training.face import random_erase
    rng = np.random.default_rng(0)
    x = np.full((400, 60, 60, 1), 2.0, np.float32)       # 2.0: outside the noise's [0, 1)
    out = random_erase(x.copy(), 0.5, rng)
    hit = (out < 2).any(axis=(1, 2, 3))
    assert 0.4 < hit.mean() < 0.6
    for face in out[hit][:20, :, :, 0]:
        rows, cols = np.flatnonzero((face < 2).any(1)), np.flatnonzero((face < 2).any(0))
        box = face[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]
        assert np.all(box < 2) and 0.02 * 3600 * 0.5 <= box.size <= 0.2 * 3600 * 1.5
    assert np.array_equal(random_erase(x.copy(), 0.0, rng), x)


def test_optimiser_choice_and_recipe_key():
    import dataclasses
    import hashlib

    from training.face import QUICK, FaceRecipe, build_face_model, compile_face_model, lr_at
    r = FaceRecipe(optimizer="sgd", lr=0.01, epochs=10)
    m = compile_face_model(build_face_model(QUICK), Params(), r)
    assert type(m.optimizer).__name__ == "SGD" and m.optimizer.nesterov
    assert lr_at(0, r) == pytest.approx(0.01) and lr_at(9, r) == pytest.approx(0.01 * r.lr_final_fraction)
    with pytest.raises(ValueError, match="optimizer"):
        compile_face_model(build_face_model(QUICK), Params(), FaceRecipe(optimizer="rmsprop"))
    # levers at their defaults leave the key of runs made before they existed (their checkpoints resume)
    d = {k: v for k, v in dataclasses.asdict(FaceRecipe()).items()
         if k not in ("epochs", "label_smoothing", "mixup_alpha", "erase_prob", "optimizer", "lr")}
    assert FaceRecipe().key() == hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:12]
    assert FaceRecipe(mixup_alpha=0.2).key() != FaceRecipe().key()


def test_vote_faces_majority_and_ties():
    from training.face import vote_faces
    e = np.eye(8)
    assert vote_faces(np.stack([e[2], e[2], e[5]])) == 2
    # 1 vote each for 3 and 4: the larger summed probability wins
    probs = np.array([[0, 0, 0, 0.50, 0.45, 0, 0.05, 0], [0, 0, 0, 0.30, 0.60, 0, 0.10, 0]])
    assert vote_faces(probs) == 4
    # 2-2 tie between 0 and 7; class 6 has the largest sum but is not among the tied
    probs = np.array([[.47, 0, 0, 0, 0, 0, .38, .15], [.47, 0, 0, 0, 0, 0, .38, .15],
                      [.17, 0, 0, 0, 0, 0, .38, .45], [.17, 0, 0, 0, 0, 0, .38, .45]])
    assert vote_faces(probs) == 0
    with pytest.raises(ValueError):
        vote_faces(np.zeros((0, 8)))


def test_fer_loader_skips_unreadable(tmp_path):
    import cv2

    from training.fer2013 import load_split
    root = tmp_path / "fer"
    for cls in ("happy", "fear"):
        (root / "train" / cls).mkdir(parents=True)
        cv2.imwrite(str(root / "train" / cls / "a.jpg"), np.full((48, 48), 100, np.uint8))
    (root / "train" / "fear" / "broken.jpg").write_bytes(b"not a jpeg")
    s = load_split(root, "train", cache=tmp_path / "cache")
    p = Params()
    assert s.x.shape == (2, 48, 48) and s.x.dtype == np.uint8
    assert sorted(p.emotions[i] for i in s.y) == ["fearful", "happy"]
    assert s.skipped == ["fear/broken.jpg"]
    again = load_split(root, "train", cache=tmp_path / "cache")              # from the .npz cache
    assert np.array_equal(again.x, s.x) and again.skipped == s.skipped


def test_cli_parser():
    from training.face_cli import add_face_parser, cmd_face
    ap = argparse.ArgumentParser(prog="edge-train")
    add_face_parser(ap.add_subparsers(dest="command", required=True))
    a = ap.parse_args(["face", "--quick", "--epochs", "2", "--fresh"])
    assert a.func is cmd_face and a.quick and a.epochs == 2 and a.resume is False
    assert ap.parse_args(["face"]).resume is True
    assert ap.parse_args(["face"]).seed is None and ap.parse_args(["face", "--seed", "1"]).seed == 1
    from training.face import FaceRecipe
    r = FaceRecipe()         # another seed is another run directory; more epochs continue the same one
    assert r.replace(seed=r.seed + 1).key() != r.key() and r.replace(epochs=90).key() == r.key()
    with pytest.raises(SystemExit):
        ap.parse_args(["face", "--resume", "--fresh"])


# ------------------------------------------------------------------ reduced FER2013 training

@pytest.fixture(scope="module")
def fer(fer2013_dir, tmp_path_factory):
    from training.fer2013 import load_split
    cache = tmp_path_factory.mktemp("fer_cache")
    return load_split(fer2013_dir, "train", cache=cache), load_split(fer2013_dir, "validation", cache=cache)


@pytest.fixture(scope="module")
def reduced_run(fer, tmp_path_factory):
    """QUICK recipe (~2 min on 2 cores): 8000 train faces, selection on 1000 validation faces,
    evaluation on 1000 *other* validation faces."""
    from training.face import QUICK, stratified_subset, train_face
    train, val = fer
    ti = stratified_subset(train.y, QUICK.train_limit, 0)
    perm = np.random.default_rng(7).permutation(len(val))
    sel, held = np.sort(perm[:1000]), np.sort(perm[1000:2000])
    run_dir = tmp_path_factory.mktemp("face_run")
    state = train_face(train.x[ti], train.y[ti], val.x[sel], val.y[sel], QUICK, run_dir, progress=False)
    return state, run_dir, held


def test_reduced_training_learns_on_held_out_validation(reduced_run, fer):
    from training.face import QUICK, predict_probs, to_model_input
    state, _, held = reduced_run
    _, val = fer
    pr = predict_probs(state["model"], to_model_input(val.x[held]))
    acc = float(np.mean(pr.argmax(1) == val.y[held]))
    assert acc >= 0.40, (acc, [h["val_accuracy"] for h in state["history"]])
    assert state["epochs_done"] == QUICK.epochs and len(state["history"]) == QUICK.epochs
    assert (pr.argmax(1) == Params().emotions.index("calm")).mean() < 0.01


def test_finished_run_resumes_without_training(reduced_run, fer):
    from training.face import QUICK, stratified_subset, train_face
    state, run_dir, _ = reduced_run
    train, val = fer
    ti = stratified_subset(train.y, QUICK.train_limit, 0)
    again = train_face(train.x[ti], train.y[ti], val.x[:200], val.y[:200], QUICK, run_dir, progress=False)
    assert again["history"] == json.loads((run_dir / "state.json").read_text())["history"]
    assert again["epochs_done"] == QUICK.epochs


def test_resume_continues_after_last_epoch(fer, tmp_path):
    from training.face import QUICK, train_face
    train, val = fer
    r = QUICK.replace(train_limit=0, epochs=1)
    x, y = train.x[:256], train.y[:256]
    train_face(x, y, val.x[:64], val.y[:64], r, tmp_path, progress=False)
    s2 = train_face(x, y, val.x[:64], val.y[:64], r.replace(epochs=2), tmp_path, progress=False)
    assert [h["epoch"] for h in s2["history"]] == [1, 2]
    assert (tmp_path / "last.keras").is_file() and (tmp_path / "best.keras").is_file()


def test_reports(reduced_run, fer, tmp_path):
    from training.face import predict_probs, to_model_input
    from training.face_cli import evaluate, write_reports
    state, _, held = reduced_run
    _, val = fer
    p = Params()
    x = to_model_input(val.x[held])
    r = evaluate(predict_probs(state["model"], x), predict_probs(state["model"], x, tta_flip=True), val.y[held], p)
    r.update({"params": 1, "epochs": 5, "best_epoch": 5, "train_minutes": 1.0, "seconds_per_epoch": 12.0,
              "n_train": 8000, "n_val": 1000, "label_map": {"fear": "fearful"}, "selection": "test",
              "quick": True, "recipe": {}, "command": "edge-train face --quick", "history": state["history"],
              "machine": {"cpu_count": 2}})
    write_reports(r, tmp_path, p)
    j = json.loads((tmp_path / "face_fer2013.json").read_text())
    assert set(j["per_class_recall"]) == set(p.emotions) - {"calm"}
    assert (tmp_path / "face_confusion.png").stat().st_size > 10_000
    md = (tmp_path / "face.md").read_text()
    assert "edge-train face --quick" in md and "60x60" in md and "calm" in md
