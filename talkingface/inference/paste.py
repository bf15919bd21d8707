"""Paste a generated face back into its frame through a soft mouth mask, with no visible seam.

The weight is utils.sketch.soft_mouth_mask over the face-mesh landmarks of the ORIGINAL crop
(under the nose to the chin, dilated and feathered), or, when the mesh finds no face, a fixed soft
ellipse over the lower middle of the box. Either is tapered to exactly 0 at the box border, so the
box edge never shows and every pixel outside the box is left untouched.
"""
import cv2
import numpy as np

from talkingface.utils.sketch import soft_mouth_mask

PASTE_THRESHOLD = 1e-3  # paste_face blends the pixels whose mask weight is above this


def border_taper(height, width, margin):
    """float32 (H, W): 0 on the outermost pixel row/column, rising linearly to 1 `margin` px in."""
    margin = max(1.0, float(margin))
    ys = np.clip(np.minimum(np.arange(height), height - 1 - np.arange(height)) / margin, 0, 1)
    xs = np.clip(np.minimum(np.arange(width), width - 1 - np.arange(width)) / margin, 0, 1)
    return np.outer(ys, xs).astype(np.float32)


def ellipse_mouth_mask(height, width, feather):
    """A fixed soft ellipse over the lower middle of a face box: float32 (H, W) in [0, 1]."""
    mask = np.zeros((height, width), np.float32)
    center = (int(round(width * 0.5)), int(round(height * 0.72)))
    axes = (max(1, int(round(width * 0.28))), max(1, int(round(height * 0.2))))
    cv2.ellipse(mask, center, axes, 0, 0, 360, 1.0, thickness=-1)
    sigma = max(0.5, feather / 3.0)
    return cv2.GaussianBlur(mask, (0, 0), sigma, sigma, cv2.BORDER_CONSTANT)


def mouth_mask(landmarks, height, width, feather_fraction=0.06):
    """Paste weight (H, W) float32 for a face box of that size.

    `landmarks`: (468, 2) face-mesh points in box pixels, or None for the ellipse fallback.
    `feather_fraction`: feathering as a fraction of the box's larger side.
    """
    feather = max(1.0, feather_fraction * max(height, width))
    mask = None
    if landmarks is not None:
        mask = soft_mouth_mask(landmarks, height, width, feather)
        if not mask.any():
            mask = None
    if mask is None:
        mask = ellipse_mouth_mask(height, width, feather)
    return mask * border_taper(height, width, feather)


def paste_face(frame, box, generated, mask):
    """Blend `generated` (any size, BGR uint8) into frame[y1:y2, x1:x2] (in place) by `mask` (h, w).

    `box` is the integer box (x1, y1, x2, y2) the face was cropped from. Only the mask's non-zero
    bounding rectangle is touched.
    """
    x1, y1, x2, y2 = box
    h, w = y2 - y1, x2 - x1
    ys, xs = np.nonzero(mask > PASTE_THRESHOLD)
    if len(ys) == 0:
        return frame
    top, bottom, left, right = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    if generated.shape[:2] != (h, w):
        generated = cv2.resize(generated, (w, h), interpolation=cv2.INTER_LINEAR if generated.shape[0] < h
                               else cv2.INTER_AREA)
    region = frame[y1 + top:y1 + bottom, x1 + left:x1 + right]
    weight = mask[top:bottom, left:right, None]
    new = generated[top:bottom, left:right].astype(np.float32)
    old = region.astype(np.float32)
    region[...] = np.clip(old + (new - old) * weight + 0.5, 0, 255).astype(np.uint8)
    return frame
