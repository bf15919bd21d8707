"""Face boxes for every 25 fps source frame: detect, pick one face, pad, fill short gaps, smooth.

Only the boxes are kept ((n, 4) floats, a few bytes per frame), so a whole video is tracked in one
streaming pass before any frame is generated; the generation pass then decodes the video again.
Frames without a face keep a NaN box and pass through unchanged. Gaps of at most `max_gap` frames
between two detections are interpolated; the boxes of each run of frames with a face are smoothed
with a centred moving average (utils.face.smooth_boxes), runs never being averaged across a gap.
"""
import logging

import numpy as np
from tqdm import tqdm

from talkingface.utils.distributed import is_main_process
from talkingface.utils.errors import InputError
from talkingface.utils.face import FaceDetector, pad_box, smooth_boxes

logger = logging.getLogger(__name__)

# Detections smaller than this (px) are dropped: too small to lip-sync, and in practice false
# positives (the detector finds 7 px "faces" in compressed noise).
MIN_FACE_PX = 24


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

    def __init__(self):
        self.previous = None
        self.warned = False

    def __call__(self, detections):
        detections = [d for d in detections if min(d[2] - d[0], d[3] - d[1]) >= MIN_FACE_PX]
        if not detections:
            return None
        chosen = detections[0]
        if len(detections) > 1:
            if not self.warned:
                logger.info("several faces found: the largest, most central one is lip-synced "
                            "(and followed from frame to frame)")
                self.warned = True
            if self.previous is not None:
                best = max(detections, key=lambda d: box_iou(d, self.previous))
                if box_iou(best, self.previous) > 0.3:
                    chosen = best
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


def track_faces(frames, width, height, pad_bottom=10, max_gap=5, window=5, total=None, detect_max_side=640):
    """Boxes (n, 4) float32 for a stream of BGR frames (NaN rows: no face, pass through).

    Each frame's chosen detection is padded by `pad_bottom` px at the bottom (the official
    HyperLips padding, which keeps the chin) and clipped to the frame, then gaps are filled and
    runs smoothed (finalize_boxes).
    """
    picker = FacePicker()
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
    if 0 < n_found < len(raw):
        logger.info("a face was found in %d of %d frames; frames without one pass through unchanged "
                    "(short gaps are interpolated)", n_found, len(raw))
    return finalize_boxes(np.stack(raw), max_gap=max_gap, window=window)
