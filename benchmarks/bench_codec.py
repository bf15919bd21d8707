"""Decode and encode: the toolkit's own (utils/video.py) against in-process PyAV, on the same clip.

    python benchmarks/bench_codec.py [--video V [V ...]] [--seconds 8] [--repeats 3] [--preset veryfast]

Without --video, the synthetic 1280x720 talking-face clip of benchmarks/harness.py (--seconds long).
Five cases per clip, each in its own process (its CPU time and peak memory are its own), each run
--repeats times (the median is reported, every run is listed):
- decode_opencv: utils.video.iter_frames(path, fps=25), what the product uses (OpenCV's bundled
  FFmpeg, in process, BGR uint8 frames on the 25 fps timeline);
- decode_pyav: PyAV decoding the same stream (thread_type AUTO: frame and slice threads), one
  bgr24 conversion context for the clip, with the same frame-count resampling to 25 fps as iter_frames;
- decode_pyav_slice: the same with libavcodec's default threading (slice threads only: one thread on
  streams without slices, as most H.264 files are);
- encode_ffmpeg: utils.video.VideoWriter (raw BGR piped to the bundled ffmpeg binary: libx264,
  --preset, crf 18, yuv420p, +faststart), without an audio track;
- encode_pyav: PyAV's libx264 in process with the same settings.
The encoders get the clip's decoded frames (held in memory, not timed). CPU time counts this process
and its finished children (the ffmpeg encoder): harness.cpu_seconds.
Also reported per clip: whether decode_pyav's frames are bit-identical to decode_opencv's (frames
compared, frames differing, largest pixel difference), and the size of each encoder's file.
"""
import argparse
import os
import statistics
import tempfile
import time
from fractions import Fraction

import harness

from talkingface.utils.audio import FPS  # noqa: E402  (harness puts the repository on the path)

CASES = ("decode_opencv", "decode_pyav", "decode_pyav_slice", "encode_ffmpeg", "encode_pyav")


def pyav_frames(path, fps=FPS, thread_type="AUTO"):
    """BGR uint8 frames of `path` decoded by PyAV, picked as iter_frames picks them: output frame j
    is the source frame on screen at j/fps, counted in decoded frames at the stream's average rate."""
    import av
    from av.video.reformatter import VideoReformatter

    from talkingface.utils.video import _source_index
    to_bgr = VideoReformatter()  # one conversion context for the clip, not one per frame
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.thread_type = thread_type
        src_fps = float(stream.average_rate or stream.guessed_rate)
        ratio = src_fps / fps if abs(src_fps - fps) > 1e-3 else 1.0
        next_out = 0
        for src, frame in enumerate(container.decode(stream)):
            if _source_index(next_out, ratio) > src:
                continue  # never on screen at an output time
            image = to_bgr.reformat(frame, format="bgr24").to_ndarray()
            first = True
            while _source_index(next_out, ratio) == src:
                yield image if first else image.copy()
                first = False
                next_out += 1


