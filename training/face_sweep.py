"""How far the face CNN family gets on FER2013 with more epochs and more width: a recipe sweep for a
machine with a GPU (or patience), several runs in parallel, each the model, augmentation and cosine
schedule of ``training.face`` with only widths, epochs or dropout changed.

    python -m training.face_sweep pack --fer ../shared/data/fer2013 --out sweep/fer.npz   # on the data host
    python -m training.face_sweep run --packed sweep/fer.npz --budget 390 --out sweep/run1  # on the GPU host
    python -m training.face_sweep report sweep/run1 sweep/run2                             # -> reports/face_sweep.*

``pack`` writes the faces in one file small enough to travel to a GPU host: the train faces as JPEG
(``--train-quality``, default 90: mean |diff| about 2.5 grey levels), the validation faces exact. A run
whose projected wall time exceeds ``--budget`` is rescaled after its third epoch to the epochs that fit,
so its cosine schedule still completes; the report gives both the planned and the run epochs.

Exploration, not the shipped model: the sweep trains on whatever accelerator the Keras backend has,
so its times say nothing about the 2-core training budget (``edge-train face`` measures that).
"""
from __future__ import annotations

import argparse
import json
import logging
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

WIDTHS = {16: "16,32,32,64,64,128", 20: "20,40,40,80,80,160", 32: "32,64,64,128,128,256",
          40: "40,80,80,160,160,320"}
# name -> (width key, planned epochs, FaceRecipe overrides)
RUNS: dict[str, tuple[int, int, dict]] = {
    "w20_e75": (20, 75, {}),
    "w20_e200": (20, 200, {}),
    "w16_e88": (16, 88, {}),
    "w32_e40": (32, 40, {}),
    "w40_e40": (40, 40, {}),
    "w40_e200": (40, 200, {}),
    "w20_e75_d2": (20, 75, {"dropout": 0.2}),
    # call 3: regularising levers, one at a time on the shipped widths, then together (also at ~1M parameters)
    "w16_e88_ls": (16, 88, {"label_smoothing": 0.1}),
    "w16_e88_mix": (16, 88, {"mixup_alpha": 0.2}),
    "w16_e88_erase": (16, 88, {"erase_prob": 0.5}),
    "w16_e88_sgd": (16, 88, {"optimizer": "sgd", "lr": 0.01}),
    "w16_e88_all": (16, 88, {"label_smoothing": 0.1, "mixup_alpha": 0.2, "erase_prob": 0.5}),
    "w16_e88_all_sgd": (16, 88, {"label_smoothing": 0.1, "mixup_alpha": 0.2, "erase_prob": 0.5,
                                 "optimizer": "sgd", "lr": 0.01}),
    "w40_e200_all": (40, 200, {"label_smoothing": 0.1, "mixup_alpha": 0.2, "erase_prob": 0.5}),
    # call 4: label smoothing (the one lever above a plain run in call 3) against plain runs on two more seeds
    "w16_e88_s2": (16, 88, {"seed": 2}),
    "w16_e88_ls_s2": (16, 88, {"label_smoothing": 0.1, "seed": 2}),
    "w16_e88_s3": (16, 88, {"seed": 3}),
    "w16_e88_ls_s3": (16, 88, {"label_smoothing": 0.1, "seed": 3}),
    "w40_e200_ls": (40, 200, {"label_smoothing": 0.1}),
}
REPORT_JSON = "face_sweep.json"
REPORT_MD = "face_sweep.md"


def epochs_that_fit(planned: int, done: int, seconds_per_epoch: float, elapsed: float, budget: float) -> int:
    """Total epochs for a run that has ``done`` epochs after ``elapsed`` s: ``planned`` if the rest fits in
    ``budget`` s, else as many as fit (never fewer than ``done``)."""
    if seconds_per_epoch <= 0:
        raise ValueError(f"seconds_per_epoch must be > 0, got {seconds_per_epoch}")
    fit = done + int(max(budget - elapsed, 0.0) / seconds_per_epoch)
    return max(done, min(planned, fit))


# ------------------------------------------------------------------ pack

