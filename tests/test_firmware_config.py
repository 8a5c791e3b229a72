"""The Pi kiosk files: cloud-init accepts both user-data files, what they install is what the repository
holds (the unit verbatim, the example config), the Coral variant only adds to the base, and
pi_wheels builds the right pip command (no network here: reports/pi_wheels.json is its last run).

    python -m pytest -q tests/test_firmware_config.py

Needs cloud-init (apt) for the schema check and PyYAML; those tests skip with the reason when absent.
"""
from __future__ import annotations

import importlib.util
import io
import itertools
import json
import shutil
import struct
import subprocess
import tomllib
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
FW = REPO / "firmware_config"
USER_DATA = {"base": FW / "user-data", "coral": FW / "user-data.coral"}
UNIT_PATH = "/etc/systemd/system/edge-run.service"
TOML_PATH = "/etc/av-emotion-edge/edge-run.toml"


def _pi_wheels():
    spec = importlib.util.spec_from_file_location("pi_wheels", FW / "pi_wheels.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


pi_wheels = _pi_wheels()


def load(variant: str) -> dict:
    yaml = pytest.importorskip("yaml", reason="PyYAML is absent (pip install pyyaml)")
    text = USER_DATA[variant].read_text()
    assert text.startswith("#cloud-config\n")
    return yaml.safe_load(text)


def files(variant: str) -> dict[str, dict]:
    return {f["path"]: f for f in load(variant)["write_files"]}


@pytest.mark.parametrize("variant", USER_DATA)
def test_cloud_init_schema(variant):
    exe = shutil.which("cloud-init")
    if exe is None:
        pytest.skip("cloud-init is absent (apt-get install cloud-init)")
    r = subprocess.run([exe, "schema", "--config-file", str(USER_DATA[variant])],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "Valid cloud-config" in r.stdout, r.stdout + r.stderr
    assert "deprecat" not in (r.stdout + r.stderr).lower(), r.stdout + r.stderr


@pytest.mark.parametrize("variant", USER_DATA)
def test_embedded_unit_is_the_repository_unit(variant):
    unit = files(variant)[UNIT_PATH]["content"]
    assert unit == (REPO / "systemd" / "edge-run.service").read_text(), \
        f"{USER_DATA[variant].name} embeds a stale copy of systemd/edge-run.service: paste the file again"


def test_embedded_config_is_the_example_config():
    text = files("base")[TOML_PATH]["content"]
    assert text == (REPO / "systemd" / "edge-run.toml").read_text()
    cfg = tomllib.loads(text)
    assert cfg["output"]["http"] == "127.0.0.1:8080"
    assert "delegate" not in cfg


def test_coral_config_adds_the_edgetpu_delegate():
    base = tomllib.loads(files("base")[TOML_PATH]["content"])
    coral = tomllib.loads(files("coral")[TOML_PATH]["content"])
    assert coral.pop("delegate") == "edgetpu"
    assert coral == base


CORAL_ONLY = ("/usr/local/sbin/ave-coral-apt", "/etc/systemd/system/edge-run.service.d/coral.conf")


def test_coral_variant_only_adds():
    """user-data.coral is user-data plus the Coral pieces, and nothing else changes."""
    base, coral = load("base"), load("coral")
    cf = {f["path"]: f for f in coral["write_files"]}
    assert "char-usb_device" in cf[CORAL_ONLY[1]]["content"]
    # the repository comes before the package install, which may need it
    assert coral["runcmd"].index([CORAL_ONLY[0]]) < coral["runcmd"].index(["/usr/local/sbin/ave-install"])
    coral["write_files"] = [f for f in coral["write_files"] if f["path"] not in CORAL_ONLY]
    for data in (base, coral):  # compared by the config test above
        next(f for f in data["write_files"] if f["path"] == TOML_PATH)["content"] = "(edge-run.toml)"
    coral["runcmd"].remove([CORAL_ONLY[0]])
    coral["packages"].remove("gnupg")
    next(u for u in coral["users"] if u["name"] == "edge-run")["groups"].remove("plugdev")
    assert coral == base


@pytest.mark.parametrize("variant", USER_DATA)
def test_users_packages_and_service(variant):
    data = load(variant)
    users = {u["name"]: u for u in data["users"]}
    svc = users["edge-run"]
    assert svc["system"] and svc["shell"] == "/usr/sbin/nologin"
    sysusers = (REPO / "systemd" / "sysusers.d" / "edge-run.conf").read_text().splitlines()
    assert {line.split()[2] for line in sysusers if line.startswith("m ")} <= set(svc["groups"])
    assert users["kiosk"]["lock_passwd"] and "sudo" not in users["kiosk"].get("groups", [])
    assert {"python3-venv", "python3-picamera2", "python3-pyaudio", "chromium"} <= set(data["packages"])
    runcmd = data["runcmd"]
    assert runcmd.index(["/usr/local/sbin/ave-install"]) < runcmd.index(["systemctl", "enable", "edge-run.service"])
    assert data["power_state"]["mode"] == "reboot"


def test_kiosk_opens_the_configured_page():
    f = files("base")
    http = tomllib.loads(f[TOML_PATH]["content"])["output"]["http"]
    assert f"URL=http://{http}/" in f["/usr/local/bin/ave-kiosk"]["content"]
    autostart = f["/home/kiosk/.config/labwc/autostart"]
    assert autostart["defer"] and autostart["owner"] == "kiosk:kiosk"
    assert "/usr/local/bin/ave-kiosk" in autostart["content"]


@pytest.mark.parametrize("variant", USER_DATA)
def test_embedded_scripts_parse(variant, tmp_path):
    scripts = {p: f["content"] for p, f in files(variant).items() if f["content"].startswith("#!/bin/sh")}
    assert len(scripts) >= 2
    for path, text in scripts.items():
        assert files(variant)[path]["permissions"] == "0755"
        r = subprocess.run(["sh", "-n"], input=text, capture_output=True, text=True)
        assert r.returncode == 0, f"{path}: {r.stderr}"


def test_ave_install_refuses_the_placeholder(tmp_path):
    script = tmp_path / "ave-install"
    script.write_text(files("base")["/usr/local/sbin/ave-install"]["content"])
    spec = load("base")["write_files"][0]["content"].split('AVE_PACKAGE="')[1].split('"')[0]
    r = subprocess.run(["sh", str(script), spec], capture_output=True, text=True, timeout=30)
    assert r.returncode == 2 and "set AVE_PACKAGE" in r.stderr


def test_ave_install_constraints_match_pi_wheels():
    text = files("base")["/usr/local/sbin/ave-install"]["content"]
    assert pi_wheels.CONSTRAINTS["bookworm"] == ["numpy<2"] and 'echo "numpy<2"' in text
    assert pi_wheels.CONSTRAINTS["trixie"] == []


def test_config_txt():
    settings = []
    for line in (FW / "config.txt").read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("["):
            assert line.endswith("]"), line
            continue
        key, eq, value = line.partition("=")
        assert eq and key and value and " " not in key, f"not key=value: {line!r}"
        settings.append(line)
    assert "camera_auto_detect=1" in settings
    assert "dtparam=audio=on" in settings
    assert "dtoverlay=vc4-kms-v3d" in settings


# pi_wheels: the pip command, no network


def test_manylinux_tags():
    tags = pi_wheels.manylinux_tags("aarch64", (2, 36))
    assert tags[0] == "manylinux_2_36_aarch64" and tags[-2:] == ["manylinux_2_17_aarch64", "manylinux2014_aarch64"]
    assert tags[:-1] == [f"manylinux_2_{m}_aarch64" for m in range(36, 16, -1)]
    assert len(pi_wheels.manylinux_tags("aarch64", (2, 41))) == 26
    with pytest.raises(ValueError):
        pi_wheels.manylinux_tags("aarch64", (2, 16))


def test_pip_download_args():
    args = pi_wheels.pip_download_args("numpy>=1.26", "3.11", (2, 36), "/tmp/x")
    assert args[0] == "download" and args[-3:] == ["-d", "/tmp/x", "numpy>=1.26"]
    assert {"--only-binary=:all:", "--no-deps"} <= set(args)
    opts = list(itertools.pairwise(args))
    assert ("--python-version", "3.11") in opts and ("--implementation", "cp") in opts
    assert {v for k, v in opts if k == "--abi"} == {"cp311", "abi3", "none"}
    assert [v for k, v in opts if k == "--platform"] == pi_wheels.manylinux_tags("aarch64", (2, 36))


def test_device_requirements_and_report_agree():
    reqs = pi_wheels.device_requirements()
    names = [pi_wheels.requirement_name(r) for _, r in reqs]
    assert set(names) >= {"numpy", "ai-edge-litert", "opencv-python-headless", "av", "soxr", "pyaudio", "picamera2"}
    report = json.loads((REPO / "reports" / "pi_wheels.json").read_text())
    for target in report["targets"]:
        assert [p["requirement"] for p in target["packages"]] == [r for _, r in reqs], \
            "setup.cfg's device extras changed: python firmware_config/pi_wheels.py --out reports/pi_wheels.json"
        for p in target["packages"]:
            assert p["wheel"] or p["package"] in pi_wheels.ON_THE_PI, p
            assert not p.get("execstack"), p


def _elf(stack_flags: int) -> bytes:
    """A 64-bit little-endian ELF header with one PT_GNU_STACK program header."""
    header = bytearray(64)
    header[:6] = b"\x7fELF\x02\x01"
    struct.pack_into("<Q", header, 0x20, 64)         # e_phoff
    struct.pack_into("<HH", header, 0x36, 56, 1)     # e_phentsize, e_phnum
    phdr = bytearray(56)
    struct.pack_into("<II", phdr, 0, pi_wheels.PT_GNU_STACK, stack_flags)
    return bytes(header + phdr)


def test_execstack_objects(tmp_path):
    wheel = tmp_path / "x-1-py3-none-any.whl"
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("x/ok.cpython-311-aarch64-linux-gnu.so", _elf(0x6))    # RW
        z.writestr("x.libs/libbad.so.1", _elf(0x7))                       # RWX
        z.writestr("x/__init__.py", "")
    wheel.write_bytes(buf.getvalue())
    assert pi_wheels.execstack_objects(wheel) == ["x.libs/libbad.so.1"]


@pytest.mark.parametrize("variant", ["base", "coral"])
def test_embedded_config_is_a_valid_edge_run_config(variant, tmp_path):
    """The config each image installs is accepted by edge-run's own parser (no unknown keys)."""
    from edge.run import parse
    f = tmp_path / "edge-run.toml"
    f.write_text(files(variant)[TOML_PATH]["content"])
    args = parse(["--config", str(f)])
    assert args.camera is not None and args.http
    assert (args.delegate == "edgetpu") == (variant == "coral")
