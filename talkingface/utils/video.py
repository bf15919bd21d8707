"""Video probing, frame streaming with timestamp-based fps resampling, and an atomic mp4 writer.

Probing and writing run the ffmpeg binary bundled with imageio-ffmpeg (no system ffmpeg needed);
decoding uses cv2.VideoCapture. Both open a user's file as self-contained media only
(utils/ffmpeg.py). Every user-facing failure is a one-line InputError.
"""

from __future__ import annotations

import itertools
import math
import os
import re
import signal
import subprocess
import logging
import tempfile
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Iterator

import cv2
import numpy as np

from talkingface.utils.audio import has_audio_stream
from talkingface.utils.errors import InputError, finite_number, short_repr
from talkingface.utils.ffmpeg import (check_input_file, ffmpeg_exe, input_args, is_refused, open_capture, refused,
                                      stderr_line)
from talkingface.utils.files import probe_writable, remove_stale_temp_files, temp_name

logger = logging.getLogger(__name__)

VIDEO_EXTENSIONS = frozenset({".mp4", ".mov", ".avi", ".mkv", ".webm", ".m4v", ".flv", ".mpg", ".mpeg",
                              ".wmv", ".ts", ".3gp"})
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"})
STILL_IMAGE_FPS = 25.0  # a still image is treated as one frame of a 25 fps video


MAX_FPS = 1000.0  # beyond it a rate is a broken header, not a video
MAX_SIDE = 8192   # frames larger than 8K are refused before decoding (one would take 200 MB)


def check_fps(fps, what: str = "fps") -> float:
    """`fps` as a float when it is a real frame rate (0 < fps <= MAX_FPS), else a one-line InputError."""
    rate = finite_number(fps)
    if rate is None or not 0 < rate <= MAX_FPS:
        raise InputError(f"{what} must be a frame rate above 0 and at most {MAX_FPS:g} (got {short_repr(fps)})")
    return rate


@dataclass(frozen=True)
class VideoInfo:
    """What a video holds. `duration` is the video stream's length, n_frames / fps, in seconds."""

    fps: float
    n_frames: int
    width: int
    height: int
    has_audio: bool
    duration: float


def is_image(path: str | os.PathLike) -> bool:
    """True when the file name says it is a still image (jpg, png, ...)."""
    return Path(path).suffix.lower() in IMAGE_EXTENSIONS


def _read_image(path: Path) -> np.ndarray:
    # imdecode copes with non-ASCII paths, unlike imread on some platforms.
    data = np.fromfile(str(path), dtype=np.uint8)
    try:
        image = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
    except cv2.error:  # e.g. a header claiming more pixels than OpenCV decodes (2**30)
        raise InputError(f"Cannot read image {path.name}: its header claims a size OpenCV refuses to decode; "
                         f"frames up to {MAX_SIDE} px are read") from None
    if image is None:
        raise InputError(f"Cannot read image {path}: the file is corrupt or not an image")
    return image


_STREAM_RE = re.compile(r"Stream #\d+:\d+(?:\[[^\]]*\])?(?:\([^)]*\))?: (Video|Audio): (.*)")
_SIZE_RE = re.compile(r"(?<![0-9x])(\d{2,5})x(\d{2,5})(?![0-9x])")
_FPS_RE = re.compile(r"([\d.]+)(k?) fps")
_TBR_RE = re.compile(r"([\d.]+)(k?) tbr")
_FRAME_RE = re.compile(r"frame=\s*(\d+)")
_ROTATION_RE = re.compile(r"rotation of (-?[\d.]+) degrees")


def _parse_rate(match: re.Match | None) -> float:
    if match is None:
        return 0.0
    value = float(match.group(1))
    return value * 1000 if match.group(2) else value


