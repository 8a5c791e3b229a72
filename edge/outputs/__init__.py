"""Where results go: systemd notifications, JSON lines, the kiosk page (HTTP + SSE), MQTT.

Standard library + numpy only; ``paho-mqtt`` is imported lazily by :mod:`edge.outputs.mqtt`.

    from edge.outputs.notify import Notifier
    from edge.outputs.jsonl import JsonlWriter
    from edge.outputs.http import StatusServer
    from edge.outputs.mqtt import MqttPublisher
"""
