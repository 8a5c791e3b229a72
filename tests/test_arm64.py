"""The device package on a Raspberry Pi's CPU: arm64 Debian bookworm under qemu-user, in a chroot.

Each command runs twice, on the host (this interpreter) and in the arm64 chroot (only the edge
wheels, no TensorFlow), prints one JSON object, and the two "results" must agree: float arrays
to rtol = atol = 1e-5 (the MTCNN cascade's boxes and scores: CASCADE_TOLERANCES), integer arrays,
strings and shapes exactly.

    sudo /work/venv/bin/python -m pytest -m slow tests/test_arm64.py -s     # first run ~5 min
    AVE_ARM64_REPORT=reports/arm64_parity.json ...                          # also write a summary

Needs root and `apt-get install debootstrap qemu-user-static binfmt-support` (see
tests/arm64_chroot.py); skips with the reason otherwise, or when AVE_SKIP_ARM64=1.
"""
from __future__ import annotations

import json
import math
import os
import platform
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import arm64_chroot as ac
import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
RTOL = ATOL = 1e-5


@dataclass(frozen=True)
class Command:
    """A command run on both sides. argv[0] may be "python" or a setup.cfg console script
    (edge-run, edge-bench, ...); "{repo}" and "{data}" in arguments become the repo root and
    the data folder of each side. ``files`` (host paths, relative to the repo root) are copied
    into {data} on both sides. The command prints one JSON object (its last stdout line) with a
    "results" mapping; ``tolerances`` loosens (rtol, atol) for named results."""

    name: str
    argv: tuple[str, ...]
    files: tuple[str, ...] = ()
    tolerances: tuple[tuple[str, float, float], ...] = ()    # (result name, rtol, atol)
    timeout_s: float = 900.0


# The nets alone meet rtol = atol = 1e-5 (XNNPACK's x86 and NEON kernels differ in summation
# order: ~1e-6). The cascade chains three nets through box regression and bilinear crops at
# sub-pixel positions, so those differences grow: measured 7.2e-4 px on boxes, 4e-4 px on
# landmarks, 8.6e-5 on scores; the number of faces must still be equal (shapes are exact).
CASCADE_TOLERANCES = (("mtcnn_boxes", 0.0, 1e-2), ("mtcnn_landmarks", 0.0, 1e-2), ("mtcnn_scores", 0.0, 1e-3))
PROBE = Command("probe", ("python", "{repo}/tests/arm64_probe.py"), tolerances=CASCADE_TOLERANCES)

# ---- Extension point: more commands compared host vs arm64 -----------------------------------
# Add a Command; it becomes one more test_arm64_matches_host[<name>]. Their JSON needs "results"
# (what must agree); anything else (timings) is kept in the report only. For example:
#   Command("bench", ("edge-bench", "--synthetic", "--json")),
#   Command("clip", ("edge-run", "--video", "{data}/CLIP.mp4", "--json"),
#           files=("../shared/data/.../CLIP.mp4",)),       # paths relative to the repo root
# Packages other than edge/ that such a command imports: add them to PACKAGES (copied to /opt/ave).
EXTRA_COMMANDS: list[Command] = [
    # the shipped int8 model through edge-run --video on a real CREMA-D clip, plus edge-bench
    Command("edge_run_clip", ("python", "{repo}/tests/arm64_edge_run.py", "{data}/1001_DFA_ANG_XX.flv"),
            files=("../shared/data/cremad/1001_DFA_ANG_XX.flv",),
            # int8 is NOT bit-identical across the two CPUs in LiteRT 2.3 (measured: XNNPACK and the builtin
            # kernels both differ by up to ~12 quantization steps of 1/256 on some outputs; the int8
            # LOGISTIC/TANH/SOFTMAX paths differ between x86 and NEON), so these are bounded, not exact
            tolerances=tuple((f"int8_fixed_{i}_{k}", 0.0, 0.1) for i in range(3) for k in ("fused", "speech", "face"))
            + tuple((f"clip_probs_{k}", 0.0, 0.15) for k in ("fused", "speech", "face"))),
]
PACKAGES: tuple[str, ...] = ("edge", "export")
# ------------------------------------------------------------------------------------------------