def probe_video(path: str | os.PathLike) -> VideoInfo:
    """fps, exact frame count, size (as decoded, rotation applied), audio presence, duration.

    A still image gives one frame at 25 fps. Raises InputError for a missing, empty or corrupt
    file and for a file without a video stream.
    """
    path = check_input_file(path, "Video file")
    if is_image(path):
        image = _read_image(path)
        _check_size(image.shape[1], image.shape[0], path)
        return VideoInfo(STILL_IMAGE_FPS, 1, image.shape[1], image.shape[0], False, 1 / STILL_IMAGE_FPS)
    # Stream copy to the null muxer: demuxes every packet (exact frame count) without decoding.
    cmd = [ffmpeg_exe(), "-nostdin", "-hide_banner", *input_args(path),
           "-map", "0:v:0", "-c", "copy", "-f", "null", "-"]
    proc = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    err = proc.stderr.decode("utf-8", "replace")
    if is_refused(err):
        raise refused(path, "Video file")
    streams = _STREAM_RE.findall(err)
    video = next((desc for kind, desc in streams if kind == "Video"), None)
    if proc.returncode != 0 or video is None:
        if "matches no streams" in err or (proc.returncode == 0 and video is None):
            raise InputError(f"No video stream in {path}: give a video file or an image")
        raise InputError(f"Cannot read video {path}: {stderr_line(proc.stderr)}")
    size = _SIZE_RE.search(video)
    if size is None:
        raise InputError(f"Cannot read the frame size of {path}: the file may be corrupt")
    width, height = int(size.group(1)), int(size.group(2))
    rotation = _ROTATION_RE.search(err)
    if rotation and round(abs(float(rotation.group(1)))) % 180 == 90:
        width, height = height, width  # decoders apply the display rotation
    _check_size(width, height, path)
    fps = _parse_rate(_FPS_RE.search(video)) or _parse_rate(_TBR_RE.search(video))
    counts = _FRAME_RE.findall(err)
    n_frames = int(counts[-1]) if counts else 0
    if fps <= 0 or not math.isfinite(fps):
        raise InputError(f"Cannot read the frame rate of {path}: re-encode it at a fixed fps")
    if n_frames <= 0:
        raise InputError(f"Video {path} has no frames: the file is empty or corrupt")
    has_audio = any(kind == "Audio" for kind, _ in streams)
    return VideoInfo(float(fps), n_frames, width, height, has_audio, n_frames / fps)


def _check_size(width: int, height: int, path: Path) -> None:
    if max(width, height) > MAX_SIDE:
        raise InputError(f"{path.name}: frames of {width}x{height} are larger than the {MAX_SIDE} px this toolkit "
                         "decodes; scale the video down first")


def resample_indices(n_src: int, src_fps: float, dst_fps: float) -> np.ndarray:
    """Source frame shown at each output time j/dst_fps (the frame whose interval contains it).

    Output times cover the source duration n_src/src_fps, so 30 frames at 30 fps give 25 at 25 fps
    with no drift over long clips.
    """
    if n_src <= 0:
        return np.zeros(0, dtype=np.int64)
    ratio = src_fps / dst_fps
    n_dst = int(math.ceil(n_src / ratio - 1e-9))
    idx = np.array([_source_index(j, ratio) for j in range(n_dst)], dtype=np.int64)
    return np.minimum(idx, n_src - 1)


def _source_index(out_index: int, ratio: float) -> int:
    """Source frame on screen at output time out_index/dst_fps (ratio = src_fps/dst_fps); the
    epsilon keeps exact multiples (e.g. 30 -> 25 fps at j=5 -> 6.0) from rounding down."""
    return int(math.floor(out_index * ratio + 1e-6))


def _source_fps(cap: cv2.VideoCapture, path: Path) -> float:
    fps = cap.get(cv2.CAP_PROP_FPS)
    if not fps or not math.isfinite(fps) or fps <= 0 or fps > MAX_FPS:
        fps = probe_video(path).fps
    return float(fps)


def iter_frames(path: str | os.PathLike, fps: float | None = None) -> Iterator[np.ndarray]:
    """Stream the frames of a video (or the single frame of an image) as BGR uint8 arrays.

    With `fps`, frames are picked by timestamp (frame j of the output is the source frame on
    screen at time j/fps), so 30, 29.97 or 60 fps sources become 25 fps without drift. The file is
    checked now; decoding happens lazily as the iterator is consumed.
    """
    path = check_input_file(path, "Video file")
    if fps is not None:
        check_fps(fps, "the target fps")
    if is_image(path):
        return iter([_read_image(path)])
    cap = open_capture(path)
    if not cap.isOpened():
        cap.release()
        probe_video(path)  # a refused format: says so
        raise InputError(f"Cannot open video {path}: the file is corrupt or not a video")
    try:
        src_fps = _source_fps(cap, path)
    except Exception:
        cap.release()
        raise
    return _frames(cap, path, src_fps, fps)


def _frames(cap: cv2.VideoCapture, path: Path, src_fps: float,
            fps: float | None) -> Iterator[np.ndarray]:
    try:
        resample = fps is not None and abs(src_fps - fps) > 1e-3
        ratio = src_fps / fps if resample else 1.0
        next_out = 0  # index of the next output frame
        src = 0
        yielded = 0
        while True:
            if not resample:
                ok, frame = cap.read()
                if not ok:
                    break
                yielded += 1
                yield frame
                continue
            if _source_index(next_out, ratio) > src:  # never on screen at an output time: skip
                if not cap.grab():
                    break
                src += 1
                continue
            ok, frame = cap.read()
            if not ok:
                break
            # Upsampling repeats a source frame; each output gets its own array.
            first = True
            while _source_index(next_out, ratio) == src:
                yielded += 1
                yield frame if first else frame.copy()
                first = False
                next_out += 1
            src += 1
        if yielded == 0:
            raise InputError(f"No frame could be decoded from {path}: the file is corrupt")
    finally:
        cap.release()


