"""HR-stage data: preprocessing from real Base data and a (random) Base checkpoint, the dataset,
mesh failures, staleness and resuming. One 1-s cut of a real sample clip keeps it quick."""
import json
import os
import subprocess

import cv2
import numpy as np
import pytest
import torch

from talkingface.data.dataprocess.hyperlipshr_process import (HyperLipsHRPreprocessor, default_lip_box,
                                                             fill_missing_landmarks, write_hr_clip)
from talkingface.data.dataset.clip import Clip, read_filelist
from talkingface.data.dataset.hr_layout import IMAGE_FOLDERS, frame_path, hr_root
from talkingface.data.dataset.hyperlipshr_dataset import HyperLipsHRDataset, decoder_input
from talkingface.utils.checkpoint import checkpoint_path, save_checkpoint_file
from talkingface.utils.errors import CheckpointError
from talkingface.utils.face import FaceMesh
from talkingface.utils.registry import PREPROCESSORS
from builders import make_config

CUT_SECONDS = 1.0


def cut_clip(source, target, seconds):
    import imageio_ffmpeg
    os.makedirs(os.path.dirname(target), exist_ok=True)
    subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-loglevel", "error", "-y", "-i", str(source), "-t", str(seconds),
                    "-c:v", "libx264", "-preset", "ultrafast", "-c:a", "aac", str(target)], check=True)


def hr_data_config(root, **overrides):
    """HyperLipsHR on MEAD-layout videos under root/data, every clip in the training split."""
    values = dict(data_root=str(root / "data"), preprocessed_root=str(root / "pre"), num_preprocess_workers=1,
                  hr_preprocess_workers=0, hr_base_batch_size=8, val_ratio=0.0, test_ratio=0.0)
    return make_config("HyperLipsHR", root, "MEAD", **{**values, **overrides})


def save_random_base_checkpoint(config, step=1, seed=0):
    from talkingface.model.audio_driven_talkingface.hyperlipsbase import HyperLipsBase
    torch.manual_seed(seed)
    folder = os.path.join(config["checkpoint_root"], config["dataset"], "HyperLipsBase")
    path = checkpoint_path(folder, step)
    save_checkpoint_file({"state_dict": HyperLipsBase().state_dict(), "global_step": step, "global_epoch": 0,
                          "model": "HyperLipsBase"}, path)
    return path


@pytest.fixture(scope="module")
def base_data(samples_dir, tmp_path_factory):
    """Base-preprocessed 1-s cut of a sample clip and a random-init Base checkpoint."""
    root = tmp_path_factory.mktemp("hr")
    cut_clip(samples_dir / "video1.mp4", root / "data" / "speaker" / "clip1.mp4", CUT_SECONDS)
    config = hr_data_config(root)
    base = PREPROCESSORS.get("HyperLipsBasePreprocessor")(config)
    base.run()
    save_random_base_checkpoint(config)
    return root


@pytest.fixture(scope="module")
def hr_data(base_data):
    config = hr_data_config(base_data)
    HyperLipsHRPreprocessor(config).run()
    return base_data


def test_missing_base_checkpoint_is_a_one_line_error(base_data, tmp_path):
    config = hr_data_config(base_data, checkpoint_root=str(tmp_path / "empty"))
    pre = HyperLipsHRPreprocessor(config)
    assert pre.is_stale()
    with pytest.raises(CheckpointError) as info:
        pre.run()
    message = str(info.value)
    assert "\n" not in message
    assert "no HyperLipsBase checkpoint in" in message
    assert "run `python run_talkingface.py --model=HyperLipsBase --dataset=MEAD` first" in message


def test_layout_has_every_frame_without_gaps(hr_data):
    config = hr_data_config(hr_data)
    root = hr_root(config)
    assert os.path.dirname(root) == os.path.join(config["preprocessed_root"], "hr_128")
    assert os.path.basename(root).startswith("base_")   # keyed by the Base checkpoint's content
    clips = read_filelist(config, "train")
    assert clips
    for clip_dir in clips:
        clip = Clip(clip_dir)
        folder = os.path.join(root, clip.id)
        assert os.path.isfile(os.path.join(folder, ".done"))
        for name in IMAGE_FOLDERS:
            files = sorted(os.listdir(os.path.join(folder, name)), key=lambda f: int(f.split(".")[0]))
            assert [int(f.split(".")[0]) for f in files] == list(range(clip.n_frames)), name
        assert cv2.imread(frame_path(folder, "GT_IMG", 0)).shape == (128, 128, 3)
        assert cv2.imread(frame_path(folder, "HYPER_IMG", 0)).shape == (128, 128, 3)
        boxes = np.load(os.path.join(folder, "lip_boxes.npy"))
        assert boxes.shape == (clip.n_frames, 4)
        assert (boxes[:, 0] < boxes[:, 2]).all() and (boxes[:, 1] < boxes[:, 3]).all()
        assert boxes.min() >= 0 and boxes.max() <= 128
    assert not HyperLipsHRPreprocessor(config).is_stale()


