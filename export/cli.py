"""edge-export: the shipped Keras model -> the device's int8 TFLite graph (+ float TFLite, ONNX), parity
report, Edge TPU op report and the release manifest.

    edge-train ship                 # first: trains <cache>/ship/shipped.keras
    edge-export                     # -> edge/models/av_emotion_int8.tflite, manifest.json; reports/export.json

The float TFLite and ONNX files go to --work (default <cache>/export); only the int8 graph ships.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import logging
import time
from pathlib import Path

import numpy as np

log = logging.getLogger("edge-export")

REPO = Path(__file__).resolve().parents[1]


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def write_manifest(models_dir: Path, meta: dict, metrics: dict) -> dict:
    """edge/models/manifest.json: every shipped file with its size and sha256, the model's I/O contract
    and the metrics it was released with."""
    files = {f.name: {"bytes": f.stat().st_size, "sha256": sha256(f)}
             for f in sorted(models_dir.glob("*.tflite"))}
    manifest = {
        "model": "av_emotion_int8.tflite",
        "emotions": meta["emotions"],
        "faces_per_patch": meta["faces_per_patch"],
        "logmel_prior_mean": [round(float(v), 6) for v in meta["logmel_prior_mean"]],
        "frontend_key": meta.get("frontend_key"),
        "inputs": meta["inputs"], "outputs": meta["outputs"],
        "files": files,
        "total_bytes": sum(v["bytes"] for v in files.values()),
        "metrics": metrics,
        "licences": {"RAVDESS": "CC BY-NC-SA 4.0 (non-commercial)", "FER2013": "research use",
                     "YAMNet weights": "Apache-2.0", "mtcnn package weights": "MIT"},
    }
    (models_dir / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def convert(trained, work: Path, models_dir: Path, rep, p, onnx_dir: Path | None = None) -> tuple[object, dict, dict]:
    """trained Keras model -> (device graph, prequant report, export targets): float TFLite and ONNX from the
    device graph, int8 from its bias-corrected twin (export/prequant.py)."""
    from export.convert import calibration_arrays, export_all
    from export.prequant import device_graphs
    device, twin, pq = device_graphs(trained, *calibration_arrays(rep), p)
    return device, pq, export_all(device, work, models_dir, rep, onnx_dir or work, p, int8_model=twin)


def compare_backends(model, float_f: Path, int8_f: Path, onnx_f: Path, d, p, trained=None) -> dict:
    """Outputs of Keras float (the device graph), TFLite float, TFLite int8 and ONNX on the same parity data;
    with ``trained``, also the trained model before the export's graph steps (``keras_trained``)."""
    from edge.runtime import load_model
    from export import parity
    runs = {"keras_float": parity.keras_predict(model),
            "tflite_float": parity.edge_predict(load_model(float_f)),
            "tflite_int8": parity.edge_predict(load_model(int8_f)),
            "onnx": parity.edge_predict(load_model(onnx_f, backend="onnx"))}
    if trained is not None:
        runs["keras_trained"] = parity.keras_predict(trained)
    outs = {}
    for name, fn in runs.items():
        t = time.time()
        outs[name] = parity.run_backend(fn, d, p)
        log.info("%s: %s in %.1f s", name, parity.accuracies(outs[name], d, p), time.time() - t)
    return outs


def summarize(outs: dict, d, p) -> dict:
    from export import parity
    acc = {k: parity.accuracies(v, d, p) for k, v in outs.items()}
    ref = acc["keras_float"]
    return {"accuracy": acc, "n_clips": int(len(np.unique(d.patch_clip))), "n_patches": int(len(d.log_mel)),
            "n_faces": int(len(d.fer_y)),
            "top1_agreement_vs_keras": {k: parity.agreement(outs["keras_float"], v) for k, v in outs.items()},
            "max_abs_diff_vs_keras": {k: parity.max_abs_diff(outs["keras_float"], v) for k, v in outs.items()},
            "int8_accuracy_drop_points": float(max(100 * (ref[k] - acc["tflite_int8"][k]) for k in ref)),
            "top1_agreement": parity.agreement(outs["tflite_float"], outs["tflite_int8"]),
            "top1_agreement_by_head": parity.agreement_by_head(outs["tflite_float"], outs["tflite_int8"])}


