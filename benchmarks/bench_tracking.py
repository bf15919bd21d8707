"""Face tracking with the detector on every k-th frame (infer_detect_every): time per frame and how
far the boxes move.

    python benchmarks/bench_tracking.py [--video V [V ...]] [--every 2 3] [--seconds 8] [--repeats 3]

Without --video, the synthetic 1280x720 talking-face clip of benchmarks/harness.py (--seconds long).
Each clip is decoded at 25 fps into memory first (not timed; its own process), then tracked by
utils.tracking.track_faces with the YAML's tracker settings (HyperLipsBase, demo):
- reference: detect_every=1, the detector on every frame;
- every_k: detect_every=k, what inference runs with infer_detect_every=k (the frames between two
  found faces interpolated by the tracker; around a miss every frame is detected).
Per variant: ms and CPU ms per frame of the tracking (detector set-up included, decoding excluded),
the CPU gain over the reference, and the deviation of its final boxes from the reference's: per frame
the largest |coordinate difference| in px, its max / mean / 95th percentile over the frames, and the
same as a fraction of the reference box's side ((width + height) / 2); frames whose box presence differs.
The tolerance it is compared with, `smoothing_shift`: the tracker itself moves each box off its frame's
detection by its box_smooth_window moving average; the same statistics of |final - detected| on the
reference. A variant whose deviation stays below that shift is within what the tracker already does.
"""
import argparse
import os
import statistics
import tempfile
import time

import harness

from talkingface.utils.audio import FPS  # noqa: E402  (harness puts the repository on the path)



def tracker_arguments():
    from talkingface.config import Config
    from talkingface.utils.tracking import tracker_arguments as from_config
    return from_config(Config(model="HyperLipsBase", dataset="demo"))


def deviation(boxes, reference):
    """Statistics of the per-frame largest |coordinate difference| (px and / side) where both have a box."""
    import numpy as np
    both = np.isfinite(boxes).all(axis=1) & np.isfinite(reference).all(axis=1)
    if not both.any():
        return {"frames": 0}
    diff = np.abs(boxes[both].astype(np.float64) - reference[both]).max(axis=1)
    side = ((reference[both, 2] - reference[both, 0]) + (reference[both, 3] - reference[both, 1])) / 2
    fraction = diff / side
    return {"frames": int(both.sum()), "max_px": round(float(diff.max()), 2), "mean_px": round(float(diff.mean()), 2),
            "p95_px": round(float(np.percentile(diff, 95)), 2), "max_fraction": round(float(fraction.max()), 4),
            "mean_fraction": round(float(fraction.mean()), 4), "mean_side_px": round(float(side.mean()), 1)}


def timed(function, repeats):
    """(result of the last run, median wall s, median CPU s) of `repeats` runs."""
    walls, cpus = [], []
    for _ in range(repeats):
        start, cpu_start = time.perf_counter(), harness.cpu_seconds()
        result = function()
        walls.append(time.perf_counter() - start)
        cpus.append(harness.cpu_seconds() - cpu_start)
    return result, statistics.median(walls), statistics.median(cpus)


def child(args):
    """Every variant on one clip in this process; prints its JSON line."""
    import numpy as np

    from talkingface.utils.runtime import keep_freed_memory
    from talkingface.utils.tracking import track_faces
    from talkingface.utils.video import read_frames
    keep_freed_memory()  # as run_talkingface.py does

    if args.case == "synthetic":
        return harness.print_child_result({"path": harness.synthetic_talking_video(args.path, seconds=args.seconds)})
    frames = read_frames(args.path, fps=FPS)
    height, width = frames[0].shape[:2]
    n = len(frames)
    settings = tracker_arguments()
    row = {"frames": n, "size": f"{width}x{height}", "load_average_1min": harness.load_average()}

    def rates(wall, cpu):
        return {"ms_per_frame": round(wall * 1000 / n, 2), "cpu_ms_per_frame": round(cpu * 1000 / n, 2)}

    # Untimed warm-up: mediapipe's import and first graph are paid once per process.
    track_faces(frames[:3], width, height, **settings)
    reference, wall, cpu = timed(lambda: track_faces(frames, width, height, **settings), args.repeats)
    row["reference"] = dict(rates(wall, cpu), frames_without_box=int((~np.isfinite(reference).all(axis=1)).sum()))
    reference_cpu = cpu
    # Each frame's own padded detection (no gap filled, no smoothing): the tracker's smoothing shift
    detected = track_faces(frames, width, height, **dict(settings, max_gap=0, window=1))
    row["smoothing_shift"] = deviation(reference, detected)
    for k in args.every:
        boxes, wall, cpu = timed(lambda: track_faces(frames, width, height, detect_every=k, **settings), args.repeats)
        present = np.isfinite(boxes).all(axis=1)
        moved = deviation(boxes, reference)
        row[f"every_{k}"] = dict(
            rates(wall, cpu), cpu_gain=round(reference_cpu / cpu, 2),
            frames_box_presence_differs=int((present != np.isfinite(reference).all(axis=1)).sum()),
            deviation=moved,
            within_smoothing_shift=bool(moved.get("max_px", np.inf) <= row["smoothing_shift"].get("max_px", -1)))
    row["peak_rss_mb"] = harness.peak_rss_mb()
    harness.print_child_result(row)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--video", nargs="+", help="clips (default: the synthetic 720p talking-face clip)")
    parser.add_argument("--every", nargs="+", type=int, default=[2, 3],
                        help="detect on every k-th frame, for each k given (default 2 3)")
    parser.add_argument("--seconds", type=float, default=8.0, help="length of the synthetic clip (default 8)")
    parser.add_argument("--repeats", type=int, default=1, help="timed runs of each variant (median; default 1)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--case", default="track", help=argparse.SUPPRESS)
    parser.add_argument("--path", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if any(k < 1 for k in args.every):
        parser.error("--every takes frame steps of 1 or more")
    if args.child:
        return child(args)

    report = dict(harness.header("cpu"), tracker=tracker_arguments(), every=args.every, repeats=args.repeats,
                  clips={})
    with tempfile.TemporaryDirectory(prefix="bench_tracking_") as tmp:
        videos = args.video or [harness.run_child(__file__, "--child", "--case", "synthetic", "--seconds", args.seconds,
                                                  "--path", os.path.join(tmp, "synthetic_720p.mp4"))["path"]]
        for video in videos:
            name = "synthetic_720p" if not args.video else os.path.basename(video)
            report["clips"][name] = harness.run_child(
                __file__, "--child", "--path", video, "--every", *args.every,
                "--repeats", args.repeats)
    report["peak_rss_mb"] = max(row["peak_rss_mb"] for row in report["clips"].values())
    harness.print_report(report)


if __name__ == "__main__":
    main()
