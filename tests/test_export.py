"""edge-export's conversions on a small three-head model (real YAMNet trunk, untrained heads):
one graph, batch 1, builtin ops only, named inputs/outputs, int8 in/out with quantization read
at run time, float TFLite and ONNX equal to Keras, and the device wrapper on top."""
from __future__ import annotations

import json

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")


@pytest.fixture(scope="module")
def exported(yamnet_weights, tmp_path_factory):
    import keras

    from edge.params import Params
    from export.convert import export_all
    from training.face import QUICK, build_face_model
    from training.ship import SHIP_RECIPE, build_fusion_head, build_shipped_model
    from training.speech import build_head
    p = Params()
    keras.utils.set_random_seed(0)
    speech = build_head(SHIP_RECIPE.replace(conv_filters=(16, 16), lstm_units=16, attention_units=16), p)
    face = build_face_model(QUICK, p)
    head = build_fusion_head(32, QUICK.embedding, p)
    model = build_shipped_model(yamnet_weights, speech, np.zeros(64), np.ones(64), face, head, p, batch_size=None)
    rng = np.random.default_rng(0)

    def representative():
        for _ in range(8):
            yield {"log_mel": rng.normal(0, 2, (1, 96, 64)).astype(np.float32),
                   "faces": rng.random((1, 5, 60, 60, 1)).astype(np.float32)}
    d = tmp_path_factory.mktemp("export")
    targets = export_all(model, d / "work", d / "models", representative, d / "work", p)
    return model, targets, d


def _inputs(seed=1):
    rng = np.random.default_rng(seed)
    return rng.normal(0, 2, (1, 96, 64)).astype(np.float32), rng.random((1, 5, 60, 60, 1)).astype(np.float32)


def test_one_graph_builtin_ops_batch_one(exported):
    from export.edgetpu import edgetpu_report, graph_ops
    _, targets, _ = exported
    for name in ("tflite_int8", "tflite_float"):
        ops = graph_ops(targets[name]["path"])
        assert ops and not [o for o in ops if o.startswith("Flex") or o == "CUSTOM"], name
    rep = edgetpu_report(targets["tflite_int8"]["path"])
    assert rep["n_ops"] > 0 and 0 < rep["mappable_fraction_by_table"] <= 1


def test_named_io_and_int8_quantization_from_the_model(exported):
    from edge.runtime import load_model
    _, targets, _ = exported
    m = load_model(targets["tflite_int8"]["path"])
    assert set(m.input_names) == {"log_mel", "faces"} and set(m.output_names) == {"fused", "speech", "face"}
    assert m.input_detail("log_mel")["dtype"] == np.int8 and tuple(m.input_detail("faces")["shape"]) == (1, 5, 60,
                                                                                                       60, 1)
    scale, zero = m.input_detail("faces")["quantization"]
    assert scale > 0                                                      # read from the model, not assumed


def test_float_tflite_and_onnx_equal_keras(exported):
    from edge.runtime import load_model
    model, targets, _ = exported
    lm, faces = _inputs()
    ref = {k: np.asarray(v) for k, v in model({"log_mel": lm, "faces": faces}, training=False).items()}
    for name, backend in (("tflite_float", "litert"), ("onnx", "onnx")):
        out = load_model(targets[name]["path"], backend=backend).predict({"log_mel": lm, "faces": faces})
        for k in ("fused", "speech", "face"):
            assert np.max(np.abs(out[k] - ref[k])) <= 1e-4, (name, k)


def test_int8_close_to_float_and_smaller(exported):
    from edge.runtime import load_model
    _, targets, _ = exported
    lm, faces = _inputs(2)
    f = load_model(targets["tflite_float"]["path"]).predict({"log_mel": lm, "faces": faces})
    q = load_model(targets["tflite_int8"]["path"]).predict({"log_mel": lm, "faces": faces})
    for k in ("fused", "speech", "face"):
        assert np.max(np.abs(q[k] - f[k])) < 0.15, k
    assert targets["tflite_int8"]["bytes"] < 0.5 * targets["tflite_float"]["bytes"]


def test_device_wrapper_on_the_exported_graph(exported):
    from edge.model import EmotionModel
    from export.bench import graph_macs
    from export.cli import write_manifest
    _, targets, d = exported
    meta = {"emotions": ["neutral", "calm", "happy", "sad", "angry", "fearful", "disgust", "surprised"],
            "faces_per_patch": 5, "logmel_prior_mean": [0.0] * 64, "inputs": {}, "outputs": {}}
    man = write_manifest(d / "models", meta, {})
    assert json.loads((d / "models" / "manifest.json").read_text())["files"] == man["files"]
    m = EmotionModel(targets["tflite_int8"]["path"])
    lm, _ = _inputs(3)
    faces = np.random.default_rng(3).integers(0, 255, (3, 60, 60), np.uint8)
    both, speech_only, face_only = m.infer(lm[0], faces), m.infer(lm[0], None), m.infer(None, faces)
    assert set(both) == {"fused", "speech", "face"} and both["fused"].shape == (5, 8)
    assert set(speech_only) == {"speech"} and set(face_only) == {"face"}
    np.testing.assert_allclose(speech_only["speech"], both["speech"], atol=1e-6)   # faces don't touch speech
    with pytest.raises(ValueError, match="log-mel patch"):
        m.infer(np.zeros((10, 64)), None)
    assert graph_macs(targets["tflite_int8"]["path"]) > 50e6                        # the YAMNet trunk alone is more
