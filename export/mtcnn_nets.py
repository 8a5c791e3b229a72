"""Convert the ``mtcnn`` package's P-, R- and O-nets (Keras, v1.0.0) to float32 TFLite files.

    python -m export.mtcnn_nets --out edge/models

Writes ``mtcnn_pnet.tflite`` (input (1, H, W, 3), H and W dynamic: resized per pyramid scale),
``mtcnn_rnet.tflite`` (input (n, 24, 24, 3)) and ``mtcnn_onet.tflite`` (input (n, 48, 48, 3)),
n dynamic. Inputs are RGB normalised as (x - 127.5) / 128, exactly what the package feeds
its nets. Output tensor names and order are the converter's, not Keras'; the edge side picks
outputs by their last dimension (P: 4 box offsets, 2 softmax; R: 4, 2; O: 4, 10 landmarks,
2), which is unique per net. Every export logs size and time and checks the TFLite net against the Keras net
on random inputs (max abs difference, must be <= ``--tol``).
"""
from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

import numpy as np
import tensorflow as tf

from edge.runtime import load_model

log = logging.getLogger(__name__)

# name -> (stage class in mtcnn.stages, input shape (None = dynamic), default shape stored in the
# file (a dynamic dim is stored as 1, which P-net's valid convs cannot prepare), parity shapes)
NETS: dict[str, tuple[str, tuple[int | None, ...], tuple[int, ...], tuple[tuple[int, ...], ...]]] = {
    "pnet": ("StagePNet", (1, None, None, 3), (1, 12, 12, 3),
             ((1, 12, 12, 3), (1, 45, 67, 3), (1, 216, 384, 3))),
    "rnet": ("StageRNet", (None, 24, 24, 3), (1, 24, 24, 3), ((1, 24, 24, 3), (7, 24, 24, 3))),
    "onet": ("StageONet", (None, 48, 48, 3), (1, 48, 48, 3), ((1, 48, 48, 3), (5, 48, 48, 3))),
}


def keras_net(name: str) -> tf.keras.Model:
    """The ``mtcnn`` package's Keras net with its bundled weights loaded."""
    import mtcnn.stages

    stage_class = getattr(mtcnn.stages, NETS[name][0])
    return stage_class().model


def convert(model: tf.keras.Model, input_shape: tuple[int | None, ...],
            default_shape: tuple[int, ...]) -> bytes:
    """Float32 TFLite flatbuffer of ``model``: dynamic input signature, ``default_shape`` stored."""
    from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

    fn = tf.function(lambda x: model(x), input_signature=[tf.TensorSpec(input_shape, tf.float32)])
    # freeze: otherwise the Keras 3 variables become uninitialised resource variables (NaN out)
    frozen = convert_variables_to_constants_v2(fn.get_concrete_function())
    converter = tf.lite.TFLiteConverter.from_concrete_functions([frozen], model)
    converter.optimizations = []  # float32 weights, bit-faithful to Keras up to op order
    return set_default_input_shape(converter.convert(), default_shape)


def set_default_input_shape(flat: bytes, shape: tuple[int, ...]) -> bytes:
    """Store ``shape`` as the input's shape (``shape_signature`` keeps the -1 dims).

    The interpreter allocates the stored shape on load; P-net's stored (1, 1, 1, 3) cannot be
    prepared, so the edge loader would fail before it gets a chance to resize the input.
    """
    from tensorflow.lite.tools import flatbuffer_utils

    model = flatbuffer_utils.convert_bytearray_to_object(bytearray(flat))
    graph = model.subgraphs[0]
    graph.tensors[graph.inputs[0]].shape = np.asarray(shape, dtype=np.int32)
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))


def parity(model: tf.keras.Model, path: Path, shapes: tuple[tuple[int, ...], ...],
           seed: int = 0) -> float:
    """Max abs difference between the Keras net and the TFLite file on uniform(-1, 1) inputs."""
    rng = np.random.default_rng(seed)
    tfl = load_model(path, threads=1)
    worst = 0.0
    for shape in shapes:
        x = rng.uniform(-1.0, 1.0, size=shape).astype(np.float32)
        ref = [np.asarray(o) for o in model(x)]
        tfl.resize_input(shape)
        got = list(tfl.predict({tfl.input_names[0]: x}).values())
        by_dim = {o.shape[-1]: o for o in got}  # last dims are unique within a net
        for r in ref:
            diff = np.abs(by_dim[r.shape[-1]].reshape(r.shape) - r)
            worst = max(worst, float(diff.max()) if np.isfinite(diff).all() else np.inf)
    return worst


def export_net(name: str, out_dir: Path, tol: float = 1e-5) -> dict[str, float]:
    """Convert one net, write ``out_dir/mtcnn_<name>.tflite``, check parity; return a summary."""
    t0 = time.perf_counter()
    model = keras_net(name)
    _, input_shape, default_shape, check_shapes = NETS[name]
    flat = convert(model, input_shape, default_shape)
    path = out_dir / f"mtcnn_{name}.tflite"
    path.write_bytes(flat)
    seconds = time.perf_counter() - t0
    err = parity(model, path, check_shapes)
    log.info("%s: %s, %.1f kB, %.1f s, max |tflite - keras| = %.2e on %s",
             name, path, len(flat) / 1024, seconds, err, check_shapes)
    if not err <= tol:
        raise RuntimeError(f"{path}: TFLite differs from Keras by {err:.2e} > {tol:.0e}")
    return {"bytes": len(flat), "seconds": seconds, "max_abs_diff": err}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("edge/models"), help="output folder")
    parser.add_argument("--nets", nargs="+", choices=sorted(NETS), default=list(NETS),
                        help="which nets to export")
    parser.add_argument("--tol", type=float, default=1e-5, help="parity tolerance (max abs diff)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args.out.mkdir(parents=True, exist_ok=True)
    for name in args.nets:
        export_net(name, args.out, tol=args.tol)


if __name__ == "__main__":
    main()
