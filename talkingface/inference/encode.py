"""The last stage: rendered frames to the encoder (or to memory), with the decoding (and the face
meshes of the source crops) ahead in a thread and the encoding behind in another, each through a
queue of at most two batches.

`write_frames(source, renderer, n_out, batch_size, writer)` runs decode (thread) -> render
(this thread) -> encode (thread); `muxed_audio` is the audio file the output video carries.
"""
import contextlib
import os
import queue
import threading

from tqdm import tqdm

from talkingface.inference.profile import OFF
from talkingface.utils.audio import save_wav
from talkingface.utils.distributed import is_main_process
from talkingface.utils.files import remove_stale_temp_files, temp_name
from talkingface.utils.prefetch import Prefetcher

_DONE = object()


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


@contextlib.contextmanager
def muxed_audio(audio, wav, output):
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


def write_frames(source, renderer, n_out, batch_size, writer, progress=None, profiler=OFF):
    """Decode and face meshes (thread) -> render batches (this thread) -> encode (thread), with bounded
    queues."""

    def batches():
        batch = []
        for k, (src, frame) in enumerate(profiler.timed_iter(source.play(n_out), "decode")):
            batch.append((k, src, frame))
            if len(batch) == batch_size:
                renderer.mesh_ahead(batch)  # the face meshes overlap the networks of the batch before
                yield batch
                batch = []
        if batch:
            renderer.mesh_ahead(batch)
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
