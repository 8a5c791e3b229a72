"""Face detection benchmark: the ``mtcnn`` package vs the edge cascade and its shortcuts.

    python -m export.bench_faces --cremad ../shared/data/cremad --out reports/face_detection_bench.json

1. Speed: median per-frame detection time at 1280x720 and 640x360 (CREMA-D 480x360 frames
   upscaled and letterboxed), one thread everywhere (TF intra/inter-op 1, LiteRT 1), after a
   warm-up, on the same frames for every detector.
2. Recall of the edge shortcuts (min_face_size, downscale, detect-every-N with tracking) against
   the package on every frame of the six CREMA-D clips: a frame counts as found when the edge
   face (largest, or tracked) overlaps the package's largest face with IoU >= --iou.
Writes JSON (machine info included) and prints a table.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys
import time
from pathlib import Path

import cv2
import numpy as np

from edge.vision.mtcnn import MTCNN, FaceTracker, iou
from edge.vision.video import read_frames

log = logging.getLogger(__name__)

EMOTIONS = ("ANG", "DIS", "FEA", "HAP", "NEU", "SAD")
RESOLUTIONS = ((1280, 720), (640, 360))  # W, H
# name -> (MTCNN kwargs, detect_every: None = detect every frame without a tracker)
EDGE_CONFIGS: dict[str, tuple[dict, int | None]] = {
    "edge": ({}, None),
    "edge min_face=40": ({"min_face_size": 40}, None),
    "edge min_face=60": ({"min_face_size": 60}, None),
    "edge downscale=0.5": ({"downscale": 0.5}, None),
    "edge min_face=40 downscale=0.5": ({"min_face_size": 40, "downscale": 0.5}, None),
    "edge track every 5": ({}, 5),
    "edge track every 10": ({}, 10),
    "edge downscale=0.5 track every 5": ({"downscale": 0.5}, 5),
}


def machine_info() -> dict:
    from edge.machine import cpu_model
    governor = Path("/sys/devices/system/cpu/cpu0/cpufreq/scaling_governor")
    import ai_edge_litert
    import tensorflow as tf
    return {
        "cpu": cpu_model(), "cores": os.cpu_count(), "machine": platform.machine(),
        "governor": governor.read_text().strip() if governor.exists() else None,
        "load_avg_1_5_15": os.getloadavg(), "python": platform.python_version(),
        "tensorflow": tf.__version__, "ai_edge_litert": getattr(ai_edge_litert, "__version__", "?"),
        "opencv": cv2.__version__, "threads": 1,
    }


def letterbox(frame: np.ndarray, width: int, height: int) -> np.ndarray:
    """Scale (keeping aspect) into (height, width, 3), centred on black bars."""
    h, w = frame.shape[:2]
    s = min(width / w, height / h)
    nw, nh = round(w * s), round(h * s)
    scaled = cv2.resize(frame, (nw, nh), interpolation=cv2.INTER_LINEAR if s > 1 else cv2.INTER_AREA)
    out = np.zeros((height, width, 3), np.uint8)
    y, x = (height - nh) // 2, (width - nw) // 2
    out[y:y + nh, x:x + nw] = scaled
    return out


def package_detector():
    import tensorflow as tf
    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    from mtcnn import MTCNN as PackageMTCNN
    det = PackageMTCNN()

    def detect(frame: np.ndarray) -> np.ndarray:
        """(n, 4) x1 y1 x2 y2 boxes."""
        out = det.detect_faces(frame, output_type="numpy", box_format="xyxy")
        return out[:, 1:5] if len(out) else np.zeros((0, 4))
    return detect


def edge_runner(kwargs: dict, every: int | None):
    """A per-frame function returning the edge face box (4,) or None, fresh state."""
    det = MTCNN(threads=1, **kwargs)
    if every is None:
        def detect(frame: np.ndarray) -> np.ndarray | None:
            d = det.detect(frame)
            return d.boxes[d.largest()] if len(d) else None
        return detect
    return FaceTracker(det, detect_every=every).update


def time_per_frame(fn, frames: list[np.ndarray], warmup: int = 3) -> dict[str, float]:
    for f in frames[:warmup]:
        fn(f)
    ts = []
    for f in frames:
        t0 = time.perf_counter()
        fn(f)
        ts.append(time.perf_counter() - t0)
    ms = np.asarray(ts) * 1e3
    return {"median_ms": float(np.median(ms)), "p90_ms": float(np.percentile(ms, 90)),
            "mean_ms": float(ms.mean()), "frames": len(ms)}


def speed(clips: dict[str, np.ndarray], n: int, with_package: bool) -> dict:
    pool = [f for e in EMOTIONS for f in clips[e][::10]]  # spread over all six clips
    frames = [pool[i % len(pool)] for i in range(n)]
    result = {}
    for w, h in RESOLUTIONS:
        boxed = [letterbox(f, w, h) for f in frames]
        runners = {"package": package_detector()} if with_package else {}
        for name, (kwargs, every) in EDGE_CONFIGS.items():
            runners[name] = edge_runner(kwargs, every)  # trackers: amortised over the frames
        key = f"{w}x{h}"
        result[key] = {name: time_per_frame(fn, boxed) for name, fn in runners.items()}
        for name, r in result[key].items():
            log.info("%s %-34s median %.1f ms", key, name, r["median_ms"])
    return result


def recall(clips: dict[str, np.ndarray], iou_min: float) -> dict:
    """Every edge config against the package's largest face on every frame of every clip."""
    ref_fn = package_detector()
    refs, ref_ms, counts = {}, [], []
    for e in EMOTIONS:
        boxes = []
        for f in clips[e]:
            t0 = time.perf_counter()
            boxes.append(ref_fn(f))
            ref_ms.append((time.perf_counter() - t0) * 1e3)
        counts += [len(b) for b in boxes]
        refs[e] = [b[np.argmax((b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1]))] if len(b) else None
                   for b in boxes]
    result = {"package": {"median_ms_480x360": float(np.median(ref_ms)),
                          "mean_ms_480x360": float(np.mean(ref_ms)), "frames": len(ref_ms),
                          "faces_per_frame": {str(k): counts.count(k) for k in sorted(set(counts))}}}
    for name, (kwargs, every) in EDGE_CONFIGS.items():
        found = with_ref = extra = 0
        ious, ms = [], []
        for e in EMOTIONS:
            fn = edge_runner(kwargs, every)  # a fresh tracker per clip
            for frame, ref in zip(clips[e], refs[e], strict=True):
                t0 = time.perf_counter()
                box = fn(frame)
                ms.append((time.perf_counter() - t0) * 1e3)
                if ref is None:
                    extra += box is not None
                    continue
                with_ref += 1
                o = float(iou(ref[None], box[None])[0, 0]) if box is not None else 0.0
                ious.append(o)
                found += o >= iou_min
        result[name] = {
            "recall": found / max(with_ref, 1), "frames_with_package_face": with_ref,
            "recall_at_iou": {str(t): float(np.mean(np.asarray(ious) >= t)) if ious else None
                              for t in (0.5, 0.7, 0.8, 0.9)},
            "found": found, "faces_without_package_face": extra,
            "mean_iou": float(np.mean(ious)) if ious else None,
            "min_iou": float(np.min(ious)) if ious else None,
            "median_ms_480x360": float(np.median(ms)), "mean_ms_480x360": float(np.mean(ms)),
        }
        log.info("%-34s recall %.3f mean IoU %.3f", name, result[name]["recall"], result[name]["mean_iou"])
    return result


