"""Loss networks and loss functions of the trainers.

- bce, sync_probability: the SyncNet expert's loss (SyncNet and Base training);
- VGG19Perceptual, LPIPSVGG: the HR perceptual and lip LPIPS losses, as torchvision/lpips
  layouts so their published weight files load without those packages;
- box_masks, lip_l1, lpips_sized: losses restricted to each sample's lip box;
- relativistic_loss: the HR GAN loss.
"""
import torch
from torch import nn
from torch.nn import functional as F

from talkingface.utils.checkpoint import load_checkpoint_file
from talkingface.utils.errors import CheckpointError


def bce(probabilities, target):
    """Binary cross entropy in float32 outside autocast (BCE is unsafe to autocast on CUDA).
    `target`: a tensor of labels (any shape with as many elements) or one number for all."""
    with torch.autocast(device_type=probabilities.device.type, enabled=False):
        probabilities = probabilities.float().reshape(-1)
        if torch.is_tensor(target):
            target = target.to(probabilities.device, torch.float32).reshape(-1)
        else:
            target = torch.full_like(probabilities, float(target))
        if not torch.isfinite(probabilities).all():  # diverged: a NaN loss the trainer reports in one line
            return torch.full((), float("nan"), device=probabilities.device)
        return F.binary_cross_entropy(probabilities, target)


def sync_probability(audio_embedding, face_embedding):
    """Cosine similarity of the two embeddings: the expert's probability that they are in sync."""
    return F.cosine_similarity(audio_embedding.float(), face_embedding.float(), dim=1)


# torchvision's VGG feature stacks ("M" = max-pool); module indices, hence state-dict keys
# ("features.N.weight"), match torchvision's files so they load without torchvision.
VGG19_LAYERS = [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M",
                512, 512, 512, 512, "M"]
VGG16_LAYERS = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]
VGG19_CONV5_4_END = 35            # features[:35] ends at conv5_4 (the official PerceptualLoss)
LPIPS_TAPS = (4, 9, 16, 23, 30)   # ends of relu1_2, relu2_2, relu3_3, relu4_3, relu5_3 in VGG16
LPIPS_CHANNELS = (64, 128, 256, 512, 512)
LPIPS_MIN_SIDE = 32
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
LPIPS_SHIFT = (-0.030, -0.088, -0.188)
LPIPS_SCALE = (0.458, 0.448, 0.450)


def vgg_features(layers, end):
    """nn.Sequential of torchvision's VGG `features`, cut after `end` modules."""
    modules, channels = [], 3
    for item in layers:
        if item == "M":
            modules.append(nn.MaxPool2d(kernel_size=2, stride=2))
        else:
            modules += [nn.Conv2d(channels, item, kernel_size=3, padding=1), nn.ReLU(inplace=True)]
            channels = item
    return nn.Sequential(*modules[:end])


def load_features(features, path, what):
    """Load the `features.N.*` entries of a torchvision VGG file into `features`."""
    state = load_checkpoint_file(path)
    state = state.get("state_dict", state)
    wanted = {k: v for k, v in state.items()
              if k.startswith("features.") and int(k.split(".")[1]) < len(features)}
    try:
        features.load_state_dict({k[len("features."):]: v for k, v in wanted.items()})
    except RuntimeError as exc:
        raise CheckpointError(f"{path} is not {what} ({str(exc).splitlines()[0]})") from None


def frozen(module):
    module.eval()
    for p in module.parameters():
        p.requires_grad_(False)
    return module


def bgr_to_rgb(images):
    return images.flip(1)


class VGG19Perceptual(nn.Module):
    """L1 between VGG19 conv5_4 features (ImageNet weights) of two BGR [0,1] batches.

    The network sees RGB with ImageNet normalisation, as its weights expect (the official code fed
    BGR [0,1] unnormalised).
    """

    def __init__(self):
        super().__init__()
        self.features = vgg_features(VGG19_LAYERS, VGG19_CONV5_4_END)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))

    def load(self, path):
        load_features(self.features, path, "torchvision's VGG19 (vgg19-dcbb9e9d.pth)")
        return frozen(self)

    def forward(self, generated, target):
        both = (bgr_to_rgb(torch.cat([generated, target])) - self.mean) / self.std
        feats = self.features(both)
        fake, real = feats.chunk(2)
        return F.l1_loss(fake, real)


