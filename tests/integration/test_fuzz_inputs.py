"""A fuzz test that keeps it so: every entry point answers a malformed input with ONE line and
leaves nothing behind.

The inputs are generated on every run from a seeded generator: truncated real files (a prefix of
the tiny face video, of its audio, of a PNG, of a checkpoint), random bytes with a media
extension, the wrong container (audio given as video, a text file named .mp4, a PNG named .wav,
a video without sound as audio), playlists and concat lists naming a local file, zero-length
files, headers claiming huge frames (a PNG IHDR or an AVI header patched to e.g. 20000x20000,
a y4m header), NaN/inf samples, wrong dtypes and Python types for video/audio/fps/sample_rate,
and wrong types or values for real settings keys. Each goes to one entry point:
- the CLI (`run_talkingface.py`, a subprocess in an empty working directory with its own TMPDIR)
  in the modes infer, stream, evaluate, preprocess and train (--max_steps=1): exit status 2, the
  last stderr line `error: ...`, no "Traceback", and no file but the run's logs;
- `LipSync(...)`, `LipSync.run` / `__call__`, `LipSync.stream(...)` and `.push(...)`: a
  TalkingFaceError whose message is one line, and no output, temp or other new file;
- the web app's `App.generate(...)`: a one-line status "error: ..." that names no server path
  and is no "unexpected" error, no output video, nothing new in the app's folders.

Default run: 12 + 40 + 8 + 16 + 12 generated in-process cases (construct, run, stream_open,
push, app) and one CLI run per mode, plus the REGRESSIONS below (generated cases that exposed a
bug, replayed on every run). FUZZ_ITERATIONS=N multiplies every count (N CLI runs per mode) and
adds EXTENDED_REGRESSIONS.

Replay: the seed is FUZZ_SEED (default 0) and every case draws from its own generator (seed,
test, case index), so a failure "[FUZZ_SEED=3 run#7] ..." or "[FUZZ_SEED=3 cli-train#7] ..." is
replayed alone with
    FUZZ_SEED=3 FUZZ_CASE=7 python -m pytest -q tests/integration/test_fuzz_inputs.py -k run
    FUZZ_SEED=3 FUZZ_CASE=7 python -m pytest -q tests/integration/test_fuzz_inputs.py -k "cli and train"
"""
import hashlib
import math
import os
import pathlib
import random
import re
import shutil
import string
import struct
import subprocess
import sys
import tempfile
import traceback
import zlib

import cv2
import numpy as np
import pytest

from talkingface.utils.errors import TalkingFaceError
from paths import REPO_ROOT

SEED = int(os.environ.get("FUZZ_SEED", "0"))
ITERATIONS = max(1, int(os.environ.get("FUZZ_ITERATIONS", "1")))
ONLY_CASE = os.environ.get("FUZZ_CASE")

# Cases per in-process test for FUZZ_ITERATIONS=1 (cheap: each fails before any frame is made).
N_CONSTRUCT, N_RUN, N_STREAM_OPEN, N_PUSH, N_APP = 12, 40, 8, 16, 12
CLI_MODES = ("infer", "stream", "evaluate", "preprocess", "train")

INFERENCE_KEYS = ("infer_batch_size", "reference_frame", "infer_bf16", "infer_mask_feather", "avatar_cache",
                  "avatar_cache_mb", "infer_frame_cache_mb", "infer_x264_preset")
TRAINING_KEYS = ("batch_size", "learning_rate", "num_workers", "max_steps", "seed", "img_size")


# --- what a valid value of each fuzzed key is (the documented ranges of properties/overall.yaml) ---

def _is_number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _whole(value):
    return _is_number(value) and (isinstance(value, int) or (math.isfinite(value) and value.is_integer()))


def _int_in(low, high):
    return lambda v: _whole(v) and low <= v <= high


def _float_in(low, high=None, low_open=False):
    def valid(v):
        if not _is_number(v):
            return False
        try:
            v = float(v)
        except OverflowError:
            return False
        return math.isfinite(v) and (v > low if low_open else v >= low) and (high is None or v <= high)
    return valid


def _one_of(*choices):
    return lambda v: any(v == c and type(v) is type(c) for c in choices)


VALID = {
    "infer_batch_size": _int_in(1, 4096),
    "reference_frame": _one_of("first", "same", "half_clip"),
    "infer_bf16": _one_of("auto", True, False),
    "infer_mask_feather": _float_in(0, 1),
    "avatar_cache": _one_of("off", "on", "refresh", False, True),
    "avatar_cache_mb": _int_in(1, 2 ** 20),
    "infer_frame_cache_mb": _int_in(0, 2 ** 20),
    "infer_x264_preset": _one_of("ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow",
                                 "slower", "veryslow", "placebo"),
    "batch_size": _int_in(1, 4096),
    "learning_rate": _float_in(0, low_open=True),
    "num_workers": _int_in(0, 256),
    "max_steps": _int_in(0, 2 ** 31 - 1),
    "seed": _int_in(0, 2 ** 31 - 1),
    "img_size": lambda v: _is_number(v) and v == 128,
}


# --- generators ---

# Generated cases that exposed a product bug, replayed on every run besides the new ones:
# test -> [(seed, index, text the case's description must hold)]. The text keeps an entry honest
# when the generators change (then find such a case again with FUZZ_SEED / FUZZ_ITERATIONS).
REGRESSIONS = {
    # config/schema.py Float: float(10**5000) raises OverflowError (on the CLI: a 401-digit int)
    "construct": [(0, 77, "infer_mask_feather=an int of 5000 digits")],
    "cli-infer": [(165, 0, "infer_mask_feather=an int of 401 digits")],
    "run": [(0, 100, "infer_mask_feather=an int of 5000 digits"),
            # utils/audio.py check_sample_rate: np.isfinite(2**64) raises TypeError
            (0, 198, "sample_rate=an int of 5000 digits"), (1, 212, "sample_rate=18446744073709551616"),
            # utils/video.py check_fps: math.isfinite(10**5000) raises OverflowError
            (2, 125, "fps=an int of 5000 digits"),
            # utils/video.py _read_image: cv2.imdecode raises cv2.error past CV_IO_MAX_IMAGE_PIXELS
            (4, 84, "a PNG whose IHDR claims 65535x65535 (valid CRC)")],
    "stream_open": [(1, 14, "fps=an int of 5000 digits")],
    "app": [(1, 54, "a PNG whose IHDR claims 65535x65535 (valid CRC)")],
    # data/dataset/clip.py Clip(): a corrupt meta.json of a preprocessed clip is a traceback
    "cli-evaluate": [(2, 0, "every clip's meta.json: wrong content")],
}
# Replayed only with FUZZ_ITERATIONS > 1 (a CLI training run costs ~6 s of the default run): the
# same meta.json bug under --mode=train, and Clip.load_mel, where a corrupt mel.npy is a traceback.
EXTENDED_REGRESSIONS = {"cli-train": [(0, 4, "every clip's meta.json: wrong content"),
                                      (0, 32, "every clip's mel.npy: random bytes")]}


