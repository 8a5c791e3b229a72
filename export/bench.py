"""edge-bench: on-device latency of every stage, per backend and thread count.

    edge-bench                                  # synthetic inputs, the shipped int8 model, 1..4 threads
    edge-bench --clip clip.mp4                  # also real frames/audio from a clip
    edge-bench --work ~/.cache/av-emotion-edge/export --keras ~/.cache/av-emotion-edge/ship/shipped.keras
                                                # workstation: + TFLite float, ONNX and Keras float

Runs from the ``edge`` extra alone (a Pi has no TensorFlow: the Keras rows need it and are skipped
without it; ONNX rows need onnxruntime). Fixed seed, warm-up, then p50/p90/p99 over --runs. Stages:
audio front end (log-mel + speaker norm of one 0.96 s patch), face detection per frame at 640x360 and
1280x720 (edge MTCNN cascade, edge-run's minimum face size, no tracking), key-face selection (one 9-face window), the model (one call of the
three-head graph: YAMNet trunk + speech head + face CNN on 5 faces + fusion = the fused decision), and
a whole decision (front end + key faces + model + vote). MACs per decision are counted from the
graph's ops; the CPU's peak is measured with a 1-thread float32 matrix product.
Writes JSON (--out) and prints a table.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import resource
import sys
import time
from pathlib import Path

import numpy as np

log = logging.getLogger("edge-bench")


def percentiles(ms: list[float]) -> dict:
    a = np.asarray(ms)
    return {"p50": float(np.percentile(a, 50)), "p90": float(np.percentile(a, 90)),
            "p99": float(np.percentile(a, 99)), "mean": float(a.mean()), "n": int(a.size)}


def timeit(fn, runs: int, warmup: int) -> dict:
    for _ in range(warmup):
        fn()
    ms = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        ms.append(1e3 * (time.perf_counter() - t))
    return percentiles(ms)


def interleaved_ratio(slow, fast, rounds: int, runs: int, warmup: int) -> list[dict]:
    """``rounds`` rounds of (p50 of ``slow``, p50 of ``fast``) back to back, each over ``runs`` calls: on a
    shared machine whose speed drifts, each round's ratio sees one machine state for both."""
    out = []
    for _ in range(rounds):
        s, f = timeit(slow, runs, warmup)["p50"], timeit(fast, runs, warmup)["p50"]
        out.append({"slow_p50_ms": s, "fast_p50_ms": f, "ratio": s / f})
    return out


def int8_vs_keras(models: list[dict], rounds: int, int8_timing: tuple[int, int],
                  keras_timing: tuple[int, int]) -> list[dict]:
    """Each model's ``int8`` and ``keras`` call timed (p50 over (runs, warmup)) in ``rounds`` rounds over all
    models, so every model sees every machine state the others see; per model the median of its rounds."""
    t = [{"int8": [], "keras": []} for _ in models]
    for _ in range(rounds):
        for ti, m in zip(t, models, strict=True):
            ti["int8"].append(timeit(m["int8"], *int8_timing)["p50"])
            ti["keras"].append(timeit(m["keras"], *keras_timing)["p50"])
    out = []
    for ti in t:
        int8_ms, keras_ms = float(np.median(ti["int8"])), float(np.median(ti["keras"]))
        out.append({"int8_ms_p50": int8_ms, "keras_compiled_ms_p50": keras_ms, "ratio": keras_ms / int8_ms,
                    "int8_ms_p50_rounds": ti["int8"], "keras_compiled_ms_p50_rounds": ti["keras"]})
    return out


def ready_interpreter(model: bytes | str | Path, threads: int = 1, seed: int = 0):
    """A LiteRT interpreter of ``model`` (.tflite bytes or path), allocated, with every input set to random values
    of its type: ready to time ``.invoke`` (latency does not depend on the values)."""
    from edge.runtime.litert import interpreter_class
    Interpreter = interpreter_class()
    kw = {"model_content": model} if isinstance(model, bytes) else {"model_path": str(model)}
    it = Interpreter(num_threads=threads, **kw)
    it.allocate_tensors()
    rng = np.random.default_rng(seed)
    for d in it.get_input_details():
        if np.issubdtype(d["dtype"], np.integer):
            info = np.iinfo(d["dtype"])
            x = rng.integers(info.min, int(info.max) + 1, d["shape"])
        else:
            x = rng.random(d["shape"])
        it.set_tensor(d["index"], x.astype(d["dtype"]))
    return it


def machine_info() -> dict:
    from edge.machine import cpu_model
    cpu = cpu_model()
    gov = None
    try:
        gov = Path("/sys/devices/system/cpu/cpu0/cpufreq/scaling_governor").read_text().strip()
    except OSError:
        pass
    try:
        allowed = len(os.sched_getaffinity(0))
    except AttributeError:
        allowed = os.cpu_count()
    return {"cpu": cpu, "machine": platform.machine(), "governor": gov, "cpu_count": os.cpu_count(),
            "cpus_allowed": allowed, "python": platform.python_version(), "numpy": np.__version__,
            "platform": platform.platform()}


