"""The device loop: capture -> key faces / speech patches -> one int8 inference per patch -> vote.

Source-agnostic and single-threaded: a source calls ``on_frame`` and ``on_audio``; ``poll`` runs
every patch that the audio buffer completes and returns one event per patch. Memory is bounded:
audio <= ``audio_buffer_s`` seconds, faces <= one key-face window, key faces <= ``key_face_memory_s``,
decisions <= ``decision_window_s``.

Per patch (0.96 s, hop 0.48 s): the energy gate decides whether it is speech; speech patches update
the speaker's running log-mel mean (edge.audio.norm) and are normalised by it; the key faces whose
time falls in the patch (else the most recent ones, up to ``face_staleness_s`` old) are its faces.
Both -> the fused head (5 triples); speech only -> the speech head; faces only -> the face head.
The emotion is the majority vote over the decision window's votes.
"""
from __future__ import annotations

import logging
import time
from collections import deque
from dataclasses import dataclass

import cv2
import numpy as np

from edge.audio.features import log_mel
from edge.audio.norm import SpeakerNorm
from edge.audio.vad import frame_energy_db
from edge.model import EmotionModel
from edge.params import Params
from edge.vision.faces import FaceExtractor, KeyFaceStream
from edge.vote import majority_vote

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LoopConfig:
    """Run-time settings of the loop (none of them is a training-time contract)."""
    detect_every: int = 5                # full MTCNN every N frames, template tracking between
    min_face_px: int = 60                # smallest face the detector looks for (px, after downscaling)
    detect_max_side: int = 640           # larger frames are downscaled to this long side (detection and crop)
    decision_window_s: float = 3.0       # votes of the last N seconds make the emotion
    audio_buffer_s: float = 3.0          # ring buffer of samples
    key_face_memory_s: float = 2.0       # key faces kept for the patches that need them
    face_staleness_s: float = 1.0        # a patch with no key face inside uses ones this recent
    speech_gate_db: float = -25.0        # a patch is speech if its loudest frames reach peak + this
    speech_peak_decay_db_s: float = 3.0  # the running peak level falls this fast (dB/s)
    speech_min_fraction: float = 0.25    # ... and this fraction of its frames is above the gate
    speaker_prior_s: float = 10.0        # seconds of speech the training population's mean log-mel is worth in
    #                                      the speaker's running mean (SpeakerNorm); larger: steadier for a speaker
    #                                      who stays in one emotion or says little, slower to adapt to a new voice
    #                                      (10 s against 1 s: reports/speaker_skew.md)


@dataclass
class Counters:
    frames: int = 0
    frames_with_face: int = 0
    key_faces: int = 0
    dropped_frames: int = 0
    audio_samples: int = 0
    patches: int = 0
    speech_patches: int = 0
    inferences: int = 0
    inference_errors: int = 0


