"""HyperLipsHR trainer: the sketch-guided HR decoder on precomputed Base outputs.

The Base model is not loaded for training: its outputs (HYPER_IMG) were made once by the HR
preprocessing, from the Base checkpoint every HR checkpoint records (`base_checkpoint`: path,
step, sha256), which evaluation and inference then run the decoder on. Losses (docs/architecture.md,
"HR stage"; the official Train_hyperlipsHR.py), each with a YAML weight: relativistic GAN, full-image L1, L1 on the lip box, VGG19 perceptual (conv5_4, L1) and
LPIPS(vgg) on the lip box. The two feature losses need ImageNet/LPIPS weights that cannot be
downloaded here: they load from configured paths and are switched off, with one log line, when
the files are absent.
"""
import logging
import os

import torch
from torch.nn import functional as F

from talkingface.data.dataset.hr_layout import resolve_base_checkpoint
from talkingface.model import load
from talkingface.model.losses import LPIPSVGG, VGG19Perceptual, lip_l1, lpips_sized, relativistic_loss
from talkingface.trainer.adversarial import AdversarialTrainer
from talkingface.utils.errors import CheckpointError
from talkingface.utils.fingerprint import checkpoint_fingerprint
from talkingface.utils.registry import TRAINERS

logger = logging.getLogger(__name__)


@TRAINERS.register("HyperLipsHR")
class HyperLipsHRTrainer(AdversarialTrainer):
    DISCRIMINATOR = "HRDiscriminator"

    def build(self):
        super().build()
        config = self.config
        self.weights = {"gan": config["gan_weight"], "l1": config["l1_weight"],
                        "lip_l1": config["lip_l1_weight"], "perceptual": config["perceptual_weight"],
                        "lip_lpips": config["lip_lpips_weight"]}
        self.vgg = self._optional_loss("perceptual", "VGG19 perceptual", [config["vgg19_path"]],
                                       lambda: VGG19Perceptual().load(config["vgg19_path"]))
        self.lpips = self._optional_loss("lip_lpips", "LPIPS(vgg) lip",
                                         [config["lpips_path"], config["lpips_vgg16_path"]],
                                         lambda: LPIPSVGG().load(config["lpips_path"], config["lpips_vgg16_path"]))
        self._images_logged_at = None
        self._base_checkpoint = False

    @property
    def base_checkpoint(self):
        """Fingerprint of the Base checkpoint whose outputs make this run's data (hr_root is keyed
        by it), read once: recorded in every checkpoint, and the Base that evaluation and inference
        run this decoder on. None without a Base checkpoint (data made elsewhere)."""
        if self._base_checkpoint is False:
            try:
                self._base_checkpoint = checkpoint_fingerprint(resolve_base_checkpoint(self.config))
            except CheckpointError:
                self._base_checkpoint = None
        return self._base_checkpoint

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

    # ------------------------------------------------------------------ checkpoints, evaluation
    def state(self, rng_states=None):
        """The checkpoint dict, with the fingerprint of the Base checkpoint this decoder learned from."""
        return {**super().state(rng_states), "base_checkpoint": self.base_checkpoint}

    def inference_networks(self):
        """(the Base generator this decoder was trained on, the decoder) for the Evaluator."""
        if self.base_checkpoint is None:
            raise CheckpointError("no HyperLipsBase checkpoint to run the HR decoder on: pass --base_checkpoint=PATH")
        base = load("HyperLipsBase", self.base_checkpoint["path"]).network.to(self.device)
        return base, self.unwrap(self.networks["generator"])
