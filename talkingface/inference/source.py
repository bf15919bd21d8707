"""The input video as a 25 fps timeline, played forward and, when the audio is longer, ping-pong.

Memory stays flat with the video's length: frames are streamed, never all held. Ping-pong
(0..n-1, n-2..1, 0..n-1, ...) needs the frames again, backwards. They come from an on-disk raw
cache of the 25 fps frames (a temporary file without a name, written while the first forward pass
decodes: the system frees it when the process ends, however it ends, so a killed run leaves
nothing behind; read back with plain file reads, so it costs page cache, not process memory),
or, when the cache would exceed `cache_limit_mb` or the free disk space, or writing it fails (disk
full, a file size limit), by decoding the video again (forward passes stream; backward passes
re-decode it in chunks of `chunk` frames, which is slow but bounded in memory).
"""
import errno
import itertools
import logging
import os
import shutil
import tempfile

import numpy as np

from talkingface.utils.audio import FPS
from talkingface.utils.errors import InputError
from talkingface.utils.video import is_image, iter_frames, probe_video

logger = logging.getLogger(__name__)


def pingpong_index(k, n):
    """Source frame shown at output frame k when n source frames are looped 0..n-1, n-2..1, ..."""
    if n <= 1:
        return 0
    r = k % (2 * n - 2)
    return r if r < n else 2 * n - 2 - r


def pingpong_segments(n, n_out):
    """The ping-pong order as runs (first, last, step) of source indices covering n_out output
    frames: (0, n-1, 1), (n-2, 1, -1), (0, n-1, 1), ... (the last run cut short)."""
    produced, forward = 0, True
    while produced < n_out:
        if n <= 1:
            first, length, step = 0, n_out, 0  # a single frame repeated
        elif forward:
            first, length, step = 0, n, 1
        else:
            first, length, step = n - 2, n - 2, -1
        length = min(length, n_out - produced)
        if length > 0:
            yield first, first + step * (length - 1), step
        produced += length
        forward = not forward


class _RawFrameCache:
    """Fixed-size raw BGR frames appended to a temporary file and read back by index."""

    def __init__(self, shape, directory=None):
        self.shape = tuple(shape)
        self.frame_bytes = int(np.prod(self.shape))
        # unnamed on Linux (O_TMPFILE, or unlinked at once): nothing to delete, even after kill -9
        self._file = tempfile.TemporaryFile(prefix="talkingface_frames_", suffix=".raw", dir=directory,
                                            buffering=0)
        self.count = 0

    def append(self, frame):
        if frame.shape != self.shape:
            raise InputError(f"frame size changed mid-video ({frame.shape[:2]} vs {self.shape[:2]}): "
                             "re-encode the video at one size")
        data = memoryview(np.ascontiguousarray(frame)).cast("B")
        while data:  # after a short write, writing the rest raises the reason (ENOSPC, EFBIG)
            written = self._file.write(data)
            if not written:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            data = data[written:]
        self.count += 1

    def read(self, index):
        buffer = bytearray(self.frame_bytes)
        n = os.preadv(self._file.fileno(), [buffer], index * self.frame_bytes)
        if n != self.frame_bytes:
            raise InputError("the temporary frame cache was truncated (disk full?): free some space "
                             "or lower infer_frame_cache_mb")
        return np.frombuffer(buffer, dtype=np.uint8).reshape(self.shape)

    def close(self):
        if self._file is not None:
            self._file.close()
            self._file = None


