"""Checkpoint files: atomic writes, safe loads, finding the latest one in a folder."""
import os
import re
import tempfile

import torch

from talkingface.utils.errors import CheckpointError

CHECKPOINT_PATTERN = re.compile(r"checkpoint_step(\d+)\.pth$")


def save_checkpoint_file(state, path):
    """Write `state` so that a reader never sees a half-written file: temp file, fsync, rename."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp_", suffix=".pth", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def load_checkpoint_file(path, map_location="cpu"):
    """Load a checkpoint written by us or by the official code (plain tensors and numbers only)."""
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # truncated or foreign files
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"cannot read checkpoint {path}: {first_line}") from None


def checkpoint_path(folder, step):
    return os.path.join(folder, f"checkpoint_step{step:09d}.pth")


def list_checkpoints(folder):
    """Checkpoints in `folder`, oldest first, as (step, path)."""
    if not os.path.isdir(folder):
        return []
    found = []
    for name in os.listdir(folder):
        match = CHECKPOINT_PATTERN.match(name)
        if match:
            found.append((int(match.group(1)), os.path.join(folder, name)))
    return sorted(found)


def latest_checkpoint(folder):
    """Path of the newest checkpoint in `folder`, or None."""
    found = list_checkpoints(folder)
    return found[-1][1] if found else None


def strip_module_prefix(state_dict):
    """Keys saved under (Distributed)DataParallel start with 'module.'; drop it."""
    return {k[len("module."):] if k.startswith("module.") else k: v for k, v in state_dict.items()}


def stage_checkpoint(config, model, explicit=None, option="checkpoint"):
    """The checkpoint a stage reads: `explicit` (which must exist) when set, else the newest one
    that `model` wrote for this dataset (checkpoints/<dataset>/<model>/). A missing one is a
    one-line error naming the command that makes it."""
    if explicit:
        if not os.path.isfile(explicit):
            raise CheckpointError(f"checkpoint not found: {explicit} (fix --{option}, or leave it "
                                  f"empty to use the latest {model} checkpoint)")
        return str(explicit)
    dataset = config["dataset"]
    folder = os.path.join(config["checkpoint_root"], dataset, model)
    found = latest_checkpoint(folder)
    if found is None:
        raise CheckpointError(f"no {model} checkpoint in {folder}/: run `python run_talkingface.py "
                              f"--model={model} --dataset={dataset}` first (or pass --{option}=PATH)")
    return found