class EmotionLoop:
    def __init__(self, model: EmotionModel, p: Params = Params(), cfg: LoopConfig = LoopConfig(),
                 extractor: FaceExtractor | None = None):
        self.model, self.p, self.cfg = model, p, cfg
        if extractor is None:
            from edge.vision.mtcnn import MTCNN, FaceTracker
            det = MTCNN(min_face_size=cfg.min_face_px)
            extractor = FaceExtractor(tracker=FaceTracker(det, detect_every=cfg.detect_every), params=p)
        self.extractor = extractor
        self.keys = KeyFaceStream(p.key_face_radius)
        self.key_faces: deque[tuple[float, np.ndarray]] = deque()
        self.norm = SpeakerNorm(model.prior_mean, prior_frames=cfg.speaker_prior_s / p.stft_hop_seconds)
        n = int(cfg.audio_buffer_s * p.sample_rate)
        self._audio = np.zeros(max(n, 2 * p.patch_samples), np.float32)   # ring of samples
        self._written = 0                                                 # samples ever written
        self._next_patch = 0                                              # sample index of the next patch
        self._t0: float | None = None                                     # stream time of sample 0
        self._peak_db = -np.inf
        self.votes: deque[tuple[float, str, np.ndarray]] = deque()       # (t, head, probs (k, 8))
        self.all_votes: list[np.ndarray] = []                            # per head chosen, for a file's summary
        self.counters = Counters()
        self._face_ms: deque[float] = deque(maxlen=64)

    # ------------------------------------------------------------------ inputs

    def on_frame(self, t: float, rgb: np.ndarray) -> None:
        """One (H, W, 3) uint8 RGB frame at stream time t (s)."""
        self.counters.frames += 1
        t0 = time.perf_counter()
        h, w = rgb.shape[:2]
        if max(h, w) > self.cfg.detect_max_side:                 # detect and crop on a smaller copy
            k = self.cfg.detect_max_side / max(h, w)
            rgb = cv2.resize(rgb, (round(w * k), round(h * k)), interpolation=cv2.INTER_AREA)
        face = self.extractor(rgb)
        self._face_ms.append(1e3 * (time.perf_counter() - t0))
        if face is None:
            return
        self.counters.frames_with_face += 1
        self._add_keys(self.keys.push(t, face))

    def end_of_video(self) -> None:
        self._add_keys(self.keys.flush())

    def _add_keys(self, keys: list[tuple[float, np.ndarray]]) -> None:
        for k in keys:
            self.key_faces.append(k)
            self.counters.key_faces += 1
        while self.key_faces and self.key_faces[-1][0] - self.key_faces[0][0] > self.cfg.key_face_memory_s:
            self.key_faces.popleft()

    def on_audio(self, t: float, samples: np.ndarray) -> None:
        """Mono float32 samples at p.sample_rate starting at stream time t (s)."""
        x = np.asarray(samples, np.float32).reshape(-1)
        if not np.all(np.isfinite(x)):
            x = np.nan_to_num(x, nan=0.0, posinf=0.0, neginf=0.0)
        if self._t0 is None:
            self._t0 = t
        n, size = len(x), len(self._audio)
        if n >= size:
            x = x[-size:]
            self._written += n - size
            n = size
        pos = self._written % size
        first = min(n, size - pos)
        self._audio[pos:pos + first] = x[:first]
        self._audio[:n - first] = x[first:]
        self._written += n
        self.counters.audio_samples += n
        oldest = self._written - size
        if self._next_patch < oldest:                        # fell behind: skip what the ring lost
            skip = -(-(oldest - self._next_patch) // self.p.patch_hop_samples)
            self._next_patch += skip * self.p.patch_hop_samples

    def _samples(self, start: int, n: int) -> np.ndarray:
        size = len(self._audio)
        idx = (np.arange(start, start + n) % size)
        return self._audio[idx]

    # ------------------------------------------------------------------ patches

    def poll(self) -> list[dict]:
        """Every patch the audio buffer has completed -> one event each."""
        events = []
        while self._written - self._next_patch >= self.p.patch_samples:
            events.append(self._patch(self._next_patch))
            self._next_patch += self.p.patch_hop_samples
        return events

    def faces_only(self, t: float) -> dict | None:
        """A decision from the face head alone (video without audio)."""
        faces = [f for tk, f in self.key_faces if t - tk <= self.cfg.face_staleness_s]
        if not faces:
            return None
        t_start = time.perf_counter()
        out = self._infer(None, np.stack(faces))
        return self._event(t, out, {"infer_ms": 1e3 * (time.perf_counter() - t_start)}, speech=False,
                           n_faces=len(faces))

    def _is_speech(self, wave: np.ndarray) -> bool:
        db = frame_energy_db(wave, self.p)
        dt = self.p.patch_hop_seconds
        self._peak_db = max(self._peak_db - self.cfg.speech_peak_decay_db_s * dt, float(db.max()))
        gate = max(self.p.vad_abs_floor_db, self._peak_db + self.cfg.speech_gate_db)
        return float(np.mean(db > gate)) >= self.cfg.speech_min_fraction

    def _patch(self, start: int) -> dict:
        p = self.p
        t_start = time.perf_counter()
        wave = self._samples(start, p.patch_samples)
        t = (self._t0 or 0.0) + start / p.sample_rate
        t_end = t + p.patch_window_seconds
        self.counters.patches += 1
        speech = self._is_speech(wave)
        lm = log_mel(wave, p)[: p.patch_frames]                             # (96, 64)
        if speech:
            self.counters.speech_patches += 1
            self.norm.update(lm)
            lm = self.norm.apply(lm)
        t_fe = time.perf_counter()
        faces = [f for tk, f in self.key_faces if t <= tk <= t_end]
        if not faces:
            faces = [f for tk, f in self.key_faces if t_end - tk <= self.cfg.face_staleness_s + p.patch_window_seconds]
            faces = faces[-self.model.n_faces:]
        out = None
        if speech or faces:
            out = self._infer(lm if speech else None, np.stack(faces) if faces else None)
        t_inf = time.perf_counter()
        lat = {"frontend_ms": 1e3 * (t_fe - t_start), "infer_ms": 1e3 * (t_inf - t_fe),
               "face_per_frame_ms": float(np.mean(self._face_ms)) if self._face_ms else None}
        return self._event(t_end, out, lat, speech=speech, n_faces=len(faces))

    def _infer(self, lm, faces) -> dict | None:
        try:
            out = self.model.infer(lm, faces)
        except Exception as e:  # a bad inference must not stop the device: counted, reported in the event
            self.counters.inference_errors += 1
            log.warning("inference failed: %s", e)
            return {"error": str(e)}
        self.counters.inferences += 1
        return out

    # ------------------------------------------------------------------ decisions

    def _event(self, t: float, out: dict | None, lat: dict, speech: bool, n_faces: int) -> dict:
        emotions = self.model.emotions
        status = "ok"
        if out and "error" in out:
            status, out = f"inference error: {out['error']}", None
        head = None
        if out:
            head = "fused" if "fused" in out else ("speech" if "speech" in out else "face")
            v = np.atleast_2d(out[head])
            self.votes.append((t, head, v))
            self.all_votes.append(v)
        while self.votes and t - self.votes[0][0] > self.cfg.decision_window_s:
            self.votes.popleft()
        emotion = None
        if self.votes:
            emotion = emotions[majority_vote(np.concatenate([v for _, _, v in self.votes]))]
        probs = {k: (np.round(np.atleast_2d(out[k]).astype(np.float64).mean(0), 4).tolist() if out and k in out
                     else None)
                 for k in ("fused", "speech", "face")}
        if status == "ok" and not speech and not n_faces:
            status = "no speech and no face"
        return {"t": round(float(t), 3), "emotion": emotion, "source": head, "probs": probs,
                "faces_seen": int(n_faces), "speech_active": bool(speech),
                "dropped_frames": self.counters.dropped_frames,
                "latency_ms": {k: (round(v, 2) if v is not None else None) for k, v in lat.items()},
                "status": status}

    def summary(self) -> dict:
        """The whole stream's vote (a file's clip-level decision) and the counters."""
        emo = self.model.emotions[majority_vote(np.concatenate(self.all_votes))] if self.all_votes else None
        return {"summary": True, "emotion": emo, "votes": int(sum(len(v) for v in self.all_votes)),
                "counters": vars(self.counters).copy(), "faces": self.extractor.stats.as_dict()}
