"""Face detection, box smoothing/padding/cropping and the 468-point face mesh (mediapipe).

mediapipe 0.10.14 ships its detection and mesh models inside the wheel, so nothing downloads.
Frames are BGR uint8 (OpenCV); mediapipe is always fed RGB.
"""

from __future__ import annotations

import logging
import os
import warnings

import cv2
import numpy as np

from talkingface.utils.errors import InputError

# mediapipe 0.10.14 calls a deprecated protobuf API on every graph run; the warning is noise to users.
warnings.filterwarnings("ignore", message="SymbolDatabase.GetPrototype", category=UserWarning)

logger = logging.getLogger(__name__)

N_MESH_LANDMARKS = 468


# The process that first ran a mediapipe graph. mediapipe's native state does not survive
# fork(): a child forked after the parent used it crashes or hangs in its first graph, so a
# worker pool must use the "spawn" start method. This turns that silent hang into an error.
_mediapipe_owner_pid: int | None = None


def _import_mediapipe():
    global _mediapipe_owner_pid
    if _mediapipe_owner_pid is not None and _mediapipe_owner_pid != os.getpid():
        raise RuntimeError("mediapipe was used in the parent before this process was forked and "
                           "would hang here: create worker pools with "
                           "multiprocessing.get_context('spawn')")
    try:
        import mediapipe as mp  # lazy: ~1 s to import, and the fork check above must run first
    except ImportError as exc:  # pragma: no cover - hard requirement
        raise InputError("mediapipe is not installed: pip install mediapipe==0.10.14") from exc
    _mediapipe_owner_pid = os.getpid()
    return mp


def _check_frame(frame: np.ndarray) -> np.ndarray:
    frame = np.asarray(frame)
    if frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8 or frame.size == 0:
        raise InputError(f"Expected a BGR uint8 image (H, W, 3), got {frame.dtype} {frame.shape}")
    return frame


class _MediapipeSolution:
    """A mediapipe solution graph, closed by close() or at the end of a `with` block."""

    def __init__(self, solution):
        self._solution = solution

    def _process(self, rgb):
        if self._solution is None:
            raise InputError(f"{type(self).__name__} is closed: create a new one")
        return self._solution.process(rgb)

    def close(self) -> None:
        if self._solution is not None:
            self._solution.close()
            self._solution = None

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class FaceDetector(_MediapipeSolution):
    """mediapipe face detection: `.detect(frame_bgr) -> [(x1, y1, x2, y2, score), ...]`.

    Boxes are in pixels of the given frame, clipped to it, best first (largest and most central:
    area weighted by closeness to the frame centre). model_selection=1 is the full-range model,
    which also finds tilted heads that the short-range model (0) misses. Frames are downscaled
    (bilinear) to at most `max_side` px first and boxes scaled back: mediapipe works at 192 px
    anyway, so a smaller copy costs less to make; keep it large enough for small faces in wide shots.
    """

    def __init__(self, model_selection: int = 1, min_confidence: float = 0.5, max_side: int = 640):
        mp = _import_mediapipe()
        self.max_side = int(max_side)
        super().__init__(mp.solutions.face_detection.FaceDetection(
            model_selection=model_selection, min_detection_confidence=min_confidence))

    def detect(self, frame_bgr: np.ndarray) -> list[tuple[float, float, float, float, float]]:
        frame = _check_frame(frame_bgr)
        height, width = frame.shape[:2]
        scale = min(1.0, self.max_side / max(height, width))
        small = frame
        if scale < 1.0:
            small = cv2.resize(frame, (max(1, round(width * scale)), max(1, round(height * scale))),
                               interpolation=cv2.INTER_LINEAR)
        rgb = cv2.cvtColor(small, cv2.COLOR_BGR2RGB)
        results = self._process(rgb)
        boxes = []
        for detection in results.detections or []:
            rel = detection.location_data.relative_bounding_box
            # Relative coordinates: independent of the downscale.
            x1 = float(np.clip(rel.xmin * width, 0, width))
            y1 = float(np.clip(rel.ymin * height, 0, height))
            x2 = float(np.clip((rel.xmin + rel.width) * width, 0, width))
            y2 = float(np.clip((rel.ymin + rel.height) * height, 0, height))
            if x2 - x1 < 2 or y2 - y1 < 2:
                continue
            score = float(detection.score[0]) if detection.score else 0.0
            boxes.append((x1, y1, x2, y2, score))
        boxes.sort(key=lambda b: _area_centrality(b, width, height), reverse=True)
        return boxes


def _area_centrality(box, width: int, height: int) -> float:
    """Area times a centrality weight in [0.5, 1] (1 at the frame centre, 0.5 at a corner)."""
    x1, y1, x2, y2 = box[:4]
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    distance = np.hypot(cx - width / 2, cy - height / 2) / max(1e-6, np.hypot(width / 2, height / 2))
    return (x2 - x1) * (y2 - y1) * (1.0 - 0.5 * min(1.0, distance))


def fill_missing_boxes(boxes: np.ndarray) -> np.ndarray:
    """Fill rows that are NaN (no detection) by linear interpolation from their neighbours
    (the nearest detection at the ends). Raises InputError when no row has a box."""
    boxes = np.asarray(boxes, dtype=np.float64)
    if boxes.ndim != 2 or boxes.shape[1] < 4:
        raise InputError(f"boxes must be (n, 4), got shape {boxes.shape}")
    boxes = boxes[:, :4].copy()
    valid = np.all(np.isfinite(boxes), axis=1)
    if not valid.any():
        raise InputError("No face was detected in any frame: use a video with a visible face")
    if not valid.all():
        idx = np.arange(len(boxes))
        for c in range(4):
            boxes[~valid, c] = np.interp(idx[~valid], idx[valid], boxes[valid, c])
    return boxes


