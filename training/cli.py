"""edge-train: train and evaluate the models.

    edge-train speech --data ../shared/data/ravdess/speech16k --yamnet ../shared/weights/yamnet/yamnet.tflite
    edge-train speech --folds 0 --set epochs=5          # a quick single-fold run
    edge-train speech --ablation                        # the ablation table in reports/speech.md
    edge-train face --data ../shared/data/fer2013       # the face CNN (resumable)
    edge-train ship                                     # the shipped three-head model (after speech + face)
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
import time
from pathlib import Path

log = logging.getLogger("edge-train")


def _recipe_overrides(pairs: list[str]) -> dict:
    from training.speech import SpeechRecipe
    fields = {f.name: f for f in dataclasses.fields(SpeechRecipe)}
    out = {}
    for pair in pairs:
        if "=" not in pair:
            raise SystemExit(f"--set expects key=value, got {pair!r}")
        k, v = pair.split("=", 1)
        if k not in fields:
            raise SystemExit(f"--set: unknown recipe field {k!r} (known: {', '.join(fields)})")
        default = getattr(SpeechRecipe(), k)
        if isinstance(default, tuple):
            out[k] = tuple(int(x) if x.lstrip("-").isdigit() else float(x) for x in v.split(",") if x)
        elif isinstance(default, bool):
            if v.lower() not in ("1", "true", "yes", "0", "false", "no"):
                raise SystemExit(f"--set {k}={v!r}: expected true or false")
            out[k] = v.lower() in ("1", "true", "yes")
        else:
            out[k] = type(default)(v)
    return out




def cmd_speech(args: argparse.Namespace) -> int:
    from edge.params import Params
    from training.paths import cache_dir, reports_dir
    from training.speech import SpeechRecipe
    from training.speech_cv import prepare, run_cv, speaker_dependent, write_reports
    p = Params()
    recipe = SpeechRecipe().replace(**_recipe_overrides(args.set or []))
    out = Path(args.out) if args.out else reports_dir()
    folds = [int(f) for f in args.folds.split(",")] if args.folds else None
    cache = None if args.no_cache else cache_dir()
    progress = not args.quiet
    command = "edge-train " + " ".join(sys.argv[1:]) if sys.argv[0].endswith("edge-train") else \
        "edge-train " + " ".join(args.argv)
    if args.rows and not args.ablation:
        raise SystemExit("edge-train speech: --rows selects ablation rows; it needs --ablation")
    if args.ablation:
        return run_ablation(args, recipe, p, out, folds, cache, progress)
    t0 = time.time()
    prep = prepare(args.data, args.yamnet, recipe, p, cache, progress)
    prep_minutes = (time.time() - t0) / 60
    checkpoints = cache / CHECKPOINTS if cache else None     # a killed run resumes after its last finished fold
    result = run_cv(prep, recipe, p, folds, progress, checkpoints)
    result["prep_minutes"] = prep_minutes
    if args.speaker_dependent:
        result["speaker_dependent"] = speaker_dependent(prep, recipe, p, progress=progress, checkpoints=checkpoints)
    ablation = _load_ablation(out)
    write_reports(result, out, ablation, command)
    print(json.dumps({k: result[k] for k in ("mean_clip_accuracy", "std_clip_accuracy", "params", "cv_minutes")}))
    return 0


CHECKPOINTS = "speech_cv_folds"       # under the feature cache: finished folds of speech runs, by recipe and data


def _load_ablation(out: Path) -> list[dict]:
    f = out / "speech_ablation.json"
    return json.loads(f.read_text()) if f.is_file() else []


def run_ablation(args, recipe, p, out: Path, folds, cache, progress) -> int:
    """Run every ABLATION variant not yet in reports/speech_ablation.json (resumable)."""
    from training.speech_cv import ABLATION, prepare, recipe_as_run, run_cv
    done = {(a["name"], json.dumps(a["folds"])): a for a in _load_ablation(out)}   # a row per name and folds
    fkey = json.dumps(json.loads(json.dumps(folds or "all")))
    prep_cache: dict = {}
    names = [n for n, _, _ in ABLATION]
    only = args.rows.split(",") if getattr(args, "rows", None) else names
    unknown = [n for n in only if n not in names]
    if unknown:
        raise SystemExit(f"edge-train speech --rows: no ablation row {', '.join(unknown)} (rows: {', '.join(names)})")
    for name, change, over in ABLATION:
        if name not in only:
            continue
        r = recipe.replace(**over)
        row = done.get((name, fkey))
        if row and recipe_as_run(row["recipe"]) == recipe_as_run(dataclasses.asdict(r)):
            log.info("ablation %s: cached (%.3f)", name, row["mean_clip_accuracy"])
            continue
        t = time.time()
        key = (r.logmel_norm, r.train_hop_frames, r.test_hop_frames, r.copies(), r.test_speeds,   # prepare()'s inputs
               r.patch_frames)
        if key not in prep_cache:
            prep_cache.clear()
            prep_cache[key] = prepare(args.data, args.yamnet, r, p, cache, progress)
        res = run_cv(prep_cache[key], r, p, folds, progress, cache / CHECKPOINTS if cache else None)
        row = done[(name, fkey)] = {"name": name, "change": change, "folds": folds or "all",
                                    "recipe": dataclasses.asdict(r), "mean_clip_accuracy": res["mean_clip_accuracy"],
                                    "fold_clip_accuracy": [f["clip_accuracy"] for f in res["folds"]],
                                    "mean_patch_accuracy": res["mean_patch_accuracy"],
                                    "minutes": (time.time() - t) / 60,
                                    "cv_minutes": res["cv_minutes"],   # the folds' own time (resumed ones too)
                                    "machine": res["machine"]}
        # the paired figures: the same models voted another way (recorded clips alone, without snapshots, ...)
        row.update({k: v for k, v in res.items() if k.startswith("mean_clip_accuracy_")})
        if r.test_speeds:
            row["fold_clip_accuracy_without_test_speeds"] = [f["clip_accuracy_without_test_speeds"]
                                                             for f in res["folds"]]
        log.info("ablation %s: %.3f", name, res["mean_clip_accuracy"])
        out.mkdir(parents=True, exist_ok=True)
        order = [n for n, _, _ in ABLATION]
        rows = sorted(done.values(), key=lambda a: (len(json.dumps(a["folds"])),
                                                    order.index(a["name"]) if a["name"] in order else 99))
        (out / "speech_ablation.json").write_text(json.dumps(rows, indent=2))
    cv = out / "speech_cv.json"
    if cv.is_file():                     # keep the ablation table of speech.md in step with the json
        from training.speech_cv import load_skew, speech_markdown
        r = json.loads(cv.read_text())
        (out / "speech.md").write_text(speech_markdown(r, _load_ablation(out), r.get("command", ""), load_skew(out)))
    return 0


def cmd_fusion_au(args: argparse.Namespace) -> int:
    from edge.params import Params
    from training.fusion_au import load_au, run_cv
    from training.paths import cache_dir, reports_dir
    from training.speech import SpeechRecipe
    from training.speech_cv import prepare
    p = Params()
    recipe = SpeechRecipe().replace(**_recipe_overrides(args.set or []))
    out = Path(args.out) if args.out else reports_dir()
    folds = [int(f) for f in args.folds.split(",")] if args.folds else None
    au = load_au(args.au)
    prep = prepare(args.data, args.yamnet, recipe, p, None if args.no_cache else cache_dir(), not args.quiet)
    res = run_cv(prep, au, recipe, p, folds, progress=not args.quiet, frozen=args.frozen)
    res["command"] = "edge-train " + " ".join(args.argv)
    out.mkdir(parents=True, exist_ok=True)
    (out / "fusion_au_cv.json").write_text(json.dumps(res, indent=2))
    from training.fusion_au import markdown
    (out / "fusion_au.md").write_text(markdown(res, out))
    print(json.dumps({k: res[k] for k in ("fused", "speech", "au", "cv_minutes")}))
    return 0


def cmd_fusion(args: argparse.Namespace) -> int:
    from edge.params import Params
    from training.face import QUICK, FaceRecipe
    from training.fusion import prepare_videos, run_cv
    from training.paths import cache_dir, reports_dir
    from training.speech import SpeechRecipe
    p = Params()
    recipe = SpeechRecipe().replace(**_recipe_overrides(args.set or []))
    face_recipe = QUICK if args.small_face else FaceRecipe()
    out = Path(args.out) if args.out else reports_dir()
    folds = [int(f) for f in args.folds.split(",")] if args.folds else None
    data = prepare_videos(args.ravdess_video, args.yamnet, p, None if args.no_cache else cache_dir(), not args.quiet)
    res = run_cv(data, recipe, face_recipe, p, folds)
    res["command"] = "edge-train " + " ".join(args.argv)
    out.mkdir(parents=True, exist_ok=True)
    (out / "fusion_video_cv.json").write_text(json.dumps(res, indent=2))
    pct = lambda v: "–" if v is None else f"{100 * v:.2f}%"  # noqa: E731
    c = res["counts"]
    lines = ["# Model-level fusion on RAVDESS video (the paper's pipeline)", "", f"Command: `{res['command']}`", "",
             res["protocol"] + ".", "", "| test actors | fused | speech head | face head | speech-only fallback |",
             "|---|---|---|---|---|"]
    lines += [f"| {f['test_actors']} | {pct(f['fused'])} | {pct(f['speech'])} | {pct(f['face'])} | "
              f"{f['speech_fallback_clips']} |" for f in res["folds"]]
    lines += [f"| **mean** | **{pct(res['fused'])}** | {pct(res['speech'])} | {pct(res['face'])} | |", "",
              f"Videos: {c['videos']}; skipped names {len(c['skipped_names'])}, unreadable {len(c['unreadable'])}, "
              f"no speech {len(c['no_speech'])}, no face {len(c['no_face'])} (speech head used). "
              f"Paper: 81.04%. CV time {res['cv_minutes']:.1f} min.", ""]
    (out / "fusion_video.md").write_text("\n".join(lines))
    print(json.dumps({k: res[k] for k in ("fused", "speech", "face", "cv_minutes")}))
    return 0


def cmd_ship(args: argparse.Namespace) -> int:
    from edge.params import Params
    from training.paths import cache_dir, reports_dir
    from training.ship import SHIP_RECIPE, run
    p = Params()
    recipe = SHIP_RECIPE.replace(**_recipe_overrides(args.set or []))
    out = Path(args.out) if args.out else reports_dir()
    folds = [int(f) for f in args.folds.split(",") if f] if args.folds is not None else None
    ship_dir = Path(args.ship_dir) if args.ship_dir else cache_dir() / "ship"
    res = run(args.data, args.fer, args.yamnet, args.face_model, ship_dir, out,
              None if args.no_cache else cache_dir(), folds, args.fusion_epochs,
              not args.no_release, p, recipe, not args.quiet,
              save_folds=ship_dir / "folds" if args.save_folds else None)
    res["command"] = "edge-train " + " ".join(args.argv)
    if res["folds"]:
        out.mkdir(parents=True, exist_ok=True)
        (out / "ship_cv.json").write_text(json.dumps(res, indent=2) + "\n")
    print(json.dumps({k: res.get(k) for k in ("fused", "speech", "face", "cv_minutes", "release")}))
    return 0


def _add_common(sp: argparse.ArgumentParser) -> None:
    from training.paths import ravdess_speech_dir, yamnet_weights
    sp.add_argument("--data", default=str(ravdess_speech_dir()),
                    help="RAVDESS speech folder with Actor_NN/03-01-*.flac|wav (default: %(default)s; env AVE_SHARED)")
    sp.add_argument("--yamnet", default=yamnet_weights(),
                    help="YAMNet weights: yamnet.tflite, yamnet.h5 or a TF-Hub handle (default: %(default)s; "
                         "env AVE_YAMNET)")
    sp.add_argument("--folds", help="comma-separated fold indices 0-3 (default: all four)")
    sp.add_argument("--set", action="append", metavar="KEY=VALUE",
                    help="override a recipe field, e.g. --set epochs=5 --set seeds=0,1,2 (see training/speech.py)")
    sp.add_argument("--out", help="reports folder (default: <repo>/reports)")
    sp.add_argument("--no-cache", action="store_true", help="do not read or write the feature cache (env AVE_CACHE)")
    sp.add_argument("--quiet", action="store_true", help="no progress bars")


def build_parser() -> argparse.ArgumentParser:
    from training.paths import ravdess_au_csv
    ap = argparse.ArgumentParser(prog="edge-train", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", required=True)
    sp = sub.add_parser("speech", help="4-fold actor-independent CV of the speech branch on RAVDESS",
                        description="Train and evaluate the speech branch (frozen YAMNet activation_3 -> "
                                    "2 conv -> BiLSTM -> attention) with actor-independent 4-fold CV; writes "
                                    "reports/speech_cv.json, speech_confusion.png, speech.md.")
    _add_common(sp)
    sp.add_argument("--speaker-dependent", action="store_true",
                    help="also measure the (optimistic) speaker-dependent random split, labelled as such")
    sp.add_argument("--ablation", action="store_true", help="run the ablation variants (resumable) into "
                    "reports/speech_ablation.json instead of the main CV")
    sp.add_argument("--rows", metavar="NAME,...", help="with --ablation: only these rows (names in "
                    "training/speech_cv.py ABLATION), each still skipped when already measured on these folds")
    sp.set_defaults(func=cmd_speech)
    fa = sub.add_parser("fusion-au", help="model-level fusion of speech + OpenFace action units, 4-fold CV",
                        description="Fuse the speech branch with a small action-unit branch (per-clip OpenFace "
                                    "means of the RAVDESS AV videos) at model level; three heads (fused, speech, "
                                    "AU); writes reports/fusion_au_cv.json and fusion_au.md.")
    _add_common(fa)
    fa.add_argument("--au", default=str(ravdess_au_csv()), help="per-clip action-unit CSV (default: %(default)s)")
    fa.add_argument("--frozen", action="store_true", help="two stages: train each branch alone, freeze it, then "
                    "train only the fusion layers (single-modality heads = single-branch models)")
    fa.set_defaults(func=cmd_fusion_au)
    fv = sub.add_parser("fusion", help="the paper's fusion on RAVDESS audio-visual videos (for owners of them)",
                        description="Model-level fusion of speech and face on RAVDESS videos "
                                    "(Actor_NN/01-01-*.mp4): key faces, the paper's triples, 4-fold "
                                    "actor-independent CV; writes reports/fusion_video_cv.json and fusion_video.md.")
    _add_common(fv)
    fv.add_argument("--ravdess-video", required=True, metavar="ROOT",
                    help="folder with Actor_NN/01-01-EE-II-SS-RR-AA.mp4 (RAVDESS audio-visual speech)")
    fv.add_argument("--small-face", action="store_true", help="the reduced face CNN (quick runs and tests)")
    fv.set_defaults(func=cmd_fusion)
    sh = sub.add_parser("ship", help="the model that ships: speech + FER2013 face + label-paired fusion, one graph",
                        description="Evaluate the shipped recipe 4-fold on held-out actors (test patches paired "
                                    "with FER2013 validation faces of the same emotion), write reports/ship_cv.json, "
                                    "then train the release model on all actors into --ship-dir (shipped.keras, "
                                    "ship_meta.json) for edge-export. Pass --folds '' to skip the evaluation.")
    _add_common(sh)
    sh.add_argument("--fer", default=None, help="FER2013 folder with train/ and validation/ (default: "
                    "<shared>/data/fer2013)")
    sh.add_argument("--face-model", help="trained face CNN .keras (default: the `edge-train face` checkpoint)")
    sh.add_argument("--fusion-epochs", type=int, default=30, help="epochs of the fusion head (default: %(default)s)")
    sh.add_argument("--ship-dir", help="where the release model goes (default: <cache>/ship)")
    sh.add_argument("--no-release", action="store_true", help="only the 4-fold evaluation")
    sh.add_argument("--save-folds", action="store_true", help="also save each fold's graph to <ship-dir>/folds/ "
                    "(edge-export then measures int8 parity on each fold's test actors)")
    sh.set_defaults(func=cmd_ship)
    from training.face_cli import add_face_parser
    add_face_parser(sub)
    return ap


def run_command(prog: str, parser: argparse.ArgumentParser, argv: list[str] | None,
                errors: tuple[type[BaseException], ...], func=None) -> int:
    """The workstation commands' shared entry: logging, quiet TensorFlow, parse, and the expected errors
    as one line naming the input (exit 2) instead of a traceback."""
    logging.basicConfig(level=os.environ.get("LOGLEVEL", "INFO"), format="%(asctime)s %(name)s %(message)s")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    args.argv = argv
    try:
        return (func or args.func)(args)
    except errors as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 2


def main(argv: list[str] | None = None) -> int:
    from edge.audio.io import AudioError
    from edge.runtime import ModelError
    from training.ravdess import RavdessNameError
    from training.yamnet import YamnetWeightsError
    return run_command("edge-train", build_parser(), argv,
                       (FileNotFoundError, AudioError, ModelError, RavdessNameError, YamnetWeightsError))


if __name__ == "__main__":
    raise SystemExit(main())