def test_lip_mask_of_real_frames_lies_on_the_face(hr_data):
    config = hr_data_config(hr_data)
    clip = Clip(read_filelist(config, "train")[0])
    folder = os.path.join(hr_root(config), clip.id)
    meta = json.load(open(os.path.join(folder, "meta.json")))
    assert meta["gt_landmarks_interpolated"] == []      # a real face in every frame
    with FaceMesh(static_image_mode=True) as mesh:
        for k in range(0, clip.n_frames, 6):
            mask = cv2.imread(frame_path(folder, "GT_MASK", k), cv2.IMREAD_GRAYSCALE)
            assert set(np.unique(mask)) == {0, 255}
            assert 0.01 < (mask > 0).mean() < 0.25           # the mouth region, not the whole face
            ys, xs = np.nonzero(mask)
            face = mesh.landmarks(cv2.imread(frame_path(folder, "GT_IMG", k)))
            assert face[:, 0].min() <= xs.min() and xs.max() <= face[:, 0].max() + 1
            assert ys.mean() > face[:, 1].mean()              # below the middle of the face
    # The same frame gives the same mask and sketch on every run (static mesh, no state).
    again = os.path.join(str(hr_data), "again")
    hyper = np.stack([cv2.imread(frame_path(folder, "HYPER_IMG", k)) for k in range(clip.n_frames)])
    write_hr_clip({"clip_dir": clip.dir, "out_dir": again, "img_size": 128, "data_root": config["data_root"],
                   "hyper": hyper, "done": "x"})
    for k in (0, clip.n_frames - 1):
        for name in ("GT_MASK", "HYPER_SKETCH"):
            assert np.array_equal(cv2.imread(frame_path(folder, name, k)), cv2.imread(frame_path(again, name, k)))


def test_frames_without_a_face_are_interpolated_not_dropped(hr_data, tmp_path):
    config = hr_data_config(hr_data)
    clip = Clip(read_filelist(config, "train")[0])
    # HYPER: real faces except two black frames (what an untrained Base model may give).
    hyper = np.stack([clip.frame(k, 128) for k in range(clip.n_frames)])
    hyper[[0, 5]] = 0
    _, n, summary = write_hr_clip({"clip_dir": clip.dir, "out_dir": str(tmp_path / "hr"), "img_size": 128,
                                   "data_root": config["data_root"], "hyper": hyper, "done": "x"})
    assert n == clip.n_frames
    assert summary["hyper_landmarks_interpolated"] == [0, 5]
    for k in (0, 5):
        assert cv2.imread(frame_path(str(tmp_path / "hr"), "HYPER_SKETCH", k)).max() == 255
    # A clip where the mesh never finds a face: blank sketches and the default lip box, no crash.
    _, _, summary = write_hr_clip({"clip_dir": clip.dir, "out_dir": str(tmp_path / "blank"), "img_size": 128,
                                   "data_root": config["data_root"], "hyper": np.zeros_like(hyper), "done": "x"})
    assert summary["hyper_landmarks_interpolated"] == "all"
    assert cv2.imread(frame_path(str(tmp_path / "blank"), "HYPER_SKETCH", 3)).max() == 0


def test_fill_missing_landmarks():
    a, b = np.zeros((468, 2), np.float32), np.full((468, 2), 10, np.float32)
    filled, missing = fill_missing_landmarks([None, a, None, None, b, None])
    assert missing == [0, 2, 3, 5]
    assert np.allclose(filled[0], 0) and np.allclose(filled[5], 10)
    assert np.allclose(filled[2], 10 / 3) and np.allclose(filled[3], 20 / 3)
    filled, missing = fill_missing_landmarks([None, None])
    assert missing == [0, 1] and np.isnan(filled).all()


def test_dataset_items(hr_data):
    config = hr_data_config(hr_data)
    dataset = HyperLipsHRDataset(config, "train")
    assert len(dataset) == sum(Clip(d).n_frames for d in read_filelist(config, "train"))
    item = dataset[len(dataset) - 1]
    assert item["input"].shape == (6, 128, 128) and item["input"].dtype == torch.float32
    assert set(item) == {"input", "gt", "lip_box"}      # GT_MASK only gives the lip boxes
    assert item["gt"].shape == (3, 128, 128)
    assert item["lip_box"].shape == (4,) and item["lip_box"].dtype == torch.int64
    assert set(torch.unique(item["input"][3:]).tolist()) <= {0.0, 1.0}   # the binarised sketch
    x1, y1, x2, y2 = item["lip_box"].tolist()
    assert 0 <= x1 < x2 <= 128 and 0 <= y1 < y2 <= 128
    with pytest.raises(IndexError):
        dataset[len(dataset)]


