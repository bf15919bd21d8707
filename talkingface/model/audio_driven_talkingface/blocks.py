"""Small conv blocks shared by the HyperLips networks.

Attribute names (`conv_block`, index 0 = conv, 1 = BN) follow the official checkpoints so that
their state dicts load unchanged.
"""
import torch
from torch import nn
from torch.nn import functional as F


def channels_last(x, keep_nchw_on_cpu=False):
    """`x` in NHWC layout (values unchanged, layout only): oneDNN runs most convs faster on NHWC.
    Where a network's CPU training measured faster in NCHW (SyncNet, HRDecoder), it passes
    keep_nchw_on_cpu=self.training."""
    if keep_nchw_on_cpu and not x.is_cuda:
        return x
    return x.contiguous(memory_format=torch.channels_last)


def conv_bn(conv, bn, x):
    """bn(conv(x)); in eval mode as ONE convolution with the BN folded into its weight and bias.

    Folding saves a full pass over the (large) feature map; the result equals bn(conv(x)) up to
    float rounding (~1e-7 relative). In training mode BN needs the batch statistics, so both run.
    """
    if bn.training or bn.running_var is None:
        return bn(conv(x))
    scale = bn.weight * torch.rsqrt(bn.running_var + bn.eps)
    bias = bn.bias - bn.running_mean * scale
    if conv.bias is not None:
        bias = bias + conv.bias * scale
    if isinstance(conv, nn.ConvTranspose2d):  # weight (in, out/groups, kh, kw)
        weight = conv.weight * scale.view(1, -1, 1, 1)
        return F.conv_transpose2d(x, weight, bias, conv.stride, conv.padding, conv.output_padding,
                                  conv.groups, conv.dilation)
    weight = conv.weight * scale.view(-1, 1, 1, 1)
    return F.conv2d(x, weight, bias, conv.stride, conv.padding, conv.dilation, conv.groups)


class ConvBNReLU(nn.Module):
    """Conv -> BN (-> + input when `residual`) -> ReLU. Shape: (N,cin,H,W) -> (N,cout,H',W')."""

    def __init__(self, cin, cout, kernel_size, stride=1, padding=0, residual=False):
        super().__init__()
        self.conv_block = nn.Sequential(
            nn.Conv2d(cin, cout, kernel_size, stride, padding),
            nn.BatchNorm2d(cout),
        )
        self.residual = residual

    def forward(self, x):
        out = conv_bn(self.conv_block[0], self.conv_block[1], x)
        if self.residual:
            out = out + x
        return out.relu_()


class ConvLeaky(nn.Module):
    """Conv (with bias, no norm) -> LeakyReLU(0.01), the discriminators' block."""

    def __init__(self, cin, cout, kernel_size, stride=1, padding=0):
        super().__init__()
        self.conv_block = nn.Sequential(nn.Conv2d(cin, cout, kernel_size, stride, padding))

    def forward(self, x):
        return nn.functional.leaky_relu(self.conv_block(x), 0.01, inplace=True)


class UpConvBNReLU(nn.Module):
    """ConvTranspose -> BN -> ReLU; with k3 s2 p1 op1 it doubles H and W."""

    def __init__(self, cin, cout, kernel_size=3, stride=2, padding=1, output_padding=1):
        super().__init__()
        self.conv_block = nn.Sequential(
            nn.ConvTranspose2d(cin, cout, kernel_size, stride, padding, output_padding),
            nn.BatchNorm2d(cout),
        )

    def forward(self, x):
        return conv_bn(self.conv_block[0], self.conv_block[1], x).relu_()


def output_head(cin=64):
    """Conv-BN-ReLU cin->32, Conv1x1 32->3, Sigmoid: the image head of Base and HR decoders."""
    return nn.Sequential(
        ConvBNReLU(cin, 32, 3, 1, 1),
        nn.Conv2d(32, 3, kernel_size=1),
        nn.Sigmoid(),
    )
