"""Audio-visual offset search shared by LSE (official syncnet_v2), SyncScore (our expert) and the
offset detection of preprocessing (data/dataprocess/av_offset.py).

The procedure is SyncNet's (syncnet_python `SyncNetInstance.evaluate` / `calc_pdist`): one video
embedding and one audio embedding per 5-frame window; for every audio offset in [-vshift, vshift]
the Euclidean distance between video window i and audio window i+offset, averaged over i. Then
    LSE-D (distance)   = min over offsets of the mean distance,
    LSE-C (confidence) = median over offsets - that min,
    offset             = vshift - argmin (the official sign: positive when the audio window that
                         matches video window i is window i - offset).
Both numbers are blind to a constant shift inside the search range (they take the best offset),
so `distance_at_zero` / `confidence_at_zero` (the same numbers at offset 0) are reported too:
they are what gets worse when the audio is out of sync.
"""
from dataclasses import dataclass

import numpy as np
import torch
from torch.nn import functional as F


@dataclass
class SyncResult:
    offset: int
    confidence: float
    min_distance: float
    distance_at_zero: float
    confidence_at_zero: float
    mean_distances: np.ndarray   # (2*vshift+1,), index k <-> audio offset k - vshift

    def as_dict(self, prefix):
        return {f"{prefix}-C": self.confidence, f"{prefix}-D": self.min_distance,
                f"{prefix}-offset": self.offset, f"{prefix}-D@0": self.distance_at_zero,
                f"{prefix}-C@0": self.confidence_at_zero}


def offset_distances(video_emb, audio_emb, vshift, zero_pad=True):
    """Mean distance for each audio offset -vshift..vshift: np.float64 (2*vshift+1,).

    zero_pad=True is the official behaviour (`calc_pdist`): windows shifted past either end are
    compared with an all-zero audio embedding. zero_pad=False averages only the real pairs, and an
    offset that pairs fewer than half of the windows gets NaN (too few pairs to be compared with
    the others); SyncScore uses it so clip edges do not bias the score.
    """
    video_emb = torch.as_tensor(video_emb, dtype=torch.float32)
    audio_emb = torch.as_tensor(audio_emb, dtype=torch.float32)
    n = min(len(video_emb), len(audio_emb))
    if n < 1:
        raise ValueError("no 5-frame window to compare (clip shorter than 5 frames)")
    video_emb, audio_emb = video_emb[:n], audio_emb[:n]
    padded = F.pad(audio_emb, (0, 0, vshift, vshift))
    valid = F.pad(torch.ones(n), (vshift, vshift)) > 0
    means = np.empty(2 * vshift + 1)
    min_pairs = (n + 1) // 2
    for k in range(2 * vshift + 1):
        dists = F.pairwise_distance(video_emb, padded[k:k + n])
        if zero_pad:
            means[k] = float(dists.mean())
        else:
            mask = valid[k:k + n]
            means[k] = float(dists[mask].mean()) if int(mask.sum()) >= min_pairs else np.nan
    return means


def sync_scores(video_emb, audio_emb, vshift=15, zero_pad=True):
    """Confidence, min distance and offset of paired window embeddings (see the module doc)."""
    means = offset_distances(video_emb, audio_emb, vshift, zero_pad=zero_pad)
    if zero_pad:
        # torch.median (the official call) returns the lower of the two middle values.
        median = float(torch.median(torch.from_numpy(means)))
    else:
        finite = np.sort(means[np.isfinite(means)])
        median = float(finite[(len(finite) - 1) // 2])
    best = int(np.nanargmin(means))
    min_distance = float(means[best])
    return SyncResult(offset=vshift - best, confidence=median - min_distance, min_distance=min_distance,
                      distance_at_zero=float(means[vshift]), confidence_at_zero=median - float(means[vshift]),
                      mean_distances=means)


def shift_audio(wav, frames, fps=25, sr=16000):
    """Delay (frames > 0) or advance (frames < 0) audio by whole video frames, keeping its length."""
    wav = np.asarray(wav, dtype=np.float32)
    samples = int(round(abs(frames) * sr / fps))
    if samples == 0:
        return wav.copy()
    silence = np.zeros(min(samples, len(wav)), dtype=np.float32)
    if frames > 0:
        return np.concatenate([silence, wav[:len(wav) - len(silence)]])
    return np.concatenate([wav[len(silence):], silence])
