"""Reduced-width networks for the plumbing tests (resume, DDP, the end-to-end chain), where the
networks' size does not matter: the same modules, layer order, keys and data flow as
the official networks, with fewer channels, so that a Base training step and checkpoint cost a
fraction of the official ones'. The fidelity and gradient checks never use this: they keep the
official sizes.

    import narrow_networks
    narrow_networks.install()       # in the process that builds the networks (a test's child, a rank)

or, in the test's own process:
    narrow_networks.install(monkeypatch)   # undone when the test ends

Every network built after install() is narrow, loaded checkpoints included (a narrow checkpoint
does not load into an official network, nor the other way round: load() names the wrong shapes).
"""
from torch import nn

from talkingface.model.audio_driven_talkingface import hyper, hyperlipsbase, syncnet
from talkingface.model.audio_driven_talkingface.blocks import ConvBNReLU, ConvLeaky, output_head
from talkingface.model.audio_driven_talkingface.decoder import RecurrentDecoder
from talkingface.model.audio_driven_talkingface.mobilenetv3 import LRASPP, MobileNetV3LargeEncoder

DIVISOR = 8            # SyncNet's and the discriminator's channels (32..512 -> 4..64)
ASPP_CHANNELS = 32     # the official 128: its hyper-convolution alone holds most of Base's parameters
HIGH_RES_CHANNELS = 16  # the official 64 of the 128x128 layers (decode0, up_conv, output head): most of a step
LEVEL_CHANNELS = (16, 24, 40, ASPP_CHANNELS)   # the MobileNetV3 taps (unchanged) and the narrowed ASPP
AUDIO_TAP_SIZES = (5120, 1920, 800, ASPP_CHANNELS * 5)   # the audio ASPP output is 5x1


def _narrow(channels):
    return max(channels // DIVISOR, 4)


def _narrow_layers(layers, first_input):
    """SyncNet's (cin, cout, k, s, p, residual) table with every width but the input's divided."""
    return tuple((first_input if i == 0 else _narrow(cin), _narrow(cout), k, s, p, r)
                 for i, (cin, cout, k, s, p, r) in enumerate(layers))


def _base_init(self):
    """HyperLipsBase.__init__ with narrow high-resolution layers and ASPP."""
    nn.Module.__init__(self)
    self.up_conv = nn.Sequential(
        ConvBNReLU(HIGH_RES_CHANNELS, HIGH_RES_CHANNELS, 3, 1, 1, residual=True),
        ConvBNReLU(HIGH_RES_CHANNELS, HIGH_RES_CHANNELS, 3, 1, 1, residual=True),
    )
    self.output_block = output_head(HIGH_RES_CHANNELS)
    self.face_encoder = MobileNetV3LargeEncoder(in_channels=6)
    self.aspp = LRASPP(960, ASPP_CHANNELS)
    self.hyper_control_net = hyper.HyperControl()
    self.decoder = RecurrentDecoder(LEVEL_CHANNELS, (32, 16, 8, HIGH_RES_CHANNELS))


def _hyper_control_init(self):
    """HyperControl.__init__ for the narrow ASPP (its code nets and hyper-convolutions follow)."""
    nn.Module.__init__(self)
    self.audio_encoder = MobileNetV3LargeEncoder(in_channels=1)
    self.aspp_a = LRASPP(960, ASPP_CHANNELS)
    for level, size in enumerate(AUDIO_TAP_SIZES):
        self.add_module(f"hnet{level}", hyper.HyperNetwork(size))
    for level, channels in enumerate(LEVEL_CHANNELS):
        self.add_module(f"dconv_down{level}", hyper.HyperConv(channels))


def _discriminator_init(self):
    """BaseDiscriminator.__init__ with every width divided (kernels, strides and blocks unchanged)."""
    nn.Module.__init__(self)
    c = _narrow
    self.face_encoder_blocks = nn.ModuleList([
        nn.Sequential(ConvLeaky(3, c(32), 7, 1, 3)),
        nn.Sequential(ConvLeaky(c(32), c(64), 5, (1, 2), 2), ConvLeaky(c(64), c(64), 5, 1, 2)),
        nn.Sequential(ConvLeaky(c(64), c(128), 5, 2, 2), ConvLeaky(c(128), c(128), 5, 1, 2)),
        nn.Sequential(ConvLeaky(c(128), c(256), 5, 2, 2), ConvLeaky(c(256), c(256), 5, 1, 2)),
        nn.Sequential(ConvLeaky(c(256), c(512), 3, 2, 1), ConvLeaky(c(512), c(512), 3, 1, 1)),
        nn.Sequential(ConvLeaky(c(512), c(512), 3, 2, 1), ConvLeaky(c(512), c(512), 3, 1, 1)),
        nn.Sequential(ConvLeaky(c(512), c(512), 3, 1, 0), ConvLeaky(c(512), c(512), 1, 1, 0)),
        nn.AdaptiveAvgPool2d(1),
    ])
    self.binary_pred = nn.Sequential(nn.Conv2d(c(512), 1, kernel_size=1), nn.Sigmoid())


PATCHES = [
    (syncnet, "FACE_LAYERS", _narrow_layers(syncnet.FACE_LAYERS, syncnet.FACE_LAYERS[0][0])),
    (syncnet, "AUDIO_LAYERS", _narrow_layers(syncnet.AUDIO_LAYERS, 1)),
    (hyperlipsbase.HyperLipsBase, "__init__", _base_init),
    (hyper.HyperControl, "__init__", _hyper_control_init),
    (hyperlipsbase.BaseDiscriminator, "__init__", _discriminator_init),
]


def random_checkpoint(name, folder, seed=0):
    """checkpoint_step000000001.pth in `folder` holding a random-init narrow network `name`
    (SyncNet as a Base run's expert, HyperLipsBase for evaluation or HR data); returns its path."""
    import pytest
    import torch

    from talkingface.model import build_network
    from talkingface.utils.checkpoint import checkpoint_path, save_checkpoint_file

    with pytest.MonkeyPatch.context() as patch:
        install(patch)
        torch.manual_seed(seed)
        path = checkpoint_path(str(folder), 1)
        save_checkpoint_file({"state_dict": build_network(name).state_dict(), "model": name, "global_step": 1}, path)
    return path


def install(monkeypatch=None):
    """Make every SyncNet, HyperLipsBase and BaseDiscriminator built from now on narrow: for good
    (a child process), or until the test ends (with pytest's `monkeypatch`)."""
    for owner, name, value in PATCHES:
        if monkeypatch is not None:
            monkeypatch.setattr(owner, name, value)
        else:
            setattr(owner, name, value)
