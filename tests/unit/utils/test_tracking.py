"""The one face tracker, streaming (utils.tracking.FaceTracker): each box comes out as soon as its
smoothing window is known, and the boxes are those of filling and smoothing each whole run at once,
bit for bit (preprocessing streams; inference, evaluation and the scorer collect the whole video)."""
import numpy as np
import pytest

from talkingface.utils.face import smooth_boxes
from talkingface.utils.tracking import FaceTracker, finalize_boxes


def whole_run_boxes(raw, max_gap, window):
    """The tracker's definition, on a whole video at once: gaps of <= max_gap frames between two
    detections are interpolated, each run is smoothed on its own (smooth_boxes), the rest is NaN."""
    raw = np.asarray(raw, dtype=np.float64).reshape(-1, 4)
    found = np.all(np.isfinite(raw), axis=1)
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


def random_track(rng, n, miss):
    """n raw boxes drifting as a face does, NaN rows where the detector missed it."""
    raw = np.cumsum(rng.normal(0, 3, (n, 4)), axis=0) + rng.uniform(0, 900, 4)
    raw = raw.astype(np.float32).astype(np.float64)  # as padded detections are
    raw[rng.random(n) < miss] = np.nan
    return raw


def stream(raw, **settings):
    """(boxes in index order, {index: frames pushed when it came out}, tracker)."""
    tracker = FaceTracker(None, None, **settings)
    boxes, out_at = {}, {}
    for k, box in enumerate(raw):
        for index, final in tracker.push_box(box if np.isfinite(box).all() else None):
            boxes[index], out_at[index] = final, k + 1
    for index, final in tracker.finish():
        boxes[index], out_at[index] = final, len(raw) + 1  # 1 more: only at finish()
    assert list(boxes) == list(range(len(raw)))  # every frame once, in order
    return np.stack(list(boxes.values())), out_at, tracker


@pytest.mark.parametrize("window", [1, 2, 3, 4, 5, 9])
@pytest.mark.parametrize("max_gap", [0, 2, 5])
def test_streamed_boxes_equal_whole_run_boxes_bit_for_bit(window, max_gap):
    rng = np.random.default_rng(window * 10 + max_gap)
    for miss in (0.0, 0.1, 0.3, 0.6):
        for n in (1, 2, 7, 60):
            raw = random_track(rng, n, miss)
            if not np.isfinite(raw).all(axis=1).any():
                continue
            expected = whole_run_boxes(raw, max_gap, window)
            got, _, _ = stream(raw, max_gap=max_gap, window=window)
            assert got.dtype == np.float32
            np.testing.assert_array_equal(got, expected)  # NaN where expected NaN, else the same bits
            np.testing.assert_array_equal(finalize_boxes(raw, max_gap=max_gap, window=window), expected)


@pytest.mark.parametrize("window, delay", [(1, 0), (2, 0), (3, 1), (4, 1), (5, 2), (9, 4)])
def test_each_box_comes_out_as_soon_as_its_window_is_known(window, delay):
    raw = random_track(np.random.default_rng(0), 30, 0.0)
    _, out_at, _ = stream(raw, window=window)
    # frame k's window ends `delay` frames later: it is out once frame k + delay is pushed ...
    assert all(out_at[k] == k + delay + 1 for k in range(30 - delay))
    # ... and the last `delay` frames once the video ends
    assert all(out_at[k] == 31 for k in range(30 - delay, 30))


def test_gaps_fill_or_split_runs_and_come_out_when_decided():
    raw = random_track(np.random.default_rng(1), 40, 0.0)
    raw[[0, 1]] = np.nan        # before any face: out at once
    raw[10:13] = np.nan         # 3 missed frames <= max_gap 3: filled, stays in the run
    raw[20:24] = np.nan         # 4 > max_gap: the run ends at 20
    raw[38:] = np.nan           # at the end: never filled
    boxes, out_at, tracker = stream(raw, max_gap=3, window=5)
    assert tracker.runs == [(2, 20), (24, 38)]
    found = np.isfinite(boxes).all(axis=1)
    assert found.tolist() == [2 <= k < 20 or 24 <= k < 38 for k in range(40)]
    assert out_at[0] == 1 and out_at[1] == 2
    assert out_at[9] == 14  # its window (7..11) needs frame 11: filled once frame 13 is detected
    # the 4th miss (frame 23) decides: the run's last frames and the whole gap come out with it
    assert {out_at[k] for k in range(18, 24)} == {24}
    assert out_at[38] == out_at[39] == 41  # a trailing gap may still be filled until the video ends
    assert tracker.n_found == 40 - 2 - 3 - 4 - 2 and tracker.n_frames == 40


