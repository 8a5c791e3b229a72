"""MQTT output against a real mosquitto broker on a free local port.

Skips when the mosquitto binary (apt-get install mosquitto; set AVE_MOSQUITTO to pick one) or
paho-mqtt (pip install "paho-mqtt>=2") is absent.
"""
from __future__ import annotations

import json
import os
import queue
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _mosquitto_exe() -> str:
    exe = os.environ.get("AVE_MOSQUITTO") or shutil.which("mosquitto") or shutil.which(
        "mosquitto", path="/usr/sbin:/usr/local/sbin")
    if not exe:
        pytest.skip("no mosquitto binary (apt-get install mosquitto, or set AVE_MOSQUITTO)")
    return exe


class Broker:
    def __init__(self, exe: str, port: int, workdir: Path):
        self.exe, self.port, self.workdir = exe, port, workdir
        self.proc: subprocess.Popen | None = None

    def start(self) -> Broker:
        conf = self.workdir / "mosquitto.conf"
        conf.write_text(f"listener {self.port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
                        "log_dest stderr\n")
        self._log = open(self.workdir / "mosquitto.log", "ab")  # closed in stop()
        self.proc = subprocess.Popen([self.exe, "-c", str(conf)], stdout=self._log, stderr=self._log)
        end = time.monotonic() + 5
        while time.monotonic() < end:
            assert self.proc.poll() is None, (self.workdir / "mosquitto.log").read_text()
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return self
            except OSError:
                time.sleep(0.02)
        raise AssertionError("mosquitto did not start: " + (self.workdir / "mosquitto.log").read_text())

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc:
            self._log.close()
        self.proc = None


@pytest.fixture
def mqtt():
    return pytest.importorskip("paho.mqtt.client", reason='paho-mqtt absent (pip install "paho-mqtt>=2")')


@pytest.fixture
def broker_factory(tmp_path, mqtt):
    exe = _mosquitto_exe()
    brokers = []

    def make(port: int | None = None) -> Broker:
        b = Broker(exe, port or _free_port(), tmp_path)
        brokers.append(b)
        return b

    yield make
    for b in brokers:
        b.stop()


@pytest.fixture
def topic() -> str:
    return f"ave-test/{uuid.uuid4().hex[:10]}"


class Subscriber:
    """Collects (subtopic, payload, retained) for everything under ``topic/#``."""

    def __init__(self, mqtt, port: int, topic: str):
        self.topic = topic
        self.q: queue.Queue = queue.Queue()
        c = mqtt.Client(callback_api_version=mqtt.CallbackAPIVersion.VERSION2, client_id=f"sub-{uuid.uuid4().hex[:8]}")
        c.on_connect = lambda cl, *_: cl.subscribe(f"{topic}/#", qos=1)
        c.on_message = lambda cl, ud, m: self.q.put((m.topic.removeprefix(topic + "/"), m.payload.decode(), m.retain))
        c.connect("127.0.0.1", port)
        c.loop_start()
        self.client = c

    def expect(self, subtopic: str, payload: str | None = None, timeout: float = 5.0) -> tuple[str, bool]:
        """Wait for a message on ``subtopic`` (with ``payload`` if given); returns (payload, retained)."""
        end = time.monotonic() + timeout
        seen = []
        while (left := end - time.monotonic()) > 0:
            try:
                t, p, retained = self.q.get(timeout=left)
            except queue.Empty:
                break
            seen.append((t, p))
            if t == subtopic and (payload is None or p == payload):
                return p, retained
        raise AssertionError(f"no {subtopic}={payload!r} within {timeout} s; saw {seen}")

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def test_online_event_and_offline_on_close(broker_factory, topic, mqtt):
    from edge.outputs.mqtt import MqttPublisher

    broker = broker_factory().start()
    sub = Subscriber(mqtt, broker.port, topic)
    time.sleep(0.2)  # let the subscription settle
    pub = MqttPublisher("127.0.0.1", broker.port, topic=topic, client_id="ave-test-pub")
    try:
        assert pub.wait_connected(5) and pub.connected
        assert sub.expect("availability", "online")[0] == "online"
        ev = {"t": 1.5, "emotion": "happy", "probs": {"fused": np.full(8, 0.125, np.float32), "face": None}}
        assert pub.publish(ev)
        got = json.loads(sub.expect("events")[0])
        assert got == {"t": 1.5, "emotion": "happy", "probs": {"fused": [0.125] * 8, "face": None}}
    finally:
        pub.close()
    sub.expect("availability", "offline")
    assert not pub.connected and pub.publish(ev) is False
    sub.close()
    late = Subscriber(mqtt, broker.port, topic)  # availability is retained
    assert late.expect("availability") == ("offline", True)
    late.close()


