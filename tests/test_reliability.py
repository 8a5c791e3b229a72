"""Reliability: bad files into every entry point, fuzzing, live faults, a bounded soak, privacy.

Fuzz sizes: AVE_FUZZ_EXAMPLES (default 1000 per target; e.g. 20000 for a long run).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.media import tone, write_video, write_wav

REPO = Path(__file__).resolve().parents[1]
FUZZ = int(os.environ.get("AVE_FUZZ_EXAMPLES", "1000"))
FUZZ_SETTINGS = settings(max_examples=FUZZ, deadline=None, derandomize=True,
                         suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


def record(check: str, case: str, what: str) -> None:
    """What happened, for reports/reliability.md (only when AVE_RELIABILITY_LOG names a file)."""
    log = os.environ.get("AVE_RELIABILITY_LOG")
    if log:
        with open(log, "a") as f:
            f.write(json.dumps({"check": check, "case": case, "what": what}) + "\n")


def edge_run(*args, cwd=REPO, env=None, timeout=120):
    return subprocess.run([sys.executable, "-m", "edge.run", *map(str, args)], cwd=cwd, capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})})


# ------------------------------------------------------------------ bad files

@pytest.fixture(scope="module")
def bad_files(tmp_path_factory) -> dict[str, tuple[Path, str]]:
    """name -> (file, expectation): "ok" = runs and decides (exit 0), "error" = clear error (exit != 0),
    "either" = one of the two (depends on what FFmpeg salvages)."""
    d = tmp_path_factory.mktemp("bad")
    good = write_video(d / "good.mp4", seconds=2.0)
    raw = good.read_bytes()
    files = {"good_mp4": (good, "ok")}
    (d / "truncated.mp4").write_bytes(raw[: len(raw) // 2])
    files["truncated_mp4"] = (d / "truncated.mp4", "either")
    corrupt = bytearray(raw)
    rng = np.random.default_rng(0)
    for i in rng.integers(len(raw) // 4, len(raw), 200):
        corrupt[i] ^= 0xFF
    (d / "corrupt.mp4").write_bytes(bytes(corrupt))
    files["corrupt_mp4"] = (d / "corrupt.mp4", "either")
    (d / "zero.mp4").write_bytes(b"")
    files["zero_bytes"] = (d / "zero.mp4", "error")
    (d / "noise.flv").write_bytes(rng.integers(0, 256, 5000, dtype=np.uint8).tobytes())
    files["random_bytes_flv"] = (d / "noise.flv", "error")
    files["wav_named_mp4"] = (write_wav(d / "speech.mp4", tone(2.0, 16000), 16000), "ok")
    files["audio_only_wav"] = (write_wav(d / "a.wav", tone(2.0, 16000), 16000), "ok")
    files["video_only_mp4"] = (write_video(d / "v.mp4", seconds=1.0, audio_rate=None), "ok")
    files["huge_dimensions"] = (write_video(d / "huge.mp4", seconds=0.4, size=(3840, 2160), fps=5,
                                            audio_rate=None), "ok")
    nan = tone(2.0, 16000)
    nan[1000:3000] = np.nan
    nan[5000:5100] = np.inf
    files["nan_inf_samples"] = (write_wav(d / "nan.wav", nan, 16000), "ok")
    files["8khz"] = (write_wav(d / "8k.wav", tone(2.0, 8000), 8000), "ok")
    files["96khz"] = (write_wav(d / "96k.wav", tone(2.0, 96000), 96000), "ok")
    files["stereo_48k"] = (write_wav(d / "st.wav", np.stack([tone(2.0, 48000), tone(2.0, 48000, 330)], 1),
                                     48000), "ok")
    files["missing"] = (d / "does_not_exist.mp4", "error")
    return files


BAD_NAMES = ["good_mp4", "truncated_mp4", "corrupt_mp4", "zero_bytes", "random_bytes_flv", "wav_named_mp4",
             "audio_only_wav", "video_only_mp4", "huge_dimensions", "nan_inf_samples", "8khz", "96khz",
             "stereo_48k", "missing"]


@pytest.mark.parametrize("name", BAD_NAMES)
def test_edge_run_bad_files(bad_files, name, tmp_path):
    f, expect = bad_files[name]
    out = tmp_path / "o.jsonl"
    r = edge_run("--video", f, "--jsonl", out, timeout=180)
    assert "Traceback" not in r.stderr, r.stderr[-3000:]
    if r.returncode == 0:
        assert expect in ("ok", "either"), f"{name}: expected an error, got success"
        events = [json.loads(s) for s in out.read_text().splitlines()]
        assert events and events[-1]["summary"] is True
        c = events[-1]["counters"]
        record("test_edge_run_bad_files", name, f"exit 0: {c['frames']} frames, {c['patches']} patches "
               f"({c['speech_patches']} speech), decision {events[-1]['emotion']}")
        for e in events[:-1]:                                   # never a silent non-finite answer
            for v in e["probs"].values():
                assert v is None or np.all(np.isfinite(v))
    else:
        assert expect in ("error", "either"), f"{name}: rc {r.returncode}: {r.stderr[-1500:]}"
        assert f.name in r.stderr, r.stderr[-1500:]
        msg = r.stderr.strip().splitlines()[-1].replace(str(f.parent) + "/", "")
        record("test_edge_run_bad_files", name, f"exit {r.returncode}: {msg}")


@pytest.mark.parametrize("name", ["zero_bytes", "random_bytes_flv", "missing", "video_only_mp4"])
def test_edge_bench_bad_clip(bad_files, name):
    f, _ = bad_files[name]
    r = subprocess.run([sys.executable, "-m", "export.bench", "--clip", str(f), "--runs", "1", "--warmup", "0",
                        "--max-threads", "1"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and f.name in r.stderr and "Traceback" not in r.stderr, r.stderr[-2000:]
    record("test_edge_bench_bad_clip", name, "exit 2: " + r.stderr.strip().splitlines()[-1].replace(
        str(f.parent) + "/", ""))


def test_edge_export_without_a_trained_model(tmp_path):
    r = subprocess.run([sys.executable, "-m", "export.cli", "--ship-dir", str(tmp_path / "none")], cwd=REPO,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and "shipped.keras" in r.stderr and "Traceback" not in r.stderr, r.stderr[-2000:]


def test_training_loader_counts_bad_files(bad_files, tmp_path):
    """edge-train's RAVDESS loader: unreadable / silent files are skipped and counted, names never guessed."""
    from edge.params import Params
    from training.ravdess import index_speech, load_features
    actor = tmp_path / "Actor_01"
    actor.mkdir()
    for name, src in (("03-01-05-01-01-01-01.wav", bad_files["zero_bytes"][0]),
                      ("03-01-04-01-01-01-01.wav", bad_files["random_bytes_flv"][0]),
                      ("03-01-03-01-01-01-01.wav", bad_files["audio_only_wav"][0]),
                      ("not-a-ravdess-name.wav", bad_files["audio_only_wav"][0])):
        (actor / name).write_bytes(src.read_bytes())
    (actor / "03-01-02-01-01-01-01.wav").write_bytes(write_wav(tmp_path / "s.wav", np.zeros(16000), 16000)
                                                     .read_bytes())
    clips, skipped_names = index_speech(tmp_path)
    assert len(skipped_names) == 1 and "not-a-ravdess-name" in str(skipped_names[0])
    kept, feats, skipped = load_features(clips, Params(), None, progress=False)
    assert [c.label for c in kept] == [2] and len(skipped) == 3


