"""Training-step throughput and peak memory of SyncNet, HyperLipsBase and HyperLipsHR (128/256).

Runs the real trainers' `train_step` (losses, backward, optimizer steps; Base with its frozen
expert and discriminator, HR with its discriminator) on random tensors of the real shapes, on
CUDA when present, else the CPU. Frames per step = batch * T (T = 5) for SyncNet and Base, batch
for HR (single frames). Each model is measured in its own subprocess, so the CPU peak (max
resident set size) belongs to that model alone. Prints one JSON object.

    python benchmarks/bench_train.py [--models SyncNet HyperLipsBase HyperLipsHR@128 HyperLipsHR@256] [--batch 2] [--steps 3] [--threads N] [--compile] [--amp bfloat16]
On a machine shared with other jobs, fewer threads are often faster (idle OpenMP threads spin).
"""
import argparse
import os
import tempfile
import time

import harness

T = 5


def synthetic_batch(model, batch_size, device, size=128, hr_size=128):
    import torch
    generator = torch.Generator().manual_seed(0)
    if model == "HyperLipsHR":  # single frames: [Base face, sketch] at 128 -> ground truth at hr_size
        mask = torch.zeros(batch_size, 1, hr_size, hr_size)
        mask[:, :, hr_size // 2:hr_size * 7 // 8, hr_size // 4:hr_size * 3 // 4] = 1
        batch = {"input": torch.rand(batch_size, 6, size, size, generator=generator),
                 "gt": torch.rand(batch_size, 3, hr_size, hr_size, generator=generator), "mask": mask,
                 "lip_box": torch.tensor([[hr_size // 4, hr_size // 2, hr_size * 3 // 4, hr_size * 7 // 8]] * batch_size)}
    elif model == "SyncNet":
        batch = {"face": torch.rand(batch_size, 3 * T, size // 2, size, generator=generator),
                 "mel": torch.randn(batch_size, 1, 80, 16, generator=generator),
                 "label": (torch.rand(batch_size, 1, generator=generator) > 0.5).float()}
    else:
        gt = torch.rand(batch_size, 3, T, size, size, generator=generator)
        masked = gt.clone()
        masked[:, :, :, size // 2:] = 0
        batch = {"face": torch.cat([masked, torch.rand_like(gt)], dim=1), "gt": gt,
                 "indiv_mels": torch.randn(batch_size, T, 1, 80, 16, generator=generator),
                 "mel": torch.randn(batch_size, 1, 80, 16, generator=generator)}
    return {k: v.to(device) for k, v in batch.items()}


def measure(model, batch_size, steps, device_name, threads, compile_networks=False, amp="auto"):
    """Run in a fresh process: build the trainer, warm up one step, time `steps` steps.

    `model` is a model name; "HyperLipsHR@256" picks the HR decoder's output size.
    """
    import torch
    from talkingface.utils.runtime import keep_freed_memory
    keep_freed_memory()  # as run_talkingface.py does
    model, _, hr_size = model.partition("@")
    hr_size = int(hr_size or 128)
    if threads:
        torch.set_num_threads(threads)

    from talkingface.config import Config
    from talkingface.model.audio_driven_talkingface.syncnet import SyncNet
    from talkingface.quick_start.quick_start import build_trainer
    from talkingface.utils.checkpoint import checkpoint_path, save_checkpoint_file

    with tempfile.TemporaryDirectory() as root:
        overrides = dict(checkpoint_root=os.path.join(root, "checkpoints"), results_root=os.path.join(root, "results"),
                         device=device_name, batch_size=batch_size, compile=compile_networks)
        if amp == "off":
            overrides["amp"] = False
        elif amp != "auto":   # bfloat16 / float16
            overrides.update(amp=True, amp_dtype=amp)
        if model == "HyperLipsHR":
            overrides["img_size"] = hr_size
        if model == "HyperLipsBase":  # a random expert where Base looks for it
            save_checkpoint_file({"state_dict": SyncNet().state_dict()},
                                 checkpoint_path(os.path.join(root, "checkpoints", "demo", "SyncNet"), 1))
        config = Config(model=model, dataset="demo", config_dict=overrides)
        trainer = build_trainer(config)
        device = trainer.device
        batch = synthetic_batch(model, batch_size, device, hr_size=hr_size)
        trainer._set_mode(True)
        warm_up = time.perf_counter()
        trainer.train_step(batch)  # warm-up: allocator, cuDNN autotuning, optimizer state, compilation
        warm_up = time.perf_counter() - warm_up
        if device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        start, cpu_start = time.perf_counter(), time.process_time()
        for _ in range(steps):
            trainer.train_step(batch)
        if device.type == "cuda":
            torch.cuda.synchronize()
        seconds = (time.perf_counter() - start) / steps
        cpu_seconds = (time.process_time() - cpu_start) / steps
    frames = batch_size if model == "HyperLipsHR" else batch_size * T  # HR batches single frames
    result = {"batch": batch_size, "frames_per_step": frames, "seconds_per_step": round(seconds, 3),
              "cpu_seconds_per_step": round(cpu_seconds, 3), "threads": torch.get_num_threads(),
              "frames_per_s": round(frames / seconds, 2), "amp": str(trainer.amp_dtype) if trainer.amp_enabled else "off",
              "compiled": compile_networks, "first_step_seconds": round(warm_up, 1)}
    if device.type == "cuda":
        result["peak_cuda_memory_mb"] = round(torch.cuda.max_memory_allocated() / 2 ** 20, 1)
    result["peak_rss_mb"] = harness.peak_rss_mb()
    return result


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["SyncNet", "HyperLipsBase", "HyperLipsHR@128", "HyperLipsHR@256"])
    parser.add_argument("--batch", type=int, default=2, help="windows of 5 frames per step")
    parser.add_argument("--steps", type=int, default=3, help="timed steps (after one warm-up step)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--compile", action="store_true", help="torch.compile the networks (compile=true)")
    parser.add_argument("--amp", default="auto", choices=["auto", "off", "bfloat16", "float16"],
                        help="mixed precision (auto: the YAML default, on for CUDA)")
    parser.add_argument("--_child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args._child:  # one model, in this process
        harness.print_child_result(measure(args._child, args.batch, args.steps, args.device, args.threads,
                                           args.compile, args.amp))
        return

    import torch
    device = "cuda" if args.device == "auto" and torch.cuda.is_available() else args.device
    device = "cpu" if device == "auto" else device
    report = dict(harness.header(device, args.threads), models={})
    for model in args.models:
        report["models"][model] = harness.run_child(
            __file__, "--_child", model, "--batch", args.batch, "--steps", args.steps, "--device", device,
            "--threads", args.threads, *(["--compile"] if args.compile else []), "--amp", args.amp)
    harness.print_report(report)

if __name__ == "__main__":
    main()
