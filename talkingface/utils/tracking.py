"""The face tracker: one face box per 25 fps frame, the same for preprocessing, inference and
evaluation (detect, pick one face, pad, fill short gaps, smooth).

Per frame the detector's faces smaller than `face_min_size` px are dropped (too small to lip-sync,
and in practice false positives: the detector finds 7 px "faces" in compressed noise); of the
others the largest, most central one is kept unless another continues the previous frame's face
better (IoU above `face_continuity_iou`: no jumping between people); the box is padded by
`face_pad_bottom` px at the bottom (the official HyperLips padding, which keeps the chin).
Gaps of at most `face_max_gap` frames between two detections are interpolated; each run of frames
with a face is smoothed on its own with a centred moving average of `box_smooth_window` frames
(utils.face.smooth_boxes), never across a longer gap. Frames without a face keep a NaN box.
Detection runs on frames downscaled to `detect_max_side`. All six are YAML keys (TRACKER_KEYS);
preprocessed data records them, so changing one makes it stale.

Only the boxes are kept ((n, 4) floats), so a whole video is tracked in one streaming pass.
"""
import logging

import numpy as np
from tqdm import tqdm

from talkingface.utils.distributed import is_main_process
from talkingface.utils.errors import InputError
from talkingface.utils.face import FaceDetector, pad_box, smooth_boxes

logger = logging.getLogger(__name__)

# The YAML keys of the tracker (overall.yaml) and the track_faces arguments they set.
TRACKER_KEYS = {"detect_max_side": "detect_max_side", "face_min_size": "min_face", "face_continuity_iou":
                "continuity_iou", "face_max_gap": "max_gap", "box_smooth_window": "window",
                "face_pad_bottom": "pad_bottom"}


def tracker_settings(config):
    """The tracker's YAML settings of `config` (or of inference's per-run settings), as plain data
    (recorded with the results and the preprocessed data)."""
    return {"detect_max_side": config["detect_max_side"], "face_min_size": config["face_min_size"],
            "face_continuity_iou": config["face_continuity_iou"], "face_max_gap": config["face_max_gap"],
            "box_smooth_window": config["box_smooth_window"], "face_pad_bottom": config["face_pad_bottom"]}


def tracker_arguments(config):
    """track_faces keyword arguments from `config`'s tracker settings."""
    return {TRACKER_KEYS[key]: value for key, value in tracker_settings(config).items()}


def box_iou(a, b):
    """Intersection over union of two (x1, y1, x2, y2) boxes."""
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


class FacePicker:
    """Chooses one face per frame: the detector's first (largest and most central) one, unless
    another detection continues the face of the previous frame better (no jumping between people)."""

    def __init__(self, min_face=24, continuity_iou=0.3):
        self.min_face, self.continuity_iou = min_face, continuity_iou
        self.previous = None
        self.frame = -1              # index of the frame being picked from
        self.frames_with_several = 0  # frames where more than one face was found

    def __call__(self, detections):
        self.frame += 1
        detections = [d for d in detections if min(d[2] - d[0], d[3] - d[1]) >= self.min_face]
        if not detections:
            return None
        chosen = detections[0]
        if len(detections) > 1:
            if self.previous is not None:
                best = max(detections, key=lambda d: box_iou(d, self.previous))
                if box_iou(best, self.previous) > self.continuity_iou:
                    chosen = best
            if not self.frames_with_several:
                x1, y1, x2, y2 = (int(round(v)) for v in chosen[:4])
                logger.info("frame %d: %d faces found; lip-syncing the one at x %d-%d, y %d-%d px (%s), "
                            "followed from frame to frame", self.frame, len(detections), x1, x2, y1, y2,
                            "the face tracked so far" if chosen is not detections[0]
                            else "the largest, most central one")
            self.frames_with_several += 1
        self.previous = chosen[:4]
        return chosen[:4]


def finalize_boxes(raw, max_gap=5, window=5):
    """Raw per-frame boxes (n, 4), NaN rows where no face, -> boxes to use (NaN = pass through).

    Interior gaps of <= max_gap frames are interpolated; each run of frames with a face is
    smoothed on its own. Raises a one-line InputError when no frame has a face.
    """
    raw = np.asarray(raw, dtype=np.float64).reshape(-1, 4)
    found = np.all(np.isfinite(raw), axis=1)
    if not found.any():
        raise InputError("no face was found in any frame of the video: use a video (or image) with a "
                         "clearly visible face")
    use = found.copy()
    idx = np.flatnonzero(found)
    for a, b in zip(idx[:-1], idx[1:]):
        if 1 < b - a <= max_gap + 1:
            use[a + 1:b] = True  # smooth_boxes interpolates these NaN rows
    out = np.full(raw.shape, np.nan, dtype=np.float32)
    starts = np.flatnonzero(use & ~np.concatenate([[False], use[:-1]]))
    ends = np.flatnonzero(use & ~np.concatenate([use[1:], [False]])) + 1
    for s, e in zip(starts, ends):
        out[s:e] = smooth_boxes(raw[s:e], window=window)
    return out


def track_faces(frames, width, height, pad_bottom=10, max_gap=5, window=5, total=None, detect_max_side=640,
                min_face=24, continuity_iou=0.3):
    """Boxes (n, 4) float32 for a stream of BGR frames (NaN rows: no face, pass through).

    Each frame's chosen detection is padded by `pad_bottom` px at the bottom (the official
    HyperLips padding, which keeps the chin) and clipped to the frame, then gaps are filled and
    runs smoothed (finalize_boxes).
    """
    picker = FacePicker(min_face, continuity_iou)
    raw = []
    detector = FaceDetector(max_side=detect_max_side)
    try:
        for frame in tqdm(frames, total=total, desc="face tracking", unit="frame", leave=False,
                          disable=not is_main_process()):
            box = picker(detector.detect(frame))
            raw.append(pad_box(box, bottom=pad_bottom, width=width, height=height)
                       if box is not None else np.full(4, np.nan, np.float32))
    finally:
        detector.close()
    if not raw:
        raise InputError("the video has no frames: use another file")
    n_found = int(sum(np.isfinite(b).all() for b in raw))
    if picker.frames_with_several:
        logger.info("several faces were found in %d of %d frames", picker.frames_with_several, len(raw))
    if 0 < n_found < len(raw):
        logger.info("a face was found in %d of %d frames; frames without one pass through unchanged "
                    "(short gaps are interpolated)", n_found, len(raw))
    return finalize_boxes(np.stack(raw), max_gap=max_gap, window=window)
