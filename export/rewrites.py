"""Exact graph rewrites for the device graph, and what each buys in int8 (size, latency).

    python -m export.rewrites --ship-dir ~/.cache/av-emotion-edge/ship   # -> reports/graph_rewrites.json

Three rewrites, each equal to the original in float (to rounding) and each keeping the int8 weights the
converter would store:

- ``batched_bilstm``: Keras' ``LSTM(unroll=True)`` computes ``x_t @ W`` inside every unrolled step
  (one FULLY_CONNECTED, one RESHAPE and one ADD per step and direction). Here the input projection
  ``x @ W + b`` of all steps is one FULLY_CONNECTED before the loop; each step keeps only ``h @ U``.
  With ``merge_directions`` (the default, and what the device graph uses) the forward and backward
  directions also share each step's tensors: row 0 of a (1, 2, 4u) gate tensor is the forward step k,
  row 1 the backward step n - 1 - k, so one ADD / SPLIT / LOGISTIC / TANH / MUL serves both, and only
  ``h @ U`` stays per direction (two FULLY_CONNECTED, one SPLIT and one CONCATENATION a step). In int8
  every tensor carries its own quantisation record: half the tensors is a markedly smaller file.
  The directions are cut apart and joined on the last axis only: TFLite's int8 STRIDED_SLICE of a
  middle axis (``x[:, :, 0]`` of a (1, n, 2, 4u) tensor) takes ~15 us here against ~1 us for a
  last-axis slice, and four of them made the merged form 50 us slower than the separate one. Step 0
  (zero state) slices out only the gates it uses: an unused SPLIT output makes the int8 converter keep
  that SPLIT in float. graph_rewrites.json has both forms.
- ``face_stem_cols`` (measured; the device graph leaves it out, see :func:`rewritten`): the face CNN's
  first conv3x3 (1 -> f) + BatchNorm on 60x60x1 runs on 60x30x2 (each pair of neighbouring columns
  folded into channels by a reshape) as one conv3x3 (2 -> 2f), whose output reshapes back to 60x60xf.
  XNNPACK's int8 convolution kernels on this CPU work in tiles of 16 output channels by 8 input
  channels per 3x3 tap, so a 1-channel conv with 8 filters costs what an 8-channel conv with 16
  filters does (measured on the 60x60 stem, 5 faces: 1 or 4 input channels cost the same, 8 or 16
  filters the same, 32 filters twice that). Folding two columns fills a tile's 16 output channels
  with half the pixels: an 8-filter stem would take half the time; a 16-filter stem gains nothing
  (its tile is full already).
- ``face_stem_s2d``: the same idea with 2x2 blocks (space-to-depth, 60x60x1 -> 30x30x4, conv3x3
  (4 -> 4f), a max over the four f-channel groups for the 2x2 pool). It needs a transpose and 4x the
  MACs (27 of its 36 taps per output are zero); kept as a measured alternative (graph_rewrites.json).

``edge-export``'s device graph (export/prequant.py, via :func:`rewritten`) uses ``batched_bilstm`` with
the directions merged; this module measures each rewrite alone on the shipped model.
"""
from __future__ import annotations

import argparse
import functools
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

REPORT_JSON = "graph_rewrites.json"


