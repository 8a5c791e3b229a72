"""Kiosk page: routes, Server-Sent Events, shutdown, JSON lines, and the page in headless Chromium.

The Chromium tests skip when no chromium binary is installed (apt-get install chromium);
set AVE_CHROMIUM to pick a binary. With AVE_WRITE_REPORTS=1 the screenshot is copied to
reports/kiosk_screenshot.png:

    AVE_WRITE_REPORTS=1 PYTHONPATH=. python -m pytest -q tests/test_outputs_http.py -k screenshot
"""
from __future__ import annotations

import fcntl
import http.client
import json
import os
import re
import select
import shutil
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from edge.outputs.http import StatusServer, _Client
from edge.outputs.jsonl import JsonlWriter, dumps
from edge.params import EMOTIONS

REPO = Path(__file__).resolve().parents[1]


def _event(emotion: str = "happy", **kw) -> dict:
    p = np.full(8, 0.05, np.float32)
    p[EMOTIONS.index(emotion)] = 0.65
    ev = {"t": time.time(), "emotion": emotion, "source": "fused",
          "probs": {"fused": p, "speech": np.roll(p, 1), "face": None},
          "faces_seen": 1, "speech_active": True, "dropped_frames": 3,
          "latency_ms": {"face": np.float64(12.5), "speech": 41.0}, "status": "ok"}
    ev.update(kw)
    return ev


@pytest.fixture
def server():
    srv = StatusServer(port=0, keepalive_s=0.2).start()
    yield srv
    srv.stop()


def _get(srv: StatusServer, path: str, method: str = "GET") -> tuple[int, dict, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=5)
    try:
        conn.request(method, path)
        r = conn.getresponse()
        return r.status, dict(r.getheaders()), r.read()
    finally:
        conn.close()


class _Sse:
    """A raw SSE client: reads ``data:`` lines and ``:`` comments from /events."""

    def __init__(self, srv: StatusServer):
        self.sock = socket.create_connection(("127.0.0.1", srv.port), timeout=5)
        self.sock.sendall(b"GET /events HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n")
        self.f = self.sock.makefile("rb")
        status = self.f.readline()
        assert b" 200 " in status, status
        headers = {}
        while (line := self.f.readline()) not in (b"\r\n", b"\n", b""):
            k, _, v = line.decode().partition(":")
            headers[k.strip().lower()] = v.strip()
        assert headers["content-type"] == "text/event-stream"

    def next(self, kind: str = "data") -> str:
        """The next ``data:`` payload (kind="data") or comment (kind="comment")."""
        while True:
            line = self.f.readline().decode()
            assert line, "stream closed"
            if kind == "data" and line.startswith("data: "):
                return line[6:].rstrip("\n")
            if kind == "comment" and line.startswith(":"):
                return line[1:].strip()

    def close(self) -> None:
        self.f.close()
        self.sock.close()


