"""Run fully convolutional layers on a rectangle of their output only, with the full result there.

Inference pastes only the mouth rectangle of a generated crop, so the full-resolution layers need
only compute that rectangle plus each layer's receptive-field margin. A layer run on a window of
its input gives wrong values only near the window's sides that are NOT map borders (there it sees
zero padding or clamping instead of the real neighbours); those rows and columns are cropped
before the next layer. At map borders the window sees the same padding as the full map, so the
kept pixels are the full computation's (up to the float rounding of a different conv tiling).

A rectangle is (top, bottom, left, right) in pixels of a map, half-open. Each step is planned
backwards (the input window it needs for the window wanted of its output), then run forwards.
"""
import math
from typing import Callable, NamedTuple

import numpy as np
from torch import nn

from talkingface.utils.errors import InputError


class Rect(NamedTuple):
    top: int
    bottom: int
    left: int
    right: int

    def expand(self, margin, height, width):
        """Grown by `margin` px on every side, clipped to a height x width map."""
        return Rect(max(0, self.top - margin), min(height, self.bottom + margin),
                    max(0, self.left - margin), min(width, self.right + margin))

    def doubled_needs(self, height, width):
        """The input rows/cols of a height x width map that a x2 upsampling (bilinear,
        align_corners=False, or a k3 s2 p1 transposed conv) reads for this output rectangle:
        output j reads input px within floor((j-1)/2) .. floor((j+1)/2)."""
        return Rect(max(0, (self.top - 1) // 2), min(height, self.bottom // 2 + 1),
                    max(0, (self.left - 1) // 2), min(width, self.right // 2 + 1))

    def scaled(self, factor):
        return Rect(self.top * factor, self.bottom * factor, self.left * factor, self.right * factor)


def checked_rect(region, height, width, network):
    """`region` (top, bottom, left, right) as a Rect inside a height x width output of `network`,
    else InputError; so is a network in training mode (its BatchNorm would normalise over the
    window instead of the whole map)."""
    if network.training:
        raise InputError(f"a region of {type(network).__name__} is computed in eval mode only: call .eval() first")
    try:
        rect = Rect(*(int(v) for v in region))
    except (TypeError, ValueError):
        raise InputError(f"region must be (top, bottom, left, right) pixels, got {region!r}") from None
    if not (0 <= rect.top < rect.bottom <= height and 0 <= rect.left < rect.right <= width):
        raise InputError(f"region {tuple(rect)} is empty or outside the {height}x{width} output")
    return rect


def crop(x, have, want):
    """The `want` rectangle of a (N,C,H,W) tensor `x` that holds the `have` rectangle of its map."""
    return x[:, :, want.top - have.top:want.bottom - have.top, want.left - have.left:want.right - have.left]


class Step(NamedTuple):
    """One layer: `run(x, rect)` on the window `x` of its input map, `rect` being where that
    window lies; `reach` px of margin (a same-size layer), or `doubles` (a x2 upsampling whose
    output map is twice its input map)."""
    run: Callable
    reach: int = 0
    doubles: bool = False


def layer(module, reach=None):
    """A Step of a same-size module (stride-1 'same' convolutions, pointwise ops, residual adds):
    its reach is the sum of its convolutions' half kernels unless given."""
    if reach is None:
        reach = sum(max(m.dilation[0] * (m.kernel_size[0] // 2), m.dilation[1] * (m.kernel_size[1] // 2))
                    for m in module.modules() if isinstance(m, nn.Conv2d))
    return Step(lambda x, rect: module(x), reach)


def run_steps(steps, x, region):
    """Run `steps` on the whole (N,C,h,w) input map `x`, computing only what the `region` (a Rect)
    of the last step's output needs. -> that region of the output, (N,C',rows,cols)."""
    sizes = [tuple(x.shape[-2:])]
    for step in steps:
        sizes.append(tuple(2 * s for s in sizes[-1]) if step.doubles else sizes[-1])
    wants = [region]
    for step, (h, w) in zip(reversed(steps), reversed(sizes[:-1])):
        out = wants[0]
        wants.insert(0, out.doubled_needs(h, w) if step.doubles else out.expand(step.reach, h, w))
    have = Rect(0, sizes[0][0], 0, sizes[0][1])
    for step, want, next_want in zip(steps, wants, wants[1:]):
        x = step.run(crop(x, have, want), want)
        have = want.scaled(2) if step.doubles else want
        x = crop(x, have, next_want)
        have = next_want
    return x


def mask_rect(masks, threshold=0.0, margin=0):
    """The Rect over every pixel above `threshold` of any of the (H, W) `masks` (one for a batch),
    grown by `margin` px and clipped; None when no mask has such a pixel."""
    masks = np.asarray(masks)
    hit = (masks > threshold).reshape(-1, *masks.shape[-2:]).any(axis=0)
    rows, cols = np.nonzero(hit.any(axis=1))[0], np.nonzero(hit.any(axis=0))[0]
    if len(rows) == 0:
        return None
    height, width = hit.shape
    return Rect(int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1).expand(margin, height, width)


def resize_reach(src_size, dst_size):
    """How many px of a src_size image beyond a rectangle cv2.resize to dst_size may read for the
    destination pixels whose bilinear footprint touches it: 1 when enlarging (INTER_LINEAR reads
    the same 2 px), ceil(src/dst) + 1 when shrinking (INTER_AREA reads the px a pixel covers)."""
    if dst_size >= src_size:
        return 1
    return math.ceil(src_size / dst_size) + 1


def pasted_source_rect(masks, box_sides, threshold, out_size):
    """The Rect of generated out_size x out_size crops that a paste reads, for a batch: `masks`
    (N,S,S) paste weights at their own size S (out_size a multiple of it), each resized bilinearly
    to its face box, whose pixels above `threshold` are blended with the crop resized to the same
    box; `box_sides`: the boxes' shorter sides in frame px. None when nothing is pasted."""
    rect = mask_rect(masks, threshold, margin=1)  # a pasted box pixel also reads the mask px next to one
    if rect is None:
        return None
    scale = out_size // np.asarray(masks).shape[-1]
    reach = max(resize_reach(out_size, int(side)) for side in box_sides)
    return rect.scaled(scale).expand(reach, out_size, out_size)
