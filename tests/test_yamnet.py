"""Truncated YAMNet (activation_3): real weights, Keras == numpy, and close to the TFLite's own tensor."""
import numpy as np
import pytest

from training.yamnet import LAYER_DEFS, YamnetWeightsError, load_weights, numpy_trunk

keras = pytest.importorskip("keras")


def test_layer_table_shapes(yamnet_weights):
    assert [ld.name for ld in LAYER_DEFS] == list(yamnet_weights)
    k, b = yamnet_weights["layer2_pointwise_conv"]
    assert k.shape == (1, 1, 32, 64) and b.shape == (64,)
    assert k.dtype == np.float32 and np.abs(k).max() < 5.0   # int8 kernel dequantized with its scales


def test_keras_equals_numpy_reference(yamnet_weights):
    from training.yamnet import build_trunk
    x = np.random.default_rng(0).normal(-3, 2, (3, 96, 64)).astype(np.float32)
    ref = numpy_trunk(x, yamnet_weights)
    out = build_trunk(yamnet_weights)(x).numpy()
    assert out.shape == (3, 24, 16, 64)
    assert np.abs(out - ref).max() / np.abs(ref).max() <= 1e-5


def test_close_to_the_tflite_intermediate(yamnet_tflite, yamnet_weights, ravdess_speech):
    """The tflite quantizes activations on the fly (hybrid int8): measured ~2e-3 relative rms here."""
    from ai_edge_litert.interpreter import Interpreter

    from edge.audio.io import load_audio
    wave = load_audio(ravdess_speech / "Actor_02" / "03-01-03-01-01-01-02.flac")
    it = Interpreter(model_path=str(yamnet_tflite), experimental_preserve_all_tensors=True)
    it.allocate_tensors()
    names = {d["name"]: d["index"] for d in it.get_tensor_details()}
    a3_idx = next(i for n, i in names.items() if n.startswith(LAYER_DEFS[-1].tflite_relu))
    errs = []
    for start in (8000, 16000, 24000):
        it.set_tensor(it.get_input_details()[0]["index"], wave[None, start:start + 15600])
        it.invoke()
        patch = it.get_tensor(names["Identity_1"])            # the tflite's own (96, 64) log-mel
        ref = it.get_tensor(a3_idx)[0]                         # (24, 16, 64)
        mine = numpy_trunk(patch[None], yamnet_weights)[0]
        errs.append(np.sqrt(np.mean((mine - ref) ** 2)) / np.sqrt(np.mean(ref ** 2)))
    assert max(errs) < 1e-2, errs


def _unfolded_model(rng):
    """The same four layers the way Google's Keras YAMNet builds them: conv (no bias) + BN (center, no scale)."""
    L = keras.layers
    x_in = keras.Input((96, 64, 1))
    x = x_in
    for ld in LAYER_DEFS:
        yam = ld.name
        if ld.kind == "depthwise":
            x = L.DepthwiseConv2D(ld.kernel, ld.stride, padding="same", use_bias=False, name=yam)(x)
        else:
            x = L.Conv2D(ld.filters, ld.kernel, ld.stride, padding="same", use_bias=False, name=yam)(x)
        x = L.BatchNormalization(center=True, scale=False, epsilon=1e-4, name=yam + "_bn")(x)
        x = L.ReLU()(x)
    m = keras.Model(x_in, x)
    for layer in m.layers:
        if isinstance(layer, L.BatchNormalization):
            c = layer.moving_mean.shape[0]
            layer.set_weights([rng.normal(0, 0.1, c), rng.normal(0, 0.5, c), rng.uniform(0.2, 2.0, c)])
    return m


def test_h5_weights_fold_batchnorm(tmp_path):
    """A yamnet.h5 in Keras-2 save_weights layout (nested groups, ':0' names) loads and folds exactly."""
    import h5py
    rng = np.random.default_rng(1)
    m = _unfolded_model(rng)
    f = tmp_path / "yamnet.h5"
    with h5py.File(f, "w") as h:
        for layer in m.layers:
            yam = layer.name.replace("_", "/", 1).replace("_bn", "/bn")   # layer2/depthwise_conv/bn
            for v in layer.weights:
                h[f"{yam}/{yam}/{v.name}:0"] = v.numpy()
    w = load_weights(f)
    x = rng.normal(-3, 2, (2, 96, 64)).astype(np.float32)
    np.testing.assert_allclose(numpy_trunk(x, w), m(x[..., None]).numpy(), rtol=1e-4, atol=1e-4)


def test_bad_weight_sources(tmp_path):
    with pytest.raises(YamnetWeightsError, match="not found"):
        load_weights(tmp_path / "missing.tflite")
    bad = tmp_path / "bad.tflite"
    bad.write_bytes(b"\0" * 100)
    with pytest.raises(YamnetWeightsError, match="bad.tflite"):
        load_weights(bad)
    with pytest.raises(YamnetWeightsError, match="not a .tflite"):
        load_weights(tmp_path / "weights.bin")


def test_hub_handle_offline_fails_clearly(monkeypatch):
    import sys
    import types
    fake = types.ModuleType("tensorflow_hub")

    def load(handle):
        raise OSError("network unreachable")
    fake.load = load
    monkeypatch.setitem(sys.modules, "tensorflow_hub", fake)
    with pytest.raises(YamnetWeightsError, match="cannot load from TF-Hub.*tflite"):
        load_weights("https://tfhub.dev/google/yamnet/1")
