"""Run the device package on an emulated arm64 Debian (a Raspberry Pi's CPU) in a chroot.

Raspberry Pi OS 64-bit is Debian bookworm arm64, so an arm64 bookworm rootfs run by
qemu-user through binfmt_misc is the Pi's userland and instruction set (not its speed).
The rootfs is built once and cached outside the repo; the edge wheels (numpy, LiteRT,
OpenCV, PyAV, soxr) are downloaded on the host for aarch64 and installed offline inside.

    apt-get install debootstrap qemu-user-static binfmt-support          # once, as root
    python tests/arm64_chroot.py setup                                   # binfmt + rootfs + wheels + edge/
    python tests/arm64_chroot.py run -- python -c 'import platform; print(platform.machine())'
    python tests/arm64_chroot.py run -- python tests/arm64_probe.py      # same as the host's run

Inside the chroot ``python`` is /opt/ave-venv/bin/python and the repo subset (edge/ and the
probe) lies at /opt/ave, which is on PYTHONPATH and the working directory.
Environment: AVE_ARM64_ROOTFS (rootfs folder, default ~/.cache/av-emotion-edge/arm64-bookworm),
AVE_DEBIAN_MIRROR (default http://deb.debian.org/debian).

Only /proc and /dev are mounted into the chroot, in a private mount namespace
(``unshare --mount``), so the mounts vanish with the process. /sys is left out on purpose:
with the host's x86 /sys visible, LiteRT's cpuinfo reads x86 topology and segfaults.
"""
from __future__ import annotations

import argparse
import configparser
import contextlib
import fcntl
import json
import logging
import os
import platform
import shlex
import shutil
import signal
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[1]
SUITE = "bookworm"                                 # Raspberry Pi OS 12 is bookworm too
PYTHON_TAG = "311"                                 # bookworm's python3 is 3.11
INCLUDE = ("python3", "python3-venv", "ca-certificates")
DEFAULT_MIRROR = "http://deb.debian.org/debian"
DEFAULT_ROOTFS = Path("~/.cache/av-emotion-edge/arm64-bookworm")
ROOTFS_MARKER = ".ave-rootfs.json"                 # written last: its presence means "complete"
CHROOT_REPO = "/opt/ave"                           # edge/ and tests/arm64_probe.py, on PYTHONPATH
CHROOT_VENV = "/opt/ave-venv"
CHROOT_WHEELS = "/opt/wheels"
WHEELS_MARKER = ".ave-wheels.json"                 # in the venv: the requirement and wheel set installed
# The device's runtime dependencies (setup.cfg [edge]); pinned to the host's versions, so that
# a difference between host and chroot comes from the CPU, not from a library release.
EDGE_REQUIREMENTS = ("numpy", "ai-edge-litert", "opencv-python-headless", "av", "soxr")
# pip does not expand manylinux tags when --platform is given: name every one a wheel may carry
# (ai-edge-litert's aarch64 wheels are manylinux_2_27; bookworm's glibc is 2.36).
AARCH64_PLATFORMS = ("manylinux2014_aarch64",) + tuple(f"manylinux_2_{m}_aarch64" for m in range(17, 37))
QEMU_INTERPRETERS = ("/usr/libexec/qemu-binfmt/aarch64-binfmt-P", "/usr/bin/qemu-aarch64-static")
BINFMT_DIR = Path("/proc/sys/fs/binfmt_misc")


# ----- host checks -----

def missing_tools() -> list[str]:
    """Debian packages (apt-get install ...) that the arm64 chroot needs and this host lacks."""
    missing = []
    if not shutil.which("debootstrap"):
        missing.append("debootstrap")
    if platform.machine() != "aarch64" and not any(Path(p).exists() for p in QEMU_INTERPRETERS):
        missing.append("qemu-user-static")
    if platform.machine() != "aarch64" and not shutil.which("update-binfmts"):
        missing.append("binfmt-support")
    if not shutil.which("unshare") or not shutil.which("chroot"):
        missing.append("util-linux coreutils")
    return missing