class Case:
    """One generated case: its own generators (seed, test, index) and its description."""

    def __init__(self, test, index, seed=SEED, expect=None):
        self.seed, self.index = seed, index
        self.label = f"[FUZZ_SEED={seed} {test}#{index}]"
        self.slug = f"{index}" if seed == SEED and expect is None else f"s{seed}-{index}"
        self.expect = expect
        key = hashlib.sha256(f"{seed}/{test}/{index}".encode()).digest()
        self.rng = random.Random(key)
        self.np = np.random.default_rng(int.from_bytes(key[:8], "little"))
        self.parts = []

    def note(self, text):
        self.parts.append(text)
        return text

    def drifted(self, failures):
        """True (and a failure recorded) when a REGRESSIONS entry no longer makes its input."""
        if self.expect is None or self.expect in "; ".join(self.parts):
            return False
        failures.append(f"{self} -> this regression case no longer generates {self.expect!r}: the generators "
                        "changed; find such a case again and update REGRESSIONS")
        return True

    def __str__(self):
        return f"{self.label} {'; '.join(self.parts)}"


def cases(test, count):
    """The cases a test runs: count * FUZZ_ITERATIONS new ones, then its REGRESSIONS; with
    FUZZ_CASE=i only case i of FUZZ_SEED."""
    if ONLY_CASE is not None:
        return [Case(test, int(ONLY_CASE))]
    replayed = REGRESSIONS.get(test, []) + (EXTENDED_REGRESSIONS.get(test, []) if ITERATIONS > 1 else [])
    return ([Case(test, index) for index in range(count * ITERATIONS)]
            + [Case(test, index, seed, expect) for seed, index, expect in replayed])


def _big_int(rng, digits=5000):
    """A `digits`-digit integer and its decimal text (str(int) refuses more than 4300 digits)."""
    text = rng.choice("123456789") + "".join(rng.choices(string.digits, k=digits - 1))
    value = 0
    for start in range(0, digits, 1000):
        piece = text[start:start + 1000]
        value = value * 10 ** len(piece) + int(piece)
    return value, text


def bad_value(rng, cli=False):
    """(value, its YAML text for --key=value or None when the CLI cannot say it, description)."""
    kind = rng.choice(["negative", "zero", "huge", "digits5000", "string", "list", "nan", "100kB", "other"])
    if kind == "negative":
        value = rng.choice([-1, -rng.randint(2, 10 ** 9), -0.5, -1e30])
        text = {-1e30: "-1.0e+30"}.get(value, repr(value))
    elif kind == "zero":
        value, text = rng.choice([(0, "0"), (0.0, "0.0")])
    elif kind == "huge":
        value, text = rng.choice([(1e30, "1.0e+30"), (float("inf"), ".inf"), (2 ** 63, str(2 ** 63)),
                                  (10 ** 20, str(10 ** 20)), (10 ** 400, str(10 ** 400))])
    elif kind == "digits5000":
        value, text = _big_int(rng)
    elif kind == "string":
        options = [("abc", "abc"), ("eight", "eight"), ("8 px", "8 px"), ("fast!", "fast!"), ("", "''"),
                   ("ünïcødé", "ünïcødé"), ("first ", "'first '"), ("Auto", "Auto")]
        if not cli:
            options += [("two\nlines", None), ("\x00", None), ("on", None)]
        value, text = rng.choice(options)
    elif kind == "list":
        value, text = rng.choice([([], "[]"), ([1, 2], "[1, 2]"), ([[8]], "[[8]]"), (["a"], "[a]")])
    elif kind == "nan":
        value, text = float("nan"), ".nan"
    elif kind == "100kB":
        value = "".join(rng.choices(string.ascii_letters + ("" if cli else " \n"), k=100_000))
        text = value if cli else None
    else:
        value, text = rng.choice([(None, "~"), ({"a": 1}, "{a: 1}"), (2.5, "2.5"), (complex(8, 1), None),
                                  (b"8", None), ((8,), None)])
    return value, text, show(value)


def show(value):
    """`value` for a case's description: repr, or what it is when that is long."""
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 1000:
        return f"an int of {int(math.log10(abs(value))) + 1} digits"
    text = repr(value)
    if len(text) <= 60:
        return text
    return f"a {type(value).__name__} of {len(value)} characters" if isinstance(value, str) else text[:60] + "..."


def bad_setting(rng, keys, cli=False):
    """(key, value, text, description) with a value that VALID says the key does not take."""
    for _ in range(200):
        key = rng.choice(keys)
        value, text, shown = bad_value(rng, cli)
        if (cli and text is None) or VALID[key](value):
            continue
        return key, value, text, f"{key}={shown}"
    raise AssertionError("no bad value drawn")


VIDEO_SUFFIXES = (".mp4", ".mov", ".mkv", ".avi", ".webm")
AUDIO_SUFFIXES = (".wav", ".mp3", ".m4a", ".flac", ".aac")
ODD_STEMS = ("clip", "face clip", "vidéo", "-x", "a'b", "中文")


def _png(image):
    ok, data = cv2.imencode(".png", image)
    assert ok
    return data.tobytes()


def _with_ihdr(png, width, height, fix_crc):
    data = bytearray(png)
    assert data[12:16] == b"IHDR"
    data[16:24] = struct.pack(">II", width, height)
    if fix_crc:
        data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    return bytes(data)


