"""talkingface.utils.video: probing, timestamp-based fps resampling, the atomic mp4 writer."""
import math

import cv2
import numpy as np
import pytest
import soundfile as sf

from talkingface.utils import video
from talkingface.utils.audio import load_audio
from talkingface.utils.errors import InputError


def _indexed_frame(i, width=64, height=48):
    """A frame whose two flat halves encode i (h264 keeps flat areas within a few levels)."""
    frame = np.zeros((height, width, 3), dtype=np.uint8)
    frame[:, : width // 2] = (i % 20) * 12
    frame[:, width // 2:] = (i // 20) * 12
    return frame


def _decoded_index(frame):
    width = frame.shape[1]
    low = int(round(float(frame[:, 4: width // 2 - 4].mean()) / 12))
    high = int(round(float(frame[:, width // 2 + 4: -4].mean()) / 12))
    return high * 20 + low


def _write(path, n, fps, audio_path=None, size=(64, 48)):
    with video.VideoWriter(path, fps, audio_path=audio_path) as writer:
        for i in range(n):
            writer.write(_indexed_frame(i, *size))
    return path


@pytest.mark.parametrize("src_fps,n_src", [(30, 60), (30000 / 1001, 150), (60, 120)])
def test_resample_to_25_by_timestamp(tmp_path, src_fps, n_src):
    path = _write(tmp_path / "src.mp4", n_src, src_fps)
    info = video.probe_video(path)
    assert abs(info.fps - src_fps) < 0.01 and info.n_frames == n_src
    frames = list(video.iter_frames(path, fps=25))
    assert len(frames) == math.ceil(n_src * 25 / src_fps - 1e-9)
    decoded = [_decoded_index(f) for f in frames]
    expected = [int(math.floor(j * src_fps / 25 + 1e-6)) for j in range(len(frames))]
    assert decoded == expected  # no drift: the last frame is still the right one


def test_native_rate_and_upsampling(tmp_path):
    path = _write(tmp_path / "src.mp4", 20, 10)
    assert [_decoded_index(f) for f in video.iter_frames(path)] == list(range(20))
    assert [_decoded_index(f) for f in video.iter_frames(path, fps=10)] == list(range(20))
    up = list(video.iter_frames(path, fps=25))
    assert len(up) == 50
    assert [_decoded_index(f) for f in up] == [int(j * 10 / 25 + 1e-6) for j in range(50)]
    assert up[0] is not up[1]  # repeated source frames are separate arrays


def test_resample_indices():
    np.testing.assert_array_equal(video.resample_indices(6, 30, 25), [0, 1, 2, 3, 4])
    assert len(video.resample_indices(30 * 3600, 30000 / 1001, 25)) == math.ceil(30 * 3600 * 25 * 1001 / 30000)
    assert video.resample_indices(0, 30, 25).size == 0


def test_writer_rate_is_exact():
    assert video._rate_string(25) == "25/1"
    assert video._rate_string(30000 / 1001) == "30000/1001"
    assert video._rate_string(12.5) == "25/2"


def test_still_image(tmp_path):
    path = tmp_path / "face.png"
    image = _indexed_frame(7, 33, 21)
    cv2.imwrite(str(path), image)
    assert video.is_image(path) and not video.is_image(tmp_path / "a.mp4")
    frames = list(video.iter_frames(path, fps=25))
    assert len(frames) == 1 and np.array_equal(frames[0], image)
    info = video.probe_video(path)
    assert (info.n_frames, info.width, info.height, info.has_audio) == (1, 33, 21, False)


def test_writer_muxes_audio_cut_to_video(tmp_path):
    wav = tmp_path / "speech.wav"
    t = np.arange(3 * 16000) / 16000
    sf.write(str(wav), (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32), 16000)
    out = _write(tmp_path / "out.mp4", 50, 25, audio_path=wav)  # 2 s of video, 3 s of audio
    info = video.probe_video(out)
    assert info.has_audio and info.n_frames == 50 and abs(info.duration - 2.0) < 1e-6
    assert abs(len(load_audio(out)) / 16000 - 2.0) < 0.1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.mp4", "speech.wav"]


def test_writer_cuts_video_to_shorter_audio(tmp_path):
    wav = tmp_path / "short.wav"
    sf.write(str(wav), np.full(16000, 0.1, dtype=np.float32), 16000)  # 1 s
    out = _write(tmp_path / "out.mp4", 75, 25, audio_path=wav)  # 3 s of video
    info = video.probe_video(out)
    assert info.has_audio and abs(info.duration - 1.0) <= 0.1


def test_writer_audio_from_a_video_and_odd_size(samples_dir, tmp_path):
    out = _write(tmp_path / "out.mp4", 25, 25, audio_path=samples_dir / "video2.mp4", size=(65, 47))
    info = video.probe_video(out)
    assert info.has_audio and (info.width, info.height) == (66, 48)  # padded to even
    frame = next(video.iter_frames(out))
    assert abs(_decoded_index(frame[:47, :65]) - 0) == 0


def test_writer_error_removes_temp_file(tmp_path):
    with pytest.raises(RuntimeError):
        with video.VideoWriter(tmp_path / "out.mp4", 25) as writer:
            writer.write(_indexed_frame(0))
            raise RuntimeError("generation failed")
    assert list(tmp_path.iterdir()) == []

    with pytest.raises(InputError):
        with video.VideoWriter(tmp_path / "out.mp4", 25) as writer:
            writer.write(_indexed_frame(0))
            writer.write(_indexed_frame(1, 32, 32))  # size changed mid-stream
    assert list(tmp_path.iterdir()) == []

    with pytest.raises(InputError):
        with video.VideoWriter(tmp_path / "out.mp4", 25):
            pass  # no frames
    assert list(tmp_path.iterdir()) == []


def test_writer_rejects_bad_audio_and_frames(tmp_path):
    with pytest.raises(InputError):
        video.VideoWriter(tmp_path / "out.mp4", 25, audio_path=tmp_path / "missing.wav")
    silent = _write(tmp_path / "silent.mp4", 3, 25)
    with pytest.raises(InputError):
        video.VideoWriter(tmp_path / "out.mp4", 25, audio_path=silent)
    writer = video.VideoWriter(tmp_path / "out.mp4", 25)
    with pytest.raises(InputError):
        writer.write(np.zeros((8, 8, 3), dtype=np.float32))


def test_rotated_video_probe_matches_decoded_frames(tmp_path):
    import subprocess

    from talkingface.utils.ffmpeg import ffmpeg_exe

    src = _write(tmp_path / "src.mp4", 5, 25, size=(64, 48))
    rotated = tmp_path / "rotated.mp4"
    proc = subprocess.run([ffmpeg_exe(), "-v", "error", "-y", "-display_rotation", "90", "-i", str(src),
                           "-c", "copy", str(rotated)], capture_output=True)
    if proc.returncode != 0:
        pytest.skip("this ffmpeg cannot tag a display rotation")
    info = video.probe_video(rotated)
    frame = next(video.iter_frames(rotated))
    assert (info.width, info.height) == (48, 64) == (frame.shape[1], frame.shape[0])


def test_probe_real_sample(samples_dir):
    info = video.probe_video(samples_dir / "video1.mp4")
    assert (info.fps, info.n_frames, info.width, info.height, info.has_audio) == (25.0, 272, 1278, 720, True)
    assert abs(info.duration - 10.88) < 1e-6


def test_bad_files_raise_one_line_input_error(tmp_path, samples_dir):
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    corrupt = tmp_path / "corrupt.mp4"
    corrupt.write_bytes(np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes())
    truncated = tmp_path / "truncated.mp4"
    truncated.write_bytes((samples_dir / "video1.mp4").read_bytes()[:20000])
    broken_image = tmp_path / "broken.jpg"
    broken_image.write_bytes(b"not a jpeg at all")
    cases = [tmp_path / "missing.mp4", empty, corrupt, truncated, broken_image,
             samples_dir / "video1_drive.wav"]  # audio only: no video stream
    for path in cases:
        for call in (video.probe_video, lambda p: list(video.iter_frames(p))):
            with pytest.raises(InputError) as excinfo:
                call(path)
            assert "\n" not in str(excinfo.value), path
