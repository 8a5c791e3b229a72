"""The paper's speech branch: frozen YAMNet activation_3 -> 2 conv -> BiLSTM -> attention -> softmax.

Every 0.96 s log-mel patch is a sample labelled with its clip's emotion; a clip's prediction is
the majority vote of its patches (ties broken by summed probabilities). The frozen trunk is
run once over all patches (a feature cache in memory); only the head trains.

    edge-train speech --data ../shared/data/ravdess/speech16k --yamnet ../shared/weights/yamnet/yamnet.tflite
"""
from __future__ import annotations

import contextlib
import dataclasses
import logging
from dataclasses import dataclass, field

import numpy as np

from edge.params import Params
from edge.vote import majority_vote, majority_votes  # noqa: F401  (re-exported: training code votes with the device's rule)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SpeechRecipe:
    """Training recipe of the speech head (every lever of the ablation table is here)."""
    # the selection run: at most 20 epochs, stopped after 5 without gain (with refit, the refit trains for the
    # selected count). 30 epochs (patience 10) with refit: 71.04% / 70.07% (seeds 0 / 1) in 34.9 / 32.1 min, over
    # the 30-minute budget; 20 epochs: 70.76% / 70.69% in 23.7 / 28.0 min (reports/speech.md, rows refit-30ep*)
    epochs: int = 20
    batch_size: int = 64
    train_hop_frames: int = 8            # candidate patch offsets in training (0.08 s): time-shift crops
    patches_per_clip: int = 4            # random crops drawn per clip per epoch
    logmel_norm: str = "actor"           # none | clip | actor : log-mel mean removal before the trunk
    feature_norm: str = "actor"          # global | actor | actor_freq: activation_3 per-channel standardization
    #                                      (actor_freq: per actor, frequency bin and channel)
    time_masks: int = 1                  # SpecAugment on activation_3 (24 time x 16 freq)
    time_mask_max: int = 4
    freq_masks: int = 1
    freq_mask_max: int = 3
    mixup_alpha: float = 0.2             # 0 disables
    label_smoothing: float = 0.1         # 4-fold (before speed perturbation): 59.86% vs 57.92% without, every fold up
    noise_std: float = 0.1               # gaussian noise on standardized features
    freq_warp: float = 0.0               # VTLP-like: activation_3's 16 frequency bins stretched by 1 +- this
    conv_filters: tuple[int, int] = (64, 64)
    lstm_units: int = 64
    attention_units: int = 64
    dropout: float = 0.3
    l2: float = 1e-4
    val_actors: int = 4                  # held out from the training actors for model selection (2 M + 2 F)
    patience: int = 5
    test_hop_frames: int = 48            # Params.patch_hop_frames at evaluation (0.48 s)
    seeds: tuple[int, ...] = (0,)        # >1 seed: an ensemble whose probabilities are averaged
    # after selection, a fresh model trains on the fit + validation actors (all 18 training actors of a fold) for
    # the selected epoch count, and is the one tested: the validation actors choose the epoch count only. 4 folds:
    # 70.76% against 69.17% without it (seed 0; folds -0.3, +1.4, +1.9, +3.3) and 70.69% against 69.51% (seed 1;
    # +1.9, -0.3, +1.1, +1.9); the recorded clips alone 68.68% / 69.03% against 66.94% / 65.97% (reports/speech.md)
    refit: bool = True
    # training copies of every clip played at these speeds (tempo and pitch), each copy a new speaker: folds 0,2
    # 64.58% vs 60.97% without, both folds up (reports/speech.md)
    speed_perturb: tuple[float, ...] = (0.9, 1.1)
    # test-time augmentation: each test clip is also voted at these speeds (its copies, normalised as their pseudo
    # speaker), the votes of all its patches pooled. A speed not in speed_perturb makes a test-only copy: no training
    # crops, normalised on its own (unlabelled) statistics like every copy.
    # 4 folds (reports/speech_cv.json): 70.76% with these six, 70.49% with the 0.9x/1.1x copies alone and 68.68% on
    # the recorded clips, all from the same models. Research protocol only: the shipped model and edge-run vote on the
    # recorded audio
    test_speeds: tuple[float, ...] = (0.85, 0.9, 0.95, 1.05, 1.1, 1.15)
    # pool each clip's speed copies with it: patches_per_clip crops a recorded clip per epoch, drawn from all its
    # versions (the epoch size and time of a run without copies), instead of patches_per_clip per version
    pool_speeds: bool = False
    lr_decay: str = "none"               # none | cosine: Adam's rate falls from Params.learning_rate to 5% of it
    # model selection votes the validation clips as the test clips are voted (with their copies at test_speeds)
    select_with_test_speeds: bool = False
    # > 1: a snapshot ensemble of one training run: test patches get the mean probabilities of the models of the
    # best `snapshots` validation epochs (not with refit). Folds also report the best epoch's model alone (paired).
    # 4 folds, 3 snapshots: 68.82% against 68.61% from the same runs' best epochs (folds +1.1, -1.1, -1.7, +2.5;
    # measured before weight_ema joined the recipe)
    snapshots: int = 1
    # test patches predicted with each speaker's own BatchNorm statistics (AdaBN; selection stays with the trained
    # ones). Folds also report the same models with their trained statistics (paired). 4 folds: 68.40% against 68.61%
    # (before weight_ema)
    speaker_bn: bool = False
    # > 0: domain-adversarial training against the speaker (DANN, Ganin et al. 2016): a speaker classifier on the
    # attention context learns the training speakers (every speed copy its own), and its gradient reaches the head
    # reversed and scaled by this weight (ramped up over the epochs as in DANN), pushing the embedding towards
    # speaker invariance. Inference and the exported head are unchanged
    speaker_adversary: float = 0.0
    # every speed copy (training and test) stretched back in time to its clip's frame count: the copies then differ
    # from the clip in pitch and spectral envelope only, not in tempo (pitch-shift copies instead of speed copies)
    keep_tempo: bool = False
    # more training copies, each a pseudo speaker, after the speed copies: played at these speeds and stretched back
    # to the clip's duration (pitch-shift copies, whatever keep_tempo says of the speed copies)
    pitch_perturb: tuple[float, ...] = ()
    # > 0: transductive self-training on the test speakers' unlabelled audio (as the per-actor normalisation already
    # uses it): after model selection the model votes the test clips (with their test copies); of each voted class
    # the most confident ``self_train`` fraction of clips take their vote as a label, and the model trains
    # ``self_train_epochs`` more epochs on the fit clips plus those clips (and their training copies). Test labels
    # are never read. Folds also report the same models before self-training (paired)
    self_train: float = 0.0
    self_train_epochs: int = 8
    # log-mel frames a patch spans (96: YAMNet's 0.96 s, what the device graph takes); longer patches give the head
    # more context a sample (activation_3 of (frames / 4, 16, 64)). Research rows only: the export needs 96
    patch_frames: int = 96
    # > 0: pitch normalisation, a vocal-tract-length normalisation by resampling (training/pitch.py): every clip of
    # an actor (training and test, label-free) is played at (reference F0 / the actor's median F0) ** pitch_norm,
    # clipped to [0.8, 1.25], before its log-mel; the speed copies are taken from that version
    pitch_norm: float = 0.0
    # > 0: model selection, snapshots, the refit and the returned model use an exponential moving average of the
    # weights, updated after every training batch with this momentum (Polyak averaging; 0.995: about 200 batches,
    # 1.3 epochs); training itself goes on from the raw weights. 4 folds, before the refit joined: 69.17% against
    # 68.61% without it (seed 0; folds +1.1, -0.8, +1.4, +0.6) and 69.51% against 67.50% (seed 1; -1.4, +3.6, +2.5,
    # +3.3) (reports/speech.md)
    weight_ema: float = 0.995
    # what the attention pools from the BiLSTM's steps into ``speech_embedding``: "attention" (the weighted mean,
    # 2 x lstm_units) or "attention_stats" (attentive statistics pooling, Okabe et al. 2018: the weighted mean and the
    # weighted variance of the steps side by side, 4 x lstm_units: how much a patch's frames vary, not only their
    # average). The variance is taken without a square root, so the head keeps to ops that quantise to int8
    pooling: str = "attention"
    # how much the two head convs pool activation_3's 16 frequency bins in all: 4 (16 -> 4 bins, the BiLSTM sees 256
    # features a step) or 2 (16 -> 8: the first conv pools time only, 512 features a step, more of the spectral
    # detail YAMNet's trunk keeps)
    freq_pool: int = 4
    # > 0: multi-task training. A second softmax on ``speech_embedding`` learns each clip's RAVDESS intensity (normal
    # or strong, from its file name), its cross-entropy weighted by this beside the emotion's: the embedding has to
    # carry how strongly an emotion is acted. Training only: the tested and exported head is the emotion head alone
    aux_intensity: float = 0.0

    def __post_init__(self):
        bad = [v for v in self.speed_perturb + self.pitch_perturb + self.test_speeds if not 0.5 <= v <= 2.0 or v == 1.0]
        if bad:
            raise ValueError(f"speeds {bad}: a copy's speed must be in [0.5, 2] and not 1 (the recorded clip)")
        if self.snapshots < 1:
            raise ValueError(f"snapshots {self.snapshots}: expected >= 1 (1: the best epoch's model alone)")
        if self.speaker_adversary < 0:
            raise ValueError(f"speaker_adversary {self.speaker_adversary}: expected >= 0 (0: off)")
        if not 0 <= self.self_train <= 1 or self.self_train_epochs < 1:
            raise ValueError(f"self_train {self.self_train}, self_train_epochs {self.self_train_epochs}: expected a "
                             "fraction in [0, 1] (0: off) and at least one epoch")
        if self.refit and self.snapshots > 1:
            raise ValueError(f"snapshots {self.snapshots} ensembles the epochs of the selection run, but refit tests one "
                             "retrained model: set refit=false for a snapshot ensemble")
        if self.self_train and (self.snapshots > 1 or self.speaker_bn):
            raise ValueError("self_train works on the best epoch's model: not with snapshots > 1 or speaker_bn")
        if self.patch_frames < 32 or self.patch_frames % 8:
            raise ValueError(f"patch_frames {self.patch_frames}: expected a multiple of 8, at least 32")
        if not 0 <= self.pitch_norm <= 1:
            raise ValueError(f"pitch_norm {self.pitch_norm}: expected an exponent in [0, 1] (0: off)")
        if not 0 <= self.weight_ema < 1:
            raise ValueError(f"weight_ema {self.weight_ema}: expected a momentum in [0, 1) (0: off)")
        if self.aux_intensity < 0 or (self.aux_intensity and (self.speaker_adversary or self.self_train)):
            raise ValueError(f"aux_intensity {self.aux_intensity}: expected a loss weight >= 0 (0: off), and not "
                             "beside speaker_adversary or self_train (whose clips have no intensity to learn)")
        if self.pooling not in ("attention", "attention_stats"):
            raise ValueError(f"pooling {self.pooling!r}: expected 'attention' or 'attention_stats'")
        if self.freq_pool not in (2, 4):
            raise ValueError(f"freq_pool {self.freq_pool}: expected 4 (16 -> 4 frequency bins) or 2 (16 -> 8)")
        if self.lr_decay not in ("none", "cosine"):
            raise ValueError(f"lr_decay {self.lr_decay!r}: expected 'none' or 'cosine'")

    def copies(self) -> tuple[tuple[float, bool], ...]:
        """The copies prepare() makes of every clip, as (speed, tempo kept): the training speeds, the training
        pitches, then test-only speeds. Copy block k + 1 of prepare()'s clips is the k-th of these."""
        return tuple((s, self.keep_tempo) for s in self.speed_perturb) + tuple((s, True) for s in self.pitch_perturb) \
            + tuple((s, self.keep_tempo) for s in dict.fromkeys(self.test_speeds) if s not in self.speed_perturb)

    def n_training_versions(self) -> int:
        """How many versions of a clip train: the recorded one, its speed copies and its pitch copies."""
        return 1 + len(self.speed_perturb) + len(self.pitch_perturb)

    def replace(self, **kw) -> "SpeechRecipe":
        return dataclasses.replace(self, **kw)