class Materials:
    """The real tiny inputs (lipsync_media) as bytes, and templates made from them once."""

    def __init__(self, media, folder):
        from talkingface.utils.audio import load_audio
        from talkingface.utils.ffmpeg import ffmpeg_exe
        from talkingface.utils.video import read_frames

        self.paths = {k: pathlib.Path(v) for k, v in media.items()}
        self.video = self.paths["video"].read_bytes()
        self.audio = self.paths["audio"].read_bytes()
        self.noface = self.paths["noface"].read_bytes()
        # The mp4's index (moov) comes last: a prefix that ends at most 64 bytes into it has no
        # usable index (a longer one may hold every track's tables: a whole video, not a cut one).
        self.moov = self.video.find(b"moov") - 4
        assert self.moov > self.video.find(b"mdat") > 0
        self.audio_data = self.audio.find(b"data") + 8  # where the wav's samples start
        self.frames = read_frames(media["video"], fps=25)[:3]
        self.wav = load_audio(media["audio"])
        self.face_png = _png(self.frames[0])
        self.noise_png = _png(np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8))
        # 16x16 rawvideo in AVI: its header alone says the frame size (patched per case)
        avi = pathlib.Path(folder) / "raw.avi"
        subprocess.run([ffmpeg_exe(), "-nostdin", "-loglevel", "error", "-y", "-f", "rawvideo", "-pix_fmt", "bgr24",
                        "-s", "16x16", "-r", "25", "-i", "pipe:0", "-c:v", "rawvideo", "-pix_fmt", "bgr24", str(avi)],
                       input=np.zeros((3, 16, 16, 3), np.uint8).tobytes(), check=True)
        self.raw_avi = avi.read_bytes()
        self.pcm = np.clip(np.round(self.wav * 32768), -32768, 32767).astype("<i2").tobytes()


def _huge_size(rng):
    return rng.choice([(20000, 20000), (rng.randint(8193, 16000), rng.randint(16, 4000)),
                       (rng.randint(16, 4000), rng.randint(8193, 16000)), (65535, 65535), (2 ** 31 - 1, 1)])


