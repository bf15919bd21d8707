"""Networks: official state-dict layout, parameter counts, shapes, and load_network."""
import gzip
import json
import os

import pytest
import torch

from talkingface.model import build_network, identify_network, load_network
from talkingface.utils.errors import CheckpointError, ConfigError
from paths import TEST_DATA

# A gzipped copy of the spec's official_state_dicts.json (keys, shapes, dtypes of the official
# checkpoints), committed so that the test runs on any checkout.
MANIFEST = os.path.join(TEST_DATA, "official_state_dicts.json.gz")
# manifest entry -> (our network name, HR rescaling)
MANIFEST_NETWORKS = {
    "HyperLipsBase": ("HyperLipsBase", 1),
    "HRDecoder_rescaling1_128": ("HRDecoder", 1),
    "HRDecoder_rescaling2_256": ("HRDecoder", 2),
    "HRDecoder_rescaling4_512": ("HRDecoder", 4),
    "SyncNet_color_lipsync_expert": ("SyncNet", 1),
    "HyperCtrolDiscriminator_base_gan": ("BaseDiscriminator", 1),
    "HRDecoder_disc_qual_hr_gan": ("HRDiscriminator", 1),
}
# Parameter counts of the official networks (docs/architecture.md).
PARAMETERS = {
    ("HyperLipsBase", 1): 29_716_503,
    ("SyncNet", 1): 22_991_744,
    ("BaseDiscriminator", 1): 14_113_793,
    ("HRDecoder", 1): 133_443,
    ("HRDecoder", 2): 170_499,
    ("HRDecoder", 4): 281_667,
    ("HRDiscriminator", 1): 1_887_873,
}


@pytest.fixture(scope="module")
def networks():
    return {key: build_network(*key) for key in PARAMETERS}


@pytest.mark.parametrize("entry", sorted(MANIFEST_NETWORKS))
def test_state_dict_equals_official_manifest(entry, networks):
    with gzip.open(MANIFEST, "rt") as f:
        expected = json.load(f)[entry]["state_dict"]
    ours = [[k, list(v.shape), str(v.dtype).replace("torch.", "")]
            for k, v in networks[MANIFEST_NETWORKS[entry]].state_dict().items()]
    assert [row[0] for row in ours] == [row[0] for row in expected]  # same keys, same order
    assert ours == expected  # and the same shapes and dtypes (buffers included)


@pytest.mark.parametrize("key", sorted(PARAMETERS))
def test_parameter_counts(key, networks):
    assert sum(p.numel() for p in networks[key].parameters()) == PARAMETERS[key]


def test_registered_models_build_from_config():
    from talkingface.utils.registry import MODELS

    assert isinstance(MODELS.get("SyncNet").from_config({}), torch.nn.Module)
    assert type(MODELS.get("HyperLipsBase").from_config({})).__name__ == "HyperLipsBase"
    for size, rescaling in ((128, 1), (256, 2), (512, 4)):
        hr = MODELS.get("HyperLipsHR").from_config({"img_size": size})
        assert hr.rescaling == rescaling and hr.output_size == size
    # another size (300) is refused by the config: tests/unit/config/test_config.py test_values_the_networks_fix_...


# ---- shapes ------------------------------------------------------------------------------------
def test_base_forward_backward_4d(networks):
    net = networks[("HyperLipsBase", 1)].train()
    audio = torch.randn(2, 1, 80, 16)
    face = torch.rand(2, 6, 64, 64, requires_grad=True)  # fully convolutional face side; 128 in use
    out = net(audio, face)
    assert out.shape == (2, 3, 64, 64) and out.is_contiguous()
    assert 0 <= float(out.detach().min()) and float(out.detach().max()) <= 1
    out.mean().backward()
    assert face.grad is not None and face.grad.abs().sum() > 0
    hyper = net.hyper_control_net.dconv_down3._modules["0"].hyperkernel.weight
    assert hyper.grad is not None and hyper.grad.abs().sum() > 0  # audio path gets gradients
    net.zero_grad(set_to_none=True)


