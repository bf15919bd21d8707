"""AdversarialTrainer: the generator/discriminator step shared by HyperLipsBase and HyperLipsHR.

The discriminator is not updated between the generator's step and its own, so one D forward over
[real, generated] serves both losses. D looks at a detached copy of the generated frames, so its
backward reaches only its weights and those frames, and the generator's GAN gradient at the
frames is handed to the generator's own backward together with its other losses.

That gradient comes from D's backward itself. Both discriminators judge every sample on its own
(no BatchNorm or other cross-sample term) and end in one score per sample, so D's backward from
a sample's score to the sample is linear in the seed at that score: the generator's gradient at
a sample is D's gradient there times the ratio of the two losses' seeds at its score. The
official code instead backpropagates the generator's loss through D a second time. Where the
ratio is unsafe (D's seed all but vanishes next to the generator's, so its gradient would be
scaled up from the edge of float range) or under fp16 loss scaling, that second backward is run,
to the frames only.
"""
import torch

from talkingface.trainer.trainer import Trainer


class AdversarialTrainer(Trainer):
    """A Trainer with networks/optimizers "generator" and "discriminator"."""

    # D's seed at a sample may be at most this many times smaller than the generator's.
    MAX_SEED_RATIO = 1e6

    def adversarial_backward(self, frames, fake_scores, generator_gan_loss, discriminator_loss, per_frame):
        """Step the discriminator on `discriminator_loss` and return the generator's GAN gradient
        at `frames` (the detached leaf D judged), in float32.

        `fake_scores`: D's scores of the frames, one per sample; `generator_gan_loss`: the
        generator's weighted GAN term computed from them; `per_frame(ratio)` reshapes a ratio
        shaped like `fake_scores` to broadcast over `frames`.
        """
        ratio = self.gan_seed_ratio(fake_scores, generator_gan_loss, discriminator_loss)
        if ratio is None:
            gradient = self._gradient_at(frames, generator_gan_loss, "generator")
            self.optimize("discriminator", discriminator_loss, only_own_parameters=True)
            return gradient
        d_gradient = self.optimize("discriminator", discriminator_loss, only_own_parameters=True,
                                   gradient_of=frames)
        return d_gradient * per_frame(ratio)

    def gan_seed_ratio(self, fake_scores, generator_gan_loss, discriminator_loss):
        """Per sample, d(generator_gan_loss)/d(score) over d(discriminator_loss)/d(score), shaped
        like `fake_scores`; None when unsafe (see the module docstring)."""
        if any(scaler.is_enabled() for scaler in self.scalers.values()):
            return None
        generator_seed, = torch.autograd.grad(generator_gan_loss, fake_scores, retain_graph=True)
        discriminator_seed, = torch.autograd.grad(discriminator_loss, fake_scores, retain_graph=True)
        generator_seed, discriminator_seed = generator_seed.float(), discriminator_seed.float()
        if not (discriminator_seed.abs() * self.MAX_SEED_RATIO >= generator_seed.abs()).all():
            return None
        return generator_seed / discriminator_seed

    def _gradient_at(self, tensor, loss, scaler_name):
        """d(loss)/d(tensor) in float32 through the graph only (no weight gradients), computed on
        the loss scaled as `scaler_name`'s backward would scale it."""
        scaler = self.scalers[scaler_name]
        scale = scaler.get_scale() if scaler.is_enabled() else 1.0
        gradient, = torch.autograd.grad(scaler.scale(loss), tensor, retain_graph=True)
        return gradient.float() / scale
