"""Streaming lip-sync: audio arrives in chunks, frames leave as soon as their audio is there.

    stream = LipSync("HyperLipsBase", ...).stream("avatar.mp4")   # prepares the avatar (whole video)
    for chunk in audio_chunks:            # 16 kHz, float in [-1, 1] or integer PCM, any length
        for frame in stream.push(chunk):  # BGR uint8 frames, 25 fps, rendered as iterated
            show(frame)
    for frame in stream.close():          # the end of the audio: the last frames
        show(frame)

--mode=stream (quick_start/stream_mode.py): raw PCM s16le, 16 kHz, mono on stdin (--audio=-) or from
a file, and YUV4MPEG2 (y4m: 4:2:0, limited-range BT.601, 25 fps, the video's size) to stdout
(--output=-) or to a .y4m file, which `ffplay -` and `ffmpeg -i -` read directly.

When a frame is ready. Output frame k shows mel columns s..s+15 with s = int(80 k / 25)
(utils.audio.mel_chunk). Mel column j is the STFT frame centred on sample 200 j (window 800,
centred, so it covers samples 200 j - 400 .. 200 j + 399; pre-emphasis reaches one sample further
back): it is final once samples_needed = 200 (j + 2) have arrived. So frame k needs
    samples_needed(k) = 200 * (int(80 k / 25) + 17) samples = k/25 s + 0.17 s (+ < 12.5 ms)
(utils.audio.samples_needed),
and is emitted by the push() that completes them. Frames are rendered in the groups of
infer_batch_size (0..b-1, b..2b-1, ...) that batch inference uses, so a group leaves when its last
frame's audio is there: infer_batch_size=1 gives the lowest latency. At close() the audio's
length is known: the output has n_video_frames_for_audio(samples) frames, and the last ones use
right-aligned mel windows (mel_chunk) over the mel of the whole audio's end, with its padding.
Frame count and pixels equal LipSyncer.run on the same audio with the same settings (tests).

The avatar is the whole video (its frames loop ping-pong as in batch inference); with
avatar_cache=on it comes from the cache, so a stream starts without face tracking or encoding.
Latency: from the arrival of the last sample a frame needs to the frame's emission. The boxes of
the whole video are known once it is prepared, so the crossfade beside frames without a face
(face_fade_frames, by source frame: render.face_weights) adds no latency and equals batch inference.

silence_mode=rest decides each frame from the voice-activity detector's windows inside the samples
of that frame's mel window (silence.py), which have all arrived when the frame is due: no added
latency, and the frames equal batch inference's. silence_mode=source is batch only (a one-line
ConfigError here): a pause shows the source frames only once it has lasted silence_min_ms, so a
stream would have to hold every frame back by silence_min_ms (+ the crossfade) to know that.
"""
import logging
import sys

import cv2
import numpy as np

from talkingface.inference.features import check_audio_duration
from talkingface.inference.profile import OFF
from talkingface.inference.silence import FrameVad, silent_chunk
from talkingface.utils.audio import (HOP_SIZE, MEL_CHUNK_LENGTH, WIN_SIZE, as_mono_16k, mel_chunk,
                                     mel_start, melspectrogram, n_video_frames_for_audio)
from talkingface.utils.errors import ConfigError, InputError

logger = logging.getLogger(__name__)

# Samples before a mel column's centre that its value depends on (half window + pre-emphasis),
# rounded up to whole hops so that a piece starting there maps column for column.
_LEFT = WIN_SIZE // 2 + HOP_SIZE
# Mel columns computed in one call (10 s): the float64 STFT of a long push (minutes of audio
# when a stream fell behind) holds only this many frames at a time.
MEL_SLICE_COLUMNS = 800
_PLAY_FOREVER = sys.maxsize  # the avatar loops until the audio ends


