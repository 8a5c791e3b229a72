"""RAVDESS: file-name parsing, the speech index, actor folds, and the cached log-mel features.

File names are ``MM-VV-EE-II-SS-RR-AA`` (modality, vocal channel, emotion, intensity,
statement, repetition, actor). The speech corpus lives at ``<root>/Actor_NN/03-01-*.flac``.

    clips, skipped = index_speech("../shared/data/ravdess/speech16k")
    feats = load_features(clips)       # list of (n_frames, 64) log-mel of the VAD-trimmed clip
"""
from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edge.audio.features import waveform_to_log_mel
from edge.audio.io import AudioError, load_audio, resample
from edge.audio.vad import SilenceError, trim_silence
from edge.params import Params

log = logging.getLogger(__name__)

_NAME = re.compile(r"^(\d{2})-(\d{2})-(\d{2})-(\d{2})-(\d{2})-(\d{2})-(\d{2})$")
MODALITIES = {1: "audio-video", 2: "video-only", 3: "audio-only"}
AUDIO_EXTS = (".flac", ".wav")


class RavdessNameError(ValueError):
    """A file name is not a valid RAVDESS name."""


@dataclass(frozen=True)
class RavdessName:
    modality: int      # 1 AV, 2 video only, 3 audio only
    channel: int       # 1 speech, 2 song
    emotion: int       # 1..8 (RAVDESS code)
    intensity: int     # 1 normal, 2 strong
    statement: int     # 1 "Kids are talking by the door", 2 "Dogs are sitting by the door"
    repetition: int    # 1, 2
    actor: int         # 1..24, odd male, even female

    @property
    def label(self) -> int:
        """0-based class index into Params.emotions."""
        return self.emotion - 1

    @property
    def clip_key(self) -> str:
        """Name without modality: pairs the speech file with its audio-visual video."""
        return f"{self.channel:02d}-{self.emotion:02d}-{self.intensity:02d}-{self.statement:02d}-" \
               f"{self.repetition:02d}-{self.actor:02d}"


def parse_name(name: str | Path) -> RavdessName:
    """Parse a RAVDESS file name (with or without directory and extension); strict ranges."""
    stem = Path(name).name.split(".")[0]
    m = _NAME.match(stem)
    if not m:
        raise RavdessNameError(f"{name}: not a RAVDESS name MM-VV-EE-II-SS-RR-AA")
    mo, ch, em, it, st, rep, act = (int(g) for g in m.groups())
    checks = ((mo in MODALITIES, "modality"), (ch in (1, 2), "vocal channel"), (1 <= em <= 8, "emotion"),
              (it in (1, 2), "intensity"), (st in (1, 2), "statement"), (rep in (1, 2), "repetition"),
              (1 <= act <= 24, "actor"))
    for ok, field in checks:
        if not ok:
            raise RavdessNameError(f"{name}: {field} out of range in {stem}")
    if it == 2 and em == 1:
        raise RavdessNameError(f"{name}: neutral has no strong intensity in RAVDESS")
    return RavdessName(mo, ch, em, it, st, rep, act)


@dataclass(frozen=True)
class Clip:
    path: Path
    name: RavdessName

    @property
    def actor(self) -> int:
        return self.name.actor

    @property
    def label(self) -> int:
        return self.name.label


def index_tree(root: str | Path, exts: tuple[str, ...], accept, what: str) -> tuple[list, list[str]]:
    """Walk root/Actor_NN/* for files with ``exts``; parse names; ``accept(path, name)`` returns a record
    or a skip reason (str). Returns (records, skipped reasons). A file in the wrong actor folder is an error."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"RAVDESS {what} folder not found: {root} (set --data or AVE_SHARED)")
    records, skipped = [], []
    for f in sorted(root.glob("Actor_*/*")):
        if f.suffix.lower() not in exts:
            continue
        try:
            n = parse_name(f)
        except RavdessNameError as e:
            skipped.append(str(e))
            log.warning("skipped: %s", e)
            continue
        if f.parent.name != f"Actor_{n.actor:02d}":
            raise RavdessNameError(f"{f}: actor {n.actor} in folder {f.parent.name}")
        rec = accept(f, n)
        if isinstance(rec, str):
            skipped.append(rec)
        else:
            records.append(rec)
    if not records:
        raise FileNotFoundError(f"no RAVDESS {what} files ({', '.join(exts)}) under {root}")
    return records, skipped


def index_speech(root: str | Path, exts: tuple[str, ...] = AUDIO_EXTS) -> tuple[list[Clip], list[str]]:
    """All speech clips under root/Actor_NN/. Returns (clips sorted by name, skipped files with reasons).

    Files whose names do not parse are skipped and returned with the reason (counted in reports);
    a clip in the wrong actor folder is an error.
    """
    def accept(f: Path, n: RavdessName):
        if n.modality != 3 or n.channel != 1:
            return f"{f}: not audio-only speech (modality {n.modality}, channel {n.channel})"
        return Clip(f, n)
    return index_tree(root, exts, accept, "speech")


def file_hash(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:24]


@dataclass
class ClipFeatures:
    log_mel: np.ndarray      # (n_frames >= 96, 64) float32, VAD-trimmed, YAMNet-padded
    seconds_in: float        # original duration
    seconds_trimmed: float   # after VAD


def clip_features(path: Path, p: Params, cache: Path | None = None, speed: float = 1.0) -> ClipFeatures:
    """Load -> trim silence -> log-mel; cached on disk by front-end params + file content hash.

    ``speed`` != 1: speed perturbation (Ko et al. 2015) of the trimmed speech before the log-mel: played
    ``speed`` times faster, so tempo and pitch both scale by it (a resampling, as Kaldi's sox ``speed``)."""
    if speed <= 0:
        raise ValueError(f"speed must be > 0, got {speed}")
    if cache is not None:
        tag = "" if speed == 1.0 else f"_speed{speed:g}"
        f = cache / f"logmel_{p.frontend_key()}{tag}" / f"{file_hash(path)}.npz"
        if f.is_file():
            with np.load(f) as z:
                return ClipFeatures(z["log_mel"], float(z["seconds_in"]), float(z["seconds_trimmed"]))
    wave = load_audio(path, p)
    speech, _ = trim_silence(wave, p, source=str(path))
    if speed != 1.0:
        speech = resample(speech, round(p.sample_rate * speed), p.sample_rate)
    feats = ClipFeatures(waveform_to_log_mel(speech, p), len(wave) / p.sample_rate, len(speech) / p.sample_rate)
    if cache is not None:
        f.parent.mkdir(parents=True, exist_ok=True)
        tmp = f.with_suffix(".tmp.npz")
        np.savez(tmp, log_mel=feats.log_mel, seconds_in=feats.seconds_in, seconds_trimmed=feats.seconds_trimmed)
        tmp.replace(f)
    return feats


def load_features(clips: list[Clip], p: Params = Params(), cache: Path | None = None,
                  progress: bool = True, speed: float = 1.0) -> tuple[list[Clip], list[ClipFeatures], list[str]]:
    """Features of every clip; unreadable or silent clips are skipped, counted and returned."""
    from tqdm import tqdm
    kept, feats, skipped = [], [], []
    desc = "log-mel" if speed == 1.0 else f"log-mel (speed {speed:g})"
    for c in tqdm(clips, desc=desc, unit="clip", disable=not progress):
        try:
            feats.append(clip_features(c.path, p, cache, speed))
            kept.append(c)
        except (AudioError, SilenceError) as e:
            log.warning("skipped: %s", e)
            skipped.append(str(e))
    return kept, feats, skipped
