"""Keras -> device artifacts, one small function per target (the export table).

The shipped three-head model (``edge-train ship``) goes out as ONE graph: truncated YAMNet (real
weights) + speech head + face CNN (5 faces) + fusion head, at batch 1, builtin ops only.

| target        | file                      | how                                                            |
|---------------|---------------------------|----------------------------------------------------------------|
| saved_model   | <work>/saved_model/       | keras.export.ExportArchive, endpoint ``serve`` (static shapes)  |
| tflite_float  | av_emotion_float32.tflite | TFLiteConverter.from_saved_model                               |
| tflite_int8   | av_emotion_int8.tflite    | full-integer int8 (TFLITE_BUILTINS_INT8), int8 in/out, real     |
|               |                           | representative data; the device reads scales from the model     |
| onnx          | av_emotion.onnx           | python -m tf2onnx.convert on the SavedModel, opset 17           |
"""
from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np

from edge.params import Params

log = logging.getLogger(__name__)

INT8_NAME = "av_emotion_int8.tflite"
FLOAT_NAME = "av_emotion_float32.tflite"
ONNX_NAME = "av_emotion.onnx"


def input_signature(p: Params = Params()):
    import tensorflow as tf
    return [tf.TensorSpec((1, p.patch_frames, p.mel_bands), tf.float32, name="log_mel"),
            tf.TensorSpec((1, p.faces_per_patch, p.face_size, p.face_size, 1), tf.float32, name="faces")]


def serving_fn(model):
    """(log_mel, faces) -> {"fused", "speech", "face"} with the model in inference mode."""
    def serve(log_mel, faces):
        return model({"log_mel": log_mel, "faces": faces}, training=False)
    return serve


def to_saved_model(model, out: Path, p: Params = Params()) -> Path:
    import keras
    shutil.rmtree(out, ignore_errors=True)
    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint("serve", serving_fn(model), input_signature=input_signature(p))
    archive.write_out(str(out), verbose=False)
    return out


def to_tflite_float(saved_model: Path, out: Path) -> Path:
    import tensorflow as tf
    conv = tf.lite.TFLiteConverter.from_saved_model(str(saved_model), signature_keys=["serve"])
    conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    return strip_names(_write(out, conv.convert()))


def to_tflite_int8(saved_model: Path, out: Path, representative: Callable[[], Iterable[dict]]) -> Path:
    """Full-integer int8 with int8 inputs/outputs; builtin ops only (no Flex)."""
    import tensorflow as tf
    conv = tf.lite.TFLiteConverter.from_saved_model(str(saved_model), signature_keys=["serve"])
    conv.optimizations = [tf.lite.Optimize.DEFAULT]
    conv.representative_dataset = representative
    conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    conv.inference_input_type = conv.inference_output_type = tf.int8
    return strip_names(_write(out, conv.convert()))


def fixed_batch(model, shape: tuple[int, ...]):
    """``model`` wrapped with a fixed input shape ``shape`` (batch included), for the benchmark graphs."""
    import keras
    x = keras.Input(shape[1:], batch_size=shape[0])
    return keras.Model(x, model(x))


def int8_random_calibration(model, shape: tuple[int, ...], rng: np.random.Generator, scale: float = 1.0,
                            samples: int = 32) -> bytes:
    """Full-integer int8 TFLite bytes of a fixed-shape Keras ``model`` calibrated on uniform random inputs in
    [0, scale): for latency and size benchmarks only (the shipped graph calibrates on real data)."""
    import tensorflow as tf
    conv = tf.lite.TFLiteConverter.from_keras_model(model)
    conv.optimizations = [tf.lite.Optimize.DEFAULT]
    conv.representative_dataset = lambda: ([scale * rng.random(shape).astype(np.float32)] for _ in range(samples))
    conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    conv.inference_input_type = conv.inference_output_type = tf.int8
    return conv.convert()