@functools.cache
def _unrolled_bilstm_layer():
    """The layer class, made once (Keras is imported only here) and registered, so that ``clone_model``
    and saving find it."""
    import keras
    from keras import layers as L
    from keras import ops

    @keras.saving.register_keras_serializable(package="av_emotion_edge")
    class UnrolledBiLSTM(L.Layer):
        """Bidirectional LSTM (Keras gate order i, f, c, o; sigmoid / tanh), unrolled, zero initial state,
        sequences out (forward and backward concatenated, as ``Bidirectional(..., merge_mode="concat")``)."""

        def __init__(self, units: int, merge_directions: bool = True, **kw):
            super().__init__(**kw)
            self.units = units
            self.merge_directions = merge_directions

        def get_config(self):
            return super().get_config() | {"units": self.units, "merge_directions": self.merge_directions}

        def build(self, shape):
            d, u = shape[-1], self.units
            for k, s in (("f_kernel", (d, 4 * u)), ("f_recurrent", (u, 4 * u)), ("f_bias", (4 * u,)),
                         ("b_kernel", (d, 4 * u)), ("b_recurrent", (u, 4 * u)), ("b_bias", (4 * u,))):
                setattr(self, k, self.add_weight(shape=s, name=k, initializer="zeros"))

        @staticmethod
        def _cell(z, c):
            if c is None:
                # step 0 (zero state) has no use for the forget gate: slicing out only i, g and o leaves no
                # op output unused, which the int8 converter would otherwise keep in float (a DEQUANTIZE,
                # float SPLIT and QUANTIZE island in the int8 graph)
                u = z.shape[-1] // 4
                i, g, o = ops.sigmoid(z[..., :u]), ops.tanh(z[..., 2 * u:3 * u]), ops.sigmoid(z[..., 3 * u:])
                c = i * g
            else:
                i, f, g, o = ops.split(z, 4, axis=-1)
                i, f, g, o = ops.sigmoid(i), ops.sigmoid(f), ops.tanh(g), ops.sigmoid(o)
                c = f * c + i * g
            return o * ops.tanh(c), c

        def _direction(self, xw, recurrent, steps):
            h = c = None
            out = {}
            xs = ops.unstack(xw, axis=1)
            for t in steps:
                h, c = self._cell(xs[t] if h is None else xs[t] + ops.matmul(h, recurrent), c)
                out[t] = h
            return ops.stack([out[t] for t in sorted(out)], axis=1)

        def _merged(self, xw, n):
            """Both directions in one set of tensors: (b, 2, 4u) per step, row 0 forward at step k, row 1
            backward at step n - 1 - k; each direction keeps its own recurrent matrix."""
            u = self.units
            # slices of the last axis only: TFLite's int8 STRIDED_SLICE of a middle axis of a 4-D tensor
            # (``xw[:, :, 0]`` of (b, n, 2, 4u)) takes ~15 us here, the last-axis slice ~1 us
            xs = ops.unstack(ops.stack([xw[:, :, :4 * u], ops.flip(xw[:, :, 4 * u:], axis=1)], axis=2), axis=1)
            h = c = None
            out = []
            for k in range(n):
                if h is None:
                    z = xs[k]
                else:
                    hf, hb = ops.split(h, 2, axis=1)                                        # (b, 1, u)
                    z = xs[k] + ops.concatenate([ops.matmul(hf, self.f_recurrent),
                                                 ops.matmul(hb, self.b_recurrent)], axis=1)
                h, c = self._cell(z, c)
                out.append(h)
            y = ops.reshape(ops.stack(out, axis=1), (-1, n, 2 * u))                        # (b, n, [fw | bw])
            return ops.concatenate([y[:, :, :u], ops.flip(y[:, :, u:], axis=1)], axis=-1)

        def call(self, x, mask=None, training=None, initial_state=None):
            if mask is not None or initial_state is not None:
                raise ValueError("UnrolledBiLSTM supports neither masks nor an initial state")
            n, d = x.shape[1], x.shape[2]
            flat = ops.reshape(x, (-1, d))           # (b * T, d): one FULLY_CONNECTED, not BATCH_MATMUL
            if self.merge_directions:
                kernel = ops.concatenate([self.f_kernel, self.b_kernel], axis=1)
                bias = ops.concatenate([self.f_bias, self.b_bias], axis=0)
                return self._merged(ops.reshape(ops.matmul(flat, kernel) + bias, (-1, n, 8 * self.units)), n)
            xf = ops.reshape(ops.matmul(flat, self.f_kernel) + self.f_bias, (-1, n, 4 * self.units))
            xb = ops.reshape(ops.matmul(flat, self.b_kernel) + self.b_bias, (-1, n, 4 * self.units))
            return ops.concatenate([self._direction(xf, self.f_recurrent, range(n)),
                                    self._direction(xb, self.b_recurrent, range(n - 1, -1, -1))], axis=-1)

    return UnrolledBiLSTM


