"""The kiosk page: a tiny HTTP server with a live view of the current emotion.

    srv = StatusServer(host="0.0.0.0", port=8080).start()   # port=0: ephemeral, see srv.port
    srv.publish({"t": time.time(), "emotion": "happy", "source": "fused", "probs": {...}, ...})
    srv.stop()

Routes:
    /             one self-contained HTML page (no external resources, latest event inlined), for 800x480
    /events       Server-Sent Events: every published event as ``data: <json>``, a comment every ~10 s
    /status.json  the latest event
    /healthz      liveness: {"status": "ok", "uptime_s": ..., "sse_clients": ...}

Open the page on the Pi's own screen with
``chromium --kiosk --noerrdialogs http://127.0.0.1:8080/``.
Standard library only (+ numpy values in events, serialised by :func:`edge.outputs.jsonl.dumps`).
Each SSE client has its own bounded queue (oldest events dropped), so a slow or dead browser
never holds up :meth:`StatusServer.publish` or the other clients.
"""
from __future__ import annotations

import json
import logging
import sys
import threading
import time
from collections import deque
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

from edge.outputs.jsonl import dumps
from edge.params import EMOTIONS

log = logging.getLogger(__name__)

_NO_EVENT = {"t": None, "emotion": None, "source": None, "probs": {"fused": None, "speech": None, "face": None},
             "faces_seen": 0, "speech_active": False, "dropped_frames": 0, "latency_ms": {},
             "status": "waiting for the first result"}


class _Client:
    """One SSE subscriber: a bounded queue of serialised events (oldest dropped when full)."""

    def __init__(self, maxlen: int):
        self.queue: deque[str] = deque(maxlen=maxlen)
        self.cond = threading.Condition()
        self.dropped = 0
        self.closed = False

    def put(self, text: str) -> None:
        with self.cond:
            if len(self.queue) == self.queue.maxlen:
                self.dropped += 1
            self.queue.append(text)
            self.cond.notify()

    def close(self) -> None:
        with self.cond:
            self.closed = True
            self.cond.notify()

    def take(self, timeout: float) -> list[str]:
        """All queued events, waiting up to ``timeout`` s for the first; [] on timeout or close."""
        with self.cond:
            if not self.queue and not self.closed:
                self.cond.wait(timeout)
            items = list(self.queue)
            self.queue.clear()
            return items


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False  # stop() must not wait for SSE streams or idle browsers
    allow_reuse_address = True
    status: StatusServer

    def handle_error(self, request, client_address) -> None:  # stdlib prints the traceback to stderr
        exc = sys.exc_info()[1]
        if isinstance(exc, (ConnectionError, TimeoutError)):
            log.debug("client %s: %s", client_address, exc)
        else:
            log.exception("kiosk page: error serving %s", client_address)


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.0"  # one request per connection; an SSE stream ends with the connection
    timeout = 30.0                 # s; a client that stops reading is dropped instead of pinning a thread
    server_version = "av-emotion-edge"

    def log_message(self, format: str, *args: object) -> None:  # stdlib signature
        log.debug("%s %s", self.address_string(), format % args)

    def do_HEAD(self) -> None:
        self._route(head=True)

    def do_GET(self) -> None:
        self._route(head=False)

    def _route(self, head: bool) -> None:
        st = self.server.status
        path = urlsplit(self.path).path
        try:
            if path in ("/", "/index.html"):
                self._send(HTTPStatus.OK, "text/html; charset=utf-8", st.page(), head)
            elif path == "/status.json":
                self._send(HTTPStatus.OK, "application/json", st.latest_json().encode(), head)
            elif path == "/healthz":
                self._send(HTTPStatus.OK, "application/json", json.dumps(st.health()).encode(), head)
            elif path == "/events" and not head:
                self._events(st)
            else:
                self._send(HTTPStatus.NOT_FOUND, "text/plain; charset=utf-8", b"not found\n", head)
        except (BrokenPipeError, ConnectionResetError, TimeoutError) as e:
            log.debug("client %s went away: %s", self.address_string(), e)

    def _send(self, code: HTTPStatus, ctype: str, body: bytes, head: bool) -> None:
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def _events(self, st: StatusServer) -> None:
        client = st._subscribe()
        if client is None:
            self._send(HTTPStatus.SERVICE_UNAVAILABLE, "text/plain; charset=utf-8", b"too many event streams\n", False)
            return
        try:
            self.send_response(HTTPStatus.OK)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Cache-Control", "no-store")
            self.send_header("X-Accel-Buffering", "no")
            self.end_headers()
            self.wfile.write(b"retry: 2000\n\n")  # ms before the browser reconnects
            latest = st._latest
            if latest is not None:
                self.wfile.write(f"data: {latest}\n\n".encode())
            self.wfile.flush()
            while not client.closed:
                items = client.take(st.keepalive_s)
                if client.closed:
                    break
                chunk = "".join(f"data: {text}\n\n" for text in items) if items else ": keep-alive\n\n"
                self.wfile.write(chunk.encode())
                self.wfile.flush()
        finally:
            st._unsubscribe(client)


