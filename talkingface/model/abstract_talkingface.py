"""The interface every registered talking-face network shares."""
from torch import nn


class AbstractTalkingFace(nn.Module):
    """Base class of the registered networks (SyncNet, HyperLipsBase, HyperLipsHR).

    Subclasses keep the official module layout, so official checkpoints load unchanged, and
    override `from_config` only when a setting shapes the network (HyperLipsHR's img_size).
    """

    @classmethod
    def from_config(cls, config):
        """The network a run's config describes (freshly initialised)."""
        return cls()

    def num_parameters(self, trainable_only=False):
        return sum(p.numel() for p in self.parameters() if p.requires_grad or not trainable_only)

    def __str__(self):
        return f"{super().__str__()}\nparameters: {self.num_parameters():,}"
