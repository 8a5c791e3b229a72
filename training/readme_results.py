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


def _lever_note(sw: dict) -> str:
    """The best training lever measured on the shipped widths, in a few words ('' before any was measured)."""
    from training.face_sweep import WIDTHS, lever_effects
    eff = [e for e in lever_effects(sw["runs"]) if e["widths"] == WIDTHS[16]]
    if not eff:
        return ""
    b = max(eff, key=lambda e: e["mean_delta"])
    return (f"; {len(eff)} lever settings on the shipped widths (smoothing, mixup, erasing, SGD): best "
            f"`{b['lever']}` {100 * b['mean_delta']:+.2f} pt over {len(b['deltas'])} seeds")


def _prep(s: dict) -> str:
    return f" (+ {s['prep_minutes']:.1f} min of trunk features, log-mels cached)" if "prep_minutes" in s else ""


def _tta(s: dict) -> str:
    if "mean_clip_accuracy_without_test_speeds" not in s:
        return ""
    trained = ""
    if "mean_clip_accuracy_trained_test_speeds" in s:
        rec = s["recipe"]
        trained = (f", {100 * s['mean_clip_accuracy_trained_test_speeds']:.2f}% with the "
                   f"{'/'.join(f'{v:g}x' for v in rec['test_speeds'] if v in rec['speed_perturb'])} copies only")
    return (f"; test clips also voted at {', '.join(f'{v:g}x' for v in s['recipe']['test_speeds'])} speed: the same "
            f"models score {100 * s['mean_clip_accuracy_without_test_speeds']:.2f}% on the recorded clips alone"
            + trained)


def _snapshots(s: dict) -> str:
    if "mean_clip_accuracy_best_epoch" not in s:
        return ""
    return (f"; a snapshot ensemble of each run's {s['recipe']['snapshots']} best validation epochs: its best "
            f"epoch alone scores {100 * s['mean_clip_accuracy_best_epoch']:.2f}%")


def _speaker_bn(s: dict) -> str:
    if "mean_clip_accuracy_without_speaker_bn" not in s:
        return ""
    return (f"; per-speaker BatchNorm statistics at test (AdaBN): with the trained ones "
            f"{100 * s['mean_clip_accuracy_without_speaker_bn']:.2f}%")


def _centring_row(s: dict) -> list[str]:
    """The headline's models with each test actor's mean clip score removed (transductive), and its cost."""
    if "mean_clip_accuracy_actor_centred" not in s:
        return []
    skew = s.get("actor_centring_skew", {})
    worst = min(skew, key=float) if skew else None
    cost = (f"; with one-sided speakers (emotion mix Dirichlet({worst})) {100 * skew[worst]['centred_vote']:.2f}% "
            f"against the plain vote's {100 * skew[worst]['vote']:.2f}%" if worst else "")
    return [f"| speech, speaker prior removed at test (transductive) | {100 * s['mean_clip_accuracy_actor_centred']:.2f}%"
            f" ({100 * s['mean_clip_accuracy_actor_centred_scores']:.2f}% by centred clip scores) | 72.22% | the "
            "same models; each test actor's mean clip score is subtracted before the vote. It presumes that a "
            f"speaker's clips cover the emotions, as RAVDESS's script makes them; the device does not do it{cost} "
            "([speech.md](reports/speech.md)) |"]


def _skew_row() -> list[str]:
    """The recipe's models on one-sided speakers, normalised with statistics of their kept clips alone."""
    sk = _load("speaker_skew.json")
    if not sk:
        return []
    from training.speaker_skew import most_one_sided
    most, m = most_one_sided(sk)
    return [f"| speech, one-sided speakers (per-speaker statistics from their own clips) | "
            f"{100 * m['kept_clip_stats']:.2f}% | – | the recipe's models; each test actor keeps a one-sided share "
            f"of its clips (emotion mix Dirichlet({most}), {m['clips_per_actor']:.0f} clips an actor), normalised "
            f"with statistics of those clips alone: {100 * m['all_clip_stats']:.2f}% with statistics of all its "
            f"clips, as the 4-fold CV has them{_ship_skew(sk, most)} ([speaker_skew.md](reports/speaker_skew.md)) |"]


def _ship_skew(sk: dict, alpha: str) -> str:
    sh = sk.get("ship", {}).get("alphas", {}).get(alpha)
    if not sh:
        return ""
    return (f"; the shipped recipe (log-mel mean per speaker, as on the device) {100 * sh['kept_clip_stats']:.2f}% "
            f"against {100 * sh['all_clip_stats']:.2f}%")


