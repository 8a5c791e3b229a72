"""edge-run: audio-visual emotion recognition on the device, all day.

    edge-run --camera 0 --mic default --http 127.0.0.1:8080     # a kiosk: webcam + microphone
    edge-run --picamera --mic 1                                  # Raspberry Pi camera module
    edge-run --video clip.mp4 --jsonl out.jsonl                  # a file, as fast as possible
    edge-run --video clip.mp4 --realtime                         # ... paced like a live source
    edge-run --config /etc/av-emotion-edge/edge-run.toml         # the systemd service

Audio-only: give only --mic (or --video with --no-video); video-only: only a camera (or --no-audio).
One JSON line per 0.48 s patch: timestamp, emotion (vote over the decision window), fused / speech /
face probabilities, faces seen, dropped frames, latency per stage. Under systemd (Type=notify) it
sends READY=1 once the model is loaded and the sources are open, STATUS= lines, and WATCHDOG=1 only
while the loop makes progress. SIGTERM stops it cleanly. TensorFlow is never imported; frames and
audio never touch the disk.

Config file (TOML; command-line flags override it): top-level model, threads, delegate,
detect_every, decision_window, speaker_prior; [source] camera | picamera | video, mic, realtime, no_audio, no_video;
[output] jsonl, http; [output.mqtt] host, port, topic.
"""
from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import time
from pathlib import Path

log = logging.getLogger("edge-run")

EXIT_OK, EXIT_USAGE, EXIT_RUNTIME = 0, 2, 1