def test_missing_broker_never_blocks_then_connects(broker_factory, topic, mqtt):
    from edge.outputs.mqtt import MqttPublisher

    broker = broker_factory()  # port chosen, nothing listening yet
    t0 = time.monotonic()
    pub = MqttPublisher("127.0.0.1", broker.port, topic=topic)
    try:
        assert time.monotonic() - t0 < 2.0          # the constructor does not wait for the broker (loose: CI load)
        assert not pub.connected
        assert pub.publish({"emotion": "sad"}) is False and pub.dropped == 1  # dropped, not raised
        time.sleep(0.3)
        broker.start()
        assert pub.wait_connected(20), "publisher did not connect after the broker came up"
        sub = Subscriber(mqtt, broker.port, topic)
        assert sub.expect("availability") == ("online", True)  # retained "online" from the (re)connect
        assert pub.publish({"emotion": "calm"})
        assert json.loads(sub.expect("events")[0]) == {"emotion": "calm"}
        sub.close()
    finally:
        pub.close()


def test_reconnects_after_broker_restart(broker_factory, topic, mqtt):
    from edge.outputs.mqtt import MqttPublisher

    broker = broker_factory().start()
    pub = MqttPublisher("127.0.0.1", broker.port, topic=topic)
    try:
        assert pub.wait_connected(5)
        broker.stop()
        end = time.monotonic() + 5
        while pub.connected and time.monotonic() < end:
            time.sleep(0.05)
        assert not pub.connected
        broker.start()  # persistence is off: the retained "online" must be re-published on reconnect
        assert pub.wait_connected(6)
        sub = Subscriber(mqtt, broker.port, topic)
        assert sub.expect("availability") == ("online", True)
        sub.close()
    finally:
        pub.close()


def test_unclean_death_publishes_last_will(broker_factory, topic, mqtt):
    broker = broker_factory().start()
    sub = Subscriber(mqtt, broker.port, topic)
    time.sleep(0.2)
    code = ("import sys, time\n"
            "from edge.outputs.mqtt import MqttPublisher\n"
            f"p = MqttPublisher('127.0.0.1', {broker.port}, topic={topic!r})\n"
            "assert p.wait_connected(5)\n"
            "print('connected', flush=True)\n"
            "time.sleep(60)\n")
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=REPO, stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        assert proc.stdout.readline().strip() == "connected"
        sub.expect("availability", "online")
        proc.send_signal(signal.SIGKILL)  # no DISCONNECT: the broker sends the will
        proc.wait(timeout=5)
        sub.expect("availability", "offline")
        late = Subscriber(mqtt, broker.port, topic)  # the will is retained
        assert late.expect("availability") == ("offline", True)
        late.close()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
        sub.close()


def test_close_without_broker_is_quick(mqtt):
    from edge.outputs.mqtt import MqttPublisher

    pub = MqttPublisher("127.0.0.1", _free_port(), topic="ave-test/none")
    time.sleep(0.2)
    t0 = time.monotonic()
    pub.close()
    assert time.monotonic() - t0 < 2.5
    pub.close()  # idempotent


def test_actionable_error_without_paho():
    code = ("import sys\n"
            "sys.modules['paho'] = None\n"
            "import edge.outputs.mqtt as m\n"  # the module itself imports without paho
            "try:\n"
            "    m.MqttPublisher('localhost')\n"
            "except ImportError as e:\n"
            "    print(e)\n")
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=30,
                       env={**os.environ, "PYTHONPATH": str(REPO)})
    assert r.returncode == 0, r.stderr
    assert "pip install" in r.stdout and "paho-mqtt" in r.stdout
