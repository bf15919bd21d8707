"""The shared Trainer loop on a tiny regression problem: steps, checkpoints, resume, errors."""
import glob
import os

import pytest
import torch
from torch import nn
from torch.utils.data import Dataset

from talkingface.config import Config
from talkingface.trainer import Trainer, TrainingError
from talkingface.utils.checkpoint import latest_checkpoint, list_checkpoints


class LineDataset(Dataset):
    """y = 3x - 1 with a little deterministic noise."""

    def __init__(self, n):
        generator = torch.Generator().manual_seed(n)
        self.x = torch.randn(n, 4, generator=generator)
        self.y = self.x @ torch.tensor([3.0, -1.0, 0.5, 2.0]) - 1

    def __len__(self):
        return len(self.x)

    def __getitem__(self, index):
        return {"x": self.x[index], "y": self.y[index]}


class LineTrainer(Trainer):
    fail_at_step = None

    def build(self):
        self.networks = {"line": nn.Linear(4, 1), "critic": nn.Linear(1, 1)}
        self.optimizers = {"line": torch.optim.Adam(self.networks["line"].parameters(), lr=0.05),
                           "critic": torch.optim.SGD(self.networks["critic"].parameters(), lr=0.01)}

    def build_datasets(self):
        return LineDataset(64), LineDataset(16)

    def loss(self, batch):
        return ((self.networks["line"](batch["x"]).squeeze(1) - batch["y"]) ** 2).mean()

    def train_step(self, batch):
        if self.fail_at_step == self.global_step + 1:
            raise RuntimeError("simulated crash")
        with self.autocast():
            loss = self.loss(batch)
        self.optimize("line", loss)
        critic_loss = self.networks["critic"](loss.detach().view(1, 1)).pow(2).mean()
        self.optimize("critic", critic_loss)
        return {"mse": loss.item()}

    def validation_step(self, batch):
        return {"mse": self.loss(batch).item()}


def make_config(**overrides):
    values = dict(max_steps=12, batch_size=8, eval_batch_size=8, num_workers=0, log_interval=2,
                  eval_interval=6, checkpoint_interval=3, keep_checkpoints=2, evaluate_after_training=False)
    values.update(overrides)
    return Config(model="SyncNet", dataset="demo", config_dict=values)


def test_training_lowers_the_loss_and_writes_checkpoints(workdir):
    trainer = LineTrainer(make_config(max_steps=40, checkpoint_interval=10))
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
    assert not os.path.exists(os.path.join(trainer.checkpoint_dir, "RUNNING"))
    assert not glob.glob(os.path.join(trainer.checkpoint_dir, ".tmp_*"))


def test_tensorboard_scalars_are_written(workdir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    trainer = LineTrainer(make_config(max_steps=6))
    trainer.fit()
    trainer.log_images("samples", torch.rand(2, 3, 8, 8))
    trainer.close()
    events = EventAccumulator(os.path.join(trainer.results_dir, "tensorboard"))
    events.Reload()
    assert {"train/mse", "val/mse"} <= set(events.Tags()["scalars"])
    assert [e.step for e in events.Scalars("train/mse")] == [2, 4, 6]
    assert "samples" in events.Tags()["images"]


def test_resume_after_a_crash_continues_the_same_state(workdir):
    crashed = LineTrainer(make_config())
    crashed.fail_at_step = 8
    with pytest.raises(RuntimeError, match="simulated crash"):
        crashed.fit()
    assert os.path.exists(os.path.join(crashed.checkpoint_dir, "RUNNING"))
    saved = torch.load(latest_checkpoint(crashed.checkpoint_dir), weights_only=True)
    assert saved["global_step"] == 6

    resumed = LineTrainer(make_config())
    resumed.resume()
    assert resumed.global_step == 6
    for key, value in saved["optimizers"]["line"]["state"][0].items():
        assert torch.equal(resumed.optimizers["line"].state_dict()["state"][0][key], value)
    resumed.fit()
    assert resumed.global_step == 12


def test_resume_gives_the_same_weights_as_an_uninterrupted_run(workdir):
    straight = LineTrainer(make_config(max_steps=8, checkpoint_interval=8, eval_interval=100))
    straight.fit()
    os.rename("checkpoints", "checkpoints_straight")
    first = LineTrainer(make_config(max_steps=8, checkpoint_interval=8, eval_interval=100))
    first.fit()
    for a, b in zip(straight.networks["line"].parameters(), first.networks["line"].parameters()):
        assert torch.equal(a, b)                      # seeded: two fresh runs agree exactly


def test_finished_run_is_not_retrained_and_resume_false_archives(workdir):
    LineTrainer(make_config(max_steps=6)).fit()
    again = LineTrainer(make_config(max_steps=6))
    again.fit()
    assert again.global_step == 6
    fresh = LineTrainer(make_config(max_steps=3, resume=False))
    fresh.fit()
    assert fresh.global_step == 3
    assert glob.glob(os.path.join(fresh.checkpoint_dir, "previous_*", "checkpoint_step000000006.pth"))


def test_resume_true_without_checkpoint_is_an_error(workdir):
    from talkingface.utils.errors import CheckpointError
    with pytest.raises(CheckpointError, match="no checkpoint"):
        LineTrainer(make_config(resume=True)).fit()


def test_non_finite_loss_stops_with_a_clear_error(workdir):
    class Exploding(LineTrainer):
        def loss(self, batch):
            return super().loss(batch) * float("nan")

    with pytest.raises(TrainingError, match="loss became nan at step 1"):
        Exploding(make_config()).fit()


def test_gradient_clipping_bounds_the_update(workdir):
    trainer = LineTrainer(make_config(clip_grad_norm=1e-3))
    before = trainer.networks["line"].weight.detach().clone()
    batch = next(iter(trainer.build_dataloader(LineDataset(64), train=True)))
    trainer.optimizers["line"] = torch.optim.SGD(trainer.networks["line"].parameters(), lr=1.0)
    trainer.optimize("line", trainer.loss(batch))
    delta = (trainer.networks["line"].weight.detach() - before).norm()
    assert delta <= 1e-3 + 1e-6


def test_loading_a_checkpoint_of_another_model_is_refused(workdir):
    from talkingface.utils.errors import CheckpointError
    trainer = LineTrainer(make_config())
    state = trainer.state()
    state["model"] = "HyperLipsHR"
    with pytest.raises(CheckpointError, match="is a HyperLipsHR checkpoint, not SyncNet"):
        trainer.load_state(state, "x.pth")
