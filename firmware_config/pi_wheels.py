"""Which device packages install from PyPI wheels on a 64-bit Raspberry Pi, and which come from apt.

    python firmware_config/pi_wheels.py --out reports/pi_wheels.json

For each Raspberry Pi OS target (Bookworm: Python 3.11, glibc 2.36; Trixie: Python 3.13,
glibc 2.41) and each package of the device extras in setup.cfg (edge, mic, pi, mqtt), runs
``pip download --only-binary=:all: --no-deps`` for aarch64 with every manylinux tag the target's
glibc accepts (pip does not expand ``manylinux_2_36`` to the older tags itself), and records the
wheel it gets, its Requires-Dist, and any shared object in it that asks for an executable stack
(which glibc >= 2.41 refuses to dlopen, and which the unit's MemoryDenyWriteExecute= would break).
Wheels go to a temporary folder that is deleted. Writes the JSON and a Markdown table beside it.
"""
from __future__ import annotations

import argparse
import configparser
import datetime
import json
import logging
import re
import struct
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

log = logging.getLogger("pi_wheels")

REPO = Path(__file__).resolve().parents[1]
EXTRAS = ("edge", "mic", "pi", "mqtt")  # the device extras; those setup.cfg lacks are skipped

# (name, Python, glibc): Raspberry Pi OS releases, 64-bit
TARGETS = (
    ("bookworm", "3.11", (2, 36)),
    ("trixie", "3.13", (2, 41)),
)

# How a package that has no usable aarch64 wheel gets onto the Pi instead.
ON_THE_PI = {
    "pyaudio": "apt python3-pyaudio (PyPI has an sdist only; a pip build needs portaudio19-dev and a compiler)",
    "picamera2": ("apt python3-picamera2, preinstalled on Raspberry Pi OS: it needs libcamera's Python "
                  "bindings (apt python3-libcamera), which are not on PyPI, so the venv is made with "
                  "--system-site-packages"),
}

# pip constraints ave-install (firmware_config/user-data) applies per release. Bookworm's apt
# modules that picamera2 imports (python3-simplejpeg, ...) are built against numpy 1.24, so the
# venv must keep numpy 1.x there; pip then picks opencv-python-headless < 4.12 (which needs numpy 2).
CONSTRAINTS = {"bookworm": ["numpy<2"], "trixie": []}

PT_GNU_STACK, PF_X = 0x6474E551, 0x1


def manylinux_tags(arch: str = "aarch64", glibc: tuple[int, int] = (2, 36)) -> list[str]:
    """Every platform tag a glibc-``glibc`` machine accepts, newest first (PEP 600 + the 2014 alias)."""
    major, minor = glibc
    if major != 2 or minor < 17:
        raise ValueError(f"glibc {major}.{minor}: aarch64 manylinux starts at 2.17")
    tags = [f"manylinux_2_{m}_{arch}" for m in range(minor, 16, -1)]
    return tags + [f"manylinux2014_{arch}"]


def target_args(python: str, glibc: tuple[int, int], arch: str = "aarch64") -> list[str]:
    """pip's options for "binary wheels for CPython ``python`` on ``arch`` with ``glibc``"."""
    abi = "cp" + python.replace(".", "")
    args = ["--only-binary=:all:", "--python-version", python, "--implementation", "cp",
            "--abi", abi, "--abi", "abi3", "--abi", "none"]
    for tag in manylinux_tags(arch, glibc):
        args += ["--platform", tag]
    return args


def pip_download_args(requirement: str, python: str, glibc: tuple[int, int], dest: str | Path,
                      arch: str = "aarch64") -> list[str]:
    """The ``pip download`` arguments (after ``python -m pip``) for one requirement and target."""
    return ["download", "--no-deps", "--no-cache-dir", "--quiet", *target_args(python, glibc, arch),
            "-d", str(dest), requirement]


def resolve(requirements: list[str], python: str, glibc: tuple[int, int], constraints: list[str]) -> dict:
    """The wheels pip would install for ``requirements`` with their dependencies (a dry run)."""
    with tempfile.TemporaryDirectory(prefix="pi_wheels_") as tmp:
        cfile, report = Path(tmp) / "constraints.txt", Path(tmp) / "report.json"
        cfile.write_text("".join(c + "\n" for c in constraints))
        cmd = [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--quiet",
               "--report", str(report), *target_args(python, glibc), "--target", str(Path(tmp) / "never"),
               "-c", str(cfile), *requirements]
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode != 0:
            return {"error": (r.stderr.strip().splitlines() or ["pip failed"])[-1]}
        items = json.loads(report.read_text())["install"]
    return {i["metadata"]["name"]: i["download_info"]["url"].rsplit("/", 1)[-1] for i in items}


def device_requirements(setup_cfg: Path = REPO / "setup.cfg") -> list[tuple[str, str]]:
    """(extra, requirement) for the packages of the device extras, read from setup.cfg."""
    cfg = configparser.ConfigParser()
    cfg.read(setup_cfg)
    out = []
    for extra in EXTRAS:
        for line in cfg["options.extras_require"].get(extra, "").strip().splitlines():
            line = line.split("#")[0].strip()
            if line:
                out.append((extra, line))
    return out


def requirement_name(requirement: str) -> str:
    return re.split(r"[<>=!~;\[ ]", requirement, maxsplit=1)[0].lower()


