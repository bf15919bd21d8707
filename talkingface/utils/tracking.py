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

FaceTracker is the one implementation: it takes one frame's detections at a time and gives each
frame's box as soon as it is final, so preprocessing writes crops while it decodes; track_faces
(inference, evaluation, the scorer) collects its boxes for a whole video, finalize_boxes for boxes
already picked and padded.
"""
import logging
from collections import deque

import numpy as np
from tqdm import tqdm

from talkingface.utils.distributed import is_main_process
from talkingface.utils.errors import InputError
from talkingface.utils.face import FaceDetector, fill_missing_boxes, pad_box

logger = logging.getLogger(__name__)

# The YAML keys of the tracker (overall.yaml) and the track_faces arguments they set.
TRACKER_KEYS = {"detect_max_side": "detect_max_side", "face_min_size": "min_face", "face_continuity_iou":
                "continuity_iou", "face_max_gap": "max_gap", "box_smooth_window": "window",
                "face_pad_bottom": "pad_bottom"}
NO_FACE = "no face was found in any frame of the video: use a video (or image) with a clearly visible face"


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

    def would_pick(self, detections):
        """Whether a call with these detections picks a face (no state changes)."""
        return any(min(d[2] - d[0], d[3] - d[1]) >= self.min_face for d in detections)

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


class FaceTracker:
    """The one face tracker, streaming: detections in one frame at a time, final boxes out as soon
    as they are known. Preprocessing, inference, evaluation and the scorer all go through it.

        tracker = FaceTracker(width, height, **settings)
        for frame in frames:
            for index, box in tracker.push(detector.detect(frame)):
                ...                      # box: float32 (4,), NaN where the frame has no face
        for index, box in tracker.finish():
            ...

    Every frame index comes out exactly once, in order. A frame's box is final once the last
    frame of its smoothing window is known (`window - window // 2 - 1` frames later) or its run
    has ended; a frame without a face, once its gap is too long to fill (more than `max_gap`
    frames), or at once when no run is open. Only a short gap and a window's worth of running sums
    are held. The boxes are those of smoothing each whole run at once, bit for bit: gaps are filled
    by utils.face.fill_missing_boxes and the average comes from one running sum per run, as
    utils.face.smooth_boxes computes it (the same float64 additions in the same order).
    """

    def __init__(self, width, height, pad_bottom=10, max_gap=5, window=5, min_face=24, continuity_iou=0.3):
        self.width, self.height = width, height  # settable before the first push (a frame of another size)
        self.pad_bottom, self.max_gap, self.window = pad_bottom, int(max_gap), int(window)
        self.picker = FacePicker(min_face, continuity_iou)
        self.runs = []           # (start, stop) of each finished run of frames with a box
        self.n_frames = 0        # frames pushed
        self.n_found = 0         # frames where a face was detected
        self.n_skipped = 0       # frames not looked at (skip())
        self._emitted = 0        # frames before this index are out
        self._run_start = None   # first frame of the open run
        self._last_found = None  # (index, padded box) of the open run's last detection
        self._run_length = 0     # frames of the open run with a known (detected or filled) box
        self._sums = deque()     # running sums of the open run: _sums[i] = sum of its first _sums_base + i boxes
        self._sums_base = 0
        self._boxes = deque()    # known boxes of the open run not yet out (window <= 1 emits them as they are)

    @classmethod
    def from_settings(cls, settings, width, height):
        """A tracker from the YAML keys of tracker_settings (a config or preprocessing's params)."""
        return cls(width, height, **{TRACKER_KEYS[key]: settings[key] for key in TRACKER_KEYS
                                     if key != "detect_max_side"})  # the detector's setting

    @property
    def frames_with_several(self):
        return self.picker.frames_with_several

    def push(self, detections):
        """The next frame's detections (the detector's list) -> [(index, box)] that became final."""
        chosen = self.picker(detections)
        return self.push_box(None if chosen is None else
                             pad_box(chosen, bottom=self.pad_bottom, width=self.width, height=self.height))

    def skip(self):
        """As push, for a frame the detector did not look at (track_faces' detect_every): a gap in
        the open run, filled when the next frame with a face follows within max_gap."""
        self.picker.frame += 1
        self.n_skipped += 1
        return self.push_box(None)

    def push_box(self, box):
        """As push, for a frame whose face is already chosen and padded (None: no face)."""
        index = self.n_frames
        self.n_frames += 1
        if box is None:
            if self._run_start is not None and index - self._last_found[0] <= self.max_gap:
                return []  # may still be filled by the next detection
            out = self._end_run() if self._run_start is not None else []
            out += [(k, _no_box()) for k in range(self._emitted, index + 1)]
            self._emitted = index + 1
            return out
        self.n_found += 1
        box = np.asarray(box, np.float64)[:4]
        if self._run_start is None:
            self._run_start, self._run_length = index, 0
            self._sums, self._sums_base = deque([np.zeros(4)]), 0
        else:
            last_index, last_box = self._last_found
            if index - last_index > 1:  # a short gap: interpolated as whole-run smoothing does
                ends = np.full((index - last_index + 1, 4), np.nan)
                ends[0], ends[-1] = last_box, box
                for filled in fill_missing_boxes(ends)[1:-1]:
                    self._add(filled)
        self._add(box)
        self._last_found = (index, box)
        return self._emit(closed=False)

    def finish(self):
        """[(index, box)] of every frame not out yet: the open run ends at its last detection."""
        out = self._end_run() if self._run_start is not None else []
        out += [(k, _no_box()) for k in range(self._emitted, self.n_frames)]
        self._emitted = self.n_frames
        return out

    def _add(self, box):
        self._sums.append(self._sums[-1] + box)
        self._boxes.append(box)
        self._run_length += 1

    def _end_run(self):
        out = self._emit(closed=True)
        self.runs.append((self._run_start, self._run_start + self._run_length))
        self._run_start = self._last_found = None
        self._sums.clear()
        self._boxes.clear()
        return out

    def _emit(self, closed):
        """The run's frames whose window is complete (all of them when the run has ended)."""
        out, half = [], self.window // 2
        while self._emitted < self._run_start + self._run_length:
            k = self._emitted - self._run_start  # position in the run
            hi = k + self.window - half if self.window > 1 else k + 1
            if hi > self._run_length and not closed:
                break
            box = self._boxes.popleft()
            if self.window > 1:  # smooth_boxes' centred mean: window shrunk at the run's ends
                lo, hi = max(0, k - half), min(hi, self._run_length)
                box = (self._sums[hi - self._sums_base] - self._sums[lo - self._sums_base]) / (hi - lo)
            while self._sums_base < k + 1 - half:  # no later frame's window reaches back this far
                self._sums.popleft()
                self._sums_base += 1
            out.append((self._emitted, box.astype(np.float32)))
            self._emitted += 1
        return out


def _no_box():
    return np.full(4, np.nan, np.float32)


def finalize_boxes(raw, max_gap=5, window=5):
    """Raw per-frame boxes (n, 4), NaN rows where no face, -> boxes to use (NaN = pass through).

    Interior gaps of <= max_gap frames are interpolated; each run of frames with a face is
    smoothed on its own (FaceTracker on boxes already picked and padded). Raises a one-line
    InputError when no frame has a face.
    """
    raw = np.asarray(raw, dtype=np.float64).reshape(-1, 4)
    if not np.isfinite(raw).all(axis=1).any():
        raise InputError(NO_FACE)
    tracker = FaceTracker(None, None, max_gap=max_gap, window=window)
    out = np.empty(raw.shape, np.float32)
    for box in raw:
        for index, final in tracker.push_box(box if np.isfinite(box).all() else None):
            out[index] = final
    for index, final in tracker.finish():
        out[index] = final
    return out


def track_faces(frames, width, height, pad_bottom=10, max_gap=5, window=5, total=None, detect_max_side=640,
                min_face=24, continuity_iou=0.3, detect_every=1):
    """Boxes (n, 4) float32 for a stream of BGR frames (NaN rows: no face, pass through): the
    FaceTracker's boxes of the whole video.

    Each frame's chosen detection is padded by `pad_bottom` px at the bottom (the official
    HyperLips padding, which keeps the chin) and clipped to the frame, then gaps are filled and
    runs smoothed. detect_every > 1 (inference: infer_detect_every) runs the detector on every
    detect_every-th frame and on the last one, and interpolates the boxes of the frames between
    two found faces as the tracker fills a gap; a frame without a face makes the skipped frames
    before it and every frame after it, until a face is found again, detected as with
    detect_every=1, so runs start and end where they would.
    """
    tracker = FaceTracker(width, height, pad_bottom=pad_bottom, max_gap=max_gap, window=window,
                          min_face=min_face, continuity_iou=continuity_iou)
    boxes = []
    detector = FaceDetector(max_side=detect_max_side)
    skipped = []  # frames since the last detection, not looked at yet

    def detect(frame, before):
        """Push the frames `before` (skipped: interpolated if `frame` has a face, else detected), then `frame`."""
        detections = detector.detect(frame)
        found = tracker.picker.would_pick(detections)
        for earlier in before:
            boxes.extend(box for _, box in (tracker.skip() if found else tracker.push(detector.detect(earlier))))
        boxes.extend(box for _, box in tracker.push(detections))
        return found

    try:
        found, since = True, detect_every  # frames since the last detection (the first frame is detected)
        for frame in tqdm(frames, total=total, desc="face tracking", unit="frame", leave=False,
                          disable=not is_main_process()):
            if found and since < detect_every:
                since += 1
                skipped.append(frame)
                continue
            found, since = detect(frame, skipped), 1
            skipped = []
        if skipped:  # the last frame is always detected: a run ends at its last detection
            detect(skipped[-1], skipped[:-1])
    finally:
        detector.close()
    boxes += [box for _, box in tracker.finish()]
    if not boxes:
        raise InputError("the video has no frames: use another file")
    if tracker.frames_with_several:
        logger.info("several faces were found in %d of %d frames", tracker.frames_with_several, len(boxes))
    if not tracker.n_found:
        raise InputError(NO_FACE)
    looked_at = len(boxes) - tracker.n_skipped
    if tracker.n_found < looked_at:
        logger.info("a face was found in %d of %d frames looked at; frames without one pass through unchanged "
                    "(short gaps are interpolated)", tracker.n_found, looked_at)
    return np.stack(boxes)