def print_table(report: dict) -> None:
    """Times: median / mean ms per frame (the mean is the amortised cost of a tracker)."""
    res = [f"{w}x{h}" for w, h in RESOLUTIONS]
    head = f"{'detector':34s} " + " ".join(f"{r + ' med/mean ms':>20s}" for r in res)
    head += f" {'480x360 mean':>12s} {'rec@.5':>7s} {'rec@.8':>7s} {'mean IoU':>9s} {'min IoU':>8s}"
    print(head)
    print("-" * len(head))
    names = ["package"] * ("package" in report["speed"].get(res[0], {})) + list(EDGE_CONFIGS)
    nan = {"median_ms": float("nan"), "mean_ms": float("nan")}
    for name in names:
        row = f"{name:34s} "
        for r in res:
            t = report["speed"].get(r, {}).get(name, nan)
            row += f" {t['median_ms']:9.1f} /{t['mean_ms']:8.1f}"
        rec = report.get("recall", {}).get(name)
        if rec and name == "package":
            row += f" {rec['mean_ms_480x360']:12.1f}"
        elif rec:
            row += (f" {rec['mean_ms_480x360']:12.1f} {rec['recall']:7.3f} {rec['recall_at_iou']['0.8']:7.3f}"
                    f" {rec['mean_iou']:9.4f} {rec['min_iou']:8.4f}")
        print(row)


def speedups(speed_report: dict) -> dict:
    """Package / edge mean ms per frame (amortised: tracked configs detect only every N frames), per
    resolution and edge config, from one run's timings."""
    out = {}
    for res, rows in speed_report.items():
        pkg = rows.get("package", {}).get("mean_ms")
        if pkg:
            out[res] = {k: pkg / v["mean_ms"] for k, v in rows.items() if k != "package" and v.get("mean_ms")}
    return out


def main(argv: list[str] | None = None) -> None:
    shared = Path(os.environ.get("AVE_SHARED") or Path(__file__).resolve().parents[2] / "shared")
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cremad", type=Path, default=shared / "data" / "cremad",
                        help="folder with the six 1001_DFA_*_XX.flv clips")
    parser.add_argument("--frames", type=int, default=30, help="timed frames per resolution")
    parser.add_argument("--iou", type=float, default=0.5, help="IoU for a face to count as found")
    parser.add_argument("--no-package", action="store_true", help="skip the mtcnn package (speed only)")
    parser.add_argument("--out", type=Path, default=Path("reports/face_detection_bench.json"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    clips = {e: read_frames(args.cremad / f"1001_DFA_{e}_XX.flv")[1] for e in EMOTIONS}
    report = {
        "command": " ".join(["python -m export.bench_faces", *(sys.argv[1:] if argv is None else argv)]),
        "machine": machine_info(),
        "clips": {e: int(len(f)) for e, f in clips.items()},
        "goal_ms_640x360": 25.0,
        "iou_found": args.iou,
        "configs": {k: {"mtcnn": kw, "detect_every": ev} for k, (kw, ev) in EDGE_CONFIGS.items()},
        "speed": speed(clips, args.frames, with_package=not args.no_package),
    }
    if not args.no_package:
        report["speedup_vs_package"] = speedups(report["speed"])
        report["recall"] = recall(clips, args.iou)
    report["machine"]["load_avg_end"] = os.getloadavg()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print_table(report)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
