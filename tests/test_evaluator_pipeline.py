"""Evaluator.evaluate end to end on a tiny preprocessed split, and the standalone scorer CLI."""
import json
import os
import subprocess
import sys

import cv2
import numpy as np
import pytest
import torch
from torch import nn

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SR, FPS = 16000, 25


def _strict_json(text):
    def reject(constant):
        raise ValueError(f"non-standard JSON constant {constant}")
    return json.loads(text, parse_constant=reject)


def _synthetic_frames(n, size, seed):
    rng = np.random.default_rng(seed)
    base = cv2.resize(rng.integers(0, 256, (size // 8, size // 8, 3)).astype(np.uint8), (size, size))
    return np.stack([np.roll(base, k, axis=1) for k in range(n)])


def _write_clip(root, clip_id, n_frames, seed):
    from talkingface.utils.audio import melspectrogram, save_wav
    folder = os.path.join(root, clip_id)
    os.makedirs(folder)
    for k, frame in enumerate(_synthetic_frames(n_frames, 256, seed)):
        cv2.imwrite(os.path.join(folder, f"{k}.jpg"), frame, [cv2.IMWRITE_JPEG_QUALITY, 95])
    t = np.arange(n_frames * SR // FPS) / SR
    wav = (0.3 * np.sin(2 * np.pi * 440 * t) * (1 + np.sin(2 * np.pi * 3 * t)) / 2).astype(np.float32)
    save_wav(os.path.join(folder, "audio.wav"), wav)
    np.save(os.path.join(folder, "mel.npy"), melspectrogram(wav))
    np.save(os.path.join(folder, "boxes.npy"), np.tile(np.float32([0, 0, 256, 256]), (n_frames, 1)))
    with open(os.path.join(folder, "meta.json"), "w") as f:
        json.dump({"source": f"{clip_id}.mp4", "fps": FPS, "n_frames": n_frames, "width": 256,
                   "height": 256, "first_frame": 0}, f)
    open(os.path.join(folder, ".done"), "w").close()


class TinyFeatures(nn.Module):
    """A stand-in FID feature extractor (TorchScript file): RGB [0,1] -> (N, 2048)."""

    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(48, 2048)

    def forward(self, x):
        return self.proj(nn.functional.adaptive_avg_pool2d(x, 4).flatten(1))


class FakeTrainer:
    """generate_clip: the clip's own frames at 128 px ('exact') or with noise ('noisy')."""
    global_step = 7

    def __init__(self):
        self.requested = {}

    def generate_clip(self, clip):
        self.requested[clip.id] = clip.n_frames
        frames = np.stack([clip.frame(k, 128) for k in range(clip.n_frames)])
        if clip.id == "noisy":
            noise = np.random.default_rng(0).integers(-20, 21, frames.shape)
            frames = np.clip(frames.astype(int) + noise, 0, 255).astype(np.uint8)
        return frames


def test_evaluate_writes_metrics_json_table_and_samples(workdir):
    from talkingface.config import Config
    from talkingface.evaluator import Evaluator
    from talkingface.model.audio_driven_talkingface.syncnet import SyncNet
    from talkingface.utils.checkpoint import checkpoint_path, save_checkpoint_file

    root = "dataset/demo/preprocessed"
    _write_clip(root, "exact", 20, seed=1)
    _write_clip(root, "noisy", 20, seed=2)
    os.makedirs(f"{root}/filelists")
    with open(f"{root}/filelists/val.txt", "w") as f:
        f.write("exact\nnoisy\n")
    torch.manual_seed(0)
    save_checkpoint_file({"state_dict": SyncNet().state_dict()}, checkpoint_path("checkpoints/demo/SyncNet", 3))
    torch.jit.script(TinyFeatures()).save("fid.pt")

    config = Config(model="HyperLipsBase", dataset="demo", config_dict={
        "device": "cpu", "metrics": ["PSNR", "SSIM", "LMD", "LSE", "FID"], "eval_max_frames": 8,
        "eval_num_sample_videos": 1, "inception_path": "fid.pt", "syncnet_v2_path": "missing/syncnet_v2.model"})
    trainer = FakeTrainer()
    results = Evaluator(config).evaluate(trainer, split="val")

    assert trainer.requested == {"exact": 8, "noisy": 8}      # frame cap reaches generate_clip
    with open(os.path.join(config["results_dir"], "metrics.json")) as f:
        saved = _strict_json(f.read())
    assert saved["clips"] == 2 and saved["global_step"] == 7 and saved["split"] == "val"
    assert saved["metrics"] == ["PSNR", "SSIM", "LMD", "FID", "SyncScore"]   # SyncScore stands in for LSE
    assert "syncnet_v2" in saved["skipped"]["LSE"]
    exact, noisy = saved["per_clip"]["exact"], saved["per_clip"]["noisy"]
    assert exact["PSNR"] == "inf" and exact["SSIM"] == 1.0 and exact["frames"] == 8
    assert 15 < noisy["PSNR"] < 40 and noisy["SSIM"] < 1
    assert saved["mean"]["PSNR"] == "inf" and results["mean"]["PSNR"] == float("inf")
    # no face in synthetic frames: LMD has no value, every frame counted as skipped
    assert exact["LMD"] is None and saved["mean"]["LMD-skipped"] == 16
    assert np.isfinite(noisy["SyncScore-C"]) and "SyncScore-C" in saved["mean"]
    assert saved["mean"]["FID-frames"] == 16 and saved["mean"]["FID"] > 0
    assert "FID" not in exact                                   # a dataset-level number only
    assert os.path.isfile(os.path.join(config["results_dir"], "samples", "exact.mp4"))
    assert not os.path.exists(os.path.join(config["results_dir"], "samples", "noisy.mp4"))


def _run_score(*args):
    env = dict(os.environ, PYTHONPATH=REPO_ROOT)
    return subprocess.run([sys.executable, "-m", "talkingface.evaluator.score", *args], cwd=REPO_ROOT,
                          capture_output=True, text=True, env=env, timeout=120)


def test_score_cli_on_frame_folders(tmp_path):
    real = _synthetic_frames(6, 64, seed=3)
    for name, frames in (("gen", real), ("real", real)):
        os.makedirs(tmp_path / name)
        for k, frame in enumerate(frames):
            cv2.imwrite(str(tmp_path / name / f"{k}.png"), frame)
    proc = _run_score("--generated", str(tmp_path / "gen"), "--real", str(tmp_path / "real"),
                      "--metrics", "PSNR", "SSIM", "--size", "64", "--device", "cpu")
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = _strict_json(proc.stdout)
    assert result["mean"]["PSNR"] == "inf" and result["mean"]["SSIM"] == 1.0 and result["mean"]["frames"] == 6

    proc = _run_score("--generated", str(tmp_path / "nothing"), "--real", str(tmp_path / "real"))
    assert proc.returncode == 2 and proc.stdout == ""
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "nothing" in errors[0]


@pytest.mark.slow
def test_score_cli_on_real_video(samples_dir):
    video = str(samples_dir / "video1.mp4")
    proc = _run_score("--generated", video, "--real", video, "--metrics", "PSNR", "LMD",
                      "--max_frames", "8", "--device", "cpu")
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = _strict_json(proc.stdout)
    assert result["mean"]["PSNR"] == "inf" and result["mean"]["LMD"] == 0.0 and result["mean"]["LMD-frames"] == 8


def test_evaluate_uses_trainer_reference_clip_and_caps_clips(workdir):
    from talkingface.config import Config
    from talkingface.evaluator import Evaluator

    root = "dataset/demo/preprocessed"
    for seed, clip_id in enumerate(("a", "b", "c")):
        _write_clip(root, clip_id, 6, seed=seed)
    os.makedirs(f"{root}/filelists")
    with open(f"{root}/filelists/test.txt", "w") as f:
        f.write("a\nb\nc\n")

    class HRLikeTrainer(FakeTrainer):
        def generate_clip(self, clip):
            return np.full((clip.n_frames, 96, 96, 3), 7, np.uint8)

        def reference_clip(self, clip):     # its own ground truth, at its own size
            return np.full((clip.n_frames, 96, 96, 3), 7, np.uint8)

    config = Config(model="HyperLipsBase", dataset="demo", config_dict={
        "device": "cpu", "metrics": ["PSNR"], "eval_max_clips": 2, "eval_num_sample_videos": 0})
    results = Evaluator(config).evaluate(HRLikeTrainer(), split="test")
    assert list(results["per_clip"]) == ["a", "b"] and results["mean"]["PSNR"] == float("inf")
    assert not os.path.exists(os.path.join(config["results_dir"], "samples"))
