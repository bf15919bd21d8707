"""Lip-sync a video (or a photo) to an audio track: `LipSyncer(config).load()` holds the networks,
`.run(video, audio, output)` runs any number of times (the Python API talkingface.api, the web
app and --mode=infer, talkingface/quick_start/infer_mode.py, use it).

    python run_talkingface.py --model=HyperLipsBase|HyperLipsHR --mode=infer \\
        --video=V --audio=A --output=O.mp4 [--checkpoint=...] [--base_checkpoint=...]

Timeline. Everything runs at 25 fps: the input video is resampled by timestamp
(utils.video.iter_frames(fps=25)), whatever its own rate (25, 30, 29.97, 60, ...). The output has
n = n_video_frames_for_audio(len(audio)) = floor(seconds * 25) frames (at least 1) and carries the
driving audio, so it lasts as long as the audio. Output frame k is generated from the mel chunk
mel[:, s:s+16] with s = int(80*k/25), the last 16 columns when that would run past the end
(utils.audio.mel_chunk: the one convention of training and inference). Audio longer than the
video loops the video ping-pong (0..n-1, n-2..1, 0..n-1, ...); shorter audio cuts the video.
A still image (utils.video.is_image) is one frame repeated for the audio's length.

Two streaming passes over the video, with bounded memory whatever its length:
1. face tracking: one face box per 25 fps frame (detected on every `infer_detect_every`-th frame,
   padded 10 px at the bottom, the frames between and short gaps interpolated, smoothed over
   `box_smooth_window` frames, as in preprocessing; tracking.py); only the boxes are kept;
2. generation: the video is decoded again (ping-pong via a temporary on-disk frame cache, see
   source.py), frames go through the networks in batches of `infer_batch_size` and are pasted back
   (render.py, paste.py); a reader thread decodes ahead (and makes the next batch's face meshes)
   and a writer thread feeds the encoder, each through a queue of at most two batches. Frames
   without a face pass through unchanged; the `face_fade_frames` frames with a face on either side
   of them crossfade from the lip-synced frame to the source frame (render.face_weights, by source
   frame), so the mouth does not jump.
What does not depend on the audio (crops, masks, face-encoder features: the avatar, avatar.py) is
computed once per source frame and reused by the ping-pong passes; with avatar_cache=on it is
computed for the whole video once (a third decoding pass, before generation) and kept on disk, so a
later run with the same video and another audio skips pass 1 and that work (LipSyncer.prepare).
With the cache on, the boxes are those of the whole video, so for audio shorter than the video
the last box_smooth_window // 2 frames may differ from a run without it (their smoothing then sees
the frames after them); with audio at least as long as the video both are identical.
LipSyncer.stream() runs the same renderer on audio that arrives in chunks (stream.py); run(...,
profiler=profile.StageProfiler()) times each stage.

The stages, each in its module, in the order run() calls them: settings.py (InferSettings, built
once per run), source.py (decoding), tracking.py (face boxes), prepare.py + avatar.py (the
avatar, cached or not), render.py (crop -> model.generate.generate_faces -> paste.py), encode.py
(the reader/writer threads and the encoder).
"""
import concurrent.futures
import dataclasses
import logging
import os
import time

import numpy as np

from talkingface.inference.encode import FrameCollector, muxed_audio, write_frames
from talkingface.inference.features import check_audio_duration, chunked_melspectrogram
from talkingface.inference.int8 import int8_network
from talkingface.inference.networks import load_inference_networks
from talkingface.inference.prepare import prepare_renderer, weights_digest
from talkingface.inference.profile import OFF
from talkingface.inference.settings import InferSettings
from talkingface.inference.silence import min_frames, source_weights, speech_frames
from talkingface.inference.source import FrameSource
from talkingface.inference.stream import LipSyncStream, check_stream_settings
from talkingface.utils.audio import FPS, as_mono_16k, audio_source_for, load_audio, n_video_frames_for_audio
from talkingface.utils.errors import ConfigError
from talkingface.utils.video import VideoWriter, check_output_path

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class InferenceResult:
    output: str            # the written video
    n_frames: int          # output frames (25 fps)
    n_source_frames: int   # frames of the input on the 25 fps timeline (1 for a still image)
    boxes: np.ndarray      # (n_source_frames, 4) face box per source frame, NaN = passed through
    seconds: float         # wall time of the whole run
    mesh_misses: int       # frames where the face mesh failed and a fallback was used
    frames: list = None    # the output frames (BGR uint8) when no output file was asked for