def pack(fer: Path, out: Path, quality: int = 90, cache: Path | None = None) -> dict:
    """FER2013 folder -> one .npz: train faces as JPEG at ``quality``, validation faces exact."""
    import cv2

    from training.fer2013 import load_split
    t, v = load_split(fer, "train", cache=cache), load_split(fer, "validation", cache=cache)
    enc = [cv2.imencode(".jpg", im, [cv2.IMWRITE_JPEG_QUALITY, quality])[1].tobytes() for im in t.x]
    dec = np.stack([cv2.imdecode(np.frombuffer(e, np.uint8), cv2.IMREAD_GRAYSCALE) for e in enc])
    off = np.cumsum([0] + [len(e) for e in enc])
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez(out, tjpg=np.frombuffer(b"".join(enc), np.uint8), toff=off, ty=t.y, vx=v.x, vy=v.y,
             quality=quality)
    info = {"train": len(t), "validation": len(v), "bytes": out.stat().st_size,
            "train_mean_abs_diff": float(np.abs(dec.astype(np.int16) - t.x).mean())}
    log.info("packed %s: %s", out, info)
    return info


def load_packed(path: Path):
    import cv2
    d = np.load(path)
    raw, off = d["tjpg"], d["toff"]
    tx = np.stack([cv2.imdecode(raw[off[i]:off[i + 1]], cv2.IMREAD_GRAYSCALE) for i in range(len(off) - 1)])
    return tx, d["ty"], d["vx"], d["vy"], int(d["quality"]) if "quality" in d else None


# ------------------------------------------------------------------ run

def run_one(name: str, packed: Path, budget: float, out: Path) -> dict:
    import cv2
    cv2.setNumThreads(1)
    import keras

    from edge.params import Params
    from training.face import FaceRecipe, build_face_model, compile_face_model, fit_epoch, to_model_input
    from training.face_cli import paper_layout
    w, planned, over = RUNS[name]
    p = Params()
    recipe = FaceRecipe(layers=paper_layout(WIDTHS[w]), epochs=planned, **over)
    tx, ty, vx, vy, quality = load_packed(packed)
    keras.utils.set_random_seed(recipe.seed)
    model = compile_face_model(build_face_model(recipe, p), p, recipe)
    yo = np.eye(p.num_classes, dtype=np.float32)[ty]
    xv = to_model_input(vx, p)
    t_start, hist, best, best_tta = time.time(), [], (-1.0, -1), -1.0
    e = 0
    while e < recipe.epochs:
        t0 = time.time()
        h, lr, _ = fit_epoch(model, tx, yo, recipe, e, p)
        pv = model.predict(xv, batch_size=512, verbose=0)
        acc = float(np.mean(pv.argmax(1) == vy))
        if acc > best[0]:
            best = (acc, e + 1)
            pt = 0.5 * (pv + model.predict(xv[:, :, ::-1], batch_size=512, verbose=0))
            best_tta = float(np.mean(pt.argmax(1) == vy))
        hist.append({"epoch": e + 1, "lr": lr, "loss": float(h["loss"][-1]),
                     "acc": float(h["accuracy"][-1]), "val": acc, "s": time.time() - t0})
        e += 1
        if e == 3:      # epoch 1 includes compilation: project from epochs 2-3
            n = epochs_that_fit(planned, e, float(np.median([r["s"] for r in hist[1:]])),
                                time.time() - t_start, budget)
            if n < recipe.epochs:
                recipe = recipe.replace(epochs=n)
        res = {"name": name, "widths": WIDTHS[w], "overrides": over, "params": model.count_params(),
               "epochs_planned": planned, "epochs_run": recipe.epochs, "epochs_done": e,
               "best_val": best[0], "best_epoch": best[1], "best_val_tta": best_tta, "last_val": acc,
               "wall_s": time.time() - t_start, "budget_s": budget, "backend": keras.backend.backend(),
               "train_jpeg_quality": quality, "history": hist}
        tmp = out / f"{name}.json.tmp"
        tmp.write_text(json.dumps(res))
        tmp.replace(out / f"{name}.json")
        log.info("%s epoch %d/%d loss %.3f acc %.3f val %.4f %.1f s", name, e, recipe.epochs, hist[-1]["loss"],
                 hist[-1]["acc"], acc, hist[-1]["s"])
    return res