def load_config(path: str | None) -> dict:
    """Flatten the TOML config into argparse destinations."""
    if not path:
        return {}
    import tomllib
    f = Path(path)
    try:
        cfg = tomllib.loads(f.read_text())
    except FileNotFoundError:
        raise SystemExit(f"edge-run: error: config file not found: {f}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise SystemExit(f"edge-run: error: config file {f} is not valid TOML: {e}") from None
    out: dict = {}
    known_top = {"model", "threads", "delegate", "detect_every", "decision_window", "speaker_prior", "source", "output",
                 "log_level"}
    unknown = set(cfg) - known_top
    if unknown:
        raise SystemExit(f"edge-run: error: config file {f}: unknown keys {sorted(unknown)}")
    for k in ("model", "threads", "delegate", "detect_every", "decision_window", "speaker_prior", "log_level"):
        if k in cfg:
            out[k] = cfg[k]
    src = cfg.get("source", {})
    for k in ("camera", "picamera", "video", "mic", "realtime", "no_audio", "no_video"):
        if k in src:
            out[k] = src[k]
    o = cfg.get("output", {})
    for k in ("jsonl", "http"):
        if k in o:
            out[k] = o[k]
    mq = o.get("mqtt")
    if isinstance(mq, dict) and mq.get("host"):
        out["mqtt"] = f"{mq['host']}:{mq.get('port', 1883)}"
        out["mqtt_topic"] = mq.get("topic", "av-emotion-edge")
    return out


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="edge-run", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", help="TOML config file (flags given here override it)")
    s = ap.add_argument_group("sources")
    s.add_argument("--camera", help="OpenCV camera index or device path (V4L2), e.g. 0 or /dev/video0")
    s.add_argument("--picamera", action="store_true", default=None,
                   help="the Raspberry Pi camera (picamera2 low-resolution stream; Pi only)")
    s.add_argument("--mic", help="pyaudio input: device index, a name substring, or 'default'")
    s.add_argument("--video", help="a video file (audio + video) instead of live sources")
    s.add_argument("--realtime", action="store_true", default=None, help="pace --video like a live source")
    s.add_argument("--no-audio", action="store_true", default=None, help="ignore the audio (video-only)")
    s.add_argument("--no-video", action="store_true", default=None, help="ignore the video (audio-only)")
    s.add_argument("--list-devices", action="store_true", help="list the cameras (V4L2) and microphones (pyaudio) "
                   "this machine has, then exit")
    m = ap.add_argument_group("model")
    m.add_argument("--model", help="int8 .tflite (default: the one shipped in edge/models/)")
    m.add_argument("--threads", type=int, help="inference threads (default 1)")
    m.add_argument("--delegate", choices=["edgetpu"],
                   help="run on a Coral Edge TPU: needs libedgetpu1-std and a model compiled with edgetpu_compiler; "
                        "without libedgetpu edge-run exits with code 2 before READY (no silent CPU fallback)")
    m.add_argument("--detect-every", type=int, help="full face detection every N frames, tracking between (default 5)")
    m.add_argument("--decision-window", type=float, help="seconds of votes per decision (default 3.0)")
    m.add_argument("--speaker-prior", type=float,
                   help="seconds of speech the training population's mean log-mel is worth in the speaker "
                        "normalisation (default 10). Larger is steadier for a speaker who stays in one emotion or "
                        "says little, and slower to adapt to a new voice (reports/speaker_skew.md measured 1 to 100 s)")
    o = ap.add_argument_group("outputs")
    o.add_argument("--jsonl", help="JSON lines to this file, '-' for stdout (default '-')")
    o.add_argument("--http", help="serve the kiosk page on HOST:PORT (e.g. 127.0.0.1:8080)")
    o.add_argument("--mqtt", help="publish to an MQTT broker HOST[:PORT] (needs paho-mqtt)")
    o.add_argument("--mqtt-topic", help="topic prefix (default av-emotion-edge)")
    o.add_argument("--no-summary", action="store_true", help="no final summary line for --video")
    o.add_argument("--log-level", help="DEBUG, INFO, WARNING (default INFO)")
    return ap


def list_devices() -> list[str]:
    """Cameras from /dev/video* and /sys names; input devices from pyaudio (when installed)."""
    lines = ["cameras (--camera N or --camera /dev/videoN):"]
    cams = sorted(Path("/dev").glob("video*"), key=lambda f: int("0" + "".join(c for c in f.name if c.isdigit())))
    for dev in cams:
        name = Path(f"/sys/class/video4linux/{dev.name}/name")
        lines.append(f"  {dev}  {name.read_text().strip() if name.is_file() else ''}")
    if not cams:
        lines.append("  none found (no /dev/video*)")
    lines.append("microphones (--mic INDEX or --mic NAME):")
    try:
        import pyaudio
    except ImportError:
        lines.append("  pyaudio is not installed: pip install 'av-emotion-edge[mic]' (needs portaudio19-dev)")
        return lines
    pa = pyaudio.PyAudio()
    try:
        found = [(i, pa.get_device_info_by_index(i)) for i in range(pa.get_device_count())]
        found = [(i, d) for i, d in found if d.get("maxInputChannels", 0) > 0]
        lines += [f"  {i}  {d['name']} ({int(d['defaultSampleRate'])} Hz)" for i, d in found] or ["  none found"]
    finally:
        pa.terminate()
    return lines


def parse(argv: list[str]) -> argparse.Namespace:
    ap = build_parser()
    args = ap.parse_args(argv)
    if args.list_devices:
        print("\n".join(list_devices()))
        raise SystemExit(0)
    defaults = {"threads": 1, "detect_every": 5, "decision_window": 3.0, "speaker_prior": 10.0, "jsonl": "-",
                "mqtt_topic": "av-emotion-edge", "log_level": "INFO"}
    for k, v in {**defaults, **load_config(args.config)}.items():
        if getattr(args, k, None) is None:
            setattr(args, k, v)
    for k in ("picamera", "realtime", "no_audio", "no_video"):
        setattr(args, k, bool(getattr(args, k)))
    live = [x for x in (args.camera is not None, args.picamera, args.mic is not None) if x]
    if args.video and live:
        ap.error("--video cannot be combined with --camera/--picamera/--mic")
    if not args.video and not live:
        ap.error("give a source: --camera N, --picamera, --mic DEVICE or --video FILE (see --help)")
    if args.camera is not None and args.picamera:
        ap.error("--camera and --picamera are exclusive")
    if args.threads < 1 or args.detect_every < 1 or args.decision_window <= 0:
        ap.error("--threads and --detect-every must be >= 1, --decision-window > 0")
    if not 0 <= args.speaker_prior < float("inf"):
        ap.error(f"--speaker-prior must be a number of seconds >= 0, got {args.speaker_prior}")
    return args


def _host_port(s: str, default_port: int) -> tuple[str, int]:
    host, _, port = str(s).rpartition(":") if ":" in str(s) else (str(s), "", str(default_port))
    try:
        return host or "127.0.0.1", int(port)
    except ValueError:
        raise SystemExit(f"edge-run: error: bad HOST:PORT {s!r}") from None


class Runner:
    """Sources -> EmotionLoop -> outputs, with systemd notifications and a health-gated watchdog."""

    def __init__(self, args: argparse.Namespace):
        from edge.outputs.notify import Notifier, watchdog_interval_s
        self.args = args
        self.notifier = Notifier()
        self.wd_interval = watchdog_interval_s()
        self.stop_requested = False
        self.sinks: list = []
        self.camera = self.mic = self.video = None
        self.last_progress = time.monotonic()
        self.last_wd = 0.0
        self.status = "starting"
        self.mic_error: str | None = None
        self.mic_errors = 0

    # -------------------------------------------------------------- setup
    def setup(self) -> None:
        from edge.loop import EmotionLoop, LoopConfig
        from edge.model import EmotionModel
        a = self.args
        self.model = EmotionModel(a.model, threads=a.threads, delegate=a.delegate)
        self.loop = EmotionLoop(self.model, cfg=LoopConfig(detect_every=a.detect_every,
                                                           decision_window_s=a.decision_window,
                                                           speaker_prior_s=a.speaker_prior))
        from edge.outputs.jsonl import JsonlWriter
        if a.jsonl:
            self.sinks.append(JsonlWriter(a.jsonl))
        if a.http:
            from edge.outputs.http import StatusServer
            host, port = _host_port(a.http, 8080)
            self.http = StatusServer(host, port).start()
            self.sinks.append(self.http)
        if a.mqtt:
            from edge.outputs.mqtt import MqttPublisher
            host, port = _host_port(a.mqtt, 1883)
            self.sinks.append(MqttPublisher(host, port, topic=a.mqtt_topic))
        if a.video:
            from edge.sources import VideoFileSource
            self.video = VideoFileSource(a.video, use_video=not a.no_video, use_audio=not a.no_audio,
                                         realtime=a.realtime)
        else:
            from edge.sources import CameraSource, MicSource, PiCameraSource
            if a.picamera:
                self.camera = PiCameraSource().start()
            elif a.camera is not None:
                cam = int(a.camera) if str(a.camera).isdigit() else a.camera
                self.camera = CameraSource(cam).start()
            if a.mic is not None:
                self.mic = MicSource(_mic_index(a.mic))

    def publish(self, event: dict) -> None:
        for s in self.sinks:
            try:
                (s.write if hasattr(s, "write") else s.publish)(event)
            except Exception as e:  # an output failing must not stop the loop
                log.warning("output %s failed: %s", type(s).__name__, e)

    # -------------------------------------------------------------- health
    def health(self) -> tuple[bool, str]:
        msgs = []
        if self.camera is not None and self.camera.status != "ok":
            msgs.append(self.camera.status)
        if self.mic is not None and self.mic_error:
            msgs.append(self.mic_error)
        elif self.mic is not None and getattr(self.mic, "status", "ok") != "ok":
            msgs.append(self.mic.status)
        stale = time.monotonic() - self.last_progress
        if stale > 5.0:
            msgs.append(f"no input for {stale:.0f} s")
        return (not msgs), "; ".join(msgs) or "running"

    def tick(self) -> None:
        healthy, status = self.health()
        if status != self.status:
            self.status = status
            self.notifier.status(status)
            log.info("status: %s", status)
        now = time.monotonic()
        if healthy and self.wd_interval and now - self.last_wd >= self.wd_interval:
            self.notifier.watchdog()
            self.last_wd = now

    # -------------------------------------------------------------- loops
    def run(self) -> int:
        self.notifier.ready()
        self.notifier.status("running")
        self.status = "running"
        if self.video is not None:
            return self._run_file()
        return self._run_live()

    def _emit(self, events: list[dict]) -> None:
        for e in events:
            if e["status"] == "ok" and self.status != "running":
                e["status"] = self.status
            self.publish(e)

    def _run_file(self) -> int:
        a, loop = self.args, self.loop
        next_face_decision = None
        for kind, t, x in self.video:
            if self.stop_requested:
                break
            self.last_progress = time.monotonic()
            loop.counters.dropped_frames = self.video.dropped
            if kind == "video":
                loop.on_frame(t, x)
                if not self.video.has_audio:                  # video-only: face head every patch hop
                    next_face_decision = t if next_face_decision is None else next_face_decision
                    if t >= next_face_decision:
                        ev = loop.faces_only(t)
                        if ev:
                            self._emit([ev])
                        next_face_decision = t + loop.p.patch_hop_seconds
            else:
                loop.on_audio(t, x)
                self._emit(loop.poll())
            self.tick()
        loop.end_of_video()
        self._emit(loop.poll())
        if not a.no_summary:
            self.publish(loop.summary() | {"source_file": str(a.video)})
        return EXIT_OK

    def _run_live(self) -> int:
        loop = self.loop
        next_face_decision = 0.0
        while not self.stop_requested:
            got = False
            if self.mic is not None:
                try:
                    chunks = self.mic.read()
                    self.mic_error = None
                except Exception as e:  # a failing microphone: reported in STATUS, retried next turn
                    self.mic_errors += 1
                    self.mic_error = f"microphone error ({e})"
                    chunks = []
                    time.sleep(0.05)
                for _, t, x in chunks:
                    loop.on_audio(t, x)
                    got = True
            if self.camera is not None:
                item = self.camera.read(timeout=0.05 if self.mic is not None else 0.5)
                loop.counters.dropped_frames = self.camera.dropped        # frames the mailbox replaced
                if item is not None:
                    _, t, rgb = item
                    loop.on_frame(t, rgb)
                    got = True
                    if self.mic is None and t >= next_face_decision:
                        ev = loop.faces_only(t)
                        if ev:
                            self._emit([ev])
                        next_face_decision = t + loop.p.patch_hop_seconds
            elif not got:
                time.sleep(0.05)
            if got:
                self.last_progress = time.monotonic()
            self._emit(loop.poll())
            self.tick()
        return EXIT_OK

    def close(self) -> None:
        self.notifier.stopping()
        for s in (self.camera, self.mic):
            if s is not None:
                try:
                    s.stop()
                except Exception as e:
                    log.warning("stopping %s: %s", type(s).__name__, e)
        for s in self.sinks:
            for m in ("close", "stop"):
                if hasattr(s, m):
                    try:
                        getattr(s, m)()
                    except Exception as e:
                        log.warning("closing %s: %s", type(s).__name__, e)
                    break


def _mic_index(spec) -> int | None:
    s = str(spec)
    if s in ("", "default"):
        return None
    if s.isdigit():
        return int(s)
    import pyaudio
    pa = pyaudio.PyAudio()
    try:
        for i in range(pa.get_device_count()):
            info = pa.get_device_info_by_index(i)
            if s.lower() in str(info.get("name", "")).lower() and info.get("maxInputChannels", 0) > 0:
                return i
    finally:
        pa.terminate()
    raise SystemExit(f"edge-run: error: no input device matching --mic {s!r}")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse(argv)
    logging.basicConfig(level=str(args.log_level).upper(), stream=sys.stderr,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    from edge.runtime import ModelError
    from edge.sources import SourceError
    from edge.vision.video import VideoError
    runner = Runner(args)

    def on_signal(signum, frame):
        runner.stop_requested = True
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        runner.setup()
    except (ModelError, SourceError, VideoError, OSError) as e:
        runner.notifier.status(f"failed: {e}")
        print(f"edge-run: error: {e}", file=sys.stderr)
        runner.close()
        return EXIT_USAGE
    try:
        return runner.run()
    except VideoError as e:
        print(f"edge-run: error: {e}", file=sys.stderr)
        return EXIT_RUNTIME
    finally:
        runner.close()


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    raise SystemExit(main())