def test_decoder_input_recipe():
    image = np.full((128, 128, 3), 200, np.uint8)
    sketch = np.zeros((128, 128, 3), np.uint8)
    cv2.line(sketch, (10, 64), (118, 64), (255, 255, 255), 2)
    x = decoder_input(image, sketch)
    assert x.shape == (6, 128, 128) and x.dtype == np.float32
    assert np.allclose(x[:3], 200 / 255)
    assert set(np.unique(x[3:])) == {0.0, 1.0}
    assert x[3:].sum() > (sketch > 0).sum()  # blurred then thresholded: the lines get thicker


def test_staleness_and_resume(hr_data):
    config = hr_data_config(hr_data)
    pre = HyperLipsHRPreprocessor(config)
    assert not pre.is_stale()
    clip = Clip(read_filelist(config, "train")[0])
    folder = os.path.join(hr_root(config), clip.id)
    # An interrupted clip (no .done) is made again, frames included.
    os.remove(os.path.join(folder, ".done"))
    os.remove(frame_path(folder, "HYPER_SKETCH", 3))
    state_before = os.stat(os.path.join(hr_root(config), "state.json")).st_mtime_ns
    assert pre.is_stale()
    pre.run()
    assert not pre.is_stale()
    assert os.path.isfile(frame_path(folder, "HYPER_SKETCH", 3))
    assert os.stat(os.path.join(hr_root(config), "state.json")).st_mtime_ns == state_before  # resumed, not redone
    # Another resolution lives in its own folder: no YAML edit, no clash.
    assert os.path.basename(os.path.dirname(HyperLipsHRPreprocessor(hr_data_config(hr_data, img_size=256)).root)) == "hr_256"
    assert HyperLipsHRPreprocessor(hr_data_config(hr_data, img_size=256)).is_stale()


def test_new_base_checkpoint_makes_the_data_stale(hr_data):
    config = hr_data_config(hr_data)
    pre = HyperLipsHRPreprocessor(config)
    assert not pre.is_stale()
    path = save_random_base_checkpoint(config, step=2, seed=1)
    try:
        assert pre.is_stale()
        explicit = hr_data_config(hr_data, base_checkpoint=checkpoint_path(
            os.path.join(config["checkpoint_root"], "MEAD", "HyperLipsBase"), 1))
        assert not HyperLipsHRPreprocessor(explicit).is_stale()   # pinned to the checkpoint it was made from
    finally:
        os.remove(path)
    assert not pre.is_stale()


def test_default_lip_box_is_in_the_lower_face():
    for size in (128, 256, 512):
        x1, y1, x2, y2 = default_lip_box(size)
        assert 0 <= x1 < x2 <= size and size // 2 <= y1 < y2 <= size


def test_gt_above_the_base_crop_size_is_recut_from_the_source_video(hr_data, tmp_path):
    config = hr_data_config(hr_data)
    clip = Clip(read_filelist(config, "train")[0])
    assert clip.meta["crop_size"] == 256
    hyper = np.stack([clip.frame(k, 128) for k in range(clip.n_frames)])
    out = str(tmp_path / "hr512")
    _, n, summary = write_hr_clip({"clip_dir": clip.dir, "out_dir": out, "img_size": 512,
                                   "data_root": config["data_root"], "hyper": hyper, "done": "x"})
    assert summary["gt_source"] == "source_video" and n == clip.n_frames
    for k in (0, n - 1):
        gt = cv2.imread(frame_path(out, "GT_IMG", k))
        assert gt.shape == (512, 512, 3)
        # The same box as the Base crop: shrunk back to 256 it matches that crop.
        shrunk = cv2.resize(gt, (256, 256), interpolation=cv2.INTER_AREA).astype(np.float32)
        assert np.abs(shrunk - clip.frame(k).astype(np.float32)).mean() < 6
    boxes = np.load(os.path.join(out, "lip_boxes.npy"))
    assert boxes.max() <= 512 and (boxes[:, 2] - boxes[:, 0]).min() > 40   # lip box in 512 px units


@pytest.mark.slow
def test_a_worker_pool_makes_the_same_data(hr_data, tmp_path):
    config = hr_data_config(hr_data)
    pooled = hr_data_config(hr_data, preprocessed_root=str(tmp_path / "pre"), hr_preprocess_workers=1)
    import shutil
    shutil.copytree(config["preprocessed_root"], pooled["preprocessed_root"],
                    ignore=shutil.ignore_patterns("hr_*"))
    pre = HyperLipsHRPreprocessor(pooled)
    assert pre.workers() == 1
    pre.run()
    assert not pre.is_stale()
    clip = Clip(read_filelist(config, "train")[0])
    for name in IMAGE_FOLDERS:
        for k in (0, clip.n_frames - 1):
            a = cv2.imread(frame_path(os.path.join(hr_root(config), clip.id), name, k))
            b = cv2.imread(frame_path(os.path.join(hr_root(pooled), clip.id), name, k))
            assert np.array_equal(a, b), (name, k)
