"""talkingface.utils.face and .sketch on real 720p talking-head frames."""
import itertools
import os

import cv2
import numpy as np
import pytest

from talkingface.utils import face, sketch
from talkingface.utils.errors import InputError
from talkingface.utils.video import iter_frames

CLIPS = ("video1.mp4", "video2.mp4", "video3.mp4", "video4.mp4")


@pytest.fixture(scope="module")
def real_frames(samples_dir):
    """About 40 frames (1 per second) from each sample clip, plus video2's tilted-head frame 129,
    which the short-range detector misses."""
    frames = []
    for name in CLIPS:
        frames += list(iter_frames(samples_dir / name, fps=1))
    frames += list(itertools.islice(iter_frames(samples_dir / "video2.mp4"), 129, 130))
    return frames


@pytest.fixture(scope="module")
def detector():
    with face.FaceDetector() as det:
        yield det


@pytest.fixture(scope="module")
def mesh():
    with face.FaceMesh(static_image_mode=True) as fm:
        yield fm


@pytest.fixture(scope="module")
def face_crop(real_frames, detector):
    """A padded 256 px face crop of a real frame."""
    frame = real_frames[0]
    box = face.pad_box(detector.detect(frame)[0], 10, frame.shape[1], frame.shape[0])
    return face.crop_resize(frame, box, 256)


def test_detects_exactly_one_face_per_real_frame(real_frames, detector):
    assert len(real_frames) >= 40
    for frame in real_frames:
        boxes = detector.detect(frame)
        assert len(boxes) == 1
        x1, y1, x2, y2, score = boxes[0]
        height, width = frame.shape[:2]
        assert 0 <= x1 < x2 <= width and 0 <= y1 < y2 <= height
        assert 0.1 * height < y2 - y1 < 0.6 * height and 0.5 < score <= 1


def test_downscaled_detection_scales_boxes_back(real_frames, detector):
    frame = real_frames[5]
    with face.FaceDetector(max_side=4000) as full_size:
        reference = np.array(full_size.detect(frame)[0][:4])
    with face.FaceDetector(max_side=320) as small:
        box = np.array(small.detect(frame)[0][:4])
    assert np.abs(box - reference).max() < 0.08 * (reference[2] - reference[0])


def test_no_face_gives_empty_list(detector, mesh):
    blank = np.full((360, 640, 3), 128, dtype=np.uint8)
    assert detector.detect(blank) == []
    assert mesh.landmarks(blank) is None


