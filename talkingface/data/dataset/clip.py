"""Read access to one preprocessed clip and to the split filelists (the Base data layout).

A clip directory holds `0.jpg ... {n-1}.jpg` (face crops at 25 fps), `audio.wav`, `mel.npy`
(80, T_mel), `boxes.npy` (n, 4), `meta.json` and `.done` (written last by the preprocessor).
"""
import json
import os

import cv2
import numpy as np

from talkingface.utils.errors import InputError
from talkingface.utils.video import iter_frames

DONE_MARKER = ".done"
SPLITS = ("train", "val", "test")


class Clip:
    """One preprocessed clip: frames, mel, audio path, crop boxes and metadata."""

    def __init__(self, clip_dir):
        self.dir = os.fspath(clip_dir)
        self.id = os.path.basename(os.path.normpath(self.dir))
        if not os.path.isfile(os.path.join(self.dir, DONE_MARKER)):
            raise InputError(f"clip {self.dir} is incomplete (no {DONE_MARKER}): run --mode=preprocess again")
        try:
            with open(os.path.join(self.dir, "meta.json"), encoding="utf-8") as f:
                self.meta = json.load(f)
            self.n_frames = int(self.meta["n_frames"])
            self.fps = float(self.meta["fps"])
        except (OSError, ValueError, TypeError, KeyError, IndexError) as exc:
            raise self._corrupt("meta.json", exc) from None
        self.audio_path = os.path.join(self.dir, "audio.wav")
        self._mel = None
        self._boxes = None

    @property
    def mel(self):
        """float32 (80, T_mel), read once per Clip object (never recomputed)."""
        if self._mel is None:
            self._mel = self.load_mel()
        return self._mel

    def load_mel(self):
        """float32 (80, T_mel) read from mel.npy without keeping it: datasets over thousands of
        clips read it per item (~0.1 ms) instead of holding every mel in every worker."""
        return self._array("mel.npy", lambda a: a.ndim == 2 and a.shape[0] == 80)

    @property
    def boxes(self):
        """float32 (n_frames, 4): the crop box of every frame in the 25 fps source frame."""
        if self._boxes is None:
            self._boxes = self._array("boxes.npy", lambda a: a.shape == (self.n_frames, 4))
        return self._boxes

    def _array(self, name, fits):
        """A numeric array file of the clip (never unpickled), or the clip's one-line InputError."""
        try:
            array = np.load(os.path.join(self.dir, name), allow_pickle=False)
            if array.dtype.kind not in "iuf" or not fits(array):
                raise ValueError(f"unexpected {array.dtype} array of shape {array.shape}")
        except (OSError, ValueError, EOFError) as exc:
            raise self._corrupt(name, exc) from None
        return array

    def _corrupt(self, name, exc):
        reason = " ".join(str(exc).split())[:100] or type(exc).__name__
        return InputError(f"clip {self.dir}: {name} cannot be read ({reason}): delete the clip folder and "
                          "preprocess again")

    def frame_path(self, k):
        return os.path.join(self.dir, f"{k}.jpg")

    def frame(self, k, size=None):
        """Face crop k as BGR uint8 (size, size, 3) (the stored size when `size` is None)."""
        if not 0 <= k < self.n_frames:
            raise IndexError(f"frame {k} outside clip {self.id} of {self.n_frames} frames")
        image = cv2.imread(self.frame_path(k), cv2.IMREAD_COLOR)
        if image is None:
            raise InputError(f"cannot read {self.frame_path(k)}: delete the clip folder and preprocess again")
        if size is not None and image.shape[:2] != (size, size):
            shrink = size < image.shape[0]
            image = cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)
        return image

    def frames(self, start, count, size=None):
        """Frames start .. start+count-1 as uint8 (count, size, size, 3)."""
        return np.stack([self.frame(k, size) for k in range(start, start + count)])

    def source_video(self, data_root):
        """The video this clip was cut from: meta "source", else data_root/"source_rel"; None when
        neither is a file (the dataset was moved without its videos)."""
        source, relative = self.meta.get("source"), self.meta.get("source_rel")
        candidates = [source, source and os.path.join(data_root, source), relative and os.path.join(data_root, relative)]
        return next((path for path in candidates if path and os.path.isfile(path)), None)

    def source_frames(self, path):
        """The clip's full frames, decoded from its source video `path` at the clip's fps: frames
        first_frame .. first_frame + n_frames - 1 (fewer when the video now decodes shorter)."""
        first = int(self.meta.get("first_frame", 0))
        decoded = iter_frames(path, fps=self.fps)
        try:
            for index, frame in enumerate(decoded):
                if index >= first + self.n_frames:
                    break
                if index >= first:
                    yield frame
        finally:
            if hasattr(decoded, "close"):   # (an image source is a plain iterator)
                decoded.close()  # releases the decoder now, not when garbage-collected

    def __len__(self):
        return self.n_frames

    def __repr__(self):
        return f"Clip({self.id!r}, n_frames={self.n_frames})"


def filelist_path(preprocessed_root, split):
    return os.path.join(preprocessed_root, "filelists", f"{split}.txt")


def read_filelist(config, split):
    """Clip directories of `split` (train, val or test) under config["preprocessed_root"]."""
    if split not in SPLITS:
        raise InputError(f"unknown split '{split}': use one of {', '.join(SPLITS)}")
    root = config["preprocessed_root"]
    path = filelist_path(root, split)
    if not os.path.isfile(path):
        raise InputError(f"no filelist {path}: preprocess the dataset first "
                         f"(python run_talkingface.py --mode=preprocess --dataset={config['dataset']})")
    with open(path, encoding="utf-8") as f:
        clip_ids = [line.strip() for line in f if line.strip()]
    return [os.path.join(root, clip_id) for clip_id in clip_ids]


def load_clips(config, split):
    """Clip objects of a split."""
    return [Clip(clip_dir) for clip_dir in read_filelist(config, split)]
