"""Training health checks (talkingface/trainer/health.py): the windows, the once-only warnings and
their TensorBoard scalars, and the SyncNet and Base trainers' checks."""
import math
import os
import random
import re

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from talkingface.data.dataset.syncnet_dataset import SyncNetDataset
from talkingface.trainer.health import Health, MeanRatioAbove, StaysWithin
from talkingface.trainer.hyperlipsbase_trainer import HyperLipsBaseTrainer
from talkingface.trainer.syncnet_trainer import SyncNetTrainer
from talkingface.trainer.trainer import TrainingError, adam
from talkingface.utils.checkpoint import checkpoint_path, list_checkpoints
from talkingface.utils.registry import DATASETS
from builders import LINE, LineTrainer

LN2 = math.log(2)


def feed(window, values):
    return [window.update(v) for v in values]


# ------------------------------------------------------------------ windows
def test_stays_within_judges_the_mean_of_the_last_patience_values():
    window = StaysWithin(3, low=0.68)
    assert feed(window, [0.9, 0.7]) == [False, False]        # fewer than `patience` values: no verdict
    assert feed(window, [0.69]) == [True]                     # mean 0.763
    assert feed(window, [0.6]) == [False]                     # 0.663
    assert feed(window, [0.8]) == [True]                      # 0.697: a value below does not reset it
    near_zero = StaysWithin(2, high=1e-3)
    assert feed(near_zero, [1e-4, 1e-4, 0.5, 1e-4]) == [False, True, False, False]


def test_not_falling_compares_the_last_window_with_the_first():
    flat = MeanRatioAbove(2, 1 - 0.05)
    assert feed(flat, [1.0, 1.0, 0.99, 0.98]) == [False, False, False, True]   # 0.985 > 0.95
    falling = MeanRatioAbove(2, 1 - 0.05)
    assert feed(falling, [1.0, 1.0, 0.9, 0.9, 1.0, 1.0]) == [False] * 4 + [False, True]
    assert falling.first_mean == 1.0 and falling.recent_mean == 1.0


def test_grows_past_a_multiple_of_the_first_window():
    window = MeanRatioAbove(2, 10)
    assert feed(window, [0.5, 0.7, 3.0, 6.0]) == [False, False, False, False]   # 4.5 < 6
    assert feed(window, [8.0]) == [True]                                         # 7.0 > 6


class Scalars:
    def __init__(self):
        self.written = []

    def __call__(self, prefix, values):
        self.written += [(f"{prefix}/{k}", v) for k, v in values.items()]


def test_health_warns_once_and_writes_its_scalar_on_changes_and_intervals(caplog):
    scalars, built = Scalars(), []
    health = Health(scalars, log_interval=10)

    def warning():
        built.append(1)
        return "stuck"

    with caplog.at_level("WARNING", logger="talkingface"):
        for step, holds in enumerate([False, False, True, True, False, True], start=1):
            health.report("thing", holds, step, warning)
        health.report("thing", True, 10, warning)
    assert [r.getMessage() for r in caplog.records] == ["stuck"] and built == [1]   # text built once, when logged
    assert scalars.written == [("health/thing", v) for v in (0.0, 1.0, 0.0, 1.0, 1.0)]   # steps 1, 3, 5, 6, 10


# ------------------------------------------------------------------ the one check that stops a run
def test_a_non_finite_loss_stops_the_run_and_names_the_checkpoint_it_kept(make_config, workdir):
    class GoesNan(LineTrainer):
        def loss(self, batch):
            loss = super().loss(batch)
            return loss * float("nan") if self.global_step >= 7 else loss

    trainer = GoesNan(make_config("SyncNet", **LINE))      # checkpoints every 3 steps, 2 kept
    with pytest.raises(TrainingError) as error:
        trainer.fit()
    folder = trainer.checkpoint_dir
    kept = checkpoint_path(folder, 6)
    assert [path for _, path in list_checkpoints(folder)] == [checkpoint_path(folder, 3), kept]   # nothing deleted
    assert f"became nan at step 8; the last checkpoint, {kept}, is kept" in str(error.value)


# ------------------------------------------------------------------ SyncNet on the demo set
class TinyExpert(nn.Module):
    """A stand-in for the 23M-parameter expert, with its inputs and outputs: that one was still at
    chance on the demo set after 80 steps (2.5 minutes of CPU), this one learns it in ~100 steps (~3 s)."""

    def __init__(self, dim=16):
        super().__init__()
        self.audio = nn.Sequential(nn.BatchNorm1d(8 * 16), nn.Linear(8 * 16, dim))
        self.face = nn.Sequential(nn.BatchNorm1d(15 * 8 * 16), nn.Linear(15 * 8 * 16, dim))

    def forward(self, mel, face):
        audio = self.audio(F.adaptive_avg_pool2d(mel, (8, 16)).flatten(1))
        face = self.face(F.adaptive_avg_pool2d(face, (8, 16)).flatten(1))
        return F.softplus(audio), F.softplus(face)   # non-negative, as the expert's embeddings


class TinyExpertTrainer(SyncNetTrainer):
    def build(self):
        super().build()
        self.networks["syncnet"] = TinyExpert()
        self.optimizers["syncnet"] = adam(self.networks["syncnet"].parameters(), lr=self.config["learning_rate"])


