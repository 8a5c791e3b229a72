"""What each step of export/prequant.py buys: top-1 agreement int8 vs float on one CV fold.

    python -m export.prequant_report [--fold 0]     -> reports/prequant.json

Each step is added to the ones before it. The graph is converted to float and int8 TFLite, and the
two are compared on the fold's test actors (speech patches, fused triples, FER2013 validation faces),
as `edge-export` does. Needs `edge-train ship --save-folds`.
"""
from __future__ import annotations

import argparse
import json
import logging
import tempfile
import time
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)


def run(fold: int, data: Path, fer: Path, ship_dir: Path, n_cal: int = 200) -> dict:
    import keras

    from edge.params import Params
    from edge.runtime import load_model
    from export import parity
    from export.convert import (
        FLOAT_NAME,
        INT8_NAME,
        calibration_arrays,
        representative_data,
        to_saved_model,
        to_tflite_float,
        to_tflite_int8,
    )
    from export.prequant import graph_steps
    from training.fer2013 import load_split
    from training.paths import cache_dir
    p = Params()
    f = ship_dir / "folds" / f"fold{fold}.keras"
    if not f.is_file():
        raise FileNotFoundError(f"{f} not found: run `edge-train ship --save-folds` first")
    test = json.loads(f.with_suffix(".json").read_text())["test_actors"]
    cal = np.load(ship_dir / "calibration_speech.npz")
    fer_train = load_split(fer, "train", p=p)
    keep = ~np.isin(cal["actor"], test)
    rep = representative_data(cal["log_mel"][keep], cal["label"][keep], fer_train.x, fer_train.y, n_cal, p)
    lm, fa = calibration_arrays(rep)
    trained = keras.saving.load_model(f, compile=False)
    d = parity.heldout_data(data, fer, test, p, cache_dir())
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, fgraph, qgraph in graph_steps(trained, lm, fa, p)[0]:
            t = time.time()
            w = Path(tmp) / str(len(rows))
            to_tflite_float(to_saved_model(fgraph, w / "sm", p), w / FLOAT_NAME)
            to_tflite_int8(to_saved_model(qgraph, w / "sm8", p), w / INT8_NAME, rep)
            fl = parity.run_backend(parity.edge_predict(load_model(w / FLOAT_NAME)), d, p)
            q8 = parity.run_backend(parity.edge_predict(load_model(w / INT8_NAME)), d, p)
            rows.append({"step": name, "top1_agreement": parity.agreement(fl, q8),
                         "by_head": parity.agreement_by_head(fl, q8),
                         "int8_accuracy": parity.accuracies(q8, d, p), "float_accuracy": parity.accuracies(fl, d, p),
                         "seconds": time.time() - t})
            log.info("%s: agreement %.4f", name, rows[-1]["top1_agreement"])
    return {"fold": fold, "test_actors": test, "calibration_samples": n_cal, "steps": rows,
            "protocol": "top-1 agreement float TFLite vs int8 TFLite of the same step's graphs over speech patches, "
                        "fused triples (5 label-paired FER2013 validation faces per patch) and FER2013 validation faces"}


def main(argv: list[str] | None = None) -> int:
    from training.cli import run_command
    from training.paths import cache_dir, reports_dir, shared_root
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--fold", type=int, default=0, help="CV fold (0-3) whose saved graph is used (default 0)")
    ap.add_argument("--ship-dir", help="edge-train ship's output (default: <cache>/ship)")
    ap.add_argument("--data", help="RAVDESS speech folder (default: <shared>/data/ravdess/speech16k)")
    ap.add_argument("--fer", help="FER2013 folder (default: <shared>/data/fer2013)")
    ap.add_argument("--out", help="reports folder (default: <repo>/reports)")

    def cmd(args) -> int:
        res = run(args.fold, Path(args.data) if args.data else shared_root() / "data" / "ravdess" / "speech16k",
                  Path(args.fer) if args.fer else shared_root() / "data" / "fer2013",
                  Path(args.ship_dir) if args.ship_dir else cache_dir() / "ship")
        res["command"] = "python -m export.prequant_report " + " ".join(args.argv)
        out = Path(args.out) if args.out else reports_dir()
        out.mkdir(parents=True, exist_ok=True)
        (out / "prequant.json").write_text(json.dumps(res, indent=2) + "\n")
        for r in res["steps"]:
            print(f"{r['step']:<46} {100 * r['top1_agreement']:.2f}%")
        return 0
    return run_command("prequant_report", ap, argv, (FileNotFoundError,), cmd)


if __name__ == "__main__":
    raise SystemExit(main())
