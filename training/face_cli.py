"""`edge-train face`: train the face CNN on FER2013 and write its reports.

    edge-train face --data ../shared/data/fer2013              # full run; rerun to resume
    edge-train face --quick                                    # reduced run for CI (~2 min)
    python -m training.face_cli face --epochs 88               # the same, without the edge-train wiring

writes reports/face_fer2013.json, reports/face_confusion.png and reports/face.md (a --quick run
writes them under cache_dir()/face/quick_reports unless --out is given). Checkpoints live in
cache_dir()/face/<recipe key>/ (last.keras, best.keras, state.json).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

REPORT_JSON = "face_fer2013.json"
REPORT_PNG = "face_confusion.png"
REPORT_MD = "face.md"


def add_face_parser(subparsers) -> argparse.ArgumentParser:
    """Register the `face` subcommand on an argparse subparsers object (handler: ``cmd_face``)."""
    from training.paths import reports_dir, shared_root
    fp = subparsers.add_parser(
        "face", help="train the face CNN (6 conv + 3 max-pool) on FER2013, select on its validation split",
        description="Train the paper's face branch on FER2013 faces (48x48 grey, upscaled to 60x60 grey) with "
                    "labels mapped to the 8 RAVDESS emotions (calm has no FER samples); the model is selected "
                    "on fer2013/validation. Checkpointed after every epoch: rerunning the same command resumes. "
                    f"Writes {REPORT_JSON}, {REPORT_PNG} and {REPORT_MD}.")
    fp.add_argument("--data", default=str(shared_root() / "data" / "fer2013"),
                    help="FER2013 folder with {train,validation}/<class>/*.jpg (default: %(default)s; env AVE_SHARED)")
    fp.add_argument("--epochs", type=int, help="total epochs (default: 88, or 5 with --quick); a larger value "
                    "on a finished run continues it, with the cosine lr schedule stretched to the new total")
    fp.add_argument("--out", help=f"reports folder (default: {reports_dir()}; with --quick: "
                                  "<cache>/face/quick_reports)")
    fp.add_argument("--quick", action="store_true",
                    help="reduced run for CI: half-width model, 8000 train faces, 1000 validation faces, 5 epochs")
    g = fp.add_mutually_exclusive_group()
    g.add_argument("--resume", dest="resume", action="store_true", default=True,
                   help="continue from the last checkpoint of the same recipe if there is one (default)")
    g.add_argument("--fresh", dest="resume", action="store_false",
                   help="delete this recipe's checkpoints and start again")
    fp.add_argument("--widths", type=paper_layout, help="the six conv widths of the paper's layout (conv, pool, conv, conv, pool, conv, "
                                     "conv, pool, conv), comma-separated, e.g. 20,40,40,80,80,160 (default: "
                                     "16,32,32,64,64,128); another width is another run directory")
    fp.add_argument("--seed", type=int, help="initialisation, shuffling and augmentation seed (default: 1, the shipped run); another "
                                             "seed is another run directory, so a longer schedule can start fresh "
                                             "instead of continuing a finished run")
    fp.add_argument("--quiet", action="store_true", help="no progress bars")
    fp.add_argument("--report-now", action="store_true",
                    help="do not train: write the reports from the run's best checkpoint so far (marked partial "
                         "when fewer epochs than planned are done); safe while the training runs")
    fp.set_defaults(func=cmd_face)
    return fp


def paper_layout(widths: str) -> tuple[tuple[str, int], ...]:
    """'16,32,32,64,64,128' -> the paper's 6 conv + 3 max-pool layout with these conv widths."""
    try:
        w = [int(x) for x in widths.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{widths!r}: expected six comma-separated integers") from None
    if len(w) != 6 or min(w) < 1:
        raise argparse.ArgumentTypeError(f"{widths!r}: expected six positive integers (the paper's 6 conv layers)")
    return (("conv", w[0]), ("pool", 2), ("conv", w[1]), ("conv", w[2]), ("pool", 2), ("conv", w[3]),
            ("conv", w[4]), ("pool", 2), ("conv", w[5]))


def cmd_face(args: argparse.Namespace) -> int:
    from edge.params import Params
    from training.face import QUICK, FaceRecipe, lr_at, predict_probs, stratified_subset, to_model_input, train_face
    from training.fer2013 import FER_TO_RAVDESS, class_counts, load_split
    from training.paths import cache_dir, reports_dir, shared_root
    p = Params()
    recipe = QUICK if args.quick else FaceRecipe()
    if args.epochs:
        recipe = recipe.replace(epochs=args.epochs)
    if args.widths:
        recipe = recipe.replace(layers=args.widths)
    if args.seed is not None:
        recipe = recipe.replace(seed=args.seed)
    out = Path(args.out) if args.out else (cache_dir() / "face" / "quick_reports" if args.quick else reports_dir())
    argv = getattr(args, "argv", None)
    command = "edge-train " + " ".join(argv if argv is not None else sys.argv[1:])
    t_start = time.time()

    train = load_split(args.data, "train", p=p, progress=not args.quiet)
    val = load_split(args.data, "validation", p=p, progress=not args.quiet)
    ti = stratified_subset(train.y, recipe.train_limit, recipe.seed)
    vi = stratified_subset(val.y, recipe.val_limit, recipe.seed + 1)
    run_dir = cache_dir() / "face" / f"{'quick' if args.quick else 'full'}_{recipe.key()}"
    planned = recipe.epochs
    if args.report_now:
        state_f = run_dir / "state.json"
        if not state_f.is_file():
            raise FileNotFoundError(f"--report-now: no checkpointed run at {run_dir}")
        recipe = recipe.replace(epochs=json.loads(state_f.read_text())["epochs_done"])   # no epoch left to train
    log.info("face: %d train / %d validation faces, run dir %s", len(ti), len(vi), run_dir)
    state = train_face(train.x[ti], train.y[ti], val.x[vi], val.y[vi], recipe, run_dir, p,
                       resume=args.resume or args.report_now, progress=not args.quiet)
    model = state.pop("model")

    xv, yv = to_model_input(val.x[vi], p), val.y[vi]                     # (n_val, 60, 60, 1)
    probs = predict_probs(model, xv)
    probs_tta = predict_probs(model, xv, tta_flip=True)
    result = evaluate(probs, probs_tta, yv, p)
    hist = state["history"]
    sched = recipe.replace(epochs=planned)
    off = [h["epoch"] for h in hist if not np.isclose(h["lr"], lr_at(h["epoch"] - 1, sched, p), rtol=1e-6, atol=0)]
    result.update({
        "lr_off_schedule_epochs": off,    # epochs trained under another total (a run shortened or lengthened)
        "params": int(model.count_params()),
        "epochs": int(state["epochs_done"]),
        "best_epoch": int(state["best_epoch"]) + 1,
        "train_minutes": state["train_seconds"] / 60,
        "seconds_per_epoch": float(np.median([h["seconds"] for h in hist])) if hist else None,
        "cpu_seconds_per_epoch": float(np.median([h.get("cpu_seconds", np.nan) for h in hist])) if hist else None,
        "n_train": int(len(ti)), "n_val": int(len(vi)),
        "train_class_counts": class_counts(train.y[ti], p),
        "skipped_images": {"train": train.skipped, "validation": val.skipped},
        "label_map": FER_TO_RAVDESS,
        "input": f"({p.face_size}, {p.face_size}, 1) grey / 255; FER 48x48 upscaled with cv2 INTER_LINEAR",
        "selection": "best epoch by fer2013/validation accuracy (plain, no TTA); the reported figures are on the "
                     "same split (FER2013 PrivateTest is not available here), so they are slightly optimistic",
        "quick": bool(args.quick),
        "planned_epochs": planned,
        "complete": int(state["epochs_done"]) >= planned,
        "recipe": dataclasses.asdict(recipe),
        "run_dir": str(run_dir),
        "command": command,
        "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform(),
                    "python": platform.python_version()},
        "history": hist,
        "wall_minutes_this_call": (time.time() - t_start) / 60,
    })
    cremad = shared_root() / "data" / "cremad"
    if cremad.is_dir():
        from training.cremad import face_votes
        result["cremad_votes"] = face_votes(model, cremad, p)
    else:
        log.warning("CREMA-D clips not found at %s: no per-clip votes in the report", cremad)
    write_reports(result, out, p)
    print(json.dumps({k: result[k] for k in ("val_accuracy", "val_accuracy_flip_tta", "params", "epochs",
                                             "train_minutes")}))
    return 0


