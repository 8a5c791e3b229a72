"""ONNX Runtime backend (workstation parity checks and x86 boxes; the Pi uses LiteRT).

    model = load_model("av_emotion.onnx", backend="onnx", threads=1)
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from edge.runtime import ModelError, as_u8


class OnnxModel:
    """An .onnx model with named inputs/outputs on onnxruntime's CPU provider."""

    def __init__(self, path: str | Path, threads: int = 1):
        self.path = Path(path)
        try:
            import onnxruntime as ort
        except ImportError:
            raise ModelError("the onnx backend needs onnxruntime: pip install onnxruntime") from None
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        try:
            self.session = ort.InferenceSession(str(self.path), opts, providers=["CPUExecutionProvider"])
        except Exception as e:  # onnxruntime raises its own exception types
            raise ModelError(f"cannot load ONNX model {self.path}: {e}") from e
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_names = [o.name for o in self.session.get_outputs()]

    def encode_u8(self, name: str, u8: np.ndarray, full_scale: float = 255.0) -> np.ndarray:
        """``u8`` (uint8 pixels) as the float input ``u8 / full_scale``."""
        return as_u8(self.path, name, u8).astype(np.float32) / np.float32(full_scale)

    def predict(self, inputs: dict[str, np.ndarray] | np.ndarray) -> dict[str, np.ndarray]:
        if isinstance(inputs, np.ndarray):
            inputs = {self.input_names[0]: inputs}
        missing = [n for n in self.input_names if n not in inputs]
        if missing:
            raise ModelError(f"{self.path}: missing inputs {missing} (have {list(inputs)})")
        feed = {n: np.asarray(inputs[n], np.float32) for n in self.input_names}
        return dict(zip(self.output_names, self.session.run(None, feed), strict=True))
