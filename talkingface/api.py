"""Python API: load a HyperLips model once, then lip-sync any number of videos, photos or frames.

    from talkingface import LipSync

    lipsync = LipSync("HyperLipsBase", dataset="demo")         # latest checkpoints/demo/HyperLipsBase/
    lipsync("face.mp4", "speech.wav", "out.mp4")               # -> "out.mp4"
    frames = lipsync(bgr_frames, samples, sample_rate=16000)   # in memory -> list of BGR frames, 25 fps
    stream = lipsync.stream("face.mp4", infer_batch_size=1)    # audio in chunks -> frames as they are ready
    frames = stream.push(chunk) ...; frames = stream.close()
    live = lipsync.live("face.mp4"); live.push(chunk); live.get()  # real time: bounded latency, drops
    results = lipsync.batch([{"video": "a.mp4", "audio": "a.wav", "output": "o.mp4"}, ...])  # a result per job

It is the pipeline of `--mode=infer` (talkingface.inference.pipeline.LipSyncer), which the web app
uses too. Errors a user can fix are one-line TalkingFaceError subclasses (utils/errors.py).
"""
import os

from talkingface.config import Config
from talkingface.inference.arrays import ArraySource
from talkingface.inference.batch import jobs_from_rows, run_jobs
from talkingface.inference.pipeline import FPS, LipSyncer
from talkingface.model import output_size
from talkingface.utils.audio import SAMPLE_RATE, as_mono_16k


class LipSync:
    """A loaded model: HyperLipsBase, or HyperLipsHR (its HR decoder on top of a Base model).

    model: "HyperLipsBase" | "HyperLipsHR"; checkpoint: its weights (ours or official), default the
    latest under checkpoints/<dataset>/<model>/; base_checkpoint: HyperLipsHR's Base weights,
    default the latest Base checkpoint of the dataset; device: "auto" (CUDA when present) | "cpu" |
    "cuda:N"; settings: any inference key of talkingface/properties/*.yaml (infer_batch_size,
    infer_bf16, ...), the defaults of every run.
    """

    def __init__(self, model="HyperLipsBase", checkpoint=None, base_checkpoint=None, dataset="MEAD",
                 device="auto", config_files=None, **settings):
        config = Config(model=model, dataset=dataset, config_files=config_files, config_dict=dict(
            settings, mode="infer", device=device, checkpoint=checkpoint, base_checkpoint=base_checkpoint))
        self._syncer = LipSyncer(config).load()

    @classmethod
    def from_config(cls, config):
        """A LipSync for a Config already built (the entry point's, the app's)."""
        self = cls.__new__(cls)
        self._syncer = LipSyncer(config).load()
        return self

    @property
    def config(self):
        return self._syncer.config

    @property
    def device(self):
        return self._syncer.device

    @property
    def output_size(self):
        """Side in pixels of the generated face: 128 for Base, the HR decoder's 128/256/512."""
        return output_size(self._syncer.hr or self._syncer.base)

    def run(self, video, audio, output=None, fps=FPS, sample_rate=SAMPLE_RATE, progress=None, **settings):
        """Lip-sync and return the InferenceResult (output path or frames, face boxes, timing).

        video: a video or image file, or frames in memory (a list of BGR uint8 (H, W, 3) arrays or
        one (N, H, W, 3) array) shown at `fps`; audio: an audio file (or a video with sound), or
        samples at `sample_rate` Hz (float in [-1, 1] or integer PCM, mono or (n, channels):
        utils.audio.as_mono_16k); output: the .mp4 to write (with the audio), or None to
        get the frames back (25 fps, as long as the audio); progress(stage, done, total): called as
        faces are tracked ("faces") and frames generated ("lip-sync"); settings: this run's
        inference settings (infer_batch_size, infer_bf16, ...).
        """
        if not isinstance(video, (str, os.PathLike)):
            video = ArraySource(video, fps=fps)
        if not isinstance(audio, (str, os.PathLike)):
            audio = as_mono_16k(audio, sample_rate)
        return self._syncer.run(video, audio, None if output is None else str(output), progress=progress, **settings)

    def stream(self, video, fps=FPS, profiler=None, **settings):
        """A streaming session over the avatar `video` (a video or image file, or frames in memory
        shown at `fps`): `push(samples)` takes audio as it comes (16 kHz, float in [-1, 1]
        or integer PCM, chunks of any length) and returns the frames (BGR uint8, 25 fps) whose audio has
        arrived; `close()` ends the audio and returns the last frames. The frames equal run()'s on
        the same audio and settings. infer_batch_size=1 gives the lowest latency; avatar_cache="on"
        skips the avatar's preparation for a video seen before. See talkingface/inference/stream.py.
        """
        if not isinstance(video, (str, os.PathLike)):
            video = ArraySource(video, fps=fps)
        return self._syncer.stream(video if not isinstance(video, os.PathLike) else str(video),
                                   profiler=profiler, **settings)

    def live(self, avatar, max_latency_ms=None, **settings):
        """A live session over `avatar` (what stream() takes), its stream running in a thread of its
        own: `push(samples)` from any thread as the audio is recorded, `get(timeout)` the next
        LiveFrame (image, sample: its time counted in samples received), `stats()` (fps, latency,
        dropped frames), `end()` (the audio is over: the last frames follow) or `close()` (stop now,
        free the stream). When rendering falls behind, the audio waiting is skipped in whole
        frames up to the newest one whose audio is in (they count as dropped; the stream restarts
        there), so that no frame leaves more than max_latency_ms (default: live_max_latency_ms)
        plus its own render time after its time.
        Defaults infer_batch_size=1 and avatar_cache="on" (a prepared avatar starts at once).
        See talkingface/live.py, the web app's Live tab.
        """
        from talkingface.live import LIVE_STREAM_SETTINGS, LiveSession

        settings = dict(LIVE_STREAM_SETTINGS, **settings)
        if max_latency_ms is None:
            max_latency_ms = self.config["live_max_latency_ms"]
        return LiveSession(lambda: self.stream(avatar, **settings), max_latency_ms)

    def batch(self, rows, report=None, progress=True):
        """Run many jobs with this model, as --mode=infer --jobs=CSV does (talkingface/inference/batch.py).

        rows: dicts {video, audio, output, **settings} (files; settings: that row's inference
        settings); the rows are checked as a whole first (ConfigError: unknown keys, two rows with
        one output, an output that is an input). A row whose output exists is skipped; a row that
        fails is recorded and the others still run. report: a JSON file to write the results to,
        or None; progress: a progress bar over the rows. Returns one dict per row, in row order:
        row (1 = the first), status ("done" | "skipped" | "failed"), error (its one line, or
        None), video, audio, output, settings, seconds, worker (the rank that ran it).
        """
        return run_jobs(self._syncer, jobs_from_rows(rows), None if report is None else str(report), progress)

    def __call__(self, video, audio, output=None, **kwargs):
        """run(), returning the output path when `output` is given, else the list of frames."""
        result = self.run(video, audio, output, **kwargs)
        return result.output if output is not None else result.frames