def bad_media(case, m, folder, role):
    """Write a malformed `role` ("video", "audio" or the app's "photo") file into `folder`;
    returns its path."""
    rng = case.rng
    folder = pathlib.Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    stem = rng.choice(ODD_STEMS)
    suffixes = {"video": VIDEO_SUFFIXES, "audio": AUDIO_SUFFIXES, "photo": (".png", ".jpg")}[role]
    if role == "photo":  # what the app's photo tab may get
        kinds = ["truncated_png", "huge_png", "thin_png", "random_bytes", "empty", "text", "wrong_container",
                 "noise_png"]
    else:
        kinds = ["truncated", "random_bytes", "empty", "text", "wrong_container", "playlist", "concat_list", "png",
                 "y4m_huge", "huge_avi"]
        kinds += ["huge_png", "thin_png", "truncated_png", "noface"] if role == "video" else []
    kind = rng.choice(kinds)
    suffix = rng.choice(suffixes)
    if kind == "truncated":
        if role == "video":
            data = m.video[:rng.randint(1, m.moov + 64)]
            what = f"face.mp4 cut to {len(data)} of {len(m.video)} bytes"
        else:  # at most ~500 samples are left: under the 0.08 s a run needs, or no header at all
            data = m.audio[:rng.randint(1, m.audio_data + 1000)]
            what, suffix = f"speech.wav cut to {len(data)} of {len(m.audio)} bytes", ".wav"
    elif kind == "random_bytes":
        data = case.np.bytes(rng.choice([1, 2, 7, 100, 4096, rng.randint(1, 65536)]))
        what = f"{len(data)} random bytes"
    elif kind == "empty":
        data, what = b"", "an empty file"
    elif kind == "text":
        data = rng.choice([b"hello\n", b"mode: infer\nvideo: x.mp4\n", b'{"video": "x.mp4"}',
                           b"#!/bin/sh\necho hi\n",
                           "".join(rng.choices(string.printable, k=rng.randint(1, 5000))).encode()])
        what = f"a text file of {len(data)} bytes"
    elif kind == "wrong_container" and role == "photo":
        data, what = rng.choice([(m.video, "face.mp4"), (m.audio, "speech.wav")])
        what = f"{what} given as the photo (named {suffix})"
    elif kind == "noise_png":
        data, what = m.noise_png, "a PNG of noise (no face)"
    elif kind == "wrong_container":
        if role == "video":  # the audio track given as the video, under its own or a video name
            data, suffix = m.audio, rng.choice([".wav", ".mp4"])
            what = f"speech.wav given as the video (named {suffix})"
        else:  # a video without sound given as the audio
            data, suffix = m.noface, rng.choice([".mp4", ".wav"])
            what = f"a video without sound given as the audio (named {suffix})"
    elif kind in ("playlist", "concat_list"):
        target = folder / f"target_{rng.randrange(10 ** 6)}{'.mp4' if role == 'video' else '.wav'}"
        target.write_bytes(m.video if role == "video" else m.audio)
        name = rng.choice([str(target), target.name, f"file://{target}"])
        if kind == "playlist":
            data = f"#EXTM3U\n#EXT-X-TARGETDURATION:10\n#EXTINF:1.0,\n{name}\n#EXT-X-ENDLIST\n".encode()
            suffix = rng.choice([".m3u8", suffix])
        else:
            data = f"ffconcat version 1.0\nfile '{target.name}'\n".encode()
        what = f"a {kind} naming {name}"
    elif kind == "png":  # an image under a media name (as audio: "a PNG renamed .wav")
        data, what = rng.choice([m.face_png, m.noise_png]), f"a PNG named {suffix}"
    elif kind == "y4m_huge":
        width, height = _huge_size(rng)
        data = f"YUV4MPEG2 W{width} H{height} F25:1 Ip A1:1 C420jpeg\nFRAME\n".encode() + case.np.bytes(64)
        suffix = rng.choice([".y4m", suffix])
        what = f"a y4m header claiming {width}x{height}"
    elif kind == "huge_png":
        width, height = _huge_size(rng)
        fix = rng.random() < 0.5
        data, suffix = _with_ihdr(m.noise_png, width, height, fix), ".png"
        what = f"a PNG whose IHDR claims {width}x{height} ({'valid' if fix else 'wrong'} CRC)"
    elif kind == "thin_png":
        shape = rng.choice([(9000, 16, 3), (16, rng.randint(8193, 12000), 3)])
        data, suffix = _png(np.zeros(shape, np.uint8)), ".png"
        what = f"a real {shape[1]}x{shape[0]} PNG (over the 8192 px limit)"
    elif kind == "huge_avi":
        width, height = _huge_size(rng)
        data = bytearray(m.raw_avi)
        at = data.find(b"avih")
        data[at + 40:at + 48] = struct.pack("<II", width, height)
        at = data.find(b"strf")
        data[at + 12:at + 20] = struct.pack("<II", width, height)
        data, suffix = bytes(data), rng.choice([".avi", suffix])
        what = f"a rawvideo AVI whose header claims {width}x{height}"
    elif kind == "truncated_png":
        data, suffix = m.face_png[:rng.randint(1, len(m.face_png) // 2)], ".png"
        what = f"a face PNG cut to {len(data)} of {len(m.face_png)} bytes"
    else:  # noface: a real video in which no face can be found
        data, what = m.noface, "a real video with no face in it"
    path = folder / f"{stem}{suffix}"
    counter = 0
    while path.exists():
        counter += 1
        path = folder / f"{stem}{counter}{suffix}"
    path.write_bytes(data)
    case.note(f"{role} file {path.name!r}: {what}")
    return path


def bad_video_object(case, m):
    """Something that is not frames (or frames no run can use), for LipSync's `video`."""
    rng = case.rng
    frame = m.frames[0]
    h, w = frame.shape[:2]
    options = {
        "None": lambda: None, "5": lambda: 5, "2.5": lambda: 2.5, "a dict": lambda: {"frames": m.frames},
        "''": lambda: "", "True": lambda: True, "bytes": lambda: frame.tobytes(),
        "an empty list": lambda: [], "an empty (0, H, W, 3) array": lambda: np.zeros((0, h, w, 3), np.uint8),
        "float32 frames": lambda: [f.astype(np.float32) / 255 for f in m.frames],
        "float frames with NaN": lambda: np.full((2, 32, 32, 3), np.nan, np.float32),
        "bool frames": lambda: np.zeros((2, 32, 32, 3), bool),
        "complex frames": lambda: np.zeros((2, 32, 32, 3), complex),
        "object frames": lambda: np.empty((2, 32, 32, 3), object),
        "string frames": lambda: np.full((1, 4, 4, 3), "x"),
        "a gray (H, W) image": lambda: cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY),
        "BGRA frames": lambda: [cv2.cvtColor(f, cv2.COLOR_BGR2BGRA) for f in m.frames],
        "a 5-D array": lambda: np.zeros((1, 2, 8, 8, 3), np.uint8),
        "frames of two sizes": lambda: [frame, frame[: h // 2]],
        "nested lists of ints": lambda: [[[0, 0, 0]] * 8] * 8,
        "a list of None": lambda: [None, None],
        "a ragged nested list": lambda: [[1, 2], [3]],
        "one 9000x16 frame": lambda: np.broadcast_to(np.zeros((1, 1, 1, 3), np.uint8), (1, 9000, 16, 3)),
        "one 16x20000 frame": lambda: np.broadcast_to(np.zeros((1, 1, 1, 3), np.uint8), (1, 16, 20000, 3)),
        "a generator": lambda: (f for f in m.frames),
    }
    name = rng.choice(sorted(options))
    case.note(f"video={name}")
    return options[name]()


def bad_audio_object(case, m):
    """Something that is not usable samples, for LipSync's `audio` and a stream's push()."""
    rng = case.rng
    n = rng.randint(2000, 20000)
    options = {
        "None": lambda: None, "5": lambda: 5, "a dict": lambda: {"samples": m.wav}, "''": lambda: "",
        "True": lambda: True, "NaN samples": lambda: np.full(n, np.nan, np.float32),
        "samples with one inf": lambda: np.concatenate([m.wav[:n], [np.inf]]).astype(np.float32),
        "-inf float64 samples": lambda: np.full(n, -np.inf),
        "string samples": lambda: np.array(["0.1"] * n), "object samples": lambda: np.array([0.1] * 8 + [None]),
        "complex samples": lambda: m.wav[:n].astype(np.complex64), "bool samples": lambda: np.zeros(n, bool),
        "datetime samples": lambda: np.zeros(n, "datetime64[s]"), "bytes": lambda: b"\x00" * n,
        "a list of strings": lambda: ["a"] * 10, "a ragged nested list": lambda: [[0.1, 0.2], [0.3]],
        "a 3-D array": lambda: np.zeros((10, 10, 10), np.float32),
        "a (100, 100) array": lambda: np.zeros((100, 100), np.float32),
        "a 0-d array": lambda: np.float32(0.5), "integers too big for any dtype": lambda: [10 ** 30] * 100,
        "a generator": lambda: (x for x in m.wav[:n]),
    }
    name = rng.choice(sorted(options))
    case.note(f"audio={name}")
    return options[name]()


def bad_fps(case):
    value = case.rng.choice([0, -1, -25.0, float("nan"), float("inf"), "25", None, _big_int(case.rng)[0], 1e30,
                             10 ** 20, [25], complex(25, 0), True, 1001.0, {"fps": 25}, np.float32("nan")])
    case.note(f"fps={show(value)}")
    return value


def bad_sample_rate(case):
    value = case.rng.choice([0, -8000, float("nan"), float("inf"), "16000", None, _big_int(case.rng)[0], 1e30,
                             2 ** 64, 16000.5, True, 999, 10 ** 6, [16000], complex(16000, 0)])
    case.note(f"sample_rate={show(value)}")
    return value


# --- checks ---

def snapshot(*roots):
    """{path: (size, mtime_ns)} of every file (and link) under `roots`."""
    files = {}
    for root in roots:
        for folder, _, names in os.walk(root):
            for name in names:
                path = os.path.join(folder, name)
                try:
                    stat = os.lstat(path)
                except FileNotFoundError:
                    continue
                files[path] = (stat.st_size, stat.st_mtime_ns)
    return files


def changes(before, after, allowed=()):
    """New files (unless a pattern of `allowed` matches), and changed or removed ones."""
    problems = [f"left behind: {p}" for p in sorted(set(after) - set(before))
                if not any(re.search(pattern, p) for pattern in allowed)]
    problems += [f"removed: {p}" for p in sorted(set(before) - set(after))]
    problems += [f"modified: {p}" for p in sorted(set(before) & set(after)) if before[p] != after[p]]
    return problems


def _tail(text, lines=8):
    return "\n    ".join(text.strip().splitlines()[-lines:])


def expect_one_line_error(case, call, failures):
    """call() must raise a TalkingFaceError with a one-line message; else a failure is recorded."""
    try:
        result = call()
    except TalkingFaceError as exc:
        message = str(exc)
        if not message.strip() or "\n" in message or "\r" in message:
            failures.append(f"{case}\n  -> {type(exc).__name__} message is not one line: {message[:600]!r}")
        return exc
    except Exception as exc:  # noqa: BLE001 - any other exception is the finding
        failures.append(f"{case}\n  -> {type(exc).__name__} instead of a TalkingFaceError:\n    "
                        f"{_tail(traceback.format_exc())}")
        return exc
    if hasattr(result, "__next__"):  # push() returns a lazy iterator: the error may come when it is read
        return expect_one_line_error(case, lambda: list(result), failures)
    if hasattr(result, "close"):  # a stream that opened
        result.close()
    shown = type(result).__name__ + (f" of {len(result)}" if hasattr(result, "__len__") else "")
    failures.append(f"{case}\n  -> no error: it returned {shown}")
    return None


def report(failures, total):
    assert not failures, (f"{len(failures)} of {total} generated cases failed (FUZZ_SEED={SEED}, "
                          f"FUZZ_ITERATIONS={ITERATIONS}):\n\n" + "\n\n".join(failures))


# --- fixtures ---

@pytest.fixture(scope="module")
def materials(lipsync_media, tmp_path_factory):
    return Materials(lipsync_media, tmp_path_factory.mktemp("fuzz_materials"))


@pytest.fixture(scope="module")
def lipsync(random_base_checkpoint):
    from talkingface import LipSync
    return LipSync("HyperLipsBase", checkpoint=random_base_checkpoint["path"], dataset="demo", device="cpu")


@pytest.fixture
def sandbox(workdir, monkeypatch):
    """The test's folder as working directory, with a temp folder of its own for the product's
    temp files (tempfile.tempdir): both are watched for anything left behind."""
    systmp = workdir / "systmp"
    systmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(systmp))
    return workdir


# --- the Python API ---

def _bad_checkpoint(case, folder, base_checkpoint):
    """A checkpoint argument no LipSync can load (a file written into `folder`, or a wrong type)."""
    import datetime

    import torch

    rng = case.rng
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"ckpt_{rng.randrange(10 ** 6)}.pth"
    kind = rng.choice(["random_bytes", "zip_magic", "pickle_magic", "head_cut", "tail_cut", "empty", "text", "png",
                       "folder", "foreign_keys", "tensor", "python_object", "other_network", "missing_keys",
                       "wrong_type"])
    size = os.path.getsize(base_checkpoint)
    if kind == "random_bytes":
        path.write_bytes(case.np.bytes(rng.randint(1, 100_000)))
    elif kind == "zip_magic":
        path.write_bytes(b"PK\x03\x04" + case.np.bytes(rng.randint(0, 5000)))
    elif kind == "pickle_magic":
        path.write_bytes(b"\x80\x02" + case.np.bytes(rng.randint(0, 5000)))
    elif kind in ("head_cut", "tail_cut"):
        cut = rng.randint(1, 1 << 20) if kind == "head_cut" else size - rng.randint(1, 1 << 20)
        with open(base_checkpoint, "rb") as src, open(path, "wb") as dst:
            dst.write(src.read(cut))
        kind = f"the random Base checkpoint cut to {cut} of {size} bytes"
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "text":
        path.write_text("state_dict: {}\n")
    elif kind == "png":
        path.write_bytes(_png(np.zeros((8, 8, 3), np.uint8)))
    elif kind == "folder":
        path.mkdir()
    elif kind == "foreign_keys":
        torch.save({"foo": 1, "bar": [1, 2]}, path)
    elif kind == "tensor":
        torch.save(torch.zeros(3), path)
    elif kind == "python_object":
        torch.save({"state_dict": {}, "when": datetime.date(2024, 1, 1)}, path)
    elif kind == "other_network":
        torch.save({"state_dict": {"conv.weight": torch.zeros(4, 3, 3, 3), "fc.bias": torch.zeros(2)}}, path)
    elif kind == "missing_keys":
        state = torch.load(base_checkpoint, map_location="cpu", weights_only=True, mmap=True)["state_dict"]
        keep = rng.sample(sorted(state), k=max(1, len(state) // 10))
        torch.save({"state_dict": {k: state[k].clone() for k in keep}, "model": "HyperLipsBase"}, path)
        kind = f"a Base state dict with {len(keep)} of {len(state)} tensors"
    else:
        value = rng.choice([5, ["a.pth"], {"path": "a.pth"}, 2.5, True])
        case.note(f"checkpoint={value!r}")
        return value
    case.note(f"checkpoint: {kind}")
    return str(path)


def test_lipsync_construction_refuses_bad_checkpoints_and_settings(random_base_checkpoint, sandbox):
    """LipSync(...): a checkpoint file no model can come from, or a bad setting, model, dataset or
    device, is a one-line TalkingFaceError; nothing is written."""
    from talkingface import LipSync

    failures, generated = [], cases("construct", N_CONSTRUCT)
    for case in generated:
        arguments = dict(model="HyperLipsBase", checkpoint=random_base_checkpoint["path"], dataset="demo",
                         device="cpu")
        kind = case.rng.choice(["checkpoint", "checkpoint", "setting", "setting", "unknown_key", "argument"])
        if kind == "checkpoint":
            arguments["checkpoint"] = _bad_checkpoint(case, sandbox / f"c{case.slug}", random_base_checkpoint["path"])
        elif kind == "setting":
            for _ in range(case.rng.randint(1, 3)):
                key, value, _, shown = bad_setting(case.rng, INFERENCE_KEYS + TRAINING_KEYS)
                arguments[key] = value
                case.note(shown)
        elif kind == "unknown_key":
            key = case.rng.choice(["infer_batch_szie", "batchsize", "x" * 300, "Infer_bf16", "é"])
            arguments[key] = 1
            case.note(f"unknown setting {key[:20]!r}")
        else:
            name, value = case.rng.choice([("model", None), ("model", 5), ("model", "HyperLipsBaes"),
                                           ("model", "SyncNet"), ("dataset", None), ("dataset", "MEAD "),
                                           ("dataset", ["demo"]), ("device", 5), ("device", "gpu7"),
                                           ("device", "cuda:99"), ("device", ""), ("device", None)])
            arguments[name] = value
            case.note(f"{name}={value!r}")
        if case.drifted(failures):
            continue
        before = snapshot(sandbox)
        expect_one_line_error(case, lambda: LipSync(**arguments), failures)
        failures += [f"{case}\n  -> {p}" for p in changes(before, snapshot(sandbox))]
    report(failures, len(generated))


def test_run_refuses_malformed_inputs(lipsync, materials, sandbox):
    """LipSync.run / LipSync(...): a malformed video or audio (file or in memory), fps,
    sample_rate, output path or setting is a one-line TalkingFaceError, and no output, temp or
    other file is left (the output folder stays empty, the inputs are untouched)."""
    m = materials
    inputs = sandbox / "inputs"
    inputs.mkdir()
    good_video, good_audio = inputs / "face.mp4", inputs / "speech.wav"
    shutil.copy(m.paths["video"], good_video)
    shutil.copy(m.paths["audio"], good_audio)
    out_dir = sandbox / "out"
    out_dir.mkdir()
    failures, generated = [], cases("run", N_RUN)
    for case in generated:
        rng = case.rng
        video = rng.choice([good_video, str(good_video), list(m.frames), np.stack(m.frames)])
        audio = rng.choice([good_audio, str(good_audio), m.wav, (m.wav * 32767).astype(np.int16)])
        output = rng.choice([None, out_dir / "result.mp4", str(out_dir / "result.mp4")])
        kwargs, folder = {}, sandbox / f"case{case.slug}"
        kind = rng.choice(["video_file", "video_file", "audio_file", "audio_file", "video_object", "video_object",
                           "audio_object", "audio_object", "fps", "sample_rate", "setting", "setting",
                           "unknown_setting", "output"])
        if kind == "video_file":
            video = bad_media(case, m, folder, "video")
            video = video if rng.random() < 0.5 else str(video)
        elif kind == "audio_file":
            audio = bad_media(case, m, folder, "audio")
            audio = audio if rng.random() < 0.5 else str(audio)
        elif kind == "video_object":
            video = bad_video_object(case, m)
        elif kind == "audio_object":
            audio = bad_audio_object(case, m)
        elif kind == "fps":
            video, kwargs["fps"] = list(m.frames), bad_fps(case)
        elif kind == "sample_rate":
            audio, kwargs["sample_rate"] = m.wav, bad_sample_rate(case)
        elif kind == "setting":
            for _ in range(rng.randint(1, 2)):
                key, value, _, shown = bad_setting(rng, INFERENCE_KEYS)
                kwargs[key] = value
                case.note(shown)
        elif kind == "unknown_setting":
            key = rng.choice(["infer_batch_szie", "batch", "output_size", "x" * 300, "fps2"])
            kwargs[key] = 4
            case.note(f"unknown setting {key[:20]!r}")
        else:
            output = rng.choice([out_dir / "result.txt", out_dir, good_audio, str(good_video), "",
                                 inputs / "speech.wav" / "result.mp4", out_dir / "result.y4m"])
            if output == str(good_video):  # the video file as its own output
                video = good_video
            case.note(f"output={os.path.relpath(output, sandbox) if str(output) else ''!r}")
        if not case.parts:
            case.note("(no change)")
        case.note(f"video {type(video).__name__}, audio {type(audio).__name__}, output "
                  f"{'None' if output is None else type(output).__name__}")
        if case.drifted(failures):
            continue
        before = snapshot(sandbox)
        if rng.random() < 0.5:
            expect_one_line_error(case, lambda: lipsync.run(video, audio, output, **kwargs), failures)
        else:
            expect_one_line_error(case, lambda: lipsync(video, audio, output, **kwargs), failures)
        failures += [f"{case}\n  -> {p}" for p in changes(before, snapshot(sandbox))]
    report(failures, len(generated))


def test_stream_refuses_malformed_inputs(lipsync, materials, sandbox):
    """LipSync.stream(video) with a malformed avatar or setting, and push() of malformed audio
    chunks into a real stream (then push() after close()): one-line TalkingFaceErrors, no file."""
    m = materials
    good_video = sandbox / "face.mp4"
    shutil.copy(m.paths["video"], good_video)
    failures, total = [], 0
    for case in cases("stream_open", N_STREAM_OPEN):
        total += 1
        kwargs, video = {}, good_video
        kind = case.rng.choice(["video_file", "video_file", "video_object", "fps", "setting"])
        if kind == "video_file":
            video = bad_media(case, m, sandbox / f"open{case.slug}", "video")
        elif kind == "video_object":
            video = bad_video_object(case, m)
        elif kind == "fps":
            video, kwargs["fps"] = list(m.frames), bad_fps(case)
        else:
            key, value, _, shown = bad_setting(case.rng, INFERENCE_KEYS)
            kwargs[key] = value
            case.note(shown)
        if case.drifted(failures):
            continue
        before = snapshot(sandbox)
        expect_one_line_error(case, lambda: lipsync.stream(video, **kwargs), failures)
        failures += [f"{case}\n  -> {p}" for p in changes(before, snapshot(sandbox))]

    pushes = cases("push", N_PUSH)
    if pushes:
        before = snapshot(sandbox)
        with lipsync.stream(good_video, infer_batch_size=1) as stream:
            for case in pushes:
                total += 1
                chunk = bad_audio_object(case, m)
                expect_one_line_error(case, lambda: stream.push(chunk), failures)
            total += 2
            case = Case("push", "close")
            case.note("close() before any audio, then push() of good samples")
            expect_one_line_error(case, stream.close, failures)
            expect_one_line_error(case, lambda: stream.push(m.wav), failures)
        failures += [f"[FUZZ_SEED={SEED} push] -> {p}" for p in changes(before, snapshot(sandbox))]
    report(failures, total)


# --- the web app ---

@pytest.fixture(scope="module")
def app(random_base_checkpoint, tmp_path_factory):
    from talkingface.app import App, ModelChoice
    from talkingface.config import Config

    folder = tmp_path_factory.mktemp("fuzz_app")
    config = Config("HyperLipsBase", "demo", config_dict={"mode": "app", "device": "cpu", "checkpoint_root": "none"})
    return App(config, str(folder / "app"), [ModelChoice("Base", "HyperLipsBase", "demo",
                                                         random_base_checkpoint["path"])])


def _upload(app, rng, source, name=None):
    """`source` copied into the app's upload folder as Gradio does: <upload_dir>/<hash>/<name>."""
    folder = pathlib.Path(app.upload_dir) / ("%040x" % rng.getrandbits(160))
    folder.mkdir(parents=True)
    return str(shutil.copy(source, folder / (name or pathlib.Path(source).name)))


def test_app_generate_reports_malformed_uploads_in_one_line(app, materials, tmp_path, tmp_path_factory, monkeypatch):
    """App.generate with a malformed upload (video, photo or audio), an upload from outside the
    upload folder or a bad batch size: one status line "error: ...", no server path in it, no
    output video, nothing new in the app's folders."""
    m = materials
    systmp = tmp_path / "systmp"
    systmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(systmp))
    monkeypatch.chdir(tmp_path)
    roots = [app.output_dir, str(systmp), str(tmp_path)]
    hidden = {str(REPO_ROOT), os.path.realpath(app.output_dir), app.output_dir, str(tmp_path),
              os.path.realpath(tmp_path), os.path.dirname(app.output_dir), str(tmp_path_factory.getbasetemp()),
              os.path.realpath(tmp_path_factory.getbasetemp())}
    failures, generated = [], cases("app", N_APP)
    for case in generated:
        rng = case.rng
        video = _upload(app, rng, m.paths["video"], "face.mp4")
        audio = _upload(app, rng, m.paths["audio"], "speech.wav")
        photo, use_photo, batch = None, False, rng.choice([1, 4, 8])
        kind = rng.choice(["video", "video", "photo", "audio", "audio", "outside", "missing", "batch"])
        scratch = tmp_path / f"case{case.slug}"
        if kind == "video":
            video = _upload(app, rng, bad_media(case, m, scratch, "video"))
        elif kind == "photo":
            use_photo = True
            photo = _upload(app, rng, bad_media(case, m, scratch, "photo"))
        elif kind == "audio":
            audio = _upload(app, rng, bad_media(case, m, scratch, "audio"))
        elif kind == "outside":  # a path the request names that was not uploaded
            outside = rng.choice([m.paths["video"], scratch / "face.mp4", "/etc/hostname", REPO_ROOT / "README.md"])
            if outside == scratch / "face.mp4":
                scratch.mkdir()
                shutil.copy(m.paths["video"], outside)
            if rng.random() < 0.5:
                video = str(outside)
            else:
                audio = str(outside)
            case.note(f"a file outside the upload folder: {outside}")
        elif kind == "missing":
            which = rng.choice(["video", "audio", "photo"])
            value = rng.choice([None, ""])
            if which == "video":
                video = value
            elif which == "audio":
                audio = value
            else:
                use_photo, photo = True, value
            case.note(f"{which}={value!r}")
        else:
            batch = rng.choice([0, -3, 5000, 1e30, 10 ** 12])
            case.note(f"batch_size={batch!r}")
        if case.drifted(failures):
            continue
        before = snapshot(*roots)
        try:
            output, status = app.generate(video, photo, use_photo, audio, "Base", "", "", batch, "float32")
        except Exception:  # noqa: BLE001
            failures.append(f"{case}\n  -> generate raised:\n    {_tail(traceback.format_exc())}")
            continue
        problems = []
        if output is not None:
            problems.append(f"an output was returned: {output}")
        if not isinstance(status, str) or not status.startswith("error: ") or "\n" in status or "\r" in status:
            problems.append(f"status is not one 'error: ...' line: {status!r}")
        elif status.startswith("error: unexpected"):
            problems.append(f"an unexpected (non-TalkingFaceError) exception: {status}")
        shown = [path for path in hidden if path and path in str(status)]
        if shown:
            problems.append(f"status shows the server path {shown[0]}: {status!r}")
        problems += changes(before, snapshot(*roots))
        failures += [f"{case}\n  -> {p}" for p in problems]
    report(failures, len(generated))


# --- the CLI ---

LOGS = [r"/cwd/results/demo/HyperLipsBase/run\.log$"]
RUN_RECORDS = LOGS + [r"/cwd/results/demo/HyperLipsBase/run\.json$",
                      r"/cwd/results/demo/HyperLipsBase/tensorboard/events\.out\.tfevents\.[^/]+$"]
# Training marks its checkpoint folder while a run is under way; a run that stopped on an error
# leaves the mark by design (trainer.RUNNING_MARKER: the next run logs that it was interrupted).
TRAIN_RECORDS = RUN_RECORDS + [r"/checkpoints/demo/HyperLipsBase/RUNNING$"]


def _cli_case(mode, case, m, root, demo, checkpoint, expert):
    """(arguments, files the run may add) of a `mode` run on malformed input, set up under root."""
    rng = case.rng
    base = ["--model=HyperLipsBase", "--dataset=demo", f"--mode={mode}", "--device=cpu"]
    inputs = root / "inputs"
    inputs.mkdir()
    if mode in ("infer", "stream"):
        video, audio = inputs / "face.mp4", inputs / "speech.wav"
        shutil.copy(m.paths["video"], video)
        shutil.copy(m.paths["audio"], audio)
        output = "o.mp4" if mode == "infer" else "o.y4m"
        if mode == "stream":
            audio = inputs / "speech.pcm"
            audio.write_bytes(m.pcm)
        settings = {}
        kind = rng.choice(["bad_video", "bad_audio", "bad_setting"])
        if kind == "bad_video":
            video = bad_media(case, m, root / "bad", "video")
        elif kind == "bad_audio" and mode == "infer":
            audio = bad_media(case, m, root / "bad", "audio")
        elif kind == "bad_audio":  # raw PCM: any bytes are samples; too few of them are the mistake
            audio = root / "bad" / "short.pcm"
            audio.parent.mkdir()
            audio.write_bytes(m.pcm[:2 * rng.randint(0, 1279) + rng.randint(0, 1)])
            case.note(f"audio: {audio.stat().st_size} bytes of PCM (under 0.08 s)")
        else:
            key, _, text, shown = bad_setting(rng, INFERENCE_KEYS, cli=True)
            settings[key] = text
            case.note(shown)
        args = base + [f"--video={video}", f"--audio={audio}", f"--output={output}", f"--checkpoint={checkpoint}"]
        return args + [f"--{k}={v}" for k, v in settings.items()], LOGS

    values = dict(demo)
    values.update(checkpoint_root=str(root / "checkpoints"), num_workers=0)
    (root / "checkpoints" / "demo" / "SyncNet").mkdir(parents=True)
    if mode == "evaluate":
        shutil.copytree(demo["preprocessed_root"], root / "pre")
        values.update(preprocessed_root=str(root / "pre"), checkpoint=checkpoint, metrics="[PSNR]",
                      eval_split="val", eval_max_clips=1, eval_max_frames=4, eval_num_sample_videos=0)
        kind = rng.choice(["bad_checkpoint", "bad_checkpoint", "corrupt_data", "bad_setting"])
        if kind == "bad_checkpoint":
            values["checkpoint"] = _bad_checkpoint(case, inputs, checkpoint)
            if not isinstance(values["checkpoint"], str):  # a wrong Python type: the CLI's is a bad path
                values["checkpoint"] = str(inputs / "missing.pth")
                case.note("checkpoint: a path that does not exist")
        elif kind == "corrupt_data":  # what evaluation reads of a clip (it decodes the source video)
            _corrupt_clips(case, root / "pre", ("meta.json", "audio.wav"))
        else:
            key, _, text, shown = bad_setting(rng, TRAINING_KEYS, cli=True)
            values[key] = text
            case.note(shown)
        allowed = RUN_RECORDS
    elif mode == "preprocess":
        data = root / "data"
        values.update(data_root=str(data), preprocessed_root=str(root / "pre"), generate_demo="false")
        for number in range(1, rng.randint(1, 3) + 1):
            clip = bad_media(case, m, inputs, "video")
            target = data / "M000" / "front" / "happy" / "level_1" / f"{number:03d}.mp4"
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(clip, target)
        if rng.random() < 0.3:
            key, _, text, shown = bad_setting(rng, TRAINING_KEYS, cli=True)
            values[key] = text
            case.note(shown)
        allowed = LOGS + [r"/pre/report\.json$"]  # the reasons each video was skipped
    else:  # train
        shutil.copytree(demo["preprocessed_root"], root / "pre")
        values.update(preprocessed_root=str(root / "pre"), max_steps=1, batch_size=1, eval_batch_size=1,
                      evaluate_after_training="false", max_val_batches=1)
        expert_link = root / "checkpoints" / "demo" / "SyncNet" / os.path.basename(expert)
        kind = rng.choice(["corrupt_data", "corrupt_data", "corrupt_expert", "bad_setting"])
        if kind == "corrupt_expert":
            bad = _bad_checkpoint(case, inputs, expert)
            if isinstance(bad, str) and os.path.isfile(bad):
                shutil.move(bad, expert_link)
            else:
                expert_link.write_bytes(case.np.bytes(1000))
                case.note("expert: 1000 random bytes")
        else:
            expert_link.symlink_to(expert)
        if kind == "corrupt_data":
            _corrupt_clips(case, root / "pre")
        elif kind == "bad_setting":
            key, _, text, shown = bad_setting(rng, TRAINING_KEYS, cli=True)
            values[key] = text
            case.note(shown)
        allowed = TRAIN_RECORDS
    return base + [f"--{k}={v}" for k, v in values.items()], allowed


def _corrupt_clips(case, pre, targets=("meta.json", "mel.npy", "frames")):
    """Damage one kind of file (of `targets`) in every preprocessed clip."""
    rng = case.rng
    clips = sorted(p for p in pre.iterdir() if (p / ".done").is_file())
    target = rng.choice(targets)
    how = rng.choice(["random bytes", "cut", "wrong content"])
    for clip in clips:
        if target == "frames":  # every face crop: a cut JPEG still decodes, so random bytes
            for jpg in clip.glob("*.jpg"):
                jpg.write_bytes(case.np.bytes(rng.randint(1, 2000)))
            continue
        path = clip / target
        data = path.read_bytes()
        if how == "random bytes":
            path.write_bytes(case.np.bytes(rng.randint(0, 2000)))
        elif how == "cut":
            path.write_bytes(data[:rng.randint(0, len(data) - 1)])
        elif target == "meta.json":
            path.write_text(rng.choice(["[]", "{}", '{"n_frames": "many", "fps": 25}', "null", '"text"']))
        elif target == "audio.wav":
            path.write_bytes(rng.choice([_png(np.zeros((8, 8, 3), np.uint8)), b"RIFF", b"hello\n"]))
        else:
            np.save(path, rng.choice([np.zeros(3, np.float32), np.zeros((80, 2), np.float32),
                                      np.array(["a"]), np.zeros((2, 2, 2))]))
    case.note(f"every clip's {target}: {'random bytes' if target == 'frames' else how}")


def _cli_params():
    """(mode, seed, index, expect): FUZZ_ITERATIONS new runs per mode, then the REGRESSIONS."""
    params = []
    for mode in CLI_MODES:
        for case in cases(f"cli-{mode}", 1):
            params.append(pytest.param(mode, case.seed, case.index, case.expect, id=f"{mode}-{case.slug}"))
    return params


@pytest.mark.parametrize("mode, seed, index, expect", _cli_params())
def test_cli_mode_refuses_malformed_input(mode, seed, index, expect, materials, demo_base_data,
                                          random_base_checkpoint, _random_expert_file, tmp_path):
    """run_talkingface.py --mode=<mode> on generated malformed input (media, data or checkpoint
    files, or a setting): exit 2, `error: ...` as the last stderr line, no traceback, and no file
    left but the run's log (and the run record / the preprocessing report where a mode writes
    one by design): no output video, no temp file, no checkpoint."""
    case = Case(f"cli-{mode}", index, seed, expect)
    root = tmp_path
    cwd, systmp = root / "cwd", root / "systmp"
    cwd.mkdir()
    systmp.mkdir()
    args, allowed = _cli_case(mode, case, materials, root, demo_base_data, random_base_checkpoint["path"],
                              _random_expert_file)
    drift = []
    assert not case.drifted(drift), drift[0]
    env = dict(os.environ, TMPDIR=str(systmp), OMP_NUM_THREADS="1")
    print(case)  # shown with a failure
    before = snapshot(root)
    proc = subprocess.run([sys.executable, str(REPO_ROOT / "run_talkingface.py"), *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    problems = []
    if proc.returncode != 2:
        problems.append(f"exit status {proc.returncode}, not 2")
    if "Traceback" in proc.stderr:
        problems.append("a traceback was printed")
    if not lines or not lines[-1].startswith("error: "):
        problems.append(f"the last stderr line is not 'error: ...': {lines[-1] if lines else ''!r}")
    problems += changes(before, snapshot(root), allowed)
    assert not problems, (f"{case}\n  " + "\n  ".join(problems) + f"\n  stderr:\n    {_tail(proc.stderr, 12)}"
                          + f"\n  command: run_talkingface.py {' '.join(a[:200] for a in args)}")