def _ensemble_row() -> list[str]:
    """The four-fold speech row averaging the most seeds (research only: k times the training budget)."""
    from training.speech_cv import largest_ensemble
    a = largest_ensemble(_load("speech_ablation.json") or [])
    if a is None:
        return []
    k = len(a["mean_clip_accuracy_first_seeds"])
    soft = (f" ({100 * a['mean_clip_accuracy_soft_vote']:.2f}% voting by summed probabilities)"
            if "mean_clip_accuracy_soft_vote" in a else "")
    return [f"| speech, {k}-seed ensemble (over the time budget) | {100 * a['mean_clip_accuracy']:.2f}%{soft} | "
            f"72.22% | the recipe's protocol, {k} training runs a fold with their probabilities averaged: "
            f"{a.get('cv_minutes', a['minutes']):.0f} min on 2 cores (ablation row `{a['name']}`, "
            "[speech.md](reports/speech.md)) |"]


def results_table() -> str:
    rows = ["| result | ours | paper | protocol / source |", "|---|---|---|---|"]
    s = _load("speech_cv.json")
    if s:
        rows.append(f"| speech, RAVDESS 8 emotions | **{100 * s['mean_clip_accuracy']:.2f}%** ± "
                    f"{100 * s['std_clip_accuracy']:.2f} | 72.22% | actor-independent 4-fold CV, clip = vote of "
                    f"patches; {s['params']:,}-param head; {s['cv_minutes']:.0f} min on {s['machine']['cpu_count']} "
                    f"cores{_prep(s)}{_tta(s)}{_snapshots(s)}{_speaker_bn(s)} ([speech.md](reports/speech.md)) |")
        sd = s.get("speaker_dependent")
        if sd:
            rows.append(f"| speech, speaker-DEPENDENT split | {100 * sd['mean_clip_accuracy']:.2f}% | – | random "
                        f"clip split, same actors in train and test (optimistic; not the paper's protocol) |")
        rows += _centring_row(s) + _skew_row() + _ensemble_row()
    f = _load("face_fer2013.json")
    if f:
        partial = "" if f.get("complete", True) else f"; **partial: {f['epochs']} of {f['planned_epochs']} epochs**"
        rows.append(f"| face CNN, FER2013 validation | {100 * f['val_accuracy']:.2f}% | 67.85% (RAVDESS video) | "
                    f"{f['params']:,} params, 7 FER classes{partial} ([face.md](reports/face.md)) |")
    sw = _load("face_sweep.json")
    if sw:
        b = max(sw["runs"], key=lambda r: r["best_val"])
        rows.append(f"| face CNN sweep, best of {len(sw['runs'])} runs (exploration, GPU) | {100 * b['best_val']:.2f}% "
                    f"({100 * b['best_val_tta']:.2f}% flip TTA) | – | widths {b['widths']}, {b['params']:,} params, "
                    f"{b['epochs_run']} epochs; same recipe as the face CNN, not a 2-core run{_lever_note(sw)} "
                    f"([face_sweep.md](reports/face_sweep.md)) |")
    fd = _load("face_detection_bench.json")
    if fd and "speedup_vs_package" in fd:
        e = fd["speed"]["640x360"]["edge"]
        rec = fd["recall"]["edge"]
        rows.append(f"| face detection, edge MTCNN (LiteRT + numpy) | {e['median_ms']:.1f} ms per 640x360 frame, "
                    f"{fd['speedup_vs_package']['640x360']['edge']:.1f}x the `mtcnn` package; min IoU "
                    f"{rec['min_iou']:.5f} on {rec['frames_with_package_face']} CREMA-D frames | – | one thread, "
                    f"1-min load average {fd['machine']['load_avg_1_5_15'][0]:.1f} at the start "
                    f"([face_detection_bench.json](reports/face_detection_bench.json)) |")
    fu = _load("fusion_au_cv.json")
    if fu:
        rows.append(f"| fusion: speech + OpenFace action units (real pairs) | **{100 * fu['fused']:.2f}%** | 81.04% "
                    f"(speech + face) | actor-independent 4-fold CV, one graph with three heads: speech head "
                    f"{100 * fu['speech']:.2f}%, AU head {100 * fu['au']:.2f}%"
                    + (" (= the single branches: trained alone, then frozen)" if fu.get("frozen_branches") else "")
                    + " ([fusion_au.md](reports/fusion_au.md)) |")
    sh = _load("ship_cv.json")
    if sh and sh.get("fused") is not None:
        rows.append(f"| shipped model (speech + FER face + label-paired fusion, one graph) | fused "
                    f"{100 * sh['fused']:.2f}%, speech head {100 * sh['speech']:.2f}%, face head "
                    f"{100 * sh['face']:.2f}% | – | 4-fold held-out actors, test patches paired with FER2013 "
                    f"validation faces of the same emotion: *label-paired, not a real scene* "
                    f"([MODEL_CARD.md](reports/MODEL_CARD.md)) |")
    ex = _load("export.json")
    if ex and "top1_agreement" in ex:
        by = ex.get("top1_agreement_by_head")
        heads = (f" (speech patches {100 * by['speech']:.1f}%, fused triples {100 * by['fused']:.1f}%, FER faces "
                 f"{100 * by['face']:.1f}%)") if by else ""
        rows.append(f"| int8 export (one TFLite graph: YAMNet trunk + 3 heads) | accuracy drop "
                    f"{ex['int8_accuracy_drop_points']:.2f} points, top-1 agreement {100 * ex['top1_agreement']:.2f}%"
                    f"{heads}, "
                    f"size {100 * ex['size_ratio_int8_to_float']:.1f}% of float; ONNX max diff "
                    f"{ex['max_abs_diff_vs_keras']['onnx']:.1e} | – | "
                    f"{'each fold graph on its CV test actors' if 'cv' in ex else 'release graph, held-out actors'}"
                    f" + FER2013 validation ([export.json](reports/export.json)) |")
    pq = _load("prequant.json")
    if pq and pq.get("steps"):
        steps = " -> ".join(f"{100 * r['top1_agreement']:.1f}%" for r in pq["steps"])
        rows.append(f"| int8 graph steps, top-1 agreement (export/prequant.py) | {steps} | – | fold {pq['fold']}: "
                    f"{'; '.join(r['step'] for r in pq['steps'])} ([prequant.json](reports/prequant.json)) |")
    be = _load("bench.json")
    if be and "speedup_int8_vs_keras_1thread" in be:
        m = be["stages"]["model_tflite_int8"]["1"]["p50"]
        rounds = be.get("speedup_rounds", [])
        how = f" (median of {len(rounds)} interleaved rounds, {min(r['ratio'] for r in rounds):.2f}-" \
              f"{max(r['ratio'] for r in rounds):.2f}x)" if rounds else ""
        py = (f", of which infer's Python side {1e3 * be['infer_python_ms_1thread']:.0f} us"
              if "infer_python_ms_1thread" in be else "")
        rows.append(f"| edge-bench, fused decision, 1 thread | int8 {m:.2f} ms (p50{py}): "
                    f"**{be['speedup_int8_vs_keras_1thread']:.2f}x** compiled Keras float{how}, "
                    f"{be['speedup_int8_vs_keras_eager_1thread']:.0f}x eager Keras; whole decision "
                    f"{be['stages']['whole_decision_int8']['1']['p50']:.1f} ms | – | {be['machine']['cpu']} "
                    f"([bench.json](reports/bench.json)) |")
    er = _load("edge_run.json")
    if er:
        rows.append(f"| edge-run --video, 1 thread (CREMA-D clips) | wall {er['wall_over_clip']:.2f}x clip length, "
                    f"peak RSS {er['peak_rss_mb']:.0f} MB, READY after {er['ready_seconds']:.2f} s, clip votes "
                    f"{er['cremad_correct']} correct; systemd exposure {er['security_exposure']} | – | "
                    f"worst of {len(er['clips'])} clips, process start included ([edge_run.json](reports/edge_run.json)) |")
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


