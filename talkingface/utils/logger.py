"""Console (coloured) and file logging for the "talkingface" logger tree."""
import logging
import os

import colorlog

from talkingface.utils.distributed import is_main_process

FORMAT = "%(asctime)s %(levelname)s %(message)s"
DATE_FORMAT = "%H:%M:%S"


def init_logger(log_dir=None, level="INFO"):
    """Log to the console on the main process and, when `log_dir` is given, to log_dir/run.log."""
    logger = logging.getLogger("talkingface")
    logger.setLevel(level if is_main_process() else "WARNING")
    logger.propagate = False
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
        handler.close()
    console = colorlog.StreamHandler()
    console.setFormatter(colorlog.ColoredFormatter(
        "%(log_color)s" + FORMAT, datefmt=DATE_FORMAT,
        log_colors={"DEBUG": "cyan", "INFO": "green", "WARNING": "yellow", "ERROR": "red"}))
    logger.addHandler(console)
    if log_dir and is_main_process():
        os.makedirs(log_dir, exist_ok=True)
        file_handler = logging.FileHandler(os.path.join(log_dir, "run.log"), encoding="utf-8")
        file_handler.setFormatter(logging.Formatter(FORMAT, datefmt="%Y-%m-%d " + DATE_FORMAT))
        logger.addHandler(file_handler)
    return logger