# ------------------------------------------------------------------ fuzzing

FUZZ_COUNTS: dict[str, dict[str, int]] = {}


def _count(target: str, outcome: str) -> None:
    d = FUZZ_COUNTS.setdefault(target, {})
    d[outcome] = d.get(outcome, 0) + 1


@pytest.fixture(scope="module", autouse=True)
def _fuzz_report():
    yield
    for target, d in FUZZ_COUNTS.items():
        record(target, "–", ", ".join(f"{v} {k}" for k, v in sorted(d.items())))


@FUZZ_SETTINGS
@given(data=st.binary(min_size=0, max_size=4096))
def test_fuzz_video_decoding(data):
    from edge.sources import VideoFileSource
    from edge.vision.video import VideoError
    with tempfile.NamedTemporaryFile(suffix=".mp4") as f:
        f.write(data)
        f.flush()
        try:
            for _ in VideoFileSource(f.name):
                pass
            _count("test_fuzz_video_decoding", "decoded")
        except VideoError as e:
            assert f.name in str(e)
            _count("test_fuzz_video_decoding", "VideoError naming the file")


@pytest.fixture(scope="module")
def mp4_bytes(tmp_path_factory) -> bytes:
    return write_video(tmp_path_factory.mktemp("fz") / "s.mp4", seconds=0.5, size=(64, 48)).read_bytes()


@FUZZ_SETTINGS
@given(flips=st.lists(st.tuples(st.integers(0, 10 ** 9), st.integers(1, 255)), min_size=1, max_size=20),
       cut=st.floats(0.05, 1.0))