BENCH_START, BENCH_END = "<!-- bench:start -->", "<!-- bench:end -->"


def bench_table() -> str:
    """edge-bench's stages from reports/bench.json: p50 / p99 ms per backend and thread count."""
    be = _load("bench.json")
    if not be:
        return "(no reports/bench.json yet: run edge-bench --out reports/bench.json)"
    rows = [f"`{be['command']}` on {be['machine']['cpu']} ({be['machine']['cpus_allowed']} cores, governor "
            f"{be['machine']['governor']}), {be['runs']} runs after {be['warmup']} warm-up, input: "
            f"{'a real clip' if be['source'] != 'synthetic' else 'synthetic'}.", "",
            "| stage | threads | p50 ms | p90 ms | p99 ms |", "|---|---|---|---|---|"]
    for name, v in be["stages"].items():
        for t, s in ([("1", v)] if "p50" in v else v.items()):
            rows.append(f"| {name} | {t} | {s['p50']:.2f} | {s['p90']:.2f} | {s['p99']:.2f} |")
    sizes = ", ".join(f"{k} {v['bytes'] / 1e6:.2f} MB" for k, v in be["models"].items())
    rows += ["", f"Model files: {sizes}. {be['macs_per_decision'] / 1e6:.0f} M MACs per decision; the int8 graph "
             f"runs at {100 * be['int8_fraction_of_fp32_peak_1thread']:.0f}% of a 1-thread fp32 sgemm's rate "
             f"({be['peak_gflops_1thread_sgemm']:.0f} GFLOP/s)."]
    return "\n".join(rows)


def render(readme: str) -> str:
    a, b = readme.index(START) + len(START), readme.index(END)
    readme = readme[:a] + "\n" + results_table() + "\n" + readme[b:]
    if BENCH_START in readme:
        a, b = readme.index(BENCH_START) + len(BENCH_START), readme.index(BENCH_END)
        readme = readme[:a] + "\n" + bench_table() + "\n" + readme[b:]
    return readme


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
