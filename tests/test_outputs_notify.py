"""systemd sd_notify against a real AF_UNIX datagram socket (path and abstract namespace)."""
from __future__ import annotations

import logging
import os
import socket
import tempfile
import uuid
from pathlib import Path

import pytest

from edge.outputs.notify import Notifier, watchdog_interval_s


@pytest.fixture
def short_dir():
    # AF_UNIX paths are limited to 107 bytes; pytest's tmp_path can be longer.
    d = Path(tempfile.mkdtemp(prefix="ave-", dir="/tmp"))
    yield d
    for f in d.iterdir():
        f.unlink()
    d.rmdir()


def _recv_all(sock: socket.socket) -> list[str]:
    out = []
    sock.settimeout(1.0)
    while True:
        try:
            out.append(sock.recv(4096).decode())
        except (BlockingIOError, TimeoutError):
            return out
        sock.settimeout(0.05)


def test_unset_socket_is_a_noop(monkeypatch):
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    n = Notifier()
    assert not n.enabled
    assert n.ready() is False and n.status("x") is False and n.watchdog() is False and n.stopping() is False


def test_path_socket_receives_ready_status_watchdog(monkeypatch, short_dir):
    path = str(short_dir / "notify.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as srv:
        srv.bind(path)
        monkeypatch.setenv("NOTIFY_SOCKET", path)
        n = Notifier()
        assert n.ready() and n.status("loading models\nstep 2") and n.watchdog() and n.stopping()
        assert n.send(READY=1, STATUS="ok", MAINPID=os.getpid())
        got = _recv_all(srv)
    assert got == ["READY=1\n", "STATUS=loading models step 2\n", "WATCHDOG=1\n", "STOPPING=1\n",
                   f"READY=1\nSTATUS=ok\nMAINPID={os.getpid()}\n"]


def test_abstract_socket(monkeypatch):
    name = f"ave-test-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as srv:
        srv.bind(b"\0" + name.encode())
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        n = Notifier()
        assert n.ready() and n.status("running") and n.watchdog()
        assert _recv_all(srv) == ["READY=1\n", "STATUS=running\n", "WATCHDOG=1\n"]


def test_send_failure_returns_false_and_logs_once(monkeypatch, short_dir, caplog):
    monkeypatch.setenv("NOTIFY_SOCKET", str(short_dir / "nobody-listens.sock"))
    n = Notifier()
    with caplog.at_level(logging.WARNING, logger="edge.outputs.notify"):
        assert n.ready() is False
        assert n.watchdog() is False
        assert n.status("x") is False
    warnings = [r for r in caplog.records if r.name == "edge.outputs.notify"]
    assert len(warnings) == 1 and "nobody-listens.sock" in warnings[0].getMessage()


def test_explicit_socket_path_overrides_env(monkeypatch, short_dir):
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    path = str(short_dir / "explicit.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as srv:
        srv.bind(path)
        assert Notifier(path).ready()
        assert _recv_all(srv) == ["READY=1\n"]


@pytest.mark.parametrize("env, expected", [
    ({}, None),
    ({"WATCHDOG_USEC": "20000000"}, 10.0),                         # WatchdogSec=20 -> ping every 10 s
    ({"WATCHDOG_USEC": "3000000", "WATCHDOG_PID": "OWN"}, 1.5),
    ({"WATCHDOG_USEC": "3000000", "WATCHDOG_PID": "OTHER"}, None),  # meant for another process
    ({"WATCHDOG_USEC": "0"}, None),
    ({"WATCHDOG_USEC": "soon"}, None),
    ({"WATCHDOG_USEC": "3000000", "WATCHDOG_PID": "x"}, None),
])
def test_watchdog_interval(env, expected):
    env = {k: {"OWN": str(os.getpid()), "OTHER": str(os.getpid() + 1)}.get(v, v) for k, v in env.items()}
    assert watchdog_interval_s(env) == expected


def test_watchdog_interval_reads_process_env(monkeypatch):
    monkeypatch.setenv("WATCHDOG_USEC", "1000000")
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    assert watchdog_interval_s() == 0.5
