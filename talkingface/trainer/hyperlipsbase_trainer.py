"""Training of HyperLipsBase: L1 + lip-sync expert + lower-half GAN (docs/architecture.md, "Base training loss").

Generator loss `sync_weight*sync + gan_weight*GAN + l1_weight*L1` (0.03/0.2/0.77):
- sync: lower halves of the 5 generated frames -> frozen SyncNet expert -> BCE against "in sync";
- GAN: the BaseDiscriminator (it looks at lower halves only), non-saturating BCE against "real";
- L1 against the ground-truth frames.
Discriminator step: BCE(D(gt), 1) + BCE(D(g.detach()), 0). One D forward over [gt, g] serves
both steps, and D's backward also gives the generator its GAN gradient (AdversarialTrainer);
under DistributedDataParallel each network still sees one forward and one backward per step.
"""
import logging

import numpy as np
import torch
from torch.nn import functional as F

from talkingface.model import load
from talkingface.model.generate import generate_faces
from talkingface.model.inputs import expert_face_input, reference_index
from talkingface.model.losses import bce, sync_probability
from talkingface.trainer.adversarial import AdversarialTrainer
from talkingface.trainer.health import Health, MeanRatioAbove, StaysWithin
from talkingface.utils.audio import SYNCNET_T, frame_mel_chunks
from talkingface.utils.checkpoint import stage_checkpoint
from talkingface.utils.errors import CheckpointError
from talkingface.utils.registry import TRAINERS

logger = logging.getLogger(__name__)

# The sync loss must fall by this fraction from the first health_patience steps to any later ones.
SYNC_FALL_MARGIN = 0.05
# A collapsed discriminator: its loss averages below DISC_LOSS_FLOOR (it tells real from generated
# perfectly), or the generator's GAN loss averages over GAN_LOSS_GROWTH times its first window's.
DISC_LOSS_FLOOR = 1e-3
GAN_LOSS_GROWTH = 10.0