def run_all(names: list[str], packed: Path, budget: float, out: Path) -> dict:
    """Each run in its own process (one accelerator, several small models); a summary json in ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    procs = {n: subprocess.Popen([sys.executable, "-m", "training.face_sweep", "one", n, "--packed", str(packed),
                                  "--budget", str(budget), "--out", str(out)],
                                 stdout=open(out / f"{n}.log", "w"), stderr=subprocess.STDOUT) for n in names}
    t0 = time.time()
    while any(pr.poll() is None for pr in procs.values()) and time.time() - t0 < budget + 150:
        time.sleep(10)
    summary = {}
    for n, pr in procs.items():
        if pr.poll() is None:
            pr.kill()
        f = out / f"{n}.json"
        summary[n] = json.loads(f.read_text()) if f.is_file() else {"error": (out / f"{n}.log").read_text()[-3000:]}
    (out / "fer_sweep.json").write_text(json.dumps(summary, indent=1))
    return summary


# ------------------------------------------------------------------ report

def collect(run_dirs: list[Path]) -> list[dict]:
    """Every run of every ``fer_sweep.json`` given, in order, tagged with the call it came from. An earlier
    report (``face_sweep.json``, its runs already tagged) may come first: later calls number on from it."""
    rows = []
    for d in run_dirs:
        f = d / "fer_sweep.json" if d.is_dir() else d
        if not f.is_file():
            raise FileNotFoundError(f"{f}: not a sweep output (expected fer_sweep.json from `face_sweep run`)")
        doc = json.loads(f.read_text())
        if isinstance(doc.get("runs"), list):                     # a report of earlier calls
            rows += [dict(r) for r in doc["runs"]]
            continue
        call = max((r["call"] for r in rows), default=0) + 1
        for name, r in doc.items():
            if "error" in r:
                raise ValueError(f"{f}: run {name} failed: {r['error'][-300:]}")
            rows.append({"call": call, **_normalise(r)})
    return rows


def _lever(r: dict) -> dict:
    """A run's overrides other than its seed (empty: a plain run)."""
    return {k: v for k, v in (r.get("overrides") or {}).items() if k != "seed"}


def lever_effects(rows: list[dict]) -> list[dict]:
    """Each run with overrides beside the plain run of the same call, widths and seed (overrides = at most the
    seed): the change in best validation accuracy, and per lever set the mean change over such pairs."""
    def seed(r):
        return (r.get("overrides") or {}).get("seed")

    def plain(r):
        return not _lever(r)

    out: dict[str, dict] = {}
    for r in rows:
        if plain(r):
            continue
        base = next((b for b in rows if plain(b) and b["call"] == r["call"] and b["widths"] == r["widths"]
                     and seed(b) == seed(r)), None)
        if base is None:
            continue
        lever = json.dumps(_lever(r), sort_keys=True)
        e = out.setdefault(lever, {"lever": lever, "widths": r["widths"], "pairs": [], "deltas": []})
        e["pairs"].append(f"{r['name']} vs {base['name']}")
        e["deltas"].append(r["best_val"] - base["best_val"])
    for e in out.values():
        e["mean_delta"] = float(np.mean(e["deltas"]))
    return list(out.values())


def _normalise(r: dict) -> dict:
    """Runs written by this module's first version carry ``cfg`` ({"w": width key, "epochs": n, overrides})
    instead of ``widths``/``overrides`` and no JPEG quality (it was 90)."""
    if "cfg" not in r:
        return r
    r = dict(r)
    cfg = r.pop("cfg")
    r.setdefault("widths", WIDTHS[cfg["w"]])
    r.setdefault("overrides", {k: v for k, v in cfg.items() if k not in ("w", "epochs")})
    r.setdefault("train_jpeg_quality", 90)
    return r


