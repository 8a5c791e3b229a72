"""Inference backends behind one small interface.

    model = load_model("edge/models/mtcnn_pnet.tflite", backend="litert", threads=1)
    model = load_model("edge/models/av_emotion_int8.tflite", delegate="edgetpu")   # Coral: needs libedgetpu
    outputs = model.predict({"input": x})   # -> dict[str, np.ndarray]
    x = model.encode_u8("faces", grey)      # uint8 pixels meaning grey / 255, in the input's own type

``predict`` takes float arrays, or for a quantized input an array already of its integer type (e.g. from
``encode_u8``), which is passed as it is.

One backend, one file. Imports are lazy, with an actionable error when a runtime is missing.
"""
from __future__ import annotations

from pathlib import Path
from typing import Protocol

import numpy as np


class ModelError(RuntimeError):
    """A model file is missing, corrupt, or its runtime is not installed."""


class Backend(Protocol):
    input_names: list[str]
    output_names: list[str]

    def predict(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]: ...

    def encode_u8(self, name: str, u8: np.ndarray, full_scale: float = 255.0) -> np.ndarray: ...


def as_u8(path: Path, name: str, u8: np.ndarray) -> np.ndarray:
    """``u8`` as a uint8 array for every backend's ``encode_u8``, or a clear error naming the model and input."""
    u8 = np.asarray(u8)
    if u8.dtype != np.uint8:
        raise ValueError(f"{path}: encode_u8 needs uint8 pixels for input {name!r}, got {u8.dtype}")
    return u8


def load_model(path: str | Path, backend: str = "litert", threads: int = 1, **kwargs) -> Backend:
    """Load a model file with the named backend (``litert`` for .tflite)."""
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"model file not found: {path}")
    if backend == "litert":
        from edge.runtime.litert import LiteRTModel
        return LiteRTModel(path, threads=threads, **kwargs)
    if backend == "onnx":
        from edge.runtime.onnx import OnnxModel
        return OnnxModel(path, threads=threads)
    raise ModelError(f"unknown backend {backend!r} for {path} (known: litert, onnx)")
