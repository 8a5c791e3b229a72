"""Show what the VAD trims on real RAVDESS clips: reports/vad.json and reports/vad_examples.png.

    python -m training.vad_report --data ../shared/data/ravdess/speech16k
"""
from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import numpy as np

from edge.audio.io import load_audio
from edge.audio.vad import voiced_span
from edge.params import Params
from training.paths import ravdess_speech_dir, reports_dir
from training.ravdess import index_speech

log = logging.getLogger(__name__)


def vad_stats(data: Path, p: Params = Params()) -> dict:
    from tqdm import tqdm
    clips, _ = index_speech(data)
    lead, trail, total, kept = [], [], [], []
    for c in tqdm(clips, desc="VAD", unit="clip"):
        w = load_audio(c.path, p)
        span = voiced_span(w, p)
        if span is None:
            continue
        lead.append(span[0] / p.sample_rate)
        trail.append((len(w) - span[1]) / p.sample_rate)
        total.append(len(w) / p.sample_rate)
        kept.append((span[1] - span[0]) / p.sample_rate)

    def summary(x):
        x = np.asarray(x)
        return {"mean": float(x.mean()), "p5": float(np.percentile(x, 5)), "p95": float(np.percentile(x, 95))}
    return {"clips": len(total), "threshold_db_below_max": p.vad_threshold_db, "margin_seconds": p.vad_margin_seconds,
            "seconds_in": summary(total), "seconds_kept": summary(kept),
            "leading_silence_removed": summary(lead), "trailing_silence_removed": summary(trail)}


def plot_examples(data: Path, out: Path, p: Params = Params(), n: int = 4) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    clips, _ = index_speech(data)
    picks = [clips[i] for i in np.linspace(0, len(clips) - 1, n).astype(int)]
    fig, axes = plt.subplots(n, 1, figsize=(8, 1.6 * n), sharex=True)
    for ax, c in zip(axes, picks, strict=True):
        w = load_audio(c.path, p)
        t = np.arange(len(w)) / p.sample_rate
        s, e = voiced_span(w, p)
        ax.plot(t, w, lw=0.4, color="0.3")
        ax.axvspan(0, s / p.sample_rate, color="tab:red", alpha=0.2)
        ax.axvspan(e / p.sample_rate, t[-1], color="tab:red", alpha=0.2)
        ax.set_title(f"{c.path.name} ({p.emotions[c.label]}): kept {(e - s) / p.sample_rate:.2f} of "
                     f"{len(w) / p.sample_rate:.2f} s", fontsize=8)
        ax.set_yticks([])
    axes[-1].set_xlabel("seconds (red: trimmed as leading/trailing silence)")
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(ravdess_speech_dir()), help="RAVDESS speech folder (default: %(default)s)")
    ap.add_argument("--out", default=str(reports_dir()), help="reports folder (default: %(default)s)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stats = vad_stats(Path(args.data))
    (out / "vad.json").write_text(json.dumps(stats, indent=2))
    plot_examples(Path(args.data), out / "vad_examples.png")
    print(json.dumps(stats, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
