"""HR stage: HRDecoder (x1/x2/x4 sketch-guided decoder), HyperLipsHR, and the HR discriminator."""
from torch import nn

from talkingface.model.audio_driven_talkingface.blocks import (ConvBNReLU, ConvLeaky, UpConvBNReLU, channels_last,
                                                              output_head)
from talkingface.model.audio_driven_talkingface.region import Step, checked_rect, layer, run_steps
from talkingface.utils.errors import ConfigError
from talkingface.utils.registry import MODELS
from talkingface.model.abstract_talkingface import AbstractTalkingFace

RESCALING_BY_SIZE = {128: 1, 256: 2, 512: 4}


def _residual_pair():
    return [ConvBNReLU(64, 64, 3, 1, 1, residual=True), ConvBNReLU(64, 64, 3, 1, 1, residual=True)]


class HRDecoder(AbstractTalkingFace):
    """Sketch-guided high-resolution decoder (133,443 / 170,499 / 281,667 parameters for r = 1/2/4).

    forward(x (N,6,128,128) = [Base face (3), sketch (3)], BGR [0,1]) -> (N,3,128r,128r) in [0,1].
    Fully convolutional: any input size H,W gives (N,3,rH,rW).
    """

    def __init__(self, rescaling=1):
        super().__init__()
        if rescaling not in (1, 2, 4):
            raise ConfigError(f"HRDecoder rescaling must be 1, 2 or 4 (got {rescaling})")
        self.rescaling = rescaling
        self.conv_base = nn.Sequential(
            ConvBNReLU(6, 64, 3, 1, 1),
            ConvBNReLU(64, 64, 3, 1, 1, residual=True),
        )
        if rescaling == 1:
            up = _residual_pair()
        else:
            up = []
            for _ in range(rescaling // 2):
                up += [UpConvBNReLU(64, 64)] + _residual_pair()
        self.up_conv = nn.Sequential(*up)
        self.output_block = output_head(64)

    @property
    def output_size(self):
        return 128 * self.rescaling

    def forward(self, x):
        x = channels_last(x, self.training)
        return self.output_block(self.up_conv(self.conv_base(x))).contiguous()

    def forward_region(self, x, region):
        """forward's (top, bottom, left, right) rectangle (half-open pixels of the (N,3,128r,128r)
        output) and nothing else: each layer runs on the rectangle plus its receptive-field margin
        (5 px at r = 1). Equal to the same rectangle of forward(x) up to float rounding."""
        rect = checked_rect(region, self.rescaling * x.shape[-2], self.rescaling * x.shape[-1], self)
        x = channels_last(x)
        ups = [Step(lambda y, r, m=m: m(y), doubles=True) if isinstance(m, UpConvBNReLU) else layer(m)
               for m in self.up_conv]
        steps = [layer(m) for m in self.conv_base] + ups + [layer(m) for m in self.output_block]
        return run_steps(steps, x, rect).contiguous()


@MODELS.register("HyperLipsHR")
class HyperLipsHR(HRDecoder):
    """The registered HR model: an HRDecoder whose output size is config["img_size"] (128/256/512)."""

    @classmethod
    def from_config(cls, config):
        return cls(RESCALING_BY_SIZE[config["img_size"]])  # a size config/schema.py admits


class HRDiscriminator(nn.Module):
    """HR visual-quality discriminator (official HRDecoder_disc_qual, 1,887,873 parameters).

    forward(images (N,3,H,W), any size) -> (N,1) probabilities.
    """

    def __init__(self):
        super().__init__()
        self.face_encoder_blocks = nn.ModuleList([
            nn.Sequential(ConvLeaky(3, 32, 7, 1, 3)),
            nn.Sequential(ConvLeaky(32, 64, 5, 2, 2), ConvLeaky(64, 64, 5, 1, 2)),
            nn.Sequential(ConvLeaky(64, 128, 5, 2, 2), ConvLeaky(128, 128, 5, 1, 2)),
            nn.Sequential(ConvLeaky(128, 128, 5, 2, 2), ConvLeaky(128, 128, 5, 1, 2)),
            nn.Sequential(ConvLeaky(128, 128, 3, 2, 1), ConvLeaky(128, 128, 3, 1, 1)),
            nn.AdaptiveAvgPool2d(1),
        ])
        self.binary_pred = nn.Sequential(nn.Conv2d(128, 1, kernel_size=1), nn.Sigmoid())

    def forward(self, images):
        x = channels_last(images)
        for block in self.face_encoder_blocks:
            x = block(x)
        return self.binary_pred(x).view(len(x), -1)
