"""Checking the gradients a trainer's real step computes: GradientRecorder, relative_difference.

Swapped in for a trainer's optimizer (tests, benchmarks/official_compare.py): comparing weight
updates instead loses small gradients in float32 rounding (an update of 1e-7 on a weight of 0.1
keeps one or two significant digits).
"""
import torch


class GradientRecorder(torch.optim.Optimizer):
    """An optimizer whose step() keeps a copy of every parameter's gradient (zeros where there
    is none) in `gradients` and leaves the weights alone."""

    def __init__(self, params):
        super().__init__(params, {})
        self.gradients = None

    @torch.no_grad()
    def step(self, closure=None):
        self.gradients = [p.grad.clone() if p.grad is not None else torch.zeros_like(p)
                          for group in self.param_groups for p in group["params"]]

    def flat(self):
        """All recorded gradients as one vector, in parameter order."""
        return torch.cat([gradient.flatten() for gradient in self.gradients])


def relative_difference(ours, reference):
    """|ours - reference| / |reference| (Euclidean norms over all elements), as a float."""
    return float((ours - reference).norm() / reference.norm())
