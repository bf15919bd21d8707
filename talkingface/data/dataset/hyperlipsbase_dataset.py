"""Training data for HyperLipsBase: a masked target window, a reference window and its audio.

Per item (docs/architecture.md, "HyperLipsBase" and "Base training loss"), all from ONE clip:
- "face" (6, T, H, W): channels 0:3 the target window with its lower half zeroed, 3:6 a
  reference window of the same clip that does not overlap the target;
- "indiv_mels" (T, 1, 80, 16): the mel chunk of every target frame (frame k's chunk starts at
  int(80*k/25), right-aligned at the end; the official training used k-1: docs/differences.md);
- "mel" (1, 80, 16): the chunk at the window start, for the lip-sync loss;
- "gt" (3, T, H, W): the target window.
Images are BGR float in [0, 1], H = W = config["img_size"]. Mels come from the clip's
precomputed mel.npy (read per item, never recomputed). Training items are random; validation
items are fixed (window and reference seeded).
"""
import numpy as np
import torch

from talkingface.data.dataset.syncnet_dataset import WindowDataset, to_float_window
from talkingface.utils.audio import mel_chunk
from talkingface.utils.registry import DATASETS


def reference_start(n_frames, T, start, rng):
    """A window start whose T frames do not overlap [start, start+T): uniform over the choices."""
    choices = [s for s in range(0, n_frames - T + 1) if s + T <= start or s >= start + T]
    return choices[rng.randrange(len(choices))]


@DATASETS.register("HyperLipsBaseDataset")
class HyperLipsBaseDataset(WindowDataset):
    """Items {"face", "indiv_mels", "mel", "gt"} for the Base generator (see module doc)."""

    @property
    def min_windows(self):
        return self.T + 1  # room for a target window and a disjoint reference: n_frames >= 2T

    def __getitem__(self, index):
        clip, start, rng = self.pick(index)
        ref_start = reference_start(clip.n_frames, self.T, start, rng)
        gt = to_float_window(self.window(clip, start, self.img_size))
        reference = to_float_window(self.window(clip, ref_start, self.img_size))
        masked = gt.copy()
        masked[:, :, self.img_size // 2:] = 0.0
        mel = clip.load_mel()
        indiv = np.stack([mel_chunk(mel, k, fps=self.fps) for k in range(start, start + self.T)])
        return {
            "face": torch.from_numpy(np.concatenate([masked, reference], axis=0)),
            "indiv_mels": torch.from_numpy(indiv[:, None].astype(np.float32)),
            "mel": torch.from_numpy(mel_chunk(mel, start, fps=self.fps)[None].astype(np.float32)),
            "gt": torch.from_numpy(gt),
        }
