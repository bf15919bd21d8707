"""Types and ranges of the configuration values, checked when a Config is built (before any work).

A key's type comes from its default in the YAML files (int, float, bool, string, list; a `~`
default is a path or null); SPECS below adds ranges and choices, MODEL_SPECS the per-model ones,
FIXED the values the networks fix (constants, not settings). `check(key, value, default, model)`
returns the value in its type or raises ConfigError.
Every integer has an upper bound (INT_LIMIT, or less where memory or an index sets one), and an
error line shows the value cut to about SHOW_LIMIT characters.
"""
import math
import os
import reprlib

from talkingface.utils.audio import FPS, LEAST_LIVE_LATENCY_MS, SAMPLE_RATE, SYNCNET_T
from talkingface.utils.errors import ConfigError, finite_number

MODES = ("train", "evaluate", "preprocess", "infer", "app", "stream", "export")

_AUTO_BOOL = ("auto", True, False)


# A value shown in an error is cut to about this many characters (a 2 MB value is not echoed).
SHOW_LIMIT = 80
# Lists and mappings are shown a few items and levels deep: one with aliases (YAML `*a`) may
# stand for billions of items.
_SHORT = reprlib.Repr()
_SHORT.maxlevel, _SHORT.maxstring, _SHORT.maxother = 3, SHOW_LIMIT // 2, SHOW_LIMIT // 2
_SHORT.maxlist = _SHORT.maxtuple = _SHORT.maxdict = _SHORT.maxset = _SHORT.maxfrozenset = 6
_SHORT.repr_int = lambda value, level: show_value(value)


