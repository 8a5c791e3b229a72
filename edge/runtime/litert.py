"""LiteRT (TFLite) backend. Import ladder: ai_edge_litert -> tflite_runtime -> tensorflow.lite.

The device installs ``ai-edge-litert`` (tflite-runtime 2.14 is abandoned and breaks on numpy 2).
TensorFlow is only tried last, so that a workstation without LiteRT still works; the device
never has it.
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from edge.runtime import ModelError

log = logging.getLogger(__name__)


def interpreter_class():
    """The first importable TFLite ``Interpreter`` class of the ladder."""
    try:
        from ai_edge_litert.interpreter import Interpreter
        return Interpreter
    except ImportError:
        pass
    try:  # pragma: no cover - legacy runtime
        from tflite_runtime.interpreter import Interpreter
        return Interpreter
    except ImportError:
        pass
    try:  # pragma: no cover - workstation fallback
        import importlib
        return importlib.import_module("tensorflow").lite.Interpreter
    except ImportError:
        raise ModelError("no TFLite runtime: pip install ai-edge-litert") from None


class LiteRTModel:
    """A .tflite model with named inputs/outputs; quantization read from the model at run time."""

    def __init__(self, path: str | Path, threads: int = 1, preserve_all_tensors: bool = False):
        self.path = Path(path)
        Interpreter = interpreter_class()
        kwargs = {"model_path": str(self.path), "num_threads": threads}
        if preserve_all_tensors:
            kwargs["experimental_preserve_all_tensors"] = True
        try:
            self.interpreter = Interpreter(**kwargs)
            self.interpreter.allocate_tensors()
        except (ValueError, RuntimeError) as e:
            raise ModelError(f"cannot load TFLite model {self.path}: {e}") from e
        self._inputs = self.interpreter.get_input_details()
        self._outputs = self.interpreter.get_output_details()
        self.input_names = [d["name"] for d in self._inputs]
        self.output_names = [d["name"] for d in self._outputs]

    def input_shape(self, i: int = 0) -> tuple[int, ...]:
        return tuple(int(s) for s in self._inputs[i]["shape"])

    def resize_input(self, shape: tuple[int, ...], i: int = 0) -> None:
        """Resize a dynamic input (e.g. MTCNN's P-net per pyramid scale)."""
        if self.input_shape(i) != tuple(shape):
            self.interpreter.resize_tensor_input(self._inputs[i]["index"], list(shape))
            self.interpreter.allocate_tensors()
            self._inputs = self.interpreter.get_input_details()
            self._outputs = self.interpreter.get_output_details()

    def predict(self, inputs: dict[str, np.ndarray] | np.ndarray) -> dict[str, np.ndarray]:
        if isinstance(inputs, np.ndarray):
            inputs = {self.input_names[0]: inputs}
        for d in self._inputs:
            if d["name"] not in inputs:
                raise ModelError(f"{self.path}: missing input {d['name']!r} (have {list(inputs)})")
            self.interpreter.set_tensor(d["index"], _quantize(np.asarray(inputs[d["name"]]), d))
        self.interpreter.invoke()
        return {d["name"]: _dequantize(self.interpreter.get_tensor(d["index"]), d)
                for d in self._outputs}


def _quantize(x: np.ndarray, detail: dict) -> np.ndarray:
    dtype = detail["dtype"]
    if dtype in (np.int8, np.uint8):
        scale, zero = detail["quantization"]
        info = np.iinfo(dtype)
        return np.clip(np.round(x / scale + zero), info.min, info.max).astype(dtype)
    return x.astype(dtype, copy=False)


def _dequantize(x: np.ndarray, detail: dict) -> np.ndarray:
    if detail["dtype"] in (np.int8, np.uint8):
        scale, zero = detail["quantization"]
        return (x.astype(np.float32) - zero) * scale
    return x.copy()
