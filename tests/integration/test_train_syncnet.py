"""SyncNetTrainer on synthetic batches of the real shapes: loss, accuracy, learning, evaluate()."""
import functools
import json
import os

import pytest
import torch
from torch.utils.data import Dataset

from talkingface.model.inputs import expert_face_input
from talkingface.model.losses import bce
from talkingface.trainer.syncnet_trainer import SyncNetTrainer
from talkingface.utils.registry import DATASETS


@DATASETS.register("_TinySyncWindows")
class TinySyncWindows(Dataset):
    """Four fixed (face window, mel, label) samples in the SyncNet dataset's batch format."""

    def __init__(self, config, split):
        generator = torch.Generator().manual_seed(0 if split == "train" else 1)
        self.face = torch.rand(4, 15, 64, 128, generator=generator)
        self.mel = torch.randn(4, 1, 80, 16, generator=generator)
        self.label = torch.tensor([[1.0], [0.0], [1.0], [0.0]])

    def __len__(self):
        return 4

    def __getitem__(self, index):
        return {"face": self.face[index], "mel": self.mel[index], "label": self.label[index]}


@pytest.fixture
def syncnet_config(make_config):
    return functools.partial(make_config, "SyncNet", batch_size=4, eval_batch_size=4, max_steps=2, log_interval=1,
                             eval_interval=100, checkpoint_interval=100, dataset_class="_TinySyncWindows")


def synthetic_batch():
    return TinySyncWindows(None, "train")[0:4]


def test_expert_face_input_stacks_lower_halves_frame_after_frame():
    frames = torch.rand(2, 3, 5, 128, 128)
    stacked = expert_face_input(frames)
    assert stacked.shape == (2, 15, 64, 128)
    assert torch.equal(stacked[:, 3:6], frames[:, :, 1, 64:])         # frame 1 = channels 3..5
    assert expert_face_input(torch.rand(1, 3, 5, 256, 256)).shape == (1, 15, 64, 128)


def test_bce_matches_the_definition():
    p = torch.tensor([0.9, 0.2])
    assert bce(p, torch.tensor([1.0, 0.0])).item() == pytest.approx(-(torch.log(p[0]) + torch.log(1 - p[1])).item() / 2)
    assert bce(p, 1.0).item() == pytest.approx(-torch.log(p).mean().item())


def test_syncnet_steps_lower_the_loss_on_a_fixed_batch(workdir, syncnet_config):
    torch.manual_seed(0)
    trainer = SyncNetTrainer(syncnet_config(workdir))
    batch = synthetic_batch()   # 4 windows (BatchNorm over fewer is degenerate at the 1x1 embedding layers)
    first = trainer.train_step(batch)["loss"]
    assert 0 < first < 10
    losses = [trainer.train_step(batch)["loss"] for _ in range(3)]
    assert losses[-1] < 0.8 * first
    trainer.networks["syncnet"].eval()
    with torch.no_grad():
        values = trainer.validation_step(batch)
    assert set(values) == {"loss", "accuracy"} and 0 <= values["accuracy"] <= 1


def test_evaluate_writes_loss_and_accuracy(workdir, syncnet_config):
    trainer = SyncNetTrainer(syncnet_config(workdir))
    result = trainer.evaluate()
    path = os.path.join(trainer.results_dir, "metrics.json")
    with open(path, encoding="utf-8") as f:
        written = json.load(f)
    assert written == result and written["samples"] == 4 and written["split"] == "val"
    assert 0 <= written["accuracy"] <= 1 and written["loss"] > 0
