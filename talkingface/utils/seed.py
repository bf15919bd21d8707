"""Deterministic seeding, DataLoader workers included, and the random generators' states that a
checkpoint carries so that a resumed run continues the very same random streams."""
import contextlib
import random

import numpy as np
import torch


def init_seed(seed, reproducible=True):
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)
    torch.backends.cudnn.benchmark = not reproducible
    torch.backends.cudnn.deterministic = bool(reproducible)


def seed_worker(worker_id):
    """DataLoader worker_init_fn: numpy and random follow torch's per-worker seed."""
    worker_seed = torch.initial_seed() % 2 ** 32
    np.random.seed(worker_seed)
    random.seed(worker_seed)


def derived_seed(*numbers):
    """A 64-bit seed mixed from non-negative integers (seed, epoch, position, ...): nearby
    inputs give unrelated streams, unlike seed + epoch."""
    words = np.random.SeedSequence([int(n) for n in numbers]).generate_state(2, np.uint32)
    return int(words[0]) << 32 | int(words[1])


def rng_state():
    """The global generators' states (python, numpy, torch CPU, every CUDA device) as tensors and
    plain numbers, so that a checkpoint holding them loads with torch.load(weights_only=True)."""
    version, internal, gauss = random.getstate()
    _, keys, position, has_gauss, cached_gaussian = np.random.get_state()
    return {
        "python": {"version": version, "state": torch.tensor(internal, dtype=torch.int64), "gauss": gauss},
        "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "position": int(position),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached_gaussian)},
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_state(state):
    """Restore what rng_state() returned (CUDA states only when this machine has as many devices)."""
    python = state["python"]
    random.setstate((python["version"], tuple(python["state"].tolist()), python["gauss"]))
    numpy = state["numpy"]
    np.random.set_state(("MT19937", numpy["keys"].numpy().astype(np.uint32), numpy["position"],
                         numpy["has_gauss"], numpy["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    cuda = state.get("cuda") or []
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)


@contextlib.contextmanager
def preserved_rng():
    """Run a block without moving the global generators: what it draws (validation, one
    training item) never shifts the training's own random streams."""
    python, numpy, cpu = random.getstate(), np.random.get_state(), torch.get_rng_state()
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else None
    try:
        yield
    finally:
        random.setstate(python)
        np.random.set_state(numpy)
        torch.set_rng_state(cpu)
        if cuda is not None:
            torch.cuda.set_rng_state_all(cuda)


def seed_cpu_generators(seed):
    """Seed python's, numpy's and torch's CPU generator from `seed` (64 bits; CUDA's untouched)."""
    random.seed(seed)
    np.random.seed(seed % 2 ** 32)
    torch.default_generator.manual_seed(seed)


@contextlib.contextmanager
def seeded_rng(seed):
    """Run a block with seed_cpu_generators(seed), leaving the global generators as they were."""
    with preserved_rng():
        seed_cpu_generators(seed)
        yield