def test_boxes_ordered_by_area_and_centrality(real_frames, detector):
    frame = real_frames[0]
    x1, y1, x2, y2 = (int(v) for v in detector.detect(frame)[0][:4])
    w, h = x2 - x1, y2 - y1
    head = frame[max(0, y1 - h // 2):y2 + h // 3, max(0, x1 - w // 3):x2 + w // 3]
    hh, hw = head.shape[:2]
    canvas = np.full((720, 1280, 3), 120, dtype=np.uint8)
    canvas[360 - hh // 2:360 - hh // 2 + hh, 40:40 + hw] = head  # same face at the left edge
    canvas[360 - hh // 2:360 - hh // 2 + hh, 640 - hw // 2:640 - hw // 2 + hw] = head  # centre
    boxes = detector.detect(canvas)
    assert len(boxes) == 2
    centres = [(b[0] + b[2]) / 2 for b in boxes]
    assert abs(centres[0] - 640) < 100 and centres[1] < 400
    # The ranking itself: a bigger face wins over a slightly more central one.
    assert face._area_centrality((0, 0, 300, 300), 1280, 720) > face._area_centrality((590, 310, 690, 410), 1280, 720)


def test_detector_rejects_bad_input_and_closes(detector):
    with pytest.raises(InputError):
        detector.detect(np.zeros((10, 10), dtype=np.uint8))
    det = face.FaceDetector()
    det.close()
    det.close()  # idempotent
    with pytest.raises(InputError):
        det.detect(np.zeros((64, 64, 3), dtype=np.uint8))


def test_mesh_468_points_inside_the_face_box(real_frames, detector, mesh):
    for frame in real_frames[::8]:
        x1, y1, x2, y2, _ = detector.detect(frame)[0]
        points = mesh.landmarks(frame)
        assert points is not None and points.shape == (468, 2) and points.dtype == np.float32
        w, h = x2 - x1, y2 - y1
        inside = ((points[:, 0] >= x1 - 0.1 * w) & (points[:, 0] <= x2 + 0.1 * w)
                  & (points[:, 1] >= y1 - 0.25 * h) & (points[:, 1] <= y2 + 0.1 * h))
        assert inside.all()
        mouth = points[list(sketch.LIP_MASK_INDICES)]
        assert np.all(mouth[:, 1] > y1 + 0.45 * h)  # the mouth lies in the lower half


def test_mesh_is_deterministic(face_crop, mesh):
    first = mesh.landmarks(face_crop)
    assert first is not None
    np.testing.assert_array_equal(first, mesh.landmarks(face_crop))


def test_smooth_boxes():
    rng = np.random.default_rng(0)
    steady = np.tile([100.0, 50.0, 300.0, 250.0], (40, 1))
    noisy = steady + rng.normal(0, 5, steady.shape)
    smoothed = face.smooth_boxes(noisy, window=5)
    assert smoothed.shape == (40, 4) and smoothed.dtype == np.float32
    assert np.abs(smoothed - steady)[2:-2].std() < 0.6 * np.abs(noisy - steady)[2:-2].std()
    np.testing.assert_allclose(smoothed[10], noisy[8:13].mean(axis=0), rtol=1e-6)  # centred
    np.testing.assert_allclose(smoothed[0], noisy[0:3].mean(axis=0), rtol=1e-6)  # shrunk at the ends
    np.testing.assert_allclose(face.smooth_boxes(steady), steady)
    with_scores = np.concatenate([noisy, np.ones((40, 1))], axis=1)
    np.testing.assert_allclose(face.smooth_boxes(with_scores), smoothed)
    np.testing.assert_allclose(face.smooth_boxes(noisy, window=1), noisy, rtol=1e-6)


def test_smooth_boxes_fills_missed_detections():
    boxes = np.array([[0, 0, 10, 10], [np.nan] * 4, [4, 4, 14, 14], [np.nan] * 4], dtype=np.float64)
    filled = face.fill_missing_boxes(boxes)
    np.testing.assert_allclose(filled[1], [2, 2, 12, 12])
    np.testing.assert_allclose(filled[3], [4, 4, 14, 14])
    assert np.isfinite(face.smooth_boxes(boxes, 3)).all()
    with pytest.raises(InputError):
        face.smooth_boxes(np.full((3, 4), np.nan))


def test_smooth_landmarks_skips_missing_frames():
    a = np.zeros((468, 2), dtype=np.float32)
    b = np.full((468, 2), 3.0, dtype=np.float32)
    out = face.smooth_landmarks([a, None, b, None, None, None, None], window=3)
    np.testing.assert_allclose(out[0], a)
    np.testing.assert_allclose(out[1], 1.5)
    np.testing.assert_allclose(out[3], b)
    assert out[5] is None and out[2].dtype == np.float32
    assert face.smooth_landmarks([a, b], window=1)[1] is not None


def test_pad_box_and_crop_resize():
    np.testing.assert_allclose(face.pad_box((10, 20, 110, 120, 0.9)), [10, 20, 110, 130])
    np.testing.assert_allclose(face.pad_box((10, 20, 110, 195), 10, 200, 200), [10, 20, 110, 200])
    many = face.pad_box(np.array([[0, 0, 5, 5], [1, 1, 6, 6]]), bottom=2, width=6, height=7)
    np.testing.assert_allclose(many, [[0, 0, 5, 7], [1, 1, 6, 7]])
    frame = np.zeros((100, 200, 3), dtype=np.uint8)
    frame[40:60, 120:160] = 255
    crop = face.crop_resize(frame, (120, 40, 160, 60), 64)
    assert crop.shape == (64, 64, 3) and crop.min() == 255
    assert face.crop_resize(frame, (150, 50, 260, 90), (32, 16)).shape == (16, 32, 3)  # clipped
    with pytest.raises(InputError):
        face.crop_resize(frame, (300, 10, 400, 50), 64)


def test_sketch_connection_set():
    connections = set(sketch.SKETCH_CONNECTIONS)
    assert len(connections) == 40 + 16 + 8 + 16 + 8 + 24 + 13
    used = {i for pair in connections for i in pair}
    assert max(used) < 468  # no iris points
    assert 10 not in used and 338 not in used  # the forehead arc of the face oval is left out
    assert {(389, 356), (127, 162), (168, 6), (4, 275)} <= connections


def test_draw_sketch_inside_the_face(face_crop, mesh):
    points = mesh.landmarks(face_crop)
    drawn = sketch.draw_sketch(points, 256)
    assert drawn.shape == (256, 256, 3) and drawn.dtype == np.uint8
    assert set(np.unique(drawn)) == {0, 255}
    assert 0.02 < (drawn[..., 0] > 0).mean() < 0.5
    ys, xs = np.nonzero(drawn[..., 0])
    margin = sketch.default_thickness(256)
    assert sketch.default_thickness(128) == 6 and margin == 12
    assert xs.min() >= points[:, 0].min() - margin and xs.max() <= points[:, 0].max() + margin
    assert ys.min() >= points[:, 1].min() - margin and ys.max() <= points[:, 1].max() + margin
    thin = sketch.draw_sketch(points, 256, thickness=2)
    assert (thin > 0).sum() < (drawn > 0).sum()
    with pytest.raises(InputError):
        sketch.draw_sketch(points[:100], 256)


def test_sketch_for_decoder(face_crop, mesh):
    drawn = sketch.draw_sketch(mesh.landmarks(face_crop), 256)
    for size in (128, 256, 512):
        out = sketch.sketch_for_decoder(drawn, size)
        assert out.shape == (size, size, 3) and out.dtype == np.uint8
        assert set(np.unique(out)) <= {0, 255}
        resized = cv2.resize(drawn, (size, size))
        assert np.all(out[resized > 0] == 255)  # blur + threshold only grows the lines
        assert (out > 0).sum() > (resized > 0).sum()
        # the official recipe (Train_hyperlipsHR.py), written out: resize, Gaussian blur k = 5/7/11,
        # any level > 0 -> 255. Its call GaussianBlur(img, (k, k), 0, 0, cv2.BORDER_DEFAULT) passes
        # the border flag where OpenCV takes sigmaY: sigma x from k, sigma y = BORDER_DEFAULT = 4.
        kernel = {128: 5, 256: 7, 512: 11}[size]
        blurred = cv2.GaussianBlur(resized, (kernel, kernel), sigmaX=0, sigmaY=4)
        np.testing.assert_array_equal(out, np.where(blurred > 0, 255, 0).astype(np.uint8))
    dot = np.zeros((128, 128, 3), dtype=np.uint8)
    dot[64, 64] = 255
    assert (sketch.sketch_for_decoder(dot, 128)[..., 0] > 0).sum() == 25  # the 5x5 kernel
    # another size (200) is refused by the config: tests/unit/config/test_config.py test_values_the_networks_fix_...


def test_lip_mask_inside_the_face_and_stable(face_crop, mesh):
    points = mesh.landmarks(face_crop)
    mask = sketch.lip_mask(points, 256, 256)
    assert mask.shape == (256, 256) and mask.dtype == np.uint8
    assert set(np.unique(mask)) == {0, 255}
    assert 0.01 < (mask > 0).mean() < 0.25
    box = sketch.lip_box(mask)
    x1, y1, x2, y2 = box
    assert points[:, 0].min() <= x1 < x2 <= points[:, 0].max() + 1
    assert (points[:, 1].min() + points[:, 1].max()) / 2 < y1 < y2 <= points[:, 1].max() + 1
    assert mask[y1:y2, x1:x2].sum() == mask.sum()
    np.testing.assert_array_equal(mask, sketch.lip_mask(mesh.landmarks(face_crop), 256, 256))
    assert sketch.lip_box(np.zeros((8, 8), dtype=np.uint8)) is None
    assert not sketch.lip_mask(None, 32, 32).any()


def test_soft_mouth_mask_has_no_seam(face_crop, mesh):
    points = mesh.landmarks(face_crop)
    hard = sketch.lip_mask(points, 256, 256) > 0
    soft = sketch.soft_mouth_mask(points, 256, 256, feather=12)
    assert soft.dtype == np.float32 and soft.shape == (256, 256)
    assert soft.min() >= 0 and soft.max() <= 1
    assert soft[hard].min() > 0.98  # the whole mouth region is pasted
    assert soft[:40].max() == 0  # nothing near the eyes
    assert soft.sum() > hard.sum()  # grown beyond the polygon
    steps = max(np.abs(np.diff(soft, axis=0)).max(), np.abs(np.diff(soft, axis=1)).max())
    assert steps < 0.15  # a gradual edge, no seam
    default = sketch.soft_mouth_mask(points, 256, 256)
    assert default.max() == pytest.approx(1, abs=1e-3)
    assert not sketch.soft_mouth_mask(None, 16, 16).any()


def _make_detector_in_child(_):
    face.FaceDetector().close()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork() on this platform")
def test_forked_child_gets_an_error_not_a_hang(mesh):
    import multiprocessing

    mesh.landmarks(np.zeros((64, 64, 3), dtype=np.uint8))  # mediapipe has run in this process
    with multiprocessing.get_context("fork").Pool(1) as pool:
        with pytest.raises(RuntimeError, match="spawn"):
            pool.apply(_make_detector_in_child, (0,))
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        pool.apply(_make_detector_in_child, (0,))
