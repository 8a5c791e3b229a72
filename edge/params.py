"""Every constant of the product, in one frozen dataclass.

Training-time contracts (changing them invalidates trained models and feature caches):
the audio front end (sample rate, STFT, mel, patch size), the face crop size, the
emotion order and the fold -> actor map. Run-time tunables (may change on a device
without retraining): patch hop, VAD threshold, key-face radius, decision window.

    >>> from edge.params import Params
    >>> p = Params()
    >>> p.patch_frames, p.mel_bands
    (96, 64)
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass

# RAVDESS emotion codes 01..08, in this order (index = code - 1).
EMOTIONS: tuple[str, ...] = (
    "neutral", "calm", "happy", "sad", "angry", "fearful", "disgust", "surprised",
)

# Actor-independent 4-fold CV: 6 test actors a fold, 3 male (odd) + 3 female (even).
FOLDS: tuple[tuple[int, ...], ...] = (
    (1, 2, 3, 4, 5, 6),
    (7, 8, 9, 10, 11, 12),
    (13, 14, 15, 16, 17, 18),
    (19, 20, 21, 22, 23, 24),
)


@dataclass(frozen=True)
class Params:
    # --- audio front end (training-time contract; YAMNet's own values) ---
    sample_rate: int = 16000             # Hz
    stft_window_seconds: float = 0.025   # 400 samples, periodic Hann
    stft_hop_seconds: float = 0.010      # 160 samples
    mel_bands: int = 64
    mel_min_hz: float = 125.0
    mel_max_hz: float = 7500.0           # HTK mel scale
    log_offset: float = 0.001            # log(mel + log_offset)
    patch_window_seconds: float = 0.96   # 96 frames
    # --- run-time tunables ---
    patch_hop_seconds: float = 0.48      # 48 frames between patch starts
    vad_threshold_db: float = -40.0      # frame kept if energy > max energy + this (dB)
    vad_frame_seconds: float = 0.025     # VAD analysis frame
    vad_hop_seconds: float = 0.010
    vad_margin_seconds: float = 0.10     # speech kept before/after the first/last voiced frame
    vad_abs_floor_db: float = -70.0      # dBFS: below this a whole clip counts as silence
    # --- truncated YAMNet (training-time contract) ---
    yamnet_cut: str = "activation_3"     # 4th ReLU; output 24x16x64 per patch
    # --- face branch (training-time contract) ---
    face_size: int = 60                  # px, square grey crop
    key_face_radius: int = 4             # window of 2r+1 = 9 faces, shift r
    faces_per_patch: int = 5             # paper: 5 faces drawn per spectrogram patch
    # --- classes and folds (training-time contract) ---
    emotions: tuple[str, ...] = EMOTIONS
    folds: tuple[tuple[int, ...], ...] = FOLDS
    # --- optimisation (paper) ---
    learning_rate: float = 1e-3          # Adam, categorical cross-entropy

    # ----- derived values -----
    @property
    def stft_window_samples(self) -> int:
        return int(round(self.sample_rate * self.stft_window_seconds))  # 400

    @property
    def stft_hop_samples(self) -> int:
        return int(round(self.sample_rate * self.stft_hop_seconds))  # 160

    @property
    def fft_length(self) -> int:
        return 2 ** int(np_ceil_log2(self.stft_window_samples))  # 512

    @property
    def spectrogram_bins(self) -> int:
        return self.fft_length // 2 + 1  # 257

    @property
    def patch_frames(self) -> int:
        return int(round(self.patch_window_seconds / self.stft_hop_seconds))  # 96

    @property
    def patch_hop_frames(self) -> int:
        return int(round(self.patch_hop_seconds / self.stft_hop_seconds))  # 48

    @property
    def patch_hop_samples(self) -> int:
        return self.patch_hop_frames * self.stft_hop_samples  # 7680

    @property
    def patch_samples(self) -> int:
        """Samples that make exactly one patch: 0.96 + 0.025 - 0.010 s = 15600."""
        return int(round(self.sample_rate * (self.patch_window_seconds + self.stft_window_seconds
                                             - self.stft_hop_seconds)))

    @property
    def num_classes(self) -> int:
        return len(self.emotions)

    @property
    def key_face_window(self) -> int:
        return 2 * self.key_face_radius + 1  # 9

    def fold_of_actor(self, actor: int) -> int:
        for i, actors in enumerate(self.folds):
            if actor in actors:
                return i
        raise ValueError(f"actor {actor} is in no fold of {self.folds}")

    def frontend_key(self) -> str:
        """Hash of the values a cached log-mel depends on (cache key part)."""
        keys = ("sample_rate", "stft_window_seconds", "stft_hop_seconds", "mel_bands",
                "mel_min_hz", "mel_max_hz", "log_offset", "vad_threshold_db",
                "vad_frame_seconds", "vad_hop_seconds", "vad_margin_seconds", "vad_abs_floor_db")
        d = {k: getattr(self, k) for k in keys}
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]

    def replace(self, **changes) -> "Params":
        return dataclasses.replace(self, **changes)


def np_ceil_log2(n: int) -> int:
    """ceil(log2(n)) for a positive int, without floating point."""
    return (int(n) - 1).bit_length()
