"""Networks of the toolkit: one constructor, `create`, and one loader, `load` (timm-style).

    from talkingface.model import create, load
    generator = create("HyperLipsBase").network                   # freshly initialised
    hr = create("HyperLipsHR", config).network                     # its size from config["img_size"]
    loaded = load("HRDecoder", "checkpoints/MEAD/HyperLipsHR/checkpoint_step000001000.pth")
    loaded.network, loaded.kind, loaded.size                       # HRDecoder, its 128/256/512 from the keys

Both return a `Network` (the module, its kind, its output size). `load` is the one place that
reads a network file (through utils.checkpoint.load_checkpoint_file); every other loading path
(inference, HR data, the trainers' expert and Base, the app's model list) calls it or `inspect`.
Accepted checkpoints: a path or an already loaded dict, either official (`{"state_dict": ...}`,
keys possibly prefixed with `module.`) or ours (`{"state_dict": main network, "networks":
{"generator": ..., "discriminator": ...}, ...}`), or a bare state dict.
"""
import dataclasses
import os

from torch import nn

from talkingface.model.audio_driven_talkingface.hyperlipsbase import BaseDiscriminator, HyperLipsBase
from talkingface.model.audio_driven_talkingface.hyperlipshr import HRDecoder, HRDiscriminator, HyperLipsHR
from talkingface.model.audio_driven_talkingface.syncnet import SyncNet
from talkingface.model.inputs import BASE_SIZE
from talkingface.utils.checkpoint import load_checkpoint_file, strip_module_prefix
from talkingface.utils.errors import CheckpointError, ConfigError, TalkingFaceError
from talkingface.utils.registry import MODELS

# The one list of network names: what create() builds and load() reads. HyperLipsHR is the
# registered model (utils.registry.MODELS) whose HRDecoder takes its size from config["img_size"].
_CLASSES = {"SyncNet": SyncNet, "HyperLipsBase": HyperLipsBase, "HRDecoder": HRDecoder, "HyperLipsHR": HyperLipsHR,
            "BaseDiscriminator": BaseDiscriminator, "HRDiscriminator": HRDiscriminator}
NETWORK_NAMES = ("SyncNet", "HyperLipsBase", "HRDecoder", "BaseDiscriminator", "HRDiscriminator")
DISCRIMINATORS = ("BaseDiscriminator", "HRDiscriminator")
HR_RESCALING_BY_LAST_UP_INDEX = {1: 1, 2: 2, 5: 4}


@dataclasses.dataclass(frozen=True)
class Network:
    network: nn.Module
    kind: str    # a NETWORK_NAMES entry (HyperLipsHR is an HRDecoder)
    size: int    # side in px of the faces it generates (Base 128, HR 128/256/512); None for the others


def _kind(name):
    return "HRDecoder" if name == "HyperLipsHR" else name


def output_size(network):
    """Side in px of the faces `network` generates: an HR decoder's output_size, else Base's 128."""
    return getattr(network, "output_size", None) or BASE_SIZE


def _describe(network, name):
    kind = _kind(name)
    size = output_size(network) if kind in ("HyperLipsBase", "HRDecoder") else None
    return Network(network, kind, size)


def create(name, config=None, rescaling=None):
    """A freshly initialised network `name` (a NETWORK_NAMES entry or HyperLipsHR). HR size:
    `rescaling` (1, 2, 4) when given, else config["img_size"] (HyperLipsHR), else 128 px."""
    cls = _CLASSES.get(name)
    if cls is None and name in MODELS:  # a model registered elsewhere (docs/developing.md)
        cls = MODELS.get(name)
    if cls is None:
        raise ConfigError(f"unknown network '{name}'; choose one of {', '.join(NETWORK_NAMES + ('HyperLipsHR',))}")
    if issubclass(cls, HRDecoder) and (rescaling is not None or config is None):
        network = cls(rescaling or 1)
    elif config is not None and hasattr(cls, "from_config"):
        network = cls.from_config(config)
    else:
        network = cls()
    return _describe(network, name)


def build_network(name, rescaling=1):
    """create(name, rescaling=...).network: the shorthand the tests and benchmarks use."""
    return create(name, rescaling=rescaling).network