class LipSyncer:
    """The networks of config["model"] (checkpoints as in networks.py), loaded once by load(),
    then run() any number of times. --mode=infer (quick_start/infer_mode.py), the Python API
    (talkingface.api.LipSync) and the web app all run through it."""

    def __init__(self, config, networks=None):
        self.config = config
        self.device = config["device"]
        # networks: (base, hr or None) already on the device, e.g. a trainer's at the end of training
        self.base, self.hr = networks if networks is not None else (None, None)
        self._int8_base = None  # the Base with its generator in int8, made on first use (infer_int8)

    def load(self):
        """Load the networks (once); a missing or wrong checkpoint is a one-line CheckpointError."""
        if self.base is None:
            self.base, self.hr = load_inference_networks(self.config, self.device)
        return self

    def settings(self, **overrides):
        """The InferSettings of a run with `overrides` (one-line ConfigError for a bad one)."""
        return InferSettings.from_config(self.config, **overrides)

    def networks(self, settings):
        """(the Base network a run uses: as loaded, or its int8 copy, quantized once, hr or None)."""
        if not settings.int8:
            return self.base, self.hr
        if self._int8_base is None:
            self._int8_base = int8_network(self.base, self.config["engine_cache_dir"])
        return self._int8_base, self.hr

    def base_digest(self):
        """weights_digest of the Base weights as they are now (the avatar cache key)."""
        return weights_digest(self.base)

    def run(self, video, audio, output=None, progress=None, profiler=None, **overrides):
        """Lip-sync `video` to `audio`; returns an InferenceResult.

        video: path of a video or image, or a FrameSource-like object (e.g. frames in memory,
        talkingface.inference.arrays.ArraySource); audio: path of the driving audio, or mono
        float32 samples at 16 kHz; output: the .mp4 to write, or None to return the frames
        (result.frames, BGR uint8); progress(stage, done, total) is called as frames are done
        (stage "faces", then "lip-sync"); profiler: a profile.StageProfiler to fill with per-stage
        times (default: none taken); overrides: inference settings of this run only
        (infer_batch_size, infer_bf16, avatar_cache, ...).
        """
        started = time.perf_counter()
        profiler = profiler or OFF
        settings = self.settings(**overrides)
        if settings.reference == "half_clip" and getattr(video, "frame_at", None) is None:
            raise ConfigError("reference_frame=half_clip needs the frames in memory (the Python API with "
                              "frames, or --mode=evaluate); for a video file use first or same")
        if output is not None:  # a bad output path fails now, not after every frame was rendered
            check_output_path(output, inputs=[p for p in (video, audio) if isinstance(p, (str, os.PathLike))])

        if isinstance(video, (str, os.PathLike)):
            source = FrameSource(str(video), cache_limit_mb=settings["infer_frame_cache_mb"])
        else:
            source = video
        if isinstance(audio, (str, os.PathLike)):
            audio = audio_source_for(audio)  # a video without sound: its same-named .wav/.mp3/... beside it
            audio_name, wav = audio, load_audio(audio)
        else:
            audio_name, wav = "(samples)", as_mono_16k(audio)
        check_audio_duration(len(wav), audio_name)
        n_out = n_video_frames_for_audio(len(wav), fps=FPS)
        # The mel spectrogram (no 0.5 GB STFT buffer for a 10-minute track) is computed in a thread
        # while the faces are tracked: neither needs the other.
        mel_pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="mel")
        mel = mel_pool.submit(_timed, profiler, "mel", chunked_melspectrogram, wav)
        silence = settings["silence_mode"]
        # silence_mode rest/source: the voice-activity decision per output frame (silence.py; timed as "mel")
        speech = None if silence == "generate" else mel_pool.submit(_timed, profiler, "mel", speech_frames, wav, n_out)
        mel_pool.shutdown(wait=False)
        self.load()
        logger.info("%s: %dx%d, %d frames at %.3g fps; audio %s: %.2f s -> %d frames at 25 fps",
                    source.path, source.width, source.height, source.info.n_frames, source.info.fps,
                    audio_name, n_out / FPS, n_out)

        with source, muxed_audio(audio, wav if output is not None else None, output) as audio_path:
            renderer = prepare_renderer(self.networks(settings), source, settings, n_out, self.base_digest,
                                        progress=progress, profiler=profiler)
            renderer.mel = mel.result()
            if silence == "rest":
                renderer.speech = speech.result()
            elif silence == "source":
                renderer.weights = source_weights(speech.result(), min_frames(settings["silence_min_ms"]),
                                                  int(settings["silence_fade_frames"]))
            n_src, boxes = source.n_frames, renderer.boxes
            if output is None:
                writer = FrameCollector()
            else:
                writer = VideoWriter(output, FPS, audio_path=audio_path, preset=settings["infer_x264_preset"])
            try:
                write_frames(source, renderer, n_out, settings.batch_size, writer, progress, profiler)
            finally:
                renderer.close()
                if renderer.store is not None:
                    renderer.store.close()
        seconds = time.perf_counter() - started
        if profiler is not OFF:
            profiler.frames, profiler.wall = n_out, seconds
        logger.info("%s: %d frames (%.2f s) in %.1f s", f"wrote {output}" if output else "lip-synced",
                    n_out, n_out / FPS, seconds)
        if renderer.mesh_misses:
            logger.info("face mesh missed %d times; fallbacks were used there", renderer.mesh_misses)
        frames = writer.frames if output is None else None
        return InferenceResult(output, n_out, n_src, boxes, seconds, renderer.mesh_misses, frames)

    def stream(self, video, profiler=None, **overrides):
        """A streaming session over `video` (path, or frames in memory as an ArraySource): push
        audio chunks, get frames as their audio arrives (talkingface.inference.stream). The
        avatar is the whole video, prepared here (from the avatar cache when on)."""
        settings = self.settings(**overrides)
        check_stream_settings(settings, video)
        self.load()
        profiler = profiler or OFF
        if isinstance(video, (str, os.PathLike)):
            video = FrameSource(str(video), cache_limit_mb=settings["infer_frame_cache_mb"])
        try:
            renderer = prepare_renderer(self.networks(settings), video, settings, 0, self.base_digest,
                                        profiler=profiler, whole_video=True)
        except BaseException:
            video.close()
            raise
        return LipSyncStream(renderer, video, settings, profiler)


def _timed(profiler, stage, function, *args):
    with profiler.stage(stage):
        return function(*args)