def peak_gflops(seconds: float = 1.0) -> float:
    """Achievable float32 GFLOP/s of one thread (a 256x256 matrix product, best of several)."""
    a = np.random.default_rng(0).standard_normal((256, 256)).astype(np.float32)
    best, t_end = np.inf, time.perf_counter() + seconds
    while time.perf_counter() < t_end:
        t = time.perf_counter()
        a @ a
        best = min(best, time.perf_counter() - t)
    return 2 * 256 ** 3 / best / 1e9


def graph_macs(path: Path) -> int:
    """Multiply-accumulates of one call of a .tflite graph, from its conv / fully-connected / matmul ops."""
    from edge.runtime.litert import interpreter_class
    it = interpreter_class()(model_path=str(path))
    shapes = {t["index"]: tuple(int(s) for s in t["shape"]) for t in it.get_tensor_details()}
    macs = 0
    for op in it._get_ops_details():
        name, ins, outs = op["op_name"], list(op["inputs"]), list(op["outputs"])
        if not outs or outs[0] < 0:
            continue
        out = int(np.prod(shapes[outs[0]]))
        if name == "CONV_2D":
            w = shapes[ins[1]]                                   # (cout, kh, kw, cin)
            macs += out * w[1] * w[2] * w[3]
        elif name == "DEPTHWISE_CONV_2D":
            w = shapes[ins[1]]                                   # (1, kh, kw, cout)
            macs += out * w[1] * w[2]
        elif name == "FULLY_CONNECTED":
            macs += out * shapes[ins[1]][-1]
        elif name == "BATCH_MATMUL":
            macs += out * shapes[ins[0]][-1]
    return int(macs)


def synthetic_inputs(seed: int = 0):
    from edge.params import Params
    p = Params()
    rng = np.random.default_rng(seed)
    t = np.arange(p.patch_samples) / p.sample_rate
    wave = (0.1 * np.sin(2 * np.pi * 220 * t) * (1 + 0.5 * np.sin(2 * np.pi * 3 * t))
            + 0.01 * rng.standard_normal(t.size)).astype(np.float32)       # a voiced, modulated tone
    frame_small = rng.integers(0, 255, (360, 640, 3), np.uint8)
    frame_big = rng.integers(0, 255, (720, 1280, 3), np.uint8)
    faces = rng.integers(0, 255, (9, p.face_size, p.face_size), np.uint8)
    return wave, frame_small, frame_big, faces


