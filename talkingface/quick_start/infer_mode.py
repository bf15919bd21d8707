"""--mode=infer: one video (or photo) lip-synced to one audio track, through LipSyncer
(talkingface/inference/pipeline.py); --jobs=CSV runs many (talkingface/inference/batch.py).

    python run_talkingface.py --model=HyperLipsBase|HyperLipsHR --mode=infer \\
        --video=V --audio=A --output=O.mp4 [--checkpoint=...] [--base_checkpoint=...]
"""
import os

from talkingface.inference.pipeline import LipSyncer
from talkingface.utils.errors import ConfigError, InputError


def _required_path(config, key, what):
    value = config[key]
    if not value:
        raise ConfigError(f"--mode=infer needs --{key}=PATH ({what})")
    if not os.path.isfile(str(value)):
        raise InputError(f"{what} not found: {value}")
    return str(value)


def output_path(config, video, audio):
    """--output, or results/<dataset>/<model>/<video>__<audio>.mp4 when not given."""
    if config["output"]:
        return str(config["output"])
    stem = lambda p: os.path.splitext(os.path.basename(p))[0]
    return os.path.join(config["results_dir"], f"{stem(video)}__{stem(audio)}.mp4")


def run_inference(config):
    """Write config["output"]: config["video"] lip-synced to config["audio"]. Returns InferenceResult."""
    video = _required_path(config, "video", "video or image to lip-sync")
    audio = _required_path(config, "audio", "driving audio (wav, mp3 or a video with sound)")
    return LipSyncer(config).run(video, audio, output_path(config, video, audio))