def test_a_long_video_holds_only_a_window():
    tracker = FaceTracker(640, 480, window=5, max_gap=5)
    held = 0
    for k in range(5000):
        box = (100.0 + k % 7, 100.0, 200.0, 220.0, 0.9)
        tracker.push([box] if k % 50 else [])  # a miss every 2 s: filled, the run never ends
        held = max(held, len(tracker._sums) + len(tracker._boxes))
    assert held <= 2 * (5 + 2)
    assert len(tracker.finish()) == 2 and tracker.runs == [(1, 5000)]


def test_detections_are_picked_and_padded_as_the_tracker_settings_say():
    settings = dict(face_min_size=24, face_continuity_iou=0.3, face_max_gap=5, box_smooth_window=1,
                    face_pad_bottom=10, detect_max_side=640)
    tracker = FaceTracker.from_settings(settings, 200, 195)
    small, face = (150.0, 10.0, 160.0, 18.0, 0.95), (40.0, 30.0, 140.0, 190.0, 0.9)
    [(index, box)] = tracker.push([small, face])  # the 10 px "face" is dropped
    assert index == 0 and box.tolist() == [40, 30, 140, 195]  # 10 px lower, clipped to the frame


class ScriptedDetector:
    """A FaceDetector whose frames are their own index: detect(k) gives the face of frame k of
    `faces` (None: no face), and each call is recorded."""

    def __init__(self, faces):
        self.faces, self.calls = faces, []

    def __call__(self, max_side=640):
        return self

    def detect(self, frame):
        self.calls.append(frame)
        box = self.faces[frame]
        return [] if box is None else [(*box, 0.9)]

    def close(self):
        pass


def track_scripted(monkeypatch, faces, every):
    from talkingface.utils import tracking
    detector = ScriptedDetector(faces)
    monkeypatch.setattr(tracking, "FaceDetector", detector)
    boxes = tracking.track_faces(iter(range(len(faces))), 1280, 720, detect_every=every)
    return boxes, detector.calls


def test_detecting_every_third_frame_interpolates_between_found_faces(monkeypatch):
    rng = np.random.default_rng(3)
    # a face drifting as in video, gone at frames 10-11 (filled) and 20-27 (too long: pass through)
    centre = np.cumsum(rng.normal(0, 2, (40, 2)), axis=0) + (640, 360)
    faces = [(x - 100, y - 120, x + 100, y + 120) for x, y in centre]
    for k in (10, 11, *range(20, 28)):
        faces[k] = None
    every_frame, calls = track_scripted(monkeypatch, faces, 1)
    assert calls == list(range(40))
    strided, calls = track_scripted(monkeypatch, faces, 3)

    # every 3rd frame; frames 10-11 lie between two found faces (12 is found): interpolated, as a
    # short gap is; at the miss at 21 the skipped 19-20 and each frame up to the face at 28 are
    # detected; the last frame always is
    assert calls == [0, 3, 6, 9, 12, 15, 18, 21, 19, 20, 22, 23, 24, 25, 26, 27, 28, 31, 34, 37, 39]
    # the same frames have a face; the interpolated boxes stay within the drift of 2 frames
    assert np.array_equal(np.isnan(strided), np.isnan(every_frame))
    found = ~np.isnan(every_frame[:, 0])
    assert np.abs(strided[found] - every_frame[found]).max() < 6
    assert not np.array_equal(strided, every_frame)  # frames 1, 2, 4, ... were interpolated