def read_frames(path: str | os.PathLike, fps: float | None = None,
                max_frames: int | None = None) -> list[np.ndarray]:
    """The frames of iter_frames (the first `max_frames` when given) as a list (short clips only:
    memory grows with length); the decoder is released as soon as they are read."""
    frames = iter_frames(path, fps)
    try:
        return list(itertools.islice(frames, max_frames))
    finally:
        if hasattr(frames, "close"):  # (an image is a plain iterator)
            frames.close()


# Containers that take libx264 video and aac audio; a name without a suffix is written as mp4.
OUTPUT_SUFFIXES = (".mp4", ".mov", ".m4v", ".mkv", ".avi")
def check_output_path(path: str | os.PathLike, inputs=(), suffixes=OUTPUT_SUFFIXES) -> Path:
    """Check, before any long work, that a video can be written to `path` (one-line InputError
    if not): not a folder, not one of `inputs`, a container of `suffixes`, a folder that exists
    (it is created) and is writable. Also removes stale temp files of ours in that folder."""
    path = Path(path)
    if path.is_dir():
        raise InputError(f"output {path} is an existing folder: give a file name, e.g. {path / ('out' + suffixes[0])}")
    if path.suffix and path.suffix.lower() not in suffixes:
        raise InputError(f"output {path}: cannot write a '{path.suffix}' file; use one of "
                         f"{', '.join(suffixes)}")
    for source in inputs:
        if source is not None and path.exists() and Path(source).exists() and path.samefile(source):
            raise InputError(f"output {path} is also an input: choose another output file")
    folder = path.parent
    if folder.exists() and not folder.is_dir():
        raise InputError(f"output {path}: {folder} is a file, not a folder; choose another output path")
    try:
        probe_writable(folder)
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise InputError(f"cannot write to the output folder {folder} ({reason}): choose another output "
                         "path") from None
    remove_stale_temp_files(folder)
    return path


def _rate_string(fps: float) -> str:
    """An exact ffmpeg rate: 29.97 -> 30000/1001, 25.0 -> 25/1."""
    rate = Fraction(fps).limit_denominator(1001)
    if abs(float(rate) - fps) > 1e-6 * fps:
        rate = Fraction(fps).limit_denominator(100000)
    return f"{rate.numerator}/{rate.denominator}"


