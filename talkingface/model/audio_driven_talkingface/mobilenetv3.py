"""MobileNetV3-Large feature encoder (torchvision key layout `features.N`) and the LR-ASPP head.

HyperLips uses two of these encoders: one on the 6-channel face input (target with its lower
half zeroed + reference) and one on the 1-channel (1,80,16) mel "image". Only the feature stack
is kept; it returns four taps at strides 2, 4, 8 and 16 (the last block group is dilated
instead of strided).
"""
from functools import partial

from torch import nn

# Backbone BN settings of MobileNetV3 (the stem BN keeps the PyTorch default eps 1e-5, momentum 0.1).
_BackboneBN = partial(nn.BatchNorm2d, eps=0.001, momentum=0.01)

# (in, kernel, expanded, out, squeeze-excite, activation, stride, dilation) per inverted residual,
# MobileNetV3-Large with the last group dilated (output stride 16).
LARGE_SETTINGS = (
    (16, 3, 16, 16, False, "RE", 1, 1),
    (16, 3, 64, 24, False, "RE", 2, 1),
    (24, 3, 72, 24, False, "RE", 1, 1),
    (24, 5, 72, 40, True, "RE", 2, 1),
    (40, 5, 120, 40, True, "RE", 1, 1),
    (40, 5, 120, 40, True, "RE", 1, 1),
    (40, 3, 240, 80, False, "HS", 2, 1),
    (80, 3, 200, 80, False, "HS", 1, 1),
    (80, 3, 184, 80, False, "HS", 1, 1),
    (80, 3, 184, 80, False, "HS", 1, 1),
    (80, 3, 480, 112, True, "HS", 1, 1),
    (112, 3, 672, 112, True, "HS", 1, 1),
    (112, 5, 672, 160, True, "HS", 2, 2),
    (160, 5, 960, 160, True, "HS", 1, 2),
    (160, 5, 960, 160, True, "HS", 1, 2),
)
# After these indices of `features` the encoder taps its outputs (f1, f2, f3, f4).
TAP_INDICES = (1, 3, 6, 16)


def _round_to_8(value):
    """Channel rounding of MobileNet: nearest multiple of 8, never more than 10% below `value`."""
    rounded = max(8, int(value + 4) // 8 * 8)
    return rounded + 8 if rounded < 0.9 * value else rounded


def conv_bn_act(cin, cout, kernel_size, stride=1, dilation=1, groups=1, activation=None, norm=_BackboneBN):
    """Conv (no bias) -> BN -> optional activation, as one Sequential (keys .0 conv, .1 bn)."""
    padding = (kernel_size - 1) // 2 * dilation
    layers = [nn.Conv2d(cin, cout, kernel_size, stride, padding, dilation=dilation, groups=groups, bias=False),
              norm(cout)]
    if activation is not None:
        layers.append(activation(inplace=True))
    return nn.Sequential(*layers)


class SqueezeExcite(nn.Module):
    """x * hardsigmoid(fc2(relu(fc1(mean(x))))) with 1x1 convs."""

    def __init__(self, channels, squeeze):
        super().__init__()
        self.fc1 = nn.Conv2d(channels, squeeze, 1)
        self.fc2 = nn.Conv2d(squeeze, channels, 1)

    def forward(self, x):
        scale = x.mean((2, 3), keepdim=True)
        scale = nn.functional.hardsigmoid(self.fc2(self.fc1(scale).relu_()))
        return x * scale


class InvertedResidual(nn.Module):
    """Expand 1x1 -> depthwise kxk -> (SE) -> project 1x1, residual when shapes allow."""

    def __init__(self, cin, kernel, expanded, cout, use_se, activation, stride, dilation):
        super().__init__()
        act = nn.Hardswish if activation == "HS" else nn.ReLU
        layers = []
        if expanded != cin:
            layers.append(conv_bn_act(cin, expanded, 1, activation=act))
        depthwise_stride = 1 if dilation > 1 else stride
        layers.append(conv_bn_act(expanded, expanded, kernel, depthwise_stride, dilation, groups=expanded,
                                  activation=act))
        if use_se:
            layers.append(SqueezeExcite(expanded, _round_to_8(expanded // 4)))
        layers.append(conv_bn_act(expanded, cout, 1))
        self.block = nn.Sequential(*layers)
        self.use_residual = stride == 1 and cin == cout

    def forward(self, x):
        out = self.block(x)
        return out + x if self.use_residual else out


class MobileNetV3LargeEncoder(nn.Module):
    """MobileNetV3-Large features on an `in_channels` input.

    forward(x (N,C,H,W)) -> [f1 (N,16,H/2,W/2), f2 (N,24,H/4,W/4), f3 (N,40,H/8,W/8),
    f4 (N,960,H/16,W/16)] (sizes rounded up for odd inputs).
    """

    def __init__(self, in_channels):
        super().__init__()
        stem = conv_bn_act(in_channels, 16, 3, stride=2, activation=nn.Hardswish, norm=nn.BatchNorm2d)
        blocks = [InvertedResidual(*setting) for setting in LARGE_SETTINGS]
        last = conv_bn_act(160, 960, 1, activation=nn.Hardswish)
        self.features = nn.Sequential(stem, *blocks, last)

    def forward(self, x):
        taps = []
        for index, layer in enumerate(self.features):
            x = layer(x)
            if index in TAP_INDICES:
                taps.append(x)
        return taps


class LRASPP(nn.Module):
    """Lite R-ASPP: BN-ReLU(conv1x1(x)) * sigmoid(conv1x1(global_avg_pool(x))). (N,cin,H,W) -> (N,cout,H,W)."""

    def __init__(self, in_channels, out_channels):
        super().__init__()
        self.aspp1 = nn.Sequential(
            nn.Conv2d(in_channels, out_channels, 1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(True),
        )
        # index 0 is the (parameter-free) pooling in the official layout: keep the key `aspp2.1.weight`.
        self.aspp2 = nn.Sequential(
            nn.AdaptiveAvgPool2d(1),
            nn.Conv2d(in_channels, out_channels, 1, bias=False),
            nn.Sigmoid(),
        )

    def forward(self, x):
        return self.aspp1(x) * self.aspp2(x)
