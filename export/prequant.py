"""The graphs ``edge-export`` converts: the device graph (float, ONNX) and its int8 twin.

Four steps, each measured by ``python -m export.prequant_report`` (reports/prequant.json: per-
prediction top-1 agreement int8 vs float over speech patches, fused triples and FER2013 faces on one
CV fold, each step on top of the previous ones).

Why each step:

* **Standardisation fold** (exact in float; ``training.ship.fold_standardization``): int8 gives
  activation_3 one scale for 64 channels; dividing by a per-channel std afterwards amplified the
  rounding noise of the quiet channels.
* **Exact BiLSTM rewrite** (export/rewrites.py, equal in float to rounding, same int8 weights): the
  unrolled BiLSTM's input projection as one FULLY_CONNECTED over all steps, and its two directions
  sharing each step's gate and state tensors: 40% fewer ops, and in int8 each tensor fewer is one
  quantisation record fewer (the int8 file shrinks more than the float one).
* **Logit floor** (the device graph's heads compute softmax(max(z, c)); argmax unchanged wherever
  some logit exceeds c, which every calibration input does): int8 quantises the logits over their
  whole calibrated range, and the face head's *calm* logit (FER2013 has no calm faces) reached -27,
  stretching the step to 0.16 and turning close calls into ties. Floored, the range is [0, max - c].
  The floor makes the probabilities of the classes below it equal. Every argmax stays; a clip vote
  that ties is broken by summed probabilities, which the floor changes, so a few clip votes move
  (``keras_trained`` vs ``keras_float`` in reports/export.json, per fold and over all folds).
* **Bias correction** (Nagel et al. 2019, empirical form): with 9 weights per output channel
  (the first conv of the trunk and of the face CNN, one input channel) the rounding of int8
  weights does not average out; on smooth inputs it adds a per-channel offset. Its mean over real
  calibration inputs is subtracted from the bias (or added to the following BatchNorm's moving
  mean) of the int8 twin only; the float graphs keep the trained weights.
"""
from __future__ import annotations

import logging

import numpy as np

from edge.params import Params

log = logging.getLogger(__name__)

HEADS = ("speech", "face", "fused")
# (sub-model, layer, BatchNorm taking the correction when the layer has no bias), in graph order
TRUNK = "yamnet_activation_3"
FACE = "face_branch"
CORRECTED = ((TRUNK, "layer1_conv", None), (TRUNK, "layer2_depthwise_conv", None),
             (TRUNK, "layer2_pointwise_conv", None), (TRUNK, "layer3_depthwise_conv", None)) + tuple(
    (FACE, f"face_conv{i}", f"face_bn{i}") for i in range(1, 7))


# ------------------------------------------------------------------ int8 weight rounding

def int8_weights(w: np.ndarray, axis: int) -> np.ndarray:
    """``w`` after TFLite's per-channel symmetric int8 weight quantisation (scale = max|w| / 127 over every
    axis but ``axis``, the output channel), dequantised. A BatchNorm folded into the kernel scales each output
    channel, which leaves this rounding unchanged."""
    axis = axis % w.ndim
    red = tuple(i for i in range(w.ndim) if i != axis)
    s = np.abs(w).max(axis=red, keepdims=True) / 127.0
    s = np.where(s == 0, 1.0, s)
    return np.clip(np.round(w / s), -127, 127) * s


def expected_weight_error(layer, x: np.ndarray) -> np.ndarray:
    """Mean over the inputs ``x`` and all positions of conv(W_int8 - W, x), per output channel: the offset
    int8 weights add to the layer's output before its activation."""
    import tensorflow as tf
    cls = type(layer).__name__
    w = layer.get_weights()[0]
    cfg = layer.get_config()
    pad = cfg.get("padding", "valid").upper()
    if cls == "Conv2D":
        y = tf.nn.conv2d(x, int8_weights(w, -1) - w, strides=cfg["strides"], padding=pad)
    elif cls == "DepthwiseConv2D":
        y = tf.nn.depthwise_conv2d(x, int8_weights(w, 2) - w, strides=(1, *cfg["strides"], 1), padding=pad)
    else:
        raise TypeError(f"no weight-rounding model for {layer.name} ({cls})")
    y = np.asarray(y, np.float64)
    return y.reshape(-1, y.shape[-1]).mean(0)


