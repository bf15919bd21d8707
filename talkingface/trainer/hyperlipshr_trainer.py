"""HyperLipsHR trainer: the sketch-guided HR decoder on precomputed Base outputs.

The Base model is not loaded here at all: its outputs (HYPER_IMG) were made once by the HR
preprocessing. Losses (HYPERLIPS.md, official Train_hyperlipsHR.py), each with a YAML weight:
relativistic GAN, full-image L1, L1 on the lip box, VGG19 perceptual (conv5_4, L1) and
LPIPS(vgg) on the lip box. The two feature losses need ImageNet/LPIPS weights that cannot be
downloaded here: they load from configured paths and are switched off, with one log line, when
the files are absent.
"""
import logging
import os

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from talkingface.data.dataprocess.hyperlipshr_process import hr_clip_dir
from talkingface.data.dataset.hyperlipshr_dataset import HRClip
from talkingface.trainer.adversarial import AdversarialTrainer
from talkingface.trainer.trainer import adam
from talkingface.utils.checkpoint import load_checkpoint_file
from talkingface.utils.errors import CheckpointError, TalkingFaceError
from talkingface.utils.registry import MODELS, TRAINERS

logger = logging.getLogger(__name__)

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


@TRAINERS.register("HyperLipsHR")
class HyperLipsHRTrainer(AdversarialTrainer):
    def build(self):
        config = self.config
        from talkingface.model.audio_driven_talkingface.hyperlipshr import HRDiscriminator
        generator = MODELS.get("HyperLipsHR").from_config(config)
        discriminator = HRDiscriminator()
        betas = tuple(config["adam_betas"])
        self.networks = {"generator": generator, "discriminator": discriminator}
        self.optimizers = {
            "generator": adam(generator.parameters(), lr=config["learning_rate"], betas=betas),
            "discriminator": adam(discriminator.parameters(), lr=config["disc_learning_rate"], betas=betas),
        }
        self.weights = {"gan": config["gan_weight"], "l1": config["l1_weight"],
                        "lip_l1": config["lip_l1_weight"], "perceptual": config["perceptual_weight"],
                        "lip_lpips": config["lip_lpips_weight"]}
        self.vgg = self._optional_loss("perceptual", "VGG19 perceptual", [config["vgg19_path"]],
                                       lambda: VGG19Perceptual().load(config["vgg19_path"]))
        self.lpips = self._optional_loss("lip_lpips", "LPIPS(vgg) lip",
                                         [config["lpips_path"], config["lpips_vgg16_path"]],
                                         lambda: LPIPSVGG().load(config["lpips_path"], config["lpips_vgg16_path"]))
        self._images_logged_at = None

    def _optional_loss(self, weight_key, title, paths, make):
        """The loss network when its weight is non-zero and its files exist, else None (logged)."""
        if not self.weights[weight_key]:
            return None
        missing = [p for p in paths if not p or not os.path.isfile(p)]
        if missing:
            logger.info("%s loss is off: no weights at %s (put the file there, or set the path keys "
                        "vgg19_path / lpips_path / lpips_vgg16_path)", title, ", ".join(map(str, missing)))
            return None
        return make().to(self.device)

    # ------------------------------------------------------------------ losses
    def generator_losses(self, batch, generated):
        """The generator's losses but the GAN term (train_step adds it from the shared D pass)."""
        gt, boxes = batch["gt"], batch["lip_box"]
        losses = {"l1": F.l1_loss(generated, gt), "lip_l1": lip_l1(generated, gt, boxes)}
        if self.vgg is not None:
            losses["perceptual"] = self.vgg(generated, gt)
        if self.lpips is not None:
            # Boxes differ in size, so one LPIPS call per sample, as in the official code.
            distances = [self.lpips(*lpips_sized(generated[i:i + 1, :, y1:y2, x1:x2], gt[i:i + 1, :, y1:y2, x1:x2]))
                         for i, (x1, y1, x2, y2) in enumerate(boxes.tolist())]
            losses["lip_lpips"] = torch.cat(distances).mean()
        return losses

    def weighted_total(self, losses):
        return sum(self.weights[name] * value for name, value in losses.items())

    # ------------------------------------------------------------------ steps
    def train_step(self, batch):
        """Generator step, then discriminator step, in the official order and losses; one D pass
        over [gt, generated] serves both, and D's backward gives the generator its GAN gradient
        (AdversarialTrainer; the official code runs D on gt twice and on the generated frames
        twice)."""
        with self.autocast():
            generated = self.networks["generator"](batch["input"])
            losses = self.generator_losses(batch, generated)
            frames = generated.detach().requires_grad_()
            score_real, score_fake = self.networks["discriminator"](torch.cat([batch["gt"], frames])).chunk(2)
            # The generator's loss reads the real scores as constants, as the official no_grad pass does.
            losses["gan"] = relativistic_loss(score_real.detach(), score_fake, real_is_real=False)
            disc_loss = relativistic_loss(score_real, score_fake, real_is_real=True)
        gan_term = self.weights["gan"] * losses["gan"]
        others = self.weighted_total({name: value for name, value in losses.items() if name != "gan"})
        loss = others + gan_term
        gan_gradient = self.adversarial_backward(frames, score_fake, gan_term, disc_loss,
                                                 per_frame=lambda ratio: ratio.view(-1, 1, 1, 1))
        self.optimize("generator", others, injected=(generated, gan_gradient))
        values = {name: float(value.detach()) for name, value in losses.items()}
        values.update(loss=float(loss.detach()), disc=float(disc_loss.detach()))
        return values

    def validation_step(self, batch):
        generated = self.networks["generator"](batch["input"]).float()
        losses = self.generator_losses(batch, generated)
        mse = F.mse_loss(generated, batch["gt"]).clamp(min=1e-10)
        values = {name: float(value) for name, value in losses.items()}
        values["psnr"] = float(10 * torch.log10(1 / mse))
        if self._images_logged_at != self.global_step:
            self._images_logged_at = self.global_step
            self.log_images("val/hyper_sketch_output_gt", self.sample_grid(batch, generated))
        return values

    @staticmethod
    def sample_grid(batch, generated):
        """Side by side: Base output and sketch (upsampled), HR output, ground truth."""
        size = generated.shape[-1]
        inputs = F.interpolate(batch["input"].float(), size=(size, size), mode="bilinear", align_corners=False)
        return torch.cat([inputs[:, :3], inputs[:, 3:], generated, batch["gt"].float()], dim=3)

    # ------------------------------------------------------------------ evaluation
    @torch.no_grad()
    def generate_clip(self, clip):
        """HR crops at img_size (n,S,S,3) uint8 BGR for the first clip.n_frames frames, made from the
        clip's HR data (its Base output and sketch). Compare them with `reference_clip(clip)`
        (GT_IMG at img_size: re-cut from the source video when img_size > the Base crop_size)."""
        hr_clip = self._hr_clip(clip)
        n = min(clip.n_frames, hr_clip.n_frames)
        generator = self.networks["generator"]
        generator.eval()
        batch_size = self.config["eval_batch_size"]
        frames = []
        for start in range(0, n, batch_size):
            inputs = np.stack([hr_clip.decoder_input(k) for k in range(start, min(start + batch_size, n))])
            with self.autocast():
                out = generator(torch.from_numpy(inputs).to(self.device)).float()
            frames.append(out.clamp(0, 1).mul(255).round().byte().permute(0, 2, 3, 1).cpu().numpy())
        return np.concatenate(frames)

    def reference_clip(self, clip):
        """GT_IMG at img_size (n,S,S,3) uint8 BGR: the ground truth of generate_clip(clip)."""
        hr_clip = self._hr_clip(clip)
        n = min(clip.n_frames, hr_clip.n_frames)
        return np.stack([(hr_clip.gt(k).transpose(1, 2, 0) * 255).round().astype(np.uint8) for k in range(n)])

    def _hr_clip(self, clip):
        folder = hr_clip_dir(self.config, clip.id)
        if not os.path.isfile(os.path.join(folder, ".done")):
            raise TalkingFaceError(f"no HR data for clip {clip.id} in {folder}: run `python run_talkingface.py "
                                   f"--model=HyperLipsHR --dataset={self.config['dataset']} --mode=preprocess`")
        return HRClip(folder)
