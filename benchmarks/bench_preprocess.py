"""Preprocessing speed: raw videos -> Base layout in a temporary folder; prints one JSON line.

    python benchmarks/bench_preprocess.py [VIDEO ...] [--workers N]

Default videos: the real 720p sample clips in ../shared/data/hyperlips_samples when present,
else the embedded demo set (generated in the temporary folder). Reports the frames written,
wall seconds of the preprocessing run (demo generation excluded), frames/s and the peak resident
memory of this process and of its worker processes. On a shared machine wall time depends on the
load; cpu_seconds (this process and its children) and frames_per_cpu_s do not: with W workers on
W idle cores, frames/s is about W * frames_per_cpu_s.
"""
import argparse
import glob
import json
import os
import resource
import shutil
import sys
import tempfile
import time

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO_ROOT)
SAMPLES_DIR = os.path.join(os.path.dirname(REPO_ROOT), "shared", "data", "hyperlips_samples")


def cpu_seconds():
    """User + system CPU time of this process and its finished children (workers, ffmpeg)."""
    total = 0.0
    for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):
        usage = resource.getrusage(who)
        total += usage.ru_utime + usage.ru_stime
    return total


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("videos", nargs="*", help="video files (default: the sample clips or the demo set)")
    parser.add_argument("--workers", type=int, default=2, help="worker processes (default 2)")
    args = parser.parse_args()

    from talkingface.config import Config
    from talkingface.data.dataprocess.demo import ensure_demo_dataset
    from talkingface.utils.runtime import keep_freed_memory
    keep_freed_memory()  # as run_talkingface.py does
    from talkingface.data.dataprocess.hyperlipsbase_process import HyperLipsBasePreprocessor

    videos = args.videos or sorted(glob.glob(os.path.join(SAMPLES_DIR, "*.mp4")))
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
        start, cpu_start = time.perf_counter(), cpu_seconds()
        report = HyperLipsBasePreprocessor(config).run()
        seconds = time.perf_counter() - start
        cpu = cpu_seconds() - cpu_start
        frames = sum(e.get("n_frames", 0) for e in report.values() if e["status"] == "ok")
        skipped = {rel: e["reason"] for rel, e in report.items() if e["status"] != "ok"}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    # ru_maxrss is in KiB on Linux; RUSAGE_CHILDREN is the largest of the finished workers.
    peak_self = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    peak_children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print(json.dumps({
        "videos": len(report), "frames": frames, "seconds": round(seconds, 2),
        "frames_per_s": round(frames / seconds, 1), "peak_rss_mb": round(max(peak_self, peak_children), 1),
        "peak_rss_main_mb": round(peak_self, 1), "peak_rss_worker_mb": round(peak_children, 1),
        "cpu_seconds": round(cpu, 2), "frames_per_cpu_s": round(frames / cpu, 1),
        "load_average_1min": round(os.getloadavg()[0], 2), "workers": args.workers, "device": "cpu", "skipped": skipped,
        "source": "arguments" if args.videos else ("samples" if videos else "demo"),
    }))


if __name__ == "__main__":
    main()
