"""What the benchmark scripts share: one JSON header describing the machine, one way to measure a
case in a child process (so its peak memory is its own), CPU time, peak memory, and a synthetic
720p talking-face clip for scripts run without a video of their own.

Key names, the same in every script: device, torch, threads, cpu_count, load_average_1min (and
load_average_1min_at_end), frames_per_s, seconds, cpu_seconds, peak_rss_mb.
"""
import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO_ROOT not in sys.path:
    sys.path.insert(0, REPO_ROOT)


def device_name(device="auto"):
    """The device a benchmark runs on, as a short description (the GPU's name on CUDA)."""
    import torch
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if str(device).startswith("cuda"):
        return torch.cuda.get_device_name(torch.device(device))
    return f"cpu ({platform.processor() or platform.machine()})"


def header(device="auto", threads=0):
    """The machine a report was made on; `threads` 0 means torch's own choice."""
    import torch
    return {"device": device_name(device), "torch": torch.__version__,
            "threads": threads or torch.get_num_threads(), "cpu_count": os.cpu_count(),
            "load_average_1min": load_average()}


def load_average():
    """Above cpu_count, the timings were taken on a busy machine."""
    return round(os.getloadavg()[0], 2)


def cpu_seconds():
    """User + system CPU time of this process and of its finished children (workers, ffmpeg)."""
    total = 0.0
    for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):
        usage = resource.getrusage(who)
        total += usage.ru_utime + usage.ru_stime
    return total


def peak_rss_mb(children=False):
    """Peak resident memory of this process (or the largest finished child), in MB."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN if children else resource.RUSAGE_SELF)
    return round(usage.ru_maxrss / 1024, 1)   # ru_maxrss is in KiB on Linux


def current_rss_mb():
    """Resident memory of this process now, in MB (Linux /proc; 0.0 where it is not there)."""
    try:
        with open("/proc/self/statm") as statm:
            return round(int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20, 1)
    except OSError:
        return 0.0


def run_child(script, *args, timeout=None):
    """Run `python script args...` and return the JSON object of its last '{' line. A failed run
    stops the benchmark with the child's last lines of stderr."""
    command = [sys.executable, os.path.abspath(script), *map(str, args)]
    proc = subprocess.run(command, capture_output=True, text=True, timeout=timeout, cwd=REPO_ROOT)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = "\n".join(proc.stderr.strip().splitlines()[-8:])
        raise SystemExit(f"benchmark case failed: {' '.join(map(str, args))}\n{tail}")
    return json.loads(lines[-1])


def run_media_child(script, args, tmp, *extra, seconds=None):
    """run_child for the inference benchmarks: the options every such child takes (media, device,
    threads, scratch folder), then `extra`; prints the child's line and returns its result."""
    result = run_child(script, "--child", "--seconds", args.seconds if seconds is None else seconds,
                       "--video", args.video, "--audio", args.audio, "--device", args.device, "--tmp", tmp,
                       "--threads", args.threads, *extra)
    print_child_result(result)
    return result


def sweep(script, args, cases):
    """The parent of a benchmark that varies one setting: the media made once, one child per case
    (each case the child's extra arguments); returns the report with the children's results as runs."""
    report = dict(header(args.device, args.threads), runs=[])
    with tempfile.TemporaryDirectory(prefix=os.path.splitext(os.path.basename(script))[0] + "_") as tmp:
        default_media(args, tmp)
        for extra in cases:
            report["runs"].append(run_media_child(script, args, tmp, *extra))
    return report


def print_child_result(result):
    """A child's one line of JSON, read by run_child."""
    print(json.dumps(result), flush=True)


def print_report(report):
    report["load_average_1min_at_end"] = load_average()
    print(json.dumps(report, indent=2), flush=True)


def add_inference_arguments(parser, seconds, seconds_help, chunked=False):
    """The options the inference and streaming benchmarks share (and their child-process ones);
    `chunked` adds the audio chunk length of the benchmarks that push audio piece by piece."""
    if chunked:
        parser.add_argument("--chunk-ms", type=float, default=20.0, help="audio chunk length")
    parser.add_argument("--video", help="input video (default: a synthetic 720p talking-face clip)")
    parser.add_argument("--audio", help="driving audio, looped to --seconds (default: the video's own track)")
    parser.add_argument("--seconds", type=float, default=seconds, help=seconds_help)
    parser.add_argument("--modes", nargs="+", default=["base", "hr"], choices=["base", "hr"])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=0,
                        help="torch threads in the measured process (default: torch's own choice)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--mode", default="base", help=argparse.SUPPRESS)
    parser.add_argument("--tmp", help=argparse.SUPPRESS)


def default_media(args, tmp):
    """--video defaults to the synthetic 720p talking clip (made in `tmp`), --audio to the video's own track."""
    args.video = args.video or synthetic_talking_video(os.path.join(tmp, "synthetic_720p.mp4"))
    args.audio = args.audio or args.video


def synthetic_talking_video(path, seconds=8.0, width=1280, height=720, face_px=360):
    """A deterministic talking-face clip with its audio, at the size of typical footage: the demo
    set's face (a real photograph with a mouth that opens with the synthetic speech) on a blurred
    copy of the same photo. Written once to `path`; returns `path`."""
    if os.path.isfile(path):
        return path
    import cv2
    import numpy as np

    from talkingface.data.dataprocess import demo
    from talkingface.utils.audio import save_wav
    from talkingface.utils.video import VideoWriter

    rng = np.random.default_rng(demo.BASE_SEED)
    photo = demo.astronaut_bgr()
    n_frames = int(round(seconds * demo.FPS))
    wav = demo.synthesize_speech(n_frames / demo.FPS, rng)
    openness = demo.frame_openness(wav, n_frames)
    background = cv2.GaussianBlur(cv2.resize(photo, (width, height)), (0, 0), 25).astype(np.uint8)
    top, left = (height - face_px) // 2, (width - face_px) // 2
    partial = path + ".partial.mp4"
    wav_path = path + ".wav"
    save_wav(wav_path, wav, demo.SAMPLE_RATE)
    try:
        with VideoWriter(partial, demo.FPS, audio_path=wav_path) as writer:
            for k in range(n_frames):
                frame = background.copy()
                sway = 2.0 * np.sin(2 * np.pi * 0.3 * k / demo.FPS)
                frame[top:top + face_px, left:left + face_px] = demo.render_frame(
                    photo, float(openness[k]), (sway, 0.0), face_px)
                writer.write(frame)
        os.replace(partial, path)
    finally:
        for leftover in (partial, wav_path):
            if os.path.exists(leftover):
                os.remove(leftover)
    return path
