"""Face-mesh sketches and mouth masks for the HR stage.

The sketch is the mediapipe mesh drawn as white lines on black over the HyperLips connection set
(lips, eyes, eyebrows, the face oval without the forehead, a nose set; no irises). The decoder
sees it through `sketch_for_decoder`, the single function used in training AND inference.
"""

from __future__ import annotations

import numpy as np
import cv2

from talkingface.utils.errors import InputError

LIPS = (
    (61, 146), (146, 91), (91, 181), (181, 84), (84, 17), (17, 314), (314, 405), (405, 321),
    (321, 375), (375, 291), (61, 185), (185, 40), (40, 39), (39, 37), (37, 0), (0, 267),
    (267, 269), (269, 270), (270, 409), (409, 291), (78, 95), (95, 88), (88, 178), (178, 87),
    (87, 14), (14, 317), (317, 402), (402, 318), (318, 324), (324, 308), (78, 191), (191, 80),
    (80, 81), (81, 82), (82, 13), (13, 312), (312, 311), (311, 310), (310, 415), (415, 308),
)
LEFT_EYE = (
    (263, 249), (249, 390), (390, 373), (373, 374), (374, 380), (380, 381), (381, 382),
    (382, 362), (263, 466), (466, 388), (388, 387), (387, 386), (386, 385), (385, 384),
    (384, 398), (398, 362),
)
LEFT_EYEBROW = (
    (276, 283), (283, 282), (282, 295), (295, 285), (300, 293), (293, 334), (334, 296), (296, 336),
)
RIGHT_EYE = (
    (33, 7), (7, 163), (163, 144), (144, 145), (145, 153), (153, 154), (154, 155), (155, 133),
    (33, 246), (246, 161), (161, 160), (160, 159), (159, 158), (158, 157), (157, 173), (173, 133),
)
RIGHT_EYEBROW = (
    (46, 53), (53, 52), (52, 65), (65, 55), (70, 63), (63, 105), (105, 66), (66, 107),
)
# mediapipe's FACE_OVAL minus the forehead arc: the open chain 389 -> ... -> 162 around the jaw.
FACE_OVAL_NO_FOREHEAD = (
    (389, 356), (356, 454), (454, 323), (323, 361), (361, 288), (288, 397), (397, 365),
    (365, 379), (379, 378), (378, 400), (400, 377), (377, 152), (152, 148), (148, 176),
    (176, 149), (149, 150), (150, 136), (136, 172), (172, 58), (58, 132), (132, 93), (93, 234),
    (234, 127), (127, 162),
)
NOSE = (
    (168, 6), (6, 197), (197, 195), (195, 5), (5, 4),
    (4, 45), (45, 220), (220, 115), (115, 48),
    (4, 275), (275, 440), (440, 344), (344, 278),
)
SKETCH_CONNECTIONS = tuple(sorted(set(
    LIPS + LEFT_EYE + LEFT_EYEBROW + RIGHT_EYE + RIGHT_EYEBROW + FACE_OVAL_NO_FOREHEAD + NOSE)))

# Mouth area from under the nose to the chin, in polygon order (the official HR data's GT_MASK).
LIP_MASK_INDICES = (164, 167, 165, 92, 186, 57, 43, 106, 182, 83, 18, 313, 406, 335, 273, 287,
                    410, 322, 391, 393)

SKETCH_BASE_SIZE = 128  # the official code draws its sketches on a 128 px canvas ...
SKETCH_BASE_THICKNESS = 6  # ... with 6 px lines
DECODER_BLUR_KERNEL = {128: 5, 256: 7, 512: 11}


def _size_hw(size) -> tuple[int, int]:
    if np.isscalar(size):
        return int(size), int(size)
    height, width = size[:2]
    return int(height), int(width)


def _check_landmarks(landmarks) -> np.ndarray:
    points = np.asarray(landmarks, dtype=np.float64)
    if points.ndim != 2 or points.shape[1] < 2 or points.shape[0] < 468:
        raise InputError(f"Expected (468, 2) face-mesh landmarks, got shape {points.shape}")
    if not np.all(np.isfinite(points[:, :2])):
        raise InputError("Face-mesh landmarks contain NaN/inf")
    return points[:, :2]


def default_thickness(size) -> int:
    """Line thickness scaled from 6 px on the official 128 px canvas."""
    height, width = _size_hw(size)
    return max(1, int(round(SKETCH_BASE_THICKNESS * min(height, width) / SKETCH_BASE_SIZE)))