def test_base_5d_is_time_major_flattening_of_4d(networks):
    net = networks[("HyperLipsBase", 1)].eval()
    audio = torch.randn(2, 3, 1, 80, 16)
    face = torch.rand(2, 6, 3, 64, 64)
    with torch.no_grad():
        out = net(audio, face)
        assert out.shape == (2, 3, 3, 64, 64)
        frame = net(audio[1, 2:3], face[1:2, :, 2])  # sample 1, time step 2 on its own
    assert torch.allclose(out[1:2, :, 2], frame, atol=1e-5)


def test_syncnet_embeddings(networks):
    net = networks[("SyncNet", 1)].train()
    a, v = net(torch.randn(2, 1, 80, 16), torch.rand(2, 15, 64, 128))
    assert a.shape == v.shape == (2, 512)
    assert torch.allclose(a.norm(dim=1), torch.ones(2), atol=1e-5)
    cosine = (a * v).sum(1)
    assert float(cosine.detach().min()) >= 0 and float(cosine.detach().max()) <= 1 + 1e-6
    cosine.sum().backward()


def test_discriminators(networks):
    base_d = networks[("BaseDiscriminator", 1)].train()
    out = base_d(torch.rand(2, 3, 5, 96, 96))
    assert out.shape == (10, 1) and 0 <= float(out.min()) and float(out.max()) <= 1
    out.mean().backward()
    hr_d = networks[("HRDiscriminator", 1)].train()
    for size in (64, 100):
        assert hr_d(torch.rand(2, 3, size, size)).shape == (2, 1)


@pytest.mark.parametrize("rescaling", [1, 2, 4])
def test_hr_decoder_shapes(rescaling, networks):
    net = networks[("HRDecoder", rescaling)].train()
    x = torch.rand(1, 6, 32, 32, requires_grad=True)
    out = net(x)
    assert out.shape == (1, 3, 32 * rescaling, 32 * rescaling)
    out.mean().backward()
    assert x.grad is not None


def test_eval_mode_folded_batchnorm_matches_unfolded(networks):
    """In eval mode conv+BN run as one folded conv; it must equal running them separately."""
    net = networks[("HRDecoder", 2)]
    generator = torch.Generator().manual_seed(0)
    for module in net.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.2, 0.2, generator=generator)
            module.running_var.uniform_(0.5, 1.5, generator=generator)
    x = torch.rand(1, 6, 16, 16, generator=generator)
    net.eval()
    with torch.no_grad():
        folded = net(x)
        block = net.up_conv[0]
        y = net.conv_base(x)
        separate = block.conv_block(y).relu()
        assert torch.allclose(block(y), separate, atol=1e-5)
    assert folded.shape == (1, 3, 32, 32)


