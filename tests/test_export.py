"""edge-export's conversions on a small three-head model (real YAMNet trunk, untrained heads), through
export.cli.convert (device graph: rewrites, floors, bias-corrected int8 twin): one graph, batch 1,
builtin ops only, named inputs/outputs, int8 in/out with quantization read at run time, float TFLite
and ONNX equal to the device graph in Keras, and the device wrapper on top."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")


@pytest.fixture(scope="module")
def exported(yamnet_weights, tmp_path_factory):
    import keras

    from edge.params import Params
    from export.cli import convert
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
    cal = [{"log_mel": rng.normal(0, 2, (1, 96, 64)).astype(np.float32),
            "faces": rng.random((1, 5, 60, 60, 1)).astype(np.float32)} for _ in range(8)]

    def representative():
        yield from cal
    d = tmp_path_factory.mktemp("export")
    device, _, targets = convert(model, d / "work", d / "models", representative, p)   # edge-export's own path
    return device, targets, d, model


def _inputs(seed=1):
    rng = np.random.default_rng(seed)
    return rng.normal(0, 2, (1, 96, 64)).astype(np.float32), rng.random((1, 5, 60, 60, 1)).astype(np.float32)


def test_one_graph_builtin_ops_batch_one(exported):
    from export.edgetpu import edgetpu_report, graph_ops
    _, targets, _, _ = exported
    for name in ("tflite_int8", "tflite_float"):
        ops = graph_ops(targets[name]["path"])
        assert ops and not [o for o in ops if o.startswith("Flex") or o == "CUSTOM"], name
    assert "DEQUANTIZE" not in graph_ops(targets["tflite_int8"]["path"])       # full-integer: no float island
    rep = edgetpu_report(targets["tflite_int8"]["path"])
    assert rep["n_ops"] > 0 and 0 < rep["mappable_fraction_by_table"] <= 1


def test_named_io_and_int8_quantization_from_the_model(exported):
    from edge.runtime import load_model
    _, targets, _, _ = exported
    m = load_model(targets["tflite_int8"]["path"])
    assert set(m.input_names) == {"log_mel", "faces"} and set(m.output_names) == {"fused", "speech", "face"}
    assert m.input_detail("log_mel")["dtype"] == np.int8 and tuple(m.input_detail("faces")["shape"]) == (1, 5, 60,
                                                                                                       60, 1)
    scale, zero = m.input_detail("faces")["quantization"]
    assert scale > 0                                                      # read from the model, not assumed


def test_float_tflite_and_onnx_equal_keras(exported):
    from edge.runtime import load_model
    model, targets, _, _ = exported
    lm, faces = _inputs()
    ref = {k: np.asarray(v) for k, v in model({"log_mel": lm, "faces": faces}, training=False).items()}
    for name, backend in (("tflite_float", "litert"), ("onnx", "onnx")):
        out = load_model(targets[name]["path"], backend=backend).predict({"log_mel": lm, "faces": faces})
        for k in ("fused", "speech", "face"):
            assert np.max(np.abs(out[k] - ref[k])) <= 1e-4, (name, k)


def test_int8_close_to_float_and_smaller(exported):
    from edge.runtime import load_model
    _, targets, _, _ = exported
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
    _, targets, d, _ = exported
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


def test_ready_interpreter_sets_every_input_for_timing(exported):
    from export.bench import ready_interpreter
    _, targets, _, _ = exported
    for name in ("tflite_int8", "tflite_float"):
        path = Path(targets[name]["path"])
        for it in (ready_interpreter(path), ready_interpreter(path.read_bytes())):
            ins = it.get_input_details()
            assert len(ins) == 2 and all(it.get_tensor(d["index"]).std() > 0 for d in ins), name   # not left zero
            it.invoke()
            assert all(np.isfinite(it.get_tensor(d["index"])).all() for d in it.get_output_details())


# ------------------------------------------------------------------ export/prequant.py: the device graph

def test_standardization_fold_is_exact(exported):
    from edge.params import Params
    from training.ship import build_shipped_model, fold_standardization, shipped_parts
    _, _, _, model = exported
    rng = np.random.default_rng(4)
    parts = shipped_parts(model)
    parts["feat_mean"] = rng.uniform(0, 1, 64).astype(np.float32)
    parts["feat_std"] = rng.uniform(0.15, 2.0, 64).astype(np.float32)          # the trained spread: 0.18 .. 1.7
    p = Params()
    plain = build_shipped_model(**parts, p=p, batch_size=None)
    folded = build_shipped_model(**fold_standardization(parts), p=p, batch_size=None)
    assert np.allclose(folded.get_layer("a3_standardize").get_config()["variance"], 1.0)
    lm, faces = _inputs(5)
    a, b = plain({"log_mel": lm, "faces": faces}), folded({"log_mel": lm, "faces": faces})
    for k in a:
        np.testing.assert_allclose(np.asarray(b[k]), np.asarray(a[k]), atol=1e-5)


def test_device_graph_floors_logits_and_keeps_the_argmax(exported):
    from export.prequant import HEADS, device_graphs, head_logits
    _, _, _, model = exported
    rng = np.random.default_rng(6)
    lm = rng.normal(0, 2, (24, 96, 64)).astype(np.float32)
    faces = rng.random((24, 5, 60, 60, 1)).astype(np.float32)
    device, twin, rep = device_graphs(model, lm, faces)
    assert set(rep["logit_floor"]) == set(HEADS) and set(rep["bias_correction"]["mean_abs_shift"])
    ref = model({"log_mel": lm, "faces": faces})
    got = device({"log_mel": lm, "faces": faces})
    z = head_logits(model, lm, faces)
    for k in HEADS:
        r, g = np.asarray(ref[k]).reshape(-1, 8), np.asarray(got[k]).reshape(-1, 8)
        np.testing.assert_allclose(g.sum(-1), 1.0, atol=1e-5)                   # still probabilities
        above = z[k].max(-1) > rep["logit_floor"][k]
        assert above.all()                                                       # calibration inputs, by construction
        assert (r.argmax(-1) == g.argmax(-1)).all()
        below = z[k] <= rep["logit_floor"][k]                                    # floored classes share one value
        for row in range(len(g)):
            if below[row].sum() > 1:
                assert np.ptp(g[row][below[row]]) < 1e-6
    # the twin differs only in the biases: same structure, other outputs
    assert [w.shape for w in twin.get_weights()] == [w.shape for w in device.get_weights()]


def test_int8_weight_model_matches_the_converter(tmp_path):
    """export.prequant.int8_weights reproduces the kernel the TFLite converter stores (per output channel)."""
    import keras
    from ai_edge_litert.interpreter import Interpreter

    from export.prequant import int8_weights
    keras.utils.set_random_seed(1)
    m = keras.Sequential([keras.Input((12, 12, 1), batch_size=1), keras.layers.Conv2D(6, 3, padding="same")])
    w = m.layers[0].get_weights()[0]
    conv = tf.lite.TFLiteConverter.from_keras_model(m)
    conv.optimizations = [tf.lite.Optimize.DEFAULT]
    conv.representative_dataset = lambda: ([np.random.rand(1, 12, 12, 1).astype(np.float32)] for _ in range(4))
    conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    (tmp_path / "c.tflite").write_bytes(conv.convert())
    it = Interpreter(str(tmp_path / "c.tflite"))
    it.allocate_tensors()
    k = next(t for t in it.get_tensor_details() if t["dtype"] == np.int8 and len(t["shape"]) == 4
             and tuple(t["shape"]) == (6, 3, 3, 1))                              # OHWI
    q = it.get_tensor(k["index"]).astype(np.float64) * k["quantization_parameters"]["scales"][:, None, None, None]
    np.testing.assert_allclose(q.transpose(1, 2, 3, 0), int8_weights(w, -1), atol=1e-7)


def test_bias_correction_removes_the_mean_int8_weight_offset(tmp_path):
    """A first conv (one input channel, 9 weights per filter) on smooth images: the int8 file converted
    from the corrected copy has a smaller per-channel mean error against float than the uncorrected one."""
    import keras
    from ai_edge_litert.interpreter import Interpreter

    from export.prequant import correct_bias, expected_weight_error
    keras.utils.set_random_seed(2)
    m = keras.Sequential([keras.Input((24, 24, 1), batch_size=1), keras.layers.Conv2D(16, 3, padding="same")])
    w, b = m.layers[0].get_weights()
    m.layers[0].set_weights([w - w.mean(axis=(0, 1, 2), keepdims=True), b])     # edge detectors: sum(w) ~ 0
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:24, 0:24] / 24.0
    imgs = np.stack([0.5 + 0.3 * np.sin(a * xx + c * yy) for a, c in rng.uniform(0, 3, (64, 2))])[..., None]
    imgs = imgs.astype(np.float32)
    fixed = keras.models.clone_model(m)
    fixed.set_weights(m.get_weights())
    correct_bias(fixed.layers[0], expected_weight_error(fixed.layers[0], imgs))

    def offset(model):
        conv = tf.lite.TFLiteConverter.from_keras_model(model)
        conv.optimizations = [tf.lite.Optimize.DEFAULT]
        conv.representative_dataset = lambda: ([x[None]] for x in imgs[:32])
        conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        f = tmp_path / f"{model.name}.tflite"
        f.write_bytes(conv.convert())
        it = Interpreter(str(f))
        it.allocate_tensors()
        i, o = it.get_input_details()[0], it.get_output_details()[0]
        err = []
        for x in imgs[32:]:
            it.set_tensor(i["index"], x[None])
            it.invoke()
            err.append(it.get_tensor(o["index"])[0] - np.asarray(m(x[None]))[0])
        return np.abs(np.mean(err, axis=(0, 1, 2))).mean()
    assert offset(fixed) < 0.5 * offset(m)


def test_device_graph_rewrites_are_exact_in_the_full_graph(exported):
    """export.prequant.rebuilt: standardisation folded and the BiLSTM rewrite of export/rewrites.py (and, on
    request, the face stem fold), no floors; equal to the trained graph in float, with the rewritten layers in
    place of Keras' ones."""
    from export.prequant import rebuilt
    _, _, _, model = exported
    new = rebuilt(model)
    bilstm = [la for m in new.layers if hasattr(m, "layers") for la in m.layers if la.name == "speech_bilstm"]
    assert [type(la).__name__ for la in bilstm] == ["UnrolledBiLSTM"] and bilstm[0].merge_directions
    face = [la.name for la in new.get_layer("face_branch").layers]
    assert "face_conv1" in face and "face_stem_conv" not in face       # the stem fold is measured, not shipped
    folded = rebuilt(model, face_stem=True)
    assert "face_stem_conv" in [la.name for la in folded.get_layer("face_branch").layers]
    lm, faces = _inputs(7)
    a = model({"log_mel": lm, "faces": faces})
    for g in (new, folded):
        b = g({"log_mel": lm, "faces": faces})
        for k in a:
            np.testing.assert_allclose(np.asarray(b[k]), np.asarray(a[k]), atol=1e-5)
