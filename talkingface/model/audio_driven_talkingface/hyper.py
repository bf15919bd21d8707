"""Audio-conditioned hyper-convolutions of HyperLips.

The audio encoder's four taps each go through a small HyperNet (MLP -> 64-d code); the code of
level i predicts, per sample, the 3x3 kernels and biases of two convolutions that gate the face
feature of level i (the gated output replaces the face feature).
"""
import torch
from torch import nn
from torch.nn import functional as F

from talkingface.model.audio_driven_talkingface.mobilenetv3 import LRASPP, MobileNetV3LargeEncoder

CODE_DIM = 64
LEVEL_CHANNELS = (16, 24, 40, 128)
# Flattened audio tap sizes for a (1,80,16) mel: 16x40x8, 24x20x4, 40x10x2, 128x5x1.
AUDIO_TAP_SIZES = (5120, 1920, 800, 640)


class HyperNetwork(nn.Module):
    """(N, in_dim) -> (N, 64): Linear -> LeakyReLU(0.01) -> Linear(64,64) -> LeakyReLU."""

    def __init__(self, in_dim, code_dim=CODE_DIM):
        super().__init__()
        self.lin1 = nn.Linear(in_dim, code_dim)
        self.lin2 = nn.Linear(code_dim, code_dim)

    def forward(self, x):
        x = F.leaky_relu(self.lin1(x), 0.01, inplace=True)
        return F.leaky_relu(self.lin2(x), 0.01, inplace=True)


class BatchConv2d(nn.Module):
    """A 3x3 convolution whose kernel and bias are predicted per sample from a code.

    forward(x (N,cin,H,W), code (N,64)) -> (N,cout,H,W). All N convolutions run as ONE grouped
    convolution (groups = N) over the batch folded into channels.
    """

    def __init__(self, cin, cout, code_dim=CODE_DIM, kernel_size=3, padding=1):
        super().__init__()
        self.cin, self.cout, self.kernel_size, self.padding = cin, cout, kernel_size, padding
        self.hyperkernel = nn.Linear(code_dim, cout * cin * kernel_size * kernel_size)
        self.hyperbias = nn.Linear(code_dim, cout)

    def forward(self, x, code):
        n, _, h, w = x.shape
        kernel = self.hyperkernel(code).view(n * self.cout, self.cin, self.kernel_size, self.kernel_size)
        bias = self.hyperbias(code).reshape(n * self.cout)
        out = F.conv2d(x.reshape(1, n * self.cin, h, w), kernel, bias, padding=self.padding, groups=n)
        return out.view(n, self.cout, out.shape[-2], out.shape[-1])


class HyperConv(nn.Module):
    """BatchConv2d -> BN -> ReLU -> BatchConv2d -> BN -> Sigmoid, conditioned on a code.

    Children are registered under the official indices (0, 1, 3, 4; 2 and 5 are the activations).
    """

    def __init__(self, channels, code_dim=CODE_DIM):
        super().__init__()
        self.add_module("0", BatchConv2d(channels, channels, code_dim))
        self.add_module("1", nn.BatchNorm2d(channels))
        self.add_module("3", BatchConv2d(channels, channels, code_dim))
        self.add_module("4", nn.BatchNorm2d(channels))

    def forward(self, x, code):
        x = self._modules["1"](self._modules["0"](x, code)).relu_()
        return torch.sigmoid(self._modules["4"](self._modules["3"](x, code)))


class HyperControl(nn.Module):
    """Audio encoder + LRASPP + 4 HyperNets + 4 HyperConvs (the official `hyper_control_net`).

    forward(audio (N,1,80,16), face taps [f1..f4]) -> the 4 gated face features (same shapes).
    """

    def __init__(self):
        super().__init__()
        self.audio_encoder = MobileNetV3LargeEncoder(in_channels=1)
        self.aspp_a = LRASPP(960, 128)
        for level, size in enumerate(AUDIO_TAP_SIZES):
            self.add_module(f"hnet{level}", HyperNetwork(size))
        for level, channels in enumerate(LEVEL_CHANNELS):
            self.add_module(f"dconv_down{level}", HyperConv(channels))

    def audio_codes(self, audio):
        """(N,1,80,16) -> four (N,64) codes, one per level."""
        a1, a2, a3, a4 = self.audio_encoder(audio)
        a4 = self.aspp_a(a4)
        taps = (a1, a2, a3, a4)
        return [self._modules[f"hnet{level}"](tap.flatten(1)) for level, tap in enumerate(taps)]

    def forward(self, audio, face_features):
        codes = self.audio_codes(audio)
        return [self._modules[f"dconv_down{level}"](feature, code)
                for level, (feature, code) in enumerate(zip(face_features, codes))]