class LPIPSVGG(nn.Module):
    """LPIPS v0.1 with the VGG16 backbone (as `lpips.LPIPS(net="vgg")`): per-sample distance (N,).

    Inputs BGR [0,1]; they are turned into the RGB [-1,1] the metric is defined on.
    """

    def __init__(self):
        super().__init__()
        self.features = vgg_features(VGG16_LAYERS, LPIPS_TAPS[-1])
        self.lins = nn.ModuleList(nn.Conv2d(c, 1, kernel_size=1, bias=False) for c in LPIPS_CHANNELS)
        self.register_buffer("shift", torch.tensor(LPIPS_SHIFT).view(1, 3, 1, 1))
        self.register_buffer("scale", torch.tensor(LPIPS_SCALE).view(1, 3, 1, 1))

    def load(self, lin_path, vgg16_path):
        load_features(self.features, vgg16_path, "torchvision's VGG16 (vgg16-397923af.pth)")
        state = load_checkpoint_file(lin_path)
        try:  # lpips/weights/v0.1/vgg.pth: lin{i}.model.1.weight
            self.lins.load_state_dict({f"{i}.weight": state[f"lin{i}.model.1.weight"]
                                       for i in range(len(LPIPS_CHANNELS))})
        except (KeyError, RuntimeError) as exc:
            raise CheckpointError(f"{lin_path} is not the LPIPS v0.1 vgg.pth linear-layer file "
                                  f"({str(exc).splitlines()[0]})") from None
        return frozen(self)

    def forward(self, x, y):
        both = (bgr_to_rgb(torch.cat([x, y])) * 2 - 1 - self.shift) / self.scale
        distance, start = 0, 0
        for lin, end in zip(self.lins, LPIPS_TAPS):
            both = self.features[start:end](both)
            start = end
            unit = both / (both.pow(2).sum(dim=1, keepdim=True).sqrt() + 1e-10)
            a, b = unit.chunk(2)
            distance = distance + lin((a - b) ** 2).mean(dim=(2, 3))
        return distance.view(-1)


def box_masks(boxes, size, dtype):
    """(N,4) x1,y1,x2,y2 boxes (x2/y2 exclusive) -> (N,1,size,size) {0,1} masks."""
    coords = torch.arange(size, device=boxes.device)
    x1, y1, x2, y2 = (boxes[:, i].view(-1, 1) for i in range(4))
    inside_x = (coords >= x1) & (coords < x2)
    inside_y = (coords >= y1) & (coords < y2)
    return (inside_y[:, :, None] & inside_x[:, None, :]).unsqueeze(1).to(dtype)


def lip_l1(generated, target, boxes):
    """Mean over samples of the L1 inside each sample's lip box (the official per-sample loop)."""
    masks = box_masks(boxes, generated.shape[-1], generated.dtype)
    per_sample = ((generated - target).abs() * masks).sum(dim=(1, 2, 3))
    area = masks.sum(dim=(1, 2, 3)).clamp(min=1) * generated.shape[1]
    return (per_sample / area).mean()


def lpips_sized(*crops, min_side=LPIPS_MIN_SIDE):
    """Crops too small for VGG16's four poolings are enlarged (bilinear) to `min_side`."""
    h, w = crops[0].shape[-2:]
    if min(h, w) >= min_side:
        return crops
    size = (max(h, min_side), max(w, min_side))
    return tuple(F.interpolate(c, size=size, mode="bilinear", align_corners=False) for c in crops)


def relativistic_loss(score_real, score_fake, real_is_real):
    """The official relativistic average GAN loss on the discriminator's (sigmoid) scores.

    real_is_real=True is the discriminator's objective, False the generator's (labels swapped).
    """
    real_vs_fake = score_real - score_fake.mean()
    fake_vs_real = score_fake - score_real.mean()
    ones, zeros = torch.ones_like(real_vs_fake), torch.zeros_like(real_vs_fake)
    if real_is_real:
        return (F.binary_cross_entropy_with_logits(real_vs_fake, ones)
                + F.binary_cross_entropy_with_logits(fake_vs_real, zeros)) / 2
    return (F.binary_cross_entropy_with_logits(real_vs_fake, zeros)
            + F.binary_cross_entropy_with_logits(fake_vs_real, ones)) / 2