def test_fuzz_mutated_mp4(mp4_bytes, flips, cut):
    from edge.audio.io import AudioError, decode_audio
    from edge.sources import VideoFileSource
    from edge.vision.video import VideoError
    b = bytearray(mp4_bytes[: max(1, int(len(mp4_bytes) * cut))])
    for pos, x in flips:
        b[pos % len(b)] ^= x
    with tempfile.NamedTemporaryFile(suffix=".mp4") as f:
        f.write(bytes(b))
        f.flush()
        try:
            for kind, _, x in VideoFileSource(f.name):
                assert np.all(np.isfinite(x)) if kind == "audio" else x.dtype == np.uint8
            _count("test_fuzz_mutated_mp4", "source decoded (partly)")
        except VideoError as e:
            assert f.name in str(e)
            _count("test_fuzz_mutated_mp4", "source: VideoError")
        try:
            wave, rate = decode_audio(f.name)
            assert rate > 0
            _count("test_fuzz_mutated_mp4", "audio decoded")
        except AudioError as e:
            assert f.name in str(e)
            _count("test_fuzz_mutated_mp4", "audio: AudioError")


@FUZZ_SETTINGS
@given(text=st.text(max_size=300))
def test_fuzz_config_parsing(text):
    from edge.run import load_config
    with tempfile.NamedTemporaryFile("w", suffix=".toml", delete=False) as f:
        f.write(text)
    try:
        cfg = load_config(f.name)
        assert isinstance(cfg, dict)
        _count("test_fuzz_config_parsing", "parsed")
    except SystemExit as e:
        assert f.name in str(e)
        _count("test_fuzz_config_parsing", "rejected with a message naming the file")
    finally:
        os.unlink(f.name)


@FUZZ_SETTINGS
@given(name=st.tuples(st.integers(0, 4), st.integers(0, 3), st.integers(0, 9), st.integers(0, 3), st.integers(0, 3),
                      st.integers(0, 3), st.integers(0, 26), st.sampled_from(["flac", "wav", "mp4", "FLAC", ""])).map(
    lambda t: "-".join(f"{v:02d}" for v in t[:7]) + (f".{t[7]}" if t[7] else "")) | st.text(max_size=40))
def test_fuzz_ravdess_names(name):
    from training.ravdess import RavdessNameError, parse_name
    try:
        info = parse_name(name)
    except RavdessNameError as e:
        assert name in str(e) or repr(name) in str(e)
        _count("test_fuzz_ravdess_names", "RavdessNameError")
    else:
        assert 1 <= info.emotion <= 8 and 1 <= info.actor <= 24
        _count("test_fuzz_ravdess_names", "valid names")


# ------------------------------------------------------------------ live faults

class _StubExtractor:
    """Replaces MTCNN in loop tests: a deterministic face crop on most frames."""

    def __init__(self, every_missing: int = 7):
        from edge.vision.faces import FaceStats
        self.stats, self.every_missing, self.rng = FaceStats(), every_missing, np.random.default_rng(0)

    def __call__(self, rgb):
        self.stats.frames += 1
        if self.stats.frames % self.every_missing == 0:
            self.stats.no_face += 1
            return None
        self.stats.with_face += 1
        return self.rng.integers(0, 255, (60, 60), np.uint8)


def _loop(**cfg):
    from edge.loop import EmotionLoop, LoopConfig
    from edge.model import EmotionModel
    return EmotionLoop(EmotionModel(), cfg=LoopConfig(**cfg), extractor=_StubExtractor())


def test_inference_raising_once_is_counted_and_the_loop_goes_on():
    loop = _loop()
    real, calls = loop.model.infer, {"n": 0}

    def flaky(lm, faces):
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("injected fault")
        return real(lm, faces)
    loop.model.infer = flaky
    events = []
    rate = 16000
    for i in range(60):                                     # 2 s at 30 fps, audio in 1/30 s chunks
        loop.on_frame(i / 30, np.zeros((48, 64, 3), np.uint8))
        loop.on_audio(i / 30, tone(1 / 30, rate) * (1 + 0.5 * np.sin(i)))
        events += loop.poll()
    assert loop.counters.inference_errors == 1 and loop.counters.inferences >= 2
    assert any(e["status"].startswith("inference error") for e in events)
    assert events[-1]["status"] == "ok" and events[-1]["emotion"] is not None


def test_mic_failure_is_reported_and_the_loop_continues():
    from edge.run import Runner, parse
    runner = Runner(parse(["--mic", "0", "--jsonl", os.devnull]))
    runner.loop = _loop()

    class Mic:
        status, n = "ok", 0

        def read(self):
            self.n += 1
            if self.n in (3, 4):
                raise OSError("[Errno -9981] Input overflowed")
            return [("audio", self.n * 0.1, tone(0.1, 16000))]

        def stop(self):
            pass
    runner.mic, runner.camera = Mic(), None
    seen = []
    real_tick = runner.tick

    def tick():
        real_tick()
        seen.append(runner.status)
        if runner.mic.n >= 30:
            runner.stop_requested = True
    runner.tick = tick
    assert runner._run_live() == 0
    assert runner.mic_errors == 2 and any("microphone error" in s for s in seen) and seen[-1] == "running"
    assert runner.loop.counters.patches > 0


