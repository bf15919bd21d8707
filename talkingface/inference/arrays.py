"""Frames held in memory as an inference source, with FrameSource's interface (source.py).

The frames are resampled to the 25 fps timeline by timestamp (utils.video.resample_indices) and
looped ping-pong when the audio is longer, exactly as a video file is; one frame is a still image.
"""
import numpy as np

from talkingface.inference.source import FPS, pingpong_index
from talkingface.utils.errors import InputError
from talkingface.utils.video import VideoInfo, check_fps, resample_indices


class ArraySource:
    """frames: a sequence of BGR uint8 images (H, W, 3) of one size, or one (N, H, W, 3) array,
    shown at `fps` frames per second."""

    path = "(frames in memory)"

    def __init__(self, frames, fps=FPS):
        fps = check_fps(fps)
        if isinstance(frames, np.ndarray) and frames.ndim == 3:
            frames = [frames]  # a single image
        if not isinstance(frames, (list, tuple, np.ndarray)):
            raise InputError(f"video must be a file path, or frames: a list of BGR uint8 images (H, W, 3) or "
                             f"one (N, H, W, 3) array (got {type(frames).__name__})")
        frames = list(frames)
        if not frames:
            raise InputError("no frames given: pass at least one BGR image (H, W, 3)")
        shape = np.shape(frames[0])
        for frame in frames:
            frame = np.asarray(frame)
            if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
                raise InputError(f"frames must be BGR uint8 images (H, W, 3), got {frame.dtype} {frame.shape}")
            if frame.shape != shape:
                raise InputError(f"all frames must have one size: {frame.shape[:2]} vs {shape[:2]}")
        self._frames = frames
        self.height, self.width = shape[:2]
        self.is_still = len(frames) == 1
        self.info = VideoInfo(float(fps), len(frames), self.width, self.height, False, len(frames) / fps)
        self._timeline = np.zeros(1, np.int64) if self.is_still else resample_indices(len(frames), fps, FPS)
        self.n_frames = None

    def _frame(self, index):
        return np.array(self._frames[self._timeline[index]], dtype=np.uint8, copy=True)

    def frame_at(self, index):
        """Frame `index` of the 25 fps timeline (a copy): random access for reference_frame=half_clip."""
        return self._frame(index)

    def scan(self, max_frames=None):
        """The 25 fps frames once, in order (copies); with `max_frames`, only the first ones."""
        count = len(self._timeline) if max_frames is None else min(max_frames, len(self._timeline))
        self.n_frames = count
        for index in range(count):
            yield self._frame(index)

    def play(self, n_out, keep=False):
        """(source_index, frame) for output frames 0..n_out-1, looping ping-pong (`keep` is
        FrameSource's: these frames are in memory already)."""
        if self.n_frames is None:
            raise RuntimeError("ArraySource.play() before scan()")
        for k in range(n_out):
            index = pingpong_index(k, self.n_frames)
            yield index, self._frame(index)

    def close(self):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
