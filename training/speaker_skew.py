"""Do the speech recipe's per-speaker statistics presume that a speaker's clips cover the emotions?

The recipe removes each speaker's log-mel mean and standardises activation_3 per speaker, with statistics over
all of that speaker's clips. In RAVDESS every actor speaks every emotion (4 neutral clips, 8 of each other), so
those statistics are balanced over the emotions. A device has only the clips it heard. Each draw here keeps, per
test actor, a one-sided subset of the clips (:func:`training.speech.skewed_subset`) and votes it with the
headline recipe's models (seed 0, retrained: training is deterministic) three ways:

- ``all_clip_stats``: statistics over all of the actor's clips, as speech_cv.json measures (the kept clips only
  vote);
- ``kept_clip_stats``: statistics over the kept clips alone, what a device listening to that speaker would have;
- ``kept_clip_stats_centred``: the latter with the speaker prior removed (:func:`training.speech.actor_centred`).

    python -m training.speaker_skew                 # -> reports/speaker_skew.json, .md, .png (about 30 min)
    python -m training.speaker_skew --recipe ship   # the shipped speech recipe, under "ship" in the same json
    python -m training.speaker_skew --render        # re-render the .md and .png from the json

The shipped recipe (``training.ship.SHIP_RECIPE``) standardises activation_3 with fixed training statistics,
as the device does; only its log-mel mean is per speaker, so only that is recomputed from the kept clips.

Finished folds are kept beside the speech CV's fold checkpoints, so an interrupted run resumes.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

from edge.params import Params
from training.speech import (
    SKEW_ALPHAS,
    PatchSet,
    SpeechRecipe,
    Standardizer,
    actor_centred,
    channel_stats,
    clip_accuracy,
    mean_figures,
    n_recorded,
    recorded_clip,
    skewed_subset,
    train_fold,
    trunk_patches,
    vote,
    with_test_copies,
)

log = logging.getLogger(__name__)

REPORT = "speaker_skew"
COLUMNS = {"all_clip_stats": "statistics over all the actor's clips (the CV's figure)",
           "kept_clip_stats": "statistics over the kept clips alone (a device's case)",
           "kept_clip_stats_centred": "kept-clip statistics, speaker prior removed"}
PRIOR = "kept_clip_stats_prior_"       # + frames: the kept clips' log-mel mean with a population prior (--priors)


def most_one_sided(res: dict) -> tuple[str, dict]:
    """The most one-sided emotion mix of a speaker_skew result (the smallest alpha) and its figures."""
    alpha = min(res["alphas"], key=float)
    return alpha, res["alphas"][alpha]


def renormalised(mels: list[np.ndarray], clips: np.ndarray, clip_actor: np.ndarray, prior_frames: float = 0.0,
                 prior: dict[int, np.ndarray] | None = None) -> dict[int, np.ndarray]:
    """The log-mels of ``clips``, each speaker's mean over these clips alone removed. ``mels`` arrive with the
    mean over all of the speaker's frames removed; removing their mean over a subset again is the same as
    normalising the raw log-mels on that subset. With ``prior_frames`` the mean is shrunk towards ``prior[a]``
    (the population mean, in the same coordinates) as the device's ``SpeakerNorm`` does:
    (prior_frames * prior + sum of frames) / (prior_frames + n_frames)."""
    out = {}
    for a in np.unique(clip_actor[clips]):
        mine = clips[clip_actor[clips] == a]
        frames = np.concatenate([mels[i] for i in mine])
        mu = frames.mean(axis=0, keepdims=True)
        if prior_frames:
            mu = (prior_frames * prior[int(a)] + len(frames) * mu) / (prior_frames + len(frames))
        out.update({int(i): mels[i] - mu for i in mine})
    return out


def population_prior(prep: dict, test_actors: list[int]) -> dict[int, np.ndarray]:
    """Each test actor's population prior in its normalised coordinates: the mean raw log-mel frame of the
    other actors (what the release's manifest holds, from its training actors) minus the actor's own mean.
    Only for recipes whose log-mels are the recorded clips' (no speed or pitch copies)."""
    feats, actor = prep["feats"], prep["clip_actor"]
    if len(prep["mels"]) != len(feats):
        raise ValueError("a population prior needs a recipe without speed or pitch copies")
    raw = {int(a): np.concatenate([feats[i].log_mel for i in np.flatnonzero(actor == a)]) for a in np.unique(actor)}
    pop = np.concatenate([m for a, m in raw.items() if a not in test_actors]).mean(axis=0, keepdims=True)
    return {a: pop - raw[a].mean(axis=0, keepdims=True) for a in test_actors}


def _patches(trunk, mels: dict[int, np.ndarray], clips: np.ndarray, hop: int, p: Params, r: SpeechRecipe
             ) -> PatchSet:
    ps = trunk_patches(trunk, [mels[int(i)] for i in clips], hop, p, progress=False, frames=r.patch_frames)
    return PatchSet(ps.x, np.asarray(clips)[ps.clip], ps.offsets)


def kept_stats_probs(model, std: Standardizer, prep: dict, r: SpeechRecipe, kept: np.ndarray, trunk,
                     p: Params = Params(), prior_frames: float = 0.0, prior: dict | None = None
                     ) -> tuple[np.ndarray, np.ndarray]:
    """Patch probabilities of the ``kept`` recorded clips and their test copies, every speaker (each copy is its
    own) normalised with statistics of its kept clips alone, on the patches the recipe takes them from: training
    hop for the versions that train, test hop for test-only copies (``prior_frames``, ``prior``: the log-mel mean
    shrunk towards a population prior, see :func:`renormalised`). Returns (probs, the clip of each row)."""
    clip_actor, n_real = prep["clip_actor"], n_recorded(prep["clip_actor"])
    eval_clips = with_test_copies(kept, clip_actor, r)
    trains = eval_clips // n_real < r.n_training_versions()
    mels = renormalised(prep["mels"], eval_clips, clip_actor, prior_frames, prior)
    test_ps = _patches(trunk, mels, eval_clips, r.test_hop_frames, p, r)
    if r.feature_norm == "global":             # fixed training statistics: nothing per speaker to recompute
        *_, probs = clip_accuracy(model, test_ps, eval_clips, prep["labels"], std, clip_actor)
        return probs, test_ps.clip[test_ps.of_clips(eval_clips)]
    fit_ps = _patches(trunk, mels, eval_clips[trains], r.train_hop_frames, p, r)
    stats = Standardizer(mean={"global": std.mean["global"]}, std={"global": std.std["global"]})
    for a in np.unique(clip_actor[eval_clips]):
        src = fit_ps if np.isin(np.flatnonzero(clip_actor == a), fit_ps.clip).any() else test_ps
        stats.mean[int(a)], stats.std[int(a)] = channel_stats(src.x, src.of_clips(np.flatnonzero(clip_actor == a)))
    *_, probs = clip_accuracy(model, test_ps, eval_clips, prep["labels"], stats, clip_actor)
    return probs, test_ps.clip[test_ps.of_clips(eval_clips)]


def fold_table(prep: dict, r: SpeechRecipe, fi: int, trunk, alphas: tuple[float, ...], draws: int,
               p: Params = Params(), progress: bool = True, priors: tuple[float, ...] = (),
               few: tuple[int, ...] = ()) -> dict:
    """One test fold: the recipe's model (first seed), then ``draws`` one-sided subsets per alpha. ``priors``:
    also vote each subset with the log-mel mean shrunk towards the population's, a prior worth that many frames
    (the device's ``SpeakerNorm``); recipes with fixed feature statistics and no copies only. ``few``: also
    ``draws`` subsets of that many clips per test actor, drawn at random (a kiosk hears a few utterances)."""
    from tqdm import tqdm
    if r.logmel_norm != "actor" or r.feature_norm not in ("actor", "global"):
        raise ValueError(f"speaker_skew measures a per-actor log-mel mean (and per-actor or fixed feature "
                         f"statistics); the recipe has logmel_norm={r.logmel_norm!r}, feature_norm={r.feature_norm!r}")
    if priors and (r.feature_norm != "global" or r.copies()):
        raise ValueError("--priors needs a recipe with fixed feature statistics and no speed copies (--recipe ship)")
    t0 = time.time()
    labels, clip_actor = prep["labels"], prep["clip_actor"]
    run = train_fold(prep["train_ps"], prep["test_ps"], labels, clip_actor, list(p.folds[fi]), r, p,
                     r.seeds[0], progress)
    rows, probs = run["test_rows"], run["probs"]
    clip_of_row = recorded_clip(prep["test_ps"].clip[rows], clip_actor)
    tested = np.unique(clip_of_row)
    actor, y = clip_actor[tested], labels[tested]

    def acc(voted: tuple[np.ndarray, np.ndarray]) -> float:
        return float(np.mean(voted[1] == labels[voted[0]]))
    # all clips kept: the kept-clip statistics are the recipe's own, so this restates the CV's fold figure
    every, every_rows = kept_stats_probs(run["model"], run["standardizer"], prep, r, tested, trunk, p)
    out = {"test_actors": list(p.folds[fi]), "clip_accuracy": run["clip_accuracy"],
           "clip_accuracy_restated": acc(vote(every, recorded_clip(every_rows, clip_actor))), "alphas": {}}
    prior = population_prior(prep, list(p.folds[fi])) if priors else None
    rng = np.random.default_rng(fi)

    def evaluate(kept: np.ndarray, centred: bool = True) -> dict:
        """The kept clips voted with all-clip statistics, kept-clip statistics (centred), and each prior."""
        mine = np.isin(clip_of_row, kept)
        k_probs, k_rows = kept_stats_probs(run["model"], run["standardizer"], prep, r, kept, trunk, p)
        k_clip = recorded_clip(k_rows, clip_actor)
        row = {"clips_per_actor": len(kept) / len(np.unique(actor)),
               "all_clip_stats": acc(vote(probs[mine], clip_of_row[mine])), "kept_clip_stats": acc(vote(k_probs, k_clip))}
        if centred:
            _, c_vote, _ = actor_centred(k_probs, k_clip, clip_actor)
            row["kept_clip_stats_centred"] = float(np.mean(c_vote == labels[np.unique(k_clip)]))
        for k in priors:
            pr_probs, pr_rows = kept_stats_probs(run["model"], run["standardizer"], prep, r, kept, trunk, p, k, prior)
            row[f"{PRIOR}{k:g}"] = acc(vote(pr_probs, recorded_clip(pr_rows, clip_actor)))
        return row

    bar = tqdm(total=(len(alphas) + len(few)) * draws, desc=f"fold {fi} one-sided speakers", disable=not progress)
    for alpha in alphas:
        got = []
        for _ in range(draws):
            got.append(evaluate(tested[skewed_subset(actor, y, alpha, rng, p.num_classes)]))
            bar.update()
        out["alphas"][f"{alpha:g}"] = mean_figures(got)
    for n in few:                  # a kiosk's case: a few clips heard of each speaker, whatever they say
        got = []
        for _ in range(draws):
            kept = np.concatenate([rng.choice(tested[actor == a], n, replace=False) for a in np.unique(actor)])
            got.append(evaluate(np.sort(kept), centred=False))
            bar.update()
        out.setdefault("few", {})[str(n)] = mean_figures(got)
    bar.close()
    out["minutes"] = (time.time() - t0) / 60
    return out


def summarise(folds: list[dict], r: SpeechRecipe, draws: int, command: str) -> dict:
    return {"recipe": asdict(r), "draws_per_fold": draws,
            "folds": folds,
            "mean_clip_accuracy": float(np.mean([f["clip_accuracy"] for f in folds])),
            "mean_clip_accuracy_restated": float(np.mean([f["clip_accuracy_restated"] for f in folds])),
            **{part: {a: mean_figures([f[part][a] for f in folds]) for a in folds[0][part]}
               for part in ("alphas", "few") if part in folds[0]},
            "minutes": float(sum(f["minutes"] for f in folds)), "command": command}


def plot(res: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    alphas = list(res["alphas"])
    xs = np.arange(len(alphas))
    fig, ax = plt.subplots(figsize=(7.0, 5.4))
    for key, text in COLUMNS.items():
        line, = ax.plot(xs, [100 * res["alphas"][a][key] for a in alphas], marker="o", label=text)
        if "ship" in res and key != "kept_clip_stats_centred":
            ax.plot(xs, [100 * res["ship"]["alphas"][a][key] for a in alphas], marker="s", ls="--",
                    color=line.get_color(), label=f"shipped recipe: {text.split(' (')[0]}")
    ax.axhline(72.22, color="grey", ls=":", lw=1, label="paper (72.22%, all clips)")
    ax.set_xticks(xs, [f"{a}\n({res['alphas'][a]['clips_per_actor']:.0f} clips/actor)" for a in alphas])
    ax.set_xlabel("Dirichlet alpha of each test speaker's emotion mix (smaller: more one-sided)")
    ax.set_ylabel("clip accuracy, %")
    ax.set_title("Speech: per-speaker statistics from one-sided speakers", fontsize=10)
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.25), ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _columns(res: dict) -> dict[str, str]:
    """The table's columns: the three of every run, then each population prior measured (``--priors``)."""
    row = next(iter(res["alphas"].values()))
    return {**COLUMNS, **{k: f"kept clips, log-mel mean with a population prior of {k[len(PRIOR):]} frames"
                          for k in row if k.startswith(PRIOR)}}


def _table(res: dict) -> list[str]:
    cols = _columns(res)
    return (["| alpha | clips per actor | " + " | ".join(cols.values()) + " |", "|---|---|" + "---|" * len(cols)]
            + [f"| {a} | {row['clips_per_actor']:.0f} | " + " | ".join(f"{100 * row[k]:.2f}%" for k in cols)
               + " |" for a, row in res["alphas"].items()])


def _change(res: dict) -> str:
    most, m = most_one_sided(res)
    return (f"At alpha {most} ({m['clips_per_actor']:.0f} clips per actor), statistics from the kept clips alone "
            f"change the vote by {100 * (m['kept_clip_stats'] - m['all_clip_stats']):+.2f} points against "
            "statistics over all clips, and removing the speaker prior on top of them by "
            f"{100 * (m['kept_clip_stats_centred'] - m['kept_clip_stats']):+.2f} points.")


def _prior_note(res: dict) -> list[str]:
    """What each population prior changed against the plain kept-clip mean, at the most and least one-sided mix."""
    keys = [k for k in _columns(res) if k.startswith(PRIOR)]
    if not keys:
        return []
    (most, m), least = most_one_sided(res), max(res["alphas"], key=float)
    e = res["alphas"][least]
    parts = [f"{k[len(PRIOR):]} frames {100 * (m[k] - m['kept_clip_stats']):+.2f} / "
             f"{100 * (e[k] - e['kept_clip_stats']):+.2f}" for k in keys]
    return [f"A population prior on the log-mel mean (the device's `SpeakerNorm`: the mean of the training actors' "
            f"frames, worth that many frames; 100 frames is 1 s of speech), against the kept clips' own mean, at "
            f"alpha {most} / alpha {least}: " + "; ".join(parts) + " points.", ""]


def _few_table(res: dict) -> list[str]:
    """A few clips heard of each speaker (``--few``): all-clip statistics, the few clips' own, and each prior."""
    few = res.get("few")
    if not few:
        return []
    cols = {k: v for k, v in _columns({"alphas": few}).items() if k != "kept_clip_stats_centred"}
    return ["A kiosk hears a few utterances of each person, whatever they say. Each draw keeps that many clips of "
            "every test actor at random; their speaker statistics come from those clips alone (or shrunk towards "
            "the population's):", "",
            "| clips heard per speaker | " + " | ".join(cols.values()) + " |", "|---|" + "---|" * len(cols),
            *[f"| {n} | " + " | ".join(f"{100 * row[k]:.2f}%" for k in cols) + " |" for n, row in few.items()], ""]


def markdown(res: dict) -> str:
    lines = ["# Speech: do the per-speaker statistics presume balanced speakers?", "",
             f"Generated by `{res['command']}` ({res['minutes']:.0f} min on 2 cores). The recipe removes each "
             "speaker's log-mel mean and standardises activation_3 per speaker, over all of that speaker's clips; "
             "in RAVDESS every actor speaks every emotion. Each draw keeps a one-sided subset of each test actor's "
             "clips (an emotion mix from a Dirichlet(alpha), its most frequent emotion kept whole) and votes it "
             f"with the recipe's models (seed 0, retrained; {res['draws_per_fold']} draws per alpha and fold).", "",
             f"The retrained models score {100 * res['mean_clip_accuracy']:.2f}% on all test clips (speech_cv.json's "
             f"runs of the same seed); recomputing every statistic here from the kept clips with all clips kept "
             f"gives {100 * res['mean_clip_accuracy_restated']:.2f}%.", "", *_table(res), "",
             f"![one-sided speakers]({REPORT}.png)", "", _change(res), ""]
    sh = res.get("ship")
    if sh:
        lines += ["## The shipped recipe (the device's normalisation)", "",
                  f"Generated by `{sh['command']}` ({sh['minutes']:.0f} min). `SHIP_RECIPE` standardises "
                  "activation_3 with fixed training statistics, as the device does; only the log-mel mean is per "
                  "speaker (on the device: `SpeakerNorm`'s running mean), so only that comes from the kept clips. "
                  f"Its models score {100 * sh['mean_clip_accuracy']:.2f}% on all test clips "
                  f"({100 * sh['mean_clip_accuracy_restated']:.2f}% restated).", "", *_table(sh), "", _change(sh), "",
                  *_prior_note(sh), *_few_table(sh)]
    return "\n".join(lines)


def write(res: dict, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{REPORT}.json").write_text(json.dumps(res, indent=2))
    plot(res, out / f"{REPORT}.png")
    (out / f"{REPORT}.md").write_text(markdown(res))


def main(argv: list[str] | None = None) -> int:
    from training.paths import cache_dir, ravdess_speech_dir, reports_dir, yamnet_weights
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(ravdess_speech_dir()), help="RAVDESS speech folder (default: %(default)s)")
    ap.add_argument("--yamnet", default=yamnet_weights(), help="YAMNet weights (default: %(default)s)")
    ap.add_argument("--folds", default="0,1,2,3", help="test folds (default: %(default)s)")
    ap.add_argument("--alphas", default=",".join(f"{a:g}" for a in SKEW_ALPHAS),
                    help="Dirichlet concentrations of the speakers' emotion mixes (default: %(default)s)")
    ap.add_argument("--draws", type=int, default=8, help="one-sided subsets per alpha and fold (default: %(default)s)")
    ap.add_argument("--out", default=str(reports_dir()), help="reports folder (default: %(default)s)")
    ap.add_argument("--recipe", choices=("research", "ship"), default="research",
                    help="the speech CV's recipe, or the shipped one (SHIP_RECIPE; kept under 'ship' in the json)")
    ap.add_argument("--priors", default="", help="with --recipe ship: population priors to shrink the log-mel "
                    "mean towards, in frames (edge-run's default, --speaker-prior 10 s, is 1000), e.g. 100,1000,3000")
    ap.add_argument("--few", default="", help="also draw this many clips per test actor at random, e.g. 1,2,4 "
                    "(a kiosk hears a few utterances of each person)")
    ap.add_argument("--render", action="store_true", help="only re-render the .md and .png from the json")
    ap.add_argument("--quiet", action="store_true", help="no progress bars")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    out = Path(args.out)
    if args.render:
        res = json.loads((out / f"{REPORT}.json").read_text())
        write(res, out)
        return 0
    from training.ship import SHIP_RECIPE
    from training.speech_cv import _load_checkpoint, _save_checkpoint, checkpoint_file, prepare
    from training.yamnet import build_trunk, load_weights
    p, r = Params(), (SHIP_RECIPE if args.recipe == "ship" else SpeechRecipe())
    alphas = tuple(float(a) for a in args.alphas.split(","))
    cache = cache_dir()
    prep = prepare(args.data, args.yamnet, r, p, cache, not args.quiet, keep_mels=True)
    trunk = build_trunk(load_weights(args.yamnet), frames=r.patch_frames)
    priors = tuple(float(k) for k in args.priors.split(",") if k)
    few = tuple(int(n) for n in args.few.split(",") if n)
    kind = (f"{REPORT}_{args.draws}_{'_'.join(f'{a:g}' for a in alphas)}" + "".join(f"_p{k:g}" for k in priors)
            + "".join(f"_n{n}" for n in few))
    folds = []
    for fi in (int(f) for f in args.folds.split(",")):
        f = checkpoint_file(cache / "speech_cv_folds", prep, r, p, kind, fi)
        done = _load_checkpoint(f)
        if done is None:
            done = fold_table(prep, r, fi, trunk, alphas, args.draws, p, not args.quiet, priors, few)
            _save_checkpoint(f, done)
        log.info("fold %d: %s", fi, json.dumps(done["alphas"]))
        folds.append(done)
    res = summarise(folds, r, args.draws, " ".join(["python -m training.speaker_skew",
                                                    *(sys.argv[1:] if argv is None else argv)]))
    have = out / f"{REPORT}.json"
    if args.recipe == "ship":                  # beside the research recipe's figures, which stay on top
        if not have.is_file():
            raise SystemExit(f"{have}: run the research recipe first (python -m training.speaker_skew)")
        res = {**json.loads(have.read_text()), "ship": res}
    elif have.is_file() and "ship" in json.loads(have.read_text()):
        res["ship"] = json.loads(have.read_text())["ship"]
    write(res, out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
