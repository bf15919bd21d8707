"""Silence handling (silence_mode): which output frames are speech, and what silent frames show.

    generate  every frame is generated from its mel chunk (the default; published numbers)
    rest      frames whose mel window holds no speech get the mel of digital silence (-4 everywhere,
              utils.audio.melspectrogram of zeros), so noise, breath and hum in pauses do not move
              the lips and every pause gives the same mouth
    source    stretches of at least silence_min_ms of non-speech frames show the source frames
              unchanged; the switch crossfades over silence_fade_frames frames inside the stretch

A voice-activity detector (silero-vad, its model ships in the wheel; without it an energy
threshold, logged once) labels 512-sample windows (32 ms at 16 kHz) from the start of the audio.
Output frame k is speech when any window lying wholly inside the samples its mel chunk depends on
(columns s..s+15, samples 200 s - 400 .. 200 (s + 15) + 399, s as in utils.audio.mel_chunk) is
speech. Those samples are exactly the ones a stream needs before it emits frame k, so a stream
decides with no extra latency and equals batch inference (FrameVad serves both).
"""
import logging

import numpy as np
import torch

from talkingface.utils.audio import HOP_SIZE, MAX_ABS_VALUE, MEL_CHUNK_LENGTH, SAMPLE_RATE, WIN_SIZE, mel_start

logger = logging.getLogger(__name__)

MODES = ("generate", "rest", "source")
WINDOW = 512                # VAD window (samples at 16 kHz): silero-vad's fixed size
SPEECH_THRESHOLD = 0.5      # silero-vad speech probability
ENERGY_DBFS = -40.0         # the fallback: a window louder than this (RMS, dBFS) is speech
FRAME_SAMPLES = 640         # one 25 fps frame at 16 kHz
_warned = False


def silent_chunk(n_mels=80):
    """The mel chunk of digital silence (melspectrogram of zeros is -4 everywhere)."""
    return np.full((n_mels, MEL_CHUNK_LENGTH), -MAX_ABS_VALUE, np.float32)


def _silero():
    """A fresh silero-vad model (it keeps state: one per run or stream), or None when not installed."""
    global _warned
    try:
        from silero_vad import load_silero_vad  # optional: only silence_mode rest/source loads it
    except ImportError:
        if not _warned:
            logger.info("silero-vad is not installed: silence_mode decides silence by an energy threshold "
                        "(%.0f dBFS); pip install silero-vad for a voice-activity detector", ENERGY_DBFS)
            _warned = True
        return None
    return load_silero_vad()


class FrameVad:
    """Incremental voice-activity detection: push() 16 kHz float samples as they come; speech(k, ...)
    says whether output frame k is speech once its samples are in (batch: push everything once)."""

    def __init__(self, detector="auto"):
        self.model = _silero() if detector == "auto" else None
        self._pending = np.zeros(0, np.float32)
        self.windows = []  # one bool per finished 512-sample window from the start of the audio

    def push(self, samples):
        samples = np.asarray(samples, np.float32)
        if samples.size:
            self._pending = np.concatenate([self._pending, samples])
        n = len(self._pending) // WINDOW
        if n == 0:
            return
        blocks = self._pending[:n * WINDOW].reshape(n, WINDOW)
        self._pending = self._pending[n * WINDOW:]
        if self.model is None:
            rms = np.sqrt(np.mean(blocks.astype(np.float64) ** 2, axis=1))
            self.windows.extend((20 * np.log10(rms + 1e-12) > ENERGY_DBFS).tolist())
            return
        with torch.no_grad():
            for block in blocks:  # stateful: one window after the other, as a stream sees them
                speech = float(self.model(torch.from_numpy(block.copy()), SAMPLE_RATE)) > SPEECH_THRESHOLD
                self.windows.append(speech)

    def speech(self, k, total_columns=None):
        """Frame k's decision: any speech window wholly inside its mel chunk's samples.
        total_columns: the mel's length when the audio has ended (the last chunks are right-aligned)."""
        s = mel_start(k)
        if total_columns is not None:
            s = max(0, min(s, total_columns - MEL_CHUNK_LENGTH))
        first = max(0, s * HOP_SIZE - WIN_SIZE // 2)
        end = (s + MEL_CHUNK_LENGTH - 1) * HOP_SIZE + WIN_SIZE // 2  # exclusive
        w0, w1 = -(-first // WINDOW), min(len(self.windows), end // WINDOW)
        if w1 <= w0:  # no whole window (a very short audio): generate
            return True
        return any(self.windows[w0:w1])


def speech_frames(wav_16k, n_frames, detector="auto"):
    """bool (n_frames,): True where output frame k (25 fps) is speech (see the module doc)."""
    wav = np.asarray(wav_16k, np.float32)
    vad = FrameVad(detector)
    vad.push(wav)
    total = len(wav) // HOP_SIZE + 1
    return np.array([vad.speech(k, total) for k in range(n_frames)], bool)


def rest_chunks(chunks, speech):
    """`chunks` (mel chunks of the frames) with those of non-speech frames replaced by silence."""
    return [chunk if is_speech else silent_chunk(chunk.shape[0]) for chunk, is_speech in zip(chunks, speech)]


def ramp(distance, fade_frames):
    """A crossfade's weight `distance` frames (>= 1) into the faded side of a switch: 1/(f+1),
    2/(f+1), ... up to 1 from the (fade_frames + 1)th frame on (fade_frames 0: 1 at once)."""
    return min(1.0, distance / (fade_frames + 1))


def source_weights(speech, min_frames, fade_frames):
    """float32 (n,): weight of the generated face per frame (1 = generated, 0 = the source frame).
    Non-speech runs of at least `min_frames` frames get 0, ramping up to the speech on either side
    over `fade_frames` frames inside the run (d frames from speech: 1 - d / (fade_frames + 1))."""
    speech = np.asarray(speech, bool)
    weights = np.ones(len(speech), np.float32)
    k, n = 0, len(speech)
    while k < n:
        if speech[k]:
            k += 1
            continue
        end = k
        while end < n and not speech[end]:
            end += 1
        if end - k >= min_frames:
            for i in range(k, end):
                # distance to the nearest speech frame (the ends of the audio are not speech)
                d = min(i - k + 1 if k > 0 else n, end - i if end < n else n)
                weights[i] = 1.0 - ramp(d, fade_frames)
        k = end
    return weights


def min_frames(silence_min_ms):
    """Frames (25 fps) a silent stretch must last for silence_mode=source."""
    return max(1, -(-int(silence_min_ms) // 40))


def blend(generated, source, weight):
    """weight * generated + (1 - weight) * source, uint8."""
    out = weight * generated.astype(np.float32) + (1.0 - weight) * source.astype(np.float32)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)
