"""How much faster int8 LiteRT can be than compiled Keras float on this CPU at all: single 3x3 convolutions
timed alone, 1 thread, int8 TFLite (XNNPACK) against the same layer as a compiled Keras call (tf.function,
as edge-bench times the fused model).

    python -m export.conv_ceiling            -> reports/conv_ceiling.json

The fused decision's MACs are 86% face-CNN convolutions (reports/bench.json: macs_per_decision), so the
int8 / Keras ratio of a plain convolution is the ratio edge-bench's fused decision can reach before anything
else in the graph counts. Rows: the face CNN's own conv shapes (5 faces) and one large conv that keeps the
arithmetic units busy (the ceiling of a compute-bound layer). Each row: p50 latency of both, the ratio, and
the MAC rate of each, over ``--rounds`` interleaved rounds (median). Latency does not depend on the weight
values, so the weights are random.
"""
from __future__ import annotations

import argparse
import json
import logging
import tempfile
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

# (name, input shape (n, h, w, c_in), filters): the face CNN's six convs at 5 faces, then a large conv
SHAPES = (
    ("face conv1 60x60 1->16", (5, 60, 60, 1), 16),
    ("face conv2 30x30 16->32", (5, 30, 30, 16), 32),
    ("face conv3 30x30 32->32", (5, 30, 30, 32), 32),
    ("face conv4 15x15 32->64", (5, 15, 15, 32), 64),
    ("face conv5 15x15 64->64", (5, 15, 15, 64), 64),
    ("face conv6 7x7 64->128", (5, 7, 7, 64), 128),
    ("large 28x28 256->256", (1, 28, 28, 256), 256),
)


def build(shape: tuple[int, ...], filters: int) -> dict:
    """One conv (3x3, same padding, bias, ReLU) as an int8 interpreter and a compiled Keras call."""
    import keras
    import tensorflow as tf

    from export.bench import graph_macs, ready_interpreter
    from export.convert import int8_random_calibration
    keras.utils.set_random_seed(0)
    inp = keras.Input(batch_shape=shape)
    model = keras.Model(inp, keras.layers.Conv2D(filters, 3, padding="same", activation="relu")(inp))
    rng = np.random.default_rng(0)
    x = rng.random(shape).astype(np.float32)
    with tempfile.TemporaryDirectory() as tmp:
        f = Path(tmp) / "conv.tflite"
        f.write_bytes(int8_random_calibration(model, shape, rng, samples=8))
        it = ready_interpreter(f)
        macs = graph_macs(f)
    fn = tf.function(lambda a: model(a, training=False))    # as edge-bench compiles the fused model
    return {"macs": macs, "int8": it.invoke, "keras": lambda: fn(x).numpy()}


def measure(runs: int, rounds: int) -> list[dict]:
    from export.bench import int8_vs_keras
    built = [build(shape, filters) for _, shape, filters in SHAPES]
    timed = int8_vs_keras(built, rounds, (runs, 20), (runs, 20))
    return [{"conv": name, "input": list(shape), "filters": filters, "macs": b["macs"], **t,
             "int8_gmacs": b["macs"] / t["int8_ms_p50"] / 1e6, "keras_gmacs": b["macs"] / t["keras_compiled_ms_p50"] / 1e6}
            for (name, shape, filters), b, t in zip(SHAPES, built, timed, strict=True)]


def main(argv: list[str] | None = None) -> int:
    from training.cli import run_command
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=200, help="timed calls per row and round (default 200)")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds over all rows (default 3)")
    ap.add_argument("--out", help="reports folder (default: <repo>/reports)")

    def cmd(args) -> int:
        import tensorflow as tf

        from export.bench import machine_info, peak_gflops
        from training.paths import reports_dir
        tf.config.threading.set_intra_op_parallelism_threads(1)
        tf.config.threading.set_inter_op_parallelism_threads(1)
        rows = measure(args.runs, args.rounds)
        for r in rows:
            log.info("%s: int8 %.3f ms (%.0f GMAC/s), Keras %.3f ms (%.0f GMAC/s), %.2fx", r["conv"], r["int8_ms_p50"],
                     r["int8_gmacs"], r["keras_compiled_ms_p50"], r["keras_gmacs"], r["ratio"])
        out = Path(args.out) if args.out else reports_dir()
        out.mkdir(parents=True, exist_ok=True)
        res = {"command": "python -m export.conv_ceiling " + " ".join(args.argv), "threads": 1,
               "machine": machine_info(), "numpy_sgemm_gflops_1thread": peak_gflops(), "rows": rows}
        (out / "conv_ceiling.json").write_text(json.dumps(res, indent=2) + "\n")
        return 0
    return run_command("conv_ceiling", ap, argv, (FileNotFoundError,), cmd)


if __name__ == "__main__":
    raise SystemExit(main())
