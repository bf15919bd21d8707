"""Checkpoint files: atomic writes, safe loads, finding the latest one in a folder."""
import os
import re

import torch

from talkingface.utils.errors import CheckpointError
from talkingface.utils.files import write_atomic

CHECKPOINT_PATTERN = re.compile(r"checkpoint_step(\d+)\.pth$")


def save_checkpoint_file(state, path):
    """Write `state` so that a reader never sees a half-written file: temp file, fsync, rename.
    Temp files that a killed writer left in the folder are removed afterwards (files.py)."""
    write_atomic(path, lambda f: torch.save(state, f), binary=True, sync=True)


def load_checkpoint_file(path, map_location="cpu", mmap=False):
    """Load a checkpoint written by us or by the official code (plain tensors and numbers only);
    `mmap`: map the tensors instead of reading them (key names at little cost; a legacy non-zip
    file cannot be mapped and is read whole)."""
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        if mmap:
            try:
                return torch.load(path, map_location=map_location, weights_only=True, mmap=True)
            except RuntimeError:
                pass
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # truncated or foreign files
        raise CheckpointError(f"cannot read checkpoint {path}: {_load_failure(path, exc)}") from None


def _load_failure(path, exc):
    """Why torch.load refused `path`, in one line, without torch's advice to retry with
    weights_only=False (that would run code from the file, and cannot help a file of another kind)."""
    with open(path, "rb") as f:
        head = f.read(2)
    if head not in (b"PK", b"\x80\x02"):  # torch.save's zip archive, or its legacy pickle
        return ("it is not a PyTorch checkpoint: pass a .pth written by this toolkit or by the official "
                "HyperLips code")
    text = str(exc).strip()
    if "Weights only load failed" in text:
        return ("it holds Python objects besides tensors and numbers (or is not a checkpoint), and such "
                "objects are not loaded: they could run code")
    return text.splitlines()[0] if text else type(exc).__name__


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