def _wait(cond, timeout: float = 3.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(0.02)
    return cond()


# ---------------------------------------------------------------- routes

def test_routes(server):
    code, hdr, body = _get(server, "/")
    assert code == 200 and hdr["Content-Type"].startswith("text/html")
    page = body.decode()
    assert all(e in page for e in EMOTIONS) and "EventSource" in page

    code, hdr, body = _get(server, "/status.json")
    assert code == 200 and hdr["Content-Type"] == "application/json"
    assert json.loads(body)["emotion"] is None  # nothing published yet

    server.publish(_event("sad"))
    st = json.loads(_get(server, "/status.json?x=1")[2])
    assert st["emotion"] == "sad" and st["probs"]["face"] is None
    assert st["probs"]["fused"][3] == pytest.approx(0.65) and st["latency_ms"]["face"] == 12.5

    code, _, body = _get(server, "/healthz")
    h = json.loads(body)
    assert code == 200 and h["status"] == "ok" and h["events_published"] == 1

    assert _get(server, "/nope")[0] == 404
    code, hdr, body = _get(server, "/healthz", method="HEAD")
    assert code == 200 and body == b"" and int(hdr["Content-Length"]) > 0


def test_page_is_self_contained_and_inlines_latest_event(server):
    page = _get(server, "/")[2].decode()
    assert not re.search(r"""(src|href)\s*=|https?://|@import|url\(""", page), "page must load nothing external"
    server.publish(_event("angry", status="</script><b>x"))
    page = _get(server, "/")[2].decode()
    assert '"emotion":"angry"' in page
    assert "</script><b>" not in page  # event text cannot end the inline script


def test_port_zero_is_ephemeral_and_busy_port_names_address(server):
    assert server.port > 0 and server.url.endswith(f":{server.port}/")
    with pytest.raises(OSError, match=f"127.0.0.1:{server.port}"):
        StatusServer(port=server.port).start()


def test_nan_and_numpy_values_become_valid_json(server):
    server.publish(_event(probs={"fused": np.array([np.nan, 1.0]), "speech": None}, faces_seen=np.int64(2)))
    body = _get(server, "/status.json")[2].decode()
    assert "NaN" not in body  # browsers' JSON.parse rejects NaN
    st = json.loads(body)
    assert st["probs"]["fused"] == [None, 1.0] and st["faces_seen"] == 2


# ---------------------------------------------------------------- SSE

def test_sse_client_receives_published_events(server):
    server.publish(_event("calm"))
    c = _Sse(server)
    try:
        assert json.loads(c.next())["emotion"] == "calm"  # the latest event, on connect
        assert _wait(lambda: server.health()["sse_clients"] == 1)
        server.publish(_event("surprised"))
        server.publish(_event("fearful"))
        assert json.loads(c.next())["emotion"] == "surprised"
        assert json.loads(c.next())["emotion"] == "fearful"
        assert c.next("comment") == "keep-alive"  # keepalive_s=0.2 in this fixture
    finally:
        c.close()


def test_disconnecting_clients_do_not_break_the_server(server):
    clients = [_Sse(server) for _ in range(4)]
    assert _wait(lambda: server.health()["sse_clients"] == 4)
    for c in clients[:3]:
        c.sock.shutdown(socket.SHUT_RDWR)
        c.close()
    for i in range(50):
        server.publish(_event(EMOTIONS[i % 8]))
    assert _wait(lambda: server.health()["sse_clients"] == 1)  # dead streams noticed on write
    assert json.loads(clients[3].next())  # the live one still streams
    assert _get(server, "/healthz")[0] == 200
    late = _Sse(server)
    assert json.loads(late.next())["emotion"] == EMOTIONS[49 % 8]
    late.close()
    clients[3].close()


def test_client_queue_is_bounded_and_drops_oldest():
    c = _Client(maxlen=3)
    for i in range(10):
        c.put(str(i))
    assert c.take(timeout=0) == ["7", "8", "9"] and c.dropped == 7
    t0 = time.monotonic()
    assert c.take(timeout=0.1) == [] and time.monotonic() - t0 >= 0.09


def test_too_many_streams_get_503():
    srv = StatusServer(port=0, max_clients=1).start()
    try:
        first = _Sse(srv)
        assert _wait(lambda: srv.health()["sse_clients"] == 1)
        assert _get(srv, "/events")[0] == 503
        first.close()
    finally:
        srv.stop()


def test_stop_is_fast_with_open_streams_and_frees_the_port():
    srv = StatusServer(port=0, keepalive_s=10.0).start()
    port = srv.port
    streams = [_Sse(srv) for _ in range(3)]
    idle = socket.create_connection(("127.0.0.1", port))  # a browser that connected and said nothing
    assert _wait(lambda: srv.health()["sse_clients"] == 3)
    t0 = time.monotonic()
    srv.stop()
    assert time.monotonic() - t0 < 1.0
    assert not srv.running
    StatusServer(port=port).start().stop()  # the port can be bound again at once
    for s in streams:
        s.close()
    idle.close()
    srv.stop()  # idempotent


# ---------------------------------------------------------------- JSON lines

def test_jsonl_appends_one_flushed_object_per_line(tmp_path):
    path = tmp_path / "sub" / "events.jsonl"
    with JsonlWriter(path) as w:
        w.write(_event("happy"))
        assert len(path.read_text().splitlines()) == 1  # flushed before close
    with JsonlWriter(str(path)) as w:  # append, not truncate
        w.write({"x": np.arange(3), "y": np.float32(0.5), "p": Path("/a")})
    lines = [json.loads(s) for s in path.read_text().splitlines()]
    assert lines[0]["emotion"] == "happy" and lines[0]["probs"]["fused"][2] == pytest.approx(0.65)
    assert lines[1] == {"x": [0, 1, 2], "y": 0.5, "p": "/a"}


def test_jsonl_dash_writes_stdout():
    code = ("import numpy as np; from edge.outputs.jsonl import JsonlWriter\n"
            "w = JsonlWriter('-'); w.write({'a': np.float64(1.5)}); w.write({'b': None}); w.close()\n")
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=30,
                       env={**os.environ, "PYTHONPATH": str(REPO)})
    assert r.returncode == 0, r.stderr
    assert r.stdout == '{"a":1.5}\n{"b":null}\n'


