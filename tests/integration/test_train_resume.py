"""Exact resume: a training run killed (SIGKILL) right after a checkpoint, or stopped at max_steps
and started again with a larger one, ends with the very weights and optimizer states of a run never
stopped (CPU, `reproducible: true`). Every run is a real process of run_talkingface.py (through
tests/interrupted_run.py, with reduced-width networks) on the tiny demo set; the interrupted ones
use DataLoader workers, the uninterrupted ones none, so the training order cannot depend on either."""
import glob
import os
import pathlib
import signal
import subprocess
import sys
import time

import pytest
import torch

from talkingface.utils.checkpoint import checkpoint_path, latest_checkpoint
from paths import TESTS_DIR

DRIVER = TESTS_DIR / "interrupted_run.py"
RUN_TIMEOUT = 600

# SyncNet: 3 batches of 2 items an epoch, a checkpoint every 2 steps: one run is killed mid-epoch
# (after step 4), another finishes at the end of an epoch (max_steps 3) and goes on to 5.
SYNCNET = dict(batch_size=2, eval_batch_size=2, samples_per_epoch=6, checkpoint_interval=2, max_steps=5)
# HyperLipsBase with its default loss (L1 + expert + GAN): 3 one-window batches an epoch, killed
# after step 1 and resumed mid-epoch for step 2 (SyncNet's runs cross epochs).
BASE = dict(batch_size=1, eval_batch_size=1, samples_per_epoch=3, checkpoint_interval=1, max_steps=2)


def run_args(demo, root, model, **settings):
    values = dict(demo, checkpoint_root=root / "checkpoints", results_root=root / "results", device="cpu",
                  reproducible=True, num_workers=0, evaluate_after_training=False, eval_interval=1000,
                  max_val_batches=1, log_interval=1, keep_checkpoints=10)
    values.update(settings)
    return [f"--model={model}", "--dataset=demo"] + [f"--{k}={v}" for k, v in values.items()]


def child_env(pause_after=None):
    env = {k: v for k, v in os.environ.items() if k != "PAUSE_AFTER_CHECKPOINT"}
    env["OMP_NUM_THREADS"] = "1"       # the same arithmetic in every run (and fair to a shared machine)
    if pause_after:
        env["PAUSE_AFTER_CHECKPOINT"] = str(pause_after)
    return env


def train(args):
    """Run to the end; returns the log (stderr)."""
    done = subprocess.run([sys.executable, str(DRIVER), *args], env=child_env(), capture_output=True,
                          text=True, timeout=RUN_TIMEOUT)
    assert done.returncode == 0, done.stderr[-4000:]
    return done.stderr


def train_and_kill_after(args, step, folder, log_path):
    """Start a run, wait until its checkpoint of `step` is on disk, then kill -9 it."""
    with open(log_path, "w") as log:
        process = subprocess.Popen([sys.executable, str(DRIVER), *args], env=child_env(pause_after=step),
                                   stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + RUN_TIMEOUT
        while not os.path.exists(checkpoint_path(str(folder), step)):
            assert process.poll() is None, f"the run ended early:\n{pathlib.Path(log_path).read_text()[-4000:]}"
            assert time.monotonic() < deadline, "no checkpoint in time"
            time.sleep(0.05)
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
    finally:
        try:
            os.killpg(process.pid, signal.SIGKILL)   # its DataLoader workers, orphaned by the kill
        except ProcessLookupError:
            pass
        process.wait()
    assert process.returncode == -signal.SIGKILL


def final_state(root, model):
    return torch.load(latest_checkpoint(str(root / "checkpoints" / "demo" / model)), weights_only=True)


def assert_same_training_state(resumed, straight):
    assert resumed["global_step"] == straight["global_step"]
    for name, weights in straight["networks"].items():
        for key, value in weights.items():
            assert torch.equal(resumed["networks"][name][key], value), f"{name}.{key} differs"
    for name, optimizer in straight["optimizers"].items():
        for index, slots in optimizer["state"].items():
            for key, value in slots.items():
                assert torch.equal(resumed["optimizers"][name]["state"][index][key], value), f"{name} {key}"


@pytest.fixture(scope="module")
def syncnet_straight(demo_base_data, tmp_path_factory):
    """The uninterrupted SyncNet run (SYNCNET, no workers) and its final checkpoint."""
    root = tmp_path_factory.mktemp("syncnet_straight")
    train(run_args(demo_base_data, root, "SyncNet", **SYNCNET))
    return root, final_state(root, "SyncNet")


@pytest.mark.slow
def test_syncnet_killed_after_a_checkpoint_resumes_to_the_same_weights(demo_base_data, syncnet_straight, tmp_path,
                                                                       killed_writer_temp_name):
    args = run_args(demo_base_data, tmp_path, "SyncNet", **dict(SYNCNET, num_workers=2))
    folder = tmp_path / "checkpoints" / "demo" / "SyncNet"
    train_and_kill_after(args, 4, folder, tmp_path / "killed.log")
    assert latest_checkpoint(str(folder)).endswith("checkpoint_step000000004.pth")
    assert (folder / "RUNNING").exists()
    # What a kill -9 during a checkpoint save leaves: a temp file of the checkpoint's naming.
    stale = folder / killed_writer_temp_name(folder / "checkpoint_step000000008.pth")
    stale.write_bytes(os.urandom(4096))

    log = train(args)
    assert "checkpoint_step000000004.pth (step 4, epoch 1; that run was interrupted)" in log
    assert not stale.exists() and not glob.glob(str(folder / ".*.tmp-*"))
    assert not (folder / "RUNNING").exists()
    _, straight = syncnet_straight
    assert_same_training_state(final_state(tmp_path, "SyncNet"), straight)


@pytest.mark.slow
def test_syncnet_finished_at_max_steps_goes_on_to_the_same_weights(demo_base_data, syncnet_straight, tmp_path):
    train(run_args(demo_base_data, tmp_path, "SyncNet", **dict(SYNCNET, max_steps=3)))
    assert final_state(tmp_path, "SyncNet")["global_step"] == 3
    log = train(run_args(demo_base_data, tmp_path, "SyncNet", **SYNCNET))
    assert "(step 3, epoch 0; that run had finished)" in log
    _, straight = syncnet_straight
    assert_same_training_state(final_state(tmp_path, "SyncNet"), straight)


@pytest.mark.slow
def test_base_killed_after_a_checkpoint_resumes_to_the_same_weights(demo_base_data, syncnet_straight, tmp_path):
    expert = latest_checkpoint(str(syncnet_straight[0] / "checkpoints" / "demo" / "SyncNet"))
    settings = dict(BASE, sync_expert_path=expert)
    train(run_args(demo_base_data, tmp_path / "straight", "HyperLipsBase", **settings))
    straight = final_state(tmp_path / "straight", "HyperLipsBase")
    assert set(straight["networks"]) == {"generator", "discriminator"}

    args = run_args(demo_base_data, tmp_path / "killed", "HyperLipsBase", **dict(settings, num_workers=1))
    folder = tmp_path / "killed" / "checkpoints" / "demo" / "HyperLipsBase"
    train_and_kill_after(args, 1, folder, tmp_path / "killed.log")
    log = train(args)
    assert "(step 1, epoch 0; that run was interrupted)" in log
    assert_same_training_state(final_state(tmp_path / "killed", "HyperLipsBase"), straight)
