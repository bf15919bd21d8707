"""The official SyncNet of Chung & Zisserman ("Out of time", syncnet_python `S`), for LSE-C/LSE-D.

Written from the published architecture; it loads `syncnet_v2.model` (a state dict whose keys may
carry a `__S__.` or `module.` prefix). How the official evaluation feeds it, reproduced here:
- video: 5 consecutive face crops resized to 224x224, read with OpenCV, so **BGR**, float values
  0..255 without normalisation, shaped (N, 3, 5, 224, 224);
- audio: 13 MFCCs at 100 Hz (`mfcc.syncnet_mfcc`), window i = columns 4i..4i+20, shaped (N,1,13,20);
- windows i = 0 .. min(n_frames, len(audio)//640) - 6 (the official `lastframe = min_length - 5`);
- embeddings are 1024-d and NOT normalised; distances are Euclidean (`sync.sync_scores`, zero-padded).

Crops. syncnet_python cuts its 224x224 input from the full frame around the face track
(`syncnet_crops` below reproduces its geometry: box centre and half-size median-filtered over 13
frames, 40% context, more below the face than above, grey padding past the frame edge). Where the
full frames and face boxes are at hand (the standalone scorer on videos) LSE is fed those crops,
from our face tracker's boxes; the one remaining difference to that pipeline is the detector
(mediapipe instead of S3FD, whose boxes are a little larger). Where only face crops exist, they
are resized to 224 instead, which frames the face tighter and moves LSE values.
"""
import cv2
import numpy as np
import torch
from torch import nn

from talkingface.model.mfcc import syncnet_mfcc
from talkingface.utils.audio import SAMPLES_PER_FRAME
from talkingface.utils.checkpoint import load_checkpoint_file
from talkingface.utils.errors import CheckpointError

EMBEDDING_DIM = 1024
INPUT_SIZE = 224

# syncnet_python's run_pipeline crop: context around the face box (--crop_scale), the median
# filter over box centre and size, and the grey of the padding beyond the frame.
CROP_SCALE = 0.4
BOX_MEDIAN_KERNEL = 13
PAD_GREY = 110


def zero_padded_median(values, kernel):
    """Centred running median with zeros beyond both ends (scipy.signal.medfilt's convention)."""
    values = np.asarray(values, dtype=np.float64)
    half = kernel // 2
    padded = np.concatenate([np.zeros(half), values, np.zeros(half)])
    return np.median(np.lib.stride_tricks.sliding_window_view(padded, kernel), axis=1)


