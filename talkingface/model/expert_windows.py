"""SyncScore's embeddings: the project's own trained lip-sync expert (SyncNet_color, 128 px).

The expert sees what it was trained on (docs/architecture.md: frame k's mel chunk):
- video window i = lower halves (rows 64..127) of frames i..i+4 resized to 128x128, BGR float
  [0,1], stacked frame after frame on the channels -> (N, 15, 64, 128);
- audio window i = the HyperLips mel chunk of frame i, `mel_chunk(melspectrogram(wav), i)` -> (N,1,80,16);
- windows i = 0 .. n-5 with n = min(frames, whole frames of audio);
- frames mirrored horizontally when the expert was trained on mirrored frames (`syncnet_hflip`).
Its embeddings are L2-normalised, so the Euclidean distance used here is sqrt(2 - 2 cos): the
same ordering as the cosine its training loss uses, on the scale (0..sqrt 2) of a distance.
"""

import cv2
import numpy as np
import torch

from talkingface.model.inputs import EXPERT_SIZE
from talkingface.utils.audio import SAMPLES_PER_FRAME, mel_chunk, melspectrogram


def expert_windows(frames_bgr, hflip=False):
    """(n-4, 15, 64, 128) float32 lower-half windows of uint8 BGR frames (any square size)."""
    halves = np.stack([cv2.resize(f, (EXPERT_SIZE, EXPERT_SIZE), interpolation=cv2.INTER_AREA
                                  if f.shape[0] > EXPERT_SIZE else cv2.INTER_LINEAR)[EXPERT_SIZE // 2:]
                       for f in frames_bgr]).astype(np.float32) / 255.0
    if hflip:
        halves = halves[:, :, ::-1]
    halves = np.ascontiguousarray(halves.transpose(0, 3, 1, 2))     # (n, 3, 64, 128)
    # numpy copies: torch.stack of strided views is far slower on small CPUs
    windows = np.stack([halves[i:i + 5].reshape(15, EXPERT_SIZE // 2, EXPERT_SIZE) for i in range(len(halves) - 4)])
    return torch.from_numpy(windows)


@torch.no_grad()
def expert_embeddings(net, frames_bgr, wav, device, batch_size=32, hflip=False):
    """Paired (video, audio) embeddings of every 5-frame window: two float tensors (W, 512)."""
    n_frames = min(len(frames_bgr), len(wav) // SAMPLES_PER_FRAME)
    if n_frames < 5:
        raise ValueError(f"need at least 5 frames of video and audio for SyncScore, got {n_frames}")
    faces = expert_windows(frames_bgr[:n_frames], hflip)
    mel = melspectrogram(np.asarray(wav, dtype=np.float32))
    mels = torch.from_numpy(np.stack([mel_chunk(mel, i) for i in range(len(faces))]))[:, None]
    video_emb, audio_emb = [], []
    for start in range(0, len(faces), batch_size):
        audio, video = net(mels[start:start + batch_size].to(device), faces[start:start + batch_size].to(device))
        video_emb.append(video.float().cpu())
        audio_emb.append(audio.float().cpu())
    return torch.cat(video_emb), torch.cat(audio_emb)
