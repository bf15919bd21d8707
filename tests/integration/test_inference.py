"""--mode=infer end to end on cuts of the real sample clips, with random-init network weights.

Random weights draw a grey blob where the mouth is: enough to check timing, streams, size, that the
pixels outside the mouth region are the input's, ping-pong looping, still images and the errors.
"""
import subprocess

import cv2
import numpy as np
import pytest
import torch

from talkingface.config import Config
from talkingface.quick_start.infer_mode import run_inference
from talkingface.inference.source import pingpong_index
from talkingface.model import build_network
from talkingface.utils.audio import load_audio, n_video_frames_for_audio
from talkingface.utils.ffmpeg import ffmpeg_exe
from talkingface.utils.checkpoint import save_checkpoint_file
from talkingface.utils.errors import CheckpointError, InputError
from talkingface.utils.video import iter_frames, probe_video


@pytest.fixture(autouse=True)
def _one_torch_thread(_few_threads):
    """One torch thread: the pipeline's decoder, face mesh and encoder threads use the other core
    (two spinning OpenMP threads beside them slow these tests down several times on 2 cores)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def ffmpeg(*args):
    subprocess.run([ffmpeg_exe(), "-nostdin", "-loglevel", "error", "-y", *map(str, args)], check=True)


@pytest.fixture(scope="module")
def media(samples_dir, tmp_path_factory):
    """Short cuts of the samples in several containers, codecs and frame rates."""
    d = tmp_path_factory.mktemp("media")
    paths = {
        # 1.2 s of the 720p clip at 960x540 re-timed to 30 fps in an avi (mpeg4): 25 fps resampling
        "video30": d / "clip30.avi",
        "video_short": d / "short.mp4",   # 0.6 s (15 frames), 25 fps, h264 + its aac track
        "audio_mp3": d / "drive.mp3",     # 1 s of speech as mp3
        "audio_wav": d / "drive.wav",     # 1 s wav (24 kHz, as the sample)
        "still": d / "face.png",
        "noise": d / "noise.mp4",
    }
    video = samples_dir / "video1.mp4"
    ffmpeg("-i", video, "-t", 1.2, "-r", 30, "-vf", "scale=960:540", "-c:v", "mpeg4", "-q:v", 2, "-an",
           paths["video30"])
    ffmpeg("-i", video, "-ss", 3, "-t", 0.6, "-vf", "scale=640:360", "-c:v", "libx264", "-crf", 12,
           "-c:a", "aac", paths["video_short"])
    ffmpeg("-i", samples_dir / "video1_drive.wav", "-t", 1, "-c:a", "libmp3lame", paths["audio_mp3"])
    ffmpeg("-i", samples_dir / "video1_drive.wav", "-t", 1, paths["audio_wav"])
    frame = next(iter_frames(video))
    cv2.imwrite(str(paths["still"]), cv2.resize(frame, (640, 360), interpolation=cv2.INTER_AREA))
    noise = np.random.default_rng(0).integers(0, 256, (25, 120, 160, 3), dtype=np.uint8)
    writer = subprocess.Popen([ffmpeg_exe(), "-loglevel", "error", "-y", "-f", "rawvideo", "-pix_fmt", "bgr24",
                               "-s", "160x120", "-r", "25", "-i", "pipe:0", "-c:v", "libx264",
                               "-pix_fmt", "yuv420p", str(paths["noise"])], stdin=subprocess.PIPE)
    writer.communicate(noise.tobytes())
    return paths


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """Random-init weights in our checkpoint format."""
    d = tmp_path_factory.mktemp("ckpt")
    torch.manual_seed(0)
    paths = {"base": d / "checkpoint_step000000001.pth", "hr": d / "hr.pth"}
    save_checkpoint_file({"state_dict": build_network("HyperLipsBase").state_dict(), "model": "HyperLipsBase"},
                         paths["base"])
    save_checkpoint_file({"state_dict": build_network("HRDecoder", 1).state_dict(), "model": "HyperLipsHR"},
                         paths["hr"])
    return paths


def infer(model, video, audio, output, **overrides):
    config = Config(model=model, dataset="demo", config_dict=dict(
        mode="infer", device="cpu", video=str(video), audio=str(audio), output=str(output), **overrides))
    return run_inference(config)


def box_region(shape, box, grow=0):
    """Bool mask of a face box grown by `grow` px."""
    region = np.zeros(shape[:2], bool)
    x1, y1, x2, y2 = box
    region[max(0, int(y1) - grow):int(np.ceil(y2)) + grow, max(0, int(x1) - grow):int(np.ceil(x2)) + grow] = True
    return region


def check_streams(path, n_frames, size):
    info = probe_video(path)
    assert info.has_audio
    assert info.n_frames == n_frames
    assert (info.width, info.height) == size
    assert abs(info.fps - 25) < 1e-3
    return info


def compare_outside_mouth(outputs, inputs, result):
    """Mean abs diff outside the grown face boxes and over the upper 40% of the box (eyes: the
    paste mask never reaches there), and inside the mouth core."""
    outside, eyes, mouth = [], [], []
    for k, out in enumerate(outputs):
        src = pingpong_index(k, result.n_source_frames)
        box = result.boxes[src]
        ref = inputs[src]
        diff = np.abs(out.astype(np.int16) - ref.astype(np.int16)).mean(axis=2)
        if not np.isfinite(box).all():
            outside.append(diff.mean())
            continue
        x1, y1, x2, y2 = box
        h, w = y2 - y1, x2 - x1
        outside.append(diff[~box_region(diff.shape, box, grow=8)].mean())
        eyes.append(diff[int(y1):int(y1 + 0.4 * h), int(x1 + 0.1 * w):int(x2 - 0.1 * w)].mean())
        mouth.append(diff[int(y1 + 0.7 * h):int(y1 + 0.8 * h), int(x1 + 0.4 * w):int(x1 + 0.6 * w)].mean())
    return np.mean(outside), np.mean(eyes), np.mean(mouth)


def test_base_avi_30fps_with_mp3(media, checkpoints, tmp_path):
    out = tmp_path / "out.mp4"
    result = infer("HyperLipsBase", media["video30"], media["audio_mp3"], out, checkpoint=str(checkpoints["base"]))
    n_expected = n_video_frames_for_audio(len(load_audio(media["audio_mp3"])))
    assert result.n_frames == n_expected == 25
    check_streams(out, n_expected, (960, 540))
    # the output carries the driving audio, as long as it (up to the last partial frame)
    assert abs(len(load_audio(out)) - len(load_audio(media["audio_mp3"]))) / 16000 < 0.08
    inputs = list(iter_frames(media["video30"], fps=25))
    assert len(inputs) == 30 and result.n_source_frames == 25  # tracked only as far as the audio goes
    outputs = list(iter_frames(out))
    outside, eyes, mouth = compare_outside_mouth(outputs, inputs, result)
    assert outside < 3 and eyes < 3, (outside, eyes)
    assert mouth > 10, mouth  # the random network's face replaced the mouth


def test_audio_longer_than_video_loops_ping_pong(media, checkpoints, tmp_path):
    out = tmp_path / "out.mp4"
    result = infer("HyperLipsBase", media["video_short"], media["audio_wav"], out,
                   checkpoint=str(checkpoints["base"]))
    assert result.n_source_frames == 15 and result.n_frames == 25  # 0..14 then 13..4
    check_streams(out, 25, (640, 360))
    inputs = list(iter_frames(media["video_short"], fps=25))
    outputs = list(iter_frames(out))
    outside, _, mouth = compare_outside_mouth(outputs, inputs, result)
    assert outside < 3 and mouth > 10
    # output frame 20 shows source frame 8 (ping-pong), not 5 (what a plain loop would show)
    region = ~box_region(inputs[0].shape, result.boxes[8], grow=8)
    d8 = np.abs(outputs[20].astype(int) - inputs[8].astype(int))[region].mean()
    d5 = np.abs(outputs[20].astype(int) - inputs[5].astype(int))[region].mean()
    assert d8 < d5


def test_hr_on_a_still_image(media, checkpoints, tmp_path, workdir):
    # the Base checkpoint is found as the latest in checkpoints/demo/HyperLipsBase/
    base_dir = workdir / "checkpoints" / "demo" / "HyperLipsBase"
    base_dir.mkdir(parents=True)
    (base_dir / checkpoints["base"].name).write_bytes(checkpoints["base"].read_bytes())
    out = tmp_path / "still.mp4"
    result = infer("HyperLipsHR", media["still"], media["audio_mp3"], out, checkpoint=str(checkpoints["hr"]))
    assert result.n_source_frames == 1 and result.n_frames == 25
    check_streams(out, 25, (640, 360))
    still = cv2.imread(str(media["still"]))
    outputs = list(iter_frames(out))
    outside, eyes, mouth = compare_outside_mouth(outputs, [still], result)
    assert outside < 3 and eyes < 3 and mouth > 10


def test_no_face_anywhere_is_one_line_error(media, checkpoints, tmp_path):
    out = tmp_path / "out.mp4"
    with pytest.raises(InputError, match="no face") as info:
        infer("HyperLipsBase", media["noise"], media["audio_wav"], out, checkpoint=str(checkpoints["base"]))
    assert "\n" not in str(info.value)
    assert not out.exists()


def test_missing_checkpoints_name_the_training_command(media, workdir):
    with pytest.raises(CheckpointError) as info:
        infer("HyperLipsBase", media["video_short"], media["audio_wav"], workdir / "o.mp4")
    assert "python run_talkingface.py --model=HyperLipsBase --dataset=demo" in str(info.value)
    assert "\n" not in str(info.value)
    hr_dir = workdir / "checkpoints" / "demo" / "HyperLipsHR"
    hr_dir.mkdir(parents=True)
    torch.save({"state_dict": build_network("HRDecoder", 1).state_dict()}, hr_dir / "checkpoint_step000000005.pth")
    with pytest.raises(CheckpointError, match="--model=HyperLipsBase --dataset=demo") as info:
        infer("HyperLipsHR", media["video_short"], media["audio_wav"], workdir / "o.mp4")
    assert "\n" not in str(info.value)
    with pytest.raises(CheckpointError, match="not found"):
        infer("HyperLipsBase", media["video_short"], media["audio_wav"], workdir / "o.mp4",
              checkpoint=str(workdir / "nope.pth"))


def test_wrong_checkpoint_is_one_line_error(media, checkpoints, tmp_path):
    with pytest.raises(CheckpointError) as info:  # an HR decoder given as the Base model
        infer("HyperLipsBase", media["video_short"], media["audio_wav"], tmp_path / "o.mp4",
              checkpoint=str(checkpoints["hr"]))
    assert "\n" not in str(info.value)
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError) as info:
        infer("HyperLipsHR", media["video_short"], media["audio_wav"], tmp_path / "o.mp4",
              checkpoint=str(garbage), base_checkpoint=str(checkpoints["base"]))
    assert "\n" not in str(info.value)


def test_unusable_inputs_are_one_line_errors(media, checkpoints, tmp_path):
    cases = [
        (tmp_path / "missing.mp4", media["audio_wav"], "not found"),
        (media["video_short"], tmp_path / "missing.wav", "not found"),
        (media["video_short"], media["video30"], "No audio stream"),  # a video without sound as audio
    ]
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    cases.append((empty, media["audio_wav"], "empty"))
    for video, audio, message in cases:
        with pytest.raises(InputError, match=message) as info:
            infer("HyperLipsBase", video, audio, tmp_path / "o.mp4", checkpoint=str(checkpoints["base"]))
        assert "\n" not in str(info.value)
