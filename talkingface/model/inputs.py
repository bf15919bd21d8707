"""What the networks are fed, in one place: training, evaluation, HR data and inference use these.

- masked_input: the generator's face input, [target with its lower half zeroed, reference] on
  the channels (dim 1), for frames (N,3,H,W) or windows (N,3,T,H,W);
- expert_face_input: the SyncNet expert's input, the lower halves of T frames stacked frame after
  frame on the channels at 128 px wide;
- to_uint8_images: network output (N,3,H,W) float [0,1] -> (N,H,W,3) uint8, rounded;
- reference_index: which frame is the reference of frame k under the `reference_frame` policy.
"""
import torch
from torch.nn import functional as F

BASE_SIZE = 128    # the Base model's input and output side (and the HR decoder's input)
EXPERT_SIZE = 128  # the expert sees lower halves of 128-px frames: (N, 15, 64, 128)


def reference_index(policy, k, n_frames):
    """Index of the reference frame of frame k (0 <= k < n_frames) under the reference_frame
    `policy` (config/schema.py admits these three; docs/differences.md says which official script
    does which): first, the first face crop of the video (the official HYPERLIPS.py class; the HR
    data); same, the frame itself, unmasked (the official Inference_hyperlips.py); half_clip, the
    frame half the video away, k + n//2 mod n (never the target's own mouth)."""
    return {"first": 0, "same": k, "half_clip": (k + n_frames // 2) % n_frames}[policy]


def masked_input(target, reference):
    """Generator face input: [target with its lower half zeroed, reference] on channel dim 1
    (the height is dim -2 for frames and windows alike)."""
    masked = target.clone()
    masked[..., masked.shape[-2] // 2:, :] = 0.0
    return torch.cat([masked, reference.expand_as(target)], dim=1)


def expert_face_input(frames):
    """Frames (B,3,T,H,W) BGR [0,1] -> the expert's input (B,3T,64,128): the lower halves of the
    T frames stacked frame after frame on the channels, resized to 128 px wide when needed."""
    lower = frames[:, :, :, frames.shape[3] // 2:]
    stacked = torch.cat([lower[:, :, t] for t in range(lower.shape[2])], dim=1)
    if stacked.shape[-2:] != (EXPERT_SIZE // 2, EXPERT_SIZE):
        stacked = F.interpolate(stacked, size=(EXPERT_SIZE // 2, EXPERT_SIZE), mode="bilinear", align_corners=False)
    return stacked


def to_uint8_images(tensor):
    """(N,3,H,W) float [0,1] -> (N,H,W,3) uint8 numpy, rounded to the nearest level."""
    return tensor.float().clamp(0, 1).mul(255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
