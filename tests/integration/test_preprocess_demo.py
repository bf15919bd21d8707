"""The embedded demo dataset and the preprocessing of it (layout, filelists, staleness, resume)."""
import hashlib
import json
import os
import shutil

import cv2
import numpy as np
import pytest
import soundfile as sf

from talkingface.config import Config
from talkingface.data.dataprocess import demo
from talkingface.data.dataprocess.hyperlipsbase_process import (HyperLipsBasePreprocessor, clip_id_for,
                                                                split_clip_ids)
from talkingface.data.dataset.clip import Clip, read_filelist
from talkingface.utils.face import FaceDetector, FaceMesh
from talkingface.utils.video import iter_frames, probe_video


def demo_config(tmp_path, **overrides):
    values = dict(data_root=str(tmp_path / "data"), preprocessed_root=str(tmp_path / "pre"),
                  num_preprocess_workers=1)
    values.update(overrides)
    return Config(model="HyperLipsBase", dataset="demo", config_dict=values)


def tree_hashes(root):
    out = {}
    for dirpath, _, files in os.walk(root):
        for name in files:
            path = os.path.join(dirpath, name)
            with open(path, "rb") as f:
                out[os.path.relpath(path, root)] = hashlib.sha1(f.read()).hexdigest()
    return out


@pytest.fixture(scope="module")
def demo_set(tmp_path_factory):
    """A 6-clip demo set of 2 s clips, preprocessed with two worker processes (the pool path)."""
    tmp = tmp_path_factory.mktemp("demo")
    config = demo_config(tmp, num_preprocess_workers=2, demo_num_clips=6, demo_clip_seconds=2.0)
    pre = HyperLipsBasePreprocessor(config)
    assert pre.is_stale()
    report = pre.run()
    return config, pre, report


def test_demo_generation_is_deterministic_and_runs_once(tmp_path):
    first = demo.ensure_demo_dataset(str(tmp_path / "a"), num_clips=2, seconds=1.0)
    second = demo.ensure_demo_dataset(str(tmp_path / "b"), num_clips=2, seconds=1.0)
    assert [os.path.relpath(p, tmp_path / "a") for p in first] == \
        [os.path.relpath(p, tmp_path / "b") for p in second]
    hashes = tree_hashes(tmp_path / "a")
    assert hashes == tree_hashes(tmp_path / "b")
    assert len(hashes) == 3 and demo.MARKER_NAME in hashes  # 2 clips + marker
    # Clips differ from each other (own audio and motion).
    assert len(set(hashes.values())) == 3
    mtimes = [os.stat(p).st_mtime_ns for p in first]
    demo.ensure_demo_dataset(str(tmp_path / "a"), num_clips=2, seconds=1.0)
    assert [os.stat(p).st_mtime_ns for p in first] == mtimes  # finished set: nothing rewritten
    # Other settings regenerate, and clips of the larger set do not linger.
    assert demo.demo_is_current(str(tmp_path / "a"), num_clips=2, seconds=1.0)
    assert not demo.demo_is_current(str(tmp_path / "a"), num_clips=1, seconds=1.0)
    demo.ensure_demo_dataset(str(tmp_path / "b"), num_clips=1, seconds=1.0)
    assert len(tree_hashes(tmp_path / "b")) == 2
    info = probe_video(first[0])
    assert info.fps == 25 and info.n_frames == 25 and info.has_audio and (info.width, info.height) == (256, 256)


def test_demo_geometry_matches_face_mesh():
    landmarks = FaceMesh(static_image_mode=True).landmarks(demo.astronaut_bgr().astype(np.uint8))
    lip_center = (landmarks[13] + landmarks[14]) / 2
    assert abs(lip_center[0] - demo.MOUTH_CENTER_X) < 3 and abs(lip_center[1] - demo.LIP_LINE_Y) < 3


