"""YAMNet truncated at its 4th ReLU ("activation_3"): (96, 64) log-mel patch -> (24, 16, 64).

The architecture is a table (YAMNet's own ``_YAMNET_LAYER_DEFS``, cut after layer3's depthwise
conv). BatchNorm is folded into each conv's kernel and bias, as in Google's TFLite release.
Weights come from, in order of preference:

    yamnet.tflite  Google's TFLite model (../shared/weights/yamnet/yamnet.tflite); the layer2
                   pointwise kernel is int8 with per-channel scales and is dequantized here
    yamnet.h5      Google's Keras weights (BatchNorm folded here, epsilon 1e-4, no gamma)
    a TF-Hub handle such as https://tfhub.dev/google/yamnet/1 (needs tensorflow-hub and network)

    weights = load_weights("../shared/weights/yamnet/yamnet.tflite")
    trunk = build_trunk(weights)           # keras.Sequential, frozen, (None, 96, 64) -> (None, 24, 16, 64)
    ref = numpy_trunk(patches, weights)    # the same four layers in plain numpy
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)


class YamnetWeightsError(ValueError):
    """The YAMNet weights cannot be found, read or matched to the layer table."""


@dataclass(frozen=True)
class LayerDef:
    name: str        # stable Keras layer name (YAMNet's, with '/' -> '_')
    kind: str        # conv | depthwise | pointwise
    kernel: int
    stride: int
    filters: int     # output channels
    tflite_relu: str  # name prefix of this layer's ReLU output in Google's tflite graph


# YAMNet up to activation_3: conv 3x3/2 (32) -> dw 3x3 -> pw 64 -> dw 3x3/2, each BN + ReLU.
LAYER_DEFS: tuple[LayerDef, ...] = (
    LayerDef("layer1_conv", "conv", 3, 2, 32, "yamnet_frames/layer1/relu/Relu"),
    LayerDef("layer2_depthwise_conv", "depthwise", 3, 1, 32, "yamnet_frames/layer2/depthwise_conv/relu/Relu"),
    LayerDef("layer2_pointwise_conv", "pointwise", 1, 1, 64, "yamnet_frames/layer2/pointwise_conv/relu/Relu"),
    LayerDef("layer3_depthwise_conv", "depthwise", 3, 2, 64, "yamnet_frames/layer3/depthwise_conv/relu/Relu"),
)
OUTPUT_SHAPE = (24, 16, 64)
BN_EPSILON = 1e-4  # YAMNet's params.batchnorm_epsilon

# Weights: layer name -> (kernel in Keras layout, bias). Keras layouts: conv/pointwise
# (kh, kw, in, out); depthwise (kh, kw, channels, 1).
Weights = dict[str, tuple[np.ndarray, np.ndarray]]


def load_weights(source: str | Path) -> Weights:
    """Folded float32 weights of the four layers from a .tflite, a .h5 or a TF-Hub handle."""
    s = str(source)
    if s.endswith(".tflite"):
        return weights_from_tflite(s)
    if s.endswith((".h5", ".hdf5")):
        return weights_from_h5(s)
    if s.startswith(("http://", "https://")) or "tfhub" in s or "kaggle" in s:
        return weights_from_hub(s)
    raise YamnetWeightsError(f"{s}: not a .tflite, .h5 or TF-Hub handle")


def dequantize_constant(arr: np.ndarray, detail: dict) -> np.ndarray:
    """int8 weight with per-tensor or per-channel scales -> float32."""
    if arr.dtype != np.int8:
        return arr.astype(np.float32)
    q = detail["quantization_parameters"]
    scales = np.asarray(q["scales"], np.float32)
    zeros = np.asarray(q["zero_points"], np.float32)
    shape = [1] * arr.ndim
    if scales.size > 1:
        shape[q["quantized_dimension"]] = -1
    return (arr.astype(np.float32) - zeros.reshape(shape)) * scales.reshape(shape)


def weights_from_tflite(path: str | Path) -> Weights:
    """Read the four layers' folded weights from Google's yamnet.tflite."""
    from edge.runtime.litert import interpreter_class
    path = Path(path)
    if not path.is_file():
        raise YamnetWeightsError(f"YAMNet weights not found: {path} (set --yamnet or AVE_YAMNET)")
    try:
        it = interpreter_class()(model_path=str(path))
        it.allocate_tensors()
    except (ValueError, RuntimeError) as e:
        raise YamnetWeightsError(f"{path}: not a readable TFLite model ({e})") from e
    details = it.get_tensor_details()
    by_index = {d["index"]: d for d in details}
    out: Weights = {}
    for ld in LAYER_DEFS:
        ops = [o for o in it._get_ops_details()
               if any(by_index[int(t)]["name"].startswith(ld.tflite_relu) for t in o["outputs"] if t >= 0)]
        if len(ops) != 1:
            raise YamnetWeightsError(f"{path}: no unique op for {ld.name} ({ld.tflite_relu})")
        _, w_idx, b_idx = (int(t) for t in ops[0]["inputs"])
        w = dequantize_constant(it.get_tensor(w_idx), by_index[w_idx])   # (out, kh, kw, in) or (1, kh, kw, C)
        b = it.get_tensor(b_idx).astype(np.float32)
        out[ld.name] = (np.ascontiguousarray(w.transpose(1, 2, 3, 0)), b)
    _check_shapes(out, str(path))
    return out


def fold_batchnorm(kernel: np.ndarray, beta: np.ndarray, mean: np.ndarray, var: np.ndarray,
                   eps: float = BN_EPSILON, depthwise: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Conv (no bias) + BN(center, no scale) -> conv with bias. Channels are the last kernel axis
    (the third for a depthwise kernel)."""
    inv = 1.0 / np.sqrt(var + eps)
    if depthwise:
        k = kernel * inv[None, None, :, None]
    else:
        k = kernel * inv
    return k.astype(np.float32), (beta - mean * inv).astype(np.float32)


