"""edge/runtime + edge/model on the shipped int8 graph: the uint8 face path gives exactly the integers of
the float path, quantized arrays pass through, and infer's result does not depend on the path taken."""
from __future__ import annotations

import numpy as np
import pytest

from edge.model import DEFAULT_MODEL, EmotionModel
from edge.runtime.litert import LiteRTModel, _dequantization_table, _dequantize, _quantize

pytestmark = pytest.mark.skipif(not DEFAULT_MODEL.is_file(), reason=f"no shipped model at {DEFAULT_MODEL}")


@pytest.fixture(scope="module")
def model():
    return EmotionModel(threads=1)


def test_encode_u8_equals_the_float_path_for_every_pixel_value(model):
    b = model.backend
    u8 = np.arange(256, dtype=np.uint8)
    want = _quantize(u8.astype(np.float32) / 255.0, b.input_detail("faces"))
    got = b.encode_u8("faces", u8)
    assert got.dtype == np.int8 and np.array_equal(got, want)
    assert b._u8_codes[("faces", 255.0)][1], "the shipped faces input (scale 1/255, zero -128) takes the XOR path"


def test_encode_u8_table_path_for_another_quantization(model, monkeypatch):
    b = model.backend
    d = dict(b.input_detail("faces"), quantization=(0.002, -7))
    monkeypatch.setattr(b, "input_detail", lambda name: d)
    monkeypatch.setattr(b, "_u8_codes", {})
    u8 = np.random.default_rng(0).integers(0, 256, (5, 60, 60), dtype=np.uint8)
    got = b.encode_u8("faces", u8)
    assert not b._u8_codes[("faces", 255.0)][1]
    assert np.array_equal(got, _quantize(u8.astype(np.float32) / 255.0, d))
    assert got.min() == -7 and got.max() == 127          # 1 / 0.002 = 500 steps: clipped at 127


def test_encode_u8_rejects_other_types(model):
    with pytest.raises(ValueError, match="uint8 pixels for input 'faces'"):
        model.backend.encode_u8("faces", np.zeros((5, 60, 60), np.float32))


@pytest.mark.parametrize("dtype, quant", [(np.int8, (0.00390625, -128)), (np.int8, (0.0371, 5)),
                                          (np.uint8, (0.02, 131))])
def test_dequantization_table_equals_dequantize_bit_for_bit(dtype, quant):
    d = {"dtype": dtype, "quantization": quant}
    codes = np.arange(256, dtype=np.uint8).view(dtype).reshape(4, 8, 8)
    assert np.array_equal(_dequantization_table(d)[codes.view(np.uint8)], _dequantize(codes, d))
    assert _dequantization_table({"dtype": np.float32, "quantization": (0.0, 0)}) is None


def test_predict_outputs_are_the_dequantized_output_tensors(model):
    b = model.backend
    rng = np.random.default_rng(4)
    out = b.predict({"log_mel": rng.normal(0, 2, (1, 96, 64)).astype(np.float32),
                     "faces": b.encode_u8("faces", rng.integers(0, 256, (1, 5, 60, 60, 1), dtype=np.uint8))})
    for d in b._outputs:
        raw = b.interpreter.get_tensor(d["index"])
        assert out[d["name"]].dtype == np.float32 and np.array_equal(out[d["name"]], _dequantize(raw, d))
    assert np.allclose(out["fused"].sum(-1), 1, atol=0.05)       # int8 softmax codes: distributions


def test_quantized_arrays_pass_through_predict(model):
    b = model.backend
    rng = np.random.default_rng(1)
    lm = rng.normal(0, 2, (1, 96, 64)).astype(np.float32)
    u8 = rng.integers(0, 256, (1, 5, 60, 60, 1), dtype=np.uint8)
    a = b.predict({"log_mel": lm, "faces": u8.astype(np.float32) / 255.0})
    q = b.predict({"log_mel": _quantize(lm, b.input_detail("log_mel")), "faces": b.encode_u8("faces", u8)})
    for k in a:
        assert np.array_equal(a[k], q[k]), k


@pytest.mark.parametrize("k", [1, 3, 5, 9])
def test_infer_uint8_faces_equal_the_float_path(model, k):
    rng = np.random.default_rng(k)
    lm = rng.normal(0, 2, (96, 64)).astype(np.float32)
    faces = rng.integers(0, 256, (k, 60, 60), dtype=np.uint8)
    fast = model.infer(lm, faces)
    slow = model.infer(lm, faces.astype(np.float32))                 # float grey 0..255: the division path
    assert set(fast) == set(slow) == {"fused", "speech", "face"}
    for key in fast:
        assert np.array_equal(fast[key], slow[key]), key
    if k == 5:                                                       # 5 faces are used as they are, in order
        assert np.array_equal(model.pick_faces(faces), faces)


def test_litert_model_is_the_backend(model):
    assert isinstance(model.backend, LiteRTModel)
