"""Networks of the toolkit and `load_network`, which reads official or our checkpoints.

    from talkingface.model import load_network
    net = load_network("HyperLipsBase", "checkpoints/MEAD/HyperLipsBase/checkpoint_step000001000.pth")

Accepted checkpoints: a path or an already loaded dict, either official
(`{"state_dict": ...}`, keys possibly prefixed with `module.`) or ours (`{"state_dict": main
network, "networks": {"generator": ..., "discriminator": ...}, ...}`), or a bare state dict.
"""
import os

from talkingface.model.audio_driven_talkingface.hyperlipsbase import BaseDiscriminator, HyperLipsBase
from talkingface.model.audio_driven_talkingface.hyperlipshr import HRDecoder, HRDiscriminator
from talkingface.model.audio_driven_talkingface.syncnet import SyncNet
from talkingface.utils.checkpoint import load_checkpoint_file, strip_module_prefix
from talkingface.utils.errors import CheckpointError, ConfigError

NETWORK_NAMES = ("SyncNet", "HyperLipsBase", "HRDecoder", "BaseDiscriminator", "HRDiscriminator")
DISCRIMINATORS = ("BaseDiscriminator", "HRDiscriminator")
HR_RESCALING_BY_LAST_UP_INDEX = {1: 1, 2: 2, 5: 4}


def build_network(name, rescaling=1):
    """A freshly initialised network by name (`rescaling` only for HRDecoder: 1, 2 or 4)."""
    classes = {"SyncNet": SyncNet, "HyperLipsBase": HyperLipsBase, "BaseDiscriminator": BaseDiscriminator,
               "HRDiscriminator": HRDiscriminator}
    if name == "HRDecoder":
        return HRDecoder(rescaling)
    if name not in classes:
        raise ConfigError(f"unknown network '{name}'; choose one of {', '.join(NETWORK_NAMES)}")
    return classes[name]()


def hr_rescaling(state_dict):
    """1, 2 or 4 for an HRDecoder state dict (from how many blocks its up_conv has), else None."""
    indices = {int(k.split(".")[1]) for k in state_dict if k.startswith("up_conv.")}
    return HR_RESCALING_BY_LAST_UP_INDEX.get(max(indices)) if indices else None


def identify_network(state_dict):
    """What a state dict looks like: a name from NETWORK_NAMES (HRDecoder with its size), or None."""
    keys = set(state_dict)
    if "hyper_control_net.hnet0.lin1.weight" in keys:
        return "HyperLipsBase"
    if "conv_base.0.conv_block.0.weight" in keys:
        rescaling = hr_rescaling(state_dict)
        return f"HRDecoder ({128 * rescaling} px)" if rescaling else "HRDecoder"
    if "face_encoder.0.conv_block.0.weight" in keys and "audio_encoder.0.conv_block.0.weight" in keys:
        return "SyncNet"
    if "face_encoder_blocks.6.0.conv_block.0.weight" in keys:
        return "BaseDiscriminator"
    if "face_encoder_blocks.0.0.conv_block.0.weight" in keys:
        return "HRDiscriminator"
    return None


def _is_state_dict(obj):
    return isinstance(obj, dict) and bool(obj) and all(hasattr(v, "shape") for v in obj.values())


def extract_state_dict(name, checkpoint):
    """The state dict for network `name` inside a loaded checkpoint, `module.` prefixes removed."""
    if not isinstance(checkpoint, dict):
        raise CheckpointError(f"a checkpoint must be a dict, got {type(checkpoint).__name__}")
    networks = checkpoint.get("networks")
    if name in DISCRIMINATORS and isinstance(networks, dict) and "discriminator" in networks:
        state_dict = networks["discriminator"]
    elif "state_dict" in checkpoint:
        state_dict = checkpoint["state_dict"]
    elif _is_state_dict(checkpoint):
        state_dict = checkpoint
    else:
        raise CheckpointError(f"checkpoint has no 'state_dict' (keys: {', '.join(map(str, list(checkpoint)[:6]))})")
    if not _is_state_dict(state_dict):
        raise CheckpointError("the checkpoint's 'state_dict' is empty or not a dict of tensors")
    return strip_module_prefix(state_dict)


def load_network(name, checkpoint):
    """Network `name` (one of NETWORK_NAMES) with the weights of `checkpoint`, in eval mode on the CPU.

    `checkpoint`: a path or a loaded dict (official or ours). HRDecoder takes its size (128/256/512)
    from the keys. Raises CheckpointError (one line) for a missing/unreadable file, a checkpoint
    of another network, or missing/mismatched keys.
    """
    if name not in NETWORK_NAMES:
        raise ConfigError(f"unknown network '{name}'; choose one of {', '.join(NETWORK_NAMES)}")
    source = checkpoint if isinstance(checkpoint, (str, os.PathLike)) else "the given checkpoint"
    if isinstance(checkpoint, (str, os.PathLike)):
        checkpoint = load_checkpoint_file(os.fspath(checkpoint), map_location="cpu")
    state_dict = extract_state_dict(name, checkpoint)

    looks_like = identify_network(state_dict)
    if looks_like is None or looks_like.split(" ")[0] != name:
        what = f"a {looks_like} checkpoint" if looks_like else "not a HyperLips network checkpoint"
        raise CheckpointError(f"{source} is {what}, not {name}: pass a {name} checkpoint")

    rescaling = hr_rescaling(state_dict) if name == "HRDecoder" else 1
    network = build_network(name, rescaling)
    expected = network.state_dict()
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    wrong_shape = [k for k in expected if k in state_dict and tuple(state_dict[k].shape) != tuple(expected[k].shape)]
    if missing or unexpected or wrong_shape:
        problems = []
        for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong_shape)):
            if keys:
                problems.append(f"{len(keys)} {label} keys (e.g. {keys[0]})")
        raise CheckpointError(f"{source} does not match {name}: {'; '.join(problems)}")
    network.load_state_dict({k: v.to("cpu") for k, v in state_dict.items()})
    return network.eval()