def correct_bias(layer, err: np.ndarray, bn=None) -> None:
    """Take ``err`` out of the layer's output: from its bias, or (no bias) via the moving mean of the
    BatchNormalization ``bn`` right after it."""
    w = layer.get_weights()
    if len(w) > 1:
        w[1] = (w[1] - err).astype(w[1].dtype)
        layer.set_weights(w)
        return
    if bn is None:
        raise ValueError(f"{layer.name} has no bias and no BatchNormalization to take the correction")
    names = [v.path.split("/")[-1] for v in bn.weights]
    if "moving_mean" not in names:
        raise ValueError(f"{bn.name}: no moving_mean to take the correction of {layer.name}")
    bw = bn.get_weights()
    i = names.index("moving_mean")
    bw[i] = (bw[i] + err).astype(bw[i].dtype)
    bn.set_weights(bw)


def bias_corrected(model, log_mel: np.ndarray, faces: np.ndarray) -> tuple[object, dict]:
    """A copy of the device graph whose biases absorb the mean int8 weight-rounding error, layer by layer
    in graph order (each layer's inputs come from the already corrected layers before it)."""
    import keras
    copy = keras.models.clone_model(model)
    copy.set_weights(model.get_weights())
    inputs = {TRUNK: np.asarray(log_mel, np.float32),
              FACE: np.asarray(faces, np.float32).reshape(-1, *faces.shape[2:])}
    shifts = {}
    for sub_name, name, bn in CORRECTED:
        sub = copy.get_layer(sub_name)
        if name == "face_conv1" and name not in {la.name for la in sub.layers}:
            name, bn = "face_stem_conv", None         # export/rewrites.face_stem_cols: BatchNorm folded, a bias
        layer = sub.get_layer(name)
        x = np.asarray(keras.Model(sub.inputs, layer.input).predict(inputs[sub_name], batch_size=256, verbose=0))
        err = expected_weight_error(layer, x)
        correct_bias(layer, err, sub.get_layer(bn) if bn else None)
        shifts[name] = float(np.abs(err).mean())
    return copy, {"mean_abs_shift": shifts}


# ------------------------------------------------------------------ logit floor

def head_logits(model, log_mel: np.ndarray, faces: np.ndarray) -> dict[str, np.ndarray]:
    """Pre-softmax outputs of the three heads (log of the softmax, up to a per-row constant, is not enough:
    the floor is in logit units), from a copy whose output layers are linear."""
    import keras

    from training.ship import shipped_parts
    copy = keras.models.clone_model(model)
    copy.set_weights(model.get_weights())
    parts = shipped_parts(copy)
    layers = {"fused": copy.get_layer("fused_probs"), "speech": parts["speech_head"].get_layer("speech_probs"),
              "face": parts["face_model"].get_layer("face_probs")}
    for layer in layers.values():
        layer.activation = keras.activations.get("linear")
    return {k: v.reshape(-1, v.shape[-1]) for k, v in _predict(copy, log_mel, faces).items()}


def _predict(model, log_mel: np.ndarray, faces: np.ndarray, batch: int = 128) -> dict[str, np.ndarray]:
    out = {}
    for s in range(0, len(log_mel), batch):
        o = model({"log_mel": log_mel[s:s + batch], "faces": faces[s:s + batch]}, training=False)
        for k in HEADS:
            out.setdefault(k, []).append(np.asarray(o[k]))
    return {k: np.concatenate(v) for k, v in out.items()}


FLOOR_MARGIN = 1.0      # logits below the lowest calibration maximum by this much are floored