def test_demo_face_detected_on_every_frame_and_mouth_follows_loudness(tmp_path):
    path = demo.ensure_demo_dataset(str(tmp_path), num_clips=1, seconds=3.0)[0]
    detector = FaceDetector()
    frames = list(iter_frames(path))
    assert len(frames) == 75
    assert all(detector.detect(frame) for frame in frames)
    # Darkness of the mouth region tracks the RMS-driven opening the generator used.
    wav = demo.synthesize_speech(3.0, np.random.default_rng(demo.BASE_SEED))
    openness = demo.frame_openness(wav, 75)
    assert openness.min() == 0 and openness.max() > 0.9
    darkness = [255 - cv2.cvtColor(f[120:150, 100:155], cv2.COLOR_BGR2GRAY).mean() for f in frames]
    assert np.corrcoef(openness, darkness)[0, 1] > 0.9


def test_speech_is_speech_like():
    wav = demo.synthesize_speech(3.0, np.random.default_rng(1))
    assert wav.dtype == np.float32 and wav.shape == (48000,) and np.abs(wav).max() <= 0.7 + 1e-6
    # Syllables: the loudness crosses half its maximum upwards 2-8 times a second; pauses exist.
    frame_rms = np.sqrt((wav.reshape(-1, 160) ** 2).mean(axis=1))  # 100 Hz frames
    loud = frame_rms > 0.5 * frame_rms.max()
    onsets = np.count_nonzero(loud[1:] & ~loud[:-1])
    assert 2 * 3 <= onsets <= 8 * 3
    assert (frame_rms < 0.02 * frame_rms.max()).mean() > 0.05
    # Voiced: a pitch in the speech range (autocorrelation peak of the loudest part).
    segment = wav[np.argmax(frame_rms) * 160:][:1024].astype(np.float64)
    ac = np.correlate(segment, segment, "full")[1023:]
    lag = 16000 // 240 + np.argmax(ac[16000 // 240:16000 // 90])
    assert 90 <= 16000 / lag <= 240