def _skip_reason() -> str | None:
    if os.environ.get("AVE_SKIP_ARM64") == "1":
        return "AVE_SKIP_ARM64=1"
    if platform.system() != "Linux":
        return "arm64 chroot needs Linux"
    if os.geteuid() != 0:
        return "arm64 chroot needs root (debootstrap, chroot, binfmt_misc); run pytest with sudo"
    missing = ac.missing_tools()
    if missing:
        return f"arm64 chroot needs: apt-get install {' '.join(missing)}"
    try:
        import ai_edge_litert  # noqa: F401
    except ImportError:
        return "the host side needs the edge extras: pip install -e '.[edge]'"
    ok, why = ac.ensure_binfmt()
    if not ok:
        return f"arm64 emulation unavailable: {why}"
    return None


@pytest.fixture(scope="module")
def arm64() -> dict:
    """The rootfs, set up once per module: {"rootfs", "timings", "runs": {name: (host, arm)}}."""
    reason = _skip_reason()
    if reason:
        pytest.skip(reason)
    rootfs = ac.build_rootfs()
    install = ac.install_edge(rootfs, REPO, packages=PACKAGES)
    state = {"rootfs": rootfs, "timings": {"rootfs": ac.rootfs_info(rootfs), "install": install}, "runs": {}}
    yield state
    report = os.environ.get("AVE_ARM64_REPORT")
    if report:
        summary = {"timings": state["timings"],
                   "commands": {name: run["summary"] for name, run in state["runs"].items()}}
        Path(report).write_text(json.dumps(summary, indent=1) + "\n")


def _last_json(stdout: str, where: str, r: subprocess.CompletedProcess) -> dict:
    lines = [ln for ln in stdout.splitlines() if ln.strip()]
    if r.returncode != 0 or not lines:
        pytest.fail(f"{where}: rc {r.returncode}\nstdout: {stdout[-2000:]}\nstderr: {r.stderr[-4000:]}")
    return json.loads(lines[-1])


def _run_both(cmd: Command, state: dict, tmp_path: Path) -> dict:
    """Run cmd on the host and in the chroot (once per module); returns the run record."""
    if cmd.name in state["runs"]:
        return state["runs"][cmd.name]
    rootfs = state["rootfs"]
    host_data = tmp_path / "data"
    host_data.mkdir(exist_ok=True)
    chroot_data = f"{ac.CHROOT_REPO}/data"
    for f in cmd.files:
        if not (REPO / f).is_file():
            pytest.skip(f"{REPO / f} is absent (shared data)")
        shutil.copy2(REPO / f, host_data)
        ac.copy_in(rootfs, REPO / f, chroot_data)

    argv = ac.resolve_argv(list(cmd.argv), sys.executable, str(REPO), str(host_data))
    t0 = time.monotonic()
    r = subprocess.run(argv, capture_output=True, text=True, cwd=REPO, timeout=cmd.timeout_s,
                       env={**os.environ, "PYTHONPATH": str(REPO)})
    host_s = time.monotonic() - t0
    host = _last_json(r.stdout, f"host {cmd.name}", r)

    argv = ac.resolve_argv(list(cmd.argv), f"{ac.CHROOT_VENV}/bin/python", ac.CHROOT_REPO, chroot_data)
    t0 = time.monotonic()
    r = ac.run_in_chroot(rootfs, argv, timeout=cmd.timeout_s, cwd=ac.CHROOT_REPO)
    arm_s = time.monotonic() - t0
    arm = _last_json(r.stdout, f"arm64 chroot {cmd.name}", r)

    run = {"host": host, "arm": arm, "summary": {"host_seconds": round(host_s, 2), "arm64_seconds": round(arm_s, 2),
                                                  "host_timings_ms": host.get("timings_ms"),
                                                  "arm64_timings_ms": arm.get("timings_ms")}}
    state["runs"][cmd.name] = run
    return run


