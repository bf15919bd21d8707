"""Does HyperLipsBase really learn? A time-bounded training run on the demo dataset, scored on
held-out clips.

Trains Base on the demo clips for `--minutes` (CPU by default, `--threads` cores), optionally
after a short SyncNet expert run, and every `--eval_every` seconds regenerates the held-out
clips (the demo's val and test splits, never trained on) with `trainer.generate_clip` to record:
- L1 against the ground-truth crops, next to the trivial baseline: the reference frame pasted
  unchanged (the same reference generate_clip uses), i.e. L1(reference, gt);
- the Pearson correlation between the generated mouth opening (face mesh inner-lip distance
  13-14 divided by the face height 10-152) and the audio loudness (RMS of each frame's 40 ms of
  audio); the same number for the ground-truth frames is the ceiling.
Prints and writes one JSON object (with the curve of both vs steps) to `--output`.

    python benchmarks/learning_quality.py --minutes 25
Training time is counted as CPU time / threads by default (`--clock cpu`): the time the same work
takes on `--threads` dedicated cores, so a run on a busy machine still gets its whole budget
(it just takes longer; `--max_wall_minutes` caps that). `--clock wall` counts elapsed time.
Everything goes under `--workdir` (default results/learning_quality): its own checkpoints and
logs, so the main checkpoints/ are left alone; the demo dataset is the usual dataset/demo/.
"""
import argparse
import json
import logging
import math
import os
import sys
import time

import numpy as np
import torch

import harness  # puts the repository on sys.path

logger = logging.getLogger("talkingface.learning_quality")

# Demo-sized training: small batches (many steps in a few CPU minutes) and a higher learning rate
# than the MEAD defaults (which stay untouched in properties/model/*.yaml). Training stops on the
# time budget (Trainer.fit's should_stop), so max_steps and the periodic validation/checkpoints
# are pushed out of reach: fit validates and saves once, when it stops.
UNBOUNDED = 10 ** 9
TIMED_RUN = dict(max_steps=UNBOUNDED, eval_interval=UNBOUNDED, checkpoint_interval=UNBOUNDED)
DEMO_BASE_OVERRIDES = dict(batch_size=2, eval_batch_size=4, learning_rate=5e-4, num_workers=0, log_interval=10)
DEMO_SYNCNET_OVERRIDES = dict(batch_size=16, eval_batch_size=16, num_workers=0, log_interval=10)


def frame_rms(wav, n_frames, fps=25, sr=16000):
    """Loudness of each video frame: RMS of its 1/fps s of audio."""
    hop = int(round(sr / fps))
    wav = np.pad(wav, (0, max(0, n_frames * hop - len(wav))))
    return np.sqrt(np.mean(wav[:n_frames * hop].reshape(n_frames, hop).astype(np.float64) ** 2, axis=1))


def mouth_openings(frames, mesh, upscale=256):
    """Inner-lip distance (landmarks 13-14) / face height (10-152) per frame; NaN where no face."""
    import cv2
    values = []
    for frame in frames:
        image = cv2.resize(frame, (upscale, upscale), interpolation=cv2.INTER_CUBIC) if frame.shape[0] < upscale else frame
        points = mesh.landmarks(image)
        if points is None:
            values.append(np.nan)
            continue
        face_height = np.linalg.norm(points[10] - points[152])
        values.append(float(np.linalg.norm(points[13] - points[14]) / max(face_height, 1e-6)))
    return np.array(values)


def rounded(value, digits=3):
    """A JSON-friendly float: None for NaN."""
    return None if math.isnan(value) else round(value, digits)


def pearson(x, y):
    keep = np.isfinite(x) & np.isfinite(y)
    if keep.sum() < 3 or np.std(x[keep]) == 0 or np.std(y[keep]) == 0:
        return float("nan")
    return float(np.corrcoef(x[keep], y[keep])[0, 1])