def evaluate(probs: np.ndarray, probs_tta: np.ndarray, y: np.ndarray, p) -> dict:
    from training.speech_cv import confusion
    pred = probs.argmax(1)
    cm = confusion(y, pred, p.num_classes)                               # (8, 8) rows true, cols predicted
    present = [i for i in range(p.num_classes) if cm[i].sum() > 0]
    recall = {p.emotions[i]: float(cm[i, i] / cm[i].sum()) for i in present}
    return {"val_accuracy": float(np.mean(pred == y)),
            "val_accuracy_flip_tta": float(np.mean(probs_tta.argmax(1) == y)),
            "macro_recall": float(np.mean(list(recall.values()))),
            "per_class_recall": recall,
            "predicted_calm": int(cm[:, p.emotions.index("calm")].sum()),
            "emotions": list(p.emotions),
            "confusion": cm.tolist()}


def write_reports(result: dict, out: Path, p) -> None:
    from training.speech_cv import plot_confusion
    out.mkdir(parents=True, exist_ok=True)
    (out / REPORT_JSON).write_text(json.dumps(result, indent=2))
    plot_confusion(np.array(result["confusion"]), result["emotions"], out / REPORT_PNG,
                   f"face CNN, FER2013 validation: {100 * result['val_accuracy']:.1f}% "
                   f"(calm: no FER samples)")
    (out / REPORT_MD).write_text(face_markdown(result))
    log.info("face reports written to %s", out)