def _fold_from_named(arrays: dict[str, np.ndarray], source: str) -> Weights:
    """Match variables named like YAMNet's Keras model ('layer1/conv/kernel', 'layer1/conv/bn/beta')."""
    def find(prefix: str, suffix: str) -> np.ndarray:
        want_bn = prefix.endswith("/bn/")
        hits = [k for k in arrays if prefix in k and k.split("/")[-1].split(":")[0] == suffix
                and ("/bn/" in k) == want_bn]
        if len(hits) != 1:
            raise YamnetWeightsError(f"{source}: expected one '{prefix}*{suffix}', found {hits}")
        return np.asarray(arrays[hits[0]], np.float32)

    out: Weights = {}
    for ld in LAYER_DEFS:
        yam = ld.name.replace("_", "/", 1)  # layer2_depthwise_conv -> layer2/depthwise_conv
        if ld.kind == "depthwise" and any(k.split("/")[-1].startswith("depthwise_kernel") for k in arrays):
            kernel = find(yam + "/", "depthwise_kernel")   # Keras 2 name
        else:
            kernel = find(yam + "/", "kernel")
        bn = yam + "/bn/"
        beta, mean, var = (find(bn, s) for s in ("beta", "moving_mean", "moving_variance"))
        out[ld.name] = fold_batchnorm(kernel, beta, mean, var, depthwise=ld.kind == "depthwise")
    _check_shapes(out, source)
    return out


def weights_from_h5(path: str | Path) -> Weights:
    """Google's Keras ``yamnet.h5`` (unfolded BatchNorm, epsilon 1e-4, center only)."""
    import h5py
    path = Path(path)
    if not path.is_file():
        raise YamnetWeightsError(f"YAMNet weights not found: {path}")
    arrays: dict[str, np.ndarray] = {}
    try:
        with h5py.File(path, "r") as f:
            f.visititems(lambda name, obj: arrays.__setitem__(name, obj[()])
                         if isinstance(obj, h5py.Dataset) else None)
    except OSError as e:
        raise YamnetWeightsError(f"{path}: not a readable HDF5 file ({e})") from e
    return _fold_from_named(arrays, str(path))


def weights_from_hub(handle: str) -> Weights:
    """A TF-Hub YAMNet handle (needs tensorflow-hub and network access)."""
    try:
        import tensorflow_hub as hub
    except ImportError:
        raise YamnetWeightsError(f"{handle}: loading a TF-Hub handle needs `pip install tensorflow-hub`"
                                 " (or pass the .tflite / .h5 file)") from None
    try:
        model = hub.load(handle)
    except Exception as e:  # noqa: BLE001 - hub raises many types when offline
        raise YamnetWeightsError(f"{handle}: cannot load from TF-Hub (offline? {type(e).__name__}: {e});"
                                 " pass the .tflite or .h5 file instead") from e
    arrays = {v.name: v.numpy() for v in model.variables}
    return _fold_from_named(arrays, handle)


