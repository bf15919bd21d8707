"""`run_inference(config)`: lip-sync a video (or a photo) to an audio track (--mode=infer).

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
1. face tracking: one face box per 25 fps frame (detected, padded 10 px at the bottom, short gaps
   interpolated, smoothed over `box_smooth_window` frames, as in preprocessing); only the boxes are kept;
2. generation: the video is decoded again (ping-pong via a temporary on-disk frame cache, see
   source.py), frames go through the networks in batches of `infer_batch_size` and are pasted back
   (render.py, paste.py); a reader thread decodes ahead and a writer thread feeds the encoder, each
   through a queue of at most two batches. Frames without a face pass through unchanged.
"""
import dataclasses
import logging
import os
import queue
import threading
import time

import numpy as np
import torch
from tqdm import tqdm

from talkingface.inference.networks import load_inference_networks
from talkingface.inference.render import LipSyncRenderer
from talkingface.inference.source import FrameSource
from talkingface.inference.tracking import track_faces
from talkingface.inference.features import chunked_melspectrogram
from talkingface.utils.audio import load_audio, n_video_frames_for_audio
from talkingface.utils.distributed import is_main_process
from talkingface.utils.errors import ConfigError, InputError
from talkingface.utils.video import VideoWriter

logger = logging.getLogger(__name__)

FPS = 25
_DONE = object()


@dataclasses.dataclass
class InferenceResult:
    output: str            # the written video
    n_frames: int          # output frames (25 fps)
    n_source_frames: int   # frames of the input on the 25 fps timeline (1 for a still image)
    boxes: np.ndarray      # (n_source_frames, 4) face box per source frame, NaN = passed through
    seconds: float         # wall time of the whole run
    mesh_misses: int       # frames where the face mesh failed and a fallback was used


class _Failure:
    def __init__(self, exc):
        self.exc = exc


class Prefetcher:
    """Iterates `iterable` in a daemon thread, at most `depth` items ahead of the consumer."""

    def __init__(self, iterable, depth=2):
        self._queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(iterable,), daemon=True)
        self._thread.start()

    def _put(self, item):
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                pass
        return False

    def _run(self, iterable):
        try:
            for item in iterable:
                if not self._put(item):
                    return
            self._put(_DONE)
        except BaseException as exc:  # handed to the consumer
            self._put(_Failure(exc))

    def __iter__(self):
        while True:
            item = self._queue.get()
            if item is _DONE:
                return
            if isinstance(item, _Failure):
                raise item.exc
            yield item

    def close(self):
        self._stop.set()
        self._thread.join()


class BackgroundWriter:
    """Feeds lists of frames to a VideoWriter from a daemon thread (at most `depth` lists queued);
    an encoder error is raised in the caller at the next put() or at finish()."""

    def __init__(self, writer, depth=2):
        self.writer = writer
        self.error = None
        self._queue = queue.Queue(maxsize=depth)
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        while True:
            frames = self._queue.get()
            if frames is _DONE:
                return
            if self.error is None:
                try:
                    for frame in frames:
                        self.writer.write(frame)
                except BaseException as exc:  # keep draining so put() never blocks
                    self.error = exc

    def put(self, frames):
        if self.error is not None:
            raise self.error
        self._queue.put(frames)

    def abandon(self):
        """Stop after an error elsewhere: drop what is queued, keep the first error (if any) quiet."""
        self.error = self.error or RuntimeError("abandoned")
        self._queue.put(_DONE)
        self._thread.join()

    def finish(self):
        """Wait until every queued frame is written."""
        self._queue.put(_DONE)
        self._thread.join()
        if self.error is not None:
            raise self.error


def _required_path(config, key, what):
    value = config[key]
    if not value:
        raise ConfigError(f"--mode=infer needs --{key}=PATH ({what})")
    if not os.path.isfile(str(value)):
        raise InputError(f"{what} not found: {value}")
    return str(value)


