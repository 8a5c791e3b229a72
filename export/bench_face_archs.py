"""How fast each face-CNN width runs in int8 vs compiled Keras float, 1 thread (random weights).

    python -m export.bench_face_archs [--widths 20,40,40,80,80,160 --widths 16,32,32,64,64,128 ...]
        -> reports/face_arch_bench.json
    python -m export.bench_face_archs --fused ~/.cache/av-emotion-edge/ship/shipped.keras \
        --widths 16,32,32,64,64,128 --widths pool-first:16,32,32,64,64,128 -> reports/face_arch_bench_fused.json

The face CNN on the paper's 5 faces is most of a fused decision (its MACs and its time; reports/bench.json),
so its int8 / float ratio sets edge-bench's speedup. XNNPACK's int8 kernels favour channel counts that
are multiples of 16 and work on 8 input channels per 3x3 tap: the 1-channel 60x60 stem costs what an
8-channel, 16-filter conv would, with 8 filters or 16. An 8-filter stem (8-32-32-64-64-128, measured,
not shipped: reports/face_stem8/) saves half of the second conv; export/rewrites.face_stem_cols would
halve its stem too (rows here are plain models). Latency does not depend on the trained values, so
untrained weights are enough to choose a width before spending a FER2013 training run on it. All rows come
from one process, timed in rounds over all widths (each row the median of its rounds).

A width spec ``pool-first:w1,...,w6`` moves the first max-pool before the first conv (still 6 conv + 3 pool):
the stem then runs on 30x30. ``--fused MODEL`` times what edge-bench's speedup is taken on instead, the whole
three-head graph (YAMNet trunk, speech head and fusion from the trained MODEL, the face CNN of each spec with
random weights) at batch 1, int8 calibrated on random inputs: a face change cuts the compiled Keras graph's
time as well as the int8 graph's, and only this ratio says what it does to the target.
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


POOL_FIRST = "pool-first:"


def layout(spec: str) -> tuple[tuple[str, int], ...]:
    """'16,32,32,64,64,128' -> the paper's layout; 'pool-first:16,...' -> the same with its first pool moved
    before the first conv."""
    from training.face_cli import paper_layout
    if spec.startswith(POOL_FIRST):
        lay = paper_layout(spec[len(POOL_FIRST):])
        return (lay[1], lay[0]) + lay[2:]
    return paper_layout(spec)


def random_face(spec: str, p) -> tuple:
    """The face CNN of ``spec`` with seeded random weights, and its report fields (widths, layout, params)."""
    import keras

    from training.face import FaceRecipe, build_face_model
    lay = layout(spec)
    keras.utils.set_random_seed(0)
    face = build_face_model(FaceRecipe().replace(layers=lay), p)
    return face, {"widths": [v for kind, v in lay if kind == "conv"],
                  "layout": "pool-first" if spec.startswith(POOL_FIRST) else "paper", "params": int(face.count_params())}


def build(widths: str, p) -> dict:
    """The face CNN of ``widths`` (random weights) as an int8 interpreter and a compiled Keras call, ready to time."""
    import tensorflow as tf

    from export.bench import graph_macs, ready_interpreter
    from export.convert import fixed_batch, int8_random_calibration
    n = p.faces_per_patch
    face, info = random_face(widths, p)
    model = fixed_batch(face, (n, p.face_size, p.face_size, 1))
    rng = np.random.default_rng(0)
    x = rng.random((n, p.face_size, p.face_size, 1)).astype(np.float32)
    with tempfile.TemporaryDirectory() as tmp:
        f = Path(tmp) / "face.tflite"
        f.write_bytes(int8_random_calibration(model, x.shape, rng, samples=8))
        it = ready_interpreter(f)
        macs = graph_macs(f)
    fn = tf.function(lambda a: model(a, training=False))
    return info | {"macs_5_faces": int(macs), "int8": it.invoke, "keras": lambda: fn(x).numpy()}


def build_fused(widths: str, trained, p, work: Path) -> dict:
    """The three-head graph of ``trained`` with its face CNN replaced by one of ``widths`` (random weights), at
    batch 1: an int8 interpreter (random calibration) and the compiled Keras call, as edge-bench times them."""
    import tensorflow as tf

    from export.bench import graph_macs, ready_interpreter
    from export.convert import to_saved_model, to_tflite_int8
    from training.ship import build_shipped_model, shipped_parts
    face, info = random_face(widths, p)
    model = build_shipped_model(**(shipped_parts(trained) | {"face_model": face}), p=p, batch_size=1,
                                name="av_emotion")
    rng = np.random.default_rng(0)

    def inputs() -> dict:
        return {"log_mel": rng.standard_normal((1, p.patch_frames, p.mel_bands)).astype(np.float32),
                "faces": rng.random((1, p.faces_per_patch, p.face_size, p.face_size, 1)).astype(np.float32)}
    d = work / widths.replace(":", "_").replace(",", "-")
    f = to_tflite_int8(to_saved_model(model, d / "saved_model", p), d / "int8.tflite",
                       lambda: (inputs() for _ in range(16)))
    it = ready_interpreter(f)
    x = {k: tf.constant(v) for k, v in inputs().items()}
    fn = tf.function(lambda a, b: model({"log_mel": a, "faces": b}, training=False))
    return info | {"macs_decision": int(graph_macs(f)), "int8": it.invoke,
                   "keras": lambda: fn(x["log_mel"], x["faces"])}


def measure(models: list[dict], runs: int, rounds: int = 3) -> list[dict]:
    """Each model's int8 and Keras p50, in ``rounds`` rounds over all models (every row sees every machine
    state the others see); per row the median of its rounds."""
    from export.bench import int8_vs_keras
    timed = int8_vs_keras(models, rounds, (runs, 20), (max(runs // 2, 20), 10))
    return [{k: v for k, v in m.items() if k not in ("int8", "keras")} | t for m, t in zip(models, timed, strict=True)]


def main(argv: list[str] | None = None) -> int:
    from training.cli import run_command
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--widths", action="append", help="six conv widths, comma-separated (repeatable; default: "
                                                      + "; ".join(DEFAULT_WIDTHS) + ")")
    ap.add_argument("--runs", type=int, default=300, help="timed runs per row (default 300)")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved timing rounds over all rows (default 3)")
    ap.add_argument("--fused", metavar="MODEL", help="a trained three-head Keras model (edge-train ship's "
                    "shipped.keras): time the whole fused graph with each face CNN in it, as edge-bench's speedup "
                    "does, and write face_arch_bench_fused.json")
    ap.add_argument("--out", help="reports folder (default: <repo>/reports)")

    def cmd(args) -> int:
        specs = args.widths or DEFAULT_WIDTHS
        for w in specs:
            layout(w)                                       # every spec checked before anything is built
        fused = Path(args.fused).expanduser() if args.fused else None
        if fused is not None and not fused.is_file():
            raise FileNotFoundError(f"--fused {fused}: no such model file (edge-train ship writes shipped.keras)")
        import tensorflow as tf

        from edge.params import Params
        from training.paths import reports_dir
        tf.config.threading.set_intra_op_parallelism_threads(1)
        tf.config.threading.set_inter_op_parallelism_threads(1)
        from export.bench import machine_info
        if fused is not None:
            import keras
            trained = keras.saving.load_model(fused, compile=False)
            with tempfile.TemporaryDirectory() as tmp:
                rows = measure([build_fused(w, trained, Params(), Path(tmp)) for w in specs], args.runs, args.rounds)
        else:
            rows = measure([build(w, Params()) for w in specs], args.runs, args.rounds)
        for r in rows:
            log.info("%s %s: %d params, int8 %.3f ms, Keras %.3f ms, %.2fx", r["layout"], r["widths"], r["params"],
                     r["int8_ms_p50"], r["keras_compiled_ms_p50"], r["ratio"])
        out = Path(args.out) if args.out else reports_dir()
        out.mkdir(parents=True, exist_ok=True)
        res = {"command": "python -m export.bench_face_archs " + " ".join(args.argv), "threads": 1,
               "faces": Params().faces_per_patch, "machine": machine_info(),
               "graph": "three-head fused graph, batch 1" if args.fused else "face CNN, 5 faces", "rows": rows}
        name = "face_arch_bench_fused.json" if args.fused else "face_arch_bench.json"
        (out / name).write_text(json.dumps(res, indent=2) + "\n")
        return 0
    return run_command("bench_face_archs", ap, argv, (FileNotFoundError, argparse.ArgumentTypeError), cmd)


if __name__ == "__main__":
    raise SystemExit(main())