def hr_rescaling(state_dict):
    """1, 2 or 4 for an HRDecoder state dict (from how many blocks its up_conv has), else None."""
    indices = {int(k.split(".")[1]) for k in state_dict if k.startswith("up_conv.")}
    return HR_RESCALING_BY_LAST_UP_INDEX.get(max(indices)) if indices else None


def _state_dict_size(kind, state_dict):
    """The output side in px a state dict of `kind` generates (HRDecoder: from its keys), or None."""
    if kind == "HRDecoder":
        rescaling = hr_rescaling(state_dict)
        return BASE_SIZE * rescaling if rescaling else None
    return BASE_SIZE if kind == "HyperLipsBase" else None


def identify_network(state_dict):
    """What a state dict looks like: a name from NETWORK_NAMES (HRDecoder with its size), or None."""
    keys = set(state_dict)
    if "hyper_control_net.hnet0.lin1.weight" in keys:
        return "HyperLipsBase"
    if "conv_base.0.conv_block.0.weight" in keys:
        size = _state_dict_size("HRDecoder", state_dict)
        return f"HRDecoder ({size} px)" if size else "HRDecoder"
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


def inspect(path):
    """(kind, size) of the main network in the checkpoint file `path`, told by its keys (mapped,
    not read whole), without building it; None when it is not a readable network checkpoint."""
    try:
        if not os.path.isfile(path):  # folders, devices and FIFOs are never read
            return None
        state_dict = extract_state_dict("HRDecoder", load_checkpoint_file(path, mmap=True))
    except Exception:  # an unreadable file: load() says why, when it is picked
        return None
    looks_like = identify_network(state_dict)
    if looks_like is None:
        return None
    kind = looks_like.split(" ")[0]
    return kind, _state_dict_size(kind, state_dict)


def load(name, checkpoint):
    """Network `name` (a NETWORK_NAMES entry, or HyperLipsHR) with the weights of `checkpoint`, in
    eval mode on the CPU, as a Network (module, kind, size).

    `checkpoint`: a path or a loaded dict (official or ours). HRDecoder takes its size (128/256/512)
    from the keys. Any failure is one line: a missing/unreadable file, a checkpoint of another
    network, missing/mismatched keys, or anything torch chokes on (CheckpointError).
    """
    kind = _kind(name)
    if kind not in NETWORK_NAMES:
        raise ConfigError(f"unknown network '{name}'; choose one of {', '.join(NETWORK_NAMES)}")
    source = checkpoint if isinstance(checkpoint, (str, os.PathLike)) else "the given checkpoint"
    try:
        return _load(kind, checkpoint, source)
    except TalkingFaceError:
        raise
    except Exception as exc:  # a foreign file that torch or load_state_dict chokes on
        text = str(exc).strip().splitlines()
        raise CheckpointError(f"cannot load {kind} from {source}: {text[0] if text else type(exc).__name__}") from None


def _load(kind, checkpoint, source):
    if isinstance(checkpoint, (str, os.PathLike)):
        checkpoint = load_checkpoint_file(os.fspath(checkpoint), map_location="cpu")
    state_dict = extract_state_dict(kind, checkpoint)

    looks_like = identify_network(state_dict)
    if looks_like is None or looks_like.split(" ")[0] != kind:
        what = f"a {looks_like} checkpoint" if looks_like else "not a HyperLips network checkpoint"
        raise CheckpointError(f"{source} is {what}, not {kind}: pass a {kind} checkpoint")

    network = create(kind, rescaling=hr_rescaling(state_dict) if kind == "HRDecoder" else None).network
    expected = network.state_dict()
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    wrong_shape = [k for k in expected if k in state_dict and tuple(state_dict[k].shape) != tuple(expected[k].shape)]
    if missing or unexpected or wrong_shape:
        problems = []
        for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong_shape)):
            if keys:
                problems.append(f"{len(keys)} {label} keys (e.g. {keys[0]})")
        raise CheckpointError(f"{source} does not match {kind}: {'; '.join(problems)}")
    network.load_state_dict({k: v.to("cpu") for k, v in state_dict.items()})
    return _describe(network.eval(), kind)


def load_network(name, checkpoint):
    """load(name, checkpoint).network: the shorthand the tests and benchmarks use."""
    return load(name, checkpoint).network
