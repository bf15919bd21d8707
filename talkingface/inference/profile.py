"""Per-stage timing of an inference run, off unless asked for (LipSyncer.run(..., profiler=...)).

Stages (the keys of StageProfiler.report()["ms_per_frame"]):
  decode         video decoding, both passes (reader thread during generation)
  tracking       face detection and box finalisation (decoding excluded)
  mel            the driving audio's mel spectrogram
  mesh_masks     128 px crops, face mesh of the source crops, paste masks
  face_encoder   HyperLipsBase's face encoder (+ LRASPP): depends on the frames only
  audio_decoder  audio encoder, hyper-convolutions and decoder of HyperLipsBase
  hr_mesh        HR: face mesh + sketches of the Base output
  hr_decoder     HR: the HR decoder network
  paste          mask resize and blending into the frame
  encode         handing frames to the x264 encoder (writer thread)
  avatar_cache   reading / validating / writing avatar cache entries
  wait           the main thread waiting for decoded frames or for room in the encoder queue
Stages in different threads overlap, so their sum can exceed the wall time. Each stage has its wall
time (ms_per_frame) and the CPU time of the thread that ran it (cpu_ms_per_frame): a stage whose CPU
is close to its wall keeps one core busy, the networks' extra intra-op threads are not in their
stage's CPU (the process total is: bench_inference.py's cpu_ms_per_frame). The critical path is the
main thread's stages (tracking, mesh_masks when not ahead, the networks, paste, wait).
"""
import contextlib
import threading
import time

STAGES = ("decode", "tracking", "mel", "mesh_masks", "face_encoder", "audio_decoder", "hr_mesh",
          "hr_decoder", "paste", "encode", "avatar_cache", "wait")


class StageProfiler:
    """Accumulates wall seconds per stage from any thread; `frames` is set by the run."""

    def __init__(self):
        self.seconds = dict.fromkeys(STAGES, 0.0)
        self.cpu_seconds = dict.fromkeys(STAGES, 0.0)
        self.frames = 0
        self.wall = 0.0
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def stage(self, name):
        start, cpu = time.perf_counter(), time.thread_time()
        try:
            yield
        finally:
            self.add(name, time.perf_counter() - start, time.thread_time() - cpu)

    def add(self, name, seconds, cpu_seconds=0.0):
        with self._lock:
            self.seconds[name] = self.seconds.get(name, 0.0) + seconds
            self.cpu_seconds[name] = self.cpu_seconds.get(name, 0.0) + cpu_seconds

    def timed_iter(self, iterable, name):
        """`iterable` unchanged, the time spent producing each item counted as `name`."""
        iterator = iter(iterable)
        while True:
            start, cpu = time.perf_counter(), time.thread_time()
            try:
                item = next(iterator)
            except StopIteration:
                self.add(name, time.perf_counter() - start, time.thread_time() - cpu)
                return
            self.add(name, time.perf_counter() - start, time.thread_time() - cpu)
            yield item

    def report(self):
        frames = max(1, self.frames)
        return {"frames": self.frames, "wall_ms_per_frame": round(1000 * self.wall / frames, 2),
                "ms_per_frame": {name: round(1000 * s / frames, 2) for name, s in self.seconds.items()},
                "cpu_ms_per_frame": {name: round(1000 * s / frames, 2) for name, s in self.cpu_seconds.items()}}


class _Off:
    """The default: no timing at all."""
    _null = contextlib.nullcontext()

    def stage(self, name):
        return self._null

    def add(self, name, seconds, cpu_seconds=0.0):
        pass

    def timed_iter(self, iterable, name):
        return iterable


OFF = _Off()
