"""talkingface.utils.audio: decoding through ffmpeg, the HyperLips mel, per-frame mel chunks."""
import numpy as np
import pytest
import soundfile as sf

from talkingface.utils import audio
from talkingface.utils.errors import InputError
from talkingface.utils.ffmpeg import ffmpeg_exe


def _reference_mel(wav):
    """The HyperLips mel (docs/architecture.md) written independently with numpy's FFT (only the filterbank shared)."""
    import librosa

    x = np.asarray(wav, dtype=np.float64)
    x = np.append(x[0], x[1:] - 0.97 * x[:-1])  # pre-emphasis, first sample kept
    x = np.pad(x, 400)  # centred frames, constant (zero) padding
    n_frames = 1 + (len(x) - 800) // 200
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(800) / 800)  # periodic hann
    frames = np.stack([x[i * 200:i * 200 + 800] * window for i in range(n_frames)], axis=1)
    magnitude = np.abs(np.fft.rfft(frames, axis=0))
    basis = librosa.filters.mel(sr=16000, n_fft=800, n_mels=80, fmin=55, fmax=7600, norm="slaney",
                                htk=False)
    db = 20 * np.log10(np.maximum(1e-5, basis @ magnitude)) - 20
    return np.clip(8 * (db + 100) / 100 - 4, -4, 4)


def test_mel_matches_independent_reference_and_is_80_per_second():
    rng = np.random.default_rng(0)
    t = np.arange(3 * 16000) / 16000
    wav = (0.3 * np.sin(2 * np.pi * 440 * t) + 0.05 * rng.standard_normal(t.size)).astype(np.float32)
    mel = audio.melspectrogram(wav)
    assert mel.dtype == np.float32
    assert mel.shape == (80, 3 * 80 + 1)  # len//200 + 1 centred frames
    np.testing.assert_allclose(mel, _reference_mel(wav), atol=1e-4)


def test_mel_of_sine_peaks_at_its_frequency_and_silence_is_minus_4():
    import librosa

    t = np.arange(16000) / 16000
    mel = audio.melspectrogram((0.5 * np.sin(2 * np.pi * 1000 * t)).astype(np.float32))
    centres = librosa.mel_frequencies(n_mels=82, fmin=55, fmax=7600)[1:-1]
    peak = int(np.argmax(mel[:, 40]))
    assert abs(centres[peak] - 1000) < 100
    assert mel.max() <= 4 and mel.min() >= -4
    silence = audio.melspectrogram(np.zeros(8000, dtype=np.float32))
    assert silence.shape == (80, 41) and np.all(silence == -4)


@pytest.mark.filterwarnings("ignore:n_fft=800 is too large:UserWarning")  # librosa on the 799-sample case
def test_mel_is_the_official_librosa_pipeline_bit_for_bit():
    """numpy alone (no librosa or scipy.signal to import: seconds per process) gives the same bits as
    the official lfilter -> librosa.stft -> librosa.filters.mel pipeline, filterbank included."""
    import librosa
    from scipy.signal import lfilter

    rng = np.random.default_rng(3)
    for wav in ((0.2 * rng.standard_normal(16000 * 3 + 77)).astype(np.float32), rng.standard_normal(799)):
        emphasized = lfilter([1.0, -0.97], [1.0], wav.astype(np.float64))
        stft = librosa.stft(y=emphasized, n_fft=800, hop_length=200, win_length=800, window="hann", center=True,
                            pad_mode="constant")
        basis = librosa.filters.mel(sr=16000, n_fft=800, n_mels=80, fmin=55, fmax=7600)
        assert np.array_equal(audio._mel_basis(), basis)
        db = 20.0 * np.log10(np.maximum(1e-5, np.dot(basis, np.abs(stft)))) - 20.0
        official = np.clip(8.0 * ((db + 100.0) / 100.0) - 4.0, -4.0, 4.0).astype(np.float32)
        assert np.array_equal(audio.melspectrogram(wav), official)


def test_mel_of_int16_pcm_equals_float():
    wav = (0.25 * np.sin(np.arange(4000) / 7)).astype(np.float32)
    pcm = np.round(wav * 32767).astype(np.int16)
    # int16 PCM is scaled by 1/32768: its mel is the independent reference's mel of pcm / 32768,
    # and (tighter: the scale exactly) the float path's
    np.testing.assert_allclose(audio.melspectrogram(pcm), _reference_mel(pcm / 32768), atol=1e-4)
    np.testing.assert_allclose(audio.melspectrogram(pcm), audio.melspectrogram(pcm / 32768), atol=1e-6)


def test_mel_rejects_empty_and_multichannel():
    with pytest.raises(InputError):
        audio.melspectrogram(np.zeros(0, dtype=np.float32))
    with pytest.raises(InputError):
        audio.melspectrogram(np.zeros((2, 100), dtype=np.float32))


def test_mel_filterbank_is_cached():
    assert audio._mel_basis() is audio._mel_basis()
    assert audio._mel_basis().shape == (80, 401)


def test_load_stereo_48k_wav_is_mono_mean_at_16k(tmp_path):
    t = np.arange(48000 * 2) / 48000
    left = 0.4 * np.sin(2 * np.pi * 300 * t)
    right = 0.2 * np.sin(2 * np.pi * 300 * t)
    path = tmp_path / "stereo48k.wav"
    sf.write(str(path), np.stack([left, right], axis=1), 48000, subtype="FLOAT")
    wav = audio.load_audio(path)
    assert wav.dtype == np.float32 and wav.ndim == 1
    assert abs(len(wav) - 32000) <= 2
    # The channel mean (amplitude 0.3), not ffmpeg's default 1/sqrt(2) mix (0.42).
    assert abs(np.abs(wav[1000:-1000]).max() - 0.3) < 0.01


