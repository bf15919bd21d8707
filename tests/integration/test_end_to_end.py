"""The README's main job in miniature: demo data -> SyncNet -> Base -> HR -> infer, via the CLI,
with reduced-width networks (tests/narrow_networks.py): the chain is plumbing."""
import json
import math
import os

import pytest

import narrow_networks
from run_talkingface import main
from talkingface.utils.checkpoint import latest_checkpoint
from talkingface.utils.video import probe_video

# Small everything: 4 clips of 1 s (25 frames), a couple of steps per stage, preprocessing in this
# process (no pool start-up), no sample videos.
TINY = ["--dataset=demo", "--device=cpu", "--demo_num_clips=4", "--demo_clip_seconds=1.0", "--num_workers=0",
        "--num_preprocess_workers=1", "--eval_max_frames=6", "--eval_num_sample_videos=0", "--max_val_batches=1"]


def stage(model, *extra):
    return main([f"--model={model}", *TINY, *extra])


@pytest.mark.slow
def test_every_stage_chains_by_default_paths(workdir, monkeypatch):
    narrow_networks.install(monkeypatch)
    # Base before its expert: a one-line error naming the command to run first
    assert stage("HyperLipsBase", "--max_steps=1") == 2

    assert stage("SyncNet", "--max_steps=2", "--batch_size=4", "--eval_batch_size=4") == 0
    assert latest_checkpoint("checkpoints/demo/SyncNet")
    syncnet = json.load(open("results/demo/SyncNet/metrics.json"))
    assert syncnet["step"] == 2 and 0 <= syncnet["accuracy"] <= 1 and math.isfinite(syncnet["loss"])

    assert stage("HyperLipsBase", "--max_steps=2", "--batch_size=1", "--eval_batch_size=1") == 0
    metrics = json.load(open("results/demo/HyperLipsBase/metrics.json"))
    for name in ("PSNR", "SSIM"):   # scored, not merely listed (a metric that cannot run is under "skipped")
        assert name in metrics["metrics"] and name not in metrics["skipped"], metrics["skipped"]
        assert isinstance(metrics["mean"][name], float) and math.isfinite(metrics["mean"][name])
    assert 0 < metrics["mean"]["PSNR"] < 60 and 0 < metrics["mean"]["SSIM"] < 1

    assert stage("HyperLipsHR", "--max_steps=2", "--batch_size=2", "--eval_batch_size=2") == 0
    assert latest_checkpoint("checkpoints/demo/HyperLipsHR")
    assert os.path.isdir("dataset/demo/preprocessed/hr_128")
    assert os.path.isfile("results/demo/HyperLipsHR/metrics.json")

    # a second run of a finished stage trains nothing and keeps its checkpoint
    before = latest_checkpoint("checkpoints/demo/HyperLipsHR")
    assert stage("HyperLipsHR", "--max_steps=2", "--batch_size=2", "--evaluate_after_training=false") == 0
    assert latest_checkpoint("checkpoints/demo/HyperLipsHR") == before

    video = "dataset/demo/data/M000/front/neutral/level_1/001.mp4"
    audio = "dataset/demo/data/M000/front/happy/level_1/001.mp4"
    assert main(["--model=HyperLipsHR", "--dataset=demo", "--device=cpu", "--mode=infer", f"--video={video}",
                 f"--audio={audio}", "--output=out.mp4"]) == 0
    info, source = probe_video("out.mp4"), probe_video(video)
    assert info.has_audio and (info.width, info.height) == (source.width, source.height)
    assert info.n_frames == 25   # the 1 s of the driving clip's audio

    # Base trained further after HR: evaluating HR runs on the Base checkpoint its data came from
    # (the log says so) and keeps the HR data that checkpoint was trained on.
    hr_data = sorted(os.listdir("dataset/demo/preprocessed/hr_128"))
    assert stage("HyperLipsBase", "--max_steps=3", "--batch_size=1", "--evaluate_after_training=false") == 0
    assert stage("HyperLipsHR", "--mode=evaluate", "--eval_split=val", "--metrics=[PSNR]") == 0
    metrics = json.load(open("results/demo/HyperLipsHR/metrics.json"))
    assert metrics["split"] == "val" and metrics["base_checkpoint"]["step"] == 2
    with open("results/demo/HyperLipsHR/run.log") as f:
        assert "runs on the Base checkpoint it was trained on" in f.read().split("mode evaluate")[-1]
    assert sorted(os.listdir("dataset/demo/preprocessed/hr_128")) == hr_data
