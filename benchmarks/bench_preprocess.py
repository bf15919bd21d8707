"""Preprocessing speed: raw videos -> Base layout in a temporary folder; prints one JSON line.

    python benchmarks/bench_preprocess.py [VIDEO ...] [--workers N]

Default videos: the embedded demo set (generated in the temporary folder); pass real clips to
measure on your footage. Reports the frames written,
wall seconds of the preprocessing run (demo generation excluded), frames/s and the peak resident
memory of this process and of its worker processes. On a shared machine wall time depends on the
load; cpu_seconds (this process and its children) and frames_per_cpu_s do not: with W workers on
W idle cores, frames/s is about W * frames_per_cpu_s.
"""
import argparse
import os
import shutil
import tempfile
import time

import harness


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("videos", nargs="*", help="video files (default: the demo set)")
    parser.add_argument("--workers", type=int, default=2, help="worker processes (default 2)")
    args = parser.parse_args()

    from talkingface.config import Config
    from talkingface.data.dataprocess.demo import ensure_demo_dataset
    from talkingface.utils.runtime import keep_freed_memory
    keep_freed_memory()  # as run_talkingface.py does
    from talkingface.data.dataprocess.hyperlipsbase_process import HyperLipsBasePreprocessor

    videos = args.videos
    report_header = harness.header("cpu")
    tmp = tempfile.mkdtemp(prefix="bench_preprocess_")
    try:
        data_root = os.path.join(tmp, "data")
        os.makedirs(data_root)
        if videos:
            for i, video in enumerate(videos):  # links: the videos are read in place
                os.symlink(os.path.abspath(video), os.path.join(data_root, f"{i:03d}_{os.path.basename(video)}"))
        else:
            ensure_demo_dataset(data_root)
        config = Config(model="HyperLipsBase", dataset="MEAD", config_dict={
            "data_root": data_root, "preprocessed_root": os.path.join(tmp, "pre"),
            "num_preprocess_workers": args.workers, "log_level": "WARNING"})
        start, cpu_start = time.perf_counter(), harness.cpu_seconds()
        report = HyperLipsBasePreprocessor(config).run()
        seconds = time.perf_counter() - start
        cpu = harness.cpu_seconds() - cpu_start
        frames = sum(e.get("n_frames", 0) for e in report.values() if e["status"] == "ok")
        skipped = {rel: e["reason"] for rel, e in report.items() if e["status"] != "ok"}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    peak_self, peak_children = harness.peak_rss_mb(), harness.peak_rss_mb(children=True)
    harness.print_report(dict(
        report_header, videos=len(report), frames=frames, seconds=round(seconds, 2),
        frames_per_s=round(frames / seconds, 1), peak_rss_mb=max(peak_self, peak_children),
        peak_rss_main_mb=peak_self, peak_rss_worker_mb=peak_children, cpu_seconds=round(cpu, 2),
        frames_per_cpu_s=round(frames / cpu, 1), workers=args.workers, skipped=skipped,
        source="arguments" if args.videos else "demo"))


if __name__ == "__main__":
    main()
