"""Training of the lip-sync expert (SyncNet_color, 128 px): BCE on the audio-video cosine.

A sample is a 5-frame window (lower halves, stacked on channels) and a mel chunk; the label says
whether the chunk belongs to the window (1) or to another place of the same clip (0). The
embeddings are L2-normalised and non-negative, so their cosine is a probability in [0, 1].
"""
import logging
import math
import os

from talkingface.model import create
from talkingface.model.inputs import expert_face_input
from talkingface.model.losses import bce, sync_probability
from talkingface.trainer.health import Health, StaysWithin
from talkingface.trainer.trainer import Trainer, adam
from talkingface.utils import distributed as dist_utils
from talkingface.utils.files import write_json_atomic
from talkingface.utils.registry import DATASETS, TRAINERS

logger = logging.getLogger(__name__)

# An expert that answers 0.5 whatever it sees has a BCE of ln 2 and an accuracy of 1/2; one that
# answers at random around 0.5 does worse (its BCE sits above ln 2). No better than chance: a mean
# loss above ln 2 - 0.01, a mean accuracy below 0.5 + 0.02.
CHANCE_LOSS, CHANCE_LOSS_TOL = math.log(2), 0.01
CHANCE_ACCURACY, CHANCE_ACCURACY_TOL = 0.5, 0.02


@TRAINERS.register("SyncNet")
class SyncNetTrainer(Trainer):
    """networks {"syncnet"}; batches {"face": (B,15,64,128), "mel": (B,1,80,16), "label": (B,1)}."""

    def build(self):
        network = create("SyncNet", self.config).network
        self.networks = {"syncnet": network}
        self.optimizers = {"syncnet": adam(network.parameters(), lr=self.config["learning_rate"])}
        self._build_health()

    # ------------------------------------------------------------------ health
    def _build_health(self):
        """Is the expert stuck at chance? Its training loss per step, its accuracy per validation."""
        config = self.config
        self.loss_at_chance = StaysWithin(config["health_patience"], low=CHANCE_LOSS - CHANCE_LOSS_TOL)
        self.accuracy_at_chance = StaysWithin(config["health_patience_evals"],
                                              high=CHANCE_ACCURACY + CHANCE_ACCURACY_TOL)
        self.stuck_signals = {"loss": False, "accuracy": False}
        self.health = Health(self.log_scalars, config["log_interval"])

    def check_health(self, losses):
        self._report_stuck("loss", self.loss_at_chance.update(losses["loss"]))

    def validate(self, loader):
        """Trainer.validate, its mean accuracy then judged against chance."""
        means = super().validate(loader)
        if "accuracy" in means:
            self._report_stuck("accuracy", self.accuracy_at_chance.update(means["accuracy"]))
        return means

    def _report_stuck(self, signal, holds):
        self.stuck_signals[signal] = holds
        self.health.report("syncnet_stuck", any(self.stuck_signals.values()), self.global_step,
                           lambda: self._stuck_warning(signal))

    def _stuck_warning(self, signal):
        if signal == "loss":
            window, chance = self.loss_at_chance, f"ln 2 = {CHANCE_LOSS:.4f}"
            seen = f"training loss over the last {window.patience} steps"
        else:
            window, chance = self.accuracy_at_chance, f"{CHANCE_ACCURACY}"
            seen = f"validation accuracy over the last {window.patience} validations"
        report = os.path.join(self.config["preprocessed_root"], "report.json")
        return (f"the SyncNet expert is no better than chance at step {self.global_step}: its mean {seen} is "
                f"{window.recent_mean:.4f} (chance: {chance}). If it stays there, the likely causes are audio shifted "
                "against the video, tiny or blurred faces, static or silent clips, too few speakers: see each "
                f"clip's face size, sharpness, static and silent fractions and the flagged clips in {report}")

    def _loss_and_probability(self, batch):
        face = batch["face"]
        if face.dim() == 5:  # (B,3,T,H,W) windows of whole frames
            face = expert_face_input(face)
        with self.autocast():
            audio_embedding, face_embedding = self.networks["syncnet"](batch["mel"], face)
        probability = sync_probability(audio_embedding, face_embedding)
        return bce(probability, batch["label"]), probability

    def train_step(self, batch):
        loss, _ = self._loss_and_probability(batch)
        self.optimize("syncnet", loss)
        return {"loss": loss.item()}

    def validation_step(self, batch):
        loss, probability = self._loss_and_probability(batch)
        label = batch["label"].reshape(-1).float()
        accuracy = ((probability > 0.5).float() == label).float().mean()
        return {"loss": loss.item(), "accuracy": accuracy.item()}

    def evaluate(self, split="val"):
        """The expert's score: validation loss and sync accuracy on `split`, written to
        results_dir/metrics.json (it generates no video, so the Evaluator does not apply)."""
        dataset = DATASETS.get(self.config["dataset_class"])(self.config, split)
        if split == "val" and self.last_validation and self.last_validation_step == self.global_step:
            metrics = self.last_validation   # fit() has just validated this very step
        else:
            metrics = self.validate(self.build_dataloader(dataset, train=False))
        if not dist_utils.is_main_process():
            return None
        result = {"model": self.model_name, "dataset": self.config["dataset"], "split": split,
                  "step": self.global_step, "samples": len(dataset), **metrics}
        path = os.path.join(self.results_dir, "metrics.json")
        write_json_atomic(path, result)
        logger.info("SyncNet %s: loss %.4f, sync accuracy %.3f (%s)", split, metrics.get("loss", float("nan")),
                    metrics.get("accuracy", float("nan")), path)
        return result