def clip_inputs(path: str):
    """Real inputs from a clip: 0.96 s of its audio, a frame with a face (at 640x360 and 1280x720)."""
    import cv2

    from edge.params import Params
    from edge.vision.video import iter_frames, read_audio
    p = Params()
    audio, _ = read_audio(path, p.sample_rate)
    mid = max(0, len(audio) // 2 - p.patch_samples // 2)
    wave = np.pad(audio[mid:mid + p.patch_samples], (0, max(0, p.patch_samples - len(audio))))
    _, frame = next(iter(iter_frames(path, max_frames=1)))
    small = cv2.resize(frame, (640, 360), interpolation=cv2.INTER_AREA)
    big = cv2.resize(frame, (1280, 720), interpolation=cv2.INTER_LINEAR)
    return wave.astype(np.float32), small, big


def bench(args) -> dict:
    from edge.audio.features import log_mel
    from edge.audio.norm import SpeakerNorm
    from edge.model import DEFAULT_MODEL, EmotionModel
    from edge.params import Params
    from edge.vision.faces import key_faces
    from edge.vision.mtcnn import MTCNN
    from edge.vote import majority_vote
    p = Params()
    wave, f640, f1280, faces9 = synthetic_inputs(args.seed)
    source = "synthetic"
    if args.clip:
        wave, f640, f1280 = clip_inputs(args.clip)
        source = str(args.clip)
    model_path = Path(args.model) if args.model else DEFAULT_MODEL
    work = Path(args.work) if args.work else None
    backends = {"tflite_int8": ("litert", model_path)}
    if work is not None:
        for name, f, kind in (("tflite_float", "av_emotion_float32.tflite", "litert"),
                              ("onnx", "av_emotion.onnx", "onnx")):
            if (work / f).is_file():
                backends[name] = (kind, work / f)
    keras_model = None
    if args.keras:
        try:
            import tensorflow as tf
            tf.config.threading.set_intra_op_parallelism_threads(1)      # before the first op
            tf.config.threading.set_inter_op_parallelism_threads(1)
            import keras
            keras_model = keras.saving.load_model(args.keras, compile=False)
        except ImportError:
            log.warning("--keras needs TensorFlow/Keras: Keras rows skipped")
    norm = SpeakerNorm(np.zeros(p.mel_bands, np.float32))
    threads = list(range(1, args.max_threads + 1))
    res = {"source": source, "runs": args.runs, "warmup": args.warmup, "seed": args.seed, "threads": threads,
           "machine": machine_info(), "stages": {}, "models": {}}
    st = res["stages"]

    def frontend():
        lm = log_mel(wave, p)[:p.patch_frames]
        norm.update(lm)
        return norm.apply(lm)
    lm = frontend()
    st["audio_frontend"] = timeit(frontend, args.runs, args.warmup)
    st["key_faces_window9"] = timeit(lambda: key_faces(faces9, p.key_face_radius), args.runs, args.warmup)
    from edge.loop import LoopConfig
    for size, frame in (("640x360", f640), ("1280x720", f1280)):
        det = MTCNN(min_face_size=LoopConfig().min_face_px, threads=1)      # as edge-run detects
        st[f"face_detect_{size}"] = timeit(lambda d=det, f=frame: d.detect(f), max(5, args.runs // 4),
                                           min(args.warmup, 3))
    faces5 = faces9[:p.faces_per_patch]
    fx = (faces5.astype(np.float32) / 255.0)[None, ..., None]                # (1, 5, 60, 60, 1)
    for name, (kind, path) in backends.items():
        res["models"][name] = {"path": str(path), "bytes": path.stat().st_size}
        for t in threads:
            m = EmotionModel(path, threads=t, backend=kind, manifest=model_path.parent / "manifest.json")
            st.setdefault(f"model_{name}", {})[str(t)] = timeit(lambda m=m: m.infer(lm, faces5), args.runs,
                                                                args.warmup)
    if keras_model is not None:
        import tensorflow as tf
        res["models"]["keras_float"] = {"path": str(args.keras), "bytes": Path(args.keras).stat().st_size}
        fn = tf.function(lambda a, b: keras_model({"log_mel": a, "faces": b}, training=False))
        a, b = tf.constant(lm[None]), tf.constant(fx)
        for t in threads:
            # TensorFlow's thread pools are fixed at first use: each count runs in its own process
            if t == 1 or args.keras_all_threads:
                st.setdefault("model_keras_float", {})[str(t)] = timeit(lambda: fn(a, b), args.runs, args.warmup)
                # the same model called the plain Keras way (eager), as most Keras code runs it
                st.setdefault("model_keras_float_eager", {})[str(t)] = timeit(
                    lambda: keras_model({"log_mel": a, "faces": b}, training=False), args.runs, args.warmup)
    # a whole decision on the int8 graph at 1 thread: front end + key faces + model + vote
    m1 = EmotionModel(model_path, threads=1)

    def decision():
        x = frontend()
        k = key_faces(faces9, p.key_face_radius)
        out = m1.infer(x, faces9[np.resize(k, p.faces_per_patch)])
        return majority_vote(out["fused"])
    st["whole_decision_int8"] = {"1": timeit(decision, args.runs, args.warmup)}
    # infer() against the graph alone (inputs already set), interleaved: the difference is infer's Python
    # side (picking and encoding the faces, quantising the patch, reading and dequantising three outputs)
    io = interleaved_ratio(lambda: m1.infer(lm, faces5), m1.backend.interpreter.invoke, 3, args.runs, args.warmup)
    res["infer_python_ms_1thread"] = float(np.median([r["slow_p50_ms"] - r["fast_p50_ms"] for r in io]))
    macs = graph_macs(model_path)
    gflops = peak_gflops()
    p50 = st["model_tflite_int8"]["1"]["p50"]
    res["macs_per_decision"] = macs
    res["peak_gflops_1thread_sgemm"] = gflops
    res["int8_fraction_of_fp32_peak_1thread"] = 2 * macs / (p50 / 1e3) / (gflops * 1e9)
    if "model_tflite_float" in st:
        res["float_fraction_of_fp32_peak_1thread"] = (2 * macs / (st["model_tflite_float"]["1"]["p50"] / 1e3)
                                                      / (gflops * 1e9))
    res["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if "model_keras_float" in st:   # against the compiled (tf.function) Keras graph: the strict comparison
        rounds = interleaved_ratio(lambda: fn(a, b), lambda: m1.infer(lm, faces5), args.ratio_rounds, args.runs,
                                   args.warmup)
        res["speedup_rounds"] = rounds
        res["speedup_int8_vs_keras_1thread"] = float(np.median([r["ratio"] for r in rounds]))
        res["speedup_int8_vs_keras_1thread_stage_rows"] = st["model_keras_float"]["1"]["p50"] / p50
        res["speedup_int8_vs_keras_eager_1thread"] = st["model_keras_float_eager"]["1"]["p50"] / p50
    if "model_tflite_float" in st:
        res["speedup_int8_vs_tflite_float_1thread"] = st["model_tflite_float"]["1"]["p50"] / p50
    res["tensorflow_imported"] = "tensorflow" in sys.modules
    return res


def table(res: dict) -> str:
    rows = ["| stage | threads | p50 ms | p90 ms | p99 ms |", "|---|---|---|---|---|"]
    for name, v in res["stages"].items():
        items = v.items() if "p50" not in v else [("1", v)]
        for t, s in items:
            rows.append(f"| {name} | {t} | {s['p50']:.2f} | {s['p90']:.2f} | {s['p99']:.2f} |")
    extra = [f"MACs per decision: {res['macs_per_decision'] / 1e6:.1f} M; 1-thread fp32 sgemm peak "
             f"{res['peak_gflops_1thread_sgemm']:.1f} GFLOP/s; the int8 graph runs at "
             f"{100 * res['int8_fraction_of_fp32_peak_1thread']:.0f}% of that rate (int8 kernels can exceed it)"
             + (f", the float TFLite graph at {100 * res['float_fraction_of_fp32_peak_1thread']:.0f}%"
                if "float_fraction_of_fp32_peak_1thread" in res else "")
             + f"; peak RSS {res['peak_rss_mb']:.0f} MB (TensorFlow loaded: {res['tensorflow_imported']})"]
    if "infer_python_ms_1thread" in res:
        extra.append(f"infer()'s Python side (faces encoded, patch quantised, outputs read): "
                     f"{1e3 * res['infer_python_ms_1thread']:.0f} us of model_tflite_int8's 1-thread p50")
    if "speedup_int8_vs_keras_1thread" in res:
        extra.append(f"int8 fused decision vs Keras float, 1 thread: {res['speedup_int8_vs_keras_1thread']:.2f}x "
                     f"(compiled tf.function; median of {len(res['speedup_rounds'])} interleaved rounds: "
                     f"{', '.join(format(r['ratio'], '.2f') for r in res['speedup_rounds'])}), "
                     f"{res['speedup_int8_vs_keras_eager_1thread']:.1f}x (eager call)")
    return "\n".join(rows + [""] + extra)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="edge-bench", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", help="int8 .tflite (default: the shipped edge/models/av_emotion_int8.tflite)")
    ap.add_argument("--work", help="folder with av_emotion_float32.tflite / av_emotion.onnx (edge-export --work)")
    ap.add_argument("--keras", help="shipped.keras: adds Keras float rows (needs TensorFlow)")
    ap.add_argument("--keras-all-threads", action="store_true", help="Keras at every thread count (TF's pool is "
                    "set once per process, so the rows beyond 1 then reflect the first setting)")
    ap.add_argument("--clip", help="a real clip for the audio/frame inputs (default: synthetic)")
    ap.add_argument("--runs", type=int, default=50, help="timed runs per stage (default %(default)s)")
    ap.add_argument("--warmup", type=int, default=5, help="untimed runs first (default %(default)s)")
    ap.add_argument("--max-threads", type=int, default=min(4, os.cpu_count() or 1),
                    help="thread counts 1..K (default %(default)s)")
    ap.add_argument("--ratio-rounds", type=int, default=5, help="with --keras: rounds of Keras float then int8 "
                    "(--runs calls each) at 1 thread; the reported speed-up is the median of the rounds' p50 ratios "
                    "(default %(default)s)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", help="write the JSON here (default: print only)")
    ap.add_argument("--json", action="store_true", help="print the JSON instead of the table")
    return ap


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=os.environ.get("LOGLEVEL", "WARNING"), format="%(asctime)s %(name)s %(message)s")
    args = build_parser().parse_args(argv)
    if args.runs < 1 or args.max_threads < 1 or args.ratio_rounds < 1:
        print("edge-bench: error: --runs, --max-threads and --ratio-rounds must be >= 1", file=sys.stderr)
        return 2
    if args.keras:
        # TensorFlow reads its thread counts once, before the first op
        os.environ.setdefault("TF_NUM_INTRAOP_THREADS", "1")
        os.environ.setdefault("TF_NUM_INTEROP_THREADS", "1")
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from edge.runtime import ModelError
    from edge.vision.video import VideoError
    try:
        res = bench(args)
    except (ModelError, VideoError, FileNotFoundError) as e:
        print(f"edge-bench: error: {e}", file=sys.stderr)
        return 2
    res["command"] = "edge-bench " + " ".join(sys.argv[1:] if argv is None else argv)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(res, indent=2) + "\n")
    print(json.dumps(res) if args.json else table(res))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