def test_load_real_stereo_44k_drive_wav(samples_dir):
    import librosa

    path = samples_dir / "video4_drive.wav"  # 44.1 kHz stereo
    info = sf.info(str(path))
    assert info.samplerate == 44100 and info.channels == 2
    wav = audio.load_audio(path)
    assert abs(len(wav) / 16000 - info.duration) < 1e-3
    # Same samples as librosa.load (the official loader): mean downmix + soxr_hq resampling.
    stereo, _ = sf.read(str(path), dtype="float32", always_2d=True)
    expected = librosa.resample(stereo.mean(axis=1), orig_sr=44100, target_sr=16000, res_type="soxr_hq")
    n = min(len(wav), len(expected))
    assert np.abs(wav[:n] - expected[:n]).max() < 1e-3


def test_load_audio_track_of_mp4(samples_dir):
    wav = audio.load_audio(samples_dir / "video1.mp4")
    assert abs(len(wav) / 16000 - 10.87) < 0.05
    assert np.abs(wav).max() > 0.01


def test_load_mp3(tmp_path):
    import subprocess

    wav_path = tmp_path / "tone.wav"
    t = np.arange(22050 * 2) / 22050
    sf.write(str(wav_path), (0.3 * np.sin(2 * np.pi * 500 * t)).astype(np.float32), 22050)
    mp3 = tmp_path / "tone.mp3"
    proc = subprocess.run([ffmpeg_exe(), "-v", "error", "-i", str(wav_path), str(mp3)],
                          capture_output=True)
    if proc.returncode != 0:
        pytest.skip("this ffmpeg has no mp3 encoder")
    wav = audio.load_audio(mp3)
    assert abs(len(wav) / 16000 - 2.0) < 0.1  # mp3 adds encoder padding
    assert abs(np.abs(wav).max() - 0.3) < 0.03


def test_save_wav_round_trip(tmp_path):
    wav = (0.5 * np.sin(np.arange(16000) / 10)).astype(np.float32)
    path = tmp_path / "sub" / "a.wav"
    audio.save_wav(path, wav)
    back = audio.load_audio(path)
    assert len(back) == len(wav)
    assert np.abs(back - wav).max() < 2 / 32767
    assert [p.name for p in path.parent.iterdir()] == ["a.wav"]  # no temp file left


def _one_line_input_error(excinfo):
    message = str(excinfo.value)
    assert message and "\n" not in message
    return message


def test_load_audio_errors(tmp_path):
    with pytest.raises(InputError) as excinfo:
        audio.load_audio(tmp_path / "missing.wav")
    assert "not found" in _one_line_input_error(excinfo)

    empty = tmp_path / "empty.wav"
    empty.write_bytes(b"")
    with pytest.raises(InputError) as excinfo:
        audio.load_audio(empty)
    assert "empty" in _one_line_input_error(excinfo)

    corrupt = tmp_path / "corrupt.mp3"
    corrupt.write_bytes(np.random.default_rng(0).integers(0, 256, 4000, dtype=np.uint8).tobytes())
    with pytest.raises(InputError) as excinfo:
        audio.load_audio(corrupt)
    _one_line_input_error(excinfo)

    no_samples = tmp_path / "no_samples.wav"
    sf.write(str(no_samples), np.zeros(0, dtype=np.float32), 16000)
    with pytest.raises(InputError) as excinfo:
        audio.load_audio(no_samples)
    _one_line_input_error(excinfo)


def test_load_audio_of_video_without_sound(tmp_path):
    from talkingface.utils.video import VideoWriter

    path = tmp_path / "silent.mp4"
    with VideoWriter(path, 25) as writer:
        for _ in range(5):
            writer.write(np.zeros((32, 32, 3), dtype=np.uint8))
    with pytest.raises(InputError) as excinfo:
        audio.load_audio(path)
    assert "No audio stream" in _one_line_input_error(excinfo)


def test_mel_chunk_convention():
    mel = np.tile(np.arange(100, dtype=np.float32), (80, 1))  # column j holds the value j
    assert audio.mel_chunk(mel, 0).shape == (80, 16)
    assert audio.mel_chunk(mel, 0)[0, 0] == 0
    assert audio.mel_chunk(mel, 1)[0, 0] == 3  # int(80 * 1 / 25)
    assert audio.mel_chunk(mel, 5)[0, 0] == 16
    assert audio.mel_chunk(mel, 7, fps=30)[0, 0] == 18  # int(80 * 7 / 30) = int(18.67)
    last = audio.mel_chunk(mel, 30)  # start 96 would run past the end: right-aligned
    np.testing.assert_array_equal(last[0], np.arange(84, 100))
    short = audio.mel_chunk(mel[:, :10], 3)  # shorter than a chunk: padded with silence
    assert short.shape == (80, 16) and np.all(short[:, 10:] == -4) and short[0, 9] == 9
    with pytest.raises(InputError):
        audio.mel_chunk(mel, -1)


def test_frame_mel_chunks_match_mel_chunk():
    rng = np.random.default_rng(1)
    mel = rng.standard_normal((80, 200)).astype(np.float32)
    chunks = audio.frame_mel_chunks(mel, 62)
    assert chunks.shape == (62, 80, 16) and chunks.dtype == np.float32
    # frame k's chunk starts at column int(80 k / 25): 0, 3, 41, 182; frame 61's start (195) runs
    # past the 200 columns, so its chunk is the last 16 (184..199)
    for k, start in ((0, 0), (1, 3), (13, 41), (57, 182), (61, 184)):
        np.testing.assert_array_equal(chunks[k], mel[:, start:start + 16])
    np.testing.assert_array_equal(chunks[61], mel[:, -16:])
    assert audio.frame_mel_chunks(mel, 0).shape == (0, 80, 16)
