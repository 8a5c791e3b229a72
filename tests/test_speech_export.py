"""The speech model (trunk + head) is static-shape and converts to TFLite at batch 1 (unrolled BiLSTM)."""
import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")


def test_full_speech_model_converts_to_tflite(yamnet_weights, tmp_path):
    from edge.runtime import load_model
    from training.speech import SpeechRecipe, build_head, build_inference_model
    head = build_head(SpeechRecipe())
    model = build_inference_model(yamnet_weights, head, np.zeros(64, np.float32), np.ones(64, np.float32))
    assert model.input_shape == (1, 96, 64) and model.output_shape == (1, 8)
    conv = tf.lite.TFLiteConverter.from_keras_model(model)
    f = tmp_path / "speech.tflite"
    f.write_bytes(conv.convert())
    lite = load_model(f)
    x = np.random.default_rng(0).normal(-4, 2, (1, 96, 64)).astype(np.float32)
    out = next(iter(lite.predict(x).values()))
    np.testing.assert_allclose(out, model(x).numpy(), atol=1e-4)
    assert abs(out.sum() - 1) < 1e-4


def test_full_speech_model_converts_to_full_int8(yamnet_weights, tmp_path):
    """Unrolled BiLSTM: full-integer int8 with builtin ops only, batch 1 (the default LSTM would not)."""
    from edge.runtime import load_model
    from training.speech import SpeechRecipe, build_head, build_inference_model
    model = build_inference_model(yamnet_weights, build_head(SpeechRecipe()), np.zeros(64, np.float32),
                                  np.ones(64, np.float32))
    rng = np.random.default_rng(0)

    def representative():
        for _ in range(16):
            yield [rng.normal(-4, 2, (1, 96, 64)).astype(np.float32)]
    conv = tf.lite.TFLiteConverter.from_keras_model(model)
    conv.optimizations = [tf.lite.Optimize.DEFAULT]
    conv.representative_dataset = representative
    conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    conv.inference_input_type = conv.inference_output_type = tf.int8
    f = tmp_path / "speech_int8.tflite"
    f.write_bytes(conv.convert())
    lite = load_model(f)                       # quantization parameters read from the model at run time
    x = rng.normal(-4, 2, (1, 96, 64)).astype(np.float32)
    out = next(iter(lite.predict(x).values()))
    np.testing.assert_allclose(out, model(x).numpy(), atol=0.03)
    assert f.stat().st_size < 0.6e6