def to_onnx(saved_model: Path, out: Path, opset: int = 17) -> Path:
    """tf2onnx on the SavedModel's ``serve`` signature (variables frozen into constants)."""
    import subprocess
    import sys
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp.onnx")
    cmd = [sys.executable, "-m", "tf2onnx.convert", "--saved-model", str(saved_model), "--signature_def", "serve",
           "--opset", str(opset), "--output", str(tmp)]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0 or not tmp.is_file():
        raise RuntimeError(f"tf2onnx failed on {saved_model}: {r.stderr[-2000:]}")
    tmp.replace(out)
    log.info("wrote %s (%.1f kB)", out, out.stat().st_size / 1e3)
    return out


def strip_names(path: Path) -> Path:
    """Drop tensor names except the graph's inputs/outputs (the signature keeps the I/O names): the
    names of ~1000 intermediate tensors are a sizeable share of a small int8 file."""
    from tensorflow.lite.tools import flatbuffer_utils as fu
    m = fu.read_model(str(path))
    m.description = None
    for sg in m.subgraphs:
        keep = set(int(i) for i in sg.inputs) | set(int(i) for i in sg.outputs)
        for i, t in enumerate(sg.tensors):
            if i not in keep:
                t.name = None
    fu.write_model(m, str(path))
    return path


def _write(out: Path, data: bytes) -> Path:
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(out.suffix + ".tmp")
    tmp.write_bytes(data)
    tmp.replace(out)
    log.info("wrote %s (%.1f kB)", out, len(data) / 1e3)
    return out


def calibration_arrays(representative: Callable[[], Iterable[dict]]) -> tuple[np.ndarray, np.ndarray]:
    """The representative dataset as two arrays: log_mel (n, 96, 64), faces (n, 5, 60, 60, 1)."""
    xs = list(representative())
    return np.concatenate([x["log_mel"] for x in xs]), np.concatenate([x["faces"] for x in xs])


def representative_data(log_mel: np.ndarray, labels: np.ndarray, faces_u8: np.ndarray, face_y: np.ndarray,
                        n: int = 200, p: Params = Params(), seed: int = 0) -> Callable[[], Iterable[dict]]:
    """Real calibration inputs: speaker-normalised RAVDESS patches with label-paired FER2013 faces."""
    from training.face import to_model_input
    from training.ship import paired_faces
    rng = np.random.default_rng(seed)
    pick = rng.choice(len(log_mel), min(n, len(log_mel)), replace=False)
    fidx = paired_faces(labels[pick], face_y, p.faces_per_patch, rng, p)

    def gen():
        for i, row in zip(pick, fidx, strict=True):
            yield {"log_mel": log_mel[i:i + 1].astype(np.float32),
                   "faces": to_model_input(faces_u8[row], p)[None]}          # (1, 5, 60, 60, 1)
    return gen


def export_all(model, work: Path, models_dir: Path, representative, onnx_dir: Path | None = None,
               p: Params = Params(), int8_model=None) -> dict:
    """Every target; returns {target: {"path", "bytes", "seconds"}}. ``int8_model`` (default ``model``): the
    graph the int8 file is converted from (the device graph's bias-corrected twin, export/prequant.py)."""
    out = {}
    t = time.time()
    sm = to_saved_model(model, work / "saved_model", p)
    out["saved_model"] = {"path": str(sm), "seconds": time.time() - t}
    sm8 = sm if int8_model is None else to_saved_model(int8_model, work / "saved_model_int8", p)
    for name, fn in (("tflite_float", lambda: to_tflite_float(sm, (onnx_dir or work) / FLOAT_NAME)),
                     ("tflite_int8", lambda: to_tflite_int8(sm8, models_dir / INT8_NAME, representative)),
                     ("onnx", lambda: to_onnx(sm, (onnx_dir or work) / ONNX_NAME))):
        t = time.time()
        f = fn()
        out[name] = {"path": str(f), "bytes": f.stat().st_size, "seconds": time.time() - t}
        log.info("%s: %.1f kB in %.1f s", name, f.stat().st_size / 1e3, out[name]["seconds"])
    return out
