"""The Python API (talkingface.api.LipSync) on tiny inputs, and --mode=infer running through the
same LipSyncer. Random-init Base weights: the point is timing, sizes and the code path, not quality."""
import numpy as np
import pytest

import run_talkingface
from talkingface import LipSync
from talkingface.inference import pipeline
from talkingface.utils.audio import load_audio, n_video_frames_for_audio
from talkingface.utils.errors import ConfigError, InputError
from talkingface.utils.video import probe_video, read_frames


@pytest.fixture(scope="module")
def lipsync(random_base_checkpoint):
    return LipSync("HyperLipsBase", checkpoint=random_base_checkpoint["path"], dataset="demo", device="cpu")


def test_file_in_file_out(lipsync, lipsync_media, tmp_path):
    out = tmp_path / "out.mp4"
    assert lipsync(lipsync_media["video"], lipsync_media["audio"], out) == str(out)
    info = probe_video(out)
    n_expected = n_video_frames_for_audio(len(load_audio(lipsync_media["audio"])))
    assert info.has_audio and info.n_frames == n_expected  # as long as the audio (ping-pong loop)
    assert (info.width, info.height) == (480, 270) and abs(info.fps - 25) < 1e-3
    assert lipsync.output_size == 128 and str(lipsync.device) == "cpu"


def test_frames_in_memory_are_the_file_pipeline(lipsync, lipsync_media, monkeypatch):
    frames = read_frames(lipsync_media["video"], fps=25)
    wav = load_audio(lipsync_media["audio"])
    loads = []
    monkeypatch.setattr(pipeline, "load_inference_networks", lambda *a: loads.append(a))  # loaded already
    seen = []
    out = lipsync(frames, wav, progress=lambda stage, done, total: seen.append((stage, done, total)))
    from_files = lipsync.run(lipsync_media["video"], lipsync_media["audio"]).frames
    assert not loads
    assert len(out) == n_video_frames_for_audio(len(wav)) == len(from_files)
    assert all(a.shape == (270, 480, 3) and a.dtype == np.uint8 for a in out)
    assert all(np.array_equal(a, b) for a, b in zip(out, from_files))
    assert max(np.abs(a.astype(int) - frames[0]).max() for a in out[:1]) > 0  # the mouth was generated
    assert seen[-1] == ("lip-sync", len(out), len(out))
    # 48 kHz stereo samples are averaged and resampled to 16 kHz: the same length of output
    stereo = np.repeat(np.interp(np.arange(len(wav) * 3) / 3, np.arange(len(wav)), wav)[:, None], 2, axis=1)
    assert len(lipsync(frames[:1], stereo, sample_rate=48000, infer_batch_size=4)) == len(out)


def test_integer_pcm_gives_the_frames_of_the_same_float_audio(lipsync, lipsync_media):
    """int16 (and int32, 8-bit unsigned) samples are scaled as ffmpeg decodes PCM, at any rate."""
    frames = read_frames(lipsync_media["video"], fps=25)[:3]
    wav = load_audio(lipsync_media["audio"])
    for rate in (16000, 8000):
        float_wav = wav if rate == 16000 else wav[::2].copy()
        pcm16 = np.clip(np.round(float_wav * 32768), -32768, 32767).astype(np.int16)
        as_float = lipsync(frames, pcm16.astype(np.float32) / 32768, sample_rate=rate)
        assert all(np.array_equal(a, b) for a, b in zip(lipsync(frames, pcm16, sample_rate=rate), as_float))
        pcm32 = pcm16.astype(np.int32) << 16  # the same sound as 32-bit PCM
        assert all(np.array_equal(a, b) for a, b in zip(lipsync(frames, pcm32, sample_rate=rate), as_float))
    pcm8 = (np.round(wav * 127) + 128).astype(np.uint8)  # 8-bit wav: offset binary
    as_float = lipsync(frames, (pcm8.astype(np.float32) - 128) / 128)
    assert all(np.array_equal(a, b) for a, b in zip(lipsync(frames, pcm8), as_float))


def test_bad_inputs_are_one_line_errors(lipsync, lipsync_media, tmp_path):
    wav = load_audio(lipsync_media["audio"])
    cases = [
        (lambda: lipsync([np.zeros((8, 8), np.uint8)], wav), InputError, "BGR uint8"),
        (lambda: lipsync([], wav), InputError, "no frames"),
        (lambda: lipsync(lipsync_media["video"], np.zeros(0, np.float32)), InputError, "lasts 0.000 s"),
        (lambda: lipsync(5, wav), InputError, "video must be a file path, or frames"),
        (lambda: lipsync(None, wav), InputError, "video must be a file path, or frames"),
        (lambda: lipsync(lipsync_media["video"], None), InputError, "array of numbers"),
        (lambda: lipsync(lipsync_media["video"], np.array(["0.1"] * 4000)), InputError, "array of numbers"),
        (lambda: lipsync(lipsync_media["video"], np.full(4000, np.nan, np.float32), sample_rate=8000), InputError,
         "NaN"),
        (lambda: lipsync(lipsync_media["video"], wav, sample_rate=0), InputError, "sample_rate"),
        (lambda: lipsync(lipsync_media["video"], wav, sample_rate=-8000), InputError, "sample_rate"),
        (lambda: lipsync([np.zeros((8, 8, 3), np.uint8)], wav, fps=float("nan")), InputError, "frame rate"),
        (lambda: lipsync([np.zeros((8, 8, 3), np.uint8)], wav, fps="25"), InputError, "frame rate"),
        (lambda: lipsync(lipsync_media["noface"], lipsync_media["audio"], tmp_path / "o.mp4"), InputError, "face"),
        (lambda: lipsync(lipsync_media["video"], wav, infer_batch_szie=4), ConfigError, "infer_batch_szie"),
        (lambda: lipsync(lipsync_media["video"], wav, infer_batch_size=0), ConfigError, "infer_batch_size"),
    ]
    for call, error, text in cases:
        with pytest.raises(error, match=text) as info:
            call()
        assert "\n" not in str(info.value)
    assert not (tmp_path / "o.mp4").exists()


def test_cli_infer_runs_the_api_pipeline(lipsync, lipsync_media, random_base_checkpoint, tmp_path, monkeypatch):
    runs = []
    real_run = pipeline.LipSyncer.run
    monkeypatch.setattr(pipeline.LipSyncer, "run", lambda self, *a, **k: runs.append(a) or real_run(self, *a, **k))
    cli_out, api_out = tmp_path / "cli.mp4", tmp_path / "api.mp4"
    code = run_talkingface.main(["--model=HyperLipsBase", "--dataset=demo", "--mode=infer", "--device=cpu",
                                 f"--video={lipsync_media['video']}", f"--audio={lipsync_media['audio']}",
                                 f"--output={cli_out}", f"--checkpoint={random_base_checkpoint['path']}",
                                 f"--results_root={tmp_path / 'results'}"])
    assert code == 0 and len(runs) == 1
    lipsync(lipsync_media["video"], lipsync_media["audio"], api_out)
    cli_frames, api_frames = read_frames(cli_out), read_frames(api_out)
    assert len(cli_frames) == len(api_frames) > 0
    assert all(np.array_equal(a, b) for a, b in zip(cli_frames, api_frames))
