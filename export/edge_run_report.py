"""Measure edge-run on real clips (1 thread) and write reports/edge_run.json.

    python -m export.edge_run_report --clips ../shared/data/cremad

Per clip, edge-run --video runs in a child process with a NOTIFY_SOCKET this script binds: wall time
over the clip's length, time to READY=1, the child's peak RSS, its clip-level vote. Whether the
process imported TensorFlow is checked in a separate in-process run. The service's exposure comes
from reports/systemd_security.json (tests/test_systemd_unit.py).
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def run_clip(clip: Path, threads: int = 1) -> dict:
    from edge.vision.video import probe
    d = Path(tempfile.mkdtemp(prefix="ave-", dir="/tmp"))
    sock_path = str(d / "notify.sock")
    out = d / "events.jsonl"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as srv:
        srv.bind(sock_path)
        env = {**os.environ, "NOTIFY_SOCKET": sock_path, "OMP_NUM_THREADS": "1"}
        t0 = time.monotonic()
        proc = subprocess.Popen([sys.executable, "-m", "edge.run", "--video", str(clip), "--threads", str(threads),
                                 "--jsonl", str(out)], cwd=REPO, env=env, stderr=subprocess.PIPE, text=True)
        ready, usage = None, None
        srv.settimeout(0.05)
        while True:
            try:
                for m in srv.recv(4096).decode().splitlines():
                    if m == "READY=1" and ready is None:
                        ready = time.monotonic() - t0
            except (TimeoutError, BlockingIOError):
                pass
            pid, status, ru = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                usage, proc.returncode = ru, os.waitstatus_to_exitcode(status)
                break
        wall = time.monotonic() - t0
        err = proc.stderr.read()
    rss_mb = usage.ru_maxrss / 1024                                     # kB on Linux
    events = [json.loads(s) for s in out.read_text().splitlines() if s.strip()] if out.is_file() else []
    for f in d.iterdir():
        f.unlink()
    d.rmdir()
    length = probe(clip).duration_s
    summary = events[-1] if events and events[-1].get("summary") else {}
    return {"clip": clip.name, "clip_seconds": length, "wall_seconds": wall, "wall_over_clip": wall / length,
            "ready_seconds": ready, "peak_rss_mb": rss_mb, "exit_code": proc.returncode, "patch_events": len(events) - bool(summary),
            "emotion": summary.get("emotion"), "counters": summary.get("counters"),
            "stderr_tail": err[-500:] if err.strip() else ""}


def tensorflow_imported(clip: Path) -> bool:
    code = ("import sys, tempfile; from edge.run import main; "
            "main(['--video', sys.argv[1], '--jsonl', tempfile.mktemp()]); "
            "print(any(m.split('.')[0] == 'tensorflow' for m in sys.modules))")
    r = subprocess.run([sys.executable, "-c", code, str(clip)], cwd=REPO, capture_output=True, text=True)
    return r.stdout.strip().splitlines()[-1] == "True"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m export.edge_run_report", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clips", default=str(REPO.parent / "shared" / "data" / "cremad"),
                    help="folder of CREMA-D .flv clips (default: %(default)s)")
    ap.add_argument("--out", default=str(REPO / "reports" / "edge_run.json"))
    args = ap.parse_args(argv)
    from training.cremad import CREMA_TO_EMOTION
    clips = sorted(Path(args.clips).glob("*.flv"))
    if not clips:
        print(f"no .flv clips in {args.clips}", file=sys.stderr)
        return 2
    rows = [run_clip(c) for c in clips]
    for r in rows:
        r["true"] = CREMA_TO_EMOTION.get(r["clip"].split("_")[2])
        r["correct"] = r["emotion"] == r["true"]
    sec = REPO / "reports" / "systemd_security.json"
    exposure = json.loads(sec.read_text()).get("exposure") if sec.is_file() else None
    worst = max(rows, key=lambda r: r["wall_over_clip"])
    res = {"command": "python -m export.edge_run_report " + " ".join(argv or sys.argv[1:]),
           "threads": 1, "clips": rows,
           "wall_over_clip": max(r["wall_over_clip"] for r in rows),
           "wall_over_clip_worst_clip": worst["clip"],
           "peak_rss_mb": max(r["peak_rss_mb"] for r in rows),
           "ready_seconds": max(r["ready_seconds"] or float("inf") for r in rows),
           "security_exposure": exposure,
           "tensorflow_imported": tensorflow_imported(clips[0]),
           "cremad_correct": f"{sum(r['correct'] for r in rows)}/{len(rows)}",
           "targets": {"wall_over_clip_le_0.25": None, "peak_rss_mb_le_150": None, "ready_seconds_le_1.5": None}}
    res["targets"] = {"wall_over_clip_le_0.25": res["wall_over_clip"] <= 0.25,
                      "peak_rss_mb_le_150": res["peak_rss_mb"] <= 150,
                      "ready_seconds_le_1.5": res["ready_seconds"] <= 1.5,
                      "security_exposure_le_3.0": exposure is not None and exposure <= 3.0}
    Path(args.out).write_text(json.dumps(res, indent=2) + "\n")
    print(json.dumps({k: res[k] for k in ("wall_over_clip", "peak_rss_mb", "ready_seconds", "security_exposure",
                                          "tensorflow_imported", "cremad_correct")}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
