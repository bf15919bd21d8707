"""HyperLipsBaseTrainer on one tiny synthetic batch of the real shapes (B=1, T=5, 128 px)."""
import copy

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from talkingface.model import load_network
from talkingface.model.inputs import masked_input, reference_index
from talkingface.model.losses import bce
from talkingface.trainer.hyperlipsbase_trainer import HyperLipsBaseTrainer
from talkingface.utils.checkpoint import latest_checkpoint
from talkingface.utils.errors import CheckpointError
from talkingface.utils.gradients import GradientRecorder, relative_difference
import narrow_networks
from builders import FakeClip, base_batch, base_config
from step_checks import flat_gradients, record_seed_ratios


def test_missing_expert_is_a_one_line_error_naming_the_command(workdir):
    with pytest.raises(CheckpointError) as error:
        HyperLipsBaseTrainer(base_config(workdir))
    message = str(error.value)
    assert "\n" not in message
    assert "checkpoints/demo/SyncNet/" in message
    assert "python run_talkingface.py --model=SyncNet --dataset=demo" in message


def test_an_explicit_expert_path_that_does_not_exist_is_named(workdir):
    with pytest.raises(CheckpointError, match="nowhere.pth"):
        HyperLipsBaseTrainer(base_config(workdir, sync_expert_path=str(workdir / "nowhere.pth")))


def test_without_the_sync_term_no_expert_is_needed(workdir):
    trainer = HyperLipsBaseTrainer(base_config(workdir, sync_weight=0))
    assert trainer._expert is None


@pytest.mark.slow
def test_training_steps_lower_the_loss_on_a_fixed_batch(workdir, monkeypatch):
    # That training moves the loss does not depend on the width: reduced-width networks.
    narrow_networks.install(monkeypatch)
    narrow_networks.random_checkpoint("SyncNet", workdir / "checkpoints" / "demo" / "SyncNet", seed=1)
    torch.manual_seed(0)
    trainer = HyperLipsBaseTrainer(base_config(workdir, learning_rate=1e-3))
    batch = base_batch()
    trainer._set_mode(True)
    logs = [trainer.train_step(batch) for _ in range(5)]
    assert {"l1", "sync", "gan", "total", "disc_real", "disc_fake"} <= set(logs[0])
    assert all(np.isfinite(v) for log in logs for v in log.values())
    assert logs[-1]["l1"] < logs[0]["l1"]
    assert not any(p.requires_grad for p in trainer.expert.parameters())   # the expert stays frozen
    trainer._set_mode(False)
    with torch.no_grad():
        values = trainer.validation_step(batch)
    assert set(values) == {"l1", "sync", "total"}


@pytest.mark.slow
def test_checkpoint_resume_continues_with_identical_optimizer_state(workdir, monkeypatch):
    narrow_networks.install(monkeypatch)   # resuming is plumbing: reduced-width networks
    narrow_networks.random_checkpoint("SyncNet", workdir / "checkpoints" / "demo" / "SyncNet", seed=1)
    torch.manual_seed(0)
    config = base_config(workdir, gan_weight=0.2)
    trainer = HyperLipsBaseTrainer(config)
    trainer._set_mode(True)
    trainer.train_step(base_batch())
    trainer.global_step = 1
    trainer.save_checkpoint()
    assert latest_checkpoint(trainer.checkpoint_dir).endswith("checkpoint_step000000001.pth")

    fresh = HyperLipsBaseTrainer(base_config(workdir, gan_weight=0.2))
    fresh.resume()
    assert fresh.global_step == 1
    for name in ("generator", "discriminator"):
        saved, loaded = trainer.optimizers[name].state_dict(), fresh.optimizers[name].state_dict()
        assert saved["param_groups"] == loaded["param_groups"]
        for index, state in saved["state"].items():
            for key, value in state.items():
                assert torch.equal(loaded["state"][index][key], value)
        for a, b in zip(trainer.networks[name].state_dict().values(), fresh.networks[name].state_dict().values()):
            assert torch.equal(a, b)


