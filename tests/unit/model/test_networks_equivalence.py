"""Our networks reproduce the official HyperLips networks (fixture made from the official code).

tests/data/networks_official_reference.npz holds small summaries (per-channel means and a real
slice of values) of the OFFICIAL networks' outputs for deterministic weights and inputs built by
benchmarks/network_recipe.py. Regenerate it (needs the official checkout, see benchmarks/official_compare.py):

    .venv/bin/python benchmarks/official_compare.py --official /path/to/hyperlips_official \
        --write-fixture tests/data/networks_official_reference.npz
"""
import functools
import os

import numpy as np
import pytest
import torch

from benchmarks.network_recipe import deterministic_state_dict, fixture_cases, summarize
from paths import TEST_DATA

FIXTURE = os.path.join(TEST_DATA, "networks_official_reference.npz")
TOLERANCE = 1e-4


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
