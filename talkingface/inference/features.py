"""The driving audio's mel spectrogram, computed in chunks so long audio needs no large buffers.

utils.audio.melspectrogram on a 10-minute track would hold ~0.5 GB of float64 STFT at once; here it
runs on overlapping pieces of the waveform. Every STFT frame depends only on its own 800-sample
window (and pre-emphasis on one sample before it), so cutting the waveform at multiples of the hop
with enough context on both sides gives the same columns as one call on the whole track.
"""
import numpy as np

from talkingface.utils.audio import HOP_SIZE, SAMPLE_RATE, WIN_SIZE, melspectrogram
from talkingface.utils.errors import InputError

# Shortest driving audio: two 25 fps frames. Shorter audio makes a video of at most one frame, and
# ffmpeg's -shortest then drops the audio track (or, under 0.04 s, the video track) of the output
# (tests/integration/test_inference_faults.py::test_audio_shorter_than_two_frames_is_refused shows both).
MIN_AUDIO_SECONDS = 2 / 25


def check_audio_duration(n_samples, name):
    """One-line InputError when `n_samples` of 16 kHz audio are too short to drive a video."""
    if n_samples < MIN_AUDIO_SECONDS * SAMPLE_RATE:
        raise InputError(f"the audio {name} lasts {n_samples / SAMPLE_RATE:.3f} s: give at least "
                         f"{MIN_AUDIO_SECONDS:.2f} s of audio (two video frames at 25 fps)")

# Context kept before the first wanted frame: its half window plus one hop for pre-emphasis,
# rounded up to whole hops so column j of a piece is global column (start / HOP_SIZE) + j.
_LEFT = WIN_SIZE // 2 + HOP_SIZE


def chunked_melspectrogram(wav, chunk_frames=4800):
    """Same (80, len(wav)//200 + 1) float32 as melspectrogram(wav), computed `chunk_frames` mel
    columns (60 s by default) at a time."""
    wav = np.asarray(wav)
    n_cols = len(wav) // HOP_SIZE + 1
    if n_cols <= chunk_frames:
        return melspectrogram(wav)
    out = None
    for first in range(0, n_cols, chunk_frames):
        last = min(first + chunk_frames, n_cols)  # columns first..last-1
        start = max(0, first * HOP_SIZE - _LEFT)
        stop = min(len(wav), (last - 1) * HOP_SIZE + WIN_SIZE // 2)
        piece = melspectrogram(wav[start:stop])
        offset = first - start // HOP_SIZE
        columns = piece[:, offset:offset + (last - first)]
        if out is None:
            out = np.empty((piece.shape[0], n_cols), np.float32)
        out[:, first:last] = columns
    return out