def syncnet_crop_geometry(boxes):
    """(centre x, centre y, half size) per frame of (n, 4) face boxes x1, y1, x2, y2, each
    median-filtered over BOX_MEDIAN_KERNEL frames; half size = half the longer box side."""
    boxes = np.asarray(boxes, dtype=np.float64)
    half = np.maximum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]) / 2
    centre_x, centre_y = (boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2
    return tuple(zero_padded_median(v, BOX_MEDIAN_KERNEL) for v in (centre_x, centre_y, half))


def syncnet_crop(frame, centre_x, centre_y, half, crop_scale=CROP_SCALE):
    """The face crop syncnet_python feeds SyncNet, INPUT_SIZE square: rows from `half` above the
    centre to half*(1+2*crop_scale) below it, columns half*(1+crop_scale) either side; pixels
    beyond the frame are PAD_GREY. Bounds are truncated in the padded frame, as there."""
    pad = int(half * (1 + 2 * crop_scale))
    cy, cx = centre_y + pad, centre_x + pad          # in the frame padded by `pad` on every side
    top, bottom = int(cy - half), int(cy + half * (1 + 2 * crop_scale))
    left, right = int(cx - half * (1 + crop_scale)), int(cx + half * (1 + crop_scale))
    height, width = frame.shape[:2]
    face = np.full((bottom - top, right - left, frame.shape[2]), PAD_GREY, dtype=frame.dtype)
    y0, y1 = max(top, pad), min(bottom, pad + height)        # the part inside the real frame
    x0, x1 = max(left, pad), min(right, pad + width)
    if y1 > y0 and x1 > x0:
        face[y0 - top:y1 - top, x0 - left:x1 - left] = frame[y0 - pad:y1 - pad, x0 - pad:x1 - pad]
    return cv2.resize(face, (INPUT_SIZE, INPUT_SIZE))


def syncnet_crops(frames, boxes):
    """(n, 224, 224, 3) crops of full frames with the syncnet_python geometry; boxes (n, 4) without NaN."""
    centre_x, centre_y, half = syncnet_crop_geometry(boxes)
    return np.stack([syncnet_crop(frame, centre_x[k], centre_y[k], half[k]) for k, frame in enumerate(frames)])


def _conv_bn_relu(conv, bn):
    return [conv, bn, nn.ReLU(inplace=True)]


class SyncNetV2(nn.Module):
    def __init__(self, embedding_dim=EMBEDDING_DIM):
        super().__init__()
        self.netcnnaud = nn.Sequential(
            *_conv_bn_relu(nn.Conv2d(1, 64, 3, 1, 1), nn.BatchNorm2d(64)),
            nn.MaxPool2d(kernel_size=(1, 1), stride=(1, 1)),
            *_conv_bn_relu(nn.Conv2d(64, 192, 3, 1, 1), nn.BatchNorm2d(192)),
            nn.MaxPool2d(kernel_size=(3, 3), stride=(1, 2)),
            *_conv_bn_relu(nn.Conv2d(192, 384, 3, padding=1), nn.BatchNorm2d(384)),
            *_conv_bn_relu(nn.Conv2d(384, 256, 3, padding=1), nn.BatchNorm2d(256)),
            *_conv_bn_relu(nn.Conv2d(256, 256, 3, padding=1), nn.BatchNorm2d(256)),
            nn.MaxPool2d(kernel_size=(3, 3), stride=(2, 2)),
            *_conv_bn_relu(nn.Conv2d(256, 512, kernel_size=(5, 4)), nn.BatchNorm2d(512)),
        )
        self.netfcaud = nn.Sequential(nn.Linear(512, 512), nn.BatchNorm1d(512), nn.ReLU(),
                                      nn.Linear(512, embedding_dim))
        self.netfclip = nn.Sequential(nn.Linear(512, 512), nn.BatchNorm1d(512), nn.ReLU(),
                                      nn.Linear(512, embedding_dim))
        self.netcnnlip = nn.Sequential(
            *_conv_bn_relu(nn.Conv3d(3, 96, kernel_size=(5, 7, 7), stride=(1, 2, 2)), nn.BatchNorm3d(96)),
            nn.MaxPool3d(kernel_size=(1, 3, 3), stride=(1, 2, 2)),
            *_conv_bn_relu(nn.Conv3d(96, 256, kernel_size=(1, 5, 5), stride=(1, 2, 2), padding=(0, 1, 1)),
                           nn.BatchNorm3d(256)),
            nn.MaxPool3d(kernel_size=(1, 3, 3), stride=(1, 2, 2), padding=(0, 1, 1)),
            *_conv_bn_relu(nn.Conv3d(256, 256, kernel_size=(1, 3, 3), padding=(0, 1, 1)), nn.BatchNorm3d(256)),
            *_conv_bn_relu(nn.Conv3d(256, 256, kernel_size=(1, 3, 3), padding=(0, 1, 1)), nn.BatchNorm3d(256)),
            *_conv_bn_relu(nn.Conv3d(256, 256, kernel_size=(1, 3, 3), padding=(0, 1, 1)), nn.BatchNorm3d(256)),
            nn.MaxPool3d(kernel_size=(1, 3, 3), stride=(1, 2, 2)),
            *_conv_bn_relu(nn.Conv3d(256, 512, kernel_size=(1, 6, 6)), nn.BatchNorm3d(512)),
        )

    def forward_aud(self, x):
        return self.netfcaud(self.netcnnaud(x).flatten(1))

    def forward_lip(self, x):
        return self.netfclip(self.netcnnlip(x).flatten(1))


def load_syncnet_v2(path, device):
    """SyncNetV2 with the official weights, in eval mode on `device`."""
    state = load_checkpoint_file(path)
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    cleaned = {}
    for key, value in state.items():
        for prefix in ("module.", "__S__."):
            if key.startswith(prefix):
                key = key[len(prefix):]
        cleaned[key] = value
    net = SyncNetV2()
    expected = {k for k in net.state_dict() if not k.endswith("num_batches_tracked")}
    missing = expected - set(cleaned)
    if missing:
        raise CheckpointError(f"{path} is not a syncnet_v2 state dict ({len(missing)} keys missing, "
                              f"e.g. {sorted(missing)[0]}): use syncnet_v2.model from syncnet_python")
    net.load_state_dict(cleaned, strict=False)
    return net.to(device).eval()


@torch.no_grad()
def syncnet_v2_embeddings(net, frames_bgr, wav, device, batch_size=20):
    """Paired (video, audio) embeddings of every official window: two float tensors (W, 1024)."""
    n_frames = min(len(frames_bgr), len(wav) // SAMPLES_PER_FRAME)
    last = n_frames - 5
    if last < 1:
        raise ValueError(f"need at least 6 frames of video and audio for LSE, got {n_frames}")
    video = np.stack([cv2.resize(f, (INPUT_SIZE, INPUT_SIZE), interpolation=cv2.INTER_AREA
                                 if f.shape[0] > INPUT_SIZE else cv2.INTER_LINEAR)
                      for f in frames_bgr[:n_frames]])
    video = np.ascontiguousarray(video.transpose(3, 0, 1, 2)).astype(np.float32)   # (3, T, 224, 224), BGR 0..255
    mfcc = torch.from_numpy(syncnet_mfcc(wav))                    # (13, T_mfcc)
    video_emb, audio_emb = [], []
    for start in range(0, last, batch_size):
        windows = range(start, min(last, start + batch_size))
        lips = torch.from_numpy(np.stack([video[:, i:i + 5] for i in windows])).to(device)
        audio = torch.stack([mfcc[None, :, 4 * i:4 * i + 20] for i in windows]).to(device)
        video_emb.append(net.forward_lip(lips).float().cpu())
        audio_emb.append(net.forward_aud(audio).float().cpu())
    return torch.cat(video_emb), torch.cat(audio_emb)
