"""LiteRT (TFLite) backend. Import ladder: ai_edge_litert -> tflite_runtime -> tensorflow.lite.

The device installs ``ai-edge-litert`` (tflite-runtime 2.14 is abandoned and breaks on numpy 2).
TensorFlow is only tried last, so that a workstation without LiteRT still works; the device
never has it.
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from edge.runtime import ModelError, as_u8

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


EDGETPU_LIBRARY = "libedgetpu.so.1"


def load_delegate(name: str):
    """A LiteRT delegate by name. ``edgetpu``: Coral's libedgetpu (the model must be compiled with
    edgetpu_compiler for ops to run on the TPU; uncompiled ops run on the CPU)."""
    if name != "edgetpu":
        raise ModelError(f"unknown delegate {name!r} (known: edgetpu)")
    try:
        from ai_edge_litert.interpreter import load_delegate as _load
    except ImportError:  # pragma: no cover - legacy runtime
        try:
            from tflite_runtime.interpreter import load_delegate as _load
        except ImportError:
            raise ModelError("the edgetpu delegate needs ai-edge-litert (pip install ai-edge-litert)") from None
    try:
        import ctypes
        ctypes.CDLL(EDGETPU_LIBRARY)          # probe first: a failed Delegate() logs a spurious __del__ error
        return _load(EDGETPU_LIBRARY)
    except (ValueError, OSError, RuntimeError) as e:
        raise ModelError(f"Edge TPU delegate unavailable ({EDGETPU_LIBRARY}: {e}). Install libedgetpu1-std from "
                         "Coral's apt repository and plug in the accelerator, or run on the CPU without "
                         "--delegate edgetpu") from None


class LiteRTModel:
    """A .tflite model with named inputs/outputs; quantization read from the model at run time."""

    def __init__(self, path: str | Path, threads: int = 1, preserve_all_tensors: bool = False,
                 delegate: str | None = None):
        self.path = Path(path)
        Interpreter = interpreter_class()
        kwargs = {"model_path": str(self.path), "num_threads": threads}
        if preserve_all_tensors:
            kwargs["experimental_preserve_all_tensors"] = True
        self.delegate = delegate
        if delegate:
            kwargs["experimental_delegates"] = [load_delegate(delegate)]
        try:
            self.interpreter = Interpreter(**kwargs)
            self.interpreter.allocate_tensors()
        except (ValueError, RuntimeError) as e:
            raise ModelError(f"cannot load TFLite model {self.path}: {e}") from e
        self._refresh()

    def _refresh(self) -> None:
        """Input/output details, named by the model's first signature when it has one (else tensor names)."""
        sigs = self.interpreter.get_signature_list() if hasattr(self.interpreter, "get_signature_list") else {}
        if sigs:
            runner = self.interpreter.get_signature_runner(next(iter(sigs)))
            self._inputs = [dict(d, name=k) for k, d in runner.get_input_details().items()]
            self._outputs = [dict(d, name=k) for k, d in runner.get_output_details().items()]
        else:
            self._inputs = self.interpreter.get_input_details()
            self._outputs = self.interpreter.get_output_details()
        self.input_names = [d["name"] for d in self._inputs]
        self.output_names = [d["name"] for d in self._outputs]
        self._u8_codes: dict[tuple[str, float], tuple[np.ndarray, bool]] = {}
        # per call: (name, index, shape, detail) of each input; (name, index, 256-entry dequantisation table
        # of an int8 / uint8 output, or None) of each output
        self._in_plan = [(d["name"], d["index"], tuple(int(s) for s in d["shape"]), d) for d in self._inputs]
        self._out_plan = [(d["name"], d["index"], _dequantization_table(d)) for d in self._outputs]

    def input_detail(self, name: str) -> dict:
        return next(d for d in self._inputs if d["name"] == name)

    def encode_u8(self, name: str, u8: np.ndarray, full_scale: float = 255.0) -> np.ndarray:
        """``u8`` (uint8 pixels) as the input ``name`` takes the value ``u8 / full_scale``: float32 for a float
        input; for a quantized one the very integers ``predict`` would make of that float (a 256-entry table
        built with the same arithmetic), without the float round trip. When the table is the identity up to
        the int8 offset (scale 1 / full_scale, zero point -128: the shipped faces input) it is one XOR."""
        u8 = as_u8(self.path, name, u8)
        d = self.input_detail(name)
        if d["dtype"] not in (np.int8, np.uint8):
            return u8.astype(np.float32) / np.float32(full_scale)
        key = (name, float(full_scale))
        if key not in self._u8_codes:
            table = _quantize(np.arange(256, dtype=np.float32) / np.float32(full_scale), d)
            offset = 0x80 if d["dtype"] == np.int8 else 0
            self._u8_codes[key] = table, bool((table.view(np.uint8) == (np.arange(256) ^ offset)).all())
        table, xor = self._u8_codes[key]
        if xor:
            return (u8 ^ np.uint8(0x80)).view(np.int8) if d["dtype"] == np.int8 else u8
        return table[u8]

    def input_shape(self, i: int = 0) -> tuple[int, ...]:
        return tuple(int(s) for s in self._inputs[i]["shape"])

    def resize_input(self, shape: tuple[int, ...], i: int = 0) -> None:
        """Resize a dynamic input (e.g. MTCNN's P-net per pyramid scale)."""
        if self.input_shape(i) != tuple(shape):
            self.interpreter.resize_tensor_input(self._inputs[i]["index"], list(shape))
            self.interpreter.allocate_tensors()
            self._refresh()

    def predict(self, inputs: dict[str, np.ndarray] | np.ndarray) -> dict[str, np.ndarray]:
        if isinstance(inputs, np.ndarray):
            inputs = {self.input_names[0]: inputs}
        it = self.interpreter
        for name, index, shape, d in self._in_plan:
            if name not in inputs:
                raise ModelError(f"{self.path}: missing input {name!r} (have {list(inputs)})")
            x = np.asarray(inputs[name])
            if x.shape != shape:
                raise ModelError(f"{self.path}: input {name!r} has shape {x.shape}, the model takes {shape}")
            it.set_tensor(index, _quantize(x, d))
        it.invoke()
        return {name: it.get_tensor(index).copy() if table is None else table[it.get_tensor(index).view(np.uint8)]
                for name, index, table in self._out_plan}


