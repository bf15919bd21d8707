"""Our networks reproduce the official HyperLips networks (fixture made from the official code).

tests/data/networks_official_reference.npz holds small summaries (per-channel means and a real
slice of values) of the OFFICIAL networks' outputs for deterministic weights and inputs built by
the recipe below. Regenerate it (needs the official checkout, see benchmarks/official_compare.py):

    .venv/bin/python benchmarks/official_compare.py --official /path/to/hyperlips_official \
        --write-fixture tests/data/networks_official_reference.npz
"""
import functools
import math
import os

import numpy as np
import pytest
import torch

FIXTURE = os.path.join(os.path.dirname(__file__), "data", "networks_official_reference.npz")
SEED = 20231009
TOLERANCE = 1e-4


# ---- the recipe (shared with benchmarks/official_compare.py) --------------------------------
def deterministic_state_dict(template, seed=SEED):
    """Fill every float tensor of `template`, in sorted key order, from one seeded generator.

    Scales keep activations in a useful range (fan-in scaled weights, BN near identity, per-sample
    hyper-kernels scaled by the fan-in of the convolution they define).
    """
    generator = torch.Generator().manual_seed(seed)
    filled = {}
    for key in sorted(template):
        tensor = template[key]
        if not tensor.is_floating_point():
            filled[key] = tensor.clone()
            continue
        unit = torch.rand(tensor.shape, generator=generator) * 2 - 1  # U(-1,1)
        if key.endswith("running_var"):
            value = 1 + 0.25 * (unit + 1)
        elif key.endswith("running_mean"):
            value = 0.1 * unit
        elif tensor.dim() == 1 and key.endswith("weight"):  # BN gamma
            value = 1 + 0.2 * unit
        elif tensor.dim() == 1:  # biases
            value = 0.1 * unit
        else:
            value = unit * math.sqrt(3.0 / tensor[0].numel())  # U with variance 1/fan_in
        if "hyperkernel" in key:  # predicts a C x C x 3 x 3 kernel: scale by that conv's fan-in
            value = value / math.sqrt(math.isqrt(tensor.shape[0] // 9) * 9)
        filled[key] = value.to(tensor.dtype)
    return filled


def _face(generator, n, size, channels=6):
    face = torch.rand(n, channels, size, size, generator=generator)
    if channels == 6:
        face[:, :3, size // 2:] = 0  # target lower half zeroed, like the real input
    return face


def fixture_cases():
    """name -> (network name, HR rescaling, train mode?, inputs tuple), inputs from a fixed seed."""
    g = torch.Generator().manual_seed(SEED + 1)
    mel = lambda *shape: torch.rand(*shape, generator=g) * 8 - 4  # noqa: E731 (mel range [-4,4])
    cases = {
        # Base is fully convolutional on the face side: 64 px keeps the test fast.
        "base_4d": ("HyperLipsBase", 1, False, (mel(2, 1, 80, 16), _face(g, 2, 64))),
        "base_5d": ("HyperLipsBase", 1, False,
                    (mel(2, 2, 1, 80, 16), _face(g, 4, 64).view(2, 2, 6, 64, 64).transpose(1, 2))),
        "base_4d_train": ("HyperLipsBase", 1, True, (mel(2, 1, 80, 16), _face(g, 2, 64))),
        "syncnet": ("SyncNet", 1, False, (mel(2, 1, 80, 16), torch.rand(2, 15, 64, 128, generator=g))),
        "base_discriminator": ("BaseDiscriminator", 1, False, (torch.rand(2, 3, 4, 96, 96, generator=g),)),
        "hr_discriminator": ("HRDiscriminator", 1, False, (torch.rand(8, 3, 48, 48, generator=g),)),
        "hr_decoder_128": ("HRDecoder", 1, False, (_face(g, 1, 32),)),
        "hr_decoder_256": ("HRDecoder", 2, False, (_face(g, 1, 32),)),
        "hr_decoder_512": ("HRDecoder", 4, False, (_face(g, 1, 32),)),
    }
    return cases


def summarize(outputs):
    """Small arrays describing a network output (tensor or tuple of tensors)."""
    if isinstance(outputs, torch.Tensor):
        outputs = (outputs,)
    summary = {}
    for index, out in enumerate(outputs):
        out = out.detach().float()
        if out.dim() == 2:  # embeddings / probabilities
            summary[f"{index}_mean"] = out.mean(1).numpy()
            summary[f"{index}_slice"] = out[:, :64].numpy()
            summary[f"{index}_shape"] = np.array(out.shape)
            continue
        flat = out.reshape(out.shape[0], out.shape[1], -1)
        summary[f"{index}_mean"] = flat.mean(-1).numpy()
        summary[f"{index}_slice"] = flat[:, :, flat.shape[-1] // 2: flat.shape[-1] // 2 + 16].numpy()
        summary[f"{index}_shape"] = np.array(out.shape)
    return summary


@functools.lru_cache(maxsize=None)
def _our_network(name, rescaling):
    from talkingface.model import build_network

    network = build_network(name, rescaling)
    network.load_state_dict(deterministic_state_dict(network.state_dict()))
    return network


def run_ours(name, rescaling, train, inputs):
    network = _our_network(name, rescaling)
    state = {k: v.clone() for k, v in network.state_dict().items()}
    network.train(train)
    try:
        with torch.no_grad():
            return network(*inputs)
    finally:
        network.load_state_dict(state)  # a train-mode forward updates BN running statistics


# ---- the test ----------------------------------------------------------------------------------
@pytest.mark.parametrize("case", sorted(fixture_cases()))
def test_matches_official_reference(case):
    if not os.path.isfile(FIXTURE):
        pytest.skip(f"fixture {FIXTURE} is missing; regenerate it with benchmarks/official_compare.py")
    reference = np.load(FIXTURE)
    name, rescaling, train, inputs = fixture_cases()[case]
    ours = summarize(run_ours(name, rescaling, train, inputs))
    assert {k for k in reference.files if k.startswith(case + "/")} == {f"{case}/{k}" for k in ours}
    for key, value in ours.items():
        expected = reference[f"{case}/{key}"]
        assert value.shape == expected.shape, key
        if key.endswith("_shape"):
            assert (value == expected).all(), key
        else:
            assert np.abs(value - expected).max() <= TOLERANCE, (key, np.abs(value - expected).max())
    # The fixture must describe a non-trivial output (not saturated to a constant).
    spread = max(float(np.std(reference[f"{case}/{k}"])) for k in ours if k.endswith("_slice"))
    assert spread > (1e-3 if "discriminator" not in case else 1e-5)