def show_value(value):
    """The value as the user wrote it in YAML, on one line of at most about SHOW_LIMIT characters."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, str):
        return show_text(value)
    if isinstance(value, int) and value.bit_length() > 3 * SHOW_LIMIT:   # str() refuses > 4300 digits
        return f"an integer of about {int(math.log10(abs(value))) + 1} digits"
    text = _SHORT.repr(value) if isinstance(value, (list, tuple, dict, set, frozenset)) else str(value)
    text = text.replace("\r", "\\r").replace("\n", "\\n")
    return text if len(text) <= SHOW_LIMIT else text[:SHOW_LIMIT] + "…"


def show_text(text, limit=SHOW_LIMIT):
    """A string quoted as in Python (one line: newlines as \\n), cut to about `limit` characters."""
    if len(text) <= limit and len(repr(text)) <= limit + 2:
        return repr(text)
    head = text[:limit]
    while len(repr(head)) > limit + 2:  # escapes (\\n, \\x00) make the quoted text longer
        head = head[:-1]
    quoted = repr(head)
    return f"{quoted[:-1]}…{quoted[-1]} ({len(text)} characters)"


def show_path(path, limit=200):
    """A file name as given, on one line; a longer one keeps its start and its end."""
    text = os.fsdecode(path) if isinstance(path, (bytes, os.PathLike)) else str(path)
    text = text.replace("\r", "\\r").replace("\n", "\\n")
    if len(text) <= limit:
        return text
    return f"{text[:limit // 2]}…{text[-limit // 4:]} ({len(text)} characters)"


class Spec:
    """One kind of value; `expects` completes "<key> must be ..." in the error line."""

    expects = "a value"

    def convert(self, value):
        """The value in this type, or None when it does not fit."""
        raise NotImplementedError

    def check(self, key, value):
        """`key` may name the owner too ("img_size of HyperLipsHR")."""
        converted = self.convert(value)
        if converted is None:
            raise ConfigError(f"{key} must be {self.expects} (got {show_value(value)})")
        return converted


# The default bounds of an integer setting: the C int that OpenCV, ffmpeg and array indices take.
# Nothing a setting counts (steps, frames, pixels, clips) comes near it; a bigger value is a typo
# (`1e30`) and would overflow there, or run out of memory, long after the run started.
INT_LIMIT = 2 ** 31 - 1


class Int(Spec):
    """An integer in [low, high]; a float such as 1e3 counts when it is a whole number in range."""

    def __init__(self, low=-INT_LIMIT, high=INT_LIMIT):
        self.low, self.high = low, high
        self.expects = "an integer" + _bounds(low, high, ">=", "<=")

    def convert(self, value):
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            return None
        if (self.low is not None and value < self.low) or (self.high is not None and value > self.high):
            return None
        return value


class Float(Spec):
    def __init__(self, low=None, high=None, low_open=False, high_open=False):
        self.low, self.high, self.low_open, self.high_open = low, high, low_open, high_open
        self.expects = "a number" + _bounds(low, high, ">" if low_open else ">=", "<" if high_open else "<=")

    def convert(self, value):
        value = finite_number(value)
        if value is None:
            return None
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return None
        if self.high is not None and (value >= self.high if self.high_open else value > self.high):
            return None
        return value


def _bounds(low, high, low_op, high_op):
    parts = ([f" {low_op} {low}"] if low is not None else []) + ([f" {high_op} {high}"] if high is not None else [])
    return " and".join(parts)


class Bool(Spec):
    expects = "true or false"

    def convert(self, value):
        return value if isinstance(value, bool) else None


class Text(Spec):
    expects = "a string"

    def convert(self, value):
        return value if isinstance(value, str) and value else None


class Path(Spec):
    """A file or folder name; `nullable` allows `~` (meaning: the default place)."""

    def __init__(self, nullable=False):
        self.nullable = nullable
        self.expects = "a path" + (" or ~" if nullable else "")

    def convert(self, value):
        if value is None:
            return None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)  # a folder named 2024 is read by YAML as a number
        if isinstance(value, os.PathLike):
            value = os.fspath(value)
        return value if isinstance(value, str) and value else None

    def check(self, key, value):
        if value is None and self.nullable:
            return None
        return super().check(key, value)


class Device(Spec):
    """A device name (resolved by configurator.resolve_device), or a torch.device set by code."""

    expects = "auto, cpu, cuda or cuda:N"

    def convert(self, value):
        if isinstance(value, str):
            return value or None
        return value if type(value).__name__ == "device" else None


class Choice(Spec):
    def __init__(self, *values):
        self.values = values
        self.expects = "one of " + ", ".join(show_value(v).strip("'") for v in values)

    def convert(self, value):
        for allowed in self.values:  # True == 1 in Python: compare the types too
            if value == allowed and type(value) is type(allowed):
                return value
        return None


class AutoOr(Spec):
    """`auto`, or a value of another spec."""

    def __init__(self, spec):
        self.spec = spec
        self.expects = "auto or " + spec.expects

    def convert(self, value):
        return "auto" if value == "auto" else self.spec.convert(value)


class ListOf(Spec):
    def __init__(self, item, length=None):
        self.item, self.length = item, length
        self.expects = (f"a list of {length} values, each " if length else "a list of values, each ") + item.expects

    def convert(self, value):
        if not isinstance(value, list) or (self.length is not None and len(value) != self.length):
            return None
        items = [self.item.convert(v) for v in value]
        return None if any(v is None for v in items) else items


class SplitFiles(Spec):
    """`~` (the split is drawn), or split names (train, val, test) mapped to the files listing their clips."""

    names = ("train", "val", "test")
    expects = "~ or a mapping of train, val and/or test to file paths"

    def check(self, key, value):
        if value is None:
            return None
        if not isinstance(value, dict) or not value:
            raise ConfigError(f"{key} must be {self.expects} (got {show_value(value)})")
        unknown = [name for name in value if name not in self.names]
        if unknown:
            raise ConfigError(f"{key} names an unknown split {show_value(unknown[0])}: use train, val or test")
        return {name: Path().check(f"{key}.{name}", path) for name, path in value.items()}


class Fixed(Spec):
    """A value the networks are built for, which cannot change (MODEL_SPECS, FIXED)."""

    def __init__(self, value, why):
        self.value, self.why = value, why

    def check(self, key, value):
        if value == self.value and not isinstance(value, bool):
            return self.value
        raise ConfigError(f"{key} must be {self.value}: {self.why} (got {show_value(value)})")


_POSITIVE = Int(1)
_COUNT = Int(0)
# Frames or windows in one forward pass (the shipped batches are 8 to 64): the activations of 4096
# 128 px frames already fill a GPU's memory, more so at 256 or 512 px; a larger batch cannot fit.
_BATCH = Int(1, 4096)
# Worker processes: each holds its own decoder, detector or model copy; more than 256 only thrash
# the CPU and memory of any one machine.
_WORKERS = Int(0, 256)
# numpy takes seeds below 2**32, and the run seed gets the process rank added (seed + rank): a
# 31-bit seed leaves room for any number of ranks.
_SEED = Int(0, 2 ** 31 - 1)
# An on-disk cache of more than 1 TiB (2**20 MB) for one kind of data is a typo.
_CACHE_MB = Int(1, 2 ** 20)
_WEIGHT = Float(0)
_RATE = Float(0, low_open=True)
_RATIO = Float(0, 1, high_open=True)

# Keys whose default alone does not say enough about the values the code accepts.
SPECS = {
    # run
    "mode": Choice(*MODES),
    "seed": _SEED,
    "device": Device(),
    "log_level": Choice("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"),
    "resume": Choice(*_AUTO_BOOL),
    # training loop
    "max_steps": _COUNT,
    "batch_size": _BATCH,
    "eval_batch_size": _BATCH,
    "num_workers": _WORKERS,
    "log_interval": _POSITIVE,
    "eval_interval": _POSITIVE,
    "checkpoint_interval": _POSITIVE,
    "keep_checkpoints": _POSITIVE,
    "max_val_batches": _POSITIVE,
    "clip_grad_norm": _WEIGHT,
    "amp": Choice(*_AUTO_BOOL),
    "amp_dtype": Choice("bfloat16", "float16"),
    "num_image_samples": _COUNT,
    "health_patience": _POSITIVE,
    # data
    "crop_size": _POSITIVE,
    "face_pad_bottom": _COUNT,
    "box_smooth_window": _POSITIVE,
    "detect_max_side": _POSITIVE,
    "face_min_size": _POSITIVE,
    "face_continuity_iou": Float(0, 1),
    "face_max_gap": _COUNT,
    "min_clip_frames": Int(2 * SYNCNET_T),  # a target window and a disjoint reference window
    "jpeg_quality": Int(1, 100),
    "num_preprocess_workers": _WORKERS,
    "val_ratio": _RATIO,
    "test_ratio": _RATIO,
    "split_seed": Int(0, 2 ** 32 - 1),  # numpy's seed limit
    "split_files": SplitFiles(),
    "data_min_face_px": Float(0),
    "data_min_sharpness": Float(0),
    "data_max_static": Float(0, 1),
    "data_max_silence": Float(0, 1),
    "data_filter": Choice(True, False),
    "data_max_offset": _COUNT,
    "av_offset": Choice("detect", "fix", "off", False),  # YAML reads off as false
    "av_offset_method": Choice("auto", "syncnet_v2", "SyncNet", "loudness"),
    "av_offset_min_confidence": Float(0),
    "samples_per_epoch": _COUNT,
    "val_windows_per_clip": _POSITIVE,
    "demo_num_clips": _POSITIVE,
    "demo_clip_seconds": _RATE,
    "demo_frame_size": _POSITIVE,
    # evaluation
    "metrics": ListOf(Text()),
    "eval_split": Choice("train", "val", "test"),
    "eval_max_clips": _COUNT,
    "eval_max_frames": _COUNT,
    "eval_num_sample_videos": _COUNT,
    "metric_batch_size": _BATCH,
    "sync_vshift": _COUNT,
    # inference
    "infer_batch_size": _BATCH,
    "num_infer_workers": Int(1, 64),  # each loads the networks: more than 64 only thrash one machine
    "reference_frame": Choice("first", "same", "half_clip"),
    "infer_mask_feather": Float(0, 1),
    "infer_landmark_window": _POSITIVE,
    "infer_detect_every": Int(1, 25),
    "infer_bf16": Choice(*_AUTO_BOOL),
    "infer_backend": Choice("torch", "onnxruntime", "openvino"),
    "infer_frame_cache_mb": Int(0, _CACHE_MB.high),  # 0: no cache
    "silence_mode": Choice("generate", "rest", "source"),
    "silence_min_ms": Int(0, 60000),
    "silence_fade_frames": Int(0, 100),
    "face_fade_frames": Int(0, 100),
    "avatar_cache": Choice("off", "on", "refresh", False, True),  # YAML reads off/on as false/true
    "avatar_cache_dir": Path(),
    "engine_cache_dir": Path(),
    "avatar_cache_mb": _CACHE_MB,
    "infer_x264_preset": Choice("ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow",
                                "slower", "veryslow", "placebo"),
    # web app
    "app_host": Text(),
    "app_port": Int(1, 65535),
    "app_concurrency": Int(1, _WORKERS.high),  # generations at once, each a worker
    "app_allow_paths": Choice(*_AUTO_BOOL),
    "app_live": Choice(*_AUTO_BOOL),
    "live_max_latency_ms": Int(LEAST_LIVE_LATENCY_MS, 60000),
    # models
    "learning_rate": _RATE,
    "disc_learning_rate": _RATE,
    "adam_betas": ListOf(Float(0, 1, high_open=True), length=2),
    "l1_weight": _WEIGHT,
    "sync_weight": _WEIGHT,
    "gan_weight": _WEIGHT,
    "lip_l1_weight": _WEIGHT,
    "perceptual_weight": _WEIGHT,
    "lip_lpips_weight": _WEIGHT,
    "hr_base_batch_size": _BATCH,
    "health_patience_evals": _POSITIVE,
    "hr_preprocess_workers": AutoOr(_WORKERS),
    "hr_prune_other_bases": Choice(True, False),
}

# Per model, where the networks fix a value (the HR decoder's sizes: RESCALING_BY_SIZE in
# model/audio_driven_talkingface/hyperlipshr.py). img_size stays a key of every model: shared code
# (HR data layout, inference) reads it, and the test of reads needs it defined for each model.
MODEL_SPECS = {
    "SyncNet": {"img_size": Fixed(128, "the SyncNet expert is built for 128 px frames")},
    "HyperLipsBase": {"img_size": Fixed(128, "the Base generator and its SyncNet expert are built for 128 px "
                                              "faces; HyperLipsHR makes 256 or 512")},
    "HyperLipsHR": {"img_size": Choice(128, 256, 512)},
}

# Values the networks fix: constants of the code (utils/audio.py), not settings, so no YAML key.
# A run given one with another value stops with the reason; the value itself is accepted and
# dropped, so a config file that spells it out still runs.
FIXED = {
    "fps": Fixed(FPS, "preprocessing, the audio-to-frame timeline, evaluation and inference are built for 25 fps"),
    "sample_rate": Fixed(SAMPLE_RATE, "the HyperLips mel spectrogram is defined for 16 kHz"),
    "syncnet_T": Fixed(SYNCNET_T, "the SyncNet expert reads windows of 5 frames (15 input channels)"),
}


def spec_for(key, default, model=None):
    """The spec of `key` for `model`; without an explicit one, the type of its YAML default."""
    spec = MODEL_SPECS.get(model, {}).get(key) or SPECS.get(key)
    if spec is not None:
        return spec
    if default is None:
        return Path(nullable=True)
    if isinstance(default, bool):
        return Bool()
    if isinstance(default, int):
        return Int()
    if isinstance(default, float):
        return Float()
    if isinstance(default, list):
        return ListOf(_AnyItem())
    return Path() if key.endswith(("_path", "_root", "_dir", "_checkpoint")) else Text()


class _AnyItem(Spec):
    expects = "a value"

    def convert(self, value):
        return value


def check(key, value, default, model=None):
    """`value` in the type `key` takes (for `model`), or ConfigError naming the key and the value."""
    label = f"{key} of {model}" if key in MODEL_SPECS.get(model, {}) else key
    return spec_for(key, default, model).check(label, value)


def check_fixed(key, value):
    """Whether `key` is one of the FIXED values (then `value` is that value: ConfigError with the
    reason otherwise)."""
    if key not in FIXED:
        return False
    FIXED[key].check(key, value)
    return True
