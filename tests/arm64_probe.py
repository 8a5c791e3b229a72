"""Run the device package on fixed seeded inputs and print one JSON object; host and arm64 chroot alike.

    PYTHONPATH=. python tests/arm64_probe.py > probe.json                      # host (x86)
    python tests/arm64_chroot.py run -- python tests/arm64_probe.py            # arm64 chroot

"results" maps a name to {"dtype", "shape", "values"} (values flattened, float32 widened to
float64 exactly, so JSON round-trips bit for bit); tests/test_arm64.py compares the host's and
the chroot's results. "timings_ms" are per step, wall clock, for information only.
"""
from __future__ import annotations

import time

T_START = time.perf_counter()

import hashlib  # noqa: E402
import importlib.util  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import wave  # noqa: E402
from importlib import metadata  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

SEED = 20240601
PACKAGES = ("numpy", "ai-edge-litert", "opencv-python-headless", "av", "soxr")
# MTCNN net -> fixed input shape (NHWC, values as the cascade feeds them: (x - 127.5) / 128).
NET_INPUTS = {"pnet": (1, 48, 64, 3), "rnet": (4, 24, 24, 3), "onet": (2, 48, 48, 3)}


def as_result(x: np.ndarray) -> dict:
    x = np.asarray(x)
    return {"dtype": str(x.dtype), "shape": list(x.shape), "values": x.ravel().tolist()}


def versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def probe_nets(results: dict, timings: dict) -> None:
    import edge
    from edge.runtime import load_model
    models = Path(edge.__file__).resolve().parent / "models"
    rng = np.random.default_rng(SEED)
    for net, shape in NET_INPUTS.items():
        path = models / f"mtcnn_{net}.tflite"
        t0 = time.perf_counter()
        model = load_model(path, threads=1)
        model.resize_input(shape)
        timings[f"{net}_load"] = (time.perf_counter() - t0) * 1e3
        x = rng.uniform(-1.0, 1.0, size=shape).astype(np.float32)   # (n, h, w, 3)
        t0 = time.perf_counter()
        out = model.predict(x)
        timings[f"{net}_invoke"] = (time.perf_counter() - t0) * 1e3
        results[f"{net}_sha256"] = hashlib.sha256(path.read_bytes()).hexdigest()
        for name in sorted(out):
            results[f"{net}:{name}"] = as_result(out[name])


def probe_cascade(results: dict, timings: dict) -> None:
    """The whole MTCNN cascade (OpenCV resampling, NMS, three nets) on a seeded synthetic frame."""
    import cv2

    from edge.vision.mtcnn import MTCNN
    rng = np.random.default_rng(SEED + 1)
    frame = cv2.GaussianBlur(rng.integers(0, 256, size=(120, 160, 3), dtype=np.uint8), (0, 0), 3)
    cv2.circle(frame, (80, 60), 30, (200, 170, 150), -1)                    # a skin-coloured disc
    for cx in (68, 92):
        cv2.circle(frame, (cx, 52), 4, (40, 30, 30), -1)                    # two dark "eyes"
    cv2.ellipse(frame, (80, 75), (10, 4), 0, 0, 180, (90, 40, 40), -1)     # a "mouth"
    results["frame"] = as_result(frame)
    results["frame_area_60x80"] = as_result(cv2.resize(frame, (80, 60), interpolation=cv2.INTER_AREA))
    t0 = time.perf_counter()
    # Low thresholds so that candidates reach R- and O-net: this checks the code path, not recall.
    faces = MTCNN(min_face_size=20, thresholds=(0.05, 0.05, 0.05)).detect(frame)
    timings["mtcnn_detect"] = (time.perf_counter() - t0) * 1e3
    results["mtcnn_boxes"] = as_result(faces.boxes)
    results["mtcnn_scores"] = as_result(faces.scores)
    results["mtcnn_landmarks"] = as_result(faces.landmarks)


def probe_audio(results: dict, timings: dict) -> None:
    """numpy log-mel of seeded noise; then a 48 kHz stereo WAV through PyAV + soxr + log-mel."""
    from edge.audio.features import waveform_to_log_mel, waveform_to_patches
    from edge.audio.io import load_audio
    from edge.params import Params
    p = Params()
    rng = np.random.default_rng(SEED + 2)
    noise = (0.1 * rng.standard_normal(int(1.5 * p.sample_rate))).astype(np.float32)   # (24000,)
    t0 = time.perf_counter()
    lm = waveform_to_log_mel(noise, p)                                                 # (n_frames, 64)
    timings["log_mel"] = (time.perf_counter() - t0) * 1e3
    results["noise_log_mel"] = as_result(lm)
    results["noise_patches_shape"] = list(waveform_to_patches(noise, p).shape)        # (n_patches, 96, 64)

    t = np.arange(48000) / 48000.0                                                     # 1 s at 48 kHz
    left = 0.3 * np.sin(2 * np.pi * 440.0 * t) + 0.05 * rng.standard_normal(t.size)
    right = 0.3 * np.sin(2 * np.pi * 660.0 * t) + 0.05 * rng.standard_normal(t.size)
    pcm = (np.clip(np.stack([left, right], axis=1), -1, 1) * 32767).astype("<i2")     # (48000, 2)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "probe48k.wav"
        with wave.open(str(path), "wb") as w:
            w.setnchannels(2)
            w.setsampwidth(2)
            w.setframerate(48000)
            w.writeframes(pcm.tobytes())
        t0 = time.perf_counter()
        mono16k = load_audio(path, p)                                                  # (16000,) float32
        timings["load_audio_48k_stereo"] = (time.perf_counter() - t0) * 1e3
    results["wav48k_to_16k_mono"] = as_result(mono16k)
    results["wav48k_log_mel"] = as_result(waveform_to_log_mel(mono16k, p))


def main() -> int:
    t_imported = time.perf_counter()
    results: dict = {}
    timings: dict = {"python_start_to_numpy": (t_imported - T_START) * 1e3}
    probe_nets(results, timings)
    probe_cascade(results, timings)
    probe_audio(results, timings)
    timings["total"] = (time.perf_counter() - T_START) * 1e3
    report = {
        "machine": platform.machine(),
        "python": platform.python_version(),
        "versions": versions(),
        "tensorflow_importable": importlib.util.find_spec("tensorflow") is not None,
        "results": results,
        "timings_ms": {k: round(v, 2) for k, v in timings.items()},
    }
    sys.stdout.write(json.dumps(report) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