class HeldOut:
    """The held-out clips with their ground truth, baseline and loudness, read once."""

    def __init__(self, config, splits=("val", "test")):
        from talkingface.data.dataset.clip import Clip, read_filelist
        from talkingface.model.inputs import reference_index
        from talkingface.utils.audio import load_audio
        size = config["img_size"]
        self.clips, self.gt, self.rms = [], [], []
        for split in splits:
            for clip_dir in read_filelist(config, split):
                clip = Clip(clip_dir)
                self.clips.append(clip)
                self.gt.append(np.stack([clip.frame(k, size) for k in range(clip.n_frames)]))
                self.rms.append(frame_rms(load_audio(clip.audio_path), clip.n_frames))
        if not self.clips:
            raise SystemExit("no held-out clips (val/test filelists are empty)")
        self.baseline_l1 = float(np.mean([
            np.abs(gt[[reference_index("half_clip", k, len(gt)) for k in range(len(gt))]].astype(np.float32) - gt) .mean() / 255
            for gt in self.gt]))

    def l1(self, generated):
        return float(np.mean([np.abs(g.astype(np.float32) - gt).mean() / 255 for g, gt in zip(generated, self.gt)]))

    def correlation(self, frames_per_clip):
        from talkingface.utils.face import FaceMesh
        with FaceMesh(static_image_mode=True) as mesh:
            openings = np.concatenate([mouth_openings(frames, mesh) for frames in frames_per_clip])
        loudness = np.concatenate(self.rms)
        return pearson(openings, loudness), float(np.mean(np.isfinite(openings)))


