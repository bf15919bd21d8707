"""HyperLipsHR trainer: one real optimisation step per resolution, the loss terms, resuming."""
import logging
import os

import pytest
import torch
from torch.nn import functional as F

from talkingface.model.losses import (LPIPS_CHANNELS, LPIPSVGG, VGG16_LAYERS, VGG19_LAYERS, VGG19Perceptual,
                                      lip_l1, relativistic_loss, vgg_features)
from talkingface.trainer.hyperlipshr_trainer import HyperLipsHRTrainer
from talkingface.utils.errors import CheckpointError
from talkingface.utils.gradients import GradientRecorder, relative_difference
from builders import hr_batch, hr_config
from step_checks import flat_gradients, record_seed_ratios


def parameters(network):
    return [p.detach().clone() for p in network.parameters()]


@pytest.mark.parametrize("size", [128, 256, pytest.param(512, marks=pytest.mark.slow)])
def test_one_step_trains_the_decoder_at_every_size(tmp_path, size):
    trainer = HyperLipsHRTrainer(hr_config(tmp_path, img_size=size))
    generator, discriminator = trainer.networks["generator"], trainer.networks["discriminator"]
    assert generator.rescaling == size // 128
    # The Base model is not part of HR training at all (its outputs are precomputed).
    modules = [m for m in vars(trainer).values() if isinstance(m, torch.nn.Module)]
    modules += list(trainer.networks.values())
    assert not any(type(m).__name__ == "HyperLipsBase" for net in modules for m in net.modules())
    g_before, d_before = parameters(generator), parameters(discriminator)
    losses = trainer.train_step(hr_batch(1, size))
    assert {"l1", "lip_l1", "gan", "loss", "disc"} <= set(losses)
    assert all(torch.isfinite(torch.tensor(v)) for v in losses.values())
    assert any(not torch.equal(a, b) for a, b in zip(g_before, generator.parameters()))
    assert any(not torch.equal(a, b) for a, b in zip(d_before, discriminator.parameters()))
    trainer._set_mode(False)
    with torch.no_grad():
        values = trainer.validation_step(hr_batch(1, size, seed=1))
    assert {"l1", "lip_l1", "psnr"} <= set(values)


@pytest.mark.parametrize("weights, gan_path", [
    ({}, "from_d_backward"),                                     # the YAML's loss weights
    ({"l1_weight": 0, "lip_l1_weight": 0}, "from_d_backward"),   # GAN term alone
    ({"l1_weight": 0, "lip_l1_weight": 0}, "through_d"),         # the fallback
])
def test_train_step_gives_the_official_step_order_gradients(tmp_path, weights, gan_path):
    """One D pass for both players, the generator's GAN gradient from D's backward: every
    gradient must equal the official order's (G step with D(gt) under no_grad and D(g), then the
    D step on D(gt) and D(g.detach())), and the generator's loss leaves D's weights alone."""
    import copy

    torch.manual_seed(0)
    trainer = HyperLipsHRTrainer(hr_config(tmp_path, **weights))
    if gan_path == "through_d":
        trainer.MAX_SEED_RATIO = 0.0
    ratios = record_seed_ratios(trainer)
    generator, discriminator = trainer.networks["generator"], trainer.networks["discriminator"]
    ref_generator, ref_discriminator = copy.deepcopy(generator), copy.deepcopy(discriminator)
    trainer.optimizers = {name: GradientRecorder(network.parameters()) for name, network in trainer.networks.items()}
    batch = hr_batch(2, 128)
    trainer.train_step(batch)
    assert len(ratios) == 1 and (ratios[0] is None) == (gan_path == "through_d")

    # The official step (Train_hyperlipsHR.py), written out with torch alone: relativistic average
    # GAN as BCE-with-logits on D(x) - mean D(y), L1 on the whole image, L1 inside each sample's
    # lip box (x1, y1, x2, y2) averaged over samples; each term times its YAML weight. The VGG and
    # LPIPS terms are off here (no weight files), so the reference has none.
    assert trainer.vgg is None and trainer.lpips is None
    config = trainer.config

    def relativistic(real, fake, real_label):
        bce = F.binary_cross_entropy_with_logits
        return (bce(real - fake.mean(), torch.full_like(real, real_label))
                + bce(fake - real.mean(), torch.full_like(fake, 1.0 - real_label))) / 2

    gt, boxes = batch["gt"], batch["lip_box"].tolist()
    generated = ref_generator(batch["input"])
    with torch.no_grad():
        score_real = ref_discriminator(gt)
    lip = sum(F.l1_loss(generated[i, :, y1:y2, x1:x2], gt[i, :, y1:y2, x1:x2])
              for i, (x1, y1, x2, y2) in enumerate(boxes)) / len(boxes)
    g_loss = (config["gan_weight"] * relativistic(score_real, ref_discriminator(generated), 0.0)
              + config["l1_weight"] * F.l1_loss(generated, gt) + config["lip_l1_weight"] * lip)
    d_loss = relativistic(ref_discriminator(gt), ref_discriminator(generated.detach()), 1.0)
    expected = {"generator": flat_gradients(g_loss, ref_generator),
                "discriminator": flat_gradients(d_loss, ref_discriminator)}
    for name, wanted in expected.items():
        error = relative_difference(trainer.optimizers[name].flat(), wanted)
        # D's real and fake terms nearly cancel at random init: one batched pass instead of two
        # moves its gradient by ~2e-5 of its norm, with or without the shared-gradient path.
        assert error < (2e-5 if name == "generator" else 1e-4), f"{name} gradients differ by {error:.2e}"


