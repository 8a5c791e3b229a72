"""The paper's face branch: 6 conv + 3 max-pool CNN on 60x60 grey faces -> 8 RAVDESS emotions.

Trained here on FER2013 (``training/fer2013.py``; RAVDESS videos are not available on these
machines), selected on fer2013/validation only, checkpointed after every epoch and resumable:

    edge-train face --data ../shared/data/fer2013            # rerun the same command to resume

Input contract (training-time): ``(60, 60, 1)`` float32 = grey uint8 / 255. FER's 48x48 faces
are upscaled with ``cv2.resize(..., INTER_LINEAR)``; the device's 60x60 crops
(``edge/vision/faces.py``) go in as they are. Output: softmax over ``Params.emotions`` (calm is
an output unit but never a FER target). The hidden layer ``face_embedding`` is what the fusion
model concatenates with ``speech_embedding``.

Channel widths are sized for CPU training (2 cores) and the int8 device graph: ~0.16 M parameters, ~29 M MACs a face.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import math
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edge.params import Params

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FaceRecipe:
    """Architecture and training recipe of the face CNN."""
    # Architecture as data: ("conv", filters) = 3x3 same conv -> BN -> ReLU; ("pool", 2) = 2x2 max-pool.
    # The shipped model's widths (16-32-32-64-64-128, 162k parameters). 20-wide scored a little more on
    # FER2013 (reports/face_sweep.md) but the face CNN is most of the int8 decision's time (5 faces a
    # patch). Its 60x60 stem is the costliest layer per MAC: XNNPACK's int8 conv works in tiles of 16
    # filters x 8 input channels per 3x3 tap, so the 1-channel stem costs what an 8-channel, 16-filter
    # conv does (0.13 ms for 5 faces: 2% of the CNN's MACs, 15% of its time), with 8 filters as with 16.
    # An 8-filter stem (8-32-32-64-64-128, trained for 60 epochs) scored 62.97% here and saved only its
    # second conv's half (~0.045 ms a decision), so it was not shipped (reports/face_stem8/README.md).
    layers: tuple[tuple[str, int], ...] = (
        ("conv", 16), ("pool", 2),                    # (60, 60, 16) -> (30, 30, 16)
        ("conv", 32), ("conv", 32), ("pool", 2),      # (30, 30, 32) -> (15, 15, 32)
        ("conv", 64), ("conv", 64), ("pool", 2),      # (15, 15, 64) -> (7, 7, 64)
        ("conv", 128),                                # (7, 7, 128) -> global average pool (128,)
    )
    embedding: int = 128                 # units of the `face_embedding` layer
    bn_momentum: float = 0.95            # BatchNorm moving averages (lower for short runs: stale stats)
    dropout: float = 0.4
    epochs: int = 88
    batch_size: int = 128
    lr_final_fraction: float = 0.02      # cosine decay of Adam's lr from Params.learning_rate to this fraction
    # augmentation (train only), applied while resizing 48 -> 60 in one warp
    max_rotation_deg: float = 10.0
    max_shift_px: float = 4.0            # at 60 px
    scale_range: tuple[float, float] = (0.9, 1.1)
    flip: bool = True
    brightness: float = 0.15             # +- fraction of 255
    contrast: tuple[float, float] = (0.8, 1.2)
    train_limit: int = 0                 # >0: a stratified subset of this many train faces (quick runs)
    val_limit: int = 0                   # >0: a fixed stratified subset of validation faces
    seed: int = 1                        # the shipped run (seed 0 was a 30-epoch run of the same widths)
    # training levers, off in the shipped run: on a GPU sweep (reports/face_sweep.md) none lifted the 16-wide
    # model beyond its 1-point seed spread (label smoothing +0.2 over 3 seeds; mixup, erasing, SGD 0 to -1.1)
    label_smoothing: float = 0.0         # cross-entropy against (1 - e) one-hot + e / 7 on FER's 7 classes
    mixup_alpha: float = 0.0             # >0: mixup within each batch, lambda ~ Beta(a, a) per face
    erase_prob: float = 0.0              # random erasing: this fraction of faces gets one grey-noise rectangle
    optimizer: str = "adam"              # "adam", or "sgd" (Nesterov momentum 0.9)
    lr: float = 0.0                      # peak learning rate; 0: Params.learning_rate (the paper's 1e-3)

    def replace(self, **kw) -> "FaceRecipe":
        return dataclasses.replace(self, **kw)

    def key(self) -> str:
        import hashlib
        d = dataclasses.asdict(self)
        d.pop("epochs")                  # more epochs continue the same run
        for k in _LEVERS:                # levers at their default: the key of runs made before they existed
            if d[k] == _LEVERS[k]:
                d.pop(k)
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:12]


_LEVERS = {"label_smoothing": 0.0, "mixup_alpha": 0.0, "erase_prob": 0.0, "optimizer": "adam", "lr": 0.0}


# A reduced run for CI and tests: ~half the channel widths, a stratified 8000-face subset, 5 epochs,
# light augmentation (~2 min on 2 cores). Not the model of the reports' headline figure.
QUICK = FaceRecipe(layers=(("conv", 12), ("pool", 2), ("conv", 24), ("conv", 24), ("pool", 2),
                           ("conv", 48), ("conv", 48), ("pool", 2), ("conv", 96)),
                   embedding=64, dropout=0.2, bn_momentum=0.9, epochs=5, batch_size=64, train_limit=8000,
                   val_limit=1000, lr_final_fraction=0.1,
                   max_rotation_deg=5.0, max_shift_px=2.0, scale_range=(0.95, 1.05), brightness=0.05,
                   contrast=(0.9, 1.1))


# ------------------------------------------------------------------ model

def build_face_model(recipe: FaceRecipe = FaceRecipe(), p: Params = Params(), name: str = "face_cnn"):
    """(None, 60, 60, 1) grey in [0, 1] -> (None, 8) probabilities over ``p.emotions``."""
    import keras
    from keras import layers as L
    x_in = keras.Input((p.face_size, p.face_size, 1), name="face")
    x = x_in
    n_conv = n_pool = 0
    for kind, v in recipe.layers:
        if kind == "conv":
            n_conv += 1
            x = L.Conv2D(v, 3, padding="same", use_bias=False, name=f"face_conv{n_conv}")(x)
            x = L.BatchNormalization(momentum=recipe.bn_momentum, name=f"face_bn{n_conv}")(x)
            x = L.ReLU(name=f"face_relu{n_conv}")(x)
        elif kind == "pool":
            n_pool += 1
            x = L.MaxPooling2D(v, name=f"face_pool{n_pool}")(x)
        else:
            raise ValueError(f"unknown layer kind {kind!r} in FaceRecipe.layers")
    x = L.GlobalAveragePooling2D(name="face_gap")(x)                        # (192,)
    z = L.Dense(recipe.embedding, activation="relu", name="face_embedding")(x)  # (128,)
    z = L.Dropout(recipe.dropout, name="face_dropout")(z)
    out = L.Dense(p.num_classes, activation="softmax", name="face_probs")(z)     # (8,)
    return keras.Model(x_in, out, name=name)


def compile_face_model(model, p: Params = Params(), recipe: FaceRecipe = FaceRecipe()):
    """Adam (the paper's optimiser) or Nesterov SGD, categorical cross-entropy with the recipe's label smoothing
    spread over FER2013's 7 classes (calm has no FER face, so it never gets target mass)."""
    import keras
    if recipe.optimizer == "adam":
        opt = keras.optimizers.Adam(peak_lr(recipe, p))
    elif recipe.optimizer == "sgd":
        opt = keras.optimizers.SGD(peak_lr(recipe, p), momentum=0.9, nesterov=True)
    else:
        raise ValueError(f"FaceRecipe.optimizer must be 'adam' or 'sgd', got {recipe.optimizer!r}")
    model.compile(optimizer=opt, loss=keras.losses.CategoricalCrossentropy(), metrics=["accuracy"])
    return model


def peak_lr(recipe: FaceRecipe, p: Params = Params()) -> float:
    return recipe.lr if recipe.lr > 0 else p.learning_rate


def lr_at(epoch: int, recipe: FaceRecipe, p: Params = Params()) -> float:
    """Cosine decay per epoch: the peak rate at epoch 0 -> lr_final_fraction of it at the last."""
    t = epoch / max(recipe.epochs - 1, 1)
    f = recipe.lr_final_fraction + (1 - recipe.lr_final_fraction) * 0.5 * (1 + math.cos(math.pi * min(t, 1.0)))
    return peak_lr(recipe, p) * f


def soft_targets(y: np.ndarray, recipe: FaceRecipe, p: Params = Params()) -> np.ndarray:
    """(n,) RAVDESS-index labels -> (n, 8) targets: one-hot, smoothed over the FER2013 classes (all but calm)."""
    y1 = np.eye(p.num_classes, dtype=np.float32)[y]
    e = recipe.label_smoothing
    if e <= 0:
        return y1
    fer = np.array([c != "calm" for c in p.emotions], np.float32)
    return (1 - e) * y1 + e * fer / fer.sum()


def mixup(x: np.ndarray, y: np.ndarray, alpha: float, batch: int, rng: np.random.Generator):
    """Mixup within each batch of ``batch`` consecutive rows: row i with a random row of its batch,
    lambda ~ Beta(alpha, alpha) per row (folded to >= 0.5, so the row's own label stays the larger part)."""
    n = len(x)
    lam = rng.beta(alpha, alpha, n).astype(np.float32)
    lam = np.maximum(lam, 1 - lam)
    partner = np.empty(n, int)
    for s in range(0, n, batch):
        e = min(s + batch, n)
        partner[s:e] = s + rng.permutation(e - s)
    xm = lam[:, None, None, None] * x + (1 - lam[:, None, None, None]) * x[partner]
    ym = lam[:, None] * y + (1 - lam[:, None]) * y[partner]
    return xm.astype(np.float32), ym.astype(np.float32)


def random_erase(x: np.ndarray, prob: float, rng: np.random.Generator,
                 area: tuple[float, float] = (0.02, 0.2), aspect: tuple[float, float] = (0.3, 3.3)) -> np.ndarray:
    """Random erasing (Zhong et al. 2020), in place on (n, h, w, 1) floats in [0, 1]: each face with
    probability ``prob`` gets one rectangle of ``area`` (fraction of the face) and ``aspect`` filled with
    uniform noise."""
    n, h, w, _ = x.shape
    for i in np.flatnonzero(rng.random(n) < prob):
        a = rng.uniform(*area) * h * w
        r = math.exp(rng.uniform(math.log(aspect[0]), math.log(aspect[1])))
        eh, ew = min(h, max(1, round(math.sqrt(a * r)))), min(w, max(1, round(math.sqrt(a / r))))
        t, left = rng.integers(0, h - eh + 1), rng.integers(0, w - ew + 1)
        x[i, t:t + eh, left:left + ew, 0] = rng.random((eh, ew), dtype=np.float32)
    return x


# ------------------------------------------------------------------ data

def to_model_input(faces: np.ndarray, p: Params = Params()) -> np.ndarray:
    """(n, h, w) uint8 grey -> (n, 60, 60, 1) float32 in [0, 1] (cv2 INTER_LINEAR when resizing)."""
    import cv2
    s = p.face_size
    if faces.shape[1:] == (s, s):
        out = faces.astype(np.float32)
    else:
        out = np.stack([cv2.resize(f, (s, s), interpolation=cv2.INTER_LINEAR) for f in faces]).astype(np.float32)
    return (out / 255.0)[..., None]


def augment(faces: np.ndarray, recipe: FaceRecipe, rng: np.random.Generator, p: Params = Params()) -> np.ndarray:
    """(n, h, w) uint8 -> (n, 60, 60, 1) float32 in [0, 1]: random rotation/scale/shift/flip folded
    into the 48 -> 60 resize (one bilinear warp, identical to ``to_model_input`` at zero jitter),
    then brightness/contrast."""
    import cv2
    n, h, w = faces.shape
    s = p.face_size
    ang = np.deg2rad(rng.uniform(-recipe.max_rotation_deg, recipe.max_rotation_deg, n))
    scl = rng.uniform(*recipe.scale_range, n)
    shift = rng.uniform(-recipe.max_shift_px, recipe.max_shift_px, (n, 2))
    flip = rng.random(n) < 0.5 if recipe.flip else np.zeros(n, bool)
    out = np.empty((n, s, s), np.uint8)
    c_dst = (s - 1) / 2.0
    for i in range(n):
        # dst pixel d -> src pixel: src = k * R(-a) (F (d - c - t)) / scale + c_src, with k = h / s and
        # pixel centres as in cv2.resize: src = k * (d + 0.5) - 0.5.
        ca, sa = math.cos(ang[i]), math.sin(ang[i])
        fx = -1.0 if flip[i] else 1.0
        kx, ky = w / s / scl[i], h / s / scl[i]
        a = np.array([[kx * ca * fx, kx * sa], [-ky * sa * fx, ky * ca]])
        c_src = np.array([(w - 1) / 2.0, (h - 1) / 2.0])
        b = c_src - a @ (np.array([c_dst, c_dst]) + shift[i])
        m = np.hstack([a, b[:, None]])
        out[i] = cv2.warpAffine(faces[i], m, (s, s), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                                borderMode=cv2.BORDER_REPLICATE)
    x = out.astype(np.float32) / 255.0                                   # (n, 60, 60)
    c = rng.uniform(*recipe.contrast, (n, 1, 1)).astype(np.float32)
    b = rng.uniform(-recipe.brightness, recipe.brightness, (n, 1, 1)).astype(np.float32)
    mean = x.mean(axis=(1, 2), keepdims=True)
    x = np.clip((x - mean) * c + mean + b, 0.0, 1.0)
    return x[..., None]                                                  # (n, 60, 60, 1)


def stratified_subset(y: np.ndarray, n: int, seed: int) -> np.ndarray:
    """Sorted indices of about n samples, each class in proportion."""
    if n <= 0 or n >= len(y):
        return np.arange(len(y))
    rng = np.random.default_rng(seed)
    idx = []
    for c in np.unique(y):
        rows = np.flatnonzero(y == c)
        idx.append(rng.choice(rows, max(1, round(n * len(rows) / len(y))), replace=False))
    return np.sort(np.concatenate(idx))


# ------------------------------------------------------------------ voting

def vote_faces(probs: np.ndarray) -> int:
    """Clip class from its key faces' (n, k) probabilities: majority vote, ties by summed probabilities."""
    from training.speech import majority_vote
    try:
        return majority_vote(probs)
    except ValueError as e:
        raise ValueError(f"vote_faces expects (n_faces >= 1, n_classes) probabilities: {e}") from None


# ------------------------------------------------------------------ training

def predict_probs(model, x: np.ndarray, batch: int = 256, tta_flip: bool = False) -> np.ndarray:
    """(n, 60, 60, 1) -> (n, 8); with tta_flip the mean with the horizontally flipped faces."""
    pr = model.predict(x, batch_size=batch, verbose=0)
    if tta_flip:
        pr = 0.5 * (pr + model.predict(x[:, :, ::-1], batch_size=batch, verbose=0))
    return pr


def _save_atomic(model, path: Path) -> None:
    tmp = path.with_name(path.stem + ".tmp.keras")
    model.save(tmp)
    tmp.replace(path)


def _tqdm_callback(total_batches: int, desc: str, enabled: bool):
    import keras
    from tqdm import tqdm

    class Bar(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.bar = tqdm(total=total_batches, desc=desc, unit="batch", disable=not enabled,
                            mininterval=5.0, leave=False)

        def on_train_batch_end(self, batch, logs=None):
            self.bar.update(1)
            if logs and batch % 20 == 0:
                self.bar.set_postfix(loss=f"{float(logs['loss']):.3f}", acc=f"{float(logs['accuracy']):.3f}")

        def on_epoch_end(self, epoch, logs=None):
            self.bar.close()

    return Bar()


def fit_epoch(model, train_x: np.ndarray, y_onehot: np.ndarray, recipe: FaceRecipe, epoch: int,
              p: Params = Params(), callbacks: list | None = None) -> tuple[dict, float, float]:
    """One epoch as every face run trains it: order and augmentation drawn from (seed, epoch), the learning
    rate of the schedule. Returns (the epoch's Keras history, learning rate, seconds spent augmenting)."""
    t0 = time.time()
    rng = np.random.default_rng([recipe.seed, epoch])
    order = rng.permutation(len(y_onehot))
    x = augment(train_x[order], recipe, rng, p)                          # (n, 60, 60, 1)
    y = y_onehot[order]
    if recipe.label_smoothing > 0:
        y = soft_targets(y.argmax(1), recipe, p)
    if recipe.erase_prob > 0:
        x = random_erase(x, recipe.erase_prob, rng)
    if recipe.mixup_alpha > 0:
        x, y = mixup(x, y, recipe.mixup_alpha, recipe.batch_size, rng)
    t_aug = time.time() - t0
    lr = lr_at(epoch, recipe, p)
    model.optimizer.learning_rate.assign(lr)
    h = model.fit(x, y, batch_size=recipe.batch_size, epochs=1, shuffle=False, verbose=0,
                  callbacks=callbacks or [])
    return h.history, lr, t_aug


def train_face(train_x: np.ndarray, train_y: np.ndarray, val_x: np.ndarray, val_y: np.ndarray,
               recipe: FaceRecipe, run_dir: Path, p: Params = Params(), resume: bool = True,
               progress: bool = True) -> dict:
    """Train on (n, 48, 48) uint8 faces with RAVDESS-index labels; select on the validation faces.

    Checkpoints after every epoch in ``run_dir`` (last.keras, best.keras, state.json); with
    ``resume`` a rerun continues after the last finished epoch. Returns the state dict
    (history, best epoch, seconds per epoch) with ``model`` = the best model.
    """
    import keras
    run_dir = Path(run_dir)
    if not resume and run_dir.exists():
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    state_f, last_f, best_f = run_dir / "state.json", run_dir / "last.keras", run_dir / "best.keras"
    state = {"recipe": dataclasses.asdict(recipe), "epochs_done": 0, "history": [], "best_epoch": -1,
             "best_val_accuracy": -1.0, "train_seconds": 0.0}
    if resume and state_f.is_file() and last_f.is_file():
        state = json.loads(state_f.read_text())
        state["recipe"] = dataclasses.asdict(recipe)
        model = keras.models.load_model(last_f)
        log.info("resuming %s after epoch %d (best val %.4f at epoch %d)", run_dir, state["epochs_done"],
                 state["best_val_accuracy"], state["best_epoch"] + 1)
    else:
        keras.utils.set_random_seed(recipe.seed)
        model = compile_face_model(build_face_model(recipe, p), p, recipe)
        log.info("new run %s: %d parameters", run_dir, model.count_params())
    y_onehot = np.eye(p.num_classes, dtype=np.float32)[train_y]          # (n, 8)
    xv = to_model_input(val_x, p)                                        # (n_val, 60, 60, 1)
    steps = math.ceil(len(train_y) / recipe.batch_size)
    for epoch in range(state["epochs_done"], recipe.epochs):
        t0, c0 = time.time(), time.process_time()
        bar = _tqdm_callback(steps, f"face epoch {epoch + 1}/{recipe.epochs}", progress)
        h, lr, t_aug = fit_epoch(model, train_x, y_onehot, recipe, epoch, p, [bar])
        t_fit = time.time() - t0 - t_aug
        val_acc = float(np.mean(predict_probs(model, xv).argmax(1) == val_y))
        sec = time.time() - t0
        rec = {"epoch": epoch + 1, "lr": lr, "loss": float(h["loss"][-1]),
               "accuracy": float(h["accuracy"][-1]), "val_accuracy": val_acc,
               "seconds": sec, "seconds_augment": t_aug, "seconds_fit": t_fit,
               "cpu_seconds": time.process_time() - c0}     # all threads: cpu_seconds / 2 ~ wall on 2 free cores
        state["history"].append(rec)
        state["epochs_done"] = epoch + 1
        state["train_seconds"] += sec
        if val_acc > state["best_val_accuracy"]:
            state["best_val_accuracy"], state["best_epoch"] = val_acc, epoch
            _save_atomic(model, best_f)
        _save_atomic(model, last_f)
        tmp = state_f.with_suffix(".tmp")
        tmp.write_text(json.dumps(state, indent=1))
        tmp.replace(state_f)
        log.info("face epoch %d/%d: loss %.4f acc %.4f val_acc %.4f (best %.4f @%d) lr %.2e %.0f s "
                 "(fit %.0f s, %.0f img/s, %.0f cpu s)", epoch + 1, recipe.epochs, rec["loss"], rec["accuracy"],
                 val_acc, state["best_val_accuracy"], state["best_epoch"] + 1, lr, sec, t_fit, len(train_y) / t_fit,
                 rec["cpu_seconds"])
    state["model"] = keras.models.load_model(best_f) if best_f.is_file() else model
    return state
