"""--mode=stream: raw PCM s16le, 16 kHz, mono from --audio (- = stdin or a file) -> YUV4MPEG2 to --output
(- = stdout or a .y4m file), through a LipSyncStream (talkingface/inference/stream.py)."""
import logging
import os
import sys
import time

import numpy as np

from talkingface.inference.avatar import AvatarCache
from talkingface.inference.pipeline import LipSyncer
from talkingface.inference.stream import y4m_frame, y4m_header
from talkingface.utils.audio import SAMPLE_RATE
from talkingface.utils.errors import ConfigError, InputError
from talkingface.utils.files import temp_name
from talkingface.utils.video import check_output_path

logger = logging.getLogger(__name__)


def check_stream_output(path, inputs=()):
    """Check, before the model loads, that the y4m output `path` can be written (one-line InputError)."""
    if os.path.splitext(str(path))[1].lower() != ".y4m" and not os.path.isdir(str(path)):
        raise InputError(f"output {path}: --mode=stream writes YUV4MPEG2 video; name the file .y4m "
                         "(or --output=- for stdout)")
    check_output_path(path, inputs, suffixes=(".y4m",))


def run_stream(config, stdin=None, stdout=None):
    """--mode=stream: PCM s16le 16 kHz mono from --audio (- = stdin) -> y4m to --output (- = stdout)."""
    video, audio, output = config["video"], config["audio"], config["output"]
    if not video:
        raise ConfigError("--mode=stream needs --video=PATH (the avatar: a video or an image)")
    if not os.path.isfile(str(video)):
        raise InputError(f"video not found: {video}")
    if not audio:
        raise ConfigError("--mode=stream needs --audio=- (raw PCM s16le, 16 kHz, mono on stdin) or a .pcm file")
    if not output:
        raise ConfigError("--mode=stream needs --output=- (y4m on stdout) or --output=FILE.y4m")
    if audio != "-" and not os.path.isfile(str(audio)):
        raise InputError(f"audio not found: {audio}")
    if output != "-":  # a bad output path fails now, not after the model loaded and the avatar was prepared
        check_stream_output(output, inputs=[video] + ([audio] if audio != "-" else []))
    if config["avatar_cache"] not in (False, "off"):  # an unusable cache folder fails now too
        AvatarCache(config["avatar_cache_dir"], config["avatar_cache_mb"])
    syncer = LipSyncer(config).load()
    stream = syncer.stream(str(video))
    if stream.width % 2 or stream.height % 2:
        stream.close()
        raise InputError(f"y4m 4:2:0 needs an even frame size; the video is {stream.width}x{stream.height}")
    source = (stdin or sys.stdin.buffer) if audio == "-" else open(audio, "rb")
    tmp = None
    if output == "-":
        sink = stdout or sys.stdout.buffer
    else:
        tmp = temp_name(os.path.abspath(output))
        sink = open(tmp, "wb")
    frames, started = 0, time.perf_counter()
    try:
        with stream:
            sink.write(y4m_header(stream.width, stream.height))
            odd = b""
            while True:
                data = source.read1(6400) if hasattr(source, "read1") else source.read(6400)  # 0.2 s at most
                if not data:
                    break
                data, odd = odd + data, b""
                if len(data) % 2:
                    data, odd = data[:-1], data[-1:]
                for frame in stream.push(np.frombuffer(data, dtype="<i2")):
                    sink.write(y4m_frame(frame))
                    frames += 1
                sink.flush()
            for frame in stream.close():
                sink.write(y4m_frame(frame))
                frames += 1
            sink.flush()
        if tmp is not None:
            sink.close()
            os.replace(tmp, output)
            tmp = None
    except BrokenPipeError:  # the reader (ffplay, ffmpeg) went away: the stream ends there
        logger.info("the reader of the output closed it after %d frames", frames)
    finally:
        if source is not stdin and audio != "-":
            source.close()
        if tmp is not None:
            sink.close()
            if os.path.exists(tmp):
                os.remove(tmp)
    logger.info("streamed %d frames (%.2f s of audio) in %.1f s", frames, stream.n_samples / SAMPLE_RATE,
                time.perf_counter() - started)
    return frames