def _check_shapes(w: Weights, source: str) -> None:
    expect = {"layer1_conv": (3, 3, 1, 32), "layer2_depthwise_conv": (3, 3, 32, 1),
              "layer2_pointwise_conv": (1, 1, 32, 64), "layer3_depthwise_conv": (3, 3, 64, 1)}
    for name, shape in expect.items():
        k, b = w[name]
        if k.shape != shape or b.shape != (shape[3] if shape[3] != 1 else shape[2],):
            raise YamnetWeightsError(f"{source}: {name} has kernel {k.shape} bias {b.shape}, expected {shape}")


# ---------------------------------------------------------------- plain numpy reference

def _same_pad(x: np.ndarray, k: int, s: int) -> np.ndarray:
    """TF 'SAME' padding of (n, h, w, c): extra pixel at the bottom/right."""
    def amounts(n: int) -> tuple[int, int]:
        out = -(-n // s)
        total = max((out - 1) * s + k - n, 0)
        return total // 2, total - total // 2
    return np.pad(x, ((0, 0), amounts(x.shape[1]), amounts(x.shape[2]), (0, 0)))


def _windows(x: np.ndarray, k: int, s: int) -> np.ndarray:
    """(n, H, W, c) padded -> (n, oh, ow, k, k, c) sliding windows."""
    n, h, w, c = x.shape
    oh, ow = (h - k) // s + 1, (w - k) // s + 1
    st = x.strides
    return np.lib.stride_tricks.as_strided(
        x, (n, oh, ow, k, k, c), (st[0], st[1] * s, st[2] * s, st[1], st[2], st[3]), writeable=False)


def numpy_trunk(patches: np.ndarray, weights: Weights) -> np.ndarray:
    """(n, 96, 64) log-mel patches -> (n, 24, 16, 64) activation_3, float64 math."""
    x = np.asarray(patches, np.float64)[..., None]
    for ld in LAYER_DEFS:
        k, b = weights[ld.name]
        win = _windows(_same_pad(x, ld.kernel, ld.stride), ld.kernel, ld.stride)
        if ld.kind == "depthwise":
            y = np.einsum("nhwijc,ijc->nhwc", win, k[..., 0].astype(np.float64))
        else:
            y = np.einsum("nhwijc,ijco->nhwo", win, k.astype(np.float64))
        x = np.maximum(y + b, 0.0)
    return x.astype(np.float32)


# ---------------------------------------------------------------- Keras layers

def trunk_layers(weights: Weights | None = None, trainable: bool = False) -> list:
    """The four layers as Keras layers (weights set when given), named from LAYER_DEFS."""
    import keras
    layers = []
    for ld in LAYER_DEFS:
        if ld.kind == "depthwise":
            layer = keras.layers.DepthwiseConv2D(ld.kernel, ld.stride, padding="same", activation="relu",
                                                 name=ld.name, trainable=trainable)
        else:
            layer = keras.layers.Conv2D(ld.filters, ld.kernel, ld.stride, padding="same", activation="relu",
                                        name=ld.name, trainable=trainable)
        layers.append(layer)
    return layers


def build_trunk(weights: Weights, trainable: bool = False, name: str = "yamnet_activation_3",
                frames: int | None = None):
    """keras.Sequential: (None, 96, 64) log-mel -> (None, 24, 16, 64), real weights, frozen by default. ``frames``:
    a patch of another length (a multiple of 4; research rows only, the device graph takes 96): (frames / 4, 16, 64)."""
    import keras

    from edge.params import Params
    p = Params()
    n = p.patch_frames if frames is None else frames
    model = keras.Sequential(
        [keras.Input((n, p.mel_bands)), keras.layers.Reshape((n, p.mel_bands, 1), name="to_image")]
        + trunk_layers(trainable=trainable), name=name)
    set_trunk_weights(model, weights)
    return model


def set_trunk_weights(model, weights: Weights) -> None:
    for ld in LAYER_DEFS:
        model.get_layer(ld.name).set_weights(list(weights[ld.name]))