# ------------------------------------------------------------------ model

def build_head(recipe: SpeechRecipe, p: Params = Params(), name: str = "speech_head"):
    """(None, 24, 16, 64) standardized activation_3 -> (None, 8) probabilities.

    The layer ``speech_embedding`` (attention context, 2 x lstm_units; 4 x with attentive statistics pooling) is
    the hidden layer the fusion model concatenates with the face branch.
    """
    import keras
    from keras import layers as L
    reg = keras.regularizers.l2(recipe.l2) if recipe.l2 else None
    x_in = keras.Input((recipe.patch_frames // 4, 16, 64), name="activation_3")
    x = x_in
    pools = ((2, 2), (1, 2)) if recipe.freq_pool == 4 else ((2, 1), (1, 2))
    for i, (f, pool) in enumerate(zip(recipe.conv_filters, pools, strict=True)):
        x = L.Conv2D(f, 3, padding="same", use_bias=False, kernel_regularizer=reg, name=f"speech_conv{i + 1}")(x)
        x = L.BatchNormalization(name=f"speech_bn{i + 1}")(x)
        x = L.ReLU(name=f"speech_relu{i + 1}")(x)
        x = L.MaxPooling2D(pool, name=f"speech_pool{i + 1}")(x)
        x = L.SpatialDropout2D(recipe.dropout / 2, name=f"speech_sdrop{i + 1}")(x)
    t, fr, c = x.shape[1], x.shape[2], x.shape[3]                     # (12, 4, 64); freq_pool 2: (12, 8, 64)
    x = L.Reshape((t, fr * c), name="speech_to_sequence")(x)          # (12, 256); freq_pool 2: (12, 512)
    h = L.Bidirectional(L.LSTM(recipe.lstm_units, return_sequences=True, unroll=True,
                               kernel_regularizer=reg), name="speech_bilstm")(x)   # (12, 128)
    e = L.Dense(recipe.attention_units, activation="tanh", name="speech_att_hidden")(h)
    e = L.Dense(1, use_bias=False, name="speech_att_score")(e)       # (12, 1)
    e = L.Flatten(name="speech_att_flat")(e)
    a = L.Softmax(name="speech_att_weights")(e)                     # (12,)
    if recipe.pooling == "attention":
        z = L.Dot(axes=(1, 1), name="speech_embedding")([a, h])       # (128,)
    else:                                                             # weighted mean and variance: (256,)
        mean = L.Dot(axes=(1, 1), name="speech_att_mean")([a, h])
        sq = L.Dot(axes=(1, 1), name="speech_att_sq")([a, L.Multiply(name="speech_square")([h, h])])
        var = L.Subtract(name="speech_att_var_raw")([sq, L.Multiply(name="speech_mean_square")([mean, mean])])
        var = L.ReLU(name="speech_att_var")(var)                      # >= 0 whatever the rounding
        z = L.Concatenate(name="speech_embedding")([mean, var])
    z = L.Dropout(recipe.dropout, name="speech_dropout")(z)
    out = L.Dense(p.num_classes, activation="softmax", kernel_regularizer=reg, name="speech_probs")(z)
    return keras.Model(x_in, out, name=name)


def learning_rate(recipe: SpeechRecipe, epoch: int, p: Params = Params()) -> float:
    """Adam's rate for epoch (0-based) of recipe.epochs: constant, or a cosine fall to 5% of it."""
    if recipe.lr_decay == "none":
        return p.learning_rate
    floor = 0.05
    return p.learning_rate * (floor + (1 - floor) * 0.5 * (1 + np.cos(np.pi * epoch / max(recipe.epochs - 1, 1))))


def compile_head(model, recipe: SpeechRecipe, p: Params = Params()):
    import keras
    model.compile(optimizer=keras.optimizers.Adam(p.learning_rate),
                  loss=keras.losses.CategoricalCrossentropy(label_smoothing=recipe.label_smoothing),
                  metrics=["accuracy"])
    return model


def gradient_reversal(name: str = "speaker_grl"):
    """Identity forward; backward the gradient times -scale (``layer.scale``, a variable set between epochs).
    Written as stop_gradient((1 + s) x) - s x, so it needs no custom gradient."""
    import keras
    from keras import ops

    class GradientReversal(keras.layers.Layer):
        def build(self, input_shape):
            self.scale = self.add_weight(shape=(), initializer="zeros", trainable=False, name="scale")

        def call(self, x):
            s = ops.cast(self.scale, x.dtype)
            return ops.stop_gradient((1 + s) * x) - s * x

    return GradientReversal(name=name)


def adversary_scale(recipe: SpeechRecipe, epoch: int) -> float:
    """DANN's ramp of the reversed gradient's weight: 0 at the first epoch, near speaker_adversary by mid-run."""
    progress = epoch / max(recipe.epochs - 1, 1)
    return float(recipe.speaker_adversary * (2 / (1 + np.exp(-10 * progress)) - 1))


def head_trainer(head, recipe: SpeechRecipe, n_speakers: int, p: Params = Params()):
    """The compiled model ``fit`` trains. Without an adversary the head itself; with one (recipe.speaker_adversary)
    the head plus a speaker classifier behind a gradient reversal on ``speech_embedding``: (probabilities, speaker
    probabilities); with recipe.aux_intensity the head plus an intensity softmax on ``speech_embedding``
    (probabilities, intensity probabilities). The head's layers are shared, so its weights are the trained ones."""
    if not recipe.speaker_adversary and not recipe.aux_intensity:
        return compile_head(head, recipe, p)
    import keras
    from keras import layers as L
    z = head.get_layer("speech_embedding").output
    if recipe.aux_intensity:
        second, name, weight = L.Dense(2, activation="softmax", name="intensity_probs")(z), "intensity", \
            recipe.aux_intensity
    else:
        z = L.Dense(64, activation="relu", name="speaker_hidden")(gradient_reversal()(z))
        second, name, weight = L.Dense(n_speakers, activation="softmax", name="speaker_probs")(z), "adversarial", 1.0
    trainer = keras.Model(head.input, [head.output, second], name=f"speech_head_{name}")
    trainer.compile(optimizer=keras.optimizers.Adam(p.learning_rate),
                    loss=[keras.losses.CategoricalCrossentropy(label_smoothing=recipe.label_smoothing),
                          keras.losses.CategoricalCrossentropy()], loss_weights=[1.0, weight])
    return trainer


def weight_ema(model, momentum: float):
    """A Keras callback keeping an exponential moving average of ``model``'s weights (all of them, BatchNorm
    statistics included), updated after every training batch; ``with ema.swapped():`` puts the average in the
    model and the raw weights back afterwards. The first batch starts the average at that batch's weights."""
    import keras

    class WeightEMA(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.average: list[np.ndarray] | None = None

        def on_train_batch_end(self, batch, logs=None):
            w = model.get_weights()
            self.average = w if self.average is None else \
                [momentum * a + (1 - momentum) * v for a, v in zip(self.average, w, strict=True)]

        @contextlib.contextmanager
        def swapped(self):
            if self.average is None:
                raise RuntimeError("weight_ema: no batch trained yet, so no average to swap in")
            raw = model.get_weights()
            model.set_weights(self.average)
            try:
                yield model
            finally:
                model.set_weights(raw)

    return WeightEMA()


def fit_epoch(trainer, x: np.ndarray, y, recipe: SpeechRecipe, epoch: int, p: Params = Params(),
              callbacks: list | None = None) -> dict:
    """One epoch of ``head_trainer``'s model on make_epoch's (x, y); returns its losses (name -> value)."""
    trainer.optimizer.learning_rate.assign(learning_rate(recipe, epoch, p))
    if recipe.speaker_adversary:
        trainer.get_layer("speaker_grl").scale.assign(adversary_scale(recipe, epoch))
    h = trainer.fit(x, y, batch_size=recipe.batch_size, epochs=1, verbose=0, callbacks=callbacks)
    return {k: float(v[0]) for k, v in h.history.items()}


def fit_epochs(trainer, model, epochs, r: SpeechRecipe, p: Params = Params()) -> None:
    """Train on every (x, y) of ``epochs`` with no selection (refit, self-training); with ``r.weight_ema`` the
    model ends with the moving average of its weights, as a selected model does."""
    ema = weight_ema(model, r.weight_ema) if r.weight_ema else None
    for epoch, (x, y) in enumerate(epochs):
        fit_epoch(trainer, x, y, r, epoch, p, [ema] if ema else None)
    if ema and ema.average is not None:
        model.set_weights(ema.average)


# ------------------------------------------------------------------ features

@dataclass
class PatchSet:
    """activation_3 of patches of many clips, with the clip each came from."""
    x: np.ndarray            # (n_patches, 24, 16, 64) float16
    clip: np.ndarray         # (n_patches,) clip index
    offsets: np.ndarray      # (n_patches,) start frame in the clip's log-mel

    def of_clips(self, idx: np.ndarray) -> np.ndarray:
        return np.flatnonzero(np.isin(self.clip, idx))


def stretch_frames(log_mel: np.ndarray, n_frames: int) -> np.ndarray:
    """(frames, bands) resampled along time to n_frames by linear interpolation, first and last frames kept."""
    log_mel = np.asarray(log_mel)
    if n_frames < 1 or len(log_mel) < 1:
        raise ValueError(f"cannot stretch {len(log_mel)} frames to {n_frames}")
    if len(log_mel) == n_frames:
        return log_mel
    t = np.linspace(0, len(log_mel) - 1, n_frames)
    i = np.minimum(t.astype(int), len(log_mel) - 2) if len(log_mel) > 1 else np.zeros(n_frames, int)
    w = (t - i)[:, None].astype(log_mel.dtype)
    nxt = np.minimum(i + 1, len(log_mel) - 1)
    return ((1 - w) * log_mel[i] + w * log_mel[nxt]).astype(log_mel.dtype)


def normalize_log_mel(log_mels: list[np.ndarray], actors: np.ndarray, mode: str) -> list[np.ndarray]:
    """Log-mel mean removal: none, per clip, or per actor (over all of the actor's frames)."""
    if mode == "none":
        return log_mels
    if mode == "clip":
        return [m - m.mean(axis=0, keepdims=True) for m in log_mels]
    if mode == "actor":
        out = list(log_mels)
        for a in np.unique(actors):
            idx = np.flatnonzero(actors == a)
            mu = np.concatenate([log_mels[i] for i in idx]).mean(axis=0, keepdims=True)
            for i in idx:
                out[i] = log_mels[i] - mu
        return out
    raise ValueError(f"logmel_norm must be none|clip|actor, got {mode!r}")


def pad_to(log_mel: np.ndarray, frames: int) -> np.ndarray:
    """A log-mel shorter than ``frames`` continued to ``frames`` with its own quietest level per band (as silence
    would be); a long enough one unchanged."""
    if len(log_mel) >= frames:
        return log_mel
    return np.concatenate([log_mel, np.repeat(log_mel.min(axis=0, keepdims=True), frames - len(log_mel), axis=0)])


def trunk_patches(trunk, log_mels: list[np.ndarray], hop_frames: int, p: Params = Params(),
                  batch: int = 512, progress: bool = True, frames: int | None = None) -> PatchSet:
    """Every patch (hop ``hop_frames``) of every clip through the frozen trunk. ``frames``: patches of another
    length than p.patch_frames (the trunk must take it); a clip shorter than one is padded (``pad_to``)."""
    from tqdm import tqdm

    from edge.audio.features import patches_from_log_mel
    n = p.patch_frames if frames is None else frames
    pp = p if n == p.patch_frames else dataclasses.replace(p, patch_window_seconds=n * p.stft_hop_seconds)
    pats, clip_ids, offs = [], [], []
    for i, m in enumerate(log_mels):
        ps = patches_from_log_mel(pad_to(m, n), pp, hop_frames)     # (patches, n, 64)
        pats.append(ps)
        clip_ids.append(np.full(len(ps), i))
        offs.append(np.arange(len(ps)) * hop_frames)
    allp = np.concatenate(pats)
    out = np.empty((len(allp), n // 4, 16, 64), np.float16)
    for s in tqdm(range(0, len(allp), batch), desc=f"activation_3 (hop {hop_frames})", unit="batch",
                  disable=not progress):
        out[s:s + batch] = trunk.predict_on_batch(allp[s:s + batch])
    return PatchSet(out, np.concatenate(clip_ids), np.concatenate(offs))


_HALF_TO_SINGLE = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16).view(np.float16).astype(np.float32)


def to_float32(x: np.ndarray) -> np.ndarray:
    """float16 features as float32, the same values as ``astype``: a table lookup, 10x faster on activation_3,
    where half the values are zeros (numpy's cast takes a slow path for them)."""
    return np.take(_HALF_TO_SINGLE, x.view(np.uint16)) if x.dtype == np.float16 else x.astype(np.float32)


ONE_SHOT_VALUES = 1 << 28     # 1 GiB of float32: above this, channel statistics are accumulated in chunks


def channel_stats(x: np.ndarray, rows: np.ndarray, chunk: int = 2048, per_freq: bool = False
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and std (+ 1e-3) of ``x[rows]`` over all other axes (``per_freq``: per frequency bin and
    channel, over rows and time). Up to ``ONE_SHOT_VALUES`` values in one float32 pass (what every report so far
    was computed with); above it, float64 sums over chunks of rows, so memory stays bounded (speed-perturbed
    copies triple the training patches: one pass needed ~15 GB)."""
    axes = (0, 1) if per_freq else tuple(range(x.ndim - 1))
    if rows.size * np.prod(x.shape[1:]) <= ONE_SHOT_VALUES:
        v = to_float32(x[rows])
        return v.mean(axis=axes), v.std(axis=axes) + 1e-3
    n, s1, s2 = 0, 0.0, 0.0
    for i in range(0, len(rows), chunk):
        v = x[rows[i:i + chunk]].astype(np.float64)
        n += int(np.prod([v.shape[a] for a in axes]))
        s1 = s1 + v.sum(axis=axes)
        s2 = s2 + np.square(v).sum(axis=axes)
    mean = s1 / n
    std = np.sqrt(np.maximum(s2 / n - np.square(mean), 0.0))
    return mean.astype(np.float32), (std + 1e-3).astype(np.float32)


@dataclass
class Standardizer:
    """Per-channel mean/std of activation_3, global or per actor (``actor_freq``: per actor, frequency bin and
    channel)."""
    mean: dict = field(default_factory=dict)   # key: actor or "global" -> (64,), or (16, 64) per frequency bin
    std: dict = field(default_factory=dict)

    @classmethod
    def fit(cls, ps: PatchSet, clip_actor: np.ndarray, train_clips: np.ndarray, mode: str,
            extra: PatchSet | None = None) -> "Standardizer":
        """Statistics from ``ps``; a speaker without patches there (a test-only speed copy) from ``extra``."""
        if mode not in ("global", "actor", "actor_freq"):
            raise ValueError(f"feature_norm must be global|actor|actor_freq, got {mode!r}")
        s, per_freq = cls(), mode == "actor_freq"
        s.mean["global"], s.std["global"] = channel_stats(ps.x, ps.of_clips(train_clips), per_freq=per_freq)
        if mode != "global":
            for a in np.unique(clip_actor):
                clips = np.flatnonzero(clip_actor == a)
                src = ps if np.isin(clips, ps.clip).any() or extra is None else extra
                rows = src.of_clips(clips)
                if not len(rows):
                    raise ValueError(f"speaker {int(a)}: no patches to standardize it with")
                s.mean[int(a)], s.std[int(a)] = channel_stats(src.x, rows, per_freq=per_freq)
        return s

    def apply(self, x: np.ndarray, actors: np.ndarray) -> np.ndarray:
        """(x - mean) / std with each row's speaker statistics ("global" for a speaker without its own), float32."""
        speakers, which = np.unique(actors, return_inverse=True)
        keys = [int(a) if int(a) in self.mean else "global" for a in speakers]
        stat = self.mean["global"].shape
        shape = (len(x),) + (1,) * (x.ndim - 1 - len(stat)) + stat

        def per_row(stats: dict) -> np.ndarray:
            return np.stack([stats[k] for k in keys]).astype(np.float32)[which.reshape(-1)].reshape(shape)
        out = to_float32(x)
        out -= per_row(self.mean)
        out /= per_row(self.std)
        return out


# ------------------------------------------------------------------ augmentation

def spec_augment(x: np.ndarray, r: SpeechRecipe, rng: np.random.Generator) -> np.ndarray:
    """Time/frequency masks on (n, 24, 16, 64) features (in place; any number of time steps)."""
    n, nt = len(x), x.shape[1]
    for _ in range(r.time_masks):
        w = rng.integers(0, r.time_mask_max + 1, n)
        s = rng.integers(0, nt, n)
        for i in np.flatnonzero(w):
            x[i, s[i]:s[i] + w[i]] = 0.0
    for _ in range(r.freq_masks):
        w = rng.integers(0, r.freq_mask_max + 1, n)
        s = rng.integers(0, 16, n)
        for i in np.flatnonzero(w):
            x[i, :, s[i]:s[i] + w[i]] = 0.0
    return x


def freq_warp(x: np.ndarray, max_warp: float, rng: np.random.Generator) -> np.ndarray:
    """Vocal-tract-length-style warp on (n, time, freq, channels) features: each sample's frequency axis
    stretched by a random factor in [1 - max_warp, 1 + max_warp] around bin 0 (linear interpolation, edge bin
    repeated). A proxy for VTLP applied after the frozen trunk, where the features are cached."""
    if max_warp <= 0:
        return x
    n, nf = len(x), x.shape[2]
    alpha = rng.uniform(1 - max_warp, 1 + max_warp, n)
    src = np.clip(np.arange(nf)[None, :] / alpha[:, None], 0, nf - 1)          # (n, nf) source positions
    lo = np.floor(src).astype(np.int64)
    hi = np.minimum(lo + 1, nf - 1)
    frac = (src - lo).astype(x.dtype)[:, None, :, None]
    take = np.take_along_axis
    return (1 - frac) * take(x, lo[:, None, :, None], axis=2) + frac * take(x, hi[:, None, :, None], axis=2)


def mixup(arrays: list[np.ndarray], y: np.ndarray, alpha: float, rng: np.random.Generator):
    """Mix every input array and the one-hot labels with the same partner and weight per sample."""
    if alpha <= 0:
        return arrays, y
    lam = rng.beta(alpha, alpha, len(y)).astype(np.float32)
    lam = np.maximum(lam, 1 - lam)                         # the sample keeps the larger share
    j = rng.permutation(len(y))

    def mix(a: np.ndarray) -> np.ndarray:
        w = lam.reshape((-1,) + (1,) * (a.ndim - 1))
        return w * a + (1 - w) * a[j]
    return [mix(a) for a in arrays], mix(y)


# ------------------------------------------------------------------ voting

def vote(probs: np.ndarray, clip: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """majority_vote per clip. Returns (clip ids, predicted class) for every clip that has patches."""
    return majority_votes(probs, clip)


def soft_vote(probs: np.ndarray, clip: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The argmax of each clip's summed patch probabilities (not the paper's rule: a paired figure beside it)."""
    ids, inv = np.unique(clip, return_inverse=True)
    sums = np.zeros((len(ids), probs.shape[1]))
    np.add.at(sums, inv, probs)
    return ids, sums.argmax(1)


LOG_FLOOR = 1e-6       # added to probabilities before their log (a softmax output can round to 0 in float32)


def actor_centred(probs: np.ndarray, clip: np.ndarray, clip_actor: np.ndarray
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Speaker-prior removal at test time (transductive, not the paper's rule). A clip's score is the mean
    log-probability of its patches; each test actor's mean clip score is subtracted from the log-probabilities
    of every patch of that actor's clips (what the model leans towards for this voice, whatever is said), which
    then vote as usual. ``clip_actor`` maps each clip id to its actor; no label is read.

    Returns (clip ids, the majority vote of the centred patches, the argmax of the centred clip scores). It
    presumes that a speaker's clips cover the emotions: :func:`centring_under_skew` measures what it costs when
    they do not."""
    ids, inv = np.unique(clip, return_inverse=True)
    logp = np.log(np.asarray(probs, np.float64) + LOG_FLOOR)
    score = np.zeros((len(ids), logp.shape[1]))
    np.add.at(score, inv, logp)
    score /= np.bincount(inv, minlength=len(ids))[:, None]
    actor = np.asarray(clip_actor)[ids]
    offset = np.zeros_like(score)
    for a in np.unique(actor):
        offset[actor == a] = score[actor == a].mean(0)
    _, voted = majority_votes(np.exp(logp - offset[inv]), inv)     # positive: the tie-break sums them
    return ids, voted, (score - offset).argmax(1)


def mean_figures(rows: list[dict]) -> dict:
    """Figure by figure, the mean of rows with the same keys (draws of a fold, or folds)."""
    return {k: float(np.mean([g[k] for g in rows])) for k in rows[0]}


SKEW_ALPHAS = (5.0, 1.0, 0.3)      # Dirichlet concentration of a speaker's emotion mix: mild, flat, strong skew


def skewed_subset(actor: np.ndarray, y: np.ndarray, alpha: float, rng: np.random.Generator,
                  n_classes: int = 8) -> np.ndarray:
    """A one-sided speaker: which clips to keep (a mask over ``actor``/``y``, one clip each) when every actor
    gets an emotion mix from a Dirichlet(alpha), scaled so that its most frequent emotion keeps all its clips,
    and each clip is kept with its emotion's share. Large alpha keeps nearly all, small alpha few emotions."""
    keep = np.zeros(len(actor), bool)
    for a in np.unique(actor):
        mix = rng.dirichlet(np.full(n_classes, alpha))
        mine = actor == a
        keep[mine] = rng.random(mine.sum()) < (mix / mix.max())[y[mine]]
    return keep


def centring_under_skew(probs: np.ndarray, clip: np.ndarray, clip_actor: np.ndarray, labels: np.ndarray,
                        alphas: tuple[float, ...] = SKEW_ALPHAS, draws: int = 50, seed: int = 0) -> dict:
    """:func:`actor_centred` when a speaker's clips do not cover the emotions evenly. Each draw keeps a
    :func:`skewed_subset` of the test clips and votes the kept clips three ways: the paper's majority vote, the
    centred vote and the centred scores (the centring sees only the kept clips). The labels choose
    which clips a draw keeps; the votes never read them. Returns {alpha: means over the draws}."""
    rng = np.random.default_rng(seed)
    ids = np.unique(clip)
    actor, y = np.asarray(clip_actor)[ids], np.asarray(labels)[ids]
    out = {}
    for alpha in alphas:
        acc, kept = [], []
        for _ in range(draws):
            keep = skewed_subset(actor, y, alpha, rng)
            rows = np.isin(clip, ids[keep])
            k_ids, plain = vote(probs[rows], clip[rows])
            _, c_vote, c_score = actor_centred(probs[rows], clip[rows], clip_actor)
            truth = np.asarray(labels)[k_ids]
            acc.append([np.mean(plain == truth), np.mean(c_vote == truth), np.mean(c_score == truth)])
            kept.append(keep.sum() / len(np.unique(actor)))
        m = np.mean(acc, axis=0)
        out[f"{alpha:g}"] = {"clips_per_actor": float(np.mean(kept)), "vote": float(m[0]),
                             "centred_vote": float(m[1]), "centred_scores": float(m[2])}
    return out


# ------------------------------------------------------------------ one fold

class ModelSelector:
    """Keep the weights of the best validation epoch; stop after ``patience`` epochs without gain.

    With no validation clips every epoch counts as the best (the last weights are kept). ``keep`` > 1 also keeps
    the weights of the ``keep`` best epochs (``snapshots``: best score first, an earlier epoch first on ties).
    """

    def __init__(self, patience: int, has_validation: bool = True, keep: int = 1):
        self.patience, self.has_validation, self.keep = patience, has_validation, keep
        self.best, self.best_weights, self.best_epoch, self.wait = -1.0, None, 0, 0
        self.snapshots: list[tuple[float, int, list]] = []       # (score, epoch, weights)

    def update(self, model, score: float, epoch: int) -> bool:
        """Record this epoch; True when training should stop."""
        if self.keep > 1 and self.has_validation and (len(self.snapshots) < self.keep or score > self.snapshots[-1][0]):
            self.snapshots.append((score, epoch, model.get_weights()))
            self.snapshots = sorted(self.snapshots, key=lambda s: (-s[0], s[1]))[:self.keep]
        if score > self.best or not self.has_validation:
            self.best, self.best_weights, self.best_epoch, self.wait = score, model.get_weights(), epoch, 0
            return False
        self.wait += 1
        return self.wait >= self.patience


def choose_val_actors(train_actors: list[int], n: int, seed: int = 0) -> list[int]:
    """n validation actors from the training actors, half male (odd) half female (even)."""
    rng = np.random.default_rng(seed)
    males = [a for a in train_actors if a % 2]
    females = [a for a in train_actors if a % 2 == 0]
    return sorted(rng.choice(males, n // 2, replace=False).tolist() + rng.choice(females, n - n // 2,
                                                                                 replace=False).tolist())


def _crop_groups(train_clips: np.ndarray, clip_actor: np.ndarray, pool: bool) -> list[np.ndarray]:
    """The clips each epoch draws its crops from together: one a clip, or (pool) a recorded clip with its copies."""
    if not pool:
        return [np.array([c]) for c in train_clips]
    rec = recorded_clip(train_clips, clip_actor)
    order = np.argsort(rec, kind="stable")
    starts = np.flatnonzero(np.r_[True, np.diff(rec[order]) != 0])
    return np.split(np.asarray(train_clips)[order], starts[1:])


def make_epoch(ps: PatchSet, train_clips: np.ndarray, labels: np.ndarray, std: Standardizer,
               clip_actor: np.ndarray, r: SpeechRecipe, rng: np.random.Generator, k: int,
               intensity: np.ndarray | None = None):
    """Random crops (patches_per_clip per clip), standardized, augmented: (x, y). With r.speaker_adversary, y is
    (labels, speakers): the speakers one-hot over train_clips' speakers in sorted order, mixed up with the labels.
    With r.aux_intensity, y is (labels, intensities): ``intensity`` (0 normal, 1 strong, per clip) one-hot, mixed up
    with the labels."""
    rows = []
    for versions in _crop_groups(train_clips, clip_actor, r.pool_speeds):
        cand = np.flatnonzero(ps.clip == versions[0]) if len(versions) == 1 else ps.of_clips(versions)
        rows.append(rng.choice(cand, min(r.patches_per_clip, len(cand)), replace=len(cand) < r.patches_per_clip))
    rows = np.concatenate(rows)
    rng.shuffle(rows)
    lab = labels[ps.clip[rows]]
    if (lab < 0).any():
        raise ValueError(f"clips {np.unique(ps.clip[rows][lab < 0])[:5].tolist()}: no label to train on")
    x = std.apply(ps.x[rows], clip_actor[ps.clip[rows]])
    x = freq_warp(x, r.freq_warp, rng)
    if r.noise_std:
        x += rng.normal(0, r.noise_std, x.shape).astype(np.float32)
    x = spec_augment(x, r, rng)
    y = np.eye(k, dtype=np.float32)[lab]
    if r.aux_intensity:
        if intensity is None:
            raise ValueError("aux_intensity: the clips' intensities are needed (train_fold's intensity)")
        s = np.eye(2, dtype=np.float32)[np.asarray(intensity)[ps.clip[rows]]]
        (x, s), y = mixup([x, s], y, r.mixup_alpha, rng)
        return x, (y, s)
    if not r.speaker_adversary:
        (x,), y = mixup([x], y, r.mixup_alpha, rng)
        return x, y
    speakers = np.unique(clip_actor[train_clips])
    s = np.eye(len(speakers), dtype=np.float32)[np.searchsorted(speakers, clip_actor[ps.clip[rows]])]
    (x, s), y = mixup([x, s], y, r.mixup_alpha, rng)     # the same partner and weight as the labels
    return x, (y, s)


def prefetched(n: int, make, *args):
    """Yield ``make(*args)`` n times, building the next epoch in a thread while the caller trains on the current one
    (numpy's random draws and copies run outside the GIL). The calls stay sequential, so the draws are the same."""
    from concurrent.futures import ThreadPoolExecutor
    with ThreadPoolExecutor(1) as pool:
        nxt = pool.submit(make, *args) if n > 0 else None
        for i in range(n):
            cur = nxt.result()
            nxt = pool.submit(make, *args) if i + 1 < n else None
            yield cur


def predict_speaker_bn(model, x: np.ndarray, speakers: np.ndarray) -> np.ndarray:
    """Probabilities with each speaker's own BatchNorm statistics (AdaBN, Li et al. 2016, a speaker as the
    domain): for every speaker, each BatchNormalization layer in turn takes the mean and variance of its input
    over that speaker's patches (earlier layers already adapted). The model's statistics are restored after."""
    import keras
    bns = [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]
    saved = [(b.moving_mean.numpy(), b.moving_variance.numpy()) for b in bns]
    inputs = [keras.Model(model.input, b.input) for b in bns]
    probs = np.empty((len(x), model.output.shape[-1]), np.float32)
    try:
        for s in np.unique(speakers):
            rows = np.flatnonzero(speakers == s)
            for b, sub in zip(bns, inputs, strict=True):
                h = sub.predict(x[rows], batch_size=256, verbose=0)
                b.moving_mean.assign(h.mean(axis=tuple(range(h.ndim - 1))))
                b.moving_variance.assign(h.var(axis=tuple(range(h.ndim - 1))))
            probs[rows] = model.predict(x[rows], batch_size=256, verbose=0)
    finally:
        for b, (m, v) in zip(bns, saved, strict=True):
            b.moving_mean.assign(m)
            b.moving_variance.assign(v)
    return probs


def clip_accuracy(model, ps: PatchSet, clips: np.ndarray, labels: np.ndarray, std: Standardizer,
                  clip_actor: np.ndarray, speaker_bn: bool = False
                  ) -> tuple[float, float, np.ndarray, np.ndarray, np.ndarray]:
    """(clip accuracy, patch accuracy, clip ids, their votes, patch probabilities). A speed copy among
    ``clips`` votes for its recorded clip (test-time augmentation, see ``with_test_copies``). ``speaker_bn``:
    BatchNorm statistics per speaker (``predict_speaker_bn``)."""
    rows = ps.of_clips(clips)
    x = std.apply(ps.x[rows], clip_actor[ps.clip[rows]])
    probs = predict_speaker_bn(model, x, clip_actor[ps.clip[rows]]) if speaker_bn else \
        model.predict(x, batch_size=256, verbose=0)
    ids, pred = vote(probs, recorded_clip(ps.clip[rows], clip_actor))
    patch_acc = float(np.mean(probs.argmax(1) == labels[ps.clip[rows]]))
    return float(np.mean(pred == labels[ids])), patch_acc, ids, pred, probs


PSEUDO_SPEAKER = 100     # a speed-perturbed copy of actor a's clips is speaker a + 100 k (k-th speed)


def real_actor(clip_actor: np.ndarray) -> np.ndarray:
    """The recorded actor of each clip (speed-perturbed copies map back to theirs)."""
    return np.asarray(clip_actor) % PSEUDO_SPEAKER


def n_recorded(clip_actor: np.ndarray) -> int:
    """How many clips are recorded ones: prepare() puts them first, their speed copies after."""
    return int(np.sum(np.asarray(clip_actor) < PSEUDO_SPEAKER))


def recorded_clip(clip: np.ndarray, clip_actor: np.ndarray) -> np.ndarray:
    """The recorded clip of each clip index: copy n_real k + i of prepare() is clip i."""
    return np.asarray(clip) % n_recorded(clip_actor)


def with_test_copies(clips: np.ndarray, clip_actor: np.ndarray, r: SpeechRecipe) -> np.ndarray:
    """Recorded clips plus their copies at r.test_speeds (the k-th of r.copies() is copy block k)."""
    n_real = n_recorded(clip_actor)
    blocks = [r.copies().index((s, r.keep_tempo)) + 1 for s in r.test_speeds]
    return np.concatenate([clips] + [clips + n_real * k for k in blocks]) if blocks else clips


def trainable(clips: np.ndarray, ps: PatchSet) -> np.ndarray:
    """The clips that have training patches in ps (a test-only speed copy has none)."""
    return clips[np.isin(clips, ps.clip)]


def pseudo_labels(probs: np.ndarray, clip_of_row: np.ndarray, clip_actor: np.ndarray, fraction: float
                  ) -> tuple[np.ndarray, np.ndarray]:
    """(recorded clips, their voted class) to self-train on: the rows' probabilities voted per recorded clip (a copy
    votes for its clip), and of each voted class the ``fraction`` of its clips (rounded up) whose patches give that
    class the highest mean probability. Taking a fraction of every class keeps the pseudo-labels' class balance."""
    rec = recorded_clip(clip_of_row, clip_actor)
    ids, pred = vote(probs, rec)
    conf = np.array([probs[rec == c, k].mean() for c, k in zip(ids, pred, strict=True)])
    keep = []
    for k in np.unique(pred):
        of_k = np.flatnonzero(pred == k)
        keep.append(of_k[np.argsort(-conf[of_k], kind="stable")[:int(np.ceil(fraction * len(of_k)))]])
    keep = np.sort(np.concatenate(keep)) if keep else np.zeros(0, int)
    return ids[keep], pred[keep]


def with_pseudo_labels(fit_clips: np.ndarray, labels: np.ndarray, clips: np.ndarray, guess: np.ndarray,
                       clip_actor: np.ndarray, ps: PatchSet, r: SpeechRecipe) -> tuple[np.ndarray, np.ndarray]:
    """(training clips, training labels): the fit clips with their labels, plus the recorded ``clips`` and their
    training copies labelled ``guess``. Every other clip's label becomes -1, so none of them can train unseen."""
    n_real, versions = n_recorded(clip_actor), r.n_training_versions()
    copies = np.concatenate([np.asarray(clips) + n_real * v for v in range(versions)])
    train_labels = np.full(len(labels), -1)
    train_labels[fit_clips] = labels[fit_clips]
    train_labels[copies] = np.tile(guess, versions)
    return np.concatenate([fit_clips, trainable(copies, ps)]), train_labels


def fold_clips(clip_actor: np.ndarray, test_actors: list[int], n_val: int, seed: int = 0):
    """(fit clips, validation clips, test clips, validation actors) of a fold. Validation actors are drawn
    from the training actors; speed-perturbed copies (pseudo speakers) train with their actor's clips and
    never validate or test."""
    actor = real_actor(clip_actor)
    train_actors = [a for a in sorted(set(actor.tolist())) if a not in test_actors]
    val_actors = choose_val_actors(train_actors, n_val, seed) if n_val else []
    fit_actors = [a for a in train_actors if a not in val_actors]
    return (np.flatnonzero(np.isin(actor, fit_actors)), np.flatnonzero(np.isin(clip_actor, val_actors)),
            np.flatnonzero(np.isin(clip_actor, test_actors)), val_actors)


def train_fold(train_ps: PatchSet, test_ps: PatchSet, labels: np.ndarray, clip_actor: np.ndarray,
               test_actors: list[int], r: SpeechRecipe, p: Params = Params(), seed: int = 0,
               progress: bool = True, intensity: np.ndarray | None = None) -> dict:
    """Train on the other actors (val actors held out of them), evaluate on test_actors. ``intensity``: each clip's
    RAVDESS intensity (0 normal, 1 strong), which r.aux_intensity trains on."""
    import keras
    from tqdm import tqdm
    keras.utils.set_random_seed(seed)
    rng = np.random.default_rng(seed)
    fit_clips, val_clips, test_clips, val_actors = fold_clips(clip_actor, test_actors, r.val_actors, seed)
    fit_clips = trainable(fit_clips, train_ps)
    std = Standardizer.fit(train_ps, clip_actor, fit_clips, r.feature_norm, test_ps)
    model = build_head(r, p)
    trainer = head_trainer(model, r, len(np.unique(clip_actor[fit_clips])), p)
    selector, history = ModelSelector(r.patience, bool(len(val_clips)), 1 if r.refit else r.snapshots), []
    bar = tqdm(range(r.epochs), desc=(f"fold {test_actors[0]}-{test_actors[-1]}" if test_actors else "all actors") + f" seed {seed}", disable=not progress)
    select_clips = with_test_copies(val_clips, clip_actor, r) if r.select_with_test_speeds else val_clips
    epochs = prefetched(r.epochs, make_epoch, train_ps, fit_clips, labels, std, clip_actor, r, rng, p.num_classes,
                        intensity)
    ema = weight_ema(model, r.weight_ema) if r.weight_ema else None
    for epoch, (x, y) in zip(bar, epochs, strict=False):
        losses = fit_epoch(trainer, x, y, r, epoch, p, [ema] if ema else None)
        # with weight_ema the moving average is validated and kept; training goes on from the raw weights
        with ema.swapped() if ema else contextlib.nullcontext():
            val_acc = clip_accuracy(model, test_ps, select_clips, labels, std, clip_actor)[0] if len(val_clips) \
                else 0.0
            stop = selector.update(model, val_acc, epoch + 1)
        history.append({"epoch": epoch + 1, **losses, "val_clip_accuracy": val_acc})
        bar.set_postfix(loss=f"{losses['loss']:.3f}", val=f"{val_acc:.3f}")
        if stop:
            break
    epochs.close()                               # waits for an epoch built ahead of an early stop
    model.set_weights(selector.best_weights)
    best, best_epoch = selector.best, selector.best_epoch
    trained = fit_clips
    if r.refit and len(val_clips):
        # the validation actors only chose the epoch count; now they train too (test actors never do)
        keras.utils.set_random_seed(seed + 1000)
        trained = np.concatenate([fit_clips, trainable(np.flatnonzero(np.isin(real_actor(clip_actor), val_actors)),
                                                       train_ps)])
        std = Standardizer.fit(train_ps, clip_actor, trained, r.feature_norm, test_ps)
        model = build_head(r, p)
        trainer = head_trainer(model, r, len(np.unique(clip_actor[trained])), p)
        fit_epochs(trainer, model, prefetched(best_epoch, make_epoch, train_ps, trained, labels, std, clip_actor,
                                              r, rng, p.num_classes, intensity), r, p)
    meta = {"val_actors": val_actors, "best_epoch": best_epoch, "val_clip_accuracy": best, "history": history,
            "trained_actors": sorted(set(real_actor(clip_actor[trained]).tolist()))}   # whose labels trained it
    #                                                         (self-training then adds test clips with guessed labels)
    if not len(test_clips):                       # a final model trained on every actor: nothing to test
        return {"model": model, "standardizer": std, **meta}
    eval_clips = with_test_copies(test_clips, clip_actor, r)
    extra = {}
    if r.self_train:
        # the selected model labels the test speakers' clips it is surest of; their true labels are never read
        before = clip_accuracy(model, test_ps, eval_clips, labels, std, clip_actor)[4]
        chosen, guess = pseudo_labels(before, test_ps.clip[test_ps.of_clips(eval_clips)], clip_actor, r.self_train)
        st_clips, st_labels = with_pseudo_labels(fit_clips, labels, chosen, guess, clip_actor, train_ps, r)
        trainer = head_trainer(model, r, len(np.unique(clip_actor[st_clips])), p)
        fit_epochs(trainer, model, prefetched(r.self_train_epochs, make_epoch, train_ps, st_clips, st_labels, std,
                                              clip_actor, r, rng, p.num_classes), r, p)
        extra = {"probs_without_self_train": before, "self_train_clips": int(len(chosen))}
    acc, patch_acc, ids, pred, probs = clip_accuracy(model, test_ps, eval_clips, labels, std, clip_actor,
                                                     r.speaker_bn)
    out = {"model": model, "standardizer": std, **meta, "clip_accuracy": acc, "patch_accuracy": patch_acc,
           "test_rows": test_ps.of_clips(eval_clips), "probs": probs, **extra}
    if r.speaker_bn and len(selector.snapshots) < 2:  # the same model with its trained BatchNorm statistics: paired
        out["probs_without_speaker_bn"] = clip_accuracy(model, test_ps, eval_clips, labels, std, clip_actor)[4]
    if len(selector.snapshots) > 1:               # snapshot ensemble; the best epoch's model alone stays paired
        snap_probs, snap_plain = [], []
        for _, _, w in selector.snapshots:
            model.set_weights(w)
            snap_probs.append(clip_accuracy(model, test_ps, eval_clips, labels, std, clip_actor, r.speaker_bn)[4])
            if r.speaker_bn:
                snap_plain.append(clip_accuracy(model, test_ps, eval_clips, labels, std, clip_actor)[4])
        model.set_weights(selector.best_weights)  # the returned model is the best epoch's
        ids, pred = vote(np.mean(snap_probs, axis=0), recorded_clip(test_ps.clip[out["test_rows"]], clip_actor))
        out.update(probs_best_epoch=probs, probs=np.mean(snap_probs, axis=0), clip_accuracy=float(np.mean(
            pred == labels[ids])), snapshot_epochs=[e for _, e, _ in selector.snapshots])
        if r.speaker_bn:
            out["probs_without_speaker_bn"] = np.mean(snap_plain, axis=0)
    return out


def build_inference_model(weights, head, mean: np.ndarray, std: np.ndarray, batch_size: int | None = 1,
                          p: Params = Params(), name: str = "speech_model"):
    """(batch, 96, 64) log-mel patch -> (batch, 8): frozen trunk + fixed standardization + trained head.

    Static shapes at batch 1 by default, ready for TFLite export (the BiLSTM is unrolled).
    """
    import keras
    if head.input.shape[1] * 4 != p.patch_frames:
        raise ValueError(f"the head takes {head.input.shape[1] * 4}-frame patches; the device graph takes "
                         f"{p.patch_frames} (patch_frames is a research lever, not exported)")

    from training.yamnet import build_trunk
    x_in = keras.Input((p.patch_frames, p.mel_bands), batch_size=batch_size, name="log_mel_patch")
    a3 = build_trunk(weights)(x_in)                                        # (b, 24, 16, 64)
    z = keras.layers.Normalization(axis=-1, mean=mean, variance=np.square(std), name="a3_standardize")(a3)
    return keras.Model(x_in, head(z), name=name)
