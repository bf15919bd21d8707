"""Deterministic weights and inputs for comparing our networks with the official ones.

`tests/unit/model/test_networks_equivalence.py` checks our networks against small summaries of the official
networks' outputs (tests/data/networks_official_reference.npz); `benchmarks/official_compare.py`
writes those summaries from an official checkout and compares speed and gradients. Both build
the weights and inputs here, so the two sides see exactly the same numbers.
"""
import math

import numpy as np
import torch

SEED = 20231009


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
