"""Which checkpoints inference uses, and loading them (model.load: one-line errors).

--model=HyperLipsBase: Base weights = --checkpoint, else the latest in checkpoints/<dataset>/HyperLipsBase/.
--model=HyperLipsHR:   HR decoder = --checkpoint, else the latest in checkpoints/<dataset>/HyperLipsHR/;
                       Base weights = the Base checkpoint the HR checkpoint was trained on (it records
                       it), else config["base_checkpoint"], else the latest Base checkpoint
                       (utils.fingerprint.paired_base_checkpoint).
The HR decoder's output size (128/256/512) comes from its checkpoint, never from the config.
"""
import logging

from talkingface.inference.engine import engine_networks
from talkingface.model import load
from talkingface.utils.checkpoint import stage_checkpoint
from talkingface.utils.fingerprint import paired_base_checkpoint
from talkingface.utils.errors import ConfigError

logger = logging.getLogger(__name__)

INFER_MODELS = ("HyperLipsBase", "HyperLipsHR")


def checkpoint_paths(config):
    """(base_path, hr_path or None) for config["model"]."""
    model = config["model"]
    if model not in INFER_MODELS:
        raise ConfigError(f"--mode=infer works with --model=HyperLipsBase or --model=HyperLipsHR, not {model}")
    if model == "HyperLipsBase":
        return stage_checkpoint(config, model, config["checkpoint"]), None
    hr = stage_checkpoint(config, model, config["checkpoint"])
    base, _ = paired_base_checkpoint(config, hr)
    return base, hr


def load_inference_networks(config, device, paths=None):
    """(base, hr or None) networks in eval mode on `device`; `paths`: checkpoint_paths(config) when known."""
    base_path, hr_path = paths or checkpoint_paths(config)
    base = load("HyperLipsBase", base_path).network.to(device)
    logger.info("HyperLipsBase weights: %s", base_path)
    hr = None
    if hr_path is not None:
        loaded = load("HRDecoder", hr_path)
        hr = loaded.network.to(device)
        logger.info("HRDecoder weights: %s (%d px output)", hr_path, loaded.size)
        if config["img_size"] != loaded.size:
            logger.warning("img_size=%s ignored: the HR checkpoint was trained at %d px and runs at that size",
                           config["img_size"], loaded.size)
    if config["infer_backend"] != "torch":  # an inference engine runs them (engine.py)
        return engine_networks(config["infer_backend"], base, hr, base_path, hr_path, config["engine_cache_dir"])
    return base, hr