def render_md(rows: list[dict]) -> str:
    lines = [
        "# Face CNN sweep on FER2013 (exploration, GPU)",
        "",
        "Generated by `python -m training.face_sweep report` from reports/face_sweep.json. Each run is the model,",
        "augmentation and cosine schedule of `edge-train face` with only the widths, epochs, dropout, seed or a",
        "training lever (FaceRecipe: label smoothing, mixup, random erasing, optimiser) changed,",
        "trained on a GPU (Keras backend in the table) with the train faces JPEG re-encoded for transfer",
        f"(quality {rows[0].get('train_jpeg_quality')}); validation faces exact. Runs with a planned epoch count",
        "above what fitted the time budget were rescaled to *run* epochs (the schedule still completes).",
        "These are not 2-core times: the shipped model's training time is in face.md.",
        "",
        "| call | widths | params | overrides | epochs planned | epochs run | best val | best epoch | with flip TTA | final train acc | backend | wall s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(f"| {r['call']} | {r['widths']} | {r['params']:,} | {r.get('overrides') or '-'} | "
                     f"{r['epochs_planned']} | {r['epochs_run']} | {100 * r['best_val']:.2f}% | {r['best_epoch']} | "
                     f"{100 * r['best_val_tta']:.2f}% | {100 * r['history'][-1]['acc']:.1f}% | "
                     f"{r['backend']} | {r['wall_s']:.0f} |")
    effects = lever_effects(rows)
    if effects:
        lines += ["", "## Levers against a plain run of the same call, widths and seed", "",
                  "| widths | lever | pairs | best val change (each) | mean |", "|---|---|---|---|---|"]
        for e in effects:
            each = ", ".join(f"{100 * d:+.2f}" for d in e["deltas"])
            lines.append(f"| {e['widths']} | `{e['lever']}` | {len(e['deltas'])} | {each} | "
                         f"{100 * e['mean_delta']:+.2f} pt |")
        seeds = [r["best_val"] for r in rows if r["widths"] == WIDTHS[16] and not _lever(r) and r["epochs_run"] >= 80]
        if len(seeds) > 1:
            lines += ["", f"Plain 16-wide runs of 80+ epochs (seeds and calls): {len(seeds)} runs, "
                          f"{100 * min(seeds):.2f}-{100 * max(seeds):.2f}% (spread {100 * (max(seeds) - min(seeds)):.2f} pt)."]
    best = max(rows, key=lambda r: r["best_val"])
    lines += ["", f"Best: {best['widths']} ({best['params']:,} parameters), {100 * best['best_val']:.2f}% "
                  f"({100 * best['best_val_tta']:.2f}% with flip TTA) after {best['epochs_run']} epochs."]
    return "\n".join(lines) + "\n"


def report(run_dirs: list[Path], out: Path) -> dict:
    rows = collect(run_dirs)
    if not rows:
        raise ValueError("no sweep runs in " + ", ".join(map(str, run_dirs)))
    out.mkdir(parents=True, exist_ok=True)
    doc = {"runs": rows, "best": max(rows, key=lambda r: r["best_val"])["name"]}
    (out / REPORT_JSON).write_text(json.dumps(doc, indent=1))
    (out / REPORT_MD).write_text(render_md(rows))
    return doc


def main(argv: list[str] | None = None) -> int:
    from training.paths import reports_dir, shared_root
    ap = argparse.ArgumentParser(prog="python -m training.face_sweep", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    pk = sub.add_parser("pack", help="FER2013 folder -> one transferable .npz")
    pk.add_argument("--fer", default=str(shared_root() / "data" / "fer2013"), help="FER2013 folder (default: %(default)s)")
    pk.add_argument("--out", required=True, help="the .npz to write")
    pk.add_argument("--train-quality", type=int, default=90, help="JPEG quality of the train faces (default: 90)")
    for name, hlp in (("run", "run sweep recipes in parallel"), ("one", "one recipe (used by run)")):
        r = sub.add_parser(name, help=hlp)
        if name == "one":
            r.add_argument("name", choices=sorted(RUNS))
        else:
            r.add_argument("--runs", default=",".join(RUNS), help="comma-separated run names (default: all: %(default)s)")
        r.add_argument("--packed", required=True, help="the .npz from `pack`")
        r.add_argument("--budget", type=float, default=390.0, help="wall seconds per run (default: %(default)s)")
        r.add_argument("--out", required=True, help="output folder")
    rp = sub.add_parser("report", help="sweep outputs -> face_sweep.json + face_sweep.md")
    rp.add_argument("runs", nargs="+", help="output folders (or fer_sweep.json files) of `run`, in call order; "
                    "an earlier report's face_sweep.json may come first (its calls are kept)")
    rp.add_argument("--out", default=str(reports_dir()), help="reports folder (default: %(default)s)")
    from training.cli import run_command
    return run_command("training.face_sweep", ap, argv, (FileNotFoundError, ValueError), lambda args: _cmd(ap, args))


def _cmd(ap: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    if args.cmd == "pack":
        pack(Path(args.fer), Path(args.out), args.train_quality)
    elif args.cmd == "one":
        run_one(args.name, Path(args.packed), args.budget, Path(args.out))
    elif args.cmd == "run":
        names = [n for n in args.runs.split(",") if n]
        bad = [n for n in names if n not in RUNS]
        if bad:
            ap.error(f"unknown runs {bad}; known: {', '.join(RUNS)}")
        s = run_all(names, Path(args.packed), args.budget, Path(args.out))
        for n, r in s.items():
            log.info("%s: %s", n, r.get("error", "")[-300:] or
                     f"best val {r['best_val']:.4f} at epoch {r['best_epoch']} of {r['epochs_run']}")
    else:
        report([Path(x) for x in args.runs], Path(args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
