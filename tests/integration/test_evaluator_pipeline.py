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
from paths import REPO_ROOT

REPO_ROOT = str(REPO_ROOT)
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
    """A preprocessed clip whose source video (source/<clip_id>.mp4, 256x256) is its crops' frame."""
    from talkingface.utils.audio import melspectrogram, save_wav
    from talkingface.utils.video import VideoWriter
    folder = os.path.join(root, clip_id)
    os.makedirs(folder)
    source = os.path.abspath(os.path.join("source", f"{clip_id}.mp4"))
    with VideoWriter(source, FPS) as writer:
        for k, frame in enumerate(_synthetic_frames(n_frames, 256, seed)):
            cv2.imwrite(os.path.join(folder, f"{k}.jpg"), frame, [cv2.IMWRITE_JPEG_QUALITY, 95])
            writer.write(frame)
    t = np.arange(n_frames * SR // FPS) / SR
    wav = (0.3 * np.sin(2 * np.pi * 440 * t) * (1 + np.sin(2 * np.pi * 3 * t)) / 2).astype(np.float32)
    save_wav(os.path.join(folder, "audio.wav"), wav)
    np.save(os.path.join(folder, "mel.npy"), melspectrogram(wav))
    np.save(os.path.join(folder, "boxes.npy"), np.tile(np.float32([0, 0, 256, 256]), (n_frames, 1)))
    with open(os.path.join(folder, "meta.json"), "w") as f:
        json.dump({"source": source, "fps": FPS, "n_frames": n_frames, "width": 256,
                   "height": 256, "first_frame": 0}, f)
    open(os.path.join(folder, ".done"), "w").close()


class TinyFeatures(nn.Module):
    """A stand-in FID feature extractor (TorchScript file): RGB [0,1] -> (N, 2048)."""

    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(48, 2048)

    def forward(self, x):
        return self.proj(nn.functional.adaptive_avg_pool2d(x, 4).flatten(1))


class FakeSyncer:
    """LipSyncer's interface: run(source, wav, output) writes the source frames to `output` (with
    noise on the calls numbered in `noisy_calls`, counted from 0 in filelist order) and gives a
    face box over the whole frame."""
    device = torch.device("cpu")

    def __init__(self, noisy_calls=()):
        self.requested, self.noisy_calls = [], noisy_calls

    def settings(self):
        return None

    def networks(self, settings):  # torch networks (metrics.json records the backend)
        return torch.nn.Identity(), None

    def run(self, source, wav, output):
        from talkingface.inference.pipeline import InferenceResult
        from talkingface.utils.video import VideoWriter
        frames = list(source.scan(max_frames=len(wav) // 640))
        self.requested.append(len(frames))
        if len(self.requested) - 1 in self.noisy_calls:
            noise = np.random.default_rng(0).integers(-20, 21, np.shape(frames))
            frames = list(np.clip(np.asarray(frames, int) + noise, 0, 255).astype(np.uint8))
        with VideoWriter(output, FPS) as writer:
            for frame in frames:
                writer.write(frame)
        boxes = np.tile(np.float32([0, 0, 256, 256]), (len(frames), 1))
        return InferenceResult(output, len(frames), len(frames), boxes, 0.0, 0)


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
        "device": "cpu", "infer_bf16": False,  # "auto" would turn bf16 on where the CPU has it
        "metrics": ["PSNR", "SSIM", "LMD", "LSE", "FID"], "eval_max_frames": 8, "eval_num_sample_videos": 1, "inception_path": "fid.pt", "syncnet_v2_path": "missing/syncnet_v2.model"})
    syncer = FakeSyncer(noisy_calls={1})
    results = Evaluator(config).evaluate(syncer, split="val", provenance={"global_step": 7})

    assert syncer.requested == [8, 8]      # the frame cap reaches the generation
    with open(os.path.join(config["results_dir"], "metrics.json")) as f:
        saved = _strict_json(f.read())
    assert saved["clips"] == 2 and saved["global_step"] == 7 and saved["split"] == "val"
    assert saved["frames"] == 16 and saved["reference_frame"] == "first" and saved["precision"] == "fp32"
    assert saved["backend"] == "torch"
    assert saved["tracker"]["face_max_gap"] == 5 and saved["crop_size"] == 256
    assert saved["metrics"] == ["PSNR", "SSIM", "LMD", "FID", "SyncScore"]   # SyncScore stands in for LSE
    assert "syncnet_v2" in saved["skipped"]["LSE"]
    exact, noisy = saved["per_clip"]["exact"], saved["per_clip"]["noisy"]
    # the output is scored as written to the mp4 (x264 crf 18): an exact copy loses a little
    assert exact["PSNR"] > 33 and exact["SSIM"] > 0.95 and exact["frames"] == 8
    assert 15 < noisy["PSNR"] < exact["PSNR"] - 5 and noisy["SSIM"] < exact["SSIM"]
    assert saved["mean"]["PSNR"] == results["mean"]["PSNR"] == pytest.approx((exact["PSNR"] + noisy["PSNR"]) / 2)
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
    # the generated frames: the real ones with known noise (PNG is lossless, and 64 px needs no resize)
    noise = np.random.default_rng(4).integers(-12, 13, real.shape)
    generated = np.clip(real.astype(int) + noise, 0, 255).astype(np.uint8)
    for name, frames in (("gen", generated), ("real", real)):
        os.makedirs(tmp_path / name)
        for k, frame in enumerate(frames):
            cv2.imwrite(str(tmp_path / name / f"{k}.png"), frame)
    proc = _run_score("--generated", str(tmp_path / "gen"), "--real", str(tmp_path / "real"),
                      "--metrics", "PSNR", "SSIM", "--size", "64", "--device", "cpu")
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = _strict_json(proc.stdout)
    # PSNR: the mean over frames of 10 log10(255^2 / MSE), computed here with numpy alone
    mse = ((generated.astype(np.float64) - real.astype(np.float64)) ** 2).reshape(6, -1).mean(axis=1)
    assert result["mean"]["PSNR"] == pytest.approx(np.mean(10 * np.log10(255.0 ** 2 / mse)), abs=1e-4)
    assert 0.3 < result["mean"]["SSIM"] < 0.99 and result["mean"]["frames"] == 6

    proc = _run_score("--generated", str(tmp_path / "nothing"), "--real", str(tmp_path / "real"))
    assert proc.returncode == 2 and proc.stdout == ""
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "nothing" in errors[0]


@pytest.mark.slow
def test_score_cli_on_real_video(samples_dir, tmp_path):
    """Two lossless (FFV1) videos of the sample's first 8 frames: the real one with its levels
    capped at 245, the generated one the same frames 10 levels brighter. The crops of both are cut
    with the real video's boxes and shrunk alike to 128 px (INTER_AREA: a weighted mean, so the
    offset carries through), so every crop pixel differs by 10: PSNR = 10 log10(255^2 / 100)."""
    import subprocess as sp

    from talkingface.utils.ffmpeg import ffmpeg_exe
    from talkingface.utils.video import read_frames
    frames = np.stack(read_frames(str(samples_dir / "video1.mp4"), FPS, 8))
    real = np.minimum(frames, 245)
    paths = {"real": str(tmp_path / "real.mkv"), "gen": str(tmp_path / "gen.mkv")}
    for name, video in (("real", real), ("gen", real + 10)):
        height, width = video.shape[1:3]
        sp.run([ffmpeg_exe(), "-nostdin", "-loglevel", "error", "-y", "-f", "rawvideo", "-pix_fmt", "bgr24",
                "-s", f"{width}x{height}", "-r", str(FPS), "-i", "pipe:0", "-c:v", "ffv1", "-pix_fmt", "bgr0",
                paths[name]], input=video.tobytes(), check=True)
        np.testing.assert_array_equal(np.stack(read_frames(paths[name], FPS)), video)   # lossless
    proc = _run_score("--generated", paths["gen"], "--real", paths["real"], "--metrics", "PSNR", "LMD",
                      "--size", "128", "--max_frames", "8", "--device", "cpu")
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = _strict_json(proc.stdout)
    assert result["mean"]["frames"] == 8 and result["mean"]["LMD-frames"] == 8
    assert result["mean"]["PSNR"] == pytest.approx(10 * np.log10(255.0 ** 2 / 100), abs=1e-3)
    # the same face 10 levels brighter: the lip landmarks hardly move (under 1 px of the crop)
    assert 0 <= result["mean"]["LMD"] < 1 / 128


@pytest.mark.slow
def test_score_feeds_lse_the_syncnet_python_crops_of_the_full_frames(samples_dir, tmp_path, monkeypatch, capsys):
    """On videos the scorer cuts LSE's input from the full generated frames with syncnet_python's
    geometry around the detected face (its box without our chin pad), not from the face crops."""
    from talkingface.evaluator import score
    from talkingface.model import syncnet_v2
    torch.manual_seed(0)
    weights = tmp_path / "syncnet_v2.model"
    torch.save(syncnet_v2.SyncNetV2().state_dict(), weights)
    fed = []
    real_embeddings = syncnet_v2.syncnet_v2_embeddings
    monkeypatch.setattr(syncnet_v2, "syncnet_v2_embeddings",
                        lambda net, frames, *rest: fed.append(frames) or real_embeddings(net, frames, *rest))
    video = str(samples_dir / "video1.mp4")
    assert score.main(["--generated", video, "--real", video, "--metrics", "LSE", "--max_frames", "12",
                       "--syncnet_v2", str(weights), "--device", "cpu"]) == 0
    result = _strict_json(capsys.readouterr().out)
    assert isinstance(result["mean"]["LSE-C"], float) and isinstance(result["mean"]["LSE-D"], float)

    frames = score.read_video(video, 12)
    config = score.score_config(score.parse_args(["--generated", video, "--real", video]))
    boxes = score.detect_boxes(frames, config).astype(np.float64)
    boxes[:, 3] -= config["face_pad_bottom"]
    np.testing.assert_array_equal(fed[0], syncnet_v2.syncnet_crops(frames, boxes))
    assert fed[0].shape == (12, 224, 224, 3)


def test_evaluate_caps_clips_and_needs_the_source_videos(workdir):
    from talkingface.config import Config
    from talkingface.evaluator import Evaluator
    from talkingface.utils.errors import InputError

    root = "dataset/demo/preprocessed"
    for seed, clip_id in enumerate(("a", "b", "c")):
        _write_clip(root, clip_id, 6, seed=seed)
    os.makedirs(f"{root}/filelists")
    with open(f"{root}/filelists/test.txt", "w") as f:
        f.write("a\nb\nc\n")

    config = Config(model="HyperLipsBase", dataset="demo", config_dict={
        "device": "cpu", "metrics": ["PSNR"], "eval_max_clips": 2, "eval_num_sample_videos": 0})
    syncer = FakeSyncer()
    results = Evaluator(config).evaluate(syncer, split="test")
    assert list(results["per_clip"]) == ["a", "b"] and results["mean"]["PSNR"] > 30
    assert syncer.requested == [6, 6] and results["frames"] == 12 and results["max_clips"] == 2
    assert not os.path.exists(os.path.join(config["results_dir"], "samples"))

    os.remove("source/c.mp4")       # a clip whose source video is gone: one line, before any generation
    config["eval_max_clips"] = 0
    with pytest.raises(InputError, match="source videos of 1 clip.*c"):
        Evaluator(config).evaluate(FakeSyncer(), split="test")