class VideoWriter:
    """Write BGR frames to an mp4 (libx264, yuv420p) with an optional audio track (aac).

    Frames are piped raw into ffmpeg. An odd width or height gets one more column or row, a copy
    of the last one (H.264 in yuv420p, the format every browser and phone plays, stores colour per
    2x2 pixels and so has even sizes only); the input's pixels keep their places. With
    `audio_path` (a wav/mp3 or any file with an audio stream), the output is cut to the shorter
    of video and audio. The result appears at `path` only when everything succeeded (temp file +
    rename); on error the temp file is removed.

        with VideoWriter("out.mp4", 25, audio_path="speech.wav") as writer:
            for frame in frames:
                writer.write(frame)
    """

    def __init__(self, path: str | os.PathLike, fps: float, audio_path: str | os.PathLike | None = None,
                 crf: int = 18, preset: str = "fast"):
        check_fps(fps, "the VideoWriter's fps")
        self.path = check_output_path(path, inputs=(audio_path,))
        self.fps = float(fps)
        self.crf = int(crf)
        self.preset = preset
        self.audio_path = None
        if audio_path is not None:
            self.audio_path = check_input_file(audio_path, "Audio file")
            if not has_audio_stream(self.audio_path):
                raise InputError(f"No audio stream in {self.audio_path}: "
                                 "give a wav/mp3 or a video with sound")
        self._tmp = temp_name(self.path, self.path.suffix or ".mp4")
        self._proc: subprocess.Popen | None = None
        self._stderr = None
        self._size: tuple[int, int] | None = None  # (width, height)
        self.frames_written = 0
        self._input_closed = False
        self._closed = False

    def _start(self, width: int, height: int) -> None:
        self._size = (width, height)
        cmd = [ffmpeg_exe(), "-nostdin", "-hide_banner", "-loglevel", "error", "-y",
               "-f", "rawvideo", "-pix_fmt", "bgr24", "-s", f"{width + width % 2}x{height + height % 2}",
               "-r", _rate_string(self.fps), "-i", "pipe:0"]
        if self.audio_path is not None:
            cmd += [*input_args(self.audio_path), "-map", "0:v:0", "-map", "1:a:0",
                    "-c:a", "aac", "-b:a", "160k", "-shortest"]
        else:
            cmd += ["-map", "0:v:0"]
        if width % 2 or height % 2:
            logger.info("%s: frames of %dx%d are written as %dx%d (the last column/row repeated): H.264 "
                        "in yuv420p, which every player supports, has even sizes only", self.path,
                        width, height, width + width % 2, height + height % 2)
        cmd += ["-c:v", "libx264", "-preset", self.preset, "-crf", str(self.crf), "-pix_fmt", "yuv420p"]
        if self._tmp.suffix.lower() in (".mp4", ".mov", ".m4v"):
            cmd += ["-movflags", "+faststart"]  # index first: plays while downloading
        cmd.append(str(self._tmp))
        # stderr goes to a file: a pipe nobody reads could fill up and stall ffmpeg.
        self._stderr = tempfile.TemporaryFile()
        self._proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                      stderr=self._stderr)

    def write(self, frame: np.ndarray) -> None:
        """Append one BGR uint8 frame (H, W, 3); grayscale (H, W) is accepted too."""
        if self._closed:
            raise InputError(f"VideoWriter for {self.path} is already closed")
        frame = np.asarray(frame)
        if frame.ndim == 2:
            frame = cv2.cvtColor(frame, cv2.COLOR_GRAY2BGR)
        if frame.ndim != 3 or frame.shape[2] != 3:
            raise InputError(f"VideoWriter expects BGR frames (H, W, 3), got shape {frame.shape}")
        if frame.dtype != np.uint8:
            raise InputError(f"VideoWriter expects uint8 frames, got {frame.dtype}")
        height, width = frame.shape[:2]
        if self._proc is None:
            self._start(width, height)
        elif (width, height) != self._size:
            raise InputError(f"Frame size {width}x{height} differs from the first frame's "
                             f"{self._size[0]}x{self._size[1]} in {self.path}")
        if self._input_closed:
            return  # the audio has ended: -shortest dropped the rest of the video
        if width % 2 or height % 2:
            frame = cv2.copyMakeBorder(frame, 0, height % 2, 0, width % 2, cv2.BORDER_REPLICATE)
        try:
            self._proc.stdin.write(np.ascontiguousarray(frame).tobytes())
        except (BrokenPipeError, OSError):
            # With -shortest ffmpeg stops reading once the audio ends (and exits 0). Any other
            # reason is a failure (disk full, bad output): stop now, not after the last frame.
            self._input_closed = True
            try:
                rc = self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                rc = None
            if rc not in (None, 0):
                raise InputError(f"ffmpeg failed to write {self.path}: {self._error_line(rc)}") from None
            return
        self.frames_written += 1

    def _error_line(self, rc: int | None = None) -> str:
        if rc is not None and rc < 0:  # killed, with nothing on stderr
            name = signal.Signals(-rc).name
            return f"ffmpeg was stopped by {name}" + (" (the file size limit, ulimit -f)"
                                                      if -rc == signal.SIGXFSZ else "")
        if self._stderr is None:
            return "no output"
        self._stderr.seek(0)
        return stderr_line(self._stderr.read())

    def close(self) -> None:
        """Finish encoding, mux the audio and move the file into place."""
        if self._closed:
            return
        if self._proc is None:
            self._closed = True
            raise InputError(f"No frames were written to {self.path}")
        try:
            self._proc.stdin.close()
        except OSError:  # already closed by ffmpeg (-shortest)
            pass
        rc = self._proc.wait()
        self._closed = True
        if rc != 0 or not self._tmp.exists():
            message = self._error_line(rc)
            self._cleanup()
            raise InputError(f"ffmpeg failed to write {self.path}: {message}")
        missing = self._missing_track()
        if missing:
            self._cleanup()
            raise InputError(f"the output {self.path} would have no {missing} track ({self.frames_written} "
                             "frame(s) given): use a longer video or audio")
        os.replace(self._tmp, self.path)
        self._cleanup()

    def _missing_track(self) -> str | None:
        """"video" or "audio" when the written file lacks it: ffmpeg's -shortest can drop a track
        of a very short output and still succeed."""
        try:
            info = probe_video(self._tmp)
        except InputError:
            return "video"
        return "audio" if self.audio_path is not None and not info.has_audio else None

    def _abort(self) -> None:
        """Stop ffmpeg and delete the partial output."""
        self._closed = True
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
        if self._proc is not None:
            try:
                if self._proc.stdin:
                    self._proc.stdin.close()
            except OSError:
                pass
            self._proc.wait()
        self._cleanup()

    def _cleanup(self) -> None:
        if self._tmp.exists():
            self._tmp.unlink()
        if self._stderr is not None:
            self._stderr.close()
            self._stderr = None

    def __enter__(self) -> "VideoWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self._abort()
        else:
            self.close()

    def __del__(self):
        # A writer dropped without close() must not leave ffmpeg running or a temp file behind.
        try:
            if not self._closed:
                self._abort()
        except Exception:
            pass
