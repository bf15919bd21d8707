"""Training order that a resumed run can continue exactly, whatever the number of DataLoader workers.

`ResumableSampler` yields (index, item_seed) pairs: epoch e's order is a permutation derived from
(seed, e), split across DDP ranks like DistributedSampler, and started at the number of items
this rank had already consumed in the epoch. `SeededItems` builds every item under its own seed,
so the random choices a dataset makes (which clip, which window, which label) depend on
(seed, epoch, position) only: not on the worker that builds the item nor on an interruption.
"""
import math

import torch
from torch.utils.data import Dataset, Sampler, get_worker_info

from talkingface.utils.seed import derived_seed, seed_cpu_generators, seeded_rng


class ResumableSampler(Sampler):
    def __init__(self, length, seed, rank=0, world_size=1):
        self.length, self.seed = int(length), int(seed)
        self.rank, self.world_size = int(rank), int(world_size)
        self.epoch, self.start = 0, 0

    def set_epoch(self, epoch, start=0):
        """Iterate epoch `epoch`, skipping its first `start` items of this rank (already consumed)."""
        self.epoch, self.start = int(epoch), int(start)

    @property
    def per_rank(self):
        """Items of one rank in an epoch (the permutation is padded to a multiple of the ranks)."""
        return math.ceil(self.length / self.world_size)

    def __len__(self):
        return max(0, self.per_rank - self.start)

    def __iter__(self):
        epoch, start = self.epoch, self.start
        self.epoch, self.start = epoch + 1, 0   # iterated again without set_epoch: the next epoch
        return self._keys(epoch, start)

    def _keys(self, epoch, start):
        generator = torch.Generator().manual_seed(derived_seed(self.seed, epoch))
        order = torch.randperm(self.length, generator=generator).tolist()
        total = self.per_rank * self.world_size
        while len(order) < total:                       # pad by repeating, as DistributedSampler does
            order += order[:total - len(order)]
        for position in range(start, self.per_rank):
            place = position * self.world_size + self.rank   # place in the epoch's whole order
            yield order[place], derived_seed(self.seed, epoch, place)


class SeededItems(Dataset):
    """`dataset` read with the (index, item_seed) keys of ResumableSampler."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, key):
        index, item_seed = key
        if get_worker_info() is not None:   # a worker's generators serve its items alone
            seed_cpu_generators(item_seed)
            return self.dataset[index]
        with seeded_rng(item_seed):          # the training process: leave its streams as they were
            return self.dataset[index]