def ensure_binfmt() -> tuple[bool, str]:
    """Make the kernel run aarch64 ELF files through qemu-user. Returns (ok, reason)."""
    if platform.machine() == "aarch64":
        return True, "native aarch64 host, no emulation needed"
    if os.geteuid() != 0:
        return False, "needs root (mount binfmt_misc, debootstrap, chroot)"
    missing = [m for m in missing_tools() if m in ("qemu-user-static", "binfmt-support")]
    if missing:
        return False, f"not installed: apt-get install {' '.join(missing)}"
    if not os.path.ismount(BINFMT_DIR):
        r = _run(["mount", "-t", "binfmt_misc", "binfmt_misc", str(BINFMT_DIR)])
        if r.returncode != 0:
            return False, f"cannot mount binfmt_misc at {BINFMT_DIR}: {r.stderr.strip()} (container without CAP_SYS_ADMIN?)"
    entry = BINFMT_DIR / "qemu-aarch64"
    if not _binfmt_enabled(entry):
        r = _run(["update-binfmts", "--enable", "qemu-aarch64"])
        if r.returncode != 0 or not _binfmt_enabled(entry):
            return False, f"update-binfmts --enable qemu-aarch64 failed: {(r.stderr or r.stdout).strip()}"
    text = entry.read_text()
    flags = next((ln.split(":", 1)[1].strip() for ln in text.splitlines() if ln.startswith("flags:")), "")
    if "F" not in flags:
        # Without the fix-binary flag the interpreter is looked up inside the chroot, where it is absent.
        return False, f"{entry} is registered without the F (fix-binary) flag: {flags!r}"
    return True, f"qemu-aarch64 enabled (flags {flags})"


def _binfmt_enabled(entry: Path) -> bool:
    try:
        return entry.read_text().splitlines()[0].strip() == "enabled"
    except (OSError, IndexError):
        return False


# ----- rootfs -----

def rootfs_dir(cache_dir: str | Path | None = None) -> Path:
    """The rootfs folder: cache_dir, else $AVE_ARM64_ROOTFS, else ~/.cache/av-emotion-edge/arm64-bookworm."""
    d = Path(cache_dir or os.environ.get("AVE_ARM64_ROOTFS") or DEFAULT_ROOTFS).expanduser().resolve()
    if d == REPO or REPO in d.parents:
        raise ValueError(f"the arm64 rootfs must live outside the repo, not at {d}")
    return d


def build_rootfs(cache_dir: str | Path | None = None, mirror: str | None = None) -> Path:
    """Debootstrap an arm64 bookworm (minbase + python3) once; later calls reuse it.

    A folder without the completion marker is a partial build: it is removed and rebuilt.
    The marker (``.ave-rootfs.json``) records how long the build took.
    """
    d = rootfs_dir(cache_dir)
    with _locked(d):
        return _build_rootfs(d, mirror)