class StatusServer:
    """Kiosk page + SSE stream + JSON status, served from a daemon thread."""

    def __init__(self, host: str = "127.0.0.1", port: int = 8080, keepalive_s: float = 10.0,
                 queue_size: int = 32, max_clients: int = 16):
        self.host = host
        self._port = port
        self.keepalive_s = keepalive_s
        self.queue_size = queue_size
        self.max_clients = max_clients
        self._page = render_page()
        self._lock = threading.Lock()
        self._clients: set[_Client] = set()
        self._latest: str | None = None
        self._latest_t = 0.0  # monotonic time of the last publish
        self._n_published = 0
        self._started = 0.0
        self._httpd: _Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        """The bound port once started (the ephemeral one for ``port=0``), else the configured one."""
        return self._httpd.server_address[1] if self._httpd else self._port

    @property
    def url(self) -> str:
        host = "127.0.0.1" if self.host in ("", "0.0.0.0") else self.host
        return f"http://{host}:{self.port}/"

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> StatusServer:
        if self._httpd is not None:
            return self
        try:
            httpd = _Server((self.host, self._port), _Handler)
        except OSError as e:
            raise OSError(e.errno, f"kiosk page cannot listen on {self.host}:{self._port}: {e.strerror or e}") from e
        httpd.status = self
        self._httpd = httpd
        self._started = time.monotonic()
        self._thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.1},
                                        name=f"kiosk-http:{self.port}", daemon=True)
        self._thread.start()
        log.info("kiosk page at %s", self.url)
        return self

    def stop(self) -> None:
        """Close every event stream and the listening socket; returns in well under a second."""
        httpd, self._httpd = self._httpd, None
        if httpd is None:
            return
        with self._lock:
            clients = list(self._clients)
        for c in clients:
            c.close()
        httpd.shutdown()  # waits for serve_forever (polls every 0.1 s)
        httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=1.0)
        self._thread = None
        log.info("kiosk page stopped")

    def publish(self, event: dict) -> None:
        """Make ``event`` the latest status and push it to every event stream (never blocks on a client)."""
        text = dumps(event)
        with self._lock:
            self._latest = text
            self._latest_t = time.monotonic()
            self._n_published += 1
            clients = list(self._clients)
        for c in clients:
            c.put(text)

    def latest_json(self) -> str:
        return self._latest if self._latest is not None else json.dumps(_NO_EVENT)

    def page(self) -> bytes:
        """The HTML with the latest event inlined, so the first paint needs no second request."""
        initial = self.latest_json().replace("<", "\\u003c")  # JSON stays valid; no "</script>" inside
        return self._page.replace("/*__INITIAL__*/null", initial, 1).encode()

    def health(self) -> dict:
        now = time.monotonic()
        with self._lock:
            return {"status": "ok", "uptime_s": round(now - self._started, 3) if self._started else 0.0,
                    "events_published": self._n_published, "sse_clients": len(self._clients),
                    "last_event_age_s": round(now - self._latest_t, 3) if self._n_published else None}

    def _subscribe(self) -> _Client | None:
        with self._lock:
            if len(self._clients) >= self.max_clients:
                log.warning("refusing an event stream: %d clients already", len(self._clients))
                return None
            c = _Client(self.queue_size)
            self._clients.add(c)
            return c

    def _unsubscribe(self, c: _Client) -> None:
        with self._lock:
            self._clients.discard(c)
        if c.dropped:
            log.info("event stream closed; %d events dropped for a slow client", c.dropped)

    def __enter__(self) -> StatusServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def render_page(emotions: tuple[str, ...] = EMOTIONS) -> str:
    """The kiosk HTML: inline CSS + JS, no external resources."""
    return _PAGE.replace("__EMOTIONS__", json.dumps(list(emotions)))