def output_path(config, video, audio):
    """--output, or results/<dataset>/<model>/<video>__<audio>.mp4 when not given."""
    if config["output"]:
        return str(config["output"])
    stem = lambda p: os.path.splitext(os.path.basename(p))[0]
    return os.path.join(config["results_dir"], f"{stem(video)}__{stem(audio)}.mp4")


def use_bf16(setting, device):
    """infer_bf16: true/false, or auto = on for CPUs with native bfloat16 support."""
    if isinstance(setting, bool):
        return setting
    if str(setting).lower() != "auto":
        raise ConfigError(f"infer_bf16 must be true, false or auto (got {setting})")
    if device.type != "cpu":
        return False
    try:
        return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def run_inference(config):
    """Write config["output"]: config["video"] lip-synced to config["audio"]. Returns InferenceResult."""
    started = time.perf_counter()
    video = _required_path(config, "video", "video or image to lip-sync")
    audio = _required_path(config, "audio", "driving audio (wav, mp3 or a video with sound)")
    output = output_path(config, video, audio)
    device = config["device"]
    batch_size = int(config["infer_batch_size"])
    if batch_size < 1:
        raise ConfigError(f"infer_batch_size must be >= 1 (got {batch_size})")

    source = FrameSource(video, cache_limit_mb=config["infer_frame_cache_mb"])
    wav = load_audio(audio)
    n_out = n_video_frames_for_audio(len(wav), fps=FPS)
    mel = chunked_melspectrogram(wav)  # no 0.5 GB STFT buffer for a 10-minute track
    del wav
    base, hr = load_inference_networks(config, device)
    logger.info("%s: %dx%d, %d frames at %.3g fps; audio %s: %.2f s -> %d frames at 25 fps",
                video, source.width, source.height, source.info.n_frames, source.info.fps, audio,
                n_out / FPS, n_out)

    with source:
        boxes = track_faces(source.scan(max_frames=n_out), source.width, source.height,
                            pad_bottom=config["face_pad_bottom"], max_gap=config["infer_max_gap"],
                            window=config["box_smooth_window"], detect_max_side=config["detect_max_side"],
                            total=None if source.is_still else min(n_out, round(source.info.duration * FPS)))
        n_src = source.n_frames
        if n_out > n_src > 1:
            logger.info("the audio is longer than the video (%d > %d frames): the video loops ping-pong",
                        n_out, n_src)
        renderer = LipSyncRenderer(base, hr, mel, boxes, (source.width, source.height), device,
                                   batch_size=batch_size, feather=config["infer_mask_feather"],
                                   landmark_window=config["infer_landmark_window"],
                                   bf16=use_bf16(config["infer_bf16"], device), cache_masks=n_src == 1)
        try:
            _generate(source, renderer, n_out, batch_size, output, audio, config["infer_x264_preset"])
        finally:
            renderer.close()
    seconds = time.perf_counter() - started
    logger.info("wrote %s: %d frames (%.2f s) in %.1f s", output, n_out, n_out / FPS, seconds)
    if renderer.mesh_misses:
        logger.info("face mesh missed %d times; fallbacks were used there", renderer.mesh_misses)
    return InferenceResult(output, n_out, n_src, boxes, seconds, renderer.mesh_misses)


def _generate(source, renderer, n_out, batch_size, output, audio, preset):
    """Decode (thread) -> render batches (this thread) -> encode (thread), with bounded queues."""

    def batches():
        batch = []
        for k, (src, frame) in enumerate(source.play(n_out)):
            batch.append((k, src, frame))
            if len(batch) == batch_size:
                yield batch
                batch = []
        if batch:
            yield batch

    reader = Prefetcher(batches(), depth=2)
    try:
        with VideoWriter(output, FPS, audio_path=audio, preset=preset) as writer:
            encoder = BackgroundWriter(writer, depth=2)
            try:
                with tqdm(total=n_out, desc="lip-sync", unit="frame", disable=not is_main_process()) as bar:
                    for batch in reader:
                        encoder.put(renderer.render(batch))
                        bar.update(len(batch))
            except BaseException:
                encoder.abandon()  # then VideoWriter aborts: no partial output file
                raise
            encoder.finish()
    finally:
        reader.close()
