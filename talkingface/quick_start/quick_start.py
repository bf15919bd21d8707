"""run(): config -> preprocess -> train -> evaluate, or evaluate / preprocess / infer alone, or the web app."""
import logging

import torch

from talkingface.app import serve
from talkingface.config import Config
from talkingface.evaluator.evaluator import evaluate_checkpoint
from talkingface.inference import run_batch
from talkingface.quick_start.export_mode import run_export
from talkingface.quick_start.infer_mode import run_inference
from talkingface.quick_start.stream_mode import run_stream
from talkingface.utils import distributed as dist_utils
from talkingface.utils.logger import init_logger
from talkingface.utils.registry import PREPROCESSORS, TRAINERS
from talkingface.utils.seed import init_seed

logger = logging.getLogger("talkingface.quick_start")


def build_config(model, dataset, config_files=None, config_dict=None):
    config = Config(model=model, dataset=dataset, config_files=config_files, config_dict=config_dict)
    config["device"] = dist_utils.setup_distributed(config["device"])
    init_seed(config["seed"] + dist_utils.rank(), config["reproducible"])
    init_logger(config["results_dir"], config["log_level"])
    return config


def preprocess(config, name=None):
    """Run the model's preprocessing (or the preprocessor `name`) when its data is missing or stale
    (rank 0 decides; under torchrun every rank then does its share of the videos)."""
    preprocessor = PREPROCESSORS.get(name or config["preprocessor"])(config)
    if dist_utils.broadcast_object(dist_utils.is_main_process() and preprocessor.is_stale()):
        preprocessor.run()
    dist_utils.barrier()
    return preprocessor


def build_trainer(config):
    return TRAINERS.get(config["model"])(config)


def run(model, dataset, config_files=None, config_dict=None):
    config = build_config(model, dataset, config_files, config_dict)
    mode = config["mode"]
    logger.info("%s on %s, mode %s, device %s", model, dataset, mode, config["device"])
    try:
        if mode == "infer":
            return run_batch(config) if config["jobs"] else run_inference(config)
        if mode == "stream":
            return run_stream(config)
        if mode == "app":
            return serve(config)
        if mode == "export":
            return run_export(config)
        if mode == "evaluate" and model in ("HyperLipsBase", "HyperLipsHR"):
            # The clips and their source videos, lip-synced as --mode=infer does: no trainer, no HR data.
            preprocess(config, "HyperLipsBasePreprocessor")
            return evaluate_checkpoint(config)   # every rank scores its share; rank 0 gets the results
        preprocess(config)
        if mode == "preprocess":
            return None
        trainer = build_trainer(config)
        try:
            if mode == "train":
                trainer.fit()
                if not config["evaluate_after_training"]:
                    return None
                return trainer.evaluate()
            path = trainer.load_checkpoint(config["checkpoint"], networks_only=True)
            trainer.write_run_record(evaluated_checkpoint=path, evaluated_step=trainer.global_step)
            return trainer.evaluate(config["eval_split"])
        finally:
            trainer.close()
    finally:
        dist_utils.cleanup_distributed()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