@DATASETS.register("_NoiseAudioSyncNet")
class NoiseAudioSyncNet(SyncNetDataset):
    """The demo windows with the audio replaced by noise. Fresh noise for every item: noise written
    once into the 2 training clips' mel.npy would be a code of each window's place that even the
    small expert memorises, which thousands of real clips do not allow."""

    def __getitem__(self, index):
        item = super().__getitem__(index)
        seed = random.getrandbits(32) if self.train else index   # training items are seeded by the trainer
        noise = np.random.default_rng(seed).uniform(-4, 4, item["mel"].shape)   # the mel's range
        item["mel"] = torch.from_numpy(noise.astype(np.float32))
        return item


# Both runs stop at the first step the loss check can decide (health_patience). The normal run is
# at chance too in its first steps: the patience is one within which it learns, its mean loss
# over the window ~0.64, the noise run's ~0.72 (chance: above ln 2 - 0.01 = 0.683). Validation
# accuracy (3 validations, 25 steps apart) ends ~0.62 and ~0.42 (chance: below 0.52).
PATIENCE = 100


def syncnet_run(make_config, root, data, dataset_class):
    config = make_config("SyncNet", root, **data, dataset_class=dataset_class, batch_size=8, eval_batch_size=16,
                         learning_rate=3e-3, max_steps=PATIENCE, health_patience=PATIENCE, health_patience_evals=3,
                         eval_interval=25, val_windows_per_clip=16, max_val_batches=1, log_interval=25,
                         checkpoint_interval=10 ** 6, evaluate_after_training=False)
    trainer = TinyExpertTrainer(config)
    trainer.fit()
    trainer.close()
    return trainer


def stuck_warnings(caplog):
    return [r.getMessage() for r in caplog.records
            if r.levelname == "WARNING" and "SyncNet expert is no better than chance" in r.getMessage()]


def health_scalars(trainer):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    events = EventAccumulator(os.path.join(trainer.results_dir, "tensorboard"))
    events.Reload()
    return [(e.step, e.value) for e in events.Scalars("health/syncnet_stuck")]


@pytest.mark.slow
def test_syncnet_on_noise_audio_warns_that_it_is_stuck(make_config, demo_base_data, workdir, caplog):
    with caplog.at_level("WARNING", logger="talkingface"):
        trainer = syncnet_run(make_config, workdir, demo_base_data, "_NoiseAudioSyncNet")
    warnings = stuck_warnings(caplog)
    assert len(warnings) == 1, warnings           # once, though both signals hold from then on
    assert int(re.search(r"at step (\d+):", warnings[0]).group(1)) <= PATIENCE
    assert trainer.stuck_signals == {"loss": True, "accuracy": True}
    for cause in ("audio shifted", "tiny or blurred faces", "static or silent", "too few speakers"):
        assert cause in warnings[0]
    assert os.path.join(demo_base_data["preprocessed_root"], "report.json") in warnings[0]
    assert health_scalars(trainer)[-1] == (PATIENCE, 1.0)


@pytest.mark.slow
def test_syncnet_on_the_demo_audio_does_not_warn(make_config, demo_base_data, workdir, caplog):
    with caplog.at_level("WARNING", logger="talkingface"):
        trainer = syncnet_run(make_config, workdir, demo_base_data, "SyncNetDataset")
    assert stuck_warnings(caplog) == []
    assert trainer.stuck_signals == {"loss": False, "accuracy": False}
    assert trainer.loss_at_chance.recent_mean < LN2 - 0.03       # it learned: not a near miss
    assert {value for _, value in health_scalars(trainer)} == {0.0}


# ------------------------------------------------------------------ Base: the checks on its step values
@pytest.fixture
def base_trainer(make_config, workdir):
    # No expert needed: the checks read the values a step returns, fed here directly.
    config = make_config("HyperLipsBase", workdir, sync_weight=0, health_patience=4)
    return HyperLipsBaseTrainer(config)


def base_steps(trainer, values):
    for sync, disc, gan in values:
        trainer.global_step += 1
        trainer.check_health({"l1": 0.1, "sync": sync, "gan": gan, "disc_real": disc / 2, "disc_fake": disc / 2})


def base_warnings(caplog):
    return [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]


def test_base_healthy_losses_do_not_warn(base_trainer, caplog):
    with caplog.at_level("WARNING", logger="talkingface"):
        base_steps(base_trainer, [(1.0 - 0.04 * k, 1.3, 0.7 + 0.01 * k) for k in range(16)])
    assert base_warnings(caplog) == []


def test_base_warns_once_when_the_sync_loss_does_not_fall(base_trainer, caplog):
    with caplog.at_level("WARNING", logger="talkingface"):
        base_steps(base_trainer, [(0.9, 1.3, 0.7)] * 16)
    warnings = base_warnings(caplog)
    assert len(warnings) == 1 and "lip-sync loss of the generated frames is not falling at step 8" in warnings[0]
    assert "sync_expert_path" in warnings[0] and "sync_weight" in warnings[0]


@pytest.mark.parametrize("disc, gan, seen", [(1e-4, 0.7, "its loss averages 1.00e-04"),
                                             (1.3, None, "GAN loss averages 9.000")])
def test_base_warns_once_when_the_discriminator_collapses(base_trainer, caplog, disc, gan, seen):
    gans = [0.7] * 4 + [9.0] * 12 if gan is None else [gan] * 16
    with caplog.at_level("WARNING", logger="talkingface"):
        base_steps(base_trainer, [(1.0 - 0.04 * k, disc, g) for k, g in enumerate(gans)])
    warnings = base_warnings(caplog)
    assert len(warnings) == 1 and "discriminator has collapsed" in warnings[0] and seen in warnings[0]
    assert "disc_learning_rate" in warnings[0] and "gan_weight" in warnings[0]