def _ranges(epochs: list[int]) -> str:
    """[1, 2, 3, 7] -> '1-3, 7'."""
    out, start = [], None
    for i, e in enumerate(epochs):
        start = e if start is None else start
        if i + 1 == len(epochs) or epochs[i + 1] != e + 1:
            out.append(f"{start}-{e}" if e > start else f"{e}")
            start = None
    return ", ".join(out)


def face_markdown(r: dict) -> str:
    lines = ["# Face branch: FER2013 (trained here in place of RAVDESS video)", "",
             f"Command: `{r['command']}`", "",
             f"**Validation accuracy {100 * r['val_accuracy']:.2f}%** (selection split, see below); with "
             f"horizontal-flip test-time averaging {100 * r['val_accuracy_flip_tta']:.2f}%; macro recall "
             f"{100 * r['macro_recall']:.2f}%. {r['params']:,} parameters, {r['epochs']} epochs "
             f"(best {r['best_epoch']}), {r['train_minutes']:.1f} min of training on "
             f"{r['machine']['cpu_count']} CPU cores (median {r['seconds_per_epoch']:.0f} s an epoch, shared machine)."
             + (" **Quick (reduced) run, not the headline model.**" if r["quick"] else "")
             + ("" if r.get("complete", True) else f" **Partial: {r['epochs']} of {r['planned_epochs']} planned "
                f"epochs done; the training continues (rerun the command to resume).**"), "",
             *([f"Epochs {_ranges(r['lr_off_schedule_epochs'])} ran under the cosine schedule of another total "
                f"(the run was resumed with a different `--epochs`): their learning rates, in `history`, differ "
                f"from a fresh {r['planned_epochs']}-epoch run's.", ""] if r.get("lr_off_schedule_epochs") else []),
             "Faces are **grey 60x60** (FER2013's 48x48 upscaled with cv2 INTER_LINEAR), pixel / 255.",
             f"{r['n_train']} train and {r['n_val']} validation faces. {r['selection']}.", "",
             "| emotion | recall |", "|---|---|"]
    for e in r["emotions"]:
        rec = r["per_class_recall"].get(e)
        lines.append(f"| {e} | {'no FER samples' if rec is None else f'{100 * rec:.1f}%'} |")
    lines += ["", f"Faces predicted as calm: {r['predicted_calm']}.", "",
              "Label mapping (FER2013 -> RAVDESS): " + ", ".join(f"{k} -> {v}" for k, v in r["label_map"].items())
              + "; RAVDESS *calm* has no FER2013 samples, so the calm output is never a training target.", "",
              "![confusion (rows true, columns predicted)](face_confusion.png)", "",
              "| epoch | lr | train loss | train acc | val acc | s |", "|---|---|---|---|---|---|"]
    hist = r["history"]
    step = max(1, len(hist) // 10)
    for h in hist:
        if (h["epoch"] - 1) % step == 0 or h["epoch"] == len(hist) or h["epoch"] == r["best_epoch"]:
            lines.append(f"| {h['epoch']} | {h['lr']:.1e} | {h['loss']:.3f} | {100 * h['accuracy']:.1f}% | "
                         f"{100 * h['val_accuracy']:.1f}% | {h['seconds']:.0f} |")
    if r.get("cremad_votes"):
        v = r["cremad_votes"]
        lines += ["", f"## Real video: the six CREMA-D clips ({sum(x['correct'] for x in v)} of {len(v)} correct)", "",
                  "Edge MTCNN cascade -> 60x60 grey faces -> key faces (r = 4) -> this CNN -> majority vote.", "",
                  "| clip | true | predicted | frames | faces | key faces | votes |", "|---|---|---|---|---|---|---|"]
        lines += [f"| {x['clip']} | {x['true']} | {x['predicted']} | {x['frames']} | {x['faces']} | {x['key_faces']} | "
                  + ", ".join(f"{k} {n}" for k, n in x["votes"].items()) + " |" for x in v]
    lines += ["", "Recipe: `" + json.dumps(r["recipe"]) + "`", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Standalone entry point until `face` is wired into training/cli.py."""
    logging.basicConfig(level=os.environ.get("LOGLEVEL", "INFO"), format="%(asctime)s %(name)s %(message)s")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    argv = list(sys.argv[1:] if argv is None else argv)
    ap = argparse.ArgumentParser(prog="edge-train")
    add_face_parser(ap.add_subparsers(dest="command", required=True))
    args = ap.parse_args(argv)
    args.argv = argv
    try:
        return args.func(args)
    except FileNotFoundError as e:
        print(f"edge-train: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
