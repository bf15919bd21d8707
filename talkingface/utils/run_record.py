"""What a run was, for its checkpoints and results folder: the full resolved settings, the
toolkit's git commit and the versions of the libraries that shape its numbers."""
import datetime
import functools
import importlib.metadata
import math
import os
import platform
import subprocess

import torch

from talkingface.utils import distributed as dist_utils

PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def plain_data(value):
    """`value` as JSON-able plain data, recursively (lists and dicts kept); a non-finite float or
    another object (a device, a path) becomes its text."""
    if isinstance(value, dict):
        return {str(k): plain_data(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain_data(v) for v in value]
    if getattr(value, "shape", None) == () and hasattr(value, "item"):
        value = value.item()      # numpy and torch scalars
    if value is None or type(value) in (bool, int, str):
        return value
    if isinstance(value, bool):
        return bool(value)
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value) if math.isfinite(value) else str(value)
    return str(value)   # str subclasses such as torch.__version__ too: plain types only


def _git(*args):
    try:
        result = subprocess.run(["git", "-C", os.path.dirname(PACKAGE_DIR), *args], capture_output=True,
                                text=True, timeout=20, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.SubprocessError):
        return None
    return result.stdout.strip() if result.returncode == 0 else None


@functools.lru_cache(maxsize=1)
def toolkit_commit():
    """(commit, modified) of the git checkout that holds this package: HEAD and whether tracked
    files differ from it; (None, None) without git or outside a checkout of the toolkit."""
    top = _git("rev-parse", "--show-toplevel")
    if top is None or os.path.realpath(top) != os.path.realpath(os.path.dirname(PACKAGE_DIR)):
        return None, None     # not a checkout, or the package lies inside some other repository
    commit = _git("rev-parse", "HEAD")
    status = _git("status", "--porcelain", "--untracked-files=no")
    return commit, (bool(status) if status is not None else None)


def _version(distribution):
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def library_versions():
    return {"python": platform.python_version(), "torch": str(torch.__version__), "cuda": torch.version.cuda,
            "mediapipe": _version("mediapipe"), "numpy": _version("numpy"),
            "opencv": _version("opencv-contrib-python")}


def run_record(config, **extra):
    """The record of a run with `config`: plain data for run.json and every checkpoint."""
    commit, modified = toolkit_commit()
    record = {"model": config["model"], "dataset": config["dataset"], "mode": config["mode"],
              "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "toolkit_commit": commit, "toolkit_modified": modified, "versions": library_versions(),
              "ranks": dist_utils.world_size()}
    record.update(plain_data(extra))
    record["config"] = plain_data(config.plain())
    return record
