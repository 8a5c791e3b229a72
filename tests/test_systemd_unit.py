"""The edge-run service unit: `systemd-analyze verify` is silent, its security exposure is at most
3.0, the keys the device relies on are there, and the runtime works with no W+X memory.

    AVE_WRITE_REPORTS=1 python -m pytest -q tests/test_systemd_unit.py   # also rewrites reports/systemd_security.json

Needs systemd-analyze (apt: systemd); those tests skip with the reason when it is absent.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
UNIT = REPO / "systemd" / "edge-run.service"
SYSUSERS = REPO / "systemd" / "sysusers.d" / "edge-run.conf"
REPORT = REPO / "reports" / "systemd_security.json"
EXEC = "/opt/av-emotion-edge/venv/bin/edge-run"
MAX_EXPOSURE = 3.0  # systemd's scale: 0 (locked down) .. 10 (UNSAFE)


def parse_unit(text: str) -> dict[str, list[tuple[str, str]]]:
    """{section: [(key, value), ...]}, repeated keys kept in order (configparser would merge them)."""
    sections: dict[str, list[tuple[str, str]]] = {}
    current = None
    for line in text.splitlines():
        line = line.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("["):
            current = sections.setdefault(line.strip("[]"), [])
        else:
            key, _, value = line.partition("=")
            current.append((key.strip(), value.strip()))
    return sections


def values(unit: dict, section: str, key: str) -> list[str]:
    return [v for k, v in unit.get(section, []) if k == key]


def one(unit: dict, section: str, key: str) -> str:
    found = values(unit, section, key)
    assert len(found) == 1, f"[{section}] {key}= set {len(found)} times"
    return found[0]


def systemd_analyze() -> str:
    exe = shutil.which("systemd-analyze")
    if exe is None:
        pytest.skip("systemd-analyze is absent (apt-get install systemd)")
    return exe


def coral_dropin() -> str:
    """The drop-in that firmware_config/user-data.coral installs next to the unit."""
    yaml = pytest.importorskip("yaml", reason="PyYAML is absent (pip install pyyaml)")
    data = yaml.safe_load((REPO / "firmware_config" / "user-data.coral").read_text())
    return next(f["content"] for f in data["write_files"]
                if f["path"] == "/etc/systemd/system/edge-run.service.d/coral.conf")


def unit_in(tmp: Path, dropins: dict[str, str] | None = None) -> Path:
    """A copy of the unit whose ExecStart runs a script that exists (the rest is unchanged).

    verify reports "Command ... is not executable" for /opt/av-emotion-edge/venv/bin/edge-run
    on any machine where the package is not installed there, which would hide real warnings.
    """
    exe = tmp / "bin" / "edge-run"
    exe.parent.mkdir(parents=True)
    exe.write_text("#!/bin/sh\nexit 0\n")
    exe.chmod(0o755)
    text = UNIT.read_text()
    assert text.count(f"ExecStart={EXEC} ") == 1
    unit = tmp / UNIT.name
    unit.write_text(text.replace(f"ExecStart={EXEC} ", f"ExecStart={exe} "))
    for name, content in (dropins or {}).items():
        d = tmp / f"{UNIT.name}.d"
        d.mkdir(exist_ok=True)
        (d / name).write_text(content)
    return unit


def verify(unit: Path) -> list[str]:
    """Lines of `systemd-analyze verify` about our unit (warnings about other units on the machine are not ours)."""
    r = subprocess.run([systemd_analyze(), "verify", "--man=no", str(unit)],
                       capture_output=True, text=True, timeout=60)
    ours = [line for line in (r.stdout + r.stderr).splitlines() if "edge-run" in line]
    assert r.returncode == 0, r.stdout + r.stderr
    return ours


def security(unit: Path) -> tuple[float, list[str], str]:
    """(overall exposure, the checks not passed, the command) from `systemd-analyze security --offline`."""
    cmd = [systemd_analyze(), "security", "--offline=yes", f"--threshold={round(MAX_EXPOSURE * 10)}", str(unit)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    m = re.search(r"Overall exposure level for \S+: (\d+(?:\.\d+)?)", r.stdout + r.stderr)
    assert m, r.stdout + r.stderr
    failed = [" ".join(line.split()[1:2] + line.split()[-1:]) for line in r.stdout.splitlines() if line.startswith("✗")]
    exposure = float(m.group(1))
    assert (r.returncode == 0) == (exposure <= MAX_EXPOSURE), f"--threshold disagrees: rc {r.returncode}"
    return exposure, failed, " ".join(["systemd-analyze", *cmd[1:]])


def test_verify_is_silent(tmp_path):
    assert verify(unit_in(tmp_path)) == []


def test_verify_is_silent_with_coral_dropin(tmp_path):
    assert verify(unit_in(tmp_path, {"coral.conf": coral_dropin()})) == []


def test_verify_would_report_a_bad_key(tmp_path):
    """The check above can fail: a misspelt key is reported on a line that names the unit."""
    unit = unit_in(tmp_path, {"typo.conf": "[Service]\nProtectSytem=strict\n"})
    assert any("ProtectSytem" in line for line in verify(unit))


def test_security_exposure(tmp_path):
    exposure, failed, cmd = security(UNIT)
    coral, _, _ = security(unit_in(tmp_path, {"coral.conf": coral_dropin()}))
    if os.environ.get("AVE_WRITE_REPORTS") == "1":
        version = subprocess.run([systemd_analyze(), "--version"], capture_output=True, text=True).stdout
        REPORT.write_text(json.dumps({
            "exposure": exposure, "threshold": MAX_EXPOSURE, "exposure_with_coral_dropin": coral,
            "not_set": failed, "systemd_version": version.splitlines()[0],
            "command": cmd.replace(str(REPO) + "/", ""),
        }, indent=2, ensure_ascii=False) + "\n")
    assert exposure <= MAX_EXPOSURE, failed
    assert coral <= MAX_EXPOSURE


def test_security_report_is_current():
    """reports/systemd_security.json matches this unit (rewrite: AVE_WRITE_REPORTS=1)."""
    exposure, failed, _ = security(UNIT)
    report = json.loads(REPORT.read_text())
    version = subprocess.run([systemd_analyze(), "--version"], capture_output=True, text=True).stdout.split()[1]
    if report["systemd_version"].split()[1] != version:
        pytest.skip(f"report made with systemd {report['systemd_version']}, this is {version}")
    assert (report["exposure"], report["not_set"]) == (exposure, failed), "rerun with AVE_WRITE_REPORTS=1"
    readme = (REPO / "systemd" / "README.md").read_text()
    assert f"**{report['exposure']}**" in readme, "systemd/README.md quotes another exposure than the report"


def test_unit_keys():
    unit = parse_unit(UNIT.read_text())
    s = "Service"
    assert one(unit, s, "Type") == "notify"
    assert one(unit, s, "NotifyAccess") == "main"
    assert int(one(unit, s, "WatchdogSec")) > 0
    assert one(unit, s, "Restart") == "on-failure"
    assert int(one(unit, s, "RestartSec")) >= 1
    # no crash loop: a start limit that RestartSec cannot outrun
    burst, interval = int(one(unit, "Unit", "StartLimitBurst")), int(one(unit, "Unit", "StartLimitIntervalSec"))
    assert burst * int(one(unit, s, "RestartSec")) < interval
    assert one(unit, s, "User") == "edge-run"
    assert set(one(unit, s, "SupplementaryGroups").split()) == {"video", "audio"}
    exe, *args = one(unit, s, "ExecStart").split()
    assert exe == EXEC
    assert args == ["--config", "/etc/" + one(unit, s, "ConfigurationDirectory") + "/edge-run.toml"]
    assert one(unit, s, "MemoryMax") == "300M"
    assert one(unit, s, "CapabilityBoundingSet") == ""
    assert one(unit, s, "ProtectSystem") == "strict"
    assert one(unit, s, "UMask") == "0077"
    for key in ("NoNewPrivileges", "ProtectHome", "PrivateTmp", "ProtectKernelTunables", "ProtectKernelModules",
                "ProtectKernelLogs", "ProtectControlGroups", "ProtectClock", "ProtectHostname", "RestrictNamespaces",
                "LockPersonality", "MemoryDenyWriteExecute", "RestrictRealtime", "RestrictSUIDSGID"):
        assert one(unit, s, key) == "yes", key
    assert set(one(unit, s, "RestrictAddressFamilies").split()) == {"AF_UNIX", "AF_INET", "AF_INET6"}
    assert values(unit, s, "SystemCallFilter")[0] == "@system-service"
    assert (one(unit, s, "IPAddressDeny"), one(unit, s, "IPAddressAllow")) == ("any", "localhost")
    # the real /dev with a closed device cgroup: cameras, libcamera's media/DMA heaps, ALSA
    assert one(unit, s, "DevicePolicy") == "closed"
    assert {v.split()[0] for v in values(unit, s, "DeviceAllow")} == {
        "char-video4linux", "char-media", "char-dma_heap", "char-alsa"}
    assert values(unit, s, "PrivateUsers") == []  # would map the video/audio groups away
    assert one(unit, "Install", "WantedBy") == "multi-user.target"


def test_sysusers_matches_unit(tmp_path):
    """systemd/sysusers.d makes the unit's User= with its SupplementaryGroups= (checked on a fake root)."""
    unit = parse_unit(UNIT.read_text())
    lines = [line.split() for line in SYSUSERS.read_text().splitlines() if line and not line.startswith("#")]
    user = one(unit, "Service", "User")
    assert [x[:2] for x in lines if x[0] == "u"] == [["u", user]]
    assert {x[2] for x in lines if x[0] == "m" and x[1] == user} == set(one(unit, "Service", "SupplementaryGroups").split())
    exe = shutil.which("systemd-sysusers")
    if exe is None:
        pytest.skip("systemd-sysusers is absent (apt-get install systemd)")
    etc = tmp_path / "etc"
    etc.mkdir()
    (etc / "passwd").write_text("root:x:0:0:root:/root:/bin/sh\n")
    (etc / "group").write_text("root:x:0:\naudio:x:29:\nvideo:x:44:\n")
    subprocess.run([exe, f"--root={tmp_path}", str(SYSUSERS)], check=True, capture_output=True, timeout=60)
    passwd = dict(line.split(":", 1) for line in (etc / "passwd").read_text().splitlines())
    assert passwd[user].endswith(":/usr/sbin/nologin")
    groups = {g.split(":")[0]: g.split(":")[3] for g in (etc / "group").read_text().splitlines()}
    assert groups["video"] == groups["audio"] == user