def logit_floors(model, log_mel: np.ndarray, faces: np.ndarray) -> dict[str, float]:
    """Per head, the lowest per-input maximum logit over the calibration inputs, minus FLOOR_MARGIN: a floor
    that leaves every calibration argmax where it was."""
    z = head_logits(model, log_mel, faces)
    return {k: float(v.max(axis=1).min() - FLOOR_MARGIN) for k, v in z.items()}


# ------------------------------------------------------------------ both graphs

STEPS = ("trained model as saved", "+ standardisation folded into the trunk",
         "+ exact BiLSTM rewrite (input projection batched, directions merged)", "+ logits floored",
         "+ int8 biases corrected for weight rounding")


def rebuilt(model, p: Params = Params(), rewrite: bool = True, logit_floor: dict[str, float] | None = None,
            face_stem: bool = False):
    """``model`` rebuilt with its standardisation folded, the exact rewrites of export/rewrites.py (unless
    ``rewrite`` is false; ``face_stem``: also the stem fold, which the device graph leaves out) and, given
    ``logit_floor``, floored heads; batch dimension free."""
    import keras

    from export.rewrites import rewritten
    from training.ship import build_shipped_model, fold_standardization, shipped_parts
    copy = keras.models.clone_model(model)
    copy.set_weights(model.get_weights())
    parts = fold_standardization(shipped_parts(copy))
    if rewrite:
        parts = rewritten(parts, face_stem=face_stem)
    return build_shipped_model(**parts, p=p, batch_size=None, name=model.name, logit_floor=logit_floor)


def graph_steps(model, log_mel: np.ndarray, faces: np.ndarray, p: Params = Params()) -> tuple[list, dict]:
    """Each cumulative step of STEPS as (name, float graph, int8 graph), and what the steps chose
    ({"logit_floor", "bias_correction"}). The last step is what ``edge-export`` converts."""
    folded = rebuilt(model, p, rewrite=False)
    rewr = rebuilt(model, p)
    floors = logit_floors(rewr, log_mel, faces)
    device = rebuilt(model, p, logit_floor=floors)
    twin, bc = bias_corrected(device, log_mel, faces)
    graphs = [(model, model), (folded, folded), (rewr, rewr), (device, device), (device, twin)]
    return [(name, f, q) for name, (f, q) in zip(STEPS, graphs, strict=True)], {"logit_floor": floors,
                                                                                "bias_correction": bc}


def device_graphs(model, log_mel: np.ndarray, faces: np.ndarray, p: Params = Params()) -> tuple[object, object, dict]:
    """(device graph, its int8 twin, report) for the trained three-head ``model``.

    ``log_mel`` (n, 96, 64) and ``faces`` (n, 5, 60, 60, 1): real calibration inputs, the same the int8
    converter sees. The device graph is what the float TFLite and ONNX files hold and what parity compares
    against; the int8 twin differs from it only in the bias correction.
    """
    steps, chosen = graph_steps(model, log_mel, faces, p)
    _, device, twin = steps[-1]
    ref, got = _predict(model, log_mel, faces), _predict(device, log_mel, faces)
    for k in HEADS:        # a changed argmax is only acceptable on a float tie (different rounding order)
        r = ref[k].reshape(-1, ref[k].shape[-1])
        moved = r.argmax(-1) != got[k].reshape(r.shape).argmax(-1)
        top2 = np.sort(r, axis=-1)[:, -2:]
        if np.any(moved & (top2[:, 1] - top2[:, 0] > 1e-4)):
            raise RuntimeError(f"the device graph changed {int(moved.sum())} calibration argmax of the {k} head")
    report = {**chosen, "steps": list(STEPS[1:])}
    log.info("device graph: logit floors %s; bias shifts %s",
             {k: round(v, 2) for k, v in chosen["logit_floor"].items()},
             {k: round(v, 4) for k, v in chosen["bias_correction"]["mean_abs_shift"].items()})
    return device, twin, report
