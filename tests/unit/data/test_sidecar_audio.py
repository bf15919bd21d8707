"""Videos without an audio track and their speech in a same-named file beside them (clip01.mp4 +
clip01.wav): finding it, preprocessing with it (kept, resumed, redone when it changes), inference."""
import logging
import os

import numpy as np
import pytest
import soundfile as sf
import torch

from talkingface.config import Config
from talkingface.data.dataprocess import demo
from talkingface.data.dataprocess.hyperlipsbase_process import HyperLipsBasePreprocessor
from talkingface.data.dataset.clip import Clip, read_filelist
from talkingface.utils.audio import audio_source_for, has_audio_stream, load_audio, save_wav, sidecar_audio
from talkingface.utils.errors import InputError
from talkingface.utils.video import VideoWriter, probe_video


@pytest.fixture
def log_text(caplog):
    """What the talkingface loggers say at INFO and above (also when an earlier test stopped their
    propagation to the root logger)."""
    logger = logging.getLogger("talkingface")
    level = logger.level
    logger.addHandler(caplog.handler)
    logger.setLevel(logging.INFO)
    yield lambda: caplog.text
    logger.removeHandler(caplog.handler)
    logger.setLevel(level)


def write_video(path, n_frames, speech_seconds=None, size=256):
    """A demo-face video of n_frames at 25 fps; with speech_seconds, an audio track of that length."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    photo = demo.astronaut_bgr()
    openness = np.random.default_rng(0).uniform(0, 1, n_frames)
    track = None
    if speech_seconds is not None:
        track = str(path) + ".track.wav"
        save_wav(track, demo.synthesize_speech(speech_seconds, np.random.default_rng(5)))
    with VideoWriter(path, 25, audio_path=track) as writer:
        for o in openness:
            writer.write(demo.render_frame(photo, float(o), (0.0, 0.0), size))
    if track:
        os.remove(track)
    return str(path)


def write_speech(path, seconds, seed=1):
    wav = demo.synthesize_speech(seconds, np.random.default_rng(seed))
    save_wav(path, wav)
    return str(path)


def test_audio_source_prefers_own_track_then_sidecar(tmp_path):
    silent = write_video(tmp_path / "clip01.mp4", 5, size=64)
    voiced = write_video(tmp_path / "voiced.mp4", 5, speech_seconds=0.2, size=64)
    assert not has_audio_stream(silent) and has_audio_stream(voiced)
    # No sidecar: the video itself, whose decoding says what to do.
    assert sidecar_audio(silent) is None and audio_source_for(silent) == silent
    with pytest.raises(InputError) as info:
        load_audio(silent)
    assert "No audio stream" in str(info.value) and "clip01.wav" in str(info.value)
    mp3 = str(tmp_path / "clip01.MP3")
    os.symlink(write_speech(tmp_path / "speech.wav", 0.2), mp3)
    assert audio_source_for(silent) == mp3  # upper-case extensions count
    wav = write_speech(tmp_path / "clip01.wav", 0.2)
    assert sidecar_audio(silent) == wav == audio_source_for(silent)  # .wav before .mp3
    assert audio_source_for(silent, has_audio=True) == silent
    write_speech(tmp_path / "voiced.wav", 0.2)
    assert audio_source_for(voiced) == voiced  # its own track wins
    assert audio_source_for(wav) == wav
    assert audio_source_for(tmp_path / "missing.mp4") == str(tmp_path / "missing.mp4")


def mead_config(tmp_path):
    return Config(model="HyperLipsBase", dataset="MEAD", config_dict=dict(
        data_root=str(tmp_path / "data"), preprocessed_root=str(tmp_path / "pre"), num_preprocess_workers=1,
        val_ratio=0.0, test_ratio=0.0))


def test_preprocessing_takes_the_sidecar_and_redoes_the_clip_when_it_changes(tmp_path, log_text):
    data = tmp_path / "data" / "speaker"
    write_video(data / "talk.mp4", 20)
    sidecar = write_speech(data / "talk.wav", 1.0)  # longer than the video: cut to its 20 frames
    write_video(data / "mute.mp4", 20)
    config = mead_config(tmp_path)
    pre = HyperLipsBasePreprocessor(config)
    report = pre.run()
    assert set(report) == {"speaker/talk.mp4", "speaker/mute.mp4"}  # the wav is no video of its own
    entry = report["speaker/talk.mp4"]
    assert entry["status"] == "ok" and entry["audio_source"] == "talk.wav" and entry["n_frames"] == 20
    assert report["speaker/mute.mp4"]["reason"] == "no_audio_stream"
    assert "no same-named audio file beside it" in report["speaker/mute.mp4"]["detail"]
    assert "1 videos without an audio track took their audio from a same-named file" in log_text()
    assert [os.path.basename(d) for d in read_filelist(config, "train")] == ["speaker__talk"]
    clip = Clip(os.path.join(config["preprocessed_root"], "speaker__talk"))
    kept, sr = sf.read(clip.audio_path, dtype="float32")
    assert sr == 16000 and len(kept) == 20 * 640
    np.testing.assert_allclose(kept, load_audio(sidecar)[:20 * 640], atol=1.5 / 32767)
    assert clip.meta["audio_source"] == os.path.abspath(sidecar)
    assert not pre.is_stale()
    assert pre.run()["speaker/talk.mp4"].get("reused") and not pre.is_stale()

    # A new sidecar redoes the clip with the new speech.
    write_speech(sidecar, 1.0, seed=2)
    os.utime(sidecar, ns=(0, os.stat(sidecar).st_mtime_ns + 10**9))
    assert pre.is_stale()
    again = pre.run()["speaker/talk.mp4"]
    assert again["status"] == "ok" and not again.get("reused")
    kept, _ = sf.read(clip.audio_path, dtype="float32")
    np.testing.assert_allclose(kept, load_audio(sidecar)[:20 * 640], atol=1.5 / 32767)
    # Without it the clip cannot be made: the data is stale, and the run says why.
    os.remove(sidecar)
    assert pre.is_stale()
    with pytest.raises(InputError, match="no usable clip"):
        pre.run()


def test_inference_drives_with_the_sidecar_of_a_silent_audio_video(tmp_path, log_text):
    from talkingface.quick_start.infer_mode import run_inference
    from talkingface.model import build_network
    from talkingface.utils.checkpoint import save_checkpoint_file
    torch.manual_seed(0)
    checkpoint = tmp_path / "checkpoint_step000000001.pth"
    save_checkpoint_file({"state_dict": build_network("HyperLipsBase").state_dict(), "model": "HyperLipsBase"},
                         checkpoint)
    face = write_video(tmp_path / "face.mp4", 10, speech_seconds=0.4)  # its own audio must not be used
    drive = write_video(tmp_path / "drive.mp4", 5, size=64)
    speech = write_speech(tmp_path / "drive.wav", 0.6)
    output = tmp_path / "out.mp4"
    config = Config(model="HyperLipsBase", dataset="demo", config_dict=dict(
        mode="infer", device="cpu", video=face, audio=drive, output=str(output), checkpoint=str(checkpoint)))
    result = run_inference(config)
    assert f"{drive} has no audio track: using drive.wav beside it" in log_text()
    assert result.n_frames == 15 and probe_video(output).n_frames == 15
    expected, got = load_audio(speech), load_audio(output)
    n = min(len(expected), len(got))
    assert abs(len(got) - len(expected)) < 0.05 * 16000
    assert np.corrcoef(expected[:n], got[:n])[0, 1] > 0.9  # the output carries the sidecar's speech
