"""edge-run end to end: a real CREMA-D clip through the shipped int8 model, systemd notifications
(READY, periodic WATCHDOG), SIGTERM, config files, and the bad-input paths (clear error, exit code)."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
MODEL = REPO / "edge" / "models" / "av_emotion_int8.tflite"


@pytest.fixture(scope="module")
def clip(cremad_dir) -> Path:
    return sorted(cremad_dir.glob("*_ANG_*.flv"))[0]


def run(*args, env=None, timeout=120, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edge.run", *map(str, args)], cwd=REPO, capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, **(env or {})}, **kw)


def lines(stdout: str) -> list[dict]:
    return [json.loads(s) for s in stdout.splitlines() if s.strip()]


def test_help_names_every_source():
    r = run("--help")
    assert r.returncode == 0
    for flag in ("--camera", "--picamera", "--mic", "--video", "--realtime", "--config", "--http", "--mqtt",
                 "--delegate"):
        assert flag in r.stdout


def test_no_source_is_a_usage_error():
    r = run()
    assert r.returncode == 2 and "give a source" in r.stderr


def test_video_clip_events_and_summary(clip, tmp_path):
    out = tmp_path / "events.jsonl"
    r = run("--video", clip, "--jsonl", out)
    assert r.returncode == 0, r.stderr[-2000:]
    ev = lines(out.read_text())
    patches, summary = ev[:-1], ev[-1]
    assert len(patches) >= 2 and summary["summary"] is True
    for e in patches:
        assert e["emotion"] in ("neutral", "calm", "happy", "sad", "angry", "fearful", "disgust", "surprised")
        assert e["source"] == "fused" and e["faces_seen"] > 0 and e["speech_active"]
        for head in ("fused", "speech", "face"):
            assert len(e["probs"][head]) == 8 and abs(sum(e["probs"][head]) - 1) < 0.05
        assert set(e["latency_ms"]) >= {"frontend_ms", "infer_ms"}
    c = summary["counters"]
    assert c["frames"] > 50 and c["frames_with_face"] > 0.9 * c["frames"] and c["inference_errors"] == 0
    assert summary["emotion"] is not None


def test_process_never_imports_tensorflow(clip, tmp_path):
    code = ("import sys; from edge.run import main; rc = main(['--video', sys.argv[1], '--jsonl', sys.argv[2]]); "
            "bad = [m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'keras', 'mtcnn', 'training')]; "
            "assert not bad, bad; sys.exit(rc)")
    r = subprocess.run([sys.executable, "-c", code, str(clip), str(tmp_path / "o.jsonl")], cwd=REPO,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]


def test_output_is_deterministic(clip, tmp_path):
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    assert run("--video", clip, "--jsonl", a).returncode == 0
    assert run("--video", clip, "--jsonl", b).returncode == 0
    strip = lambda f: [{k: v for k, v in e.items() if k != "latency_ms"} for e in lines(f.read_text())]  # noqa: E731
    assert strip(a) == strip(b)


def test_audio_only_and_video_only(clip, tmp_path):
    r = run("--video", clip, "--no-video", "--jsonl", tmp_path / "a.jsonl")
    assert r.returncode == 0, r.stderr[-2000:]
    ev = lines((tmp_path / "a.jsonl").read_text())[:-1]
    assert ev and all(e["source"] == "speech" and e["probs"]["face"] is None for e in ev)
    r = run("--video", clip, "--no-audio", "--jsonl", tmp_path / "v.jsonl")
    assert r.returncode == 0, r.stderr[-2000:]
    ev = lines((tmp_path / "v.jsonl").read_text())[:-1]
    assert ev and all(e["source"] == "face" and e["probs"]["speech"] is None for e in ev)


def test_config_file_and_flag_override(clip, tmp_path):
    cfg = tmp_path / "edge-run.toml"
    cfg.write_text(f'threads = 1\n[source]\nvideo = "{clip}"\n[output]\njsonl = "{tmp_path / "cfg.jsonl"}"\n')
    r = run("--config", cfg)
    assert r.returncode == 0, r.stderr[-2000:]
    assert lines((tmp_path / "cfg.jsonl").read_text())
    r = run("--config", cfg, "--jsonl", tmp_path / "flag.jsonl")
    assert r.returncode == 0 and lines((tmp_path / "flag.jsonl").read_text())


@pytest.mark.parametrize("text, msg", [("threads = \n", "not valid TOML"), ("colour = 1\n", "unknown keys")])
def test_bad_config_file(tmp_path, text, msg):
    cfg = tmp_path / "bad.toml"
    cfg.write_text(text)
    r = run("--config", cfg)
    assert r.returncode != 0 and msg in r.stderr and str(cfg) in r.stderr


def test_missing_and_corrupt_model(clip, tmp_path):
    r = run("--video", clip, "--model", tmp_path / "nope.tflite")
    assert r.returncode == 2 and "nope.tflite" in r.stderr
    bad = tmp_path / "bad.tflite"
    bad.write_bytes(b"\x00garbage" * 100)
    (tmp_path / "manifest.json").write_text((REPO / "edge" / "models" / "manifest.json").read_text())
    r = run("--video", clip, "--model", bad)
    assert r.returncode == 2 and "bad.tflite" in r.stderr


@pytest.mark.parametrize("content", [b"", b"\x00\x01not a video" * 50])
def test_corrupt_video(tmp_path, content):
    f = tmp_path / "broken.mp4"
    f.write_bytes(content)
    r = run("--video", f)
    assert r.returncode != 0 and "broken.mp4" in r.stderr and "Traceback" not in r.stderr


def test_edgetpu_delegate_absent_gives_clear_error(clip):
    r = run("--video", clip, "--delegate", "edgetpu")
    assert r.returncode == 2 and "libedgetpu" in r.stderr and "Traceback" not in r.stderr


def test_picamera_off_pi_gives_clear_error():
    r = run("--picamera")
    assert r.returncode == 2 and "picamera2" in r.stderr and "Traceback" not in r.stderr


# ------------------------------------------------------------------ systemd notifications

def _recv(sock, until: float) -> list[str]:
    out = []
    while time.monotonic() < until:
        sock.settimeout(max(0.01, until - time.monotonic()))
        try:
            out += sock.recv(4096).decode().splitlines()
        except (TimeoutError, BlockingIOError):
            break
    return out


def test_notify_ready_then_watchdog_then_sigterm(clip):
    d = Path(tempfile.mkdtemp(prefix="ave-", dir="/tmp"))
    path = str(d / "notify.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as srv:
        srv.bind(path)
        env = {**os.environ, "NOTIFY_SOCKET": path, "WATCHDOG_USEC": "200000"}   # watchdog every 0.1 s
        env.pop("WATCHDOG_PID", None)
        t0 = time.monotonic()
        proc = subprocess.Popen([sys.executable, "-m", "edge.run", "--video", str(clip), "--realtime",
                                 "--jsonl", str(d / "o.jsonl")], cwd=REPO, env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            msgs, ready_at = [], None
            while ready_at is None and time.monotonic() - t0 < 30:
                for m in _recv(srv, time.monotonic() + 0.5):
                    msgs.append(m)
                    if m == "READY=1" and ready_at is None:
                        ready_at = time.monotonic() - t0
            assert ready_at is not None, msgs
            msgs += _recv(srv, time.monotonic() + 0.8)
            assert msgs.count("WATCHDOG=1") >= 2, msgs
            assert msgs.index("READY=1") < msgs.index("WATCHDOG=1")
            assert any(m.startswith("STATUS=") for m in msgs)
            t_term = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            rc = proc.wait(timeout=5)
            assert time.monotonic() - t_term < 2.0 and rc == 0, proc.stderr.read()[-2000:]
            assert "STOPPING=1" in _recv(srv, time.monotonic() + 0.3)
        finally:
            if proc.poll() is None:
                proc.kill()
            os.unlink(path)
            for f in d.iterdir():
                f.unlink()
            d.rmdir()


def test_no_watchdog_while_unhealthy():
    """A camera that never opens: STATUS says so, READY=1 is sent, WATCHDOG=1 never is."""
    from edge.run import Runner, parse
    from edge.sources import CameraSource, SourceError
    d = Path(tempfile.mkdtemp(prefix="ave-", dir="/tmp"))
    path = str(d / "n.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as srv:
        srv.bind(path)
        old = {k: os.environ.get(k) for k in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")}
        os.environ.update(NOTIFY_SOCKET=path, WATCHDOG_USEC="100000")
        os.environ.pop("WATCHDOG_PID", None)
        try:
            runner = Runner(parse(["--camera", "0", "--jsonl", str(d / "o.jsonl")]))

            def never():
                raise SourceError("camera 0 cannot be opened")
            runner.setup = lambda: None
            runner.camera = CameraSource(0, opener=never, backoff_s=(0.05, 0.1)).start()
            runner.loop = _FakeLoop()
            runner.video = runner.mic = None
            import threading
            threading.Timer(0.8, lambda: setattr(runner, "stop_requested", True)).start()
            assert runner.run() == 0
            msgs = _recv(srv, time.monotonic() + 0.3)
            runner.camera.stop()
        finally:
            for k, v in old.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
            os.unlink(path)
            for f in d.iterdir():
                f.unlink()
            d.rmdir()
    assert "READY=1" in msgs and "WATCHDOG=1" not in msgs
    assert any("camera unavailable" in m for m in msgs), msgs


class _FakeLoop:
    class p:
        patch_hop_seconds = 0.48

    def __init__(self):
        from edge.loop import Counters
        self.counters = Counters()

    def on_frame(self, t, rgb):
        pass

    def poll(self):
        return []

    def faces_only(self, t):
        return None


def test_camera_recovers_after_failures():
    """A camera that fails twice, then delivers: frames arrive, failures are counted, status is ok."""
    from edge.sources import CameraSource, SourceError
    calls = {"n": 0}

    def opener():
        calls["n"] += 1
        if calls["n"] <= 2:
            raise SourceError("unplugged")
        return (lambda: (time.sleep(0.01), np.zeros((4, 4, 3), np.uint8))[1]), (lambda: None)
    cam = CameraSource(0, opener=opener, backoff_s=(0.02, 0.05)).start()
    try:
        item = None
        t_end = time.monotonic() + 3
        while item is None and time.monotonic() < t_end:
            item = cam.read(timeout=0.1)
        assert item is not None and item[0] == "video"
        assert cam.failures == 2 and cam.status == "ok"
    finally:
        cam.stop()


def test_shipped_example_config_parses():
    """systemd/edge-run.toml (also embedded in the Pi user-data) is a valid edge-run configuration."""
    from edge.run import parse
    args = parse(["--config", str(REPO / "systemd" / "edge-run.toml")])
    assert args.camera == 0 and args.mic == "default" and args.http == "127.0.0.1:8080" and args.jsonl == "-"
    assert args.threads == 1 and args.detect_every == 5


def test_camera_mailbox_drops_and_counts_instead_of_queueing():
    """A camera faster than the loop: untaken frames are replaced (counted), memory holds one frame."""
    from edge.sources import CameraSource
    n = {"i": 0}

    def opener():
        def read():
            n["i"] += 1
            time.sleep(0.002)
            return np.full((2, 2, 3), n["i"] % 255, np.uint8)
        return read, (lambda: None)
    cam = CameraSource(0, opener=opener).start()
    try:
        time.sleep(0.3)                                  # the loop is "busy": nothing taken
        item = cam.read(timeout=1.0)
        assert item is not None and cam.dropped > 10
    finally:
        cam.stop()


def test_list_devices_exits_cleanly():
    r = run("--list-devices")
    assert r.returncode == 0 and "cameras" in r.stdout and "microphones" in r.stdout, r.stderr[-1000:]


def test_realtime_video_drops_late_frames_and_counts_them(clip):
    """--realtime paces a file like a live source; a loop slower than the frame rate drops video frames
    (counted), never audio."""
    from edge.sources import VideoFileSource
    src = VideoFileSource(clip, realtime=True)
    n_video = n_audio = 0
    for kind, _, _ in src:
        if kind == "video":
            n_video += 1
            time.sleep(0.1)                                       # a slow loop: 10 fps for a 30 fps clip
        else:
            n_audio += 1
    assert src.dropped > 10 and n_video + src.dropped > 50 and n_audio > 0


def test_speaker_prior_from_flag_or_config_sets_the_loops_speaker_normalisation(tmp_path):
    from edge.loop import EmotionLoop, LoopConfig
    from edge.model import EmotionModel
    from edge.run import parse
    assert parse(["--video", "x.mp4"]).speaker_prior == LoopConfig().speaker_prior_s == 10.0   # one default
    cfg = tmp_path / "edge-run.toml"
    cfg.write_text('speaker_prior = 30.0\n[source]\nvideo = "x.mp4"\n')
    assert parse(["--config", str(cfg)]).speaker_prior == 30.0
    assert parse(["--config", str(cfg), "--speaker-prior", "5"]).speaker_prior == 5.0
    for bad in ("-1", "inf", "nan"):
        with pytest.raises(SystemExit):
            parse(["--video", "x.mp4", "--speaker-prior", bad])
    loop = EmotionLoop(EmotionModel(), cfg=LoopConfig(speaker_prior_s=30.0), extractor=object())
    assert loop.norm.prior_frames == pytest.approx(3000.0)              # 10 ms log-mel frames
    assert EmotionLoop(EmotionModel(), extractor=object()).norm.prior_frames == pytest.approx(1000.0)
