"""The ffmpeg binary, and how a file a user gave is opened with it: as media only.

Some of ffmpeg's input formats are lists of other resources: an HLS playlist (.m3u8) or a concat
list names segments by path or URL, an image2 pattern expands to many files, and protocols such as
concat:, http: or data: read something other than the named file. A crafted upload of that kind
would make a server decode a file nobody uploaded. So every decode of a user's file (probe, audio,
frames) runs with ffmpeg's own guards:
- `-format_whitelist MEDIA_FORMATS`: only self-contained containers (ffmpeg checks the detected
  demuxer against it before the demuxer opens anything else);
- `-protocol_whitelist file` and a `file:` URL: the named local file, nothing else.
OpenCV's bundled FFmpeg gets the same two options through OPENCV_FFMPEG_CAPTURE_OPTIONS.
Still images never go through ffmpeg: cv2.imdecode reads their bytes.
"""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import imageio_ffmpeg

from talkingface.utils.errors import InputError

# Demuxers of self-contained audio and video files (ffmpeg names; "mov" covers mp4/m4a/3gp,
# "matroska" covers webm). Playlists (hls, dash), lists (concat, ffmetadata), image sequences
# (image2) and network formats (sdp, rtsp) are absent on purpose.
MEDIA_FORMATS = ("mov", "matroska", "avi", "flv", "mpegts", "mpeg", "asf", "ivf", "gif", "wav", "w64", "mp3",
                 "aac", "flac", "ogg", "aiff", "caf", "amr")
_WHITELISTS = {"format_whitelist": ",".join(MEDIA_FORMATS), "protocol_whitelist": "file"}
# The user's own OpenCV capture options, kept in front of ours (later ones win in OpenCV).
_USER_CAPTURE_OPTIONS = os.environ.get("OPENCV_FFMPEG_CAPTURE_OPTIONS", "")


def ffmpeg_exe() -> str:
    """Path of the ffmpeg binary bundled with imageio-ffmpeg."""
    return imageio_ffmpeg.get_ffmpeg_exe()


def check_input_file(path: str | os.PathLike, what: str) -> Path:
    """`path` as a Path when it names a non-empty regular file (a FIFO or device is refused
    without being opened); otherwise a one-line InputError."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{what} not found: {path} (check the path)")
    if not path.is_file():
        raise InputError(f"{what} is not a file: {path}")
    if path.stat().st_size == 0:
        raise InputError(f"{what} is empty (0 bytes): {path}")
    return path


def input_args(path: str | os.PathLike) -> list[str]:
    """ffmpeg arguments that open `path` as one local, self-contained media file (module doc)."""
    options = [item for key, value in _WHITELISTS.items() for item in (f"-{key}", value)]
    return [*options, "-i", "file:" + os.path.abspath(os.fspath(path))]


def is_refused(stderr: bytes | str) -> bool:
    """True when ffmpeg stopped because the file's format or protocol is not allowed."""
    text = stderr.decode("utf-8", "replace") if isinstance(stderr, bytes) else stderr
    return "not on whitelist" in text  # "Format ... not on whitelist", "Protocol ... not on whitelist"


def refused(path: str | os.PathLike, what: str) -> InputError:
    """The one line for a file whose format can pull in other files or URLs."""
    return InputError(f"{what} {os.path.basename(os.fspath(path))} was refused: it is not a self-contained "
                      "video or audio file (playlists, concat lists, image sequences and other formats "
                      "that point to other files or URLs are not read); give an mp4, mov, mkv, webm or "
                      "avi video, an image, or a wav, mp3, m4a or flac file")


def stderr_line(stderr: bytes) -> str:
    """The most telling line of ffmpeg's error output, for a one-line message."""
    lines = [ln.strip() for ln in stderr.decode("utf-8", "replace").splitlines() if ln.strip()]
    return lines[-1] if lines else "unknown ffmpeg error"


def open_capture(path: str | os.PathLike) -> cv2.VideoCapture:
    """cv2.VideoCapture of a local media file under the same guards as input_args."""
    ours = "|".join(f"{key};{value}" for key, value in _WHITELISTS.items())
    os.environ["OPENCV_FFMPEG_CAPTURE_OPTIONS"] = "|".join(filter(None, (_USER_CAPTURE_OPTIONS, ours)))
    return cv2.VideoCapture(os.path.abspath(os.fspath(path)), cv2.CAP_FFMPEG)
