"""run(): config -> preprocess -> train -> evaluate, or evaluate / preprocess / infer alone."""
import logging

import torch

from talkingface.config import Config
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


def preprocess(config):
    """Run the model's preprocessing when its data is missing or stale (rank 0 only)."""
    preprocessor = PREPROCESSORS.get(config["preprocessor"])(config)
    if dist_utils.is_main_process() and preprocessor.is_stale():
        preprocessor.run()
    dist_utils.barrier()
    return preprocessor


def build_trainer(config):
    trainer_class = TRAINERS.get(config["model"], default=TRAINERS.get("Trainer"))
    return trainer_class(config)


def run(model, dataset, config_files=None, config_dict=None):
    config = build_config(model, dataset, config_files, config_dict)
    mode = config["mode"]
    logger.info("%s on %s, mode %s, device %s", model, dataset, mode, config["device"])
    try:
        if mode == "infer":
            from talkingface.inference import run_inference
            return run_inference(config)
        preprocess(config)
        if mode == "preprocess":
            return None
        trainer = build_trainer(config)
        try:
            if mode == "train":
                trainer.fit()
                if not config["evaluate_after_training"]:
                    return None
            else:
                trainer.load_checkpoint(config["checkpoint"], weights_only=True)
            return trainer.evaluate()
        finally:
            trainer.close()
    finally:
        dist_utils.cleanup_distributed()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
