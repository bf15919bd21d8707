"""Where the HR-stage data lives and how it is laid out (hyperlipshr_process.py writes it, the
HR dataset, trainer and evaluation read it; the layout itself is described in that module)."""
import os

from talkingface.utils.checkpoint import stage_checkpoint
from talkingface.utils.fingerprint import checkpoint_fingerprint

FORMAT_VERSION = 2       # bump when the layout or the way it is computed changes
IMAGE_FOLDERS = ("GT_IMG", "GT_MASK", "HYPER_IMG", "HYPER_SKETCH")


def hr_size_root(config):
    """Folder of the HR data of every Base checkpoint, for this dataset and resolution."""
    return os.path.join(config["preprocessed_root"], f"hr_{int(config['img_size'])}")


def resolve_base_checkpoint(config):
    """config["base_checkpoint"] when set, else the latest checkpoint of the Base stage."""
    return stage_checkpoint(config, "HyperLipsBase", config["base_checkpoint"], "base_checkpoint")


def hr_root(config, base_checkpoint=None):
    """Folder of the HR data made by `base_checkpoint` (default: the Base checkpoint the HR stage
    reads, resolve_base_checkpoint) for this dataset and resolution."""
    fingerprint = checkpoint_fingerprint(base_checkpoint or resolve_base_checkpoint(config))
    return os.path.join(hr_size_root(config), "base_" + fingerprint["sha256"][:12])


def hr_clip_dir(config, clip_id):
    return os.path.join(hr_root(config), clip_id)


def frame_path(clip_dir, folder, k):
    ext = "jpg" if folder == "GT_IMG" else "png"
    return os.path.join(clip_dir, folder, f"{k}.{ext}")
