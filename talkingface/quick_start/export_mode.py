"""--mode=export: the ONNX graphs of --model's networks (model/export.py) written into a folder.

    python run_talkingface.py --model=HyperLipsBase|HyperLipsHR --mode=export [--checkpoint=...] [--output=DIR]

HyperLipsBase: face_encoder.onnx and generator.onnx; HyperLipsHR: those of its Base (as inference
pairs them, inference/networks.py) and hr_decoder_<size>.onnx. Batch axis dynamic. Prints the paths.
"""
import logging
import os

from talkingface.inference.networks import INFER_MODELS, checkpoint_paths
from talkingface.model import load
from talkingface.model.export import export_onnx
from talkingface.utils.errors import ConfigError, InputError
from talkingface.utils.files import probe_writable

logger = logging.getLogger(__name__)


def run_export(config):
    """Export config["model"]'s networks into config["output"] (default results_dir/onnx); {graph: path}."""
    if config["model"] not in INFER_MODELS:
        raise ConfigError("--mode=export works with --model=HyperLipsBase or --model=HyperLipsHR, "
                          f"not {config['model']}")
    base_path, hr_path = checkpoint_paths(config)
    folder = config["output"] or os.path.join(config["results_dir"], "onnx")
    try:
        probe_writable(folder)
    except OSError as exc:
        raise InputError(f"cannot write the ONNX graphs into {folder}: {exc.strerror or exc}") from None
    base = load("HyperLipsBase", base_path).network
    hr = load("HRDecoder", hr_path).network if hr_path is not None else None
    paths = export_onnx(base, hr, folder)
    for path in paths.values():
        print(path)
    logger.info("exported %s to ONNX: %s", config["model"], ", ".join(paths.values()))
    return paths