def batched_bilstm(head, layer: str = "speech_bilstm", merge_directions: bool = True):
    """``head`` (a functional model with a ``Bidirectional(LSTM(unroll=True))`` named ``layer``) with that
    layer replaced by one whose input projection is batched over the steps and, with ``merge_directions``,
    whose two directions share each step's gate and state tensors. Same weights."""
    import keras
    bl = head.get_layer(layer)
    fw, bw = bl.forward_layer, bl.backward_layer
    if bl.merge_mode != "concat" or not fw.return_sequences or not bw.go_backwards:
        raise ValueError(f"{layer}: expected Bidirectional(LSTM(return_sequences=True)) with merge_mode='concat'")
    new = _unrolled_bilstm_layer()(fw.units, merge_directions=merge_directions, name=layer)

    def clone(lay):
        return new if lay is bl else lay.__class__.from_config(lay.get_config())

    out = keras.models.clone_model(head, clone_function=clone)
    for src in head.layers:
        if src is not bl:
            out.get_layer(src.name).set_weights(src.get_weights())
    new.set_weights([*fw.cell.get_weights(), *bw.cell.get_weights()])
    return out


def _stem(face, conv: str, bn: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The first conv's kernel (3, 3, f) and its BatchNorm as (scale, shift) per filter."""
    k = face.get_layer(conv).get_weights()[0]                               # (3, 3, 1, f)
    if k.shape[:3] != (3, 3, 1) or face.get_layer(conv).use_bias:
        raise ValueError(f"{conv}: expected a bias-free 3x3 conv on one channel, got kernel {k.shape}")
    b = face.get_layer(bn)
    gamma, beta, mean, var = b.get_weights()
    s = gamma / np.sqrt(var + b.epsilon)
    return k[:, :, 0, :], s, beta - mean * s


def _with_later_layers(face, x_in, x, after: str, name: str):
    """``face``'s layers after ``after`` applied to ``x`` as fresh copies with the same weights (a reused
    layer's ``.output`` would be its first call, in the original graph)."""
    import keras
    names = [lay.name for lay in face.layers]
    later = []
    for lay in face.layers[names.index(after) + 1:]:
        new = lay.__class__.from_config(lay.get_config())
        x = new(x)
        later.append((new, lay))
    out = keras.Model(x_in, x, name=name)
    for new, lay in later:
        new.set_weights(lay.get_weights())
    return out


def face_stem_s2d(face, conv: str = "face_conv1", bn: str = "face_bn1", pool: str = "face_pool1"):
    """The face CNN with its first conv + BatchNorm + ReLU + 2x2 max-pool as space-to-depth, conv3x3 (4 -> 4f)
    and a max over four channel groups. Every later layer is reused as it is."""
    import keras
    from keras import layers as L
    k, s, shift = _stem(face, conv, bn)
    f = k.shape[-1]
    # output pixel (2i + a, 2j + c) of filter f reads input rows 2i + a + dy - 1, i.e. block row i + di with
    # sub-row a2 where 2 di + a2 = a + dy - 1: the 3x3 kernel tap (dy, dx) lands at block offset (di, dj),
    # input channel 2 a2 + c2, output channel (2 a + c) f + f
    k3 = np.zeros((3, 3, 4, 4 * f), np.float32)
    for a in range(2):
        for c in range(2):
            for dy in range(3):
                for dx in range(3):
                    di, a2 = divmod(a + dy - 1, 2)
                    dj, c2 = divmod(c + dx - 1, 2)
                    k3[di + 1, dj + 1, 2 * a2 + c2, (2 * a + c) * f:(2 * a + c + 1) * f] = k[dy, dx] * s
    n = face.input.shape[1]
    if n % 2:
        raise ValueError(f"face input {n}x{n}: space-to-depth needs an even size")
    h = n // 2
    x_in = keras.Input(face.input.shape[1:], name=getattr(face.input, "name", "face"))
    x = L.Reshape((h, 2, h, 2), name="face_s2d_split")(x_in)
    x = L.Permute((1, 3, 2, 4), name="face_s2d_permute")(x)
    x = L.Reshape((h, h, 4), name="face_s2d")(x)
    stem = L.Conv2D(4 * f, 3, padding="same", name="face_stem_conv")
    x = L.ReLU(name="face_stem_relu")(stem(x))
    x = L.Reshape((h * h, 4, f), name="face_stem_groups")(x)
    x = L.MaxPooling2D((1, 4), name="face_stem_max")(x)
    x = L.Reshape((h, h, f), name="face_stem_out")(x)
    out = _with_later_layers(face, x_in, x, pool, face.name)
    stem.set_weights([k3, np.tile(shift, 4).astype(np.float32)])
    return out


def face_stem_cols(face, conv: str = "face_conv1", bn: str = "face_bn1", relu: str = "face_relu1",
                   group: int = 2):
    """The face CNN with its first conv3x3 (1 -> f) + BatchNorm on (n, n, 1) computed on (n, n / group, group):
    each ``group`` neighbouring columns folded into channels (a reshape, no data movement), one conv3x3
    (group -> group * f, BatchNorm folded) + ReLU, and a reshape back to (n, n, f). Every later layer, the
    max-pool included, is reused as it is. Output column ``group * j + c`` is output channel group ``c`` at
    folded column ``j``; its tap ``dx`` reads input column ``group * j + c + dx - 1``, i.e. folded column
    ``j + dj``, channel ``c2``."""
    import keras
    from keras import layers as L
    k, s, shift = _stem(face, conv, bn)
    f, g = k.shape[-1], group
    n = face.input.shape[2]
    if n % g:
        raise ValueError(f"face input width {n}: not a multiple of the column group {g}")
    kg = np.zeros((3, 3, g, g * f), np.float32)
    for c in range(g):
        for dx in range(3):
            dj, c2 = divmod(c + dx - 1, g)
            kg[:, dj + 1, c2, c * f:(c + 1) * f] = k[:, dx] * s
    x_in = keras.Input(face.input.shape[1:], name=getattr(face.input, "name", "face"))
    x = L.Reshape((face.input.shape[1], n // g, g), name="face_cols_fold")(x_in)
    stem = L.Conv2D(g * f, 3, padding="same", name="face_stem_conv")
    x = L.ReLU(name="face_stem_relu")(stem(x))
    x = L.Reshape((face.input.shape[1], n, f), name="face_stem_out")(x)
    out = _with_later_layers(face, x_in, x, relu, face.name)
    stem.set_weights([kg, np.tile(shift, g).astype(np.float32)])
    return out


def rewritten(parts: dict, face_stem: bool = False) -> dict:
    """``training.ship.shipped_parts`` with the rewrites the device graph uses: ``batched_bilstm`` (directions
    merged); with ``face_stem``, also ``face_stem_cols`` (column pairs). The device graph leaves the stem as
    it is: the shipped 16-filter stem fills XNNPACK's tile already, so the fold gains nothing there
    (graph_rewrites.json). It pays on an 8-filter stem (0.811 -> 0.743 ms for 5 faces, measured on an
    8-32-32-64-64-128 model that was not shipped). ``face_stem_s2d`` is slower than both."""
    new = parts | {"speech_head": batched_bilstm(parts["speech_head"])}
    return new | {"face_model": face_stem_cols(parts["face_model"])} if face_stem else new


# ------------------------------------------------------------------ measurement

def _float(model) -> bytes:
    import tensorflow as tf
    return tf.lite.TFLiteConverter.from_keras_model(model).convert()


def _ops(buf: bytes) -> int:
    from ai_edge_litert.interpreter import Interpreter
    return len(Interpreter(model_content=buf)._get_ops_details())


def compare(name: str, original, rewritten, shape: tuple[int, ...], runs: int, rng, scale: float = 1.0) -> dict:
    """Float max |diff| on random inputs; int8 and float TFLite bytes, op counts and 1-thread latency."""
    x = scale * rng.random((4,) + shape[1:]).astype(np.float32)
    diff = float(np.abs(original.predict(x, verbose=0) - rewritten.predict(x, verbose=0)).max())
    from export.convert import fixed_batch, int8_random_calibration
    a, b = fixed_batch(original, shape), fixed_batch(rewritten, shape)
    q = {k: int8_random_calibration(m, shape, np.random.default_rng(1), scale)
         for k, m in (("original", a), ("rewritten", b))}
    fl = {k: len(_float(m)) for k, m in (("original", a), ("rewritten", b))}
    from export.bench import interleaved_ratio, ready_interpreter
    its = {k: ready_interpreter(v) for k, v in q.items()}
    rounds = interleaved_ratio(its["original"].invoke, its["rewritten"].invoke, 3, runs, max(runs // 10, 5))
    lat = {"original": [r["slow_p50_ms"] for r in rounds], "rewritten": [r["fast_p50_ms"] for r in rounds]}
    row = {"rewrite": name, "input": list(shape), "float_max_abs_diff": diff,
           "int8_bytes": {k: len(v) for k, v in q.items()}, "float_bytes": fl,
           "int8_ops": {k: _ops(v) for k, v in q.items()},
           "int8_p50_ms": {k: float(np.median(v)) for k, v in lat.items()}, "int8_p50_ms_runs": lat}
    row["int8_ms_saved"] = row["int8_p50_ms"]["original"] - row["int8_p50_ms"]["rewritten"]
    row["int8_bytes_saved"] = row["int8_bytes"]["original"] - row["int8_bytes"]["rewritten"]
    row["float_bytes_saved"] = fl["original"] - fl["rewritten"]
    log.info("%s: float max diff %.1e, int8 %d -> %d B, %.3f -> %.3f ms", name, diff, *row["int8_bytes"].values(),
             *row["int8_p50_ms"].values())
    return row


def run(ship_dir: Path, runs: int, p=None) -> dict:
    import keras

    from edge.params import Params
    from export.bench import machine_info
    from training.ship import shipped_parts
    p = p or Params()
    model_f = ship_dir / "shipped.keras"
    if not model_f.is_file():
        raise FileNotFoundError(f"{model_f} not found: run `edge-train ship` first")
    parts = shipped_parts(keras.saving.load_model(model_f, compile=False))
    rng = np.random.default_rng(0)
    head, face = parts["speech_head"], parts["face_model"]
    shape = (1,) + tuple(head.input.shape[1:])
    rows = [compare("batched_bilstm, directions apart (speech head)", head,
                    batched_bilstm(head, merge_directions=False), shape, runs, rng, scale=2.0),
            compare("batched_bilstm, directions merged (speech head)", head, batched_bilstm(head), shape, runs, rng,
                    scale=2.0),
            compare(f"face_stem_cols (face CNN, {p.faces_per_patch} faces)", face, face_stem_cols(face),
                    (p.faces_per_patch, p.face_size, p.face_size, 1), runs, rng),
            compare(f"face_stem_s2d (face CNN, {p.faces_per_patch} faces)", face, face_stem_s2d(face),
                    (p.faces_per_patch, p.face_size, p.face_size, 1), runs, rng)]
    return {"model": str(model_f), "runs": runs, "threads": 1, "machine": machine_info(), "rows": rows,
            "note": "trained weights; random inputs (latency does not depend on values); each latency the "
                    "median of 3 interleaved p50s"}


def main(argv: list[str] | None = None) -> int:
    from training.cli import run_command
    from training.paths import cache_dir, reports_dir
    ap = argparse.ArgumentParser(prog="python -m export.rewrites", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ship-dir", default=str(cache_dir() / "ship"), help="edge-train ship output (default: %(default)s)")
    ap.add_argument("--runs", type=int, default=500, help="timed invocations per p50 (default: %(default)s)")
    ap.add_argument("--out", default=str(reports_dir()), help=f"folder for {REPORT_JSON} (default: %(default)s)")

    def cmd(args) -> int:
        t = time.time()
        res = run(Path(args.ship_dir), args.runs)
        res["command"] = "python -m export.rewrites " + " ".join(args.argv)
        res["seconds"] = time.time() - t
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / REPORT_JSON).write_text(json.dumps(res, indent=1) + "\n")
        for r in res["rows"]:
            print(f"{r['rewrite']:<40} float diff {r['float_max_abs_diff']:.1e}  int8 {r['int8_bytes']['original']} -> "
                  f"{r['int8_bytes']['rewritten']} B, ops {r['int8_ops']['original']} -> {r['int8_ops']['rewritten']}, "
                  f"{r['int8_p50_ms']['original']:.3f} -> {r['int8_p50_ms']['rewritten']:.3f} ms")
        return 0
    return run_command("export.rewrites", ap, argv, (FileNotFoundError, ValueError), cmd)


if __name__ == "__main__":
    sys.exit(main())
