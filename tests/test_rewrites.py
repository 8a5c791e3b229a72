"""export/rewrites.py: the graph rewrites equal the original graphs in float, and the LSTM one
removes the per-step input projections (and, directions merged, half the per-step tensors) from the
int8 graph."""
from __future__ import annotations

import numpy as np
import pytest

from edge.params import Params


def _randomize_bn(model, rng):
    for layer in model.layers:
        if type(layer).__name__ == "BatchNormalization":
            g, b, m, v = layer.get_weights()
            layer.set_weights([rng.uniform(0.5, 2.0, g.shape).astype(np.float32),
                               rng.normal(0, 0.3, b.shape).astype(np.float32),
                               rng.normal(0, 0.3, m.shape).astype(np.float32),
                               rng.uniform(0.2, 3.0, v.shape).astype(np.float32)])


@pytest.fixture(scope="module")
def speech_head():
    import keras

    from training.speech import SpeechRecipe, build_head
    keras.utils.set_random_seed(0)
    head = build_head(SpeechRecipe(conv_filters=(8, 8), lstm_units=8, attention_units=8))
    _randomize_bn(head, np.random.default_rng(0))
    return head


@pytest.mark.parametrize("merge", [False, True])
def test_batched_bilstm_equals_keras_lstm(speech_head, merge):
    from export.rewrites import batched_bilstm
    new = batched_bilstm(speech_head, merge_directions=merge)
    assert new.get_layer("speech_bilstm") is not speech_head.get_layer("speech_bilstm")
    x = np.random.default_rng(1).normal(0, 1.5, (6, 24, 16, 64)).astype(np.float32)
    ref, got = speech_head.predict(x, verbose=0), new.predict(x, verbose=0)
    np.testing.assert_allclose(got, ref, atol=1e-5)
    assert np.abs(ref - ref.mean(0)).max() > 1e-3          # the inputs do move the output


def test_batched_bilstm_drops_per_step_projections_in_int8(speech_head):
    from export.convert import fixed_batch, int8_random_calibration
    from export.rewrites import _ops, batched_bilstm
    shape = (1, 24, 16, 64)
    a = int8_random_calibration(fixed_batch(speech_head, shape), shape, np.random.default_rng(0), 2.0)
    b, m = (int8_random_calibration(fixed_batch(batched_bilstm(speech_head, merge_directions=merge), shape), shape,
                                    np.random.default_rng(0), 2.0) for merge in (False, True))
    # 12 steps x 2 directions: each loses its input FULLY_CONNECTED, a RESHAPE and an ADD
    assert _ops(a) - _ops(b) >= 2 * 12 * 2 and len(b) < len(a)
    # merged: one ADD, SPLIT, 3 LOGISTIC, 2 TANH, 3 MUL and (after step 0) 1 ADD serve both directions in
    # 12 steps; each of the 11 recurrent steps gains a SPLIT and a CONCATENATION
    assert _ops(b) - _ops(m) >= 12 * 10 - 11 * 2 - 12 and len(m) < len(b)
    # the directions are sliced apart on the last axis only (a middle-axis int8 STRIDED_SLICE of a 4-D
    # tensor is TFLite's slow path: ~15 us each, measured)
    assert not _strided_slices_off_last_axis(m)


def _strided_slices_off_last_axis(buf: bytes) -> list[tuple]:
    """Input shapes of the int8 STRIDED_SLICE ops in ``buf`` that cut an axis other than the last."""
    from ai_edge_litert.interpreter import Interpreter
    it = Interpreter(model_content=buf)
    shapes = {t["index"]: tuple(t["shape"]) for t in it.get_tensor_details()}
    bad = []
    for op in it._get_ops_details():
        if op["op_name"] == "STRIDED_SLICE":
            x, y = shapes[op["inputs"][0]], shapes[op["outputs"][0]]
            if len(x) != len(y) or x[:-1] != y[:-1]:
                bad.append(x)
    return bad


@pytest.mark.parametrize("rewrite, stem_out", [("face_stem_s2d", "face_stem_out"), ("face_stem_cols", "face_pool1")])
def test_face_stem_rewrites_equal_conv_bn_relu_pool(rewrite, stem_out):
    import keras

    import export.rewrites as rw
    from training.face import QUICK, build_face_model
    keras.utils.set_random_seed(0)
    face = build_face_model(QUICK.replace(layers=(("conv", 8),) + QUICK.layers[1:]))    # the shipped stem width
    _randomize_bn(face, np.random.default_rng(2))
    new = getattr(rw, rewrite)(face)
    assert "face_conv1" not in [la.name for la in new.layers]
    x = np.random.default_rng(3).random((5, 60, 60, 1)).astype(np.float32)
    np.testing.assert_allclose(new.predict(x, verbose=0), face.predict(x, verbose=0), atol=1e-5)
    # the stem's own pooled output equals the original first block's, pixel for pixel
    pool_ref = keras.Model(face.input, face.get_layer("face_pool1").output).predict(x, verbose=0)
    pool_new = keras.Model(new.input, new.get_layer(stem_out).output).predict(x, verbose=0)
    np.testing.assert_allclose(pool_new, pool_ref, atol=1e-5)


def test_face_stem_cols_is_one_conv_on_folded_columns():
    import keras

    from export.rewrites import face_stem_cols
    from training.face import QUICK, build_face_model
    face = build_face_model(QUICK.replace(layers=(("conv", 8),) + QUICK.layers[1:]))
    new = face_stem_cols(face, group=2)
    conv = new.get_layer("face_stem_conv")
    assert conv.input.shape[1:] == (60, 30, 2) and conv.output.shape[-1] == 16      # one full 16-filter tile
    with pytest.raises(ValueError, match="not a multiple of the column group 7"):
        face_stem_cols(face, group=7)
    assert keras.Model(new.input, new.get_layer("face_stem_out").output).output.shape[1:] == (60, 60, 8)


def test_face_stem_s2d_rejects_other_stems():
    import keras
    from keras import layers as L

    from export.rewrites import face_stem_s2d
    x_in = keras.Input((60, 60, 3))
    x = L.Conv2D(4, 3, padding="same", use_bias=False, name="face_conv1")(x_in)
    x = L.BatchNormalization(name="face_bn1")(x)
    x = L.MaxPooling2D(2, name="face_pool1")(L.ReLU()(x))
    with pytest.raises(ValueError, match="face_conv1: expected a bias-free 3x3 conv on one channel"):
        face_stem_s2d(keras.Model(x_in, x))
    assert Params().face_size % 2 == 0