def test_preprocessed_layout_is_gap_free(demo_set):
    config, pre, report = demo_set
    root = config["preprocessed_root"]
    assert len(report) == 6 and all(e["status"] == "ok" for e in report.values())
    for rel, entry in report.items():
        clip_dir = os.path.join(root, clip_id_for(rel))
        clip = Clip(clip_dir)
        n = clip.n_frames
        assert n == 50 and entry["n_frames"] == n
        names = set(os.listdir(clip_dir))
        assert {f"{k}.jpg" for k in range(n)} | {"audio.wav", "mel.npy", "boxes.npy", "meta.json", ".done"} == names
        assert clip.frame(0).shape == (config["crop_size"], config["crop_size"], 3)
        assert clip.frame(n - 1, 128).shape == (128, 128, 3)
        wav, sr = sf.read(clip.audio_path)
        assert sr == 16000 and wav.ndim == 1 and len(wav) == n * 640
        assert clip.mel.dtype == np.float32 and clip.mel.shape == (80, len(wav) // 200 + 1)
        assert clip.boxes.shape == (n, 4) and clip.boxes.dtype == np.float32
        assert np.all(clip.boxes[:, 2] > clip.boxes[:, 0]) and np.all(clip.boxes[:, 3] <= 256)
        meta = clip.meta
        assert meta["fps"] == 25 and meta["first_frame"] == 0 and (meta["width"], meta["height"]) == (256, 256)
    with open(os.path.join(root, "report.json")) as f:
        saved = json.load(f)
    assert saved.keys() - {"summary"} == report.keys()  # the entries, plus the data report's totals
    assert saved["summary"]["clips"] == sum(1 for entry in report.values() if entry["status"] == "ok")


def test_filelists_split_by_video_disjoint_reproducible(demo_set):
    config, pre, report = demo_set
    splits = {s: [os.path.basename(d) for d in read_filelist(config, s)] for s in ("train", "val", "test")}
    everything = sum(splits.values(), [])
    assert len(everything) == len(set(everything)) == 6
    assert set(everything) == {clip_id_for(rel) for rel in report}
    assert len(splits["val"]) == 1 and len(splits["test"]) == 1 and len(splits["train"]) == 4
    again = split_clip_ids(everything, config["val_ratio"], config["test_ratio"], config["split_seed"])
    assert {s: sorted(v) for s, v in splits.items()} == again
    other = split_clip_ids(everything, config["val_ratio"], config["test_ratio"], config["split_seed"] + 1)
    assert sorted(sum(other.values(), [])) == sorted(everything)


def test_split_of_tiny_and_growing_datasets():
    assert split_clip_ids(["a"], 0.1, 0.1, 0) == {"train": ["a"], "val": [], "test": []}
    two = split_clip_ids(["a", "b"], 0.1, 0.1, 0)
    assert len(two["val"]) == 1 and len(two["train"]) == 1 and two["test"] == []
    ids = [f"clip{i:03d}" for i in range(100)]
    base = split_clip_ids(ids, 0.1, 0.1, 7)
    assert (len(base["train"]), len(base["val"]), len(base["test"])) == (80, 10, 10)
    grown = split_clip_ids(ids + ["clip100"], 0.1, 0.1, 7)
    assert len(set(base["train"]) - set(grown["train"])) <= 1  # adding a video barely moves the split


def test_staleness_follows_videos_and_settings(demo_set, tmp_path):
    config, pre, _ = demo_set
    assert not pre.is_stale()
    assert HyperLipsBasePreprocessor(demo_config_like(config, crop_size=128)).is_stale()
    assert HyperLipsBasePreprocessor(demo_config_like(config, val_ratio=0.3)).is_stale()
    assert HyperLipsBasePreprocessor(demo_config_like(config, demo_num_clips=5)).is_stale()
    assert not HyperLipsBasePreprocessor(demo_config_like(config, num_preprocess_workers=1)).is_stale()
    video = os.path.join(config["data_root"], "M000", "front", "neutral", "level_1", "001.mp4")
    stat = os.stat(video)
    try:
        os.utime(video, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
        assert pre.is_stale()
    finally:
        os.utime(video, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert not pre.is_stale()


def demo_config_like(config, **overrides):
    values = {key: config[key] for key in ("data_root", "preprocessed_root", "num_preprocess_workers",
                                           "demo_num_clips", "demo_clip_seconds")}
    values.update(overrides)
    return Config(model="HyperLipsBase", dataset="demo", config_dict=values)


def test_resume_redoes_incomplete_clips_and_skips_finished(tmp_path):
    config = demo_config(tmp_path, demo_num_clips=3, demo_clip_seconds=1.0)
    pre = HyperLipsBasePreprocessor(config)
    first = pre.run()
    assert not pre.is_stale()
    root = config["preprocessed_root"]
    done_id, broken_id, _ = sorted(clip_id_for(rel) for rel in first)
    done_stamp = os.stat(os.path.join(root, done_id, "0.jpg")).st_mtime_ns
    # An interrupted run: one clip without .done and with a stray file, a leftover temp folder.
    os.remove(os.path.join(root, broken_id, ".done"))
    open(os.path.join(root, broken_id, "stray.txt"), "w").close()
    os.makedirs(os.path.join(root, ".tmp-" + done_id))
    assert pre.is_stale()
    second = pre.run()
    reused = {clip_id_for(rel) for rel, e in second.items() if e.get("reused")}
    assert done_id in reused and broken_id not in reused and len(reused) == 2
    assert os.stat(os.path.join(root, done_id, "0.jpg")).st_mtime_ns == done_stamp
    assert os.path.isfile(os.path.join(root, broken_id, ".done"))
    assert not os.path.exists(os.path.join(root, broken_id, "stray.txt"))
    assert not any(name.startswith(".tmp-") for name in os.listdir(root))
    assert Clip(os.path.join(root, broken_id)).n_frames == 25
    assert not pre.is_stale()
    # A changed setting redoes every clip.
    third = HyperLipsBasePreprocessor(demo_config(tmp_path, demo_num_clips=3, demo_clip_seconds=1.0,
                                                  crop_size=96)).run()
    assert not any(e.get("reused") for e in third.values())
    assert Clip(os.path.join(root, done_id)).frame(0).shape == (96, 96, 3)
    shutil.rmtree(root)
