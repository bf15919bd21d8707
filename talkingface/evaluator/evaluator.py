"""Evaluator: generate every clip of a split from its own audio and score it against the ground truth.

    results = Evaluator(config).evaluate(trainer, split="val")

For each clip of the split (read_filelist), `trainer.generate_clip(clip)` gives (n,H,W,3) uint8 BGR
face crops; the real frames are the clip's crops at the same size (or `trainer.reference_clip(clip)`
when the trainer defines it); the audio is the clip's audio.wav. With eval_max_frames the trainer
sees the clip through `FirstFrames` (n_frames capped), so only scored frames are generated.
The metrics of config["metrics"] (METRICS registry, definitions in metrics.py) are computed per
clip; "mean" is the average of the per-clip values (counts are summed; FID is computed once over
all frames). Writes config["results_dir"]/metrics.json (strict JSON: inf as "inf") and logs a
table; returns the same dict with plain floats. Run it on one process only (Trainer.evaluate
calls it on rank 0).
"""
import logging
import os
import time

import numpy as np
import torch
from tqdm import tqdm

from talkingface.evaluator.metrics import METRICS_DOC, EvalSample, build_metrics, preprocess_pair
from talkingface.evaluator.report import NON_FINITE_NOTE, format_table, write_json_atomic
from talkingface.utils.distributed import is_main_process
from talkingface.utils.errors import InputError

logger = logging.getLogger(__name__)

SAMPLES_PER_FRAME = 640   # 16 kHz audio per 25 fps frame


class FirstFrames:
    """A Clip seen through its first `n_frames` frames, so generate_clip makes only what is scored."""

    def __init__(self, clip, n_frames):
        self._clip = clip
        self.n_frames = n_frames

    def __getattr__(self, name):     # everything else (id, mel, fps, audio_path, ...) from the clip
        if name.startswith("__") or name == "_clip":
            raise AttributeError(name)
        return getattr(self._clip, name)

    def __len__(self):
        return self.n_frames

    @property
    def boxes(self):
        return self._clip.boxes[:self.n_frames]

    def frame(self, k, size=None):
        if not 0 <= k < self.n_frames:
            raise IndexError(f"frame {k} outside the first {self.n_frames} frames of clip {self._clip.id}")
        return self._clip.frame(k, size)

    def frames(self, start, count, size=None):
        return np.stack([self.frame(k, size) for k in range(start, start + count)])


def score_samples(metrics, samples, progress=None):
    """Run `metrics` over an iterable of EvalSample: (per_clip {name: values}, mean values)."""
    per_clip, per_metric = {}, {m.name: [] for m in metrics}
    for sample in tqdm(samples, desc="evaluate", total=progress, disable=not is_main_process()):
        values = {"frames": len(sample.generated)}
        for metric in metrics:
            result = metric.compute(sample)
            per_metric[metric.name].append(result)
            values.update(result)
        per_clip[sample.name] = values
    mean = {"frames": int(sum(v["frames"] for v in per_clip.values()))}
    for metric in metrics:
        mean.update(metric.summarize(per_metric[metric.name]))
        mean.update(metric.finish())
    return per_clip, mean


class Evaluator:
    def __init__(self, config):
        self.config = config

    def _samples(self, trainer, clip_dirs, max_frames, n_videos):
        from talkingface.data.dataset.clip import Clip
        from talkingface.utils.audio import load_audio

        for index, clip_dir in enumerate(clip_dirs):
            clip = Clip(clip_dir)
            n = min(clip.n_frames, max_frames) if max_frames else clip.n_frames
            with torch.no_grad():
                generated = np.asarray(trainer.generate_clip(FirstFrames(clip, n) if n < clip.n_frames else clip))
            if generated.ndim != 4 or generated.dtype != np.uint8:
                raise TypeError(f"generate_clip must return (n,H,W,3) uint8, got {generated.dtype} {generated.shape}")
            generated = generated[:n]
            if len(generated) == 0:
                logger.warning("generate_clip gave no frames for %s: clip left out", clip.id)
                continue
            real = self._ground_truth(trainer, clip, n, generated)
            generated, real = preprocess_pair(generated, real)
            wav = load_audio(clip.audio_path)[:len(generated) * SAMPLES_PER_FRAME]
            if index < n_videos:
                self._save_video(clip, generated)
            yield EvalSample(name=clip.id, generated=generated, real=real, wav=wav, fps=clip.fps)

    @staticmethod
    def _ground_truth(trainer, clip, n, generated):
        """The clip's crops at the generated size, or the trainer's own ground truth when it has
        one (`reference_clip`, e.g. HR crops re-cut from the source above the stored crop size)."""
        if hasattr(trainer, "reference_clip"):
            view = FirstFrames(clip, n) if n < clip.n_frames else clip
            with torch.no_grad():
                return np.asarray(trainer.reference_clip(view))[:len(generated)]
        return clip.frames(0, len(generated), generated.shape[1])

    def _save_video(self, clip, generated):
        from talkingface.utils.video import VideoWriter

        path = os.path.join(self.config["results_dir"], "samples", f"{clip.id}.mp4")
        with VideoWriter(path, clip.fps, audio_path=clip.audio_path) as writer:
            for frame in generated:
                writer.write(frame)
        logger.info("sample video: %s", path)

    def evaluate(self, trainer, split="val"):
        from talkingface.data.dataset.clip import read_filelist
        from talkingface.utils.seed import init_seed

        config = self.config
        init_seed(config["seed"], config["reproducible"])
        clip_dirs = read_filelist(config, split)
        if not clip_dirs:
            raise InputError(f"the {split} split has no clips: preprocess more videos or choose another split")
        max_clips = int(config["eval_max_clips"] or 0)
        if max_clips:
            clip_dirs = clip_dirs[:max_clips]
        max_frames = int(config["eval_max_frames"] or 0)
        n_videos = int(config["eval_num_sample_videos"] or 0)

        metrics, skipped = build_metrics(config, config["metrics"])
        started = time.time()
        per_clip, mean = score_samples(metrics, self._samples(trainer, clip_dirs, max_frames, n_videos),
                                       progress=len(clip_dirs))
        results = {
            "model": config["model"], "dataset": config["dataset"], "split": split,
            "global_step": getattr(trainer, "global_step", None),
            "clips": len(per_clip), "max_frames_per_clip": max_frames or None,
            "metrics": [m.name for m in metrics], "skipped": skipped,
            "mean": mean, "per_clip": per_clip,
            "definitions": METRICS_DOC, "notes": NON_FINITE_NOTE,
            "seconds": round(time.time() - started, 1),
        }
        path = os.path.join(config["results_dir"], "metrics.json")
        write_json_atomic(path, results)
        logger.info("evaluation of %s on %s/%s (%d clips):\n%s", config["model"], config["dataset"], split,
                    len(per_clip), format_table(per_clip, mean))
        logger.info("metrics written to %s", path)
        return results
