"""The shared Trainer loop on a tiny regression problem: steps, checkpoints, resume, errors."""
import functools
import glob
import os
import random
import shutil

import numpy as np
import pytest
import torch

from talkingface.trainer import TrainingError
from talkingface.utils.checkpoint import checkpoint_path, latest_checkpoint, list_checkpoints
from builders import LINE, LineDataset, LineTrainer, make_config
from paths import REPO_ROOT

line_config = functools.partial(make_config, "SyncNet", **LINE)


def test_training_lowers_the_loss_and_writes_checkpoints(workdir):
    trainer = LineTrainer(line_config(max_steps=40, checkpoint_interval=10))
    first = trainer.validate(trainer.build_dataloader(LineDataset(16), train=False))["mse"]
    trainer.fit()
    trainer.close()
    assert trainer.global_step == 40
    assert trainer.last_validation["mse"] < first / 4
    steps = [step for step, _ in list_checkpoints(trainer.checkpoint_dir)]
    assert steps == [30, 40]                          # keep_checkpoints=2 prunes the older ones
    state = torch.load(latest_checkpoint(trainer.checkpoint_dir), weights_only=True)
    assert state["global_step"] == 40 and set(state["networks"]) == {"line", "critic"}
    assert set(state["optimizers"]) == {"line", "critic"} and "weight" in state["state_dict"]
    # the last validation before the checkpoint (every 6 steps): what av_offset judges an expert by
    assert state["validation"]["step"] == 36 and state["validation"]["mse"] > 0
    assert not os.path.exists(os.path.join(trainer.checkpoint_dir, "RUNNING"))
    assert not glob.glob(os.path.join(trainer.checkpoint_dir, ".*.tmp-*"))


