"""HR-stage dataset: one item per frame of the HR data (hyperlipshr_process.py writes it).

Item (tensors, BGR [0,1]):
    input    (6,128,128)  [HYPER_IMG, sketch_for_decoder(HYPER_SKETCH, 128)]: what the decoder
                          sees at every output size, in training and at inference alike
    gt       (3,S,S)      GT_IMG at S = img_size
    lip_box  (4,)         int64 x1, y1, x2, y2 (x2/y2 exclusive) in S pixels; never empty
"""
import json
import os

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from talkingface.data.dataset.clip import DONE_MARKER, read_filelist
from talkingface.data.dataset.hr_layout import frame_path, hr_root
from talkingface.model.inputs import BASE_SIZE
from talkingface.utils.errors import InputError, TalkingFaceError
from talkingface.utils.registry import DATASETS
from talkingface.utils.sketch import sketch_for_decoder


def decoder_input(hyper_bgr, hyper_sketch):
    """The HR decoder's input from a 128 px Base output (uint8 BGR) and its sketch (uint8, drawn
    with draw_sketch at 128 px): float32 (6,128,128). The one recipe for training and inference."""
    image = hyper_bgr if hyper_bgr.shape[:2] == (BASE_SIZE, BASE_SIZE) else \
        cv2.resize(hyper_bgr, (BASE_SIZE, BASE_SIZE), interpolation=cv2.INTER_AREA)
    sketch = sketch_for_decoder(hyper_sketch, BASE_SIZE)
    stacked = np.concatenate([image, sketch], axis=2).astype(np.float32) / 255.0
    return np.ascontiguousarray(stacked.transpose(2, 0, 1))


def read_image(path, flags=cv2.IMREAD_COLOR):
    image = cv2.imread(path, flags)
    if image is None:
        raise InputError(f"cannot read {path}: delete the clip's .done in {os.path.dirname(os.path.dirname(path))} "
                         "and run the HR preprocessing again")
    return image


class HRClip:
    """One clip of the HR data: frame readers and its precomputed lip boxes."""

    def __init__(self, clip_dir):
        self.clip_dir = clip_dir
        with open(os.path.join(clip_dir, "meta.json")) as f:
            self.meta = json.load(f)
        self.n_frames = int(self.meta["n_frames"])
        self.img_size = int(self.meta["img_size"])
        self.lip_boxes = np.load(os.path.join(clip_dir, "lip_boxes.npy")).astype(np.int64)

    def decoder_input(self, k):
        return decoder_input(read_image(frame_path(self.clip_dir, "HYPER_IMG", k)),
                             read_image(frame_path(self.clip_dir, "HYPER_SKETCH", k)))

    def gt(self, k):
        image = read_image(frame_path(self.clip_dir, "GT_IMG", k))
        return np.ascontiguousarray(image.transpose(2, 0, 1)).astype(np.float32) / 255.0


def hr_clip_dirs(config, split):
    """HR folders of the clips in `split`; a clear error when the HR data has not been made."""
    root = hr_root(config)
    dirs = [os.path.join(root, os.path.basename(os.path.normpath(d))) for d in read_filelist(config, split)]
    missing = [d for d in dirs if not os.path.isfile(os.path.join(d, DONE_MARKER))]
    if missing:
        raise TalkingFaceError(
            f"HR data missing for {len(missing)} of {len(dirs)} {split} clips in {root}/: run `python "
            f"run_talkingface.py --model=HyperLipsHR --dataset={config['dataset']} --mode=preprocess`")
    return dirs


@DATASETS.register("HyperLipsHRDataset")
class HyperLipsHRDataset(Dataset):
    def __init__(self, config, split):
        self.img_size = int(config["img_size"])
        self.clips = [HRClip(d) for d in hr_clip_dirs(config, split)]
        for clip in self.clips:
            if clip.img_size != self.img_size:
                raise TalkingFaceError(f"{clip.clip_dir} holds {clip.img_size} px data, not img_size "
                                       f"{self.img_size}: run the HR preprocessing again")
        self.offsets = np.cumsum([0] + [c.n_frames for c in self.clips])

    def __len__(self):
        return int(self.offsets[-1])

    def locate(self, index):
        """(clip, frame) of a flat index."""
        c = int(np.searchsorted(self.offsets, index, side="right")) - 1
        return self.clips[c], int(index - self.offsets[c])

    def __getitem__(self, index):
        if not 0 <= index < len(self):
            raise IndexError(index)
        clip, k = self.locate(index)
        return {"input": torch.from_numpy(clip.decoder_input(k)),
                "gt": torch.from_numpy(clip.gt(k)),
                "lip_box": torch.from_numpy(clip.lip_boxes[k].copy())}
