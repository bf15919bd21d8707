"""Preprocessing of awkward and bad inputs, other frame rates and containers, and real clips."""
import os
import subprocess

import numpy as np
import pytest
import soundfile as sf

from builders import two_faces
from talkingface.config import Config
from talkingface.data.dataprocess import demo
from talkingface.data.dataprocess.hyperlipsbase_process import HyperLipsBasePreprocessor, clip_id_for
from talkingface.data.dataset.clip import Clip, read_filelist
from talkingface.utils.audio import save_wav
from talkingface.utils.ffmpeg import ffmpeg_exe
from talkingface.utils.face import FaceMesh
from talkingface.utils.video import VideoWriter, probe_video


def mead_config(tmp_path, **overrides):
    values = dict(data_root=str(tmp_path / "data"), preprocessed_root=str(tmp_path / "pre"),
                  num_preprocess_workers=1)
    values.update(overrides)
    return Config(model="HyperLipsBase", dataset="MEAD", config_dict=values)


def face_frames(n, seed=0):
    """n demo face frames whose mouth moves a little."""
    photo = demo.astronaut_bgr()
    rng = np.random.default_rng(seed)
    return [demo.render_frame(photo, float(o), (0.0, 0.0), 256) for o in rng.uniform(0, 1, n)]


def noise_frames(n, seed=1):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (256, 256, 3), dtype=np.uint8) for _ in range(n)]