def cv_parity(folds_dir: Path, work: Path, cal, fer_train, data: Path, fer: Path, n_cal: int, p) -> dict:
    """Each fold's graph exported like the release one (calibrated on its training actors only) and compared
    on its own test actors: the speech CV test folds, all 1440 clips once."""
    import keras

    from export import parity
    from export.convert import FLOAT_NAME, INT8_NAME, ONNX_NAME, representative_data
    from training.paths import cache_dir
    per_fold, total = [], {}
    for f in sorted(folds_dir.glob("fold*.keras")):
        info = json.loads(f.with_suffix(".json").read_text())
        test = info["test_actors"]
        keep = ~np.isin(cal["actor"], test)
        rep = representative_data(cal["log_mel"][keep], cal["label"][keep], fer_train.x, fer_train.y, n_cal, p)
        trained = keras.saving.load_model(f, compile=False)
        fw = work / f.stem
        model, pq, _ = convert(trained, fw, fw, rep, p)
        d = parity.heldout_data(data, fer, test, p, cache_dir())
        outs = compare_backends(model, fw / FLOAT_NAME, fw / INT8_NAME, fw / ONNX_NAME, d, p, trained)
        sm = summarize(outs, d, p)
        per_fold.append({"fold": info["fold"], "test_actors": test, **sm, "prequant": pq})
        n = sm["n_clips"]
        for b, a in sm["accuracy"].items():
            for k, v in a.items():
                total.setdefault(b, {}).setdefault(k, []).append((v, n if k != "face_fer_val" else 1))
        log.info("fold %s: int8 drop %.2f, agreement %.4f", test, sm["int8_accuracy_drop_points"], sm["top1_agreement"])
    acc = {b: {k: float(np.average([v for v, _ in xs], weights=[w for _, w in xs])) for k, xs in a.items()}
           for b, a in total.items()}
    ref = acc["keras_float"]
    # predictions per fold and head: speech patches, fused triples, FER faces
    counts = [{"speech": fd["n_patches"], "fused": fd["n_patches"] * p.faces_per_patch, "face": fd["n_faces"]}
              for fd in per_fold]
    agree_w = [sum(c.values()) for c in counts]
    return {"protocol": "speech CV test folds: each fold's graph (trained without its 6 test actors, int8 calibrated on "
                        "its training actors) on its test actors with label-paired FER2013 validation faces (every "
                        "RAVDESS clip once); face head on all FER2013 validation faces",
            "folds": per_fold, "accuracy": acc,
            "int8_accuracy_drop_points": float(max(100 * (ref[k] - acc["tflite_int8"][k]) for k in ref)),
            "top1_agreement": float(np.average([fd["top1_agreement"] for fd in per_fold], weights=agree_w)),
            "top1_agreement_by_head": {k: float(np.average([fd["top1_agreement_by_head"][k] for fd in per_fold],
                                                           weights=[c[k] for c in counts]))
                                       for k in ("speech", "fused", "face")},
            "top1_agreement_vs_keras": {b: float(np.average([fd["top1_agreement_vs_keras"][b] for fd in per_fold],
                                                            weights=agree_w)) for b in acc},
            "max_abs_diff_vs_keras": {b: float(max(fd["max_abs_diff_vs_keras"][b] for fd in per_fold)) for b in acc}}


