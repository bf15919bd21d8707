"""The embedded demo dataset: short deterministic talking-face clips made from a real photograph.

The face is scikit-image's `astronaut` photograph (it ships inside the scikit-image wheel, so
nothing downloads). Each clip gets its own speech-like audio, synthesised in numpy (syllables at
~4-6 Hz with pauses, a voiced source whose pitch wanders between ~100 and ~220 Hz shaped by
vowel formants, a little noise). The mouth opens with the audio's loudness: the lower lip and jaw
are stretched downwards and the gap is darkened in proportion to each frame's RMS, so the
audio -> mouth mapping is learnable. Clips are written in the raw MEAD layout
(`<speaker>/front/<emotion>/level_1/NNN.mp4`) and then go through the normal preprocessing.
"""
import json
import logging
import os
import tempfile

import cv2
import numpy as np
from skimage import data as skimage_data

from talkingface.utils.audio import FPS, SAMPLE_RATE, save_wav
from talkingface.utils.video import VideoWriter

logger = logging.getLogger(__name__)

DEMO_VERSION = 1
MARKER_NAME = ".demo_complete"
BASE_SEED = 20231010

# Geometry of the astronaut photograph (512x512), measured once with mediapipe face mesh:
# the line between the lips (midway between landmarks 13 and 14) and the mouth centre.
LIP_LINE_Y = 146.0
MOUTH_CENTER_X = 223.5
MOUTH_HALF_WIDTH = 22.0
SMILE_RISE = 6.0  # the mouth corners (landmarks 61, 291) sit ~6 px above the centre
# Source square shown in a frame (x0, y0, side): the head and shoulders, face ~45% of the frame.
CROP_BOX = (115.0, 30.0, 220.0)
# Mouth warp shape, in source pixels: jaw drop at full loudness, horizontal and vertical extent.
MAX_OPENING = 12.0
MOUTH_SIGMA_X = 13.0
JAW_DECAY_Y = 22.0
INNER_MOUTH_BGR = np.array([28.0, 18.0, 40.0], dtype=np.float32)

# Vowel formants (F1, F2, F3) in Hz and bandwidths: enough to make the spectrum speech-like.
VOWEL_FORMANTS = np.array([
    (730, 1090, 2440),   # a
    (270, 2290, 3010),   # i
    (300, 870, 2240),    # u
    (530, 1840, 2480),   # e
    (570, 840, 2410),    # o
], dtype=np.float64)
FORMANT_BANDWIDTHS = np.array([90.0, 110.0, 170.0])


