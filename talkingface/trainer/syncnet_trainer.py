"""Training of the lip-sync expert (SyncNet_color, 128 px): BCE on the audio-video cosine.

A sample is a 5-frame window (lower halves, stacked on channels) and a mel chunk; the label says
whether the chunk belongs to the window (1) or to another place of the same clip (0). The
embeddings are L2-normalised and non-negative, so their cosine is a probability in [0, 1].
"""
import logging
import os

from talkingface.model.inputs import expert_face_input
from talkingface.model.losses import bce, sync_probability
from talkingface.trainer.trainer import Trainer, adam
from talkingface.utils import distributed as dist_utils
from talkingface.utils.files import write_json_atomic
from talkingface.utils.registry import DATASETS, MODELS, TRAINERS

logger = logging.getLogger(__name__)


@TRAINERS.register("SyncNet")
class SyncNetTrainer(Trainer):
    """networks {"syncnet"}; batches {"face": (B,15,64,128), "mel": (B,1,80,16), "label": (B,1)}."""

    def build(self):
        network = MODELS.get("SyncNet").from_config(self.config)
        self.networks = {"syncnet": network}
        self.optimizers = {"syncnet": adam(network.parameters(), lr=self.config["learning_rate"])}

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
