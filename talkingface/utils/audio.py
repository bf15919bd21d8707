"""Audio I/O and the HyperLips mel spectrogram.

Decoding goes through the ffmpeg binary shipped by imageio-ffmpeg, so any self-contained container
with an audio stream works (wav of any rate and channel count, mp3, the track of an mp4) without a
system ffmpeg; files that point to other files (playlists, concat lists) are refused (utils/ffmpeg.py).
The mel spectrogram is HyperLips' (the Wav2Lip/HyperLips hparams; docs/architecture.md), giving 80 mel
frames per second of 16 kHz audio.
"""

from __future__ import annotations

import functools
import logging
import os
import re
import subprocess
from pathlib import Path

import librosa   # a lazy loader: its resampler loads only when samples at another rate are given
import numpy as np
import soundfile as sf

from talkingface.utils.errors import InputError, finite_number, short_repr
from talkingface.utils.ffmpeg import check_input_file, ffmpeg_exe, input_args, is_refused, refused, stderr_line

logger = logging.getLogger(__name__)

SAMPLE_RATE = 16000
FPS = 25  # every clip and every output video runs at this frame rate
SAMPLES_PER_FRAME = SAMPLE_RATE // FPS  # 640 audio samples per video frame
N_FFT = 800
HOP_SIZE = 200
WIN_SIZE = 800
NUM_MELS = 80
FMIN = 55
FMAX = 7600
PREEMPHASIS = 0.97
MIN_LEVEL_DB = -100.0
REF_LEVEL_DB = 20.0
MAX_ABS_VALUE = 4.0
MEL_FRAMES_PER_SECOND = SAMPLE_RATE / HOP_SIZE  # 80
MEL_CHUNK_LENGTH = 16  # 0.2 s of mel frames per video frame
SYNCNET_T = 5  # frames per lip-sync window: the expert reads 3*T = 15 channels; 0.2 s, one mel chunk


# rematrix_maxval 1 makes the stereo -> mono downmix the plain channel mean (ffmpeg's default
# mixes at 1/sqrt(2) each, 3 dB louder); soxr at 20-bit precision is librosa.load's default
# resampler (soxr_hq), so decoding here gives librosa's samples and the official mels.
_SOXR_OPTIONS = ("-resampler", "soxr", "-precision", "20")


def _decode(path: Path, sr: int, resampler_options) -> subprocess.CompletedProcess:
    cmd = [
        ffmpeg_exe(), "-nostdin", "-hide_banner", "-loglevel", "error",
        *input_args(path), "-map", "0:a:0", "-vn", "-sn", "-dn",
        "-ac", "1", "-rematrix_maxval", "1.0", *resampler_options, "-ar", str(int(sr)),
        "-f", "f32le", "-acodec", "pcm_f32le", "pipe:1",
    ]
    return subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


_AUDIO_STREAM_RE = re.compile(r"Stream #\d+:\d+(?:\[[^\]]*\])?(?:\([^)]*\))?: Audio: ")