def test_optimizers_follow_the_yaml(tmp_path):
    trainer = HyperLipsHRTrainer(hr_config(tmp_path, learning_rate=3e-4, disc_learning_rate=7e-4))
    g, d = trainer.optimizers["generator"], trainer.optimizers["discriminator"]
    assert g.param_groups[0]["lr"] == 3e-4 and d.param_groups[0]["lr"] == 7e-4
    assert g.param_groups[0]["betas"] == (0.5, 0.999)
    ids = {id(p) for p in trainer.networks["generator"].parameters()}
    assert ids == {id(p) for group in g.param_groups for p in group["params"]}


def test_relativistic_loss_matches_the_official_formula():
    torch.manual_seed(0)
    real, fake = torch.rand(4, 1), torch.rand(4, 1)
    bce = torch.nn.BCEWithLogitsLoss()
    ones, zeros = torch.ones(4, 1), torch.zeros(4, 1)
    official_g = (bce(fake - real.mean(), ones) + bce(real - fake.mean(), zeros)) / 2
    official_d = (bce(real - fake.mean(), ones) + bce(fake - real.mean(), zeros)) / 2
    assert torch.allclose(relativistic_loss(real, fake, real_is_real=False), official_g)
    assert torch.allclose(relativistic_loss(real, fake, real_is_real=True), official_d)


def test_lip_l1_is_the_mean_of_per_sample_box_l1():
    torch.manual_seed(0)
    g, gt = torch.rand(3, 3, 32, 32), torch.rand(3, 3, 32, 32)
    boxes = torch.tensor([[0, 0, 32, 32], [4, 10, 20, 30], [8, 8, 9, 9]])
    expected = sum(F.l1_loss(g[i, :, y1:y2, x1:x2], gt[i, :, y1:y2, x1:x2])
                   for i, (x1, y1, x2, y2) in enumerate(boxes.tolist())) / 3
    assert torch.allclose(lip_l1(g, gt, boxes), expected)


def save_torchvision_like(path, layers, extra=None):
    features = vgg_features(layers, len(layers) * 2)
    state = {f"features.{k}": v for k, v in features.state_dict().items()}
    state["classifier.0.weight"] = torch.zeros(2, 2)   # present in the real files, ignored
    state.update(extra or {})
    torch.save(state, path)


def test_feature_losses_load_files_in_the_reference_layout(tmp_path, caplog):
    save_torchvision_like(tmp_path / "vgg19.pth", VGG19_LAYERS)
    save_torchvision_like(tmp_path / "vgg16.pth", VGG16_LAYERS)
    torch.save({f"lin{i}.model.1.weight": torch.rand(1, c, 1, 1) for i, c in enumerate(LPIPS_CHANNELS)},
               tmp_path / "lpips.pth")
    config = hr_config(tmp_path, vgg19_path=str(tmp_path / "vgg19.pth"), lpips_path=str(tmp_path / "lpips.pth"),
                         lpips_vgg16_path=str(tmp_path / "vgg16.pth"))
    trainer = HyperLipsHRTrainer(config)
    assert isinstance(trainer.vgg, VGG19Perceptual) and isinstance(trainer.lpips, LPIPSVGG)
    assert trainer.vgg.features[-1].out_channels == 512          # ends at conv5_4
    assert not any(p.requires_grad for p in trainer.vgg.parameters())
    losses = trainer.train_step(hr_batch(2, 128))
    assert losses["perceptual"] > 0 and losses["lip_lpips"] > 0
    x = torch.rand(2, 3, 40, 40)
    assert torch.allclose(trainer.lpips(x, x), torch.zeros(2), atol=1e-6)  # a distance: zero on itself

    torch.save({"nonsense": torch.zeros(1)}, tmp_path / "bad.pth")
    with pytest.raises(CheckpointError):
        HyperLipsHRTrainer(hr_config(tmp_path, vgg19_path=str(tmp_path / "bad.pth")))


def test_missing_feature_weights_turn_their_losses_off_with_one_line(tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="talkingface"):
        trainer = HyperLipsHRTrainer(hr_config(tmp_path))
    assert trainer.vgg is None and trainer.lpips is None
    lines = [r.getMessage() for r in caplog.records if "loss is off" in r.getMessage()]
    assert len(lines) == 2 and all("missing_" in line and "\n" not in line for line in lines)
    assert "perceptual" not in trainer.train_step(hr_batch(2, 128))


def test_resume_restores_step_and_optimizer_state(tmp_path):
    config = hr_config(tmp_path)
    trainer = HyperLipsHRTrainer(config)
    for step in range(2):
        trainer.train_step(hr_batch(2, 128, seed=step))
        trainer.global_step += 1
    trainer.save_checkpoint()
    resumed = HyperLipsHRTrainer(hr_config(tmp_path))
    assert resumed.resume() is not None
    assert resumed.global_step == 2
    for name in ("generator", "discriminator"):
        a, b = trainer.optimizers[name].state_dict(), resumed.optimizers[name].state_dict()
        assert a["param_groups"] == b["param_groups"]
        for key, state in a["state"].items():
            assert all(torch.equal(state[k], b["state"][key][k]) for k in state)
        for p, q in zip(trainer.networks[name].parameters(), resumed.networks[name].parameters()):
            assert torch.equal(p, q)
    assert os.path.isdir(config["checkpoint_dir"])