def write_clip(path, frames, fps=25, seconds=None, tmp=None):
    """Write frames as a video; with `seconds`, a speech-like audio track of that length."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    wav_path = None
    if seconds is not None:
        wav_path = os.path.join(tmp, os.path.basename(path) + ".wav")
        save_wav(wav_path, demo.synthesize_speech(seconds, np.random.default_rng(3)))
    with VideoWriter(path, fps, audio_path=wav_path) as writer:
        for frame in frames:
            writer.write(frame)


def assert_gap_free(clip_dir):
    clip = Clip(clip_dir)
    names = {n for n in os.listdir(clip_dir) if n.endswith(".jpg")}
    assert names == {f"{k}.jpg" for k in range(clip.n_frames)}
    wav, sr = sf.read(clip.audio_path)
    assert sr == 16000 and len(wav) == clip.n_frames * 640
    assert clip.mel.shape == (80, len(wav) // 200 + 1) and clip.boxes.shape == (clip.n_frames, 4)
    return clip


@pytest.fixture(scope="module")
def mixed(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("mixed")
    data = tmp / "data"
    audio_tmp = tmp / "audio"
    audio_tmp.mkdir()
    data.mkdir()
    (data / "empty.mp4").write_bytes(b"")
    (data / "text.mp4").write_text("this is not a video\n" * 20)
    write_clip(str(data / "good.mp4"), face_frames(50), seconds=2.0, tmp=audio_tmp)
    write_clip(str(data / "noaudio.mp4"), face_frames(25))
    write_clip(str(data / "noise.mp4"), noise_frames(30), seconds=1.2, tmp=audio_tmp)
    write_clip(str(data / "short.mp4"), face_frames(10), seconds=0.4, tmp=audio_tmp)
    write_clip(str(data / "fps30.mov"), face_frames(60), fps=30, seconds=2.0, tmp=audio_tmp)
    write_clip(str(data / "trimmed.mp4"), noise_frames(20) + face_frames(40), seconds=2.4, tmp=audio_tmp)
    write_clip(str(data / "twofaces.mp4"), [two_faces(f) for f in face_frames(25)], seconds=1.0, tmp=audio_tmp)
    write_clip(str(data / "deep" / "er" / "clip.mkv"), face_frames(25), seconds=1.0, tmp=audio_tmp)
    config = mead_config(tmp)
    report = HyperLipsBasePreprocessor(config).run()
    return config, report


def test_bad_inputs_are_reported_and_skipped(mixed):
    config, report = mixed
    reasons = {rel: entry.get("reason") for rel, entry in report.items() if entry["status"] != "ok"}
    assert reasons == {"empty.mp4": "empty_file", "text.mp4": "unreadable", "noaudio.mp4": "no_audio_stream",
                       "noise.mp4": "no_face", "short.mp4": "too_short"}
    assert all(report[rel]["detail"] for rel in reasons)
    assert "no same-named audio file beside it (.wav/.m4a/.mp3/.aac/.flac)" in report["noaudio.mp4"]["detail"]
    ok = sorted(rel for rel, entry in report.items() if entry["status"] == "ok")
    assert ok == ["deep/er/clip.mkv", "fps30.mov", "good.mp4", "trimmed.mp4", "twofaces.mp4"]
    listed = sum((read_filelist(config, s) for s in ("train", "val", "test")), [])
    assert sorted(os.path.basename(d) for d in listed) == sorted(clip_id_for(rel) for rel in ok)
    assert "deep__er__clip" in [os.path.basename(d) for d in listed]
    root = config["preprocessed_root"]
    assert not any(os.path.exists(os.path.join(root, clip_id_for(rel))) for rel in reasons)


def test_good_and_nested_clips_are_complete(mixed):
    config, report = mixed
    root = config["preprocessed_root"]
    assert assert_gap_free(os.path.join(root, "good")).n_frames == 50
    assert assert_gap_free(os.path.join(root, "deep__er__clip")).n_frames == 25


def test_30fps_source_is_resampled_to_25(mixed):
    config, report = mixed
    clip = assert_gap_free(os.path.join(config["preprocessed_root"], "fps30"))
    assert abs(clip.n_frames - 2.0 * 25) <= 1
    assert clip.meta["fps"] == 25 and abs(clip.meta["source_fps"] - 30) < 0.01


def test_frames_without_face_are_trimmed_not_skipped(mixed):
    config, report = mixed
    clip = assert_gap_free(os.path.join(config["preprocessed_root"], "trimmed"))
    assert clip.meta["first_frame"] == 20 and clip.n_frames == 40
    assert any("trimmed" in note for note in report["trimmed.mp4"]["notes"])


def test_several_faces_keep_the_largest_and_say_so(mixed):
    config, report = mixed
    clip = assert_gap_free(os.path.join(config["preprocessed_root"], "twofaces"))
    assert any("several faces" in note for note in report["twofaces.mp4"]["notes"])
    centers_x = (clip.boxes[:, 0] + clip.boxes[:, 2]) / 2
    assert np.all(centers_x < 256)  # the big face on the left


def cut_real_clip(src, dst, seconds):
    subprocess.run([ffmpeg_exe(), "-nostdin", "-loglevel", "error", "-y", "-i", str(src), "-t", str(seconds),
                    "-c:v", "libx264", "-preset", "ultrafast", "-c:a", "aac", str(dst)], check=True)


def test_real_clip_two_second_cut(samples_dir, tmp_path):
    os.makedirs(tmp_path / "data")
    cut_real_clip(samples_dir / "video1.mp4", tmp_path / "data" / "video1_cut.mp4", 2.0)
    config = mead_config(tmp_path)
    report = HyperLipsBasePreprocessor(config).run()
    assert report["video1_cut.mp4"]["status"] == "ok"
    clip = assert_gap_free(os.path.join(config["preprocessed_root"], "video1_cut"))
    assert clip.n_frames == 50 and (clip.meta["width"], clip.meta["height"]) == (1278, 720)
    # The crop is a face whose mouth lies in the lower half (the part the generator repaints).
    landmarks = FaceMesh(static_image_mode=True).landmarks(clip.frame(25))
    assert landmarks is not None
    lip_y = (landmarks[13, 1] + landmarks[14, 1]) / 2 / config["crop_size"]
    assert 0.55 < lip_y < 0.95


@pytest.mark.slow
def test_real_sample_clips(samples_dir, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    videos = sorted(samples_dir.glob("*.mp4"))
    for video in videos:
        os.symlink(video, data / video.name)
    # in this process: two spawned workers would each import torch and the detector first (the
    # worker pool has its own test: test_preprocess_demo.py)
    config = mead_config(tmp_path)
    report = HyperLipsBasePreprocessor(config).run()
    for video in videos:
        entry = report[video.name]
        assert entry["status"] == "ok" and entry["first_frame"] == 0
        clip = assert_gap_free(os.path.join(config["preprocessed_root"], video.stem))
        assert abs(clip.n_frames - probe_video(video).n_frames) <= 1
    splits = {s: read_filelist(config, s) for s in ("train", "val", "test")}
    assert len(splits["val"]) == 1 and len(splits["train"]) == 3


def test_streamed_box_smoothing_equals_whole_run_smoothing(tmp_path):
    """Crops are written with only a few frames in memory; boxes must match smoothing each run."""
    from talkingface.data.dataprocess.hyperlipsbase_process import _CropWriter
    from talkingface.utils.face import pad_box, smooth_boxes
    from talkingface.utils.tracking import FaceTracker

    rng = np.random.default_rng(0)
    n = 40
    has_face = np.ones(n, bool)
    has_face[[7, 8, 20]] = False  # runs 0-6, 9-19, 21-39
    raw = np.cumsum(rng.normal(0, 3, (n, 4)), axis=0) + [40, 30, 120, 130]

    class FakeDetector:
        def __init__(self):
            self.k = 0

        def detect(self, frame):
            k, self.k = self.k, self.k + 1
            return [tuple(raw[k]) + (0.9,)] if has_face[k] else []

    task = {"box_smooth_window": 5, "face_pad_bottom": 10, "crop_size": 32, "jpeg_quality": 90,
            "tmp_dir": str(tmp_path), "face_min_size": 24, "face_continuity_iou": 0.3,
            "face_max_gap": 0}   # no gap filling: every miss ends a run here
    tracker, crops, detector = FaceTracker.from_settings(task, 200, 200), _CropWriter(task), FakeDetector()
    frame = np.zeros((200, 200, 3), np.uint8)
    for k in range(n):
        crops.add(frame, tracker.push(detector.detect(frame)))
        assert len(crops.pending) <= 3  # a frame waits only for the 2 frames after it (window 5)
    crops.write(tracker.finish())
    assert tracker.runs == [(0, 7), (9, 20), (21, 40)]
    for start, stop in tracker.runs:
        expected = smooth_boxes(pad_box(raw[start:stop], bottom=10, width=200, height=200), window=5)
        got = np.stack([crops.boxes[k] for k in range(start, stop)])
        np.testing.assert_array_equal(got, expected)  # bit for bit
    assert sorted(int(p.split(".")[0]) for p in os.listdir(tmp_path)) == [k for k in range(n) if has_face[k]]