MDWE_PROBE = textwrap.dedent("""
    import ctypes, mmap, sys
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(65, 1, 0, 0, 0) != 0:  # PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN (Linux >= 6.3)
        sys.exit(77)
    try:
        mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
        sys.exit("W+X mapping allowed: MDWE is not in force")
    except OSError:
        pass
    import numpy as np
    from edge.runtime import load_model
    m = load_model("edge/models/mtcnn_onet.tflite", threads=2)  # LiteRT + XNNPACK
    out = m.predict(np.random.default_rng(0).random((1, 48, 48, 3), dtype=np.float32))
    assert len(out) == 3
    assert ctypes.CFUNCTYPE(ctypes.c_int)(lambda: 7)() == 7  # a libffi closure
    import cv2, av, soxr  # noqa: E401 - the rest of the edge extra
    print("ok")
""")


def test_runtime_without_writable_executable_memory():
    """MemoryDenyWriteExecute=yes: numpy, LiteRT/XNNPACK, ctypes, OpenCV, PyAV and soxr need no W+X memory.

    The kernel's own switch (prctl PR_SET_MDWE) stands in for systemd's seccomp rule; this is the
    workstation's x86-64 build of the same packages (reports/pi_wheels.md checks the aarch64 wheels
    for executable stacks).
    """
    for mod in ("ai_edge_litert", "cv2", "av", "soxr"):
        pytest.importorskip(mod, reason=f"{mod} (the edge extra) is absent")
    r = subprocess.run([sys.executable, "-c", MDWE_PROBE], cwd=REPO, capture_output=True, text=True, timeout=120,
                       env={**os.environ, "PYTHONPATH": str(REPO)})
    if r.returncode == 77:
        pytest.skip("this kernel has no PR_SET_MDWE (Linux < 6.3)")
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stdout + r.stderr