_LIMITS = {np.dtype(t).type: (np.iinfo(t).min, np.iinfo(t).max) for t in (np.int8, np.uint8)}


def _quantize(x: np.ndarray, detail: dict) -> np.ndarray:
    """Float -> the input's type; an array already of a quantized input's integer type passes as it is."""
    dtype = detail["dtype"]
    if dtype in (np.int8, np.uint8):
        if x.dtype == dtype:
            return x
        scale, zero = detail["quantization"]
        lo, hi = _LIMITS[dtype]
        y = x / scale                     # one temporary, then in place: round(x / scale + zero), clipped
        y += zero
        np.rint(y, out=y)
        np.clip(y, lo, hi, out=y)
        return y.astype(dtype)
    return x.astype(dtype, copy=False)


def _dequantize(x: np.ndarray, detail: dict) -> np.ndarray:
    if detail["dtype"] in (np.int8, np.uint8):
        scale, zero = detail["quantization"]
        return (x.astype(np.float32) - zero) * scale
    return x.copy()


def _dequantization_table(detail: dict) -> np.ndarray | None:
    """For an int8 / uint8 tensor, the float32 value of each of its 256 codes, indexed by the code's bits as
    uint8 (``table[x.view(np.uint8)]`` equals ``_dequantize(x)`` bit for bit: one gather, not three array
    operations); None for any other type."""
    dtype = detail["dtype"]
    if dtype not in (np.int8, np.uint8):
        return None
    return _dequantize(np.arange(256, dtype=np.uint8).view(dtype), detail)
