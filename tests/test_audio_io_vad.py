"""Loading any rate/channel count, VAD trimming, and bad audio input."""
import numpy as np
import pytest

from edge.audio.io import AudioError, load_audio
from edge.audio.vad import SilenceError, trim_silence, voiced_span
from edge.params import Params

P = Params()


def write_wav(path, data, rate, subtype="PCM_16"):
    sf = pytest.importorskip("soundfile")
    sf.write(str(path), data, rate, subtype=subtype)
    return path


def test_resamples_and_downmixes(tmp_path):
    t = np.arange(48000) / 48000
    left = 0.5 * np.sin(2 * np.pi * 300 * t)
    stereo = np.stack([left, np.zeros_like(left)], axis=1)
    w = load_audio(write_wav(tmp_path / "s.wav", stereo, 48000))
    assert w.dtype == np.float32 and w.ndim == 1 and abs(len(w) - 16000) <= 1
    assert abs(np.abs(w[1000:-1000]).max() - 0.25) < 0.01        # channels averaged
    w8 = load_audio(write_wav(tmp_path / "a8k.wav", left[::6], 8000))
    assert abs(len(w8) - 16000) <= 2


def test_48k_originals_match_the_shared_16k_flac(ravdess_48k, ravdess_speech):
    """The shared 16 kHz FLACs were made with soxr VHQ (+ mono average): our loader agrees to 16-bit level."""
    for f in sorted(ravdess_48k.glob("*.wav")):
        actor = int(f.stem.split("-")[-1])
        ref = load_audio(ravdess_speech / f"Actor_{actor:02d}" / (f.stem + ".flac"))
        mine = load_audio(f)
        assert len(mine) == len(ref), f.name
        assert np.abs(mine - ref).max() < 2e-3, f.name


@pytest.mark.parametrize("content, match", [(b"", "empty"), (b"not audio at all" * 50, "cannot decode|no audio"),
                                            (None, "no such file")])
def test_bad_files_name_the_file(tmp_path, content, match):
    f = tmp_path / "clip.flac"
    if content is not None:
        f.write_bytes(content)
    with pytest.raises(AudioError, match=match) as e:
        load_audio(f)
    assert "clip.flac" in str(e.value)


def test_truncated_flac(tmp_path, ravdess_speech):
    src = next(ravdess_speech.glob("Actor_01/*.flac")).read_bytes()
    f = tmp_path / "trunc.flac"
    f.write_bytes(src[:200])
    with pytest.raises(AudioError, match="trunc.flac"):
        load_audio(f)


def test_nan_samples_are_refused(tmp_path):
    x = np.zeros(16000, np.float32)
    x[100] = np.nan
    with pytest.raises(AudioError, match="NaN"):
        load_audio(write_wav(tmp_path / "nan.wav", x, 16000, "FLOAT"))


def test_vad_trims_only_the_ends():
    sr = P.sample_rate
    rng = np.random.default_rng(0)
    speech = 0.3 * rng.standard_normal(sr).astype(np.float32)
    x = np.concatenate([np.zeros(sr), speech, np.zeros(sr // 2), speech, np.zeros(sr)]).astype(np.float32)
    x += 1e-5 * rng.standard_normal(len(x)).astype(np.float32)
    trimmed, (s, e) = trim_silence(x)
    margin = int(P.vad_margin_seconds * sr)
    assert abs(s - (sr - margin)) <= 400 and abs(e - (int(3.5 * sr) + margin)) <= 400
    assert len(trimmed) == e - s                                  # inner pause kept


def test_silence_only_raises():
    with pytest.raises(SilenceError, match="quiet.wav"):
        trim_silence(np.zeros(16000, np.float32), source="quiet.wav")
    assert voiced_span(np.full(100, 1e-6, np.float32)) is None


def test_vad_on_real_clips(ravdess_speech):
    files = sorted(ravdess_speech.glob("Actor_0[12]/*.flac"))[:20]
    removed = []
    for f in files:
        w = load_audio(f)
        t, _ = trim_silence(w, source=str(f))
        assert 0.8 * P.sample_rate < len(t) < len(w)
        removed.append(1 - len(t) / len(w))
    assert 0.2 < np.mean(removed) < 0.6                           # RAVDESS: ~1 s of silence each end
