from talkingface.trainer.trainer import Trainer, TrainingError

__all__ = ["Trainer", "TrainingError"]