def draw_sketch(landmarks, size, thickness: int | None = None) -> np.ndarray:
    """White mesh lines on black: uint8 (H, W, 3).

    `landmarks` are (468, 2) pixel (x, y) in an image of `size` (int for a square, or (H, W)).
    `thickness` defaults to 6 px at 128 px, scaled with the canvas.
    """
    points = _check_landmarks(landmarks)
    height, width = _size_hw(size)
    if thickness is None:
        thickness = default_thickness((height, width))
    canvas = np.zeros((height, width, 3), dtype=np.uint8)
    # Pixel coordinates as mediapipe's drawing_utils computes them (floor, clamped to the edge).
    px = np.minimum(np.floor(points[:, 0]), width - 1).astype(np.int64)
    py = np.minimum(np.floor(points[:, 1]), height - 1).astype(np.int64)
    for a, b in SKETCH_CONNECTIONS:
        cv2.line(canvas, (int(px[a]), int(py[a])), (int(px[b]), int(py[b])), (255, 255, 255),
                 int(thickness))
    return canvas


def sketch_for_decoder(sketch: np.ndarray, img_size: int) -> np.ndarray:
    """Resize a sketch to img_size², blur (k = 5/7/11 for 128/256/512) and binarize (>0 -> 255).

    The one preprocessing of sketches for the HR decoder, shared by training and inference
    (img_size is HyperLipsHR's, checked by config/schema.py).
    """
    img_size = int(img_size)
    sketch = np.asarray(sketch)
    if sketch.dtype != np.uint8 or sketch.ndim not in (2, 3) or sketch.size == 0:
        raise InputError(f"Expected a uint8 sketch image, got {sketch.dtype} {sketch.shape}")
    if sketch.ndim == 2:
        sketch = cv2.cvtColor(sketch, cv2.COLOR_GRAY2BGR)
    resized = cv2.resize(sketch, (img_size, img_size))
    kernel = DECODER_BLUR_KERNEL[img_size]
    # The official call is GaussianBlur(img, k, 0, 0, cv2.BORDER_DEFAULT): positionally that is
    # dst=0 and sigmaY=4 (the value of BORDER_DEFAULT), which the trained weights expect.
    blurred = cv2.GaussianBlur(resized, (kernel, kernel), sigmaX=0, sigmaY=4)
    _, binary = cv2.threshold(blurred, 0, 255, cv2.THRESH_BINARY)
    return binary


def lip_mask(landmarks, height: int, width: int) -> np.ndarray:
    """Filled mouth polygon (under the nose to the chin): uint8 (H, W) in {0, 255}.

    `landmarks` None (no face found) gives an empty mask rather than a crash.
    """
    mask = np.zeros((int(height), int(width)), dtype=np.uint8)
    if landmarks is None:
        return mask
    points = _check_landmarks(landmarks)[list(LIP_MASK_INDICES)]
    polygon = np.floor(points).astype(np.int32).reshape(-1, 1, 2)
    cv2.fillPoly(mask, [polygon], 255)
    return mask


def lip_box(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    """Bounding box (x1, y1, x2, y2) of a mask's non-zero pixels, x2/y2 exclusive; None if empty."""
    mask = np.asarray(mask)
    if mask.ndim == 3:
        mask = mask.max(axis=2)
    ys, xs = np.nonzero(mask)
    if xs.size == 0:
        return None
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


def soft_mouth_mask(landmarks, height: int, width: int, feather: float | None = None) -> np.ndarray:
    """Paste-back weight: float32 (H, W) in [0, 1], 1 over the lip-mask region.

    The mouth polygon is dilated by `feather` px and blurred with sigma feather/3, so it stays ~1
    over the whole mouth area and falls to 0 over a band about 2*feather wide, leaving no seam.
    `feather` defaults to 6% of the image's larger side. No landmarks give an all-zero mask.
    """
    height, width = int(height), int(width)
    if feather is None:
        feather = 0.06 * max(height, width)
    feather = float(feather)
    mask = lip_mask(landmarks, height, width)
    if feather <= 0 or not mask.any():
        return (mask > 0).astype(np.float32)
    radius = max(1, int(round(feather)))
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))
    grown = cv2.dilate(mask, kernel).astype(np.float32) / 255.0
    sigma = max(0.5, feather / 3.0)
    ksize = 2 * int(np.ceil(3 * sigma)) + 1
    # Reflected border: a mouth at the frame's edge stays pasted up to the edge.
    soft = cv2.GaussianBlur(grown, (ksize, ksize), sigmaX=sigma, sigmaY=sigma)
    return np.clip(soft, 0.0, 1.0).astype(np.float32)
