"""The lip-sync expert (official SyncNet_color, 128-px variant)."""
from torch import nn
from torch.nn import functional as F

from talkingface.model.audio_driven_talkingface.blocks import ConvBNReLU, channels_last
from talkingface.utils.audio import SYNCNET_T
from talkingface.utils.registry import MODELS
from talkingface.model.abstract_talkingface import AbstractTalkingFace

# (cin, cout, kernel, stride, padding, residual) per Conv-BN-ReLU block.
FACE_LAYERS = (
    (3 * SYNCNET_T, 32, 7, 1, 3, False),  # the lower halves of T BGR frames on the channels
    (32, 64, 5, (1, 2), 1, False), (64, 64, 3, 1, 1, True), (64, 64, 3, 1, 1, True),
    (64, 128, 3, 2, 1, False), (128, 128, 3, 1, 1, True), (128, 128, 3, 1, 1, True), (128, 128, 3, 1, 1, True),
    (128, 256, 3, 2, 1, False), (256, 256, 3, 1, 1, True), (256, 256, 3, 1, 1, True),
    (256, 512, 3, 2, 1, False), (512, 512, 3, 1, 1, True), (512, 512, 3, 1, 1, True),
    (512, 512, 3, 2, 1, False), (512, 512, 3, 1, 1, True), (512, 512, 3, 1, 1, True),
    (512, 512, 4, 1, 0, False), (512, 512, 1, 1, 0, False),
)
AUDIO_LAYERS = (
    (1, 32, 3, 1, 1, False), (32, 32, 3, 1, 1, True), (32, 32, 3, 1, 1, True),
    (32, 64, 3, (3, 1), 1, False), (64, 64, 3, 1, 1, True), (64, 64, 3, 1, 1, True),
    (64, 128, 3, 3, 1, False), (128, 128, 3, 1, 1, True), (128, 128, 3, 1, 1, True),
    (128, 256, 3, (3, 2), 1, False), (256, 256, 3, 1, 1, True), (256, 256, 3, 1, 1, True),
    (256, 512, 3, 1, 0, False), (512, 512, 1, 1, 0, False),
)


def _encoder(layers):
    return nn.Sequential(*[ConvBNReLU(cin, cout, k, s, p, residual=r) for cin, cout, k, s, p, r in layers])


@MODELS.register("SyncNet")
class SyncNet(AbstractTalkingFace):
    """Lip-sync expert (22,991,744 parameters).

    forward(audio (N,1,80,16), face (N,15,64,128)) -> (audio_embedding (N,512), face_embedding (N,512)),
    both L2-normalised and non-negative, so their dot product (cosine) lies in [0,1].
    Face = lower halves of 5 consecutive 128-px frames stacked on channels (BGR [0,1]).
    """

    def __init__(self):
        super().__init__()
        self.face_encoder = _encoder(FACE_LAYERS)
        self.audio_encoder = _encoder(AUDIO_LAYERS)

    def forward(self, audio, face):
        face_embedding = self.face_encoder(channels_last(face, self.training)).flatten(1)
        audio_embedding = self.audio_encoder(audio).flatten(1)
        return F.normalize(audio_embedding, p=2, dim=1), F.normalize(face_embedding, p=2, dim=1)