@TRAINERS.register("HyperLipsBase")
class HyperLipsBaseTrainer(AdversarialTrainer):
    """networks {"generator", "discriminator"}; a frozen SyncNet expert as `self.expert`.

    Batches: "face" (B,6,T,H,W) = [target with lower half zeroed, reference], "indiv_mels"
    (B,T,1,80,16) per-frame chunks, "mel" (B,1,80,16) the window's chunk, "gt" (B,3,T,H,W).
    """

    DISCRIMINATOR = "BaseDiscriminator"

    def build(self):
        super().build()
        config = self.config
        self.sync_weight = float(config["sync_weight"])
        self.gan_weight = float(config["gan_weight"])
        self.l1_weight = float(config["l1_weight"])
        self._expert = None
        self._images_logged_at = None
        if config["mode"] == "train" and self.sync_weight > 0:
            self._expert = self._load_expert()  # fail before any training when it is missing
        self._build_health()

    # ------------------------------------------------------------------ health
    def _build_health(self):
        """Windows over the losses train_step returns: does the expert's verdict on the generated
        frames improve, and does the discriminator still give the generator a signal?"""
        patience = self.config["health_patience"]
        self.sync_flat = MeanRatioAbove(patience, 1 - SYNC_FALL_MARGIN)
        self.disc_at_zero = StaysWithin(patience, high=DISC_LOSS_FLOOR)
        self.gan_growing = MeanRatioAbove(patience, GAN_LOSS_GROWTH)
        self.health = Health(self.log_scalars, self.config["log_interval"])

    def check_health(self, losses):
        if "sync" in losses:
            self.health.report("base_sync_not_falling", self.sync_flat.update(losses["sync"]), self.global_step,
                               self._sync_warning)
        if "disc_real" in losses:
            at_zero = self.disc_at_zero.update(losses["disc_real"] + losses["disc_fake"])
            growing = self.gan_growing.update(losses["gan"])
            self.health.report("base_disc_collapsed", at_zero or growing, self.global_step,
                               lambda: self._collapse_warning(at_zero))

    def _sync_warning(self):
        window = self.sync_flat
        return (f"the lip-sync loss of the generated frames is not falling at step {self.global_step}: "
                f"{window.recent_mean:.4f} over the last {window.patience} steps, {window.first_mean:.4f} over the "
                f"first {window.patience}. Likely causes: a weak expert (its val accuracy in the SyncNet "
                "metrics.json should be well above 0.5), an expert trained on other data or other mirroring "
                "(syncnet_hflip), a sync_weight too small next to l1_weight. Try a better expert "
                "(sync_expert_path), a larger sync_weight or a lower learning_rate")

    def _collapse_warning(self, at_zero):
        if at_zero:
            seen = (f"its loss averages {self.disc_at_zero.recent_mean:.2e} over the last {self.disc_at_zero.patience} "
                    f"steps, below {DISC_LOSS_FLOOR:g}")
        else:
            seen = (f"the generator's GAN loss averages {self.gan_growing.recent_mean:.3f} over the last "
                    f"{self.gan_growing.patience} steps, over {GAN_LOSS_GROWTH:g} times its first "
                    f"{self.gan_growing.patience} steps' {self.gan_growing.first_mean:.3f}")
        return (f"the discriminator has collapsed at step {self.global_step}: {seen}, so the GAN term no longer "
                "guides the generator. Likely causes: disc_learning_rate too high next to learning_rate, gan_weight "
                "too high, too few clips. Try a lower disc_learning_rate, a smaller gan_weight (0 turns the GAN "
                "off) or more training clips")

    # ------------------------------------------------------------------ the frozen expert
    def expert_checkpoint(self):
        """config["sync_expert_path"] when set, else the newest checkpoint of the dataset's SyncNet."""
        return stage_checkpoint(self.config, "SyncNet", self.config["sync_expert_path"], "sync_expert_path")

    def _load_expert(self):
        path = self.expert_checkpoint()
        expert = load("SyncNet", path).network.to(self.device)
        for parameter in expert.parameters():
            parameter.requires_grad_(False)
        logger.info("lip-sync expert: %s", path)
        return expert

    def _expert_available(self):
        if self._expert is None:
            try:
                self.expert_checkpoint()
            except CheckpointError:
                return False
        return True

    @property
    def expert(self):
        if self._expert is None:
            self._expert = self._load_expert()
        return self._expert

    # ------------------------------------------------------------------ losses
    def sync_loss(self, mel, generated):
        """BCE of the expert's in-sync probability for the generated window against 1.
        The expert sees what it was trained on: mirrored frames when its data were mirrored."""
        face = expert_face_input(generated)
        if self.config["syncnet_hflip"]:
            face = face.flip(-1)
        audio_embedding, face_embedding = self.expert(mel, face)
        return bce(sync_probability(audio_embedding, face_embedding), 1.0)

    def _generator_losses(self, batch, gan=True):
        """The generator's output and losses; the GAN term only when `gan` (train_step adds it
        itself, from the discriminator pass it shares with the discriminator's loss)."""
        generated = self.networks["generator"](batch["indiv_mels"], batch["face"])
        losses = {"l1": F.l1_loss(generated.float(), batch["gt"].float())}
        total = self.l1_weight * losses["l1"]
        if self.sync_weight > 0:
            losses["sync"] = self.sync_loss(batch["mel"], generated)
            total = total + self.sync_weight * losses["sync"]
        if gan and self.gan_weight > 0:
            losses["gan"] = bce(self.networks["discriminator"](generated), 1.0)
            total = total + self.gan_weight * losses["gan"]
        losses["total"] = total
        return generated, losses

    def _discriminate(self, real, fake):
        """D's predictions for real and fake windows, from ONE forward of the two concatenated:
        (T, B) real and (T, B) fake probabilities (time-major like the generator)."""
        predictions = self.networks["discriminator"](torch.cat([real, fake], dim=0))
        predictions = predictions.view(real.shape[2], 2 * real.shape[0])
        return predictions[:, :real.shape[0]], predictions[:, real.shape[0]:]

    # ------------------------------------------------------------------ steps
    def train_step(self, batch):
        """Generator step, then discriminator step, with the official losses and order; one D
        pass serves both, and D's backward gives the generator its GAN gradient (AdversarialTrainer;
        the official code runs D three times: on g, on gt and on g.detach())."""
        gan = self.gan_weight > 0
        with self.autocast():
            generated, losses = self._generator_losses(batch, gan=False)
            if gan:
                frames = generated.detach().requires_grad_()
                real, fake = self._discriminate(batch["gt"], frames)
                real_loss, fake_loss, gan_loss = bce(real, 1.0), bce(fake, 0.0), bce(fake, 1.0)
        if not gan:
            self.optimize("generator", losses["total"])
            return {k: v.item() for k, v in losses.items()}
        generator_loss = losses["total"]
        losses["gan"] = gan_loss
        losses["total"] = generator_loss + self.gan_weight * gan_loss
        gan_gradient = self.adversarial_backward(frames, fake, self.gan_weight * gan_loss, real_loss + fake_loss,
                                                 per_frame=lambda ratio: ratio.t()[:, None, :, None, None])
        self.optimize("generator", generator_loss, injected=(generated, gan_gradient))
        logged = {k: v.item() for k, v in losses.items()}
        logged.update(disc_real=real_loss.item(), disc_fake=fake_loss.item())
        return logged

    def validation_step(self, batch):
        generated, losses = self._generator_losses(batch)
        if "sync" not in losses and self._expert_available():  # worth watching even when not trained on
            losses["sync"] = self.sync_loss(batch["mel"], generated)
        if self._images_logged_at != self.global_step:
            self._images_logged_at = self.global_step
            gt, fake = batch["gt"][:, :, 0], generated[:, :, 0]  # first frame of each window
            self.log_images("val/gt_generated", torch.cat([gt, fake.to(gt.dtype)], dim=3))
        return {k: losses[k].item() for k in ("l1", "sync", "total") if k in losses}

    # ------------------------------------------------------------------ whole clips
    def inference_networks(self):
        """(Base generator, no HR decoder): what the Evaluator runs through the inference pipeline."""
        return self.unwrap(self.networks["generator"]), None

    @torch.inference_mode()
    def generate_clip(self, clip):
        """The raw generated crops of a preprocessed clip from its own audio: (n,S,S,3) uint8 BGR,
        for the learning check (benchmarks/learning_quality.py); evaluation scores the inference
        pipeline's pasted-back output instead (Trainer.evaluate).

        Input per frame k: crop k with its lower half zeroed + the crop half a clip away as the
        reference (reference_frame half_clip: never the target's own mouth); audio = frame k's mel
        chunk (as in training; docs/differences.md).
        """
        generator = self.unwrap(self.networks["generator"])
        was_training = generator.training
        generator.eval()
        size = self.config["img_size"]
        n_frames = clip.n_frames
        if n_frames == 0:
            return np.zeros((0, size, size, 3), np.uint8)
        frames = np.stack([clip.frame(k, size) for k in range(n_frames)])
        references = frames[[reference_index("half_clip", k, n_frames) for k in range(n_frames)]]
        try:  # the generator loop of inference and the HR data (model.generate)
            return generate_faces(generator, frames, references, frame_mel_chunks(clip.mel, n_frames, fps=clip.fps),
                                  device=self.device, amp_dtype=self.amp_dtype if self.amp_enabled else None,
                                  batch_size=max(1, self.config["eval_batch_size"] * SYNCNET_T))
        finally:
            generator.train(was_training)