def _build_rootfs(d: Path, mirror: str | None) -> Path:
    if (d / ROOTFS_MARKER).is_file():
        log.info("arm64 rootfs %s: cached (%s)", d, rootfs_info(d))
        return d
    if d.exists():
        log.warning("arm64 rootfs %s is incomplete: removing it and building again", d)
        remove_rootfs(d)
    d.parent.mkdir(parents=True, exist_ok=True)
    mirror = mirror or os.environ.get("AVE_DEBIAN_MIRROR") or DEFAULT_MIRROR
    cmd = ["debootstrap", "--arch=arm64", "--variant=minbase", f"--include={','.join(INCLUDE)}",
           SUITE, str(d), mirror]
    logfile = d.with_name(d.name + ".debootstrap.log")
    log.info("building arm64 rootfs (minutes): %s  [log %s]", shlex.join(cmd), logfile)
    t0 = time.monotonic()
    with open(logfile, "w") as f:
        r = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    seconds = time.monotonic() - t0
    if r.returncode != 0:
        tail = logfile.read_text(errors="replace").splitlines()[-15:]
        unmount_under(d)  # debootstrap mounts proc in the target and may leave it on failure
        raise RuntimeError(f"debootstrap failed (rc {r.returncode}) after {seconds:.0f} s; "
                           f"the partial rootfs is removed on the next call. Last lines of {logfile}:\n"
                           + "\n".join(tail))
    unmount_under(d)
    info = {"suite": SUITE, "arch": "arm64", "variant": "minbase", "include": list(INCLUDE), "mirror": mirror,
            "debootstrap": _debootstrap_version(), "build_seconds": round(seconds, 1),
            "built": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    (d / ROOTFS_MARKER).write_text(json.dumps(info, indent=1) + "\n")
    log.info("arm64 rootfs %s built in %.0f s", d, seconds)
    return d


def rootfs_info(rootfs: Path) -> dict:
    """The completion marker's record (build time, debootstrap version, ...)."""
    return json.loads((Path(rootfs) / ROOTFS_MARKER).read_text())


def remove_rootfs(rootfs: Path) -> None:
    """Delete a rootfs, after making sure no mount (a bound /dev!) is left under it."""
    unmount_under(rootfs)
    left = mounts_under(rootfs)
    if left:
        raise RuntimeError(f"refusing to delete {rootfs}: still mounted under it: {left}")
    shutil.rmtree(rootfs)


def mounts_under(path: Path) -> list[str]:
    """Mount points at or below path (from /proc/self/mountinfo), deepest first."""
    root = str(Path(path).resolve())
    points = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = line.split()[4].replace("\\040", " ")
        if point == root or point.startswith(root + "/"):
            points.append(point)
    return sorted(points, key=len, reverse=True)


def unmount_under(path: Path) -> None:
    for point in mounts_under(path):
        r = _run(["umount", point])
        if r.returncode != 0:
            _run(["umount", "-l", point])


def _debootstrap_version() -> str:
    r = _run(["debootstrap", "--version"])
    return r.stdout.strip().split()[-1] if r.returncode == 0 and r.stdout.strip() else "unknown"


# ----- edge inside the rootfs -----

def edge_requirements(pin_to_host: bool = True) -> list[str]:
    """EDGE_REQUIREMENTS, each pinned to the version installed in this interpreter when there is one."""
    reqs = []
    for name in EDGE_REQUIREMENTS:
        try:
            reqs.append(f"{name}=={metadata.version(name)}" if pin_to_host else name)
        except metadata.PackageNotFoundError:
            reqs.append(name)
    return reqs


def install_edge(rootfs: Path, repo: Path = REPO, packages: tuple[str, ...] = ("edge",),
                 pin_to_host: bool = True) -> dict:
    """Put the device runtime into the rootfs; returns what was done and how long it took.

    Wheels for aarch64/cp311 are downloaded on the host into <rootfs>/opt/wheels and installed
    offline into /opt/ave-venv (skipped when that venv already holds the same requirement and
    wheel set). The repo's packages (``edge`` by default) and tests/arm64_probe.py are copied
    to /opt/ave every time, since they change.
    """
    rootfs, repo = Path(rootfs), Path(repo)
    if not (rootfs / ROOTFS_MARKER).is_file():
        raise RuntimeError(f"{rootfs} is not a complete rootfs: build_rootfs() first")
    with _locked(rootfs):
        return _install_edge(rootfs, repo, packages, pin_to_host)


def _install_edge(rootfs: Path, repo: Path, packages: tuple[str, ...], pin_to_host: bool) -> dict:
    reqs = edge_requirements(pin_to_host)
    wheels = rootfs / CHROOT_WHEELS.lstrip("/")
    marker = rootfs / CHROOT_VENV.lstrip("/") / WHEELS_MARKER
    report: dict = {"requirements": reqs}
    t0 = time.monotonic()
    state = json.loads(marker.read_text()) if marker.is_file() else {}
    if state.get("requirements") == reqs and all((wheels / w).is_file() for w in state.get("wheels", [])):
        report.update(wheels=state["wheels"], wheels_cached=True, wheels_seconds=0.0)
        log.info("arm64 venv %s already holds %s", CHROOT_VENV, ", ".join(state["wheels"]))
    else:
        if wheels.exists():
            shutil.rmtree(wheels)
        wheels.mkdir(parents=True)
        platforms = [a for p in AARCH64_PLATFORMS for a in ("--platform", p)]
        cmd = [sys.executable, "-m", "pip", "download", "--disable-pip-version-check", "--only-binary=:all:",
               *platforms, "--python-version", PYTHON_TAG[0] + "." + PYTHON_TAG[1:], "--implementation", "cp",
               "--abi", f"cp{PYTHON_TAG}", "-d", str(wheels), *reqs]
        _check(_run(cmd), "pip download of the aarch64 wheels")
        report["download_seconds"] = round(time.monotonic() - t0, 1)
        names = sorted(p.name for p in wheels.glob("*.whl"))
        t1 = time.monotonic()
        venv_py = f"{CHROOT_VENV}/bin/python"
        if marker.parent.exists():
            shutil.rmtree(marker.parent)
        _check(run_in_chroot(rootfs, ["/usr/bin/python3", "-m", "venv", CHROOT_VENV], timeout=600), "python3 -m venv")
        _check(run_in_chroot(rootfs, [venv_py, "-m", "pip", "install", "--disable-pip-version-check", "--no-index",
                                      "--find-links", CHROOT_WHEELS, *reqs], timeout=1800),
               "pip install in the chroot")
        marker.write_text(json.dumps({"requirements": reqs, "wheels": names}, indent=1) + "\n")
        report.update(wheels=names, wheels_cached=False, install_seconds=round(time.monotonic() - t1, 1))
    t2 = time.monotonic()
    dest = rootfs / CHROOT_REPO.lstrip("/")
    if dest.exists():
        shutil.rmtree(dest)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for pkg in packages:
        shutil.copytree(repo / pkg, dest / pkg, ignore=ignore)
    (dest / "tests").mkdir(parents=True)
    for script in ("arm64_probe.py", "arm64_edge_run.py"):
        shutil.copy2(repo / "tests" / script, dest / "tests" / script)
    report["copy_seconds"] = round(time.monotonic() - t2, 2)
    report["seconds"] = round(time.monotonic() - t0, 1)
    return report


def copy_in(rootfs: Path, src: str | Path, dest: str = f"{CHROOT_REPO}/data") -> str:
    """Copy a host file (e.g. a video clip for ``edge-run --video``) into the rootfs; returns its chroot path."""
    src = Path(src)
    target = Path(rootfs) / dest.lstrip("/") / src.name
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(src, target)
    return f"{dest}/{src.name}"


# ----- running -----

def chroot_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {"PATH": f"{CHROOT_VENV}/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
           "HOME": "/root", "LANG": "C.UTF-8", "PYTHONPATH": CHROOT_REPO, "PYTHONDONTWRITEBYTECODE": "1"}
    env.update(extra or {})
    return env


def run_in_chroot(rootfs: Path, argv: list[str], timeout: float | None = None,
                  env: dict[str, str] | None = None, cwd: str = "/") -> subprocess.CompletedProcess:
    """Run argv inside the rootfs with only /proc and /dev mounted; returns the CompletedProcess (text).

    The mounts are made in a private mount namespace, so they vanish when the process ends,
    killed or not. On timeout the whole process group is killed and TimeoutExpired is raised.
    """
    rootfs = Path(rootfs).resolve()
    for sub in ("proc", "dev"):
        (rootfs / sub).mkdir(exist_ok=True)
    r = shlex.quote(str(rootfs))
    script = (f"mount -t proc proc {r}/proc && mount --rbind /dev {r}/dev && "
              f"cd {r} && exec chroot {r} /bin/sh -c 'cd \"$1\" && shift && exec \"$@\"' sh {shlex.quote(cwd)} "
              + shlex.join(argv))
    cmd = ["unshare", "--mount", "--propagation", "private", "/bin/sh", "-c", script]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                            text=True, env=chroot_env(env), start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        raise subprocess.TimeoutExpired(argv, timeout, out, err) from None
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        # The namespace takes its mounts along; this only guards against a host without it.
        leaked = [m for m in mounts_under(rootfs) if m != str(rootfs)]
        if leaked:
            log.error("mounts left under %s: %s; unmounting", rootfs, leaked)
            unmount_under(rootfs)
    return subprocess.CompletedProcess(argv, proc.returncode, out, err)


def console_scripts(repo: Path = REPO) -> dict[str, str]:
    """setup.cfg's console_scripts: name -> 'module:function'."""
    cfg = configparser.ConfigParser()
    cfg.read(Path(repo) / "setup.cfg")
    raw = cfg.get("options.entry_points", "console_scripts", fallback="")
    pairs = (line.split("=", 1) for line in raw.splitlines() if "=" in line)
    return {name.strip(): target.strip() for name, target in pairs}


def resolve_argv(argv: list[str], python: str, repo_dir: str, data_dir: str) -> list[str]:
    """Map a portable command to one host or chroot.

    ``python`` -> the interpreter; a console script of setup.cfg (edge-run, edge-bench, ...)
    -> ``python -c`` calling its entry point (the chroot has the source tree, not an install);
    ``{repo}`` and ``{data}`` in arguments -> the repo root and the data folder on that side.
    """
    argv = [a.format(repo=repo_dir, data=data_dir) for a in argv]
    scripts = console_scripts()
    if argv[0] == "python":
        return [python, *argv[1:]]
    if argv[0] in scripts:
        module, func = scripts[argv[0]].split(":")
        code = f"import sys; sys.argv[0] = {argv[0]!r}; from {module} import {func}; sys.exit({func}())"
        return [python, "-c", code, *argv[1:]]
    return argv


@contextlib.contextmanager
def _locked(rootfs: Path):
    """Serialise builds and installs of one rootfs across processes (two pytest runs at once)."""
    lock = rootfs.with_name(rootfs.name + ".lock")
    lock.parent.mkdir(parents=True, exist_ok=True)
    with open(lock, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _run(cmd: list[str]) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    except FileNotFoundError as e:
        return subprocess.CompletedProcess(cmd, 127, "", str(e))


def _check(r: subprocess.CompletedProcess, what: str) -> None:
    if r.returncode != 0:
        raise RuntimeError(f"{what} failed (rc {r.returncode}): {shlex.join(map(str, r.args))}\n"
                           f"{(r.stdout or '')[-2000:]}\n{(r.stderr or '')[-3000:]}")


def setup(cache_dir: str | Path | None = None, repo: Path = REPO) -> tuple[Path, dict]:
    """binfmt + rootfs + wheels + edge/: everything a run needs; returns (rootfs, timings)."""
    ok, why = ensure_binfmt()
    if not ok:
        raise RuntimeError(f"arm64 emulation unavailable: {why}")
    rootfs = build_rootfs(cache_dir)
    return rootfs, {"rootfs": rootfs_info(rootfs), "install": install_edge(rootfs, repo)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rootfs", help="rootfs folder (default $AVE_ARM64_ROOTFS or ~/.cache/av-emotion-edge/arm64-bookworm)")
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("setup", help="enable binfmt, build or reuse the rootfs, install the wheels, copy edge/")
    run = sub.add_parser("run", help="run a command inside (after setup): run -- python tests/arm64_probe.py")
    run.add_argument("--timeout", type=float, default=None)
    run.add_argument("argv", nargs=argparse.REMAINDER)
    sub.add_parser("remove", help="delete the cached rootfs")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    if args.cmd == "setup":
        _, timings = setup(args.rootfs)
        print(json.dumps(timings, indent=1))
        return 0
    if args.cmd == "remove":
        d = rootfs_dir(args.rootfs)
        if d.exists():
            remove_rootfs(d)
        return 0
    cmd = args.argv[1:] if args.argv[:1] == ["--"] else args.argv
    if not cmd:
        ap.error("run needs a command")
    ok, why = ensure_binfmt()
    if not ok:
        ap.error(why)
    d = rootfs_dir(args.rootfs)
    if not (d / ROOTFS_MARKER).is_file():
        ap.error(f"no complete rootfs at {d}: run 'setup' first")
    install_edge(d)  # cheap when cached; refreshes edge/
    r = run_in_chroot(d, resolve_argv(cmd, f"{CHROOT_VENV}/bin/python", CHROOT_REPO, f"{CHROOT_REPO}/data"),
                      timeout=args.timeout, cwd=CHROOT_REPO)
    sys.stdout.write(r.stdout)
    sys.stderr.write(r.stderr)
    return r.returncode


if __name__ == "__main__":
    sys.exit(main())
