"""End-to-end --mode=infer throughput and peak memory, with random-init network weights.

    python benchmarks/bench_inference.py [--video V] [--audio A] [--seconds 10] [--modes base hr]
                                         [--memory-check] [--device cpu] [--threads N]

Each run is the whole `run_inference` (decode, face tracking, mel features, networks, face mesh,
paste-back, x264 encode with the audio track) in its own subprocess, so the reported peak
resident memory (ru_maxrss of that process, not counting the ffmpeg encoder) belongs to it alone.
The audio is cut to --seconds; frames = output frames at 25 fps; fps = frames / wall seconds of
run_inference (checkpoint loading included, Python start-up excluded). HR runs at 128 px.
On a shared, busy machine wall-clock fps says little, so each run also reports its CPU time per
frame (this process + the ffmpeg children) and fps_if_cores_idle = cpu_count / cpu-seconds per
frame: the rate if its work spread perfectly over idle cores (an upper bound), plus the load average.
--memory-check also runs Base with 5 s and 20 s of audio (20 s loops the video ping-pong) and
prints their peak RSS: streaming keeps them about equal.
Prints one JSON object per run, and a summary list at the end.

Latest figures, with the commands that made them: README.md, Benchmarks.
"""
import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO_ROOT)
SAMPLES_DIR = os.path.join(os.path.dirname(REPO_ROOT), "shared", "data", "hyperlips_samples")


def child(args):
    """One run in this process; prints its JSON line."""
    import logging

    import numpy as np
    import torch

    from talkingface.config import Config
    from talkingface.inference import run_inference
    from talkingface.model import build_network
    from talkingface.utils.audio import load_audio, save_wav
    from talkingface.utils.checkpoint import save_checkpoint_file

    from talkingface.utils.runtime import keep_freed_memory
    keep_freed_memory()  # as run_talkingface.py does
    logging.getLogger("talkingface").setLevel(logging.WARNING)
    if args.threads:
        torch.set_num_threads(args.threads)  # a benchmark setting; the library never sets it
    tmp = args.tmp
    torch.manual_seed(0)
    base_path = os.path.join(tmp, "base.pth")
    hr_path = os.path.join(tmp, "hr.pth")
    if not os.path.exists(base_path):
        save_checkpoint_file({"state_dict": build_network("HyperLipsBase").state_dict()}, base_path)
    if args.mode == "hr" and not os.path.exists(hr_path):
        save_checkpoint_file({"state_dict": build_network("HRDecoder", 1).state_dict()}, hr_path)
    audio = os.path.join(tmp, f"audio_{args.seconds:g}.wav")
    if not os.path.exists(audio):
        wav = load_audio(args.audio)
        reps = int(args.seconds * 16000 // len(wav)) + 1
        save_wav(audio, np.tile(wav, reps)[:int(args.seconds * 16000)])
    overrides = dict(mode="infer", device=args.device, video=args.video, audio=audio,
                     output=os.path.join(tmp, f"out_{args.mode}_{args.seconds:g}.mp4"))
    if args.mode == "base":
        config = Config(model="HyperLipsBase", dataset="demo", config_dict=dict(overrides, checkpoint=base_path))
    else:
        config = Config(model="HyperLipsHR", dataset="demo",
                        config_dict=dict(overrides, checkpoint=hr_path, base_checkpoint=base_path))
    cpu_before = cpu_seconds()
    start = time.perf_counter()
    result = run_inference(config)
    seconds = time.perf_counter() - start
    cpu = cpu_seconds() - cpu_before
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"mode": "HR 128" if args.mode == "hr" else "Base", "frames": result.n_frames,
                      "seconds": round(seconds, 2), "fps": round(result.n_frames / seconds, 2),
                      "peak_rss_mb": round(peak_mb, 1), "device": str(config["device"]),
                      "torch_threads": torch.get_num_threads(), "audio_seconds": args.seconds,
                      "video": os.path.basename(args.video),
                      "cpu_ms_per_frame": round(1000 * cpu / result.n_frames, 1),
                      "fps_if_cores_idle": round(os.cpu_count() * result.n_frames / cpu, 2),
                      "load_avg_1min": os.getloadavg()[0]}), flush=True)


def cpu_seconds():
    """CPU time of this process and its finished children (the ffmpeg decoders/encoder)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def run_child(args, mode, seconds, tmp):
    cmd = [sys.executable, os.path.abspath(__file__), "--child", "--mode", mode, "--seconds", str(seconds),
           "--video", args.video, "--audio", args.audio, "--device", args.device, "--tmp", tmp,
           "--threads", str(args.threads)]
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = proc.stderr.strip().splitlines()[-5:]
        raise SystemExit(f"benchmark run {mode} {seconds}s failed:\n" + "\n".join(tail))
    result = json.loads(lines[-1])
    print(json.dumps(result), flush=True)
    return result


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--video", default=os.path.join(SAMPLES_DIR, "video1.mp4"))
    parser.add_argument("--audio", default=os.path.join(SAMPLES_DIR, "video1_drive.wav"))
    parser.add_argument("--seconds", type=float, default=10.0, help="audio length (the output's length)")
    parser.add_argument("--modes", nargs="+", default=["base", "hr"], choices=["base", "hr"])
    parser.add_argument("--memory-check", action="store_true", help="also compare peak RSS at 5 s and 20 s")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=0,
                        help="torch threads in the measured process (default: torch's own choice)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--mode", default="base", help=argparse.SUPPRESS)
    parser.add_argument("--tmp", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args)
    for path in (args.video, args.audio):
        if not os.path.isfile(path):
            raise SystemExit(f"not found: {path} (pass --video/--audio)")
    results = []
    with tempfile.TemporaryDirectory(prefix="bench_inference_") as tmp:
        for mode in args.modes:
            results.append(run_child(args, mode, args.seconds, tmp))
        if args.memory_check:
            short = run_child(args, "base", 5, tmp)
            long = run_child(args, "base", 20, tmp)
            results += [short, long]
            print(json.dumps({"memory_check": {"peak_rss_mb_5s": short["peak_rss_mb"],
                                               "peak_rss_mb_20s": long["peak_rss_mb"],
                                               "ratio": round(long["peak_rss_mb"] / short["peak_rss_mb"], 3)}}))
    print(json.dumps(results))


if __name__ == "__main__":
    main()