def pyav_encode(path, frames, fps, preset, crf=18):
    """libx264 in process with VideoWriter's settings (yuv420p, crf, preset, +faststart); no audio."""
    import av
    with av.open(str(path), "w", options={"movflags": "+faststart"}) as container:
        stream = None
        for image in frames:
            if stream is None:
                stream = container.add_stream("libx264", rate=Fraction(fps).limit_denominator(1001),
                                              options={"preset": preset, "crf": str(crf)})
                stream.width, stream.height, stream.pix_fmt = image.shape[1], image.shape[0], "yuv420p"
            frame = av.VideoFrame.from_ndarray(image, format="bgr24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def child(args):
    """One case on one clip, --repeats times, in this process; prints its JSON line."""
    import av  # noqa: F401  (imported before the timer, as the product imports cv2 up front)

    from talkingface.utils.runtime import keep_freed_memory
    from talkingface.utils.video import VideoWriter, iter_frames
    keep_freed_memory()  # as run_talkingface.py does: a frame's memory is reused, not mapped anew
    if args.case == "synthetic":
        return harness.print_child_result({"path": harness.synthetic_talking_video(args.path, seconds=args.seconds)})
    if args.case == "compare":
        return harness.print_child_result(compare_decoders(args.path))
    frames = None
    if args.case.startswith("encode"):
        frames = list(iter_frames(args.path, fps=FPS))
    runs = []
    for repeat in range(args.repeats):
        out = os.path.join(args.tmp, f"{args.case}_{repeat}.mp4")
        start, cpu_start = time.perf_counter(), harness.cpu_seconds()
        if args.case == "decode_opencv":
            n = sum(1 for _ in iter_frames(args.path, fps=FPS))
        elif args.case.startswith("decode_pyav"):
            n = sum(1 for _ in pyav_frames(args.path, thread_type="SLICE" if args.case.endswith("slice") else "AUTO"))
        elif args.case == "encode_ffmpeg":
            with VideoWriter(out, FPS, preset=args.preset) as writer:
                for image in frames:
                    writer.write(image)
            n = len(frames)
        else:
            pyav_encode(out, frames, FPS, args.preset)
            n = len(frames)
        seconds, cpu = time.perf_counter() - start, harness.cpu_seconds() - cpu_start
        size = os.path.getsize(out) if os.path.exists(out) else None
        if size is not None:
            os.remove(out)
        runs.append({"frames": n, "seconds": round(seconds, 3), "cpu_seconds": round(cpu, 3), "file_bytes": size})
    harness.print_child_result({"case": args.case, "runs": runs, "peak_rss_mb": harness.peak_rss_mb()})


def summarize(result):
    runs = result["runs"]
    frames = runs[0]["frames"]
    ms = statistics.median(r["seconds"] for r in runs) * 1000 / frames
    cpu_ms = statistics.median(r["cpu_seconds"] for r in runs) * 1000 / frames
    row = {"frames": frames, "frames_per_s": round(1000 / ms, 1), "ms_per_frame": round(ms, 2),
           "cpu_ms_per_frame": round(cpu_ms, 2),
           "cpu_ms_per_frame_runs": [round(r["cpu_seconds"] * 1000 / frames, 2) for r in runs],
           "peak_rss_mb": result["peak_rss_mb"]}
    if runs[0]["file_bytes"] is not None:
        row["file_bytes"] = runs[0]["file_bytes"]
    return row


def compare_decoders(path):
    """decode_pyav's frames against iter_frames', frame by frame."""
    import itertools

    import numpy as np

    from talkingface.utils.video import iter_frames
    compared = differing = largest = 0
    for ours, theirs in itertools.zip_longest(iter_frames(path, fps=FPS), pyav_frames(path)):
        if ours is None or theirs is None or ours.shape != theirs.shape:
            return {"bit_identical": False, "reason": "frame count or size differs", "frames_compared": compared}
        compared += 1
        diff = int(np.abs(ours.astype(np.int16) - theirs).max())
        differing += diff > 0
        largest = max(largest, diff)
    return {"bit_identical": differing == 0, "frames_compared": compared, "frames_differing": differing,
            "max_abs_difference": largest}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--video", nargs="+", help="clips (default: the synthetic 720p talking-face clip)")
    parser.add_argument("--seconds", type=float, default=8.0, help="length of the synthetic clip (default 8)")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each case (default 3; medians reported)")
    parser.add_argument("--preset", default="veryfast", help="x264 preset of both encoders (default: "
                        "infer_x264_preset's default, veryfast)")
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=CASES)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--case", help=argparse.SUPPRESS)
    parser.add_argument("--path", help=argparse.SUPPRESS)
    parser.add_argument("--tmp", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args)

    from importlib.metadata import version
    report = dict(harness.header("cpu"), pyav=version("av"), preset=args.preset, repeats=args.repeats, clips={})
    with tempfile.TemporaryDirectory(prefix="bench_codec_") as tmp:
        # Made in a child: a child's peak RSS starts at its parent's RSS when it is started (Linux
        # keeps ru_maxrss across fork and exec), so this process stays small.
        videos = args.video or [harness.run_child(__file__, "--child", "--case", "synthetic", "--seconds", args.seconds,
                                                  "--path", os.path.join(tmp, "synthetic_720p.mp4"))["path"]]
        for video in videos:
            row = {"load_average_1min": harness.load_average()}
            for case in args.cases:
                row[case] = summarize(harness.run_child(__file__, "--child", "--case", case, "--path", video,
                                                        "--repeats", args.repeats, "--preset", args.preset,
                                                        "--tmp", tmp))
            if {"decode_opencv", "decode_pyav"} <= set(row):
                pyav = min(row[case]["cpu_ms_per_frame"] for case in args.cases if case.startswith("decode_pyav"))
                row["decode_cpu_gain"] = round(row["decode_opencv"]["cpu_ms_per_frame"] / pyav, 2)  # PyAV's best
                row["decode_pyav_vs_opencv"] = harness.run_child(__file__, "--child", "--case", "compare",
                                                                 "--path", video)
            if {"encode_ffmpeg", "encode_pyav"} <= set(row):
                row["encode_cpu_gain"] = round(row["encode_ffmpeg"]["cpu_ms_per_frame"]
                                               / row["encode_pyav"]["cpu_ms_per_frame"], 2)
            report["clips"]["synthetic_720p" if not args.video else os.path.basename(video)] = row
    report["peak_rss_mb"] = max(r[c]["peak_rss_mb"] for r in report["clips"].values() for c in args.cases)
    harness.print_report(report)


if __name__ == "__main__":
    main()