def cmd_export(args: argparse.Namespace) -> int:
    import keras

    from edge.params import Params
    from export import parity
    from export.convert import FLOAT_NAME, INT8_NAME, ONNX_NAME, representative_data
    from export.edgetpu import edgetpu_report
    from training.fer2013 import load_split
    from training.paths import cache_dir, reports_dir, shared_root
    p = Params()
    ship_dir = Path(args.ship_dir) if args.ship_dir else cache_dir() / "ship"
    models_dir = Path(args.models_dir) if args.models_dir else REPO / "edge" / "models"
    work = Path(args.work) if args.work else cache_dir() / "export"
    reports = Path(args.out) if args.out else reports_dir()
    fer = Path(args.fer) if args.fer else shared_root() / "data" / "fer2013"
    model_f, meta_f = ship_dir / "shipped.keras", ship_dir / "ship_meta.json"
    for f in (model_f, meta_f, ship_dir / "calibration_speech.npz"):
        if not f.is_file():
            raise FileNotFoundError(f"{f} not found: run `edge-train ship` first (or pass --ship-dir)")
    meta = json.loads(meta_f.read_text())
    trained = keras.saving.load_model(model_f, compile=False)
    cal = np.load(ship_dir / "calibration_speech.npz")
    fer_train = load_split(fer, "train", p=p)
    rep = representative_data(cal["log_mel"], cal["label"], fer_train.x, fer_train.y, args.calibration, p)
    t0 = time.time()
    model, pq, targets = convert(trained, work, models_dir, rep, p)
    report = {"targets": targets, "export_seconds": time.time() - t0, "command": "edge-export " +
              " ".join(args.argv), "calibration_samples": args.calibration, "prequant": pq}

    data = Path(args.data) if args.data else shared_root() / "data" / "ravdess" / "speech16k"
    if not args.skip_parity:
        # the release graph on the actors its speech head never fitted
        d = parity.heldout_data(data, fer, meta["speech_val_actors"], p, cache_dir())
        outs = compare_backends(model, work / FLOAT_NAME, models_dir / INT8_NAME, work / ONNX_NAME, d, p, trained)
        report["release_heldout"] = summarize(outs, d, p) | {
            "protocol": f"the release graph on RAVDESS actors {meta['speech_val_actors']} (its speech head's validation "
                        f"actors, never fitted; its fusion head trained on them) with label-paired FER2013 validation "
                        f"faces; FER2013 validation faces for the face head"}
        folds_dir = Path(args.cv_folds) if args.cv_folds else ship_dir / "folds"
        if sorted(folds_dir.glob("fold*.keras")):
            report["cv"] = cv_parity(folds_dir, work, cal, fer_train, data, fer, args.calibration, p)
            src = report["cv"]
        else:
            log.warning("no per-fold models in %s (edge-train ship --save-folds): parity on the release graph only",
                        folds_dir)
            src = report["release_heldout"]
        report.update({k: src[k] for k in ("accuracy", "top1_agreement_vs_keras", "max_abs_diff_vs_keras",
                                           "int8_accuracy_drop_points", "top1_agreement", "top1_agreement_by_head",
                                           "protocol")})
    sizes = {k: v["bytes"] for k, v in targets.items() if "bytes" in v}
    report["sizes_bytes"] = sizes
    report["size_ratio_int8_to_float"] = sizes["tflite_int8"] / sizes["tflite_float"]
    report["edgetpu"] = edgetpu_report(models_dir / INT8_NAME)
    report["targets_met"] = {"int8_drop_le_0.5": report.get("int8_accuracy_drop_points", 99) <= 0.5,
                             "agreement_ge_0.98": report.get("top1_agreement", 0) >= 0.98,
                             "size_ratio_le_0.30": report["size_ratio_int8_to_float"] <= 0.30,
                             "onnx_max_abs_diff_le_1e-4":
                                 report.get("max_abs_diff_vs_keras", {}).get("onnx", 1.0) <= 1e-4}
    metrics = {"int8_accuracy": report.get("accuracy", {}).get("tflite_int8"),
               "int8_accuracy_drop_points": report.get("int8_accuracy_drop_points"),
               "top1_agreement_int8_vs_float": report.get("top1_agreement")}
    ship_cv = reports / "ship_cv.json"
    if ship_cv.is_file():
        cv = json.loads(ship_cv.read_text())
        metrics["ship_cv_4fold"] = {k: cv.get(k) for k in ("fused", "speech", "face")}
    manifest = write_manifest(models_dir, meta, metrics)
    report["release_total_bytes"] = manifest["total_bytes"]
    reports.mkdir(parents=True, exist_ok=True)
    (reports / "export.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({k: report.get(k) for k in ("int8_accuracy_drop_points", "top1_agreement",
                                                 "size_ratio_int8_to_float", "release_total_bytes",
                                                 "targets_met")}))
    return 0


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="edge-export", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ship-dir", help="output of `edge-train ship` (default: <cache>/ship)")
    ap.add_argument("--models-dir", help="where the int8 graph and manifest go (default: edge/models)")
    ap.add_argument("--work", help="float TFLite, ONNX and the SavedModel (default: <cache>/export)")
    ap.add_argument("--out", help="reports folder (default: <repo>/reports)")
    ap.add_argument("--data", help="RAVDESS speech folder for the parity check (default: <shared>/data/ravdess/"
                                   "speech16k)")
    ap.add_argument("--fer", help="FER2013 folder (default: <shared>/data/fer2013)")
    ap.add_argument("--calibration", type=int, default=200, help="representative samples for int8 (default: "
                    "%(default)s)")
    ap.add_argument("--skip-parity", action="store_true", help="convert only (no accuracy comparison)")
    ap.add_argument("--cv-folds", help="per-fold graphs for parity on the CV test folds (default: <ship-dir>/folds, "
                                      "written by `edge-train ship --save-folds`)")
    return ap


def main(argv: list[str] | None = None) -> int:
    from edge.runtime import ModelError
    from training.cli import run_command
    return run_command("edge-export", build_parser(), argv, (FileNotFoundError, ModelError, ValueError), cmd_export)


if __name__ == "__main__":
    raise SystemExit(main())
