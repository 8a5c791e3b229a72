"""MQTT output: every result as JSON on ``<topic>/events``, availability on ``<topic>/availability``.

    pub = MqttPublisher("broker.local", topic="av-emotion-edge/livingroom")
    pub.publish({"t": time.time(), "emotion": "happy", ...})   # dropped (returns False) while offline
    pub.close()                                                # "offline" (retained), then disconnect

    mosquitto_sub -h broker.local -t 'av-emotion-edge/livingroom/#' -v

Availability follows the Home Assistant convention: "online" is published (retained) on every
(re)connect, and the broker publishes the last will "offline" (retained) if the device vanishes.
The network runs in paho's own thread (``connect_async`` + ``loop_start``) with a 1..30 s
reconnect back-off, so a missing broker never blocks or raises in the capture loop.
Needs ``pip install "paho-mqtt>=2"`` (imported lazily).
"""
from __future__ import annotations

import logging
import os
import socket
import threading

from edge.outputs.jsonl import dumps

log = logging.getLogger(__name__)

ONLINE, OFFLINE = "online", "offline"


def _paho():
    try:
        import paho.mqtt.client as mqtt
    except ImportError as e:
        raise ImportError('MQTT output needs paho-mqtt >= 2: pip install "paho-mqtt>=2" '
                          '(or pip install "av-emotion-edge[mqtt]")') from e
    if not hasattr(mqtt, "CallbackAPIVersion"):
        raise ImportError('MQTT output needs paho-mqtt >= 2 (found 1.x): pip install -U "paho-mqtt>=2"')
    return mqtt


class MqttPublisher:
    """Publishes events to an MQTT broker from a background thread; never blocks on the broker."""

    def __init__(self, host: str, port: int = 1883, topic: str = "av-emotion-edge", client_id: str | None = None,
                 keepalive: int = 30, *, username: str | None = None, password: str | None = None):
        mqtt = _paho()
        self.host, self.port = host, port
        self.topic = topic.rstrip("/")
        self.availability_topic = f"{self.topic}/availability"
        self.events_topic = f"{self.topic}/events"
        self.client_id = client_id or f"av-emotion-edge-{socket.gethostname()}-{os.getpid()}"
        self.published = 0          # events handed to the client
        self.dropped = 0            # events dropped while offline
        self._connected = threading.Event()
        self._closed = False
        self._warned_offline = False

        c = mqtt.Client(callback_api_version=mqtt.CallbackAPIVersion.VERSION2, client_id=self.client_id)
        if username is not None:
            c.username_pw_set(username, password)
        c.will_set(self.availability_topic, OFFLINE, qos=1, retain=True)
        c.reconnect_delay_set(min_delay=1, max_delay=30)
        c.on_connect = self._on_connect
        c.on_disconnect = self._on_disconnect
        self._client = c
        c.connect_async(host, port, keepalive=keepalive)
        c.loop_start()
        log.info("MQTT: connecting to %s:%d as %s, topic %s/#", host, port, self.client_id, self.topic)

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def wait_connected(self, timeout: float) -> bool:
        """Block up to ``timeout`` s for the first connection (for start-up scripts and tests)."""
        return self._connected.wait(timeout)

    def publish(self, event: dict) -> bool:
        """Send ``event`` as JSON (qos 0). False, without raising, when offline or closed."""
        if self._closed or not self._connected.is_set():
            self.dropped += 1
            if not self._warned_offline and not self._closed:
                log.warning("MQTT: not connected to %s:%d; dropping events until it is", self.host, self.port)
                self._warned_offline = True
            return False
        info = self._client.publish(self.events_topic, dumps(event), qos=0)
        if info.rc != 0:
            self.dropped += 1
            return False
        self.published += 1
        return True

    def close(self, timeout: float = 2.0) -> None:
        """Publish "offline" (retained), disconnect cleanly and stop the network thread (at most ~timeout s)."""
        if self._closed:
            return
        self._closed = True
        c = self._client
        if self._connected.is_set():
            try:
                info = c.publish(self.availability_topic, OFFLINE, qos=1, retain=True)
                info.wait_for_publish(timeout=timeout / 2)
            except (RuntimeError, ValueError) as e:  # the connection dropped meanwhile
                log.debug("MQTT: could not publish offline: %s", e)
        c.disconnect()
        stopper = threading.Thread(target=c.loop_stop, daemon=True)  # a pending TCP connect may take a while
        stopper.start()
        stopper.join(timeout / 2)
        self._connected.clear()
        log.info("MQTT: closed (%d events published, %d dropped)", self.published, self.dropped)

    def __enter__(self) -> MqttPublisher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- paho callbacks (network thread) ---
    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            log.warning("MQTT: broker %s:%d refused the connection: %s", self.host, self.port, reason_code)
            return
        client.publish(self.availability_topic, ONLINE, qos=1, retain=True)
        self._connected.set()
        self._warned_offline = False
        log.info("MQTT: connected to %s:%d", self.host, self.port)

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        was = self._connected.is_set()
        self._connected.clear()
        if was and not self._closed:
            log.warning("MQTT: lost connection to %s:%d (%s); reconnecting", self.host, self.port, reason_code)
