"""How fast each face-CNN width runs in int8 vs compiled Keras float, 1 thread (random weights).

    python -m export.bench_face_archs [--widths 20,40,40,80,80,160 --widths 16,32,32,64,64,128 ...]
        -> reports/face_arch_bench.json

The face CNN on the paper's 5 faces is most of a fused decision (its MACs and its time; reports/bench.json),
so its int8 / float ratio sets edge-bench's speedup. XNNPACK's int8 kernels favour channel counts that
are multiples of 16 and work on 8 input channels per 3x3 tap: the 1-channel 60x60 stem costs what an
8-channel, 16-filter conv would, with 8 filters or 16. An 8-filter stem (8-32-32-64-64-128, measured,
not shipped: reports/face_stem8/) saves half of the second conv; export/rewrites.face_stem_cols would
halve its stem too (rows here are plain models). Latency does not depend on the trained values, so
untrained weights are enough to choose a width before spending a FER2013 training run on it. All rows come
from one process, timed in 3 rounds over all widths (each row the median of its rounds).
"""
from __future__ import annotations

import argparse
import json
import logging
import tempfile
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

DEFAULT_WIDTHS = ("8,32,32,64,64,128", "16,32,32,64,64,128", "20,40,40,80,80,160", "24,48,48,96,96,192", "32,64,64,128,128,256")


def build(widths: str, p) -> dict:
    """The face CNN of ``widths`` (random weights) as an int8 interpreter and a compiled Keras call, ready to time."""
    import keras
    import tensorflow as tf

    from export.bench import graph_macs, ready_interpreter
    from export.convert import fixed_batch, int8_random_calibration
    from training.face import FaceRecipe, build_face_model
    from training.face_cli import paper_layout
    keras.utils.set_random_seed(0)
    n = p.faces_per_patch
    face = build_face_model(FaceRecipe().replace(layers=paper_layout(widths)), p)
    model = fixed_batch(face, (n, p.face_size, p.face_size, 1))
    rng = np.random.default_rng(0)
    x = rng.random((n, p.face_size, p.face_size, 1)).astype(np.float32)
    with tempfile.TemporaryDirectory() as tmp:
        f = Path(tmp) / "face.tflite"
        f.write_bytes(int8_random_calibration(model, x.shape, rng, samples=8))
        it = ready_interpreter(f)
        macs = graph_macs(f)
    fn = tf.function(lambda a: model(a, training=False))
    return {"widths": [int(v) for v in widths.split(",")], "params": int(face.count_params()),
            "macs_5_faces": int(macs), "int8": it.invoke, "keras": lambda: fn(x).numpy()}


def measure(models: list[dict], runs: int, rounds: int = 3) -> list[dict]:
    """Each model's int8 and Keras p50, in ``rounds`` rounds over all models (every row sees every machine
    state the others see); per row the median of its rounds."""
    from export.bench import int8_vs_keras
    timed = int8_vs_keras(models, rounds, (runs, 20), (max(runs // 2, 20), 10))
    return [{k: m[k] for k in ("widths", "params", "macs_5_faces")} | t for m, t in zip(models, timed, strict=True)]


def main(argv: list[str] | None = None) -> int:
    from training.cli import run_command
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--widths", action="append", help="six conv widths, comma-separated (repeatable; default: "
                                                      + "; ".join(DEFAULT_WIDTHS) + ")")
    ap.add_argument("--runs", type=int, default=300, help="timed runs per row (default 300)")
    ap.add_argument("--out", help="reports folder (default: <repo>/reports)")

    def cmd(args) -> int:
        import tensorflow as tf

        from edge.params import Params
        from training.paths import reports_dir
        tf.config.threading.set_intra_op_parallelism_threads(1)
        tf.config.threading.set_inter_op_parallelism_threads(1)
        from export.bench import machine_info
        rows = measure([build(w, Params()) for w in (args.widths or DEFAULT_WIDTHS)], args.runs)
        for r in rows:
            log.info("%s: %d params, int8 %.2f ms, Keras %.2f ms, %.2fx", r["widths"], r["params"],
                     r["int8_ms_p50"], r["keras_compiled_ms_p50"], r["ratio"])
        out = Path(args.out) if args.out else reports_dir()
        out.mkdir(parents=True, exist_ok=True)
        res = {"command": "python -m export.bench_face_archs " + " ".join(args.argv), "threads": 1,
               "faces": Params().faces_per_patch, "machine": machine_info(), "rows": rows}
        (out / "face_arch_bench.json").write_text(json.dumps(res, indent=2) + "\n")
        return 0
    return run_command("bench_face_archs", ap, argv, (FileNotFoundError,), cmd)


if __name__ == "__main__":
    raise SystemExit(main())