def test_edge_run_keeps_running_without_mqtt_broker(bad_files, tmp_path):
    f, _ = bad_files["good_mp4"]
    r = edge_run("--video", f, "--jsonl", tmp_path / "o.jsonl", "--mqtt", "127.0.0.1:9")   # nothing listens on 9
    assert r.returncode == 0, r.stderr[-2000:]
    assert json.loads((tmp_path / "o.jsonl").read_text().splitlines()[-1])["summary"]


# ------------------------------------------------------------------ bounded soak

def _rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


@pytest.mark.slow
def test_soak_20000_frames_bounded_memory_and_queues():
    """20,000 frames (30 fps) with matching audio through the real loop and int8 model (faces from a stub
    detector so that the run takes about a minute): RSS, buffers and latency stay flat."""
    loop = _loop()
    rng = np.random.default_rng(0)
    fps, rate, n_frames = 30, 16000, 20000
    frame = np.zeros((48, 64, 3), np.uint8)
    chunk = rate // fps
    rss, lens, lat = [], [], []
    for i in range(n_frames):
        t = i / fps
        loop.on_frame(t, frame)
        speech = (i // 90) % 3 != 2                           # 3 s speech, 1.5 s silence
        x = (0.2 * np.sin(2 * np.pi * 180 * (np.arange(chunk) + i * chunk) / rate) if speech else
             np.zeros(chunk)) + 0.001 * rng.standard_normal(chunk)
        loop.on_audio(t, x.astype(np.float32))
        for e in loop.poll():
            lat.append(e["latency_ms"]["infer_ms"] + e["latency_ms"]["frontend_ms"])
        if i % 500 == 0:
            rss.append(_rss_mb())
            lens.append((len(loop.key_faces), len(loop.votes), len(loop.keys._buf), len(loop.all_votes)))
    grow = rss[-1] - rss[len(rss) // 10]                     # after warm-up (first 10%)
    max_keys = max(k for k, _, _, _ in lens)
    max_votes = max(v for _, v, _, _ in lens)
    lat = np.asarray(lat)
    half = len(lat) // 2
    p99a, p99b = np.percentile(lat[:half], 99), np.percentile(lat[half:], 99)
    report = {"frames": n_frames, "patches": loop.counters.patches, "inferences": loop.counters.inferences,
              "rss_mb_after_warmup": rss[len(rss) // 10], "rss_mb_end": rss[-1], "rss_growth_mb": grow,
              "max_key_faces_buffered": max_keys, "max_votes_buffered": max_votes,
              "max_face_window": max(w for _, _, w, _ in lens),
              "p99_ms_first_half": float(p99a), "p99_ms_second_half": float(p99b)}
    if os.environ.get("AVE_WRITE_REPORTS"):
        (REPO / "reports" / "soak.json").write_text(json.dumps(report, indent=2) + "\n")
    assert grow <= 5.0, report
    assert max_keys <= 2 * fps and max_votes <= 2 * 3.0 / 0.48 + 2 and report["max_face_window"] <= 9, report
    assert p99b <= 2 * p99a + 5, report                       # flat: no growth with run time (loose, CPU shared)


# ------------------------------------------------------------------ privacy

def _snapshot(dirs: list[Path]) -> set[str]:
    out = set()
    for d in dirs:
        if d.is_dir():
            for root, _, files in os.walk(d):
                out |= {os.path.join(root, f) for f in files}
    return out


def test_privacy_nothing_written_but_the_configured_output(bad_files, tmp_path):
    f, _ = bad_files["good_mp4"]
    home, tmp, cwd = tmp_path / "home", tmp_path / "tmp", tmp_path / "cwd"
    for d in (home, tmp, cwd):
        d.mkdir()
    out = tmp_path / "events.jsonl"
    watch = [home, tmp, cwd, REPO / "edge", Path("/dev/shm")]
    before = _snapshot(watch)
    r = edge_run("--video", f, "--jsonl", out, cwd=cwd, env={"HOME": str(home), "TMPDIR": str(tmp),
                                                               "XDG_CACHE_HOME": str(home / ".cache")})
    assert r.returncode == 0, r.stderr[-2000:]
    new = _snapshot(watch) - before
    new = {n for n in new if "__pycache__" not in n}
    assert not new, new
    assert out.is_file()
