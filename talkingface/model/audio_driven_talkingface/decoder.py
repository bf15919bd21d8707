"""The RobustVideoMatting-style decoder of HyperLips, with its ConvGRUs at zero state.

HyperLips generates every frame independently, so each ConvGRU always starts from h = 0. Then
  r, z = sigmoid(conv_ih([x, 0])),  c = tanh(conv_hh([x, r*0])),  h' = (1-z)*0 + z*c = z * c,
and a conv of [x, 0] equals a conv of x with the x-half of the weight. ZeroStateConvGRU computes
exactly that in ONE convolution (z rows of ih and all rows of hh, x-half input channels), keeping
the original modules so that official checkpoints load. Gradients of the unused weight parts are
zero, as they are in the full computation.
"""
import torch
from torch import nn
from torch.nn import functional as F

from talkingface.model.audio_driven_talkingface.blocks import conv_bn
from talkingface.model.audio_driven_talkingface.region import Step


def upsample2(x, rect=None):
    """Bilinear x2 (align_corners=False), as the decoder's blocks upsample; a region Step's run."""
    return F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False)


class ZeroStateConvGRU(nn.Module):
    """ConvGRU(channels) applied to a zero hidden state: (N,C,H,W) -> (N,C,H,W)."""

    def __init__(self, channels, kernel_size=3, padding=1):
        super().__init__()
        self.channels = channels
        self.padding = padding
        self.ih = nn.Sequential(nn.Conv2d(channels * 2, channels * 2, kernel_size, padding=padding), nn.Sigmoid())
        self.hh = nn.Sequential(nn.Conv2d(channels * 2, channels, kernel_size, padding=padding), nn.Tanh())

    def forward(self, x):
        c = self.channels
        ih, hh = self.ih[0], self.hh[0]
        weight = torch.cat([ih.weight[c:, :c], hh.weight[:, :c]], 0)
        bias = torch.cat([ih.bias[c:], hh.bias], 0)
        z, candidate = F.conv2d(x, weight, bias, padding=self.padding).split(c, dim=1)
        return torch.sigmoid(z) * torch.tanh(candidate)