def smooth_boxes(boxes: np.ndarray, window: int = 5) -> np.ndarray:
    """Moving average of (n, 4) boxes over a centred window (shrunk at the ends): float32 (n, 4).

    Extra columns (scores) are dropped; NaN rows (missed detections) are interpolated first.
    """
    boxes = fill_missing_boxes(boxes)
    n = len(boxes)
    if window <= 1 or n <= 1:
        return boxes.astype(np.float32)
    half = int(window) // 2
    cumulative = np.concatenate([np.zeros((1, 4)), np.cumsum(boxes, axis=0)])
    lo = np.clip(np.arange(n) - half, 0, n)
    hi = np.clip(np.arange(n) + (int(window) - half), 0, n)
    means = (cumulative[hi] - cumulative[lo]) / (hi - lo)[:, None]
    return means.astype(np.float32)


def pad_box(box, bottom: int = 10, width: int | None = None, height: int | None = None,
            top: int = 0, left: int = 0, right: int = 0) -> np.ndarray:
    """Grow a box (x1, y1, x2, y2[, score]) or an (n, 4+) array of boxes by the given pixels
    (by default 10 px at the bottom, to keep the chin) and clip it to the frame when its
    width/height are given. Returns float32 (4,) or (n, 4)."""
    arr = np.asarray(box, dtype=np.float64)
    single = arr.ndim == 1
    arr = np.atleast_2d(arr)
    if arr.shape[1] < 4:
        raise InputError(f"A box needs 4 values x1, y1, x2, y2, got shape {np.shape(box)}")
    out = arr[:, :4] + np.array([-left, -top, right, bottom], dtype=np.float64)
    if width is not None:
        out[:, [0, 2]] = np.clip(out[:, [0, 2]], 0, width)
    if height is not None:
        out[:, [1, 3]] = np.clip(out[:, [1, 3]], 0, height)
    out = out.astype(np.float32)
    return out[0] if single else out


def box_to_int(box, width: int, height: int) -> tuple[int, int, int, int]:
    """Integer pixel bounds of a box, clipped to the frame (x2/y2 exclusive)."""
    x1, y1, x2, y2 = (float(v) for v in np.asarray(box).reshape(-1)[:4])
    x1 = int(np.clip(np.floor(x1), 0, width))
    y1 = int(np.clip(np.floor(y1), 0, height))
    x2 = int(np.clip(np.ceil(x2), 0, width))
    y2 = int(np.clip(np.ceil(y2), 0, height))
    return x1, y1, x2, y2


def crop_resize(frame: np.ndarray, box, size) -> np.ndarray:
    """Crop `box` (clipped to the frame) and resize to `size` (int for a square, or (w, h))."""
    frame = np.asarray(frame)
    height, width = frame.shape[:2]
    x1, y1, x2, y2 = box_to_int(box, width, height)
    if x2 <= x1 or y2 <= y1:
        raise InputError(f"Face box {tuple(np.asarray(box).reshape(-1)[:4])} lies outside the "
                         f"{width}x{height} frame")
    out_w, out_h = (int(size), int(size)) if np.isscalar(size) else (int(size[0]), int(size[1]))
    crop = frame[y1:y2, x1:x2]
    shrinking = out_w < (x2 - x1) and out_h < (y2 - y1)
    interpolation = cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR
    return cv2.resize(crop, (out_w, out_h), interpolation=interpolation)


class FaceMesh(_MediapipeSolution):
    """mediapipe face mesh: `.landmarks(frame_bgr) -> (468, 2) float32 pixel (x, y)` or None.

    static_image_mode=True treats every call independently (use it for unrelated images);
    False lets mediapipe track across consecutive video frames, which is faster.
    """

    def __init__(self, static_image_mode: bool = True, min_detection_confidence: float = 0.5,
                 min_tracking_confidence: float = 0.5):
        mp = _import_mediapipe()
        super().__init__(mp.solutions.face_mesh.FaceMesh(
            static_image_mode=static_image_mode, max_num_faces=1, refine_landmarks=False,
            min_detection_confidence=min_detection_confidence,
            min_tracking_confidence=min_tracking_confidence))

    def landmarks(self, frame_bgr: np.ndarray) -> np.ndarray | None:
        frame = _check_frame(frame_bgr)
        height, width = frame.shape[:2]
        results = self._process(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB))
        if not results.multi_face_landmarks:
            return None
        points = results.multi_face_landmarks[0].landmark
        xy = np.array([(p.x * width, p.y * height) for p in points[:N_MESH_LANDMARKS]], dtype=np.float32)
        return xy


def smooth_landmarks(landmarks_seq, window: int = 5) -> list:
    """Average each frame's (468, 2) landmarks with its neighbours over a centred window.

    Frames without landmarks (None) are skipped in the averages; a frame whose whole window has
    none stays None. Steadies the sketch from frame to frame.
    """
    seq = list(landmarks_seq)
    window = max(1, int(window))
    half = window // 2
    smoothed = []
    for k in range(len(seq)):  # the same centred window as smooth_boxes
        near = [np.asarray(p, dtype=np.float64)
                for p in seq[max(0, k - half):k + window - half] if p is not None]
        smoothed.append(np.mean(near, axis=0).astype(np.float32) if near else None)
    return smoothed