def has_audio_stream(path: str | os.PathLike) -> bool:
    """True when ffmpeg finds an audio stream in the file (InputError when it cannot read it)."""
    proc = subprocess.run([ffmpeg_exe(), "-nostdin", "-hide_banner", *input_args(path)],
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    err = proc.stderr.decode("utf-8", "replace")
    if is_refused(err):
        raise refused(path, "Audio source")
    if "Invalid data found" in err or "No such file" in err:
        raise InputError(f"Cannot read audio source {path}: {stderr_line(proc.stderr)}")
    return _AUDIO_STREAM_RE.search(err) is not None


# Several datasets keep a clip's speech beside a silent video: clip01.mp4 + clip01.wav.
SIDECAR_AUDIO_EXTENSIONS = (".wav", ".m4a", ".mp3", ".aac", ".flac")


def sidecar_audio(path: str | os.PathLike) -> str | None:
    """The audio file named like `path` beside it (clip01.mp4 -> clip01.wav, .m4a, .mp3, .aac,
    .flac, in that order; lower or upper case), or None."""
    stem = os.path.splitext(os.fspath(path))[0]
    for ext in SIDECAR_AUDIO_EXTENSIONS:
        for candidate in (stem + ext, stem + ext.upper()):
            if os.path.isfile(candidate) and os.path.normcase(candidate) != os.path.normcase(os.fspath(path)):
                return candidate
    return None


def audio_source_for(path: str | os.PathLike, has_audio: bool | None = None,
                     log_level: int | None = logging.INFO) -> str:
    """The file that holds the audio of `path`: `path` itself when it has an audio stream, else
    its same-named audio file (sidecar_audio; logged at `log_level`, None: not logged), else `path`
    (load_audio of it then says that it has no audio stream). `has_audio`: what a probe of `path`
    already found (saves running ffmpeg)."""
    path = os.fspath(path)
    if has_audio is None:
        try:
            has_audio = has_audio_stream(path)
        except InputError:  # missing or unreadable: load_audio of it says what is wrong
            has_audio = True
    sidecar = None if has_audio else sidecar_audio(path)
    if sidecar is None:
        return path
    if log_level is not None:
        logger.log(log_level, "%s has no audio track: using %s beside it", path, os.path.basename(sidecar))
    return sidecar


def load_audio(path: str | os.PathLike, sr: int = SAMPLE_RATE) -> np.ndarray:
    """Decode the first audio stream of any file to mono float32 at `sr` Hz (1-D).

    Stereo is averaged and resampling uses soxr, like librosa.load, so the samples match it.
    Raises InputError for a missing/empty file, a file without an audio stream, or no samples.
    """
    path = check_input_file(path, "Audio file")
    proc = _decode(path, sr, _SOXR_OPTIONS)
    if is_refused(proc.stderr):
        raise refused(path, "Audio file")
    if proc.returncode != 0 and "matches no streams" not in proc.stderr.decode("utf-8", "replace"):
        retry = _decode(path, sr, ())  # an ffmpeg build without libsoxr: its own resampler
        if retry.returncode == 0:
            proc = retry
    if proc.returncode != 0:
        err = proc.stderr.decode("utf-8", "replace")
        if "matches no streams" in err:
            raise InputError(f"No audio stream in {path}: give a wav/mp3 or a video with sound "
                             f"(or put its audio beside it as {path.stem}.wav)")
        raise InputError(f"Cannot decode audio from {path}: {stderr_line(proc.stderr)}")
    wav = np.frombuffer(proc.stdout, dtype="<f4").astype(np.float32)
    if wav.size == 0:
        raise InputError(f"Audio in {path} is empty (no samples decoded): use a file with sound")
    if not np.all(np.isfinite(wav)):
        raise InputError(f"Audio in {path} decodes to NaN/inf samples: re-encode the file")
    return wav


MIN_SAMPLE_RATE, MAX_SAMPLE_RATE = 1000, 768000


def check_sample_rate(sample_rate) -> int:
    """`sample_rate` as an int in Hz, or a one-line InputError."""
    rate = finite_number(sample_rate)
    if rate is None or not rate.is_integer() or not MIN_SAMPLE_RATE <= rate <= MAX_SAMPLE_RATE:
        raise InputError(f"sample_rate must be a whole number of Hz from {MIN_SAMPLE_RATE} to {MAX_SAMPLE_RATE} "
                         f"(got {short_repr(sample_rate)})")
    return int(rate)


def _pcm_to_float(pcm: np.ndarray) -> np.ndarray:
    """Integer PCM scaled to [-1, 1) as ffmpeg decodes it (int16 / 32768); unsigned is offset binary."""
    half = 2.0 ** (8 * pcm.dtype.itemsize - 1)
    return (pcm.astype(np.float64) - (half if pcm.dtype.kind == "u" else 0.0)) / half


def as_mono_16k(samples, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Audio samples given in memory as the mono float32 16 kHz signal the mel is defined for.

    The one entry for samples (the API's run, its streams, the CLI's stdin stream): integer PCM of
    any width is scaled to [-1, 1) as ffmpeg decodes it (int16 / 32768; unsigned is offset binary,
    as 8-bit wav stores it), floats are taken as they are, (n, channels) or (channels, n) with up
    to 8 channels is averaged, and NaN/inf are refused before any resampling. Empty is allowed
    (a stream's chunk may be); a run checks the duration itself.
    """
    sample_rate = check_sample_rate(sample_rate)
    try:
        wav = np.asarray(samples)
    except (TypeError, ValueError):  # ragged nested lists
        wav = np.asarray(None)
    kind = wav.dtype.kind
    if kind not in "iuf":
        raise InputError(f"audio samples must be an array of numbers (float in [-1, 1] or integer "
                         f"PCM), got {type(samples).__name__} of {wav.dtype} with shape {wav.shape}")
    wav = (_pcm_to_float(wav) if kind in "iu" else wav).astype(np.float32)
    if wav.ndim == 2 and min(wav.shape) <= 8:  # (n, channels) or (channels, n): average them
        wav = wav.mean(axis=int(np.argmin(wav.shape)))
    if wav.ndim != 1:
        raise InputError(f"audio samples must be mono (n,) or (n, channels), got shape {np.shape(samples)}")
    if not np.all(np.isfinite(wav)):
        raise InputError("audio samples contain NaN or inf values")
    if sample_rate != SAMPLE_RATE and wav.size:
        wav = librosa.resample(wav, orig_sr=sample_rate, target_sr=SAMPLE_RATE, res_type="soxr_hq")
    return wav


def save_wav(path: str | os.PathLike, wav: np.ndarray, sr: int = SAMPLE_RATE) -> None:
    """Write mono float audio as 16-bit PCM wav (clipped to [-1, 1], levels kept), atomically."""
    wav = np.asarray(wav, dtype=np.float32)
    if wav.ndim != 1:
        raise InputError(f"save_wav expects mono 1-D audio, got shape {wav.shape}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp{os.getpid()}.wav")
    try:
        sf.write(str(tmp), np.clip(wav, -1.0, 1.0), int(sr), subtype="PCM_16", format="WAV")
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


# Slaney's mel scale (librosa's default, htk=False): linear below 1 kHz, logarithmic above.
_MEL_LINEAR_HZ = 200.0 / 3
_MEL_LOG_HZ = 1000.0
_MEL_LOG_STEP = np.log(6.4) / 27.0


def _hz_to_mel(hz):
    hz = np.asanyarray(hz, dtype=np.float64)
    mel = hz / _MEL_LINEAR_HZ
    log = hz >= _MEL_LOG_HZ
    return np.where(log, _MEL_LOG_HZ / _MEL_LINEAR_HZ + np.log(np.maximum(hz, 1e-300) / _MEL_LOG_HZ) / _MEL_LOG_STEP,
                    mel)


def _mel_to_hz(mel):
    mel = np.asanyarray(mel, dtype=np.float64)
    log = mel >= _MEL_LOG_HZ / _MEL_LINEAR_HZ
    return np.where(log, _MEL_LOG_HZ * np.exp(_MEL_LOG_STEP * (mel - _MEL_LOG_HZ / _MEL_LINEAR_HZ)),
                    _MEL_LINEAR_HZ * mel)


@functools.lru_cache(maxsize=None)
def _mel_basis() -> np.ndarray:
    """Slaney mel filterbank (80, 401) in float32, the official one (librosa.filters.mel with its
    defaults), built with numpy: importing librosa and scipy.signal costs seconds per process."""
    fft_hz = np.fft.rfftfreq(N_FFT, 1.0 / SAMPLE_RATE)
    mel_hz = _mel_to_hz(np.linspace(_hz_to_mel(FMIN), _hz_to_mel(FMAX), NUM_MELS + 2))
    widths = np.diff(mel_hz)
    ramps = np.subtract.outer(mel_hz, fft_hz)
    basis = np.maximum(0, np.minimum(-ramps[:-2] / widths[:-1, None], ramps[2:] / widths[1:, None]))
    basis = basis.astype(np.float32)  # rounded before and after the norm, as librosa does: the same bits
    basis *= (2.0 / (mel_hz[2:] - mel_hz[:-2]))[:, None]  # Slaney norm: each triangle has unit area
    basis.setflags(write=False)
    return basis


@functools.lru_cache(maxsize=None)
def _hann() -> np.ndarray:
    """The periodic Hann window of the STFT, computed as scipy's get_window("hann", 800) is."""
    return 0.5 + 0.5 * np.cos(np.linspace(-np.pi, np.pi, WIN_SIZE + 1)[:-1])


def melspectrogram(wav: np.ndarray) -> np.ndarray:
    """HyperLips mel spectrogram of 16 kHz mono audio: float32 (80, T), T = len(wav)//200 + 1.

    pre-emphasis 0.97 -> |STFT| (n_fft 800, hop 200, hann 800, centred, constant padding) ->
    Slaney mel (fmin 55, fmax 7600) -> 20*log10(max(1e-5, x)) - 20 -> clip(8*(S+100)/100-4, +-4).
    Integer PCM is scaled as as_mono_16k does. numpy only, in float64 as the official pipeline.
    """
    wav = np.asarray(wav)
    if wav.ndim != 1:
        raise InputError(f"melspectrogram expects mono 1-D audio, got shape {wav.shape}")
    if wav.size == 0:
        raise InputError("Cannot compute a mel spectrogram of empty audio")
    x = _pcm_to_float(wav) if wav.dtype.kind in "iu" else wav.astype(np.float64)
    emphasized = np.empty_like(x)
    emphasized[0] = x[0]
    np.subtract(x[1:], PREEMPHASIS * x[:-1], out=emphasized[1:])
    padded = np.pad(emphasized, N_FFT // 2)  # centred frames, constant (zero) padding
    frames = np.lib.stride_tricks.sliding_window_view(padded, N_FFT)[::HOP_SIZE]
    magnitude = np.abs(np.fft.rfft(frames * _hann(), axis=1)).T
    mel = np.dot(_mel_basis(), magnitude)
    min_level = 10.0 ** (MIN_LEVEL_DB / 20.0)  # 1e-5
    db = 20.0 * np.log10(np.maximum(min_level, mel)) - REF_LEVEL_DB
    normalized = (2 * MAX_ABS_VALUE) * ((db - MIN_LEVEL_DB) / (-MIN_LEVEL_DB)) - MAX_ABS_VALUE
    return np.clip(normalized, -MAX_ABS_VALUE, MAX_ABS_VALUE).astype(np.float32)


def mel_start(frame: int, fps: float = FPS) -> int:
    """First mel column of video frame `frame`: int(80*frame/fps) (one rule for training, evaluation and inference)."""
    return int(MEL_FRAMES_PER_SECOND * frame / fps)


def mel_chunk(mel: np.ndarray, frame: int, fps: float = FPS,
              length: int = MEL_CHUNK_LENGTH) -> np.ndarray:
    """The (80, length) mel window of video frame `frame`.

    Starts at int(80*frame/fps); a window that would run past the end is right-aligned (the last
    `length` columns). A mel shorter than `length` is padded on the right with silence (-4).
    """
    mel = np.asarray(mel)
    if mel.ndim != 2:
        raise InputError(f"mel must be 2-D (80, T), got shape {mel.shape}")
    if frame < 0:
        raise InputError(f"frame index must be >= 0, got {frame}")
    n_cols = mel.shape[1]
    if n_cols < length:
        pad = np.full((mel.shape[0], length - n_cols), -MAX_ABS_VALUE, dtype=mel.dtype)
        return np.concatenate([mel, pad], axis=1)
    start = min(mel_start(frame, fps), n_cols - length)
    return mel[:, start:start + length]


def samples_needed(frame: int) -> int:
    """Samples of audio that output frame `frame` needs before it can be generated while the audio
    is still arriving: its last mel column j = mel_start + 15 is final once 200 (j + 2) samples are
    in (the centred 800-sample window, and pre-emphasis one sample further back)."""
    return HOP_SIZE * (mel_start(frame) + MEL_CHUNK_LENGTH - 1 + 2)


# The most audio a frame needs after its own time (frame * 640 samples): 3400 samples, 0.2125 s.
LOOKAHEAD_SAMPLES = max(samples_needed(k) - k * SAMPLES_PER_FRAME for k in range(FPS))
# The least latency a live frame can have (ms, 293): its lookahead and two frames more, the one
# arriving and the one rendering.
LEAST_LIVE_LATENCY_MS = -(-1000 * (LOOKAHEAD_SAMPLES + 2 * SAMPLES_PER_FRAME) // SAMPLE_RATE)


def frame_mel_chunks(mel: np.ndarray, n_frames: int, fps: float = FPS,
                     length: int = MEL_CHUNK_LENGTH) -> np.ndarray:
    """Per-frame mel chunks for frames 0..n_frames-1: float32 (n_frames, 80, length)."""
    if n_frames < 0:
        raise InputError(f"n_frames must be >= 0, got {n_frames}")
    mel = np.asarray(mel, dtype=np.float32)
    if n_frames == 0:
        return np.zeros((0, mel.shape[0], length), dtype=np.float32)
    return np.stack([mel_chunk(mel, k, fps, length) for k in range(n_frames)]).astype(np.float32)


def n_video_frames_for_audio(n_samples: int, fps: float = FPS, sr: int = SAMPLE_RATE) -> int:
    """How many video frames at `fps` the audio covers (rounded down, at least 1 for any audio)."""
    if n_samples <= 0:
        return 0
    return max(1, int(n_samples * fps / sr))