_PAGE = r"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>av-emotion-edge</title>
<style>
*{box-sizing:border-box}
html,body{margin:0;height:100%;background:#111418;color:#e8eaed;font:15px/1.25 system-ui,-apple-system,"DejaVu Sans",sans-serif}
body{display:flex;flex-direction:column;padding:10px 14px;gap:8px;overflow:hidden}
header{display:flex;align-items:flex-end;justify-content:space-between;gap:12px}
#emotion{font-size:76px;font-weight:700;line-height:1;text-transform:capitalize;letter-spacing:-1px}
#source{font-size:16px;color:#9aa0a6;margin-left:4px}
.meta{text-align:right;font-size:14px;color:#9aa0a6}
.meta b{color:#e8eaed;font-weight:600}
.chips{display:flex;gap:8px;justify-content:flex-end;margin-bottom:4px}
.chip{padding:3px 10px;border-radius:12px;background:#2a2f36;color:#9aa0a6;font-size:14px}
.chip.on{background:#1e6b3a;color:#fff}
.chip.bad{background:#7a2323;color:#fff}
main{display:grid;grid-template-columns:repeat(3,1fr);gap:14px;flex:1;min-height:0}
section h2{margin:0 0 4px;font-size:15px;font-weight:600;color:#9aa0a6;text-transform:uppercase;letter-spacing:1px}
section.off{opacity:.35}
.row{display:grid;grid-template-columns:74px 1fr 40px;align-items:center;gap:6px;height:33px;font-size:14px}
.bar{height:18px;background:#23272e;border-radius:3px;overflow:hidden}
.fill{height:100%;width:0;border-radius:3px;transition:width .25s}
.pct{text-align:right;font-variant-numeric:tabular-nums;color:#bdc1c6}
.row.top .lab{color:#fff;font-weight:700}
footer{font-size:13px;color:#9aa0a6;display:flex;justify-content:space-between;gap:10px;white-space:nowrap;overflow:hidden}
.stale #emotion{color:#5f6368}
</style></head>
<body>
<header>
  <div><span id="emotion">&mdash;</span><span id="source"></span></div>
  <div class="meta">
    <div class="chips"><span id="face" class="chip">face</span><span id="speech" class="chip">speech</span>
      <span id="conn" class="chip">offline</span></div>
    <div>updated <b id="updated">never</b></div>
    <div>dropped frames <b id="dropped">0</b></div>
  </div>
</header>
<main id="bars"></main>
<footer><span id="status">waiting for the first result</span><span id="latency"></span></footer>
<script>
"use strict";
const EMOTIONS = __EMOTIONS__;
const COLORS = ["#9aa0a6","#4db6ac","#fdd835","#5c9ded","#e53935","#ab47bc","#7cb342","#ff8f00"];
const MODALITIES = ["fused","speech","face"];
const $ = (id) => document.getElementById(id);
const bars = {};
let lastT = null;

function build() {
  const main = $("bars");
  for (const m of MODALITIES) {
    const sec = document.createElement("section");
    sec.id = "probs-" + m;
    const h = document.createElement("h2"); h.textContent = m; sec.appendChild(h);
    bars[m] = {sec: sec, rows: []};
    EMOTIONS.forEach((e, i) => {
      const row = document.createElement("div"); row.className = "row";
      const lab = document.createElement("span"); lab.className = "lab"; lab.textContent = e;
      const bar = document.createElement("div"); bar.className = "bar";
      const fill = document.createElement("div"); fill.className = "fill";
      fill.style.background = COLORS[i % COLORS.length]; bar.appendChild(fill);
      const pct = document.createElement("span"); pct.className = "pct"; pct.textContent = "\u2013";
      row.append(lab, bar, pct); sec.appendChild(row);
      bars[m].rows.push({row: row, fill: fill, pct: pct});
    });
    main.appendChild(sec);
  }
}

function num(x) { return (typeof x === "number" && isFinite(x)) ? x : null; }

function setBars(m, p) {
  const b = bars[m];
  const ok = Array.isArray(p) && p.length > 0;
  b.sec.classList.toggle("off", !ok);
  let top = -1, best = -Infinity;
  if (ok) p.forEach((v, i) => { const x = num(v); if (x !== null && x > best && i < EMOTIONS.length) { best = x; top = i; } });
  b.rows.forEach((r, i) => {
    const x = ok ? num(p[i]) : null;
    r.fill.style.width = x === null ? "0" : (Math.max(0, Math.min(1, x)) * 100).toFixed(1) + "%";
    r.pct.textContent = x === null ? "\u2013" : Math.round(x * 100) + "%";
    r.row.classList.toggle("top", i === top);
  });
}

function render(ev) {
  if (!ev || typeof ev !== "object") return;
  const emo = (typeof ev.emotion === "string" && ev.emotion) ? ev.emotion : null;
  const el = $("emotion");
  el.textContent = emo || "\u2014";
  const idx = emo ? EMOTIONS.indexOf(emo) : -1;
  el.style.color = idx >= 0 ? COLORS[idx % COLORS.length] : "";
  $("source").textContent = ev.source ? "(" + ev.source + ")" : "";
  const probs = (ev.probs && typeof ev.probs === "object") ? ev.probs : {};
  for (const m of MODALITIES) setBars(m, probs[m]);
  const faces = num(ev.faces_seen) || 0;
  $("face").textContent = faces > 0 ? "face \u2713" : "no face";
  $("face").classList.toggle("on", faces > 0);
  $("speech").textContent = ev.speech_active ? "speech \u2713" : "no speech";
  $("speech").classList.toggle("on", !!ev.speech_active);
  $("dropped").textContent = String(num(ev.dropped_frames) || 0);
  const t = num(ev.t);
  if (t !== null) { lastT = t; $("updated").textContent = new Date(t * 1000).toLocaleTimeString(); }
  $("status").textContent = ev.status == null ? "" : String(ev.status);
  const lat = (ev.latency_ms && typeof ev.latency_ms === "object") ? ev.latency_ms : {};
  $("latency").textContent = Object.keys(lat).filter((k) => num(lat[k]) !== null)
    .map((k) => k + " " + Math.round(lat[k]) + " ms").join("  \u00b7  ");
  document.body.classList.remove("stale");
}

function handle(text) {
  try { render(JSON.parse(text)); } catch (e) { $("status").textContent = "bad event: " + e; }
}

function setConn(on) {
  $("conn").textContent = on ? "live" : "offline";
  $("conn").classList.toggle("on", on); $("conn").classList.toggle("bad", !on);
}

build();
render(/*__INITIAL__*/null);  // the latest event when the page was served
if (window.EventSource) {
  const es = new EventSource("events");  // sends the latest event on connect, then every new one
  es.onopen = () => setConn(true);
  es.onerror = () => setConn(false);
  es.onmessage = (m) => handle(m.data);
} else {
  setInterval(() => fetch("status.json", {cache: "no-store"}).then((r) => r.text()).then(handle)
    .then(() => setConn(true), () => setConn(false)), 1000);
}
setInterval(() => {  // grey out the emotion when no result came for 10 s
  if (lastT !== null && Date.now() / 1000 - lastT > 10) document.body.classList.add("stale");
}, 1000);
</script>
</body></html>
"""
