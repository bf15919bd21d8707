"""Inference building blocks without networks or sample clips: ping-pong order, box tracks,
paste-back and the frame source's backward passes (disk cache and re-decoding agree)."""
import numpy as np
import pytest

from talkingface.inference.paste import border_taper, mouth_mask, paste_face
from talkingface.inference.source import FrameSource, pingpong_index, pingpong_segments
from talkingface.utils.tracking import FacePicker, finalize_boxes
from talkingface.utils.errors import InputError
from talkingface.utils.video import VideoWriter, iter_frames


@pytest.mark.parametrize("n", [1, 2, 3, 7])
def test_pingpong_segments_follow_pingpong_index(n):
    n_out = 4 * n + 3
    order = []
    for first, last, step in pingpong_segments(n, n_out):
        order += [first] * (n_out - len(order)) if step == 0 else list(range(first, last + step, step))
    assert order == [pingpong_index(k, n) for k in range(n_out)]
    if n == 3:
        assert order[:9] == [0, 1, 2, 1, 0, 1, 2, 1, 0]


def test_pingpong_shorter_output_is_cut():
    assert list(pingpong_segments(10, 4)) == [(0, 3, 1)]


def test_finalize_boxes_fills_short_gaps_only():
    box = np.array([10, 20, 110, 140], np.float32)
    raw = np.tile(box, (20, 1)).astype(np.float64)
    raw[3:5] = np.nan      # 2 missing frames between detections: interpolated
    raw[8:16] = np.nan     # 8 missing: passed through
    raw[19] = np.nan       # at the end: passed through
    out = finalize_boxes(raw, max_gap=5, window=5)
    found = np.isfinite(out).all(axis=1)
    assert found[:8].all() and not found[8:16].any() and found[16:19].all() and not found[19]
    np.testing.assert_allclose(out[found], np.tile(box, (found.sum(), 1)), atol=1e-4)


def test_finalize_boxes_smooths_within_runs():
    raw = np.zeros((9, 4))
    raw[:, 2:] = 100
    raw[4, 0] = 10  # one jittered box
    out = finalize_boxes(raw, window=5)
    assert 0 < out[4, 0] < 10 and out[2, 0] == pytest.approx(2) and out[0, 0] == 0


def test_no_face_anywhere_raises():
    with pytest.raises(InputError, match="no face"):
        finalize_boxes(np.full((5, 4), np.nan))


def test_face_picker_follows_the_same_person():
    picker = FacePicker()
    big, small = (0, 0, 200, 200, 0.9), (300, 0, 420, 120, 0.9)
    assert picker([small]) == small[:4]
    # a bigger face appears: the tracked one (overlapping the previous box) is kept
    assert picker([big, small]) == small[:4]
    assert picker([(1, 1, 5, 5, 0.9)]) is None  # too small to be a face


def test_paste_changes_only_the_mask_support():
    rng = np.random.default_rng(0)
    frame = rng.integers(0, 256, (200, 300, 3), dtype=np.uint8)
    before = frame.copy()
    box = (50, 40, 178, 168)
    mask = mouth_mask(None, 128, 128)  # the ellipse fallback
    assert mask[0].max() == 0 and mask[:, -1].max() == 0  # zero on the box border: no seam
    assert mask[90, 64] > 0.9 and mask[20, 64] == 0  # mouth covered, eyes untouched
    paste_face(frame, box, np.zeros((128, 128, 3), np.uint8), mask)
    changed = np.any(frame != before, axis=2)
    assert changed.any()
    ys, xs = np.nonzero(changed)
    assert ys.min() >= 40 and ys.max() < 168 and xs.min() >= 50 and xs.max() < 178
    assert not changed[40:40 + 50].any()  # upper part of the face box kept


def test_mouth_mask_from_landmarks_and_taper():
    taper = border_taper(10, 20, 3)
    assert taper[0].max() == 0 and taper[5, 10] == 1
    landmarks = np.zeros((468, 2), np.float32)
    landmarks[:] = (64, 100)
    from talkingface.utils.sketch import LIP_MASK_INDICES
    angles = np.linspace(0, 2 * np.pi, len(LIP_MASK_INDICES), endpoint=False)
    landmarks[list(LIP_MASK_INDICES)] = np.stack([64 + 25 * np.cos(angles), 95 + 15 * np.sin(angles)], 1)
    mask = mouth_mask(landmarks, 128, 128)
    assert mask[95, 64] > 0.95 and mask[30, 64] == 0 and mask[-1].max() == 0


@pytest.fixture
def counter_video(tmp_path):
    """20 frames at 25 fps, frame i filled with grey 20 + 11*i (told apart after x264 and yuv420p)."""
    path = tmp_path / "counter.mp4"
    with VideoWriter(path, 25, crf=0) as writer:
        for i in range(20):
            writer.write(np.full((48, 64, 3), 20 + 11 * i, np.uint8))
    return path


@pytest.mark.parametrize("cache_mb", [4096, 0])  # disk cache / re-decoding in chunks
def test_frame_source_plays_ping_pong(counter_video, cache_mb):
    with FrameSource(counter_video, cache_limit_mb=cache_mb, chunk=3) as source:
        assert sum(1 for _ in source.scan()) == 20
        indices = []
        for index, frame in source.play(50):
            indices.append(index)
            assert abs(frame.mean() - (20 + 11 * index)) < 4
            frame[:] = 0  # each frame is a private copy: this must not show in later ones
    assert indices == [pingpong_index(k, 20) for k in range(50)]


def test_frame_source_still_image(tmp_path):
    import cv2
    path = tmp_path / "still.png"
    cv2.imwrite(str(path), np.full((40, 30, 3), 7, np.uint8))
    with FrameSource(path) as source:
        assert len(list(source.scan())) == 1
        frames = [f for _, f in source.play(5)]
    assert len(frames) == 5 and all(f.shape == (40, 30, 3) and f.mean() == 7 for f in frames)
    frames[0][:] = 0
    assert frames[1].mean() == 7
    assert next(iter_frames(path)).mean() == 7


def test_chunked_mel_equals_the_whole_track_mel():
    from talkingface.inference.features import chunked_melspectrogram
    from talkingface.utils.audio import melspectrogram
    rng = np.random.default_rng(0)
    for n in (20001, 19800, 31337):
        wav = (0.1 * rng.standard_normal(n)).astype(np.float32)
        whole = melspectrogram(wav)
        np.testing.assert_allclose(chunked_melspectrogram(wav, chunk_frames=23), whole, atol=1e-5)