def test_jsonl_unopenable_path_names_it(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(OSError, match=re.escape(str(blocker / "events.jsonl"))):
        JsonlWriter(blocker / "events.jsonl")


def test_dumps_rejects_unknown_objects():
    with pytest.raises(TypeError, match="object"):
        dumps({"x": object()})


# ---------------------------------------------------------------- headless Chromium

def _chromium() -> str:
    exe = os.environ.get("AVE_CHROMIUM") or next(
        (p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome", "chrome")) if p), None)
    if not exe:
        pytest.skip("no chromium binary (apt-get install chromium, or set AVE_CHROMIUM)")
    return exe


def _chromium_args(exe: str, tmp_path: Path) -> list[str]:
    # --no-sandbox: CI and this test run as root; own profile dir so parallel runs do not collide.
    return [exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
            "--hide-scrollbars", f"--user-data-dir={tmp_path / 'profile'}", "--window-size=800,480"]


def _png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def test_kiosk_screenshot(server, tmp_path):
    # The page renders the event inlined at request time, then live ones from /events. An open SSE
    # stream keeps Chromium's --virtual-time-budget waiting forever, so no virtual time here.
    exe = _chromium()
    server.publish(_event("happy"))
    shot = tmp_path / "kiosk.png"
    r = subprocess.run(_chromium_args(exe, tmp_path) + [f"--screenshot={shot}", server.url],
                       capture_output=True, text=True, timeout=60)
    assert shot.is_file(), f"no screenshot (rc={r.returncode}): {r.stderr[-1500:]}"
    data = shot.read_bytes()
    assert _png_size(data) == (800, 480)
    assert len(data) > 10_000, "screenshot looks blank"  # an empty 800x480 page is ~2-3 kB
    if os.environ.get("AVE_WRITE_REPORTS") == "1":
        (REPO / "reports").mkdir(exist_ok=True)
        shutil.copyfile(shot, REPO / "reports" / "kiosk_screenshot.png")


def test_kiosk_dom_shows_emotion_after_js(server, tmp_path):
    exe = _chromium()
    server.publish(_event("disgust", faces_seen=0, speech_active=False))
    r = subprocess.run(_chromium_args(exe, tmp_path) + ["--dump-dom", server.url],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr[-1500:]
    dom = r.stdout
    assert re.search(r'id="emotion"[^>]*>disgust<', dom), dom[:3000]     # set by the page's script
    assert re.search(r'id="face"[^>]*>no face<', dom) and re.search(r'id="speech"[^>]*>no speech<', dom)
    assert re.search(r'id="dropped"[^>]*>3<', dom)
    assert dom.count('class="row') == 3 * len(EMOTIONS)


class _Cdp:
    """Chrome DevTools Protocol over --remote-debugging-pipe (fd 3 in, fd 4 out; NUL-terminated JSON)."""

    def __init__(self, exe: str, tmp_path: Path):
        to_chrome_r, self._w = os.pipe()
        self._r, from_chrome_w = os.pipe()
        args = _chromium_args(exe, tmp_path) + ["--remote-debugging-pipe", "about:blank"]

        def as_fds_3_and_4() -> None:  # in the child: our pipe ends become its (inheritable) fds 3 and 4
            a = fcntl.fcntl(to_chrome_r, fcntl.F_DUPFD_CLOEXEC, 10)  # first out of the way of 3 and 4
            b = fcntl.fcntl(from_chrome_w, fcntl.F_DUPFD_CLOEXEC, 10)
            os.dup2(a, 3)
            os.dup2(b, 4)

        # close_fds=False keeps 3 and 4; every other fd Python opened is close-on-exec anyway (PEP 446).
        self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL, close_fds=False, preexec_fn=as_fds_3_and_4)
        os.close(to_chrome_r)
        os.close(from_chrome_w)
        self._buf = b""
        self._id = 0

    def call(self, method: str, params: dict | None = None, session: str | None = None, timeout: float = 10) -> dict:
        self._id += 1
        msg = {"id": self._id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        os.write(self._w, json.dumps(msg).encode() + b"\0")
        end = time.monotonic() + timeout
        while True:
            while b"\0" in self._buf:
                raw, self._buf = self._buf.split(b"\0", 1)
                reply = json.loads(raw)
                if reply.get("id") == self._id:
                    assert "error" not in reply, reply
                    return reply["result"]
            left = end - time.monotonic()
            assert left > 0 and select.select([self._r], [], [], left)[0], f"no reply to {method}"
            chunk = os.read(self._r, 1 << 16)
            assert chunk, "chromium closed the pipe"
            self._buf += chunk

    def close(self) -> None:
        try:
            os.write(self._w, json.dumps({"id": 0, "method": "Browser.close"}).encode() + b"\0")
            self.proc.wait(timeout=5)
        except (OSError, subprocess.TimeoutExpired):
            self.proc.kill()
            self.proc.wait()
        os.close(self._w)
        os.close(self._r)


def test_kiosk_updates_live_over_sse(server, tmp_path):
    """A real browser: the page shows the inlined event, then follows published ones through /events."""
    exe = _chromium()
    server.publish(_event("happy"))
    cdp = _Cdp(exe, tmp_path)
    try:
        target = cdp.call("Target.createTarget", {"url": server.url})["targetId"]
        session = cdp.call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]

        def text(el_id: str) -> str | None:
            r = cdp.call("Runtime.evaluate", {"expression": f"(document.getElementById('{el_id}') || {{}})"
                                                             ".textContent", "returnByValue": True}, session)
            return r["result"].get("value")

        assert _wait(lambda: text("emotion") == "happy", 10)
        assert _wait(lambda: text("conn") == "live", 10)  # EventSource open
        assert _wait(lambda: server.health()["sse_clients"] == 1)
        server.publish(_event("sad", source="speech", dropped_frames=7))
        assert _wait(lambda: text("emotion") == "sad", 5)
        assert text("source") == "(speech)" and text("dropped") == "7"
        server.publish({"t": None, "emotion": None, "probs": None, "status": None})  # every key may be null
        assert _wait(lambda: text("emotion") == "\u2014", 5)
    finally:
        cdp.close()
