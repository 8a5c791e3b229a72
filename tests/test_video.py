"""Video/audio reading with PyAV: CREMA-D clips, a synthetic H.264/AAC mp4, and bad input."""
from __future__ import annotations

from pathlib import Path

import av
import numpy as np
import pytest

from edge.vision.video import VideoError, iter_frames, probe, read_audio, read_frames

FPS = 10
N_FRAMES = 10
SIZE = (48, 64)  # H, W
TONE_HZ = 440.0
AUDIO_RATE = 48000


def _write(path: Path, video: bool = True, audio: bool = True, video_frames: int = N_FRAMES) -> Path:
    """Tiny clip: ``video_frames`` flat grey frames (level 25 * i) at 10 fps, 1 s of stereo 440 Hz."""
    with av.open(str(path), "w") as c:
        if video:
            v = c.add_stream("libx264", rate=FPS)
            v.height, v.width = SIZE
            v.pix_fmt = "yuv420p"
        if audio:
            a = c.add_stream("aac", rate=AUDIO_RATE)
            a.layout = "stereo"
        if video:
            for i in range(video_frames):
                img = np.full(SIZE + (3,), 25 * i, np.uint8)
                for pk in v.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                    c.mux(pk)
            for pk in v.encode():
                c.mux(pk)
        if audio:
            t = np.arange(AUDIO_RATE) / AUDIO_RATE
            tone = (0.5 * np.sin(2 * np.pi * TONE_HZ * t)).astype(np.float32)
            for start in range(0, AUDIO_RATE, 1024):
                chunk = np.stack([tone[start:start + 1024]] * 2)
                f = av.AudioFrame.from_ndarray(np.ascontiguousarray(chunk), format="fltp", layout="stereo")
                f.sample_rate, f.pts = AUDIO_RATE, start
                for pk in a.encode(f):
                    c.mux(pk)
            for pk in a.encode():
                c.mux(pk)
    return path


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("clips")
    garbage = d / "garbage.mp4"
    garbage.write_bytes(np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes())
    good = _write(d / "av.mp4")
    truncated = d / "truncated.mp4"
    truncated.write_bytes(good.read_bytes()[:2000])
    return {
        "av": good,
        "video_only": _write(d / "video_only.mp4", audio=False),
        "audio_only": _write(d / "audio_only.m4a", video=False),
        # a video track with no packet (mkv keeps the empty track; mp4 drops it)
        "zero_frames": _write(d / "zero_frames.mkv", video_frames=0),
        "garbage": garbage,
        "truncated": truncated,
        "missing": d / "does_not_exist.mp4",
    }


# ----- synthetic H.264 / AAC mp4 -----
def test_synthetic_mp4_frames(clips):
    info = probe(clips["av"])
    assert (info.height, info.width, info.video_codec, info.audio_codec) == (*SIZE, "h264", "aac")
    assert info.fps == pytest.approx(FPS)
    frames = list(iter_frames(clips["av"]))
    assert len(frames) == N_FRAMES
    pts = np.array([p for p, _ in frames])
    np.testing.assert_allclose(pts - pts[0], np.arange(N_FRAMES) / FPS, atol=1e-6)
    for i, (_, f) in enumerate(frames):
        assert f.shape == SIZE + (3,) and f.dtype == np.uint8
        assert abs(float(f.mean()) - 25 * i) < 3  # flat grey level survives yuv420 + x264


def test_synthetic_mp4_decimation(clips):
    pts, frames = read_frames(clips["av"], every_n=3)
    assert len(frames) == 4  # decoded frames 0, 3, 6, 9
    np.testing.assert_allclose(pts - pts[0], [0.0, 0.3, 0.6, 0.9], atol=1e-6)
    pts, frames = read_frames(clips["av"], every_n=2, max_frames=3)
    assert frames.shape == (3,) + SIZE + (3,)
    np.testing.assert_allclose(pts - pts[0], [0.0, 0.2, 0.4], atol=1e-6)
    with pytest.raises(ValueError):
        iter_frames(clips["av"], every_n=0)
    with pytest.raises(ValueError):
        iter_frames(clips["av"], max_frames=0)


def test_synthetic_mp4_audio(clips):
    audio, sr = read_audio(clips["av"])
    assert sr == 16000 and audio.dtype == np.float32 and audio.ndim == 1
    assert abs(audio.size - sr) < 0.05 * sr  # 1 s, +- AAC priming/padding
    spectrum = np.abs(np.fft.rfft(audio))
    assert np.argmax(spectrum) * sr / audio.size == pytest.approx(TONE_HZ, abs=3)
    assert 0.4 < np.abs(audio).max() < 0.6  # stereo averaged, not summed


# ----- bad input: always VideoError (a ValueError) naming the file -----
@pytest.mark.parametrize("name", ["missing", "garbage", "truncated", "audio_only", "zero_frames"])
def test_bad_video(clips, name):
    path = clips[name]
    with pytest.raises(VideoError, match=path.name) as e:
        list(iter_frames(path))
    assert isinstance(e.value, ValueError)


@pytest.mark.parametrize("name", ["missing", "garbage", "truncated", "video_only"])
def test_bad_audio(clips, name):
    with pytest.raises(VideoError, match=clips[name].name):
        read_audio(clips[name])


def test_missing_track_raises_at_call(clips):
    """The file is checked when iter_frames is called, not at the first next()."""
    with pytest.raises(VideoError, match="no video track"):
        iter_frames(clips["audio_only"])


def test_audio_only_and_video_only_still_read_their_track(clips):
    assert read_audio(clips["audio_only"])[0].size > 0
    assert len(list(iter_frames(clips["video_only"]))) == N_FRAMES


# ----- CREMA-D clips (FLV: VP6 video, MP3 audio) -----
EMOTIONS = ("ANG", "DIS", "FEA", "HAP", "NEU", "SAD")


@pytest.mark.shared
@pytest.mark.parametrize("emotion", EMOTIONS)
def test_cremad_clip(cremad_dir, emotion):
    path = cremad_dir / f"1001_DFA_{emotion}_XX.flv"
    info = probe(path)
    assert (info.width, info.height, info.video_codec) == (480, 360, "vp6f")
    pts, frames = read_frames(path)
    assert frames.shape[1:] == (360, 480, 3) and frames.dtype == np.uint8
    assert len(frames) > 30
    step = np.diff(pts)
    assert (step > 0).all() and np.allclose(step, 1 / 30, atol=0.002)  # ~29.97 fps
    audio, sr = read_audio(path)
    assert sr == 16000 and audio.dtype == np.float32
    assert abs(audio.size / sr - (pts[-1] - pts[0])) < 0.2  # tracks cover the same time
    assert 0.01 < np.abs(audio).max() <= 1.0


@pytest.mark.shared
def test_cremad_every_n_is_a_subset(cremad_dir):
    path = cremad_dir / "1001_DFA_ANG_XX.flv"
    pts, frames = read_frames(path)
    pts3, frames3 = read_frames(path, every_n=3, max_frames=5)
    np.testing.assert_array_equal(pts3, pts[:15:3])
    np.testing.assert_array_equal(frames3, frames[:15:3])
