"""systemd notifications (sd_notify protocol) without libsystemd.

    n = Notifier()                  # reads $NOTIFY_SOCKET; a no-op when unset
    n.ready(); n.status("warming up")
    interval = watchdog_interval_s()  # None, or half of $WATCHDOG_USEC in seconds
    if interval: ...  call n.watchdog() at least every `interval` seconds

Used with ``Type=notify`` and ``WatchdogSec=`` in the unit file. A send failure is logged
once and never raised: a lost notification must not stop the loop.
"""
from __future__ import annotations

import logging
import os
import socket

log = logging.getLogger(__name__)


def watchdog_interval_s(environ: dict[str, str] | None = None) -> float | None:
    """Seconds between watchdog pings (half of $WATCHDOG_USEC), or None when not enabled for us."""
    env = os.environ if environ is None else environ
    usec = env.get("WATCHDOG_USEC", "").strip()
    if not usec:
        return None
    pid = env.get("WATCHDOG_PID", "").strip()
    if pid:
        try:
            if int(pid) != os.getpid():
                return None  # the watchdog belongs to another process (e.g. our parent)
        except ValueError:
            log.warning("ignoring invalid WATCHDOG_PID=%r", pid)
            return None
    try:
        us = int(usec)
    except ValueError:
        log.warning("ignoring invalid WATCHDOG_USEC=%r", usec)
        return None
    if us <= 0:
        return None
    return us / 2e6


def _address(name: str) -> str | bytes:
    if name.startswith("@"):
        return b"\0" + name[1:].encode()  # Linux abstract namespace
    return name


class Notifier:
    """Sends sd_notify datagrams to $NOTIFY_SOCKET; every method returns True when sent."""

    def __init__(self, socket_path: str | None = None):
        self.socket_path = socket_path if socket_path is not None else os.environ.get("NOTIFY_SOCKET") or None
        self._warned = False

    @property
    def enabled(self) -> bool:
        return bool(self.socket_path)

    def send(self, **fields: object) -> bool:
        """Send ``KEY=value`` lines, e.g. ``send(READY=1, STATUS="ok")``. False when disabled or failed."""
        if not self.socket_path or not fields:
            return False
        msg = "".join(f"{k}={str(v).replace(chr(10), ' ')}\n" for k, v in fields.items()).encode()
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
                s.sendto(msg, _address(self.socket_path))
            return True
        except OSError as e:
            if not self._warned:
                log.warning("sd_notify to %s failed: %s (further failures are not logged)", self.socket_path, e)
                self._warned = True
            return False

    def ready(self) -> bool:
        return self.send(READY=1)

    def status(self, text: str) -> bool:
        return self.send(STATUS=text)

    def watchdog(self) -> bool:
        return self.send(WATCHDOG=1)

    def stopping(self) -> bool:
        return self.send(STOPPING=1)