def compare(host, arm, rtol: float = RTOL, atol: float = ATOL, path: str = "",
            tolerances: tuple[tuple[str, float, float], ...] = ()) -> tuple[float, list[str]]:
    """(max |host - arm| over float arrays, mismatches) of two "results" trees.

    An array is {"dtype", "shape", "values"}: floats must satisfy |a - h| <= atol + rtol |h|
    (or a result's own (rtol, atol) from ``tolerances``), integers (uint8 frames, an int8
    model's raw outputs) must be equal; anything else must be equal.
    """
    if isinstance(host, dict) and {"dtype", "shape", "values"} <= host.keys():
        if not isinstance(arm, dict) or (arm.get("dtype"), arm.get("shape")) != (host["dtype"], host["shape"]):
            return 0.0, [f"{path}: {host['dtype']}{host['shape']} vs {arm.get('dtype')}{arm.get('shape')}"]
        if not host["dtype"].startswith(("float", "complex")):
            bad = sum(h != a for h, a in zip(host["values"], arm["values"], strict=True))
            return 0.0, [f"{path}: {bad} of {len(host['values'])} values differ (exact dtype)"] if bad else []
        worst, bad = 0.0, 0
        for h, a in zip(host["values"], arm["values"], strict=True):
            d = abs(h - a)
            if math.isnan(h) != math.isnan(a) or d > atol + rtol * abs(h):
                bad += 1
            if not math.isnan(d):
                worst = max(worst, d)
        return worst, [f"{path}: {bad} of {len(host['values'])} values beyond rtol {rtol} atol {atol} "
                       f"(max diff {worst:.3g})"] if bad else []
    if isinstance(host, dict):
        if not isinstance(arm, dict) or host.keys() != arm.keys():
            return 0.0, [f"{path}: keys {sorted(host)} vs {sorted(arm) if isinstance(arm, dict) else arm!r}"]
        worst, bad = 0.0, []
        own = {name: (r, a) for name, r, a in tolerances}
        for k in host:
            r, a = own.get(k, (rtol, atol))
            w, b = compare(host[k], arm[k], r, a, f"{path}/{k}", tolerances)
            worst, bad = max(worst, w), bad + b
        return worst, bad
    return 0.0, [] if host == arm else [f"{path}: {host!r} vs {arm!r}"]


def max_diffs(host: dict, arm: dict) -> dict[str, float]:
    """Per float array of "results": max |host - arm|."""
    out = {}
    for k, h in host.items():
        if isinstance(h, dict) and str(h.get("dtype", "")).startswith("float"):
            out[k] = max((abs(a - b) for a, b in zip(h["values"], arm[k]["values"], strict=True)), default=0.0)
    return out


def test_chroot_is_arm64_without_tensorflow(arm64, tmp_path):
    arm = _run_both(PROBE, arm64, tmp_path)["arm"]
    assert arm["machine"] == "aarch64"
    assert not arm["tensorflow_importable"]
    r = ac.run_in_chroot(arm64["rootfs"], [f"{ac.CHROOT_VENV}/bin/python", "-c", "import tensorflow"], timeout=300)
    assert r.returncode != 0 and "ModuleNotFoundError" in r.stderr, r.stderr
    assert all(arm["versions"][p] for p in ac.EDGE_REQUIREMENTS), arm["versions"]


@pytest.mark.parametrize("cmd", [PROBE, *EXTRA_COMMANDS], ids=lambda c: c.name)
def test_arm64_matches_host(cmd, arm64, tmp_path):
    run = _run_both(cmd, arm64, tmp_path)
    host, arm = run["host"], run["arm"]
    if "machine" in arm:
        assert arm["machine"] == "aarch64", "the chroot did not run arm64 code"
    if "versions" in host and "versions" in arm:
        assert host["versions"] == arm["versions"], "host and chroot must run the same library versions"
    worst, bad = compare(host["results"], arm["results"], tolerances=cmd.tolerances)
    diffs = max_diffs(host["results"], arm["results"])
    run["summary"].update(max_abs_diff=worst, max_abs_diff_per_array=diffs, mismatches=bad)
    setup = {"rootfs_build_s": arm64["timings"]["rootfs"]["build_seconds"],
             **{k: v for k, v in arm64["timings"]["install"].items() if k.endswith(("seconds", "cached"))}}
    print(f"\n[arm64 {cmd.name}] max |host - arm64| = {worst:.3g}; host {run['summary']['host_seconds']} s, "
          f"arm64 chroot {run['summary']['arm64_seconds']} s; setup {setup}")
    print(f"  timings ms host  {host.get('timings_ms')}\n  timings ms arm64 {arm.get('timings_ms')}")
    for k, d in sorted(diffs.items(), key=lambda kv: -kv[1]):
        print(f"  {k}: {d:.3g}")
    assert not bad, "\n".join(bad[:20])
