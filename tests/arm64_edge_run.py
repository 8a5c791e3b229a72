"""edge-run --video and edge-bench on one clip; prints one JSON line for tests/test_arm64.py.

    python tests/arm64_edge_run.py CLIP

"results" (compared host vs arm64): the int8 graph's outputs on fixed inputs (close, not identical:
LiteRT's int8 kernels differ between x86 and NEON by a few quantization steps),
and per patch event of the clip the fused/speech/face probabilities (close: the float front ends,
numpy's FFT and the MTCNN cascade, differ in the last bits between the CPUs, which can move a face
crop by a pixel or an input by one quantization step); "info" has the per-patch emotions. "timing": edge-bench's int8 model p50 and
the wall time of the edge-run pass (reported, not compared).
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import sys
import tempfile
import time


def main() -> None:
    clip = sys.argv[1]
    from edge.run import main as edge_run
    out = tempfile.mktemp(suffix=".jsonl")
    t = time.perf_counter()
    rc = edge_run(["--video", clip, "--jsonl", out])
    wall = time.perf_counter() - t
    events = [json.loads(s) for s in open(out).read().splitlines() if s.strip()]
    os.unlink(out)
    patches, summary = events[:-1], events[-1]
    results = {"rc": rc, "n_events": len(patches), "frames": summary["counters"]["frames"]}
    import numpy as np

    def arr(x) -> dict:
        a = np.asarray(x, dtype=np.float64)
        return {"dtype": str(a.dtype), "shape": list(a.shape), "values": a.ravel().tolist()}
    for head in ("fused", "speech", "face"):
        results[f"clip_probs_{head}"] = arr([e["probs"][head] or [np.nan] * 8 for e in patches])
    # the int8 graph on identical inputs

    from edge.model import EmotionModel
    rng = np.random.default_rng(0)
    m = EmotionModel()
    for i in range(3):
        out = m.infer(rng.normal(0, 2, (96, 64)).astype(np.float32), rng.integers(0, 255, (5, 60, 60), np.uint8))
        for k, v in out.items():
            results[f"int8_fixed_{i}_{k}"] = arr(v)
    info = {"emotions": [e["emotion"] for e in patches], "clip_emotion": summary["emotion"]}
    from export.bench import main as bench
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        bench(["--runs", "5", "--warmup", "2", "--max-threads", "1", "--json"])
    b = json.loads(buf.getvalue().strip().splitlines()[-1])
    timing = {"edge_run_wall_s": wall, "int8_model_p50_ms": b["stages"]["model_tflite_int8"]["1"]["p50"],
              "audio_frontend_p50_ms": b["stages"]["audio_frontend"]["p50"],
              "face_detect_640x360_p50_ms": b["stages"]["face_detect_640x360"]["p50"], "machine": b["machine"]}
    print(json.dumps({"results": results, "timing": timing, "info": info}))


if __name__ == "__main__":
    main()
