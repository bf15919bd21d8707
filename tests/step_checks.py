"""Helpers for the tests that hold a trainer's real step to a reference step's gradients."""
import torch


def record_seed_ratios(trainer):
    """What the trainer's gan_seed_ratio returns at each step (None: the second pass through D ran)."""
    seen = []
    original = trainer.gan_seed_ratio
    trainer.gan_seed_ratio = lambda *args: seen.append(original(*args)) or seen[-1]
    return seen


def flat_gradients(loss, network):
    """d(loss)/d(every parameter of network) as one vector, zeros where the loss does not reach."""
    parameters = list(network.parameters())
    gradients = torch.autograd.grad(loss, parameters, allow_unused=True)
    return torch.cat([(g if g is not None else torch.zeros_like(p)).float().flatten()
                      for g, p in zip(gradients, parameters)])
