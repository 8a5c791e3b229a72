"""Regenerate the README's results table from reports/*.json (figures only from files the code wrote).

    python -m training.readme_results          # rewrites the block between the results markers
    python -m training.readme_results --check  # exit 1 if the README is out of date (a test runs this)
"""
from __future__ import annotations

import argparse
import json
import sys

from training.paths import REPO

START, END = "<!-- results:start -->", "<!-- results:end -->"


def _load(name: str) -> dict | list | None:
    f = REPO / "reports" / name
    return json.loads(f.read_text()) if f.is_file() else None


def results_table() -> str:
    rows = ["| result | ours | paper | protocol / source |", "|---|---|---|---|"]
    s = _load("speech_cv.json")
    if s:
        rows.append(f"| speech, RAVDESS 8 emotions | **{100 * s['mean_clip_accuracy']:.2f}%** ± "
                    f"{100 * s['std_clip_accuracy']:.2f} | 72.22% | actor-independent 4-fold CV, clip = vote of "
                    f"patches; {s['params']:,}-param head; {s['cv_minutes']:.0f} min on {s['machine']['cpu_count']} "
                    f"cores ([speech.md](reports/speech.md)) |")
        sd = s.get("speaker_dependent")
        if sd:
            rows.append(f"| speech, speaker-DEPENDENT split | {100 * sd['mean_clip_accuracy']:.2f}% | – | random "
                        f"clip split, same actors in train and test (optimistic; not the paper's protocol) |")
    f = _load("face_fer2013.json")
    if f:
        partial = "" if f.get("complete", True) else f"; **partial: {f['epochs']} of {f['planned_epochs']} epochs**"
        rows.append(f"| face CNN, FER2013 validation | {100 * f['val_accuracy']:.2f}% | 67.85% (RAVDESS video) | "
                    f"{f['params']:,} params, 7 FER classes{partial} ([face.md](reports/face.md)) |")
    fd = _load("face_detection_bench.json")
    if fd and "speedup_vs_package" in fd:
        e = fd["speed"]["640x360"]["edge"]
        rec = fd["recall"]["edge"]
        rows.append(f"| face detection, edge MTCNN (LiteRT + numpy) | {e['median_ms']:.1f} ms per 640x360 frame, "
                    f"{fd['speedup_vs_package']['640x360']['edge']:.1f}x the `mtcnn` package; min IoU "
                    f"{rec['min_iou']:.5f} on {rec['frames_with_package_face']} CREMA-D frames | – | one thread, "
                    f"machine under load ([face_detection_bench.json](reports/face_detection_bench.json)) |")
    fu = _load("fusion_au_cv.json")
    if fu:
        rows.append(f"| fusion: speech + OpenFace action units (real pairs) | **{100 * fu['fused']:.2f}%** | 81.04% "
                    f"(speech + face) | actor-independent 4-fold CV, one graph with three heads: speech head "
                    f"{100 * fu['speech']:.2f}%, AU head {100 * fu['au']:.2f}% ([fusion_au.md](reports/fusion_au.md)) |")
    fp = _load("frontend_parity.json")
    if fp:
        rows.append(f"| front end vs yamnet.tflite | windowed frames max diff {fp['windowed_frames_max_abs_diff']:.1e}; "
                    f"DFT/mel within {max(fp['dft_real_max_error_steps'], fp['mel_max_error_steps']):.3f} quant. steps; "
                    f"activation_3 rel. rms {fp['activation_3_numpy_vs_tflite_rel_rms']['max']:.1e} | – | "
                    f"{fp['clips']} real clips ([frontend_parity.json](reports/frontend_parity.json)) |")
    v = _load("vad.json")
    if v:
        rows.append(f"| VAD trimming | {v['seconds_in']['mean']:.2f} s -> {v['seconds_kept']['mean']:.2f} s "
                    f"per clip | – | energy VAD, {abs(v['threshold_db_below_max']):.0f} dB below the clip maximum "
                    f"([vad_examples.png](reports/vad_examples.png)) |")
    return "\n".join(rows)


def render(readme: str) -> str:
    a, b = readme.index(START) + len(START), readme.index(END)
    return readme[:a] + "\n" + results_table() + "\n" + readme[b:]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--check", action="store_true", help="only check that README.md is up to date")
    args = ap.parse_args(argv)
    path = REPO / "README.md"
    text = path.read_text()
    new = render(text)
    if args.check:
        if new != text:
            print("README.md results table is out of date: run python -m training.readme_results", file=sys.stderr)
            return 1
        return 0
    path.write_text(new)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