class BottleneckBlock(nn.Module):
    """Keep the first half of the channels, zero-state GRU on the second half."""

    def __init__(self, channels):
        super().__init__()
        self.channels = channels
        self.gru = ZeroStateConvGRU(channels // 2)

    def forward(self, x):
        a, b = x.split(self.channels // 2, dim=1)
        return torch.cat([a, self.gru(b)], dim=1)


class UpsamplingBlock(nn.Module):
    """bilinear x2 -> cat[x, skip, source] -> Conv3x3-BN-ReLU -> GRU on the second half."""

    def __init__(self, in_channels, skip_channels, src_channels, out_channels):
        super().__init__()
        self.out_channels = out_channels
        self.conv = nn.Sequential(
            nn.Conv2d(in_channels + skip_channels + src_channels, out_channels, 3, 1, 1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(True),
        )
        self.gru = ZeroStateConvGRU(out_channels // 2)

    def forward(self, x, skip, source):
        x = F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False)
        x = x[:, :, :source.shape[2], :source.shape[3]]
        x = conv_bn(self.conv[0], self.conv[1], torch.cat([x, skip, source], dim=1)).relu_()
        a, b = x.split(self.out_channels // 2, dim=1)
        return torch.cat([a, self.gru(b)], dim=1)

    def region_steps(self, skip, source):
        """This block as region Steps (region.run_steps) over the whole input `x`; `skip` and
        `source` are whole maps of twice x's size (no cut of the upsampled x)."""
        def conv(x, rect):
            rows, cols = slice(rect.top, rect.bottom), slice(rect.left, rect.right)
            return conv_bn(self.conv[0], self.conv[1],
                           torch.cat([x, skip[:, :, rows, cols], source[:, :, rows, cols]], dim=1)).relu_()

        def gru(x, rect):
            a, b = x.split(self.out_channels // 2, dim=1)
            return torch.cat([a, self.gru(b)], dim=1)

        return [Step(upsample2, doubles=True), Step(conv, 1), Step(gru, self.gru.padding)]


class OutputBlock(nn.Module):
    """bilinear x2 -> cat[x, source] -> 2x (Conv3x3-BN-ReLU)."""

    def __init__(self, in_channels, src_channels, out_channels):
        super().__init__()
        self.conv = nn.Sequential(
            nn.Conv2d(in_channels + src_channels, out_channels, 3, 1, 1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(True),
            nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(True),
        )

    def forward(self, x, source):
        x = F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False)
        x = x[:, :, :source.shape[2], :source.shape[3]]
        x = conv_bn(self.conv[0], self.conv[1], torch.cat([x, source], dim=1)).relu_()
        return conv_bn(self.conv[3], self.conv[4], x).relu_()

    def region_steps(self, source):
        """This block as region Steps (region.run_steps) over the whole input `x`; `source` is the
        whole map of twice x's size (no cut of the upsampled x)."""
        def first_conv(x, rect):
            window = source[:, :, rect.top:rect.bottom, rect.left:rect.right]
            return conv_bn(self.conv[0], self.conv[1], torch.cat([x, window], dim=1)).relu_()

        def second_conv(x, rect):
            return conv_bn(self.conv[3], self.conv[4], x).relu_()

        return [Step(upsample2, doubles=True), Step(first_conv, 1), Step(second_conv, 1)]


class RecurrentDecoder(nn.Module):
    """Decoder over the 4 (gated) face features plus the source pyramid.

    forward(source (N,6,H,W), f1 (N,16,H/2..), f2 (N,24,H/4..), f3 (N,40,H/8..), f4 (N,128,H/16..))
    -> (N, decoder_channels[3], H, W).
    """

    def __init__(self, feature_channels=(16, 24, 40, 128), decoder_channels=(80, 40, 32, 64), src_channels=6):
        super().__init__()
        self.decode4 = BottleneckBlock(feature_channels[3])
        self.decode3 = UpsamplingBlock(feature_channels[3], feature_channels[2], src_channels, decoder_channels[0])
        self.decode2 = UpsamplingBlock(decoder_channels[0], feature_channels[1], src_channels, decoder_channels[1])
        self.decode1 = UpsamplingBlock(decoder_channels[1], feature_channels[0], src_channels, decoder_channels[2])
        self.decode0 = OutputBlock(decoder_channels[2], src_channels, decoder_channels[3])

    @staticmethod
    def source_pyramid(s0):
        """Average-pool the source three times by 2 (ceil mode, like the official AvgPool)."""
        s1 = F.avg_pool2d(s0, 2, 2, ceil_mode=True, count_include_pad=False)
        s2 = F.avg_pool2d(s1, 2, 2, ceil_mode=True, count_include_pad=False)
        s3 = F.avg_pool2d(s2, 2, 2, ceil_mode=True, count_include_pad=False)
        return s1, s2, s3

    def forward(self, s0, f1, f2, f3, f4):
        s1, s2, s3 = self.source_pyramid(s0)
        x = self.decode4(f4)
        x = self.decode3(x, f3, s3)
        x = self.decode2(x, f2, s2)
        x = self.decode1(x, f1, s1)
        return self.decode0(x, s0)

    def region_steps(self, s0, f1, f2, f3, f4):
        """(x, steps): forward as region.run_steps(steps, x, rect) computes it on a rectangle only.
        decode4-decode2 (32x32 and below) run whole here, giving x; decode1 (64x64) and decode0
        (128x128) become Steps. H and W must be multiples of 4 (no cut of an upsampled map)."""
        s1, s2, s3 = self.source_pyramid(s0)
        x = self.decode4(f4)
        x = self.decode3(x, f3, s3)
        x = self.decode2(x, f2, s2)
        return x, self.decode1.region_steps(f1, s1) + self.decode0.region_steps(s0)