def execstack_objects(wheel: Path) -> list[str]:
    """Shared objects in the wheel whose PT_GNU_STACK asks for an executable stack."""
    bad = []
    with zipfile.ZipFile(wheel) as z:
        for name in z.namelist():
            if not re.search(r"\.so(\.\d+)*$", name):
                continue
            elf = z.read(name)
            if elf[:4] != b"\x7fELF" or elf[4] != 2 or elf[5] != 1:  # 64-bit little-endian only
                continue
            phoff, = struct.unpack_from("<Q", elf, 0x20)
            phentsize, phnum = struct.unpack_from("<HH", elf, 0x36)
            for i in range(phnum):
                p_type, p_flags = struct.unpack_from("<II", elf, phoff + i * phentsize)
                if p_type == PT_GNU_STACK and p_flags & PF_X:
                    bad.append(name)
    return bad


def wheel_metadata(wheel: Path) -> dict:
    with zipfile.ZipFile(wheel) as z:
        meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
        text = z.read(meta).decode("utf-8", "replace").split("\n\n")[0]
    fields = [line.split(": ", 1) for line in text.splitlines() if ": " in line]
    return {"version": next(v for k, v in fields if k == "Version"),
            "requires_dist": [v for k, v in fields if k == "Requires-Dist" and "extra ==" not in v]}


def probe(extra: str, requirement: str, python: str, glibc: tuple[int, int]) -> dict:
    name = requirement_name(requirement)
    row = {"package": name, "extra": extra, "requirement": requirement, "wheel": None}
    with tempfile.TemporaryDirectory(prefix="pi_wheels_") as tmp:
        cmd = [sys.executable, "-m", "pip", *pip_download_args(requirement, python, glibc, tmp)]
        r = subprocess.run(cmd, capture_output=True, text=True)
        wheels = sorted(Path(tmp).glob("*.whl"))
        if r.returncode != 0 or not wheels:
            row["error"] = (r.stderr.strip().splitlines() or ["no wheel"])[-1]
        else:
            w = wheels[0]
            row.update(wheel=w.name, size_mb=round(w.stat().st_size / 2**20, 1),
                       **wheel_metadata(w), execstack=execstack_objects(w))
    if name in ON_THE_PI:
        row["on_the_pi"] = ON_THE_PI[name]
    elif row["wheel"]:
        row["on_the_pi"] = "pip wheel from PyPI"
    return row


def markdown(report: dict) -> str:
    targets = report["targets"]
    head = " | ".join(f"{t['os']} (Python {t['python']}, glibc {t['glibc']})" for t in targets)
    lines = [
        "# Device packages on a 64-bit Raspberry Pi (aarch64)",
        "",
        f"Made by `{report['command']}` on {report['date']} (pip {report['pip']}); "
        "data in [pi_wheels.json](pi_wheels.json).",
        "",
        f"| package | extra | {head} | on the Pi |",
        "|---|---|" + "---|" * len(targets) + "---|",
    ]
    names = [(r["package"], r["extra"]) for r in targets[0]["packages"]]
    for i, (name, extra) in enumerate(names):
        cells = []
        for t in targets:
            r = t["packages"][i]
            if r["wheel"]:
                cell = f"`{r['wheel']}` ({r['size_mb']} MB)"
                if r["execstack"]:
                    cell += f" **exec stack: {', '.join(r['execstack'])}**"
            else:
                cell = "no wheel"
            cells.append(cell)
        on_pi = targets[0]["packages"][i]["on_the_pi"]
        lines.append(f"| {name} | {extra} | " + " | ".join(cells) + f" | {on_pi} |")
    for t in targets:
        c = f" with constraints `{' '.join(t['constraints'])}`" if t["constraints"] else ""
        if "error" in t["resolved"]:
            lines += ["", f"{t['os']}: the wheel packages{c} do not resolve: {t['resolved']['error']}"]
        else:
            versions = ", ".join(f"{n} {w.split('-')[1]}" for n, w in t["resolved"].items())
            lines += ["", f"{t['os']}: `pip install` of the wheel packages{c} resolves, dependencies "
                      f"included, to wheels only: {versions}."]
    lines += ["", "On the Pi the venv sees apt's packages (`--system-site-packages`): pip keeps an apt "
              "package that already meets a requirement (Trixie's numpy 2.2, for instance)."]
    bad = [r["package"] for t in targets for r in t["packages"] if r.get("execstack")]
    lines += ["", "None of the wheels in the table asks for an executable stack: MemoryDenyWriteExecute=yes "
              "and glibc 2.41 load them." if not bad else f"Executable stack requested by: {', '.join(sorted(set(bad)))}."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=REPO / "reports" / "pi_wheels.json")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    pip = subprocess.run([sys.executable, "-m", "pip", "--version"], capture_output=True, text=True).stdout.split()[1]
    report = {"command": "python firmware_config/pi_wheels.py --out " + str(args.out),
              "date": datetime.date.today().isoformat(), "pip": pip, "arch": "aarch64", "targets": []}
    for os_name, python, glibc in TARGETS:
        rows = []
        for extra, req in device_requirements():
            row = probe(extra, req, python, glibc)
            log.info("%s py%s %-24s %s", os_name, python, row["package"], row["wheel"] or row.get("error"))
            rows.append(row)
        wheels = [r["requirement"] for r in rows if r["wheel"] and r["package"] not in ON_THE_PI]
        resolved = resolve(wheels, python, glibc, CONSTRAINTS[os_name])
        log.info("%s py%s resolved with dependencies: %s", os_name, python, resolved)
        report["targets"].append({"os": os_name, "python": python, "glibc": f"{glibc[0]}.{glibc[1]}",
                                  "platform_tags": manylinux_tags("aarch64", glibc), "packages": rows,
                                  "constraints": CONSTRAINTS[os_name], "resolved": resolved})
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    args.out.with_suffix(".md").write_text(markdown(report))
    log.info("wrote %s and %s", args.out, args.out.with_suffix(".md"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
