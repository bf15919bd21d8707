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

from talkingface.model import create
from talkingface.trainer.trainer import Trainer, adam


class AdversarialTrainer(Trainer):
    """A Trainer with networks/optimizers "generator" (the model named by config["model"]) and
    "discriminator" (`DISCRIMINATOR`, a network name of model.create), each with its own Adam."""

    DISCRIMINATOR = None
    # D's seed at a sample may be at most this many times smaller than the generator's.
    MAX_SEED_RATIO = 1e6

    def build(self):
        config = self.config
        generator = create(self.model_name, config).network
        discriminator = create(self.DISCRIMINATOR).network
        self.networks = {"generator": generator, "discriminator": discriminator}
        betas = tuple(config["adam_betas"])
        self.optimizers = {
            "generator": adam(generator.parameters(), lr=config["learning_rate"], betas=betas),
            "discriminator": adam(discriminator.parameters(), lr=config["disc_learning_rate"], betas=betas),
        }

    def optimize(self, name, loss, only_own_parameters=False, gradient_of=None, injected=None):
        """Trainer.optimize with the backward modes of the shared discriminator pass.

        `only_own_parameters`: gradients reach only this optimizer's parameters (autograd then
        skips every weight gradient of the other networks the loss passed through).
        `gradient_of`: a leaf the loss depends on (say another network's detached output) whose
        gradient is computed in the same backward and returned, unscaled, in float32.
        `injected`: (tensor, gradient) backpropagated together with `loss`, as if the loss had a
        term whose gradient at `tensor` is `gradient`.
        """
        self.check_finite(name, loss)
        optimizer, scaler = self.optimizers[name], self.scalers[name]
        scale = scaler.get_scale() if scaler.is_enabled() else 1.0
        inputs = None
        if only_own_parameters:
            inputs = [p for group in optimizer.param_groups for p in group["params"] if p.requires_grad]
        if gradient_of is not None and inputs is not None:
            inputs.append(gradient_of)
        outputs, seeds = [scaler.scale(loss)], [None]
        if injected is not None:
            outputs.append(injected[0])
            seeds.append((injected[1].float() * scale).to(injected[0].dtype))
        torch.autograd.backward(outputs, seeds, inputs=inputs)
        returned = None
        if gradient_of is not None:
            grad = gradient_of.grad if gradient_of.grad is not None else torch.zeros_like(gradient_of)
            returned, gradient_of.grad = grad.float() / scale, None
        self.step(name)
        return returned

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
