"""Measure the numpy front end and the truncated YAMNet against Google's yamnet.tflite internals.

    python -m training.frontend_report      # writes reports/frontend_parity.json

Figures: framed+windowed waveform (float in the tflite: must match to <= 1e-6), the int8 DFT
and mel matrices (error in quantization steps: <= 0.5 means within half a step), the log-mel
(loose: the tflite computes it with quantized matrices), and activation_3 (Keras vs numpy;
numpy vs the tflite's own tensor, which quantizes activations on the fly).
"""
from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import numpy as np

from edge.audio.features import dft_matrices, log_mel, mel_matrix, windowed_frames
from edge.audio.io import load_audio
from edge.params import Params
from training.paths import ravdess_speech_dir, reports_dir, yamnet_weights
from training.yamnet import LAYER_DEFS, build_trunk, dequantize_constant, load_weights, numpy_trunk

log = logging.getLogger(__name__)


def measure(yamnet: str, data: Path, n_clips: int = 16, p: Params = Params()) -> dict:
    from ai_edge_litert.interpreter import Interpreter
    it = Interpreter(model_path=yamnet, experimental_preserve_all_tensors=True)
    it.allocate_tensors()
    details = {d["name"]: d for d in it.get_tensor_details()}

    def tensor(name_or_prefix: str):
        d = details.get(name_or_prefix) or next(d for n, d in details.items() if n.startswith(name_or_prefix))
        return it.get_tensor(d["index"]), d

    def steps(mine: np.ndarray, name: str) -> float:
        q, d = tensor(name)
        q = q[:, :mine.shape[1]]
        return float((np.abs(dequantize_constant(q, d) - mine)
                      / np.asarray(d["quantization_parameters"]["scales"])[:, None]).max())
    re, im = dft_matrices(p)
    out = {"dft_real_max_error_steps": steps(re.T, "yamnet_frames/tf_op_layer_MatMul/MatMul"),
           "dft_imag_max_error_steps": steps(-im.T, "yamnet_frames/tf_op_layer_MatMul_1/MatMul_1"),
           "mel_max_error_steps": steps(mel_matrix(p).T, "yamnet_frames/tf_op_layer_MatMul_2/MatMul_2")}
    weights = load_weights(yamnet)
    trunk = build_trunk(weights)
    a3_name = next(n for n in details if n.startswith(LAYER_DEFS[-1].tflite_relu))
    files = sorted(data.glob("Actor_*/*.flac"))[:: max(1, 1440 // n_clips)][:n_clips]
    win, lm_med, lm_p99, a3_rel, keras_rel = [], [], [], [], []
    for f in files:
        w = load_audio(f, p)
        seg = w[len(w) // 2 - 7800: len(w) // 2 + 7800]                      # the middle 15600 samples
        it.set_tensor(it.get_input_details()[0]["index"], seg[None])
        it.invoke()
        win.append(float(np.abs(windowed_frames(seg, p) - tensor("yamnet_frames/tf_op_layer_Mul/Mul")[0]).max()))
        ref_lm = tensor("Identity_1")[0]
        d = np.abs(log_mel(seg, p) - ref_lm)
        lm_med.append(float(np.median(d)))
        lm_p99.append(float(np.percentile(d[ref_lm > np.log(p.log_offset) + 3], 99)))
        ref_a3 = tensor(a3_name)[0][0]
        mine = numpy_trunk(ref_lm[None], weights)[0]
        a3_rel.append(float(np.sqrt(np.mean((mine - ref_a3) ** 2)) / np.sqrt(np.mean(ref_a3 ** 2))))
        k = trunk(ref_lm[None]).numpy()[0]
        keras_rel.append(float(np.abs(k - mine).max() / np.abs(mine).max()))
    out.update({"clips": len(files), "windowed_frames_max_abs_diff": max(win),
                "log_mel_median_abs_diff": float(np.median(lm_med)),
                "log_mel_p99_abs_diff_off_floor": float(np.max(lm_p99)),
                "activation_3_keras_vs_numpy_max_rel": max(keras_rel),
                "activation_3_numpy_vs_tflite_rel_rms": {"mean": float(np.mean(a3_rel)), "max": float(np.max(a3_rel))}})
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--yamnet", default=yamnet_weights(), help="yamnet.tflite (default: %(default)s)")
    ap.add_argument("--data", default=str(ravdess_speech_dir()), help="RAVDESS speech folder (default: %(default)s)")
    ap.add_argument("--out", default=str(reports_dir()), help="reports folder (default: %(default)s)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    res = measure(args.yamnet, Path(args.data))
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "frontend_parity.json").write_text(json.dumps(res, indent=2))
    print(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
