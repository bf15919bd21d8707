"""Lip-sync a video (or a photo) to an audio track: `LipSyncer(config).load()` holds the networks,
`.run(video, audio, output)` runs any number of times (the Python API talkingface.api and the web
app use it); `run_inference(config)` is --mode=infer, one run of it.

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
   through a queue of at most two batches. Frames without a face pass through unchanged; the
   `face_fade_frames` frames with a face on either side of them crossfade from the lip-synced
   frame to the source frame (render.face_weights, by source frame), so the mouth does not jump.
What does not depend on the audio (crops, masks, face-encoder features: the avatar, avatar.py) is
computed once per source frame and reused by the ping-pong passes; with avatar_cache=on it is
computed for the whole video once (a third decoding pass, before generation) and kept on disk, so a
later run with the same video and another audio skips pass 1 and that work (LipSyncer.prepare).
With the cache on, the boxes are those of the whole video, so for audio shorter than the video
the last box_smooth_window // 2 frames may differ from a run without it (their smoothing then sees
the frames after them); with audio at least as long as the video both are identical.
LipSyncer.stream() runs the same renderer on audio that arrives in chunks (stream.py); run(...,
profiler=profile.StageProfiler()) times each stage.
"""
import concurrent.futures
import contextlib
import dataclasses
import hashlib
import logging
import os
import queue
import threading
import time

import cv2
import numpy as np
import torch
from tqdm import tqdm

from talkingface.config.schema import check
from talkingface.inference.avatar import AvatarCache, AvatarStore, cache_key
from talkingface.inference.networks import load_inference_networks
from talkingface.inference.profile import OFF
from talkingface.inference.render import ENCODER_BATCH, LipSyncRenderer
from talkingface.inference.silence import min_frames, source_weights, speech_frames
from talkingface.inference.source import FrameSource
from talkingface.inference.stream import LipSyncStream
from talkingface.inference.features import check_audio_duration, chunked_melspectrogram
from talkingface.inference.int8 import quantize_full_resolution
from talkingface.utils.audio import (FPS, as_mono_16k, audio_source_for, load_audio, n_video_frames_for_audio,
                                     save_wav)
from talkingface.utils.distributed import is_main_process
from talkingface.utils.errors import ConfigError, InputError
from talkingface.utils.tracking import TRACKER_KEYS, track_faces
from talkingface.utils.files import remove_stale_temp_files, temp_name
from talkingface.utils.fingerprint import file_sha256
from talkingface.utils.runtime import use_bf16
from talkingface.utils.video import VideoWriter, check_output_path

logger = logging.getLogger(__name__)

_DONE = object()


@dataclasses.dataclass
class InferenceResult:
    output: str            # the written video
    n_frames: int          # output frames (25 fps)
    n_source_frames: int   # frames of the input on the 25 fps timeline (1 for a still image)
    boxes: np.ndarray      # (n_source_frames, 4) face box per source frame, NaN = passed through
    seconds: float         # wall time of the whole run
    mesh_misses: int       # frames where the face mesh failed and a fallback was used
    frames: list = None    # the output frames (BGR uint8) when no output file was asked for


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


class _Settings:
    """The config's inference settings with per-run overrides (only keys the config defines)."""

    def __init__(self, config, overrides):
        for key in overrides:
            if key not in config:
                raise ConfigError(f"unknown inference setting '{key}'")
        self.config = config
        self.overrides = {key: check(key, value, config[key], config["model"]) for key, value in overrides.items()}

    def __getitem__(self, key):
        return self.overrides[key] if key in self.overrides else self.config[key]


class FrameCollector:
    """A VideoWriter's interface that keeps the frames in memory (run(..., output=None))."""

    def __init__(self):
        self.frames = []

    def write(self, frame):
        self.frames.append(frame)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        pass