class Clock:
    """Training time: `wall` seconds, or `cpu` = this process's CPU seconds / threads, i.e. the
    time the same work takes on `threads` dedicated cores (a fair budget on a shared machine)."""

    def __init__(self, kind, threads):
        self.kind, self.threads = kind, threads
        self.wall_start, self.cpu_start = time.monotonic(), time.process_time()

    def wall(self):
        return time.monotonic() - self.wall_start

    def cpu(self):
        return (time.process_time() - self.cpu_start) / self.threads

    def __call__(self):
        return self.cpu() if self.kind == "cpu" else self.wall()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=25.0, help="training time of Base")
    parser.add_argument("--syncnet_minutes", type=float, default=0.0,
                        help="first train a SyncNet expert this long and use the sync term (0: Base without it)")
    parser.add_argument("--eval_every", type=float, default=150.0, help="seconds of training between curve points")
    parser.add_argument("--clock", choices=("cpu", "wall"), default="cpu",
                        help="how training time is counted: cpu = process CPU time / threads (the time on "
                             "`threads` dedicated cores, robust to other load), wall = elapsed time")
    parser.add_argument("--max_steps", type=int, default=0, help="also stop at this many Base steps (0: no limit)")
    parser.add_argument("--max_wall_minutes", type=float, default=0,
                        help="stop Base training at this wall time whatever the budget (0: no limit)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--workdir", default="results/learning_quality")
    parser.add_argument("--output", default=None, help="JSON path (default <workdir>/learning_quality.json)")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                        help="extra Base config overrides, e.g. --set learning_rate=1e-4 gan_weight=0")
    args = parser.parse_args()
    from talkingface.utils.runtime import keep_freed_memory
    keep_freed_memory()  # as run_talkingface.py does
    torch.set_num_threads(args.threads)

    from talkingface.config import parse_value
    from talkingface.quick_start.quick_start import build_config, build_trainer, preprocess
    from talkingface.utils.audio import SYNCNET_T

    roots = dict(checkpoint_root=os.path.join(args.workdir, "checkpoints"),
                 results_root=os.path.join(args.workdir, "results"), device=args.device, resume=False)
    started = time.monotonic()
    report = dict(harness.header(args.device, args.threads), minutes=args.minutes)

    syncnet_report = None
    if args.syncnet_minutes > 0:
        config = build_config("SyncNet", "demo", config_dict={**roots, **TIMED_RUN, **DEMO_SYNCNET_OVERRIDES})
        preprocess(config)
        trainer = build_trainer(config)
        losses = []
        clock = Clock(args.clock, args.threads)
        trainer.fit(should_stop=lambda: clock() >= args.syncnet_minutes * 60,
                    on_step_end=lambda values: losses.append(values["loss"]))
        validation = trainer.evaluate()   # the validation fit ran when it stopped
        syncnet_report = {"steps": trainer.global_step, "first_loss": losses[0], "last_20_loss": float(np.mean(losses[-20:])),
                          "val": {k: validation[k] for k in ("loss", "accuracy")}}
        trainer.close()
        logger.info("SyncNet expert: %s", syncnet_report)

    overrides = {**roots, **TIMED_RUN, **DEMO_BASE_OVERRIDES}
    if args.max_steps:
        overrides["max_steps"] = args.max_steps
    if args.syncnet_minutes <= 0:
        overrides["sync_weight"] = 0.0
    for item in args.set:
        key, _, value = item.partition("=")
        overrides[key] = parse_value(value)
    config = build_config("HyperLipsBase", "demo", config_dict=overrides)
    preprocess(config)
    held_out = HeldOut(config)
    trainer = build_trainer(config)
    settings = {k: config[k] for k in ("batch_size", "learning_rate", "disc_learning_rate", "l1_weight",
                                       "sync_weight", "gan_weight", "img_size")}
    settings["syncnet_T"] = SYNCNET_T  # fixed by the expert; recorded as before
    logger.info("held-out: %d clips, baseline L1 %.4f; settings %s", len(held_out.clips), held_out.baseline_l1, settings)

    curve, running = [], []
    clock = Clock(args.clock, args.threads)
    wall_start = time.monotonic()
    evaluation_seconds = {"cpu": 0.0, "wall": 0.0}   # generating the curve points is not training time

    def train_seconds():
        return clock() - evaluation_seconds[args.clock]

    def point():
        cpu, wall = clock.cpu(), clock.wall()
        generated = [trainer.generate_clip(clip) for clip in held_out.clips]
        correlation, found = held_out.correlation(generated)
        evaluation_seconds["cpu"] += clock.cpu() - cpu
        evaluation_seconds["wall"] += clock.wall() - wall
        l1 = held_out.l1(generated)
        train_l1 = round(float(np.mean(running)), 5) if running else None  # mean since the last point
        running.clear()
        curve.append({"step": trainer.global_step, "train_seconds": round(train_seconds(), 1),
                      "wall_seconds": round(time.monotonic() - wall_start, 1),
                      "heldout_l1": round(l1, 5), "train_l1": train_l1,
                      "mouth_loudness_pearson": rounded(correlation), "mouth_found_fraction": round(found, 3)})
        logger.info("step %d (%.0f s %s): held-out L1 %.4f (baseline %.4f), train L1 %s, mouth/loudness r %s",
                    trainer.global_step, train_seconds(), args.clock, l1, held_out.baseline_l1, train_l1,
                    rounded(correlation))

    budget = args.minutes * 60
    wall_limit = args.max_wall_minutes * 60 or float("inf")
    stop_reason = "time budget"

    def stopped():
        return (train_seconds() >= budget or (args.max_steps and trainer.global_step >= args.max_steps)
                or time.monotonic() - wall_start >= wall_limit)

    next_point = [args.eval_every]
    trained = [0.0]     # training seconds when training stopped (fit's last validation is not training)

    def step_end(values):
        running.append(values["l1"])
        if stopped() or train_seconds() >= next_point[0]:
            trained[0] = train_seconds()
            point()
            next_point[0] = train_seconds() + args.eval_every

    point()
    trainer.fit(should_stop=stopped, on_step_end=step_end)   # it saves a checkpoint when it stops
    if trainer.global_step == 0:
        trained[0] = train_seconds()
    if args.max_steps and trainer.global_step >= args.max_steps:
        stop_reason = "max_steps"
    elif trained[0] < budget:
        stop_reason = "max_wall_minutes (budget not used up)"

    gt_correlation, gt_found = held_out.correlation(held_out.gt)
    final = curve[-1]["heldout_l1"]
    report.update({
        "command": "python " + " ".join(sys.argv),
        "settings": settings,
        "syncnet": syncnet_report,
        "heldout_clips": [clip.id for clip in held_out.clips],
        "heldout_frames": int(sum(len(g) for g in held_out.gt)),
        "clock": args.clock,
        "stopped_by": stop_reason,
        "train_minutes": round(trained[0] / 60, 2),
        "steps": trainer.global_step,
        "frames_seen": trainer.global_step * config["batch_size"] * SYNCNET_T,
        "final_heldout_l1": final,
        "baseline_l1_reference_pasted": round(held_out.baseline_l1, 5),
        "below_baseline": bool(final < held_out.baseline_l1),
        "mouth_loudness_pearson": curve[-1]["mouth_loudness_pearson"],
        "mouth_found_fraction": curve[-1]["mouth_found_fraction"],
        "gt_mouth_loudness_pearson": rounded(gt_correlation),
        "gt_mouth_found_fraction": round(gt_found, 3),
        "curve": curve,
        "wall_minutes": round((time.monotonic() - started) / 60, 1),
    })
    trainer.close()
    output = args.output or os.path.join(args.workdir, "learning_quality.json")
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    harness.print_report(report)
    with open(output, "w", encoding="utf-8") as f:
        json.dump(report, f, indent=2)


if __name__ == "__main__":
    main()