# ---- load_network ------------------------------------------------------------------------------
def _randomized(state_dict, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return {k: torch.rand(v.shape, generator=generator) if v.is_floating_point() else v.clone()
            for k, v in state_dict.items()}


def test_load_official_format_with_module_prefix(tmp_path, networks):
    weights = _randomized(networks[("HRDecoder", 2)].state_dict())
    path = tmp_path / "official.pth"
    torch.save({"state_dict": {"module." + k: v for k, v in weights.items()}, "optimizer": {},
                "global_step": 5, "global_epoch": 1}, path)
    net = load_network("HRDecoder", str(path))
    assert not net.training and net.rescaling == 2
    assert all(torch.equal(v, weights[k]) for k, v in net.state_dict().items())
    assert next(net.parameters()).device.type == "cpu"


def test_load_our_trainer_format(networks):
    generator = _randomized(networks[("HyperLipsBase", 1)].state_dict(), seed=1)
    discriminator = _randomized(networks[("BaseDiscriminator", 1)].state_dict(), seed=2)
    checkpoint = {"state_dict": generator, "optimizer": {}, "global_step": 3, "global_epoch": 0,
                  "networks": {"generator": generator, "discriminator": discriminator},
                  "model": "HyperLipsBase"}
    base = load_network("HyperLipsBase", checkpoint)
    assert torch.equal(base.state_dict()["aspp.aspp1.0.weight"], generator["aspp.aspp1.0.weight"])
    disc = load_network("BaseDiscriminator", checkpoint)
    assert all(torch.equal(v, discriminator[k]) for k, v in disc.state_dict().items())
    assert not disc.training


def test_wrong_network_checkpoint_is_one_line_error(networks):
    checkpoint = {"state_dict": networks[("HRDiscriminator", 1)].state_dict()}
    with pytest.raises(CheckpointError) as error:
        load_network("SyncNet", checkpoint)
    message = str(error.value)
    assert "HRDiscriminator" in message and "SyncNet" in message and "\n" not in message


def test_missing_keys_and_bad_files_are_checkpoint_errors(tmp_path, networks):
    weights = dict(networks[("HRDecoder", 1)].state_dict())
    del weights["output_block.1.bias"]
    with pytest.raises(CheckpointError, match="missing"):
        load_network("HRDecoder", {"state_dict": weights})
    with pytest.raises(CheckpointError, match="not found"):
        load_network("SyncNet", str(tmp_path / "absent.pth"))
    broken = tmp_path / "broken.pth"
    broken.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError):
        load_network("SyncNet", str(broken))
    with pytest.raises(CheckpointError):
        load_network("SyncNet", {"optimizer": {}})
    with pytest.raises(ConfigError):
        load_network("Wav2Lip", {"state_dict": weights})


def test_create_and_load_give_the_network_its_kind_and_size(tmp_path, networks, make_config):
    from talkingface.model import create, inspect, load
    assert (create("HyperLipsHR", make_config("HyperLipsHR", img_size=256)).size, create("HRDecoder").size,
            create("HyperLipsBase").size, create("SyncNet").size) == (256, 128, 128, None)
    path = tmp_path / "hr.pth"
    torch.save({"state_dict": networks[("HRDecoder", 4)].state_dict()}, path)
    loaded = load("HyperLipsHR", str(path))         # the HR model loads as its HRDecoder, sized by its keys
    assert (loaded.kind, loaded.size, loaded.network.output_size) == ("HRDecoder", 512, 512)
    assert inspect(str(path)) == ("HRDecoder", 512)  # told without building it
    assert inspect(str(tmp_path)) is None and inspect(str(tmp_path / "absent.pth")) is None
    with pytest.raises(ConfigError):
        create("Wav2Lip")


def test_a_foreign_object_in_a_checkpoint_is_one_line(monkeypatch):
    """What torch or load_state_dict chokes on (any exception) is a one-line CheckpointError."""
    from talkingface import model
    monkeypatch.setattr(model, "extract_state_dict", lambda *a: 1 / 0)
    with pytest.raises(CheckpointError, match="^cannot load SyncNet from the given checkpoint: division by zero$"):
        model.load("SyncNet", {"state_dict": {}})


def test_identify_network_names_hr_size(networks):
    assert identify_network(networks[("HRDecoder", 4)].state_dict()) == "HRDecoder (512 px)"
    assert identify_network(networks[("BaseDiscriminator", 1)].state_dict()) == "BaseDiscriminator"
    assert identify_network({"foo.weight": torch.zeros(1)}) is None


@pytest.mark.slow
def test_base_full_size_5d_training_shapes(networks):
    net = networks[("HyperLipsBase", 1)].train()
    out = net(torch.randn(1, 5, 1, 80, 16), torch.rand(1, 6, 5, 128, 128))
    assert out.shape == (1, 3, 5, 128, 128)
    out.mean().backward()
    net.zero_grad(set_to_none=True)