@pytest.mark.parametrize("weights, gan_path", [
    ({}, "from_d_backward"),   # the YAML's loss weights (the official 0.03/0.2/0.77)
    ({"sync_weight": 0.0, "gan_weight": 1.0, "l1_weight": 0.0}, "from_d_backward"),   # GAN term alone
    ({"sync_weight": 0.0, "gan_weight": 1.0, "l1_weight": 0.0}, "through_d"),  # the fallback: D all but sure of a fake
])
def test_train_step_gives_the_official_step_order_gradients(workdir, random_expert, weights, gan_path):
    """train_step shares one discriminator pass between the two players, takes the generator's
    GAN gradient from D's backward, and restricts each backward to its own parameters; the
    gradients of every parameter of both networks must equal the official order's: G step with
    D(g), then D(gt) and D(g.detach()) for the D step."""
    expert_path = random_expert(workdir)
    torch.manual_seed(0)
    trainer = HyperLipsBaseTrainer(base_config(workdir, **weights))
    config = trainer.config
    sync_weight, gan_weight, l1_weight = config["sync_weight"], config["gan_weight"], config["l1_weight"]
    if not weights:
        assert (sync_weight, gan_weight, l1_weight) == (0.03, 0.2, 0.77)
    if gan_path == "through_d":
        trainer.MAX_SEED_RATIO = 0.0   # every seed ratio counts as unsafe
    factors = record_seed_ratios(trainer)
    generator, discriminator = trainer.networks["generator"], trainer.networks["discriminator"]
    ref_generator, ref_discriminator = copy.deepcopy(generator), copy.deepcopy(discriminator)
    trainer.optimizers = {"generator": GradientRecorder(generator.parameters()),
                          "discriminator": GradientRecorder(discriminator.parameters())}
    batch = base_batch(frames=5 if sync_weight else 2)   # 2 frames run faster where the expert is not used
    trainer._set_mode(True)
    trainer.train_step(batch)
    assert len(factors) == 1 and (factors[0] is None) == (gan_path == "through_d")

    # The official step (Train_hyperlipsBase.py), written out with torch alone: BCE of D(g) against
    # "real", L1 against the ground truth, and the sync loss: the lower halves of the T generated
    # frames stacked on the channels (64x128), mirrored as the expert's data were (syncnet_hflip),
    # through the frozen expert, BCE of the embeddings' cosine similarity against "in sync".
    def bce_to(probabilities, label):
        probabilities = probabilities.reshape(-1)
        return F.binary_cross_entropy(probabilities, torch.full_like(probabilities, label))

    ref_generator.train(), ref_discriminator.train()
    g = ref_generator(batch["indiv_mels"], batch["face"])
    loss = gan_weight * bce_to(ref_discriminator(g), 1.0) + l1_weight * F.l1_loss(g, batch["gt"])
    if sync_weight:
        lower = g[:, :, :, g.shape[3] // 2:]
        face = F.interpolate(torch.cat([lower[:, :, t] for t in range(lower.shape[2])], dim=1), size=(64, 128),
                             mode="bilinear", align_corners=False)
        if config["syncnet_hflip"]:
            face = face.flip(-1)
        audio_embedding, face_embedding = load_network("SyncNet", expert_path).eval()(batch["mel"], face)
        loss = loss + sync_weight * bce_to(F.cosine_similarity(audio_embedding, face_embedding, dim=1), 1.0)
    ref_d_loss = bce_to(ref_discriminator(batch["gt"]), 1.0) + bce_to(ref_discriminator(g.detach()), 0.0)
    expected = {"generator": flat_gradients(loss, ref_generator),
                "discriminator": flat_gradients(ref_d_loss, ref_discriminator)}
    for name, reference in expected.items():
        assert reference.abs().max() > 0
        error = relative_difference(trainer.optimizers[name].flat(), reference)
        assert error < 2e-5, f"{name} gradients differ by {error:.2e} (relative norm)"
    ours_state, ref_state = generator.state_dict(), ref_generator.state_dict()
    for key, parameter in ref_state.items():    # BatchNorm running statistics of the one G forward
        torch.testing.assert_close(ours_state[key], parameter, rtol=1e-5, atol=1e-7, msg=key)


# Both are slow on a CPU without native bfloat16/float16 convolutions (minutes for this one step).
@pytest.mark.slow
@pytest.mark.parametrize("amp_dtype", ["bfloat16", "float16"])
def test_train_step_under_mixed_precision(workdir, amp_dtype):
    """bf16 takes the GAN gradient from D's backward, fp16 (loss scaling) the second pass through
    D; both must give the gradients of the official order run under the same autocast (bf16
    rounding alone moves them by a few percent, so the bound is loose but catches a wrong factor
    or a missing unscale)."""
    torch.manual_seed(0)
    trainer = HyperLipsBaseTrainer(base_config(workdir, gan_weight=1.0, sync_weight=0, l1_weight=0,
                                               amp=True, amp_dtype=amp_dtype))
    factors = record_seed_ratios(trainer)
    generator, discriminator = trainer.networks["generator"], trainer.networks["discriminator"]
    reference = {"generator": copy.deepcopy(generator), "discriminator": copy.deepcopy(discriminator)}
    trainer.optimizers = {name: GradientRecorder(network.parameters()) for name, network in trainer.networks.items()}
    # One frame (no sync term, so any number works): half-precision convolutions are emulated on
    # this CPU, seconds each. With one frame the loss's gradients are larger, so GradScaler's
    # default first scale (2**16) would overflow fp16 and skip the step; it starts lower here.
    scale = 2.0 ** 10 if amp_dtype == "float16" else 1.0   # fp16 gradients underflow unscaled
    if amp_dtype == "float16":
        trainer.scalers = {name: torch.amp.GradScaler("cpu", init_scale=scale) for name in trainer.optimizers}
    batch = base_batch(frames=1)
    trainer._set_mode(True)
    trainer.train_step(batch)
    assert (factors[0] is None) == (amp_dtype == "float16")
    assert all(s.get_scale() == scale for s in trainer.scalers.values() if s.is_enabled())   # not skipped

    for network in reference.values():
        network.train()
    with torch.autocast("cpu", dtype=getattr(torch, amp_dtype)):
        g = reference["generator"](batch["indiv_mels"], batch["face"])
        g_loss = bce(reference["discriminator"](g), 1.0)
        d_loss = bce(reference["discriminator"](batch["gt"]), 1.0) + bce(reference["discriminator"](g.detach()), 0.0)
    expected = {"generator": flat_gradients(g_loss * scale, reference["generator"]) / scale,
                "discriminator": flat_gradients(d_loss * scale, reference["discriminator"]) / scale}
    for name, wanted in expected.items():
        ours = trainer.optimizers[name].flat()
        assert torch.isfinite(ours).all() and wanted.norm() > 0
        error = relative_difference(ours, wanted)
        assert error < 0.1, f"{name} gradients differ by {error:.2e} under {amp_dtype}"


def test_generate_clip_returns_every_frame_as_uint8_bgr(workdir):
    torch.manual_seed(0)
    trainer = HyperLipsBaseTrainer(base_config(workdir, sync_weight=0, eval_batch_size=1, mode="evaluate"))
    trainer._set_mode(True)
    frames = trainer.generate_clip(FakeClip(6))   # 6 frames in batches of 5: a partial last batch
    assert frames.shape == (6, 128, 128, 3) and frames.dtype == np.uint8
    assert trainer.networks["generator"].training                       # mode restored


def test_reference_frames_and_masking():
    assert [reference_index("half_clip", k, 10) for k in (0, 4, 5, 9)] == [5, 9, 0, 4]
    target, reference = torch.rand(2, 3, 8, 8), torch.rand(2, 3, 8, 8)
    face = masked_input(target, reference)
    assert face.shape == (2, 6, 8, 8)
    assert torch.equal(face[:, :3, :4], target[:, :, :4]) and face[:, :3, 4:].abs().sum() == 0
    assert torch.equal(face[:, 3:], reference)