def test_tensorboard_scalars_are_written(workdir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    trainer = LineTrainer(line_config(max_steps=6))
    trainer.fit()
    trainer.log_images("samples", torch.rand(2, 3, 8, 8))
    trainer.close()
    events = EventAccumulator(os.path.join(trainer.results_dir, "tensorboard"))
    events.Reload()
    assert {"train/mse", "val/mse"} <= set(events.Tags()["scalars"])
    assert [e.step for e in events.Scalars("train/mse")] == [2, 4, 6]
    assert "samples" in events.Tags()["images"]


def test_resume_after_a_crash_continues_the_same_state(workdir):
    crashed = LineTrainer(line_config())
    crashed.fail_at_step = 8
    with pytest.raises(RuntimeError, match="simulated crash"):
        crashed.fit()
    assert os.path.exists(os.path.join(crashed.checkpoint_dir, "RUNNING"))
    saved = torch.load(latest_checkpoint(crashed.checkpoint_dir), weights_only=True)
    assert saved["global_step"] == 6

    resumed = LineTrainer(line_config())
    resumed.resume()
    assert resumed.global_step == 6
    for key, value in saved["optimizers"]["line"]["state"][0].items():
        assert torch.equal(resumed.optimizers["line"].state_dict()["state"][0][key], value)
    resumed.fit()
    assert resumed.global_step == 12


class NoisyLineDataset(LineDataset):
    """Items that draw from python's `random` (as the window datasets do)."""

    def __getitem__(self, index):
        item = super().__getitem__(index)
        return {"x": item["x"], "y": item["y"] + random.gauss(0.0, 0.5)}


class NoisyLineTrainer(LineTrainer):
    """Steps that draw from torch's, numpy's and python's global generators."""

    def build_datasets(self):
        return NoisyLineDataset(64), LineDataset(16)

    def train_step(self, batch):
        noise = 0.1 * torch.randn_like(batch["x"]) + float(np.random.normal(0, 0.1)) + random.random() * 0.1
        return super().train_step(dict(batch, x=batch["x"] + noise))


def _weights_and_moments(trainer):
    return [t.detach().clone() for net in trainer.networks.values() for t in net.state_dict().values()] + \
        [t.clone() for opt in trainer.optimizers.values() for slots in opt.state_dict()["state"].values()
         for t in slots.values() if torch.is_tensor(t)]


def test_resume_gives_the_same_weights_as_an_uninterrupted_run(workdir):
    """A crash at step 10 (last checkpoint: 6, in the middle of the first of two epochs), then a
    resume to step 12, ends with the weights and Adam moments of a run never stopped; a resume that
    restored neither the generators nor the position in the epoch would not."""
    settings = dict(max_steps=12, checkpoint_interval=6, keep_checkpoints=5)   # 8 batches an epoch
    straight = NoisyLineTrainer(line_config(**settings))
    straight.fit()
    expected = _weights_and_moments(straight)
    os.rename("checkpoints", "checkpoints_straight")

    crashed = NoisyLineTrainer(line_config(**settings))
    crashed.fail_at_step = 10
    with pytest.raises(RuntimeError, match="simulated crash"):
        crashed.fit()
    saved = torch.load(latest_checkpoint(crashed.checkpoint_dir), weights_only=True)
    assert (saved["global_step"], saved["global_epoch"], saved["epoch_samples"]) == (6, 0, 48)
    shutil.copytree("checkpoints", "checkpoints_crashed")

    resumed = NoisyLineTrainer(line_config(**settings))
    resumed.fit()
    assert resumed.global_step == 12 and resumed.global_epoch == 1
    assert all(torch.equal(a, b) for a, b in zip(_weights_and_moments(resumed), expected))

    shutil.rmtree("checkpoints")
    shutil.copytree("checkpoints_crashed", "checkpoints")
    careless = NoisyLineTrainer(line_config(**settings))
    careless.resume()
    careless.epoch_samples, careless._resumed_rng = 0, None     # what a resume used to restore
    careless.resume = lambda: None
    careless.fit()
    assert not all(torch.equal(a, b) for a, b in zip(_weights_and_moments(careless), expected))


def test_finished_run_is_not_retrained_and_resume_false_archives(workdir):
    LineTrainer(line_config(max_steps=6)).fit()
    again = LineTrainer(line_config(max_steps=6))
    again.fit()
    assert again.global_step == 6
    fresh = LineTrainer(line_config(max_steps=3, resume=False))
    fresh.fit()
    assert fresh.global_step == 3
    assert glob.glob(os.path.join(fresh.checkpoint_dir, "previous_*", "checkpoint_step000000006.pth"))


def test_resume_true_without_checkpoint_is_an_error(workdir):
    from talkingface.utils.errors import CheckpointError
    with pytest.raises(CheckpointError, match="no checkpoint"):
        LineTrainer(line_config(resume=True)).fit()


def test_non_finite_loss_stops_with_a_clear_error(workdir):
    class Exploding(LineTrainer):
        def loss(self, batch):
            return super().loss(batch) * float("nan")

    with pytest.raises(TrainingError, match="loss became nan at step 1"):
        Exploding(line_config()).fit()


def test_gradient_clipping_bounds_the_update(workdir):
    trainer = LineTrainer(line_config(clip_grad_norm=1e-3))
    before = trainer.networks["line"].weight.detach().clone()
    batch = next(iter(trainer.build_dataloader(LineDataset(64), train=True)))
    trainer.optimizers["line"] = torch.optim.SGD(trainer.networks["line"].parameters(), lr=1.0)
    trainer.optimize("line", trainer.loss(batch))
    delta = (trainer.networks["line"].weight.detach() - before).norm()
    assert delta <= 1e-3 + 1e-6


def test_loading_a_checkpoint_of_another_model_is_refused(workdir):
    from talkingface.utils.errors import CheckpointError
    trainer = LineTrainer(line_config())
    state = trainer.state()
    state["model"] = "HyperLipsHR"
    with pytest.raises(CheckpointError, match="is a HyperLipsHR checkpoint, not SyncNet"):
        trainer.load_state(state, "x.pth")


def test_a_truncated_latest_checkpoint_is_set_aside_and_the_one_before_resumed(workdir, caplog,
                                                                               killed_writer_temp_name):
    LineTrainer(line_config(max_steps=6)).fit()                 # checkpoints of steps 3 and 6
    folder = os.path.join("checkpoints", "demo", "SyncNet")
    latest = latest_checkpoint(folder)
    with open(latest, "r+b") as f:                              # a copy cut short
        f.truncate(os.path.getsize(latest) // 2)
    stale = os.path.join(folder, killed_writer_temp_name(checkpoint_path(folder, 9)))   # a save killed half-way
    with open(stale, "wb") as f:
        f.write(b"\0" * 1000)
    resumed = LineTrainer(line_config(max_steps=9))
    with caplog.at_level("INFO", logger="talkingface"):
        assert resumed.resume().endswith("checkpoint_step000000003.pth")
    assert resumed.global_step == 3
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and "checkpoint_step000000006.pth" in warnings[0] and "\n" not in warnings[0]
    assert os.path.exists(latest + ".corrupt") and not os.path.exists(stale)
    assert latest_checkpoint(folder).endswith("checkpoint_step000000003.pth")
    resumed.fit()
    assert resumed.global_step == 9
    assert [step for step, _ in list_checkpoints(folder)] == [6, 9]


def test_every_save_removes_temp_files_a_killed_save_left(workdir, killed_writer_temp_name):
    from talkingface.utils.checkpoint import save_checkpoint_file
    folder = workdir / "ck"
    folder.mkdir()
    (folder / killed_writer_temp_name(folder / "checkpoint_step000000002.pth")).write_bytes(b"half")
    (folder / "notes.pth").write_bytes(b"not ours")
    save_checkpoint_file({"x": torch.zeros(1)}, str(folder / "checkpoint_step000000001.pth"))
    assert sorted(os.listdir(folder)) == ["checkpoint_step000000001.pth", "notes.pth"]


def test_checkpoints_and_results_record_the_run(workdir):
    import importlib.metadata
    import json
    import subprocess

    trainer = LineTrainer(line_config(max_steps=3, metrics=["PSNR", "SSIM"]))
    trainer.fit()
    state = torch.load(latest_checkpoint(trainer.checkpoint_dir), weights_only=True)
    with open(os.path.join(trainer.results_dir, "run.json"), encoding="utf-8") as f:
        written = json.load(f)
    for record in (state["run"], written):
        assert record["config"]["metrics"] == ["PSNR", "SSIM"]                  # lists are kept
        assert record["config"]["max_steps"] == 3 and record["config"]["device"] == "cpu"
        assert set(record["config"]) == set(trainer.config.plain())
        assert record["versions"]["torch"] == str(torch.__version__)
        assert record["versions"]["mediapipe"] == importlib.metadata.version("mediapipe")
    assert state["config"] == state["run"]["config"]
    assert {k: v for k, v in written.items() if k not in ("resumed_from", "resumed_at_step")} == state["run"]
    repo = str(REPO_ROOT)
    head = subprocess.run(["git", "-C", repo, "rev-parse", "HEAD"], capture_output=True, text=True)
    assert written["toolkit_commit"] == (head.stdout.strip() if head.returncode == 0 else None)


def test_toolkit_commit_is_none_outside_a_checkout(tmp_path, monkeypatch):
    from talkingface.utils import run_record
    monkeypatch.setattr(run_record, "PACKAGE_DIR", str(tmp_path / "talkingface"))
    assert run_record.toolkit_commit.__wrapped__() == (None, None)
    monkeypatch.setenv("PATH", str(tmp_path))                   # no git at all
    assert run_record.toolkit_commit.__wrapped__() == (None, None)


def test_rng_states_round_trip_through_a_weights_only_checkpoint(tmp_path):
    from talkingface.utils.seed import rng_state, set_rng_state
    torch.manual_seed(3), np.random.seed(3), random.seed(3)
    random.gauss(0, 1)                                          # python keeps a cached gaussian
    torch.save({"rng": rng_state()}, tmp_path / "s.pth")
    expected = (random.random(), random.gauss(0, 1), np.random.normal(), torch.rand(3))
    set_rng_state(torch.load(tmp_path / "s.pth", weights_only=True)["rng"])
    again = (random.random(), random.gauss(0, 1), np.random.normal(), torch.rand(3))
    assert expected[:3] == again[:3] and torch.equal(expected[3], again[3])


def test_an_error_during_training_is_the_last_line_after_the_progress_bar(demo_base_data, tmp_path):
    """A real CLI run whose training data turns out unreadable once the loop (and its progress bar)
    has started: the bar is closed first, so `error: ...` is the last line on stderr."""
    import subprocess
    import sys

    pre = tmp_path / "pre"
    shutil.copytree(demo_base_data["preprocessed_root"], pre)   # the session's data stays intact
    for clip in (pre / "filelists" / "train.txt").read_text().split():
        for frame in (pre / clip).glob("*.jpg"):
            frame.write_bytes(b"not a jpeg")
    values = dict(demo_base_data, preprocessed_root=pre, checkpoint_root=tmp_path / "checkpoints",
                  results_root=tmp_path / "results", device="cpu", num_workers=0, batch_size=2, eval_batch_size=2,
                  max_steps=5, evaluate_after_training=False, eval_interval=1000, checkpoint_interval=1000)
    repo = str(REPO_ROOT)
    done = subprocess.run([sys.executable, os.path.join(repo, "run_talkingface.py"), "--model=SyncNet",
                           "--dataset=demo", *(f"--{k}={v}" for k, v in values.items())],
                          capture_output=True, text=True, cwd=tmp_path, timeout=600,
                          env=dict(os.environ, OMP_NUM_THREADS="1"))
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode == 2 and "train SyncNet:" in done.stderr, done.stderr[-2000:]
    assert lines[-1].startswith("error: cannot read ") and "train SyncNet" not in lines[-1], lines[-3:]
    assert "Traceback" not in done.stderr



def test_an_error_raised_in_a_loader_worker_is_still_one_line():
    """torch re-makes a worker's exception with its whole traceback in the message; the entry point
    prints the user's line from it."""
    import torch

    from talkingface.utils.errors import InputError, error_line

    class Broken(torch.utils.data.Dataset):
        def __len__(self):
            return 2

        def __getitem__(self, index):
            raise InputError("clip x: mel.npy cannot be read (truncated): delete the clip folder and preprocess again")

    with pytest.raises(InputError) as info:
        next(iter(torch.utils.data.DataLoader(Broken(), num_workers=1)))
    assert "Traceback" in str(info.value)  # what torch makes of it
    assert error_line(info.value) == ("clip x: mel.npy cannot be read (truncated): delete the clip folder and "
                                      "preprocess again")
