"""The numpy front end: synthetic signals, TF's own functions, and the YAMNet TFLite internals."""
import numpy as np
import pytest

from edge.audio.features import (
    dft_matrices,
    log_mel,
    mel_matrix,
    pad_waveform,
    patches_from_log_mel,
    waveform_to_log_mel,
    waveform_to_patches,
    windowed_frames,
)
from edge.params import Params

P = Params()


def sine(f_hz=440.0, seconds=2.0, amp=0.5):
    t = np.arange(int(seconds * P.sample_rate)) / P.sample_rate
    return (amp * np.sin(2 * np.pi * f_hz * t)).astype(np.float32)


def test_sine_peaks_in_its_mel_band():
    lm = log_mel(sine(1000.0))
    centers = np.linspace(0, 8000, 257) @ (mel_matrix() / mel_matrix().sum(0))
    assert abs(centers[lm.mean(0).argmax()] - 1000.0) < 60.0


def test_silence_hits_the_log_floor():
    lm = log_mel(np.zeros(16000, np.float32))
    np.testing.assert_allclose(lm, np.log(P.log_offset), atol=1e-6)


@pytest.mark.parametrize("n, patches", [(1, 1), (15600, 1), (15601, 2), (15600 + 7680, 2), (15600 + 7681, 3)])
def test_padding_and_patch_count_follow_yamnet(n, patches):
    w = pad_waveform(np.ones(n, np.float32))
    assert len(w) >= 15600 and (len(w) - 15600) % 7680 == 0
    assert len(waveform_to_patches(np.full(n, 0.1, np.float32))) == patches


def test_short_clip_is_padded_to_one_patch():
    x = waveform_to_patches(sine(seconds=0.3))
    assert x.shape == (1, 96, 64)
    assert np.allclose(x[0, -20:], np.log(P.log_offset))  # the padded tail is silence


def test_patch_hop_parameter():
    lm = waveform_to_log_mel(sine(seconds=3.0))
    a = patches_from_log_mel(lm, P, 48)
    b = patches_from_log_mel(lm, P, 24)
    assert len(b) == 2 * len(a) - 1
    np.testing.assert_array_equal(a[1], b[2])
    with pytest.raises(ValueError):
        patches_from_log_mel(lm, P, 0)


def test_matches_tensorflow_signal():
    tf = pytest.importorskip("tensorflow")
    ref = tf.signal.linear_to_mel_weight_matrix(64, 257, 16000, 125.0, 7500.0).numpy()
    np.testing.assert_allclose(mel_matrix(), ref, atol=2e-5)  # TF builds it in float32
    rng = np.random.default_rng(0)
    w = rng.normal(0, 0.1, 16000).astype(np.float32)
    stft = tf.abs(tf.signal.stft(w, 400, 160, 512)).numpy()
    ref_lm = np.log(stft @ ref + 0.001)
    np.testing.assert_allclose(log_mel(w), ref_lm, atol=2e-4)


@pytest.fixture(scope="module")
def yamnet_internals(yamnet_tflite):
    """Run Google's yamnet.tflite on a real speech segment, keeping every tensor."""
    from ai_edge_litert.interpreter import Interpreter

    from edge.audio.io import load_audio
    from training.paths import ravdess_speech_dir
    f = ravdess_speech_dir() / "Actor_01" / "03-01-05-01-01-01-01.flac"
    if not f.is_file():
        pytest.skip(f"{f} is absent (shared data)")
    seg = load_audio(f)[16000:16000 + 15600]
    it = Interpreter(model_path=str(yamnet_tflite), experimental_preserve_all_tensors=True)
    it.allocate_tensors()
    it.set_tensor(it.get_input_details()[0]["index"], seg[None])
    it.invoke()
    by_name = {d["name"]: d for d in it.get_tensor_details()}

    def tensor(prefix):
        d = by_name.get(prefix) or next(d for n, d in by_name.items() if n.startswith(prefix))
        return it.get_tensor(d["index"]), d
    return seg, tensor


def test_windowed_frames_match_tflite(yamnet_internals):
    seg, tensor = yamnet_internals
    frames, _ = tensor("yamnet_frames/tf_op_layer_Mul/Mul")      # (96, 400) float
    assert frames.shape == (96, 400)
    assert np.abs(windowed_frames(seg) - frames).max() <= 1e-6


def _within_half_step(mine: np.ndarray, q: np.ndarray, detail: dict):
    from training.yamnet import dequantize_constant
    scales = np.asarray(detail["quantization_parameters"]["scales"])
    deq = dequantize_constant(q, detail)
    err = np.abs(deq - mine) / scales[:, None]                   # rows are the quantized channels
    assert err.max() <= 0.5 + 1e-3, f"max error {err.max():.4f} quantization steps"


def test_dft_and_mel_matrices_match_tflite(yamnet_internals):
    _, tensor = yamnet_internals
    re, im = dft_matrices()                                      # (400, 257) each
    q_re, d_re = tensor("yamnet_frames/tf_op_layer_MatMul/MatMul")
    q_im, d_im = tensor("yamnet_frames/tf_op_layer_MatMul_1/MatMul_1")
    assert q_re.shape == (257, 512) and q_re.dtype == np.int8
    # the tflite frames are zero-padded 400 -> 512: only the first 400 columns ever multiply data
    _within_half_step(re.T, q_re[:, :400], d_re)
    _within_half_step(-im.T, q_im[:, :400], d_im)                # tflite uses +sin; magnitude is the same
    q_mel, d_mel = tensor("yamnet_frames/tf_op_layer_MatMul_2/MatMul_2")
    _within_half_step(mel_matrix().T, q_mel, d_mel)


def test_log_mel_close_to_tflite_outside_the_floor(yamnet_internals):
    seg, tensor = yamnet_internals
    ref, _ = tensor("Identity_1")                                # (96, 64) tflite log-mel (quantized matrices)
    mine = log_mel(seg)
    loud = ref > np.log(P.log_offset) + 3.0                      # away from the log floor
    diff = np.abs(mine - ref)
    # measured on this segment: median 0.009, 99th percentile of non-floor bins ~0.2, max ~0.6
    assert np.median(diff) < 0.05
    assert np.percentile(diff[loud], 99) < 0.3 and diff[loud].max() < 1.0
