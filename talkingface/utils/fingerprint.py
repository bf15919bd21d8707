"""Which checkpoint made what: a checkpoint's fingerprint (path, step, content hash), and the Base
checkpoint an HR checkpoint belongs to (the one whose outputs it was trained on)."""
import hashlib
import logging
import os

from talkingface.utils.checkpoint import CHECKPOINT_PATTERN, load_checkpoint_file, stage_checkpoint
from talkingface.utils.errors import CheckpointError

logger = logging.getLogger(__name__)

_HASHES = {}  # (real path, size, mtime_ns) -> sha256: a file is read once per process


def file_sha256(path):
    stat = os.stat(path)
    key = (os.path.realpath(path), stat.st_size, stat.st_mtime_ns)
    if key not in _HASHES:
        digest = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
        _HASHES[key] = digest.hexdigest()
    return _HASHES[key]


def checkpoint_fingerprint(path):
    """{"path", "step", "sha256"} of a checkpoint file (step from its name, None for other names)."""
    match = CHECKPOINT_PATTERN.search(os.path.basename(path))
    return {"path": os.path.abspath(path), "step": int(match.group(1)) if match else None,
            "sha256": file_sha256(path)}


def recorded_base(hr_path):
    """The Base fingerprint an HR checkpoint records (our HR checkpoints), or None (official ones)."""
    record = load_checkpoint_file(hr_path).get("base_checkpoint")
    return record if isinstance(record, dict) and record.get("sha256") else None


def _describe(fingerprint):
    step = fingerprint.get("step")
    return f"{fingerprint['path']}" + (f" (step {step})" if step is not None else "")


def paired_base_checkpoint(config, hr_path):
    """The Base checkpoint to run under the HR checkpoint `hr_path`, and its fingerprint.

    Default: the Base checkpoint the HR checkpoint records (the one whose outputs made its training
    data), which must still exist with the same content; an explicit --base_checkpoint wins, with
    one warning naming both when it is another one. HR checkpoints without a record (official ones)
    take the explicit or latest Base checkpoint."""
    recorded = recorded_base(hr_path)
    explicit = config["base_checkpoint"]
    if explicit or recorded is None:
        path = stage_checkpoint(config, "HyperLipsBase", explicit, "base_checkpoint")
        fingerprint = checkpoint_fingerprint(path)
        if recorded is not None and fingerprint["sha256"] != recorded["sha256"]:
            logger.warning("HR checkpoint %s was trained on the outputs of Base %s, but --base_checkpoint=%s "
                           "is another one: using the one given", hr_path, _describe(recorded), _describe(fingerprint))
        return path, fingerprint
    path = recorded["path"]
    if not os.path.isfile(path) or file_sha256(path) != recorded["sha256"]:
        raise CheckpointError(f"the Base checkpoint HR checkpoint {hr_path} was trained on, {_describe(recorded)}, "
                              "is gone or was overwritten: pass --base_checkpoint=PATH to run it with another Base")
    logger.info("HyperLipsHR %s runs on the Base checkpoint it was trained on: %s", hr_path, _describe(recorded))
    return path, checkpoint_fingerprint(path)