def _moving_average(x, width):
    if width <= 1:
        return x
    kernel = np.ones(width) / width
    padded = np.pad(x, (width // 2, width - 1 - width // 2), mode="edge")
    return np.convolve(padded, kernel, mode="valid")


def synthesize_speech(seconds, rng, sr=SAMPLE_RATE):
    """Speech-like mono float32 audio: syllables of formant-shaped harmonics, pauses, noise."""
    n = int(round(seconds * sr))
    t = np.arange(n) / sr
    envelope = np.zeros(n)
    vowel = np.zeros(n, dtype=np.int64)
    accent = np.zeros(n)
    onsets = []
    pos = rng.uniform(0.08, 0.2)
    while pos < seconds - 0.1:
        length = rng.uniform(0.12, 0.26)
        start, stop = int(pos * sr), min(n, int((pos + length) * sr))
        u = np.linspace(0.0, 1.0, stop - start, endpoint=False)
        envelope[start:stop] = rng.uniform(0.55, 1.0) * np.sin(np.pi * u) ** 0.7
        vowel[start:stop] = rng.integers(len(VOWEL_FORMANTS))
        accent[start:stop] = rng.uniform(-0.08, 0.15)
        onsets.append(start)
        pos += length + rng.uniform(0.02, 0.08)
        if rng.random() < 0.2:  # a pause between phrases
            pos += rng.uniform(0.25, 0.5)

    # Pitch: a per-clip register, slow intonation, declination and per-syllable accents.
    f0_base = rng.uniform(110.0, 190.0)
    phase0 = rng.uniform(0, 2 * np.pi)
    f0 = f0_base * (1.0 + 0.12 * np.sin(2 * np.pi * 0.7 * t + phase0) - 0.08 * t / seconds
                    + _moving_average(accent, int(0.04 * sr)))
    f0 = np.clip(f0, 95.0, 225.0)
    formants = _moving_average(VOWEL_FORMANTS[vowel][:, 0], int(0.03 * sr)), \
        _moving_average(VOWEL_FORMANTS[vowel][:, 1], int(0.03 * sr)), \
        _moving_average(VOWEL_FORMANTS[vowel][:, 2], int(0.03 * sr))

    # Additive voiced source: each harmonic weighted by the formant resonances at its frequency.
    phase = 2 * np.pi * np.cumsum(f0) / sr
    voiced = np.zeros(n)
    for h in range(1, int(7600 // f0.min()) + 1):
        freq = h * f0
        gain = sum(1.0 / (1.0 + ((freq - f) / bw) ** 2) for f, bw in zip(formants, FORMANT_BANDWIDTHS))
        gain = gain * (freq < 7600) / h ** 0.6
        voiced += gain * np.sin(h * phase)
    voiced /= np.abs(voiced).max() + 1e-9

    # Consonant-like noise bursts at syllable onsets and a low noise floor.
    noise = rng.standard_normal(n)
    bursts = np.zeros(n)
    for start in onsets:
        stop = min(n, start + int(0.03 * sr))
        bursts[start:stop] = np.hanning(stop - start) * rng.uniform(0.05, 0.15)
    hiss = np.diff(noise, prepend=0.0) * bursts
    wav = 0.6 * envelope * voiced + hiss + 0.003 * noise
    return (0.7 * wav / (np.abs(wav).max() + 1e-9)).astype(np.float32)


def frame_openness(wav, n_frames, fps=FPS, sr=SAMPLE_RATE):
    """Mouth opening in [0, 1] per video frame from the RMS loudness of that frame's audio."""
    hop = sr / fps
    openness = np.zeros(n_frames, dtype=np.float32)
    for k in range(n_frames):
        chunk = wav[int(round(k * hop)):int(round((k + 1) * hop))]
        rms = float(np.sqrt(np.mean(chunk.astype(np.float64) ** 2))) if chunk.size else 0.0
        db = 20.0 * np.log10(rms + 1e-9)
        openness[k] = np.clip((db + 38.0) / 24.0, 0.0, 1.0)  # -38 dBFS shut .. -14 dBFS wide open
    return openness


def render_frame(photo, openness, offset, size):
    """One frame: the photo's head crop, shifted by `offset` (x, y source px), mouth opened."""
    x0, y0, side = CROP_BOX
    scale = side / size
    grid = np.arange(size, dtype=np.float32)
    src_x = x0 + offset[0] + (grid[None, :] + 0.5) * scale - 0.5
    src_y = y0 + offset[1] + (grid[:, None] + 0.5) * scale - 0.5
    src_x = np.broadcast_to(src_x, (size, size))
    src_y = np.broadcast_to(src_y, (size, size))
    # Below the lip line everything is pulled down by a jaw drop that fades towards the chin.
    # The lip line follows the smile: a parabola through the centre and the corners.
    lip_y = LIP_LINE_Y - SMILE_RISE * ((src_x - MOUTH_CENTER_X) / MOUTH_HALF_WIDTH) ** 2
    below = src_y >= lip_y
    drop = (MAX_OPENING * openness * np.exp(-0.5 * ((src_x - MOUTH_CENTER_X) / MOUTH_SIGMA_X) ** 2)
            * np.exp(-np.maximum(src_y - lip_y, 0.0) / JAW_DECAY_Y) * below)
    sample_y = (src_y - drop).astype(np.float32)
    frame = cv2.remap(photo, np.ascontiguousarray(src_x, dtype=np.float32), sample_y,
                      interpolation=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    # Pixels that now sample from above the lip line form the open gap: darken them.
    # Tiny drops at the mouth corners would draw a hairline, hence the 1 px dead zone.
    gap = np.clip(lip_y - sample_y - 1.0, 0.0, 1.0) * below
    gap *= np.clip(MOUTH_HALF_WIDTH - np.abs(src_x - MOUTH_CENTER_X), 0.0, 1.0)
    alpha = (0.85 * gap)[..., None]
    return (frame * (1.0 - alpha) + INNER_MOUTH_BGR * alpha).round().astype(np.uint8)


def astronaut_bgr():
    return np.ascontiguousarray(skimage_data.astronaut()[:, :, ::-1]).astype(np.float32)


def demo_clip_paths(data_root, num_clips):
    """Raw MEAD-style layout: two emotions of one speaker, numbered clips."""
    paths = []
    for i in range(num_clips):
        emotion = "neutral" if i % 2 == 0 else "happy"
        paths.append(os.path.join(data_root, "M000", "front", emotion, "level_1", f"{i // 2 + 1:03d}.mp4"))
    return paths


def make_demo_clip(path, index, seconds, size, photo=None):
    """Write one deterministic demo clip (mp4, 25 fps, aac audio) to `path`."""
    rng = np.random.default_rng(BASE_SEED + index)
    photo = astronaut_bgr() if photo is None else photo
    n_frames = int(round(seconds * FPS))
    wav = synthesize_speech(n_frames / FPS, rng)
    openness = frame_openness(wav, n_frames)
    # Small head motion: a per-clip framing offset plus a slow sub-pixel sway.
    base = rng.uniform(-6.0, 6.0, size=2)
    amp = rng.uniform(0.5, 2.0, size=2)
    freq = rng.uniform(0.2, 0.6, size=2)
    phase = rng.uniform(0, 2 * np.pi, size=2)
    with tempfile.TemporaryDirectory(prefix="demo_audio_") as tmp:
        wav_path = os.path.join(tmp, "speech.wav")
        save_wav(wav_path, wav, SAMPLE_RATE)
        with VideoWriter(path, FPS, audio_path=wav_path) as writer:
            for k in range(n_frames):
                t = k / FPS
                offset = base + amp * np.sin(2 * np.pi * freq * t + phase)
                writer.write(render_frame(photo, float(openness[k]), offset, size))


def _settings(num_clips, seconds, size):
    return {"version": DEMO_VERSION, "num_clips": int(num_clips), "seconds": float(seconds), "size": int(size)}


def demo_is_current(data_root, num_clips=8, seconds=3.0, size=256):
    """True when `data_root` holds a finished demo set made with these settings."""
    marker = os.path.join(data_root, MARKER_NAME)
    try:
        with open(marker, encoding="utf-8") as f:
            finished = json.load(f) == _settings(num_clips, seconds, size)
    except (OSError, ValueError):
        return False
    return finished and all(os.path.isfile(p) for p in demo_clip_paths(data_root, num_clips))


def ensure_demo_dataset(data_root, num_clips=8, seconds=3.0, size=256):
    """Generate the demo clips under `data_root` unless a finished set with these settings exists.

    Returns the list of clip paths. Deterministic: the same settings give the same files. The
    marker file is written last, so an interrupted generation is simply redone.
    """
    paths = demo_clip_paths(data_root, num_clips)
    if demo_is_current(data_root, num_clips, seconds, size):
        return paths
    marker = os.path.join(data_root, MARKER_NAME)
    if os.path.exists(marker):
        os.remove(marker)
    # Clips of an earlier, larger demo set would otherwise stay in the dataset.
    speaker_dir = os.path.join(data_root, "M000")
    for dirpath, _, files in os.walk(speaker_dir):
        for name in files:
            if name.endswith(".mp4") and os.path.join(dirpath, name) not in paths:
                os.remove(os.path.join(dirpath, name))
    logger.info("generating the demo dataset (%d clips of %.1f s) in %s", num_clips, seconds, data_root)
    photo = astronaut_bgr()
    for index, path in enumerate(paths):
        make_demo_clip(path, index, seconds, size, photo)
    tmp_marker = marker + ".tmp"
    with open(tmp_marker, "w", encoding="utf-8") as f:
        json.dump(_settings(num_clips, seconds, size), f)
    os.replace(tmp_marker, marker)
    return paths