class LipSyncer:
    """The networks of config["model"] (checkpoints as in networks.py), loaded once by load(),
    then run() any number of times. --mode=infer (run_inference), the Python API
    (talkingface.api.LipSync) and the web app all run through it."""

    def __init__(self, config, networks=None):
        self.config = config
        self.device = config["device"]
        # networks: (base, hr or None) already on the device, e.g. a trainer's at the end of training
        self.base, self.hr = networks if networks is not None else (None, None)
        self._int8_base = None  # the Base with its 128x128 part in int8, made on first use (infer_int8)

    def load(self):
        """Load the networks (once); a missing or wrong checkpoint is a one-line CheckpointError."""
        if self.base is None:
            self.base, self.hr = load_inference_networks(self.config, self.device)
        return self

    def _generator(self, int8):
        """The Base network a run uses: as loaded, or its int8 copy (quantized once per LipSyncer)."""
        if not int8:
            return self.base
        if self._int8_base is None:
            logger.info("infer_int8: quantizing the Base generator's 128x128 part (once per loaded model)")
            self._int8_base = quantize_full_resolution(self.base)
        return self._int8_base

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
        settings = _Settings(self.config, overrides)
        device = self.device
        batch_size = int(settings["infer_batch_size"])
        if batch_size < 1:
            raise ConfigError(f"infer_batch_size must be >= 1 (got {batch_size})")
        bf16, _ = precision(settings, device)
        reference = settings["reference_frame"]
        frame_at = getattr(video, "frame_at", None)  # random access: frames in memory
        if reference == "half_clip" and frame_at is None:
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

        with source, _muxed_audio(audio, wav if output is not None else None, output) as audio_path:
            renderer = self.prepare(source, settings, n_out, bf16, reference, frame_at,
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
                _generate(source, renderer, n_out, batch_size, writer, progress, profiler)
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
        audio chunks, get frames as their audio arrives (talkingface.inference.stream)."""
        settings = _Settings(self.config, overrides)
        if int(settings["infer_batch_size"]) < 1:
            raise ConfigError(f"infer_batch_size must be >= 1 (got {settings['infer_batch_size']})")
        self.load()
        return LipSyncStream(self, video, settings, precision(settings, self.device)[0], profiler)

    def prepare(self, source, settings, n_out, bf16, reference="first", frame_at=None, mel=None,
                progress=None, profiler=OFF, whole_video=False):
        """The face boxes and a LipSyncRenderer whose avatar (per source frame, see avatar.py) is
        ready or filled as frames come: from the avatar cache when on and valid, else tracked.

        Without the cache, only the frames the output shows are tracked (the first n_out) and the
        avatar is kept in a temporary store when frames repeat (ping-pong, a still image). With
        it (or `whole_video`), the avatar is the whole video, prepared before generation starts."""
        mode = {False: "off", True: "on"}.get(settings["avatar_cache"], settings["avatar_cache"])
        path = getattr(source, "path", None) if isinstance(source, FrameSource) else None
        use_cache = mode != "off" and path is not None
        whole_video = whole_video or use_cache
        cache = key = None
        if use_cache:
            with profiler.stage("avatar_cache"):
                cache = AvatarCache(settings["avatar_cache_dir"], settings["avatar_cache_mb"])
                key = cache_key(file_sha256(path), self._avatar_settings(settings, bf16, reference))
                hit = cache.load(key) if mode == "on" else None
            if hit is not None:
                meta, store = hit
                logger.info("avatar cache hit: %s (%d frames)", store.path, store.n)
                boxes = np.array([[np.nan] * 4 if b is None else b for b in meta["boxes"]], np.float32)
                source.n_frames = store.n
                source.width, source.height = meta["size"]
                if store.n == 1:  # a still image: play() repeats its one decoded frame
                    for _ in source.scan():
                        pass
                return self._renderer(boxes, source, settings, bf16, reference, frame_at, mel, store, profiler)
        total = None if source.is_still else round(source.info.duration * FPS)
        if not whole_video:
            total = None if total is None else min(n_out, total)
        with profiler.stage("tracking"):
            decoded = profiler.seconds["decode"] if profiler is not OFF else 0.0
            frames = profiler.timed_iter(source.scan(max_frames=None if whole_video else n_out), "decode")
            boxes = track_faces(_reporting(frames, progress, "faces", total), source.width, source.height,
                                total=total, **{arg: settings[key] for key, arg in TRACKER_KEYS.items()})
        if profiler is not OFF:  # the decoding inside is counted as decode
            profiler.add("tracking", -(profiler.seconds["decode"] - decoded))
        n_src = source.n_frames
        if n_out > n_src > 1:
            logger.info("the audio is longer than the video (%d > %d frames): the video loops ping-pong",
                        n_out, n_src)
        if not whole_video:
            store = AvatarStore(n_src) if n_out > n_src else None  # frames repeat: keep their avatar
            return self._renderer(boxes, source, settings, bf16, reference, frame_at, mel, store, profiler)
        store = cache.new_store(key, n_src) if use_cache else AvatarStore(n_src)
        renderer = self._renderer(boxes, source, settings, bf16, reference, frame_at, mel, store, profiler)
        try:
            batch = []
            # keep=True: generation reads these frames back from the raw frame cache (2 decodes, not 3)
            for src, frame in profiler.timed_iter(source.play(n_src, keep=True), "decode"):
                batch.append((src, frame))
                if len(batch) == ENCODER_BATCH or src == n_src - 1:
                    renderer.prepare(batch)
                    batch = []
            if use_cache:
                meta = {"boxes": [None if not np.isfinite(b).all() else [float(v) for v in b] for b in boxes],
                        "video": path, "size": [source.width, source.height]}
                try:
                    with profiler.stage("avatar_cache"):
                        cache.save(key, store, meta)
                    logger.info("avatar cached: %s (%d frames)", store.path, n_src)
                except OSError as exc:  # a full disk: this run goes on, uncached
                    logger.warning("the avatar could not be cached in %s (%s)", cache.folder, exc.strerror or exc)
                    cache.discard(store)
        except BaseException:
            renderer.close()
            store.close()
            if use_cache:
                cache.discard(store)
            raise
        return renderer

    def _renderer(self, boxes, source, settings, bf16, reference, frame_at, mel, store, profiler):
        return LipSyncRenderer(self._generator(settings["infer_int8"]), self.hr, mel, boxes, (source.width, source.height), self.device,
                               batch_size=int(settings["infer_batch_size"]), feather=settings["infer_mask_feather"],
                               landmark_window=settings["infer_landmark_window"], bf16=bf16,
                               reference=reference, frame_at=frame_at, store=store, profiler=profiler,
                               face_fade_frames=settings["face_fade_frames"])

    def _avatar_settings(self, settings, bf16, reference):
        """Everything besides the video that shapes a cached avatar (its cache key)."""
        # lazy: mediapipe takes ~1 s to import; utils.face loads it when the face mesh first runs,
        # and only its version is read here
        import mediapipe

        digest = hashlib.sha256()
        for name, tensor in sorted(self.base.state_dict().items()):
            digest.update(name.encode())
            tensor = tensor.detach().cpu().contiguous(memory_format=torch.contiguous_format)
            digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
        return {"tracker": {key: settings[key] for key in TRACKER_KEYS}, "feather": settings["infer_mask_feather"],
                "reference": reference, "base_weights": digest.hexdigest(), "bf16": bool(bf16),
                "device": self.device.type, "encoder_batch": ENCODER_BATCH, "torch": torch.__version__,
                "mediapipe": mediapipe.__version__, "opencv": cv2.__version__}


def precision(settings, device):
    """(bf16, int8) of a run with `settings` (a Config or a run's settings) on `device`: infer_int8
    runs the rest of the generator in fp32, so it turns infer_bf16=auto off and refuses
    infer_bf16=true; int8 runs on the CPU only."""
    int8 = bool(settings["infer_int8"])
    if int8 and device.type != "cpu":
        raise ConfigError(f"infer_int8 runs on the CPU only (device is {device}): set infer_int8=false "
                          "or --device=cpu")
    if int8 and settings["infer_bf16"] is True:
        raise ConfigError("infer_int8 and infer_bf16=true exclude each other: set one of them to false")
    return (False if int8 else use_bf16(settings["infer_bf16"], device)), int8


def _timed(profiler, stage, function, *args):
    with profiler.stage(stage):
        return function(*args)


@contextlib.contextmanager
def _muxed_audio(audio, wav, output):
    """The audio file the output video carries: `audio` itself, or (samples given and a file
    written) a temporary wav of them beside the output, deleted afterwards."""
    if wav is None or isinstance(audio, (str, os.PathLike)):
        yield None if wav is None else str(audio)
        return
    folder = os.path.dirname(os.path.abspath(output))
    os.makedirs(folder, exist_ok=True)
    remove_stale_temp_files(folder)  # what a killed run (kill -9) left beside its output
    path = str(temp_name(os.path.abspath(output), ".wav"))
    try:
        save_wav(path, wav)
        yield path
    finally:
        if os.path.exists(path):
            os.remove(path)


def _reporting(frames, progress, stage, total):
    """`frames` unchanged, calling progress(stage, done, total) every 25 frames."""
    done = 0
    for frame in frames:
        yield frame
        done += 1
        if progress is not None and done % FPS == 0:
            progress(stage, done, total)


def run_inference(config):
    """Write config["output"]: config["video"] lip-synced to config["audio"]. Returns InferenceResult."""
    video = _required_path(config, "video", "video or image to lip-sync")
    audio = _required_path(config, "audio", "driving audio (wav, mp3 or a video with sound)")
    return LipSyncer(config).run(video, audio, output_path(config, video, audio))


def _generate(source, renderer, n_out, batch_size, writer, progress=None, profiler=OFF):
    """Decode (thread) -> render batches (this thread) -> encode (thread), with bounded queues."""

    def batches():
        batch = []
        for k, (src, frame) in enumerate(profiler.timed_iter(source.play(n_out), "decode")):
            batch.append((k, src, frame))
            if len(batch) == batch_size:
                yield batch
                batch = []
        if batch:
            yield batch

    reader = Prefetcher(batches(), depth=2)
    if profiler is not OFF:
        writer = _TimedWriter(writer, profiler)
    done = 0
    try:
        with writer:
            encoder = BackgroundWriter(writer, depth=2)
            try:
                with tqdm(total=n_out, desc="lip-sync", unit="frame", disable=not is_main_process()) as bar:
                    for batch in profiler.timed_iter(reader, "wait"):
                        frames = renderer.render(batch)
                        with profiler.stage("wait"):
                            encoder.put(frames)
                        bar.update(len(batch))
                        done += len(batch)
                        if progress is not None:
                            progress("lip-sync", done, n_out)
            except BaseException:
                encoder.abandon()  # then VideoWriter aborts: no partial output file
                raise
            encoder.finish()
    finally:
        reader.close()


class _TimedWriter:
    """A writer whose write() time counts as the "encode" stage."""

    def __init__(self, writer, profiler):
        self.writer, self.profiler = writer, profiler
        self.frames = getattr(writer, "frames", None)

    def write(self, frame):
        with self.profiler.stage("encode"):
            self.writer.write(frame)

    def __enter__(self):
        self.writer.__enter__()
        return self

    def __exit__(self, *exc):
        with self.profiler.stage("encode"):  # the encoder's flush
            return self.writer.__exit__(*exc)
