"""Builders shared by the tests and by the ranks they spawn (which cannot use fixtures): the one
config factory, the line-fitting trainer, synthetic batches of the real shapes, a free port."""
import pathlib
import socket

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from talkingface.config import Config
from talkingface.trainer import Trainer

# The line trainer's loop settings (tests/unit/trainer/test_trainer.py, tests/integration/test_distributed.py).
LINE = dict(max_steps=12, batch_size=8, eval_batch_size=8, num_workers=0, log_interval=2, eval_interval=6,
            checkpoint_interval=3, keep_checkpoints=2, evaluate_after_training=False)


def make_config(model, root=None, dataset="demo", **overrides):
    """A Config of `model` on `dataset` with `overrides`; with `root`, checkpoints/ and results/
    go under it (else they stay relative to the working directory). CPU, no loader workers."""
    values = dict(device="cpu", num_workers=0)
    if root is not None:
        root = pathlib.Path(root)
        values.update(checkpoint_root=str(root / "checkpoints"), results_root=str(root / "results"))
    values.update(overrides)
    return Config(model=model, dataset=dataset, config_dict=values)


def base_config(root=None, **overrides):
    """HyperLipsBase on the demo dataset, one window per batch."""
    return make_config("HyperLipsBase", root, **{"batch_size": 1, "eval_batch_size": 1, **overrides})


def hr_config(root, **overrides):
    """HyperLipsHR with the VGG/LPIPS weight files pointed at paths that do not exist (losses off)."""
    root = pathlib.Path(root)
    missing = {key: str(root / f"missing_{key}.pth") for key in ("vgg19_path", "lpips_path", "lpips_vgg16_path")}
    return make_config("HyperLipsHR", root, "MEAD", **{"preprocessed_root": str(root / "pre"), "batch_size": 2,
                                                       **missing, **overrides})


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


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


def base_batch(batch_size=1, size=128, frames=5):
    """A fixed HyperLipsBase batch: windows of `frames` frames (the expert's sync loss needs 5; the
    other losses take any number), lower halves masked, a random reference."""
    generator = torch.Generator().manual_seed(0)
    gt = torch.rand(batch_size, 3, frames, size, size, generator=generator)
    reference = torch.rand(batch_size, 3, frames, size, size, generator=generator)
    masked = gt.clone()
    masked[:, :, :, size // 2:] = 0
    return {"face": torch.cat([masked, reference], dim=1), "gt": gt,
            "indiv_mels": torch.randn(batch_size, frames, 1, 80, 16, generator=generator),
            "mel": torch.randn(batch_size, 1, 80, 16, generator=generator)}


def hr_batch(batch, size, seed=0):
    """A random HyperLipsHR batch at output size `size`, with one lip box per sample (the items of
    HyperLipsHRDataset)."""
    generator = torch.Generator().manual_seed(seed)
    boxes = torch.tensor([[size // 4, size // 2, 3 * size // 4, 7 * size // 8]] * batch)
    return {"input": torch.rand(batch, 6, 128, 128, generator=generator),
            "gt": torch.rand(batch, 3, size, size, generator=generator),
            "lip_box": boxes}


def two_faces(face):
    """A 480x256 frame with `face` (256x256) at the left and a smaller copy of it at the right:
    the largest face is the left one, whatever the detector scores."""
    import cv2
    canvas = np.full((256, 480, 3), 200, np.uint8)
    canvas[:, :256] = face
    canvas[40:220, 280:460] = cv2.resize(face, (180, 180))
    return canvas


class FakeClip:
    """What the generator loop's callers read from a preprocessed Clip (generate_clip,
    generate_hyper_frames): n_frames, fps, mel, frame(k, size); seeded random face crops of
    `side` px, resized to the size asked for."""

    def __init__(self, n_frames=7, side=256):
        rng = np.random.default_rng(0)
        self.n_frames, self.fps = n_frames, 25.0
        self.images = rng.integers(0, 255, (n_frames, side, side, 3), dtype=np.uint8)
        self.mel = rng.standard_normal((80, int(80 * n_frames / 25) + 16)).astype(np.float32)

    def frame(self, k, size=None):
        import cv2
        image = self.images[k]
        if size is None or size == image.shape[0]:
            return image
        return cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA)