class FrameSource:
    """25 fps frames of a video (resampled by timestamp) or of a still image.

    `scan()` streams every frame once (the face-tracking pass) and fixes `n_frames`;
    `play(n_out)` then yields (source_index, frame) for n_out output frames in ping-pong order.
    Every yielded frame is a fresh writable array. Call `close()` (or use `with`) to delete the
    temporary cache.
    """

    def __init__(self, path, cache_limit_mb=4096, chunk=16):
        self.path = str(path)
        self.info = probe_video(self.path)  # one-line InputError when missing/corrupt/no video
        self.is_still = is_image(self.path)
        self.width, self.height = self.info.width, self.info.height
        self.cache_limit_mb = float(cache_limit_mb)
        self.chunk = max(1, int(chunk))
        self.n_frames = None
        self._first = None
        self._cache = None

    def _decode(self):
        return iter_frames(self.path, fps=FPS)

    def scan(self, max_frames=None):
        """Every 25 fps frame once, in order (the frames may be modified by the caller); with
        `max_frames`, only the first ones (the output never shows the rest)."""
        count = 0
        for frame in itertools.islice(self._decode(), max_frames):
            if count == 0:
                self._first = frame.copy()  # kept in case the video is a single frame
            count += 1
            yield frame
        self.n_frames = count
        if count:  # the decoder's real size (rotation applied) wins over the probe's
            self.height, self.width = frame.shape[:2]
        if count != 1:
            self._first = None

    def _cache_fits(self):
        need_mb = self.n_frames * self.width * self.height * 3 / 2 ** 20
        free_mb = shutil.disk_usage(tempfile.gettempdir()).free / 2 ** 20
        if need_mb <= self.cache_limit_mb and need_mb < 0.8 * free_mb:
            return True
        logger.info("ping-pong: a %d MB frame cache is over the limit (infer_frame_cache_mb=%d) or "
                    "the free disk space; the video is decoded again for every pass instead",
                    need_mb, self.cache_limit_mb)
        return False

    def play(self, n_out, keep=False):
        """(source_index, frame) for output frames 0..n_out-1, looping the video ping-pong; with
        `keep`, the frames are cached (if they fit) even when this pass shows each only once, so
        that a later play() reads them back instead of decoding the video again."""
        if self.n_frames is None:
            raise RuntimeError("FrameSource.play() before scan()")
        n = self.n_frames
        if n == 1:  # a still image (or a one-frame video): the same frame throughout
            for _ in range(n_out):
                yield 0, self._first.copy()
            return
        if (n_out > n or keep) and self._cache is None and self._cache_fits():
            try:
                self._cache = _RawFrameCache((self.height, self.width, 3))
            except OSError as exc:
                logger.warning("no temporary frame cache (%s); the video is decoded again for every "
                               "ping-pong pass instead", exc.strerror or exc)
        for first, last, step in pingpong_segments(n, n_out):
            count = abs(last - first) + 1
            if self._cache is not None and self._cache.count == n:
                frames = (self._cache.read(i) for i in range(first, last + step, step))
            elif step > 0:
                frames = self._forward(count)
            else:
                frames = self._decode_backward(first, last)
            for offset, frame in enumerate(frames):
                yield first + step * offset, frame

    def _padded_decode(self):
        """The scanned frames again; should a decoder return fewer this time, the last repeats."""
        count, last = 0, None
        for frame in self._decode():
            if count >= self.n_frames:
                return
            count, last = count + 1, frame
            yield frame
        if last is None:
            raise InputError(f"{self.path} could not be decoded a second time")
        for _ in range(count, self.n_frames):
            yield last.copy()

    def _forward(self, count):
        """Frames 0..count-1, decoded; on the first pass they also fill the cache (if any)."""
        filling = self._cache is not None and self._cache.count == 0
        for frame in itertools.islice(self._padded_decode(), count):
            if filling:
                filling = self._append_to_cache(frame)
            yield frame

    def _append_to_cache(self, frame):
        """Cache one frame; when the disk refuses it, drop the cache and re-decode instead."""
        try:
            self._cache.append(frame)
            return True
        except OSError as exc:
            logger.warning("the temporary frame cache could not be written (%s); the video is decoded "
                           "again for every ping-pong pass instead (slower, same output)",
                           exc.strerror or exc)
            self.close()
            return False

    def _decode_backward(self, first, last):
        """Frames first, first-1, ..., last (first > last) by re-decoding chunks from the start."""
        hi = first
        while hi >= last:
            lo = max(last, hi - self.chunk + 1)
            chunk = list(itertools.islice(self._padded_decode(), lo, hi + 1))
            yield from reversed(chunk)
            hi = lo - 1

    def close(self):
        if self._cache is not None:
            self._cache.close()
            self._cache = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
