"""Training data loading throughput: can the loader feed a GPU? Prints one JSON object.

    python benchmarks/bench_dataloader.py [--models SyncNet HyperLipsBase] [--workers 0 2] [--batches 30]

Builds (or reuses) the demo dataset's preprocessed clips, then iterates the real training
DataLoader of each model (the trainer's own `build_datasets` / `build_dataloader`, shuffled, at
the model's batch size unless --batch is given) for --batches batches after one warm-up batch,
once per worker count, in a fresh process each. Reports batches/s, samples/s and frames/s (a
sample is a 5-frame window; a Base sample also carries its 5-frame reference window, not counted
in frames/s), the main process's CPU time per batch, and its peak resident memory after building
the dataset and after iterating (the dataset keeps an index and each clip's mel, not frames).
"""
import argparse
import os
import tempfile
import time

import harness

T = 5


def measure(model, workers, batches, batch_size, root):
    from talkingface.quick_start.quick_start import build_config, build_trainer, preprocess
    from talkingface.utils.runtime import keep_freed_memory

    keep_freed_memory()  # as run_talkingface.py does
    overrides = dict(checkpoint_root=os.path.join(root, "checkpoints"), results_root=os.path.join(root, "results"),
                     device="cpu", num_workers=workers)
    if model == "HyperLipsBase":
        overrides["sync_weight"] = 0.0  # no expert needed to build the trainer
    if batch_size:
        overrides["batch_size"] = batch_size
    config = build_config(model, "demo", config_dict=overrides)
    preprocess(config)
    trainer = build_trainer(config)
    train_set, _ = trainer.build_datasets()
    rss_built = harness.peak_rss_mb()
    loader = trainer.build_dataloader(train_set, train=True)

    def batches_forever():
        while True:
            yield from loader

    stream = batches_forever()
    next(stream)  # warm-up: worker start-up, first file opens
    samples = 0
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(batches):
        batch = next(stream)
        samples += len(next(iter(batch.values())))
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    trainer.close()
    return {"workers": workers, "batch_size": config["batch_size"], "clips": len(getattr(train_set, "clips", [])),
            "batches_per_s": round(batches / wall, 2), "samples_per_s": round(samples / wall, 1),
            "frames_per_s": round(samples * T / wall, 1), "main_cpu_ms_per_batch": round(1000 * cpu / batches, 1),
            "peak_rss_mb_after_build": rss_built, "peak_rss_mb_after_iterating": harness.peak_rss_mb()}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["SyncNet", "HyperLipsBase"])
    parser.add_argument("--workers", nargs="+", type=int, default=[0, 2])
    parser.add_argument("--batches", type=int, default=30)
    parser.add_argument("--batch", type=int, default=0, help="batch size (0: the model's YAML value)")
    parser.add_argument("--_child", nargs=2, metavar=("MODEL", "WORKERS"), help=argparse.SUPPRESS)
    parser.add_argument("--_root", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args._child:
        model, workers = args._child
        harness.print_child_result(measure(model, int(workers), args.batches, args.batch, args._root))
        return
    report = dict(harness.header("cpu"), models={})
    with tempfile.TemporaryDirectory() as root:
        for model in args.models:
            report["models"][model] = [
                harness.run_child(__file__, "--_child", model, workers, "--batches", args.batches,
                                  "--batch", args.batch, "--_root", root)
                for workers in args.workers]
    harness.print_report(report)

if __name__ == "__main__":
    main()
