"""Training data for the lip-sync expert (SyncNet_color): lower halves of 5 frames vs a mel chunk.

Per item (docs/architecture.md, "Lip-sync expert"): a clip, a window start i and the mel chunk cut at
frame i; with label 1 the face window starts at i, with label 0 at another frame j != i of the
same clip. Frames are resized to img_size (128), optionally mirrored (the official code always
mirrors), and the lower halves of the T frames are stacked on channels:
face (3T, img_size/2, img_size) float BGR in [0, 1], mel (1, 80, 16), label (1,).
Training items are random; validation items are fixed windows with alternating labels.
"""
import random

import numpy as np
import torch
from torch.utils.data import Dataset

from talkingface.data.dataset.clip import load_clips
from talkingface.utils.audio import FPS, SYNCNET_T, mel_chunk
from talkingface.utils.errors import InputError
from talkingface.utils.registry import DATASETS


def window_starts(n_frames, T, count):
    """`count` evenly spaced window starts in [0, n_frames - T] (fewer for short clips)."""
    last = n_frames - T
    if last < 0:
        return []
    if count <= 1:
        return [last // 2]
    return sorted(set(int(round(x)) for x in np.linspace(0, last, count)))


class WindowDataset(Dataset):
    """Common part of the window datasets: clips of a split, epoch length, fixed val windows."""

    min_windows = 2  # a clip must hold two different window starts

    def __init__(self, config, split):
        self.config = config
        self.split = split
        self.T = SYNCNET_T
        self.fps = FPS
        self.img_size = int(config["img_size"])
        self.clips = [c for c in load_clips(config, split) if c.n_frames - self.T + 1 >= self.min_windows]
        self.train = split == "train"
        self.n_windows = sum(c.n_frames - self.T + 1 for c in self.clips)
        if self.train:
            if not self.clips:
                raise InputError(f"the {split} split of {config['preprocessed_root']} has no clip long enough "
                                 f"for training: add videos or lower val_ratio/test_ratio")
            self.length = int(config["samples_per_epoch"]) or self.n_windows
        else:
            # Deterministic validation: evenly spaced windows of every clip, seeded choices.
            self.items = [(ci, s) for ci, clip in enumerate(self.clips)
                          for s in window_starts(clip.n_frames, self.T, int(config["val_windows_per_clip"]))]
            self.seed = int(config["split_seed"])
            self.length = len(self.items)

    def __len__(self):
        return self.length

    def pick(self, index):
        """(clip, window start, rng) for an item: random in training, fixed in validation."""
        if self.train:
            # The global `random`: the trainer seeds it per item from the item's place in the
            # epoch (data.dataset.sampler), so an item does not depend on the worker making it.
            clip = random.choice(self.clips)
            return clip, random.randint(0, clip.n_frames - self.T), random
        clip_index, start = self.items[index]
        return self.clips[clip_index], start, random.Random(self.seed * 1_000_003 + index)

    def window(self, clip, start, size, flip=False):
        """uint8 (T, size, size, 3) frames start .. start+T-1."""
        frames = clip.frames(start, self.T, size)
        return frames[:, :, ::-1] if flip else frames


def to_float_window(frames):
    """uint8 (T, H, W, 3) -> float32 (3, T, H, W) in [0, 1], BGR kept.

    numpy, not torch: per-item work stays single-threaded (torch's intra-op threads only
    contend with the DataLoader workers here).
    """
    return frames.transpose(3, 0, 1, 2).astype(np.float32) * np.float32(1 / 255)


@DATASETS.register("SyncNetDataset")
class SyncNetDataset(WindowDataset):
    """Items {"face": (3T, H/2, W), "mel": (1, 80, 16), "label": (1,)} for the lip-sync expert."""

    def __init__(self, config, split):
        super().__init__(config, split)
        self.hflip = bool(config["syncnet_hflip"])

    def __getitem__(self, index):
        clip, start, rng = self.pick(index)
        positive = rng.random() < 0.5 if self.train else index % 2 == 0
        face_start = start
        if not positive:
            # Any other window start of the clip (adjacent offsets included, as officially).
            face_start = rng.randint(0, clip.n_frames - self.T - 1)
            face_start += face_start >= start
        frames = self.window(clip, face_start, self.img_size, flip=self.hflip)
        half = frames[:, self.img_size // 2:]  # lower halves (T, H/2, W, 3)
        face = np.concatenate(list(half), axis=2).transpose(2, 0, 1)  # (3T, H/2, W): frame-major BGR
        mel = mel_chunk(clip.load_mel(), start, fps=self.fps)
        return {
            "face": torch.from_numpy(face.astype(np.float32) * np.float32(1 / 255)),
            "mel": torch.from_numpy(mel[None].astype(np.float32)),
            "label": torch.tensor([1.0 if positive else 0.0]),
        }
