"""HyperLipsBase generator and its lower-half discriminator (official HyperCtrolDiscriminator)."""
from torch import nn

from talkingface.model.audio_driven_talkingface.blocks import ConvBNReLU, ConvLeaky, channels_last, output_head
from talkingface.model.audio_driven_talkingface.decoder import RecurrentDecoder
from talkingface.model.audio_driven_talkingface.hyper import HyperControl
from talkingface.model.audio_driven_talkingface.mobilenetv3 import LRASPP, MobileNetV3LargeEncoder
from talkingface.model.audio_driven_talkingface.region import checked_rect, layer, run_steps
from talkingface.utils.errors import InputError
from talkingface.utils.registry import MODELS
from talkingface.model.abstract_talkingface import AbstractTalkingFace


def frames_to_batch(x, time_dim):
    """Fold time into the batch, time-major (frame t of sample b -> row t*B + b)."""
    x = x.movedim(time_dim, 0)
    return x.reshape(x.shape[0] * x.shape[1], *x.shape[2:])


def batch_to_frames(x, batch_size):
    """Inverse of frames_to_batch for an (T*B, C, H, W) output: -> (B, C, T, H, W)."""
    return x.view(-1, batch_size, *x.shape[1:]).permute(1, 2, 0, 3, 4).contiguous()


@MODELS.register("HyperLipsBase")
class HyperLipsBase(AbstractTalkingFace):
    """Audio-driven lip generator at 128x128 (29,716,503 parameters).

    forward(audio, face):
      4-D: audio (N,1,80,16), face (N,6,H,W) -> (N,3,H,W) in [0,1];
      5-D: audio (B,T,1,80,16), face (B,6,T,H,W) -> (B,3,T,H,W).
    Face channels 0:3 = target frame with the lower half zeroed, 3:6 = reference frame (BGR [0,1]).
    Every frame is generated independently.
    """

    def __init__(self):
        super().__init__()
        self.up_conv = nn.Sequential(
            ConvBNReLU(64, 64, 3, 1, 1, residual=True),
            ConvBNReLU(64, 64, 3, 1, 1, residual=True),
        )
        self.output_block = output_head(64)
        self.face_encoder = MobileNetV3LargeEncoder(in_channels=6)
        self.aspp = LRASPP(960, 128)
        self.hyper_control_net = HyperControl()
        self.decoder = RecurrentDecoder((16, 24, 40, 128), (80, 40, 32, 64))

    def forward(self, audio, face):
        if face.dim() == 5:
            batch_size = face.shape[0]
            out = self.forward_frames(frames_to_batch(audio, 1), frames_to_batch(face, 2))
            return batch_to_frames(out, batch_size)
        return self.forward_frames(audio, face)

    def forward_frames(self, audio, face):
        """audio (N,1,80,16), face (N,6,H,W) -> (N,3,H,W)."""
        # NHWC throughout, training included. The grouped hyper-convolutions hand back NCHW
        # maps: convert them, or the decoder at 128x128 silently runs NCHW.
        face = channels_last(face)
        return self.generate(audio, face, self.encode_face(face))

    def encode_face(self, face):
        """face (N,6,H,W) -> its four encoder features (f1, f2, f3, LRASPP(f4)): they depend on the
        frames only, never on the audio, so inference computes them once per video frame."""
        f1, f2, f3, f4 = self.face_encoder(channels_last(face))
        return f1, f2, f3, self.aspp(f4)

    def generate(self, audio, face, features, region=None):
        """audio (N,1,80,16), face (N,6,H,W), encode_face(face) -> (N,3,H,W).

        region (top, bottom, left, right), half-open pixels of the output: only that rectangle
        is computed and returned, (N,3,bottom-top,right-left), equal to the same rectangle of the
        full output. The 128x128 layers (decoder.decode0, up_conv, output_block: 5 3x3 convs)
        then run on the rectangle plus their 5 px margin, decoder.decode1 (64x64) on what that
        needs plus its own margin; the rest (32x32 and below, and the audio) runs whole.
        """
        gated = self.hyper_control_net(audio, features)
        if region is None:
            x = self.decoder(channels_last(face), *(channels_last(g) for g in gated))
            return self.output_block(self.up_conv(x)).contiguous()
        height, width = face.shape[-2:]
        rect = checked_rect(region, height, width, self)
        if height % 4 or width % 4:
            raise InputError(f"a region is computed for face sizes that are multiples of 4, got {height}x{width}")
        x, steps = self.decoder.region_steps(channels_last(face), *(channels_last(g) for g in gated))
        steps += [layer(m) for m in self.up_conv] + [layer(m) for m in self.output_block]
        return run_steps(steps, x, rect).contiguous()


class BaseDiscriminator(nn.Module):
    """Visual-quality discriminator of Base training (14,113,793 parameters).

    forward(images): (B,3,T,H,W) (or already flattened frames (N,3,H,W)) -> (B*T, 1) probabilities,
    time-major like the generator; only the lower half of each frame is looked at.
    """

    def __init__(self):
        super().__init__()
        self.face_encoder_blocks = nn.ModuleList([
            nn.Sequential(ConvLeaky(3, 32, 7, 1, 3)),
            nn.Sequential(ConvLeaky(32, 64, 5, (1, 2), 2), ConvLeaky(64, 64, 5, 1, 2)),
            nn.Sequential(ConvLeaky(64, 128, 5, 2, 2), ConvLeaky(128, 128, 5, 1, 2)),
            nn.Sequential(ConvLeaky(128, 256, 5, 2, 2), ConvLeaky(256, 256, 5, 1, 2)),
            nn.Sequential(ConvLeaky(256, 512, 3, 2, 1), ConvLeaky(512, 512, 3, 1, 1)),
            nn.Sequential(ConvLeaky(512, 512, 3, 2, 1), ConvLeaky(512, 512, 3, 1, 1)),
            nn.Sequential(ConvLeaky(512, 512, 3, 1, 0), ConvLeaky(512, 512, 1, 1, 0)),
            nn.AdaptiveAvgPool2d(1),
        ])
        self.binary_pred = nn.Sequential(nn.Conv2d(512, 1, kernel_size=1), nn.Sigmoid())

    def forward(self, images):
        if images.dim() == 5:
            images = frames_to_batch(images, 2)
        x = channels_last(images[:, :, images.shape[2] // 2:])
        for block in self.face_encoder_blocks:
            x = block(x)
        return self.binary_pred(x).view(len(x), -1)