def check_stream_settings(settings, video):
    """What a stream cannot do, as one-line ConfigErrors before anything is prepared."""
    if settings["silence_mode"] == "source":
        raise ConfigError("silence_mode=source runs in batch inference only (a stream would be late by "
                          "silence_min_ms): stream with silence_mode=rest or generate")
    if settings.reference == "half_clip" and getattr(video, "frame_at", None) is None:
        raise ConfigError("reference_frame=half_clip needs the frames in memory; use first or same")


class LipSyncStream:
    """One stream over one avatar video: `renderer`, a LipSyncRenderer over `source` whose avatar
    is the whole video, prepared (prepare.prepare_renderer(..., whole_video=True)); the stream owns
    both from then on. Made by LipSyncer.stream / talkingface.api.LipSync.stream."""

    def __init__(self, renderer, source, settings, profiler=None):
        self.profiler = profiler or OFF
        self.batch_size = settings.batch_size
        self.source = source
        self.renderer = renderer
        try:
            self._frames = iter(source.play(_PLAY_FOREVER))
            self.renderer.warm_up()
            melspectrogram(np.zeros(WIN_SIZE, np.float32))  # loads the mel code before the first chunk
        except BaseException:
            self._release()
            raise
        self.width, self.height = source.width, source.height
        # audio kept from sample self._start on (the context of the next mel columns)
        self._audio, self._start, self._n_samples = np.zeros(0, np.float32), 0, 0
        # final mel columns self._col0 .. self._col0 + self._mel.shape[1] - 1
        self._mel, self._col0 = np.zeros((80, 0), np.float32), 0
        self._next = 0  # the next output frame
        self._vad = FrameVad() if settings["silence_mode"] == "rest" else None
        self.closed = False

    @property
    def n_samples(self):
        """Samples pushed so far."""
        return self._n_samples

    @property
    def frames_emitted(self):
        return self._next

    def _final_columns(self):
        return self._col0 + self._mel.shape[1]

    def _add_columns(self, end):
        """Mel columns up to `end` (exclusive), from the audio kept; at the end of the stream
        (`end` None) every remaining column, with the STFT's end padding. A long piece (a stream
        that fell behind) is done MEL_SLICE_COLUMNS at a time: the same columns, a bounded peak."""
        last = self._n_samples // HOP_SIZE + 1 if end is None else end
        while last - self._final_columns() > MEL_SLICE_COLUMNS:
            self._add_slice(self._final_columns() + MEL_SLICE_COLUMNS)
        self._add_slice(end)

    def _add_slice(self, end):
        """_add_columns in one melspectrogram call."""
        first = self._final_columns()
        stop = self._n_samples if end is None else (end - 1) * HOP_SIZE + WIN_SIZE // 2
        if end is not None and end <= first:
            return
        start = max(0, first * HOP_SIZE - _LEFT)
        piece = self._audio[start - self._start:stop - self._start]
        columns = melspectrogram(piece)[:, first - start // HOP_SIZE:]
        if end is not None:
            columns = columns[:, :end - first]
        self._mel = np.concatenate([self._mel, columns], axis=1)

    def _chunk(self, k, total_columns=None):
        if total_columns is None:  # before the end: the window is never right-aligned
            s = mel_start(k)
            return self._mel[:, s - self._col0:s - self._col0 + MEL_CHUNK_LENGTH]
        if self._col0 == 0:
            return mel_chunk(self._mel, k)
        s = min(mel_start(k), total_columns - MEL_CHUNK_LENGTH)
        return self._mel[:, s - self._col0:s - self._col0 + MEL_CHUNK_LENGTH]

    def _render(self, ks, total_columns=None):
        items, chunks = [], []
        for k in ks:
            with self.profiler.stage("decode"):
                src, frame = next(self._frames)
            items.append((k, src, frame))
            if self._vad is not None and not self._vad.speech(k, total_columns):
                chunks.append(silent_chunk())
            else:
                chunks.append(self._chunk(k, total_columns))
        self._next = ks[-1] + 1
        return self.renderer.render(items, chunks)

    def _trim(self):
        """Forget audio and mel columns no later frame needs (keep 16 columns for the end and the
        context of the columns still to come)."""
        keep_col = max(0, min(mel_start(self._next), self._final_columns() - MEL_CHUNK_LENGTH))
        if keep_col > self._col0:
            self._mel = self._mel[:, keep_col - self._col0:]
            self._col0 = keep_col
        keep_sample = max(0, self._final_columns() * HOP_SIZE - _LEFT)
        if keep_sample > self._start:
            self._audio = self._audio[keep_sample - self._start:]
            self._start = keep_sample

    def push(self, samples):
        """Add audio (16 kHz, float in [-1, 1] or integer PCM, any length: utils.audio.as_mono_16k);
        returns an iterator over the frames (BGR uint8) that became ready, in order, each rendered
        as the iterator reaches it (a long chunk never holds many frames in memory). Consume it before the next push():
        frames it has not reached yet come from the next push() or close() instead."""
        if self.closed:
            raise InputError("push() after close(): start a new stream")
        samples = as_mono_16k(samples)
        if samples.size:
            self._audio = np.concatenate([self._audio, samples])
            self._n_samples += samples.size
            if self._vad is not None:
                with self.profiler.stage("mel"):
                    self._vad.push(samples)
            # column j is final once samples 0 .. 200 j + 399 are in: columns 0 .. ready_cols - 1
            ready_cols = max(0, (self._n_samples - WIN_SIZE // 2 + HOP_SIZE) // HOP_SIZE)
            with self.profiler.stage("mel"):
                self._add_columns(ready_cols)
            self._trim()
        return self._ready_frames()

    def _ready_frames(self):
        b = self.batch_size
        while not self.closed and mel_start(self._next + b - 1) + MEL_CHUNK_LENGTH <= self._final_columns():
            yield from self._render(list(range(self._next, self._next + b)))
            self._trim()

    def restart(self):
        """Begin a new audio timeline, the avatar going on where it is: the frames still waiting for
        audio are never rendered, and the next push() is the start of new audio whose first frame is
        the next one shown (as at the start of a stream). Live mode (talkingface/live.py) skips the
        audio that rendering could not keep up with this way."""
        self._audio, self._start, self._n_samples = np.zeros(0, np.float32), 0, 0
        self._mel, self._col0, self._next = np.zeros((80, 0), np.float32), 0, 0
        self._vad = FrameVad() if self._vad is not None else None

    def close(self):
        """End of the audio: the remaining frames (the output then has
        n_video_frames_for_audio(n_samples) frames in all); releases the stream."""
        if self.closed:
            return []
        try:
            n_out = n_video_frames_for_audio(self._n_samples)
            if self._next == 0:
                check_audio_duration(self._n_samples, "stream")
            with self.profiler.stage("mel"):
                self._add_columns(None)
            total_columns = self._n_samples // HOP_SIZE + 1
            out = []
            for first in range(self._next, n_out, self.batch_size):
                out += self._render(list(range(first, min(n_out, first + self.batch_size))), total_columns)
            return out
        finally:
            self._release()

    def _release(self):
        self.closed = True
        if self.renderer is not None:
            self.renderer.close()
            if self.renderer.store is not None:
                self.renderer.store.close()
        self.source.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._release()


def y4m_header(width, height, fps=25):
    """YUV4MPEG2 stream header: 4:2:0 with centred chroma, limited-range BT.601 (OpenCV's I420)."""
    return f"YUV4MPEG2 W{width} H{height} F{fps}:1 Ip A1:1 C420jpeg\n".encode()


def y4m_frame(frame):
    """One BGR uint8 frame (even width and height) as a y4m FRAME record."""
    return b"FRAME\n" + cv2.cvtColor(frame, cv2.COLOR_BGR2YUV_I420).tobytes()
