"""Streaming lip-sync at real-time pace: sustained frame rate, backlog and latency, random-init weights.

    python benchmarks/bench_stream.py [--video V] [--audio A] [--seconds 60] [--modes base hr]
                                      [--batch-sizes 1 2 4 8] [--chunk-ms 20] [--device cpu] [--threads N]

Without --video, the synthetic 1280x720 talking-face clip of benchmarks/harness.py is the avatar
and its own track (looped) the audio. Each mode runs in its own process: the avatar is prepared
(prepare_seconds, not counted below), then a feeder thread releases the audio in --chunk-ms chunks
at real-time pace and the stream (talkingface.inference.stream) takes whatever has arrived,
emitting frames as their audio completes. One run per mode and --batch-sizes value
(infer_batch_size of the stream; default 1).

Reported per run:
- frames_per_s: frames emitted before close() / seconds from the first audio to the last of them;
  real time is 25;
- latency_ms p50/p95/max: per frame, from the arrival of the chunk holding the last sample the frame
  needs (utils.audio.samples_needed) to the frame's emission;
- backlog_frames: frames whose audio had arrived but were not emitted yet, averaged over the first
  and the last third of the run (growth = last - first; > 0: falling behind real time) and its max;
- frames_after_audio_end: the frames close() returned (their mel windows reach past the last sample);
- av_offset_frames: frames emitted in all (after close()) minus the frames the samples received
  imply (utils.audio.n_video_frames_for_audio); 0 means audio and video end together.
  last_frame_end_s vs audio_seconds_received: where the last frame ends (frames / 25) against the
  audio clock (samples / 16000); last_frame_end_minus_audio_ms is in (-40, 0] when av_offset is 0;
- rss_mb: resident memory sampled every --rss-every seconds from the first audio to the end of
  close(): peak in the first and the last third of the samples, growth = last - first (flat: ~0);
- prepare_profile_ms: milliseconds in each stage while the avatar was prepared (in all);
- cpu_ms_per_frame and frames_per_s_if_cores_idle = cpu_count * 1000 / cpu_ms_per_frame, as in
  bench_inference.py (on a busy machine wall-clock figures say little), and the stage profile of
  the streaming (ms per frame).

With several --batch-sizes, best_batch_within_300ms_p95 (per mode, in the report) is the batch size
with the highest frames_per_s among the runs whose latency p95 is at most 300 ms (null if none).
"""
import argparse
import os
import queue
import threading
import time

import harness

# As run_talkingface.py: idle OpenMP threads must not spin (they burn CPU time next to the decoder,
# encoder and face-mesh threads); the measured children inherit it.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def child(args):
    import logging

    import numpy as np
    import torch

    from talkingface.config import Config
    from talkingface.inference.pipeline import LipSyncer
    from talkingface.inference.profile import StageProfiler
    from talkingface.utils.audio import samples_needed
    from talkingface.model import build_network
    from talkingface.utils.audio import load_audio, n_video_frames_for_audio
    from talkingface.utils.checkpoint import save_checkpoint_file
    from talkingface.utils.runtime import keep_freed_memory

    keep_freed_memory()
    logging.getLogger("talkingface").setLevel(logging.WARNING)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    base_path, hr_path = os.path.join(args.tmp, "base.pth"), os.path.join(args.tmp, "hr.pth")
    if not os.path.exists(base_path):
        save_checkpoint_file({"state_dict": build_network("HyperLipsBase").state_dict()}, base_path)
    if args.mode == "hr" and not os.path.exists(hr_path):
        save_checkpoint_file({"state_dict": build_network("HRDecoder", 1).state_dict()}, hr_path)
    settings = dict(mode="infer", device=args.device, checkpoint=base_path)
    if args.mode == "hr":
        settings.update(checkpoint=hr_path, base_checkpoint=base_path)
    config = Config(model="HyperLipsHR" if args.mode == "hr" else "HyperLipsBase", dataset="demo",
                    config_dict=settings)
    wav = load_audio(args.audio)
    n = int(args.seconds * 16000)
    pcm = (np.clip(np.tile(wav, n // len(wav) + 1)[:n], -1, 1) * 32767).astype(np.int16)
    chunk = int(16000 * args.chunk_ms / 1000)

    syncer = LipSyncer(config).load()
    profiler = StageProfiler()
    started = time.perf_counter()
    stream = syncer.stream(args.video, profiler=profiler, infer_batch_size=args.batch_size)
    prepare_seconds = time.perf_counter() - started
    prepare_profile = {name: round(1000 * s) for name, s in profiler.seconds.items() if s}  # ms in all
    profiler.seconds = dict.fromkeys(profiler.seconds, 0.0)  # from here on: the streaming only

    arrivals = queue.Queue()  # (time the chunk was complete, samples)
    arrived_at = []           # arrival time of chunk i

    def feed():
        t0 = time.perf_counter()
        for i, start in enumerate(range(0, len(pcm), chunk)):
            delay = t0 + (i + 1) * chunk / 16000 - time.perf_counter()  # a chunk is there once recorded
            if delay > 0:
                time.sleep(delay)
            now = time.perf_counter()
            arrived_at.append(now)
            arrivals.put((now, pcm[start:start + chunk]))
        arrivals.put(None)

    rss = []  # (seconds from the first audio, resident MB), every --rss-every s until close() is done
    sampling = threading.Event()

    def sample_rss():
        while not sampling.wait(args.rss_every):
            rss.append((time.perf_counter() - t_start, harness.current_rss_mb()))

    cpu_before = harness.cpu_seconds()
    feeder = threading.Thread(target=feed, daemon=True)
    sampler = threading.Thread(target=sample_rss, daemon=True)
    emitted, backlog, done = [], [], False
    t_start = time.perf_counter()
    feeder.start()
    sampler.start()
    while not done:
        pieces = [arrivals.get()]
        while True:  # everything that has arrived meanwhile, in one push
            try:
                pieces.append(arrivals.get_nowait())
            except queue.Empty:
                break
        if pieces[-1] is None:
            done, pieces = True, pieces[:-1]
        if not pieces:
            continue
        for _ in stream.push(np.concatenate([p for _, p in pieces])):
            emitted.append(time.perf_counter())  # each frame as it is rendered
        now = time.perf_counter()
        ready, arrived = 0, len(arrived_at) * chunk  # frames whose audio has arrived by now
        while samples_needed(ready) <= arrived:
            ready += 1
        backlog.append((now - t_start, ready - len(emitted)))
    n_streamed = len(emitted)
    n_closed = len(stream.close())  # the last frames: their mel windows reach past the last sample
    sampling.set()
    sampler.join()
    rss.append((time.perf_counter() - t_start, harness.current_rss_mb()))
    cpu = harness.cpu_seconds() - cpu_before
    latency = []
    for k, t in enumerate(emitted):
        last_sample = samples_needed(k) - 1
        latency.append(1000 * (t - arrived_at[last_sample // chunk]))
    thirds = max(1, len(backlog) // 3)
    first_third = float(np.mean([b for _, b in backlog[:thirds]]))
    last_third = float(np.mean([b for _, b in backlog[-thirds:]]))
    n_all = n_streamed + n_closed
    n_samples = len(pcm)
    rss_third = max(1, len(rss) // 3)
    rss_first, rss_last = max(m for _, m in rss[:rss_third]), max(m for _, m in rss[-rss_third:])
    profiler.frames, profiler.wall = n_all, time.perf_counter() - t_start
    harness.print_child_result({
        "mode": "HR 128" if args.mode == "hr" else "Base", "audio_seconds": args.seconds,
        "chunk_ms": args.chunk_ms, "infer_batch_size": args.batch_size, "prepare_seconds": round(prepare_seconds, 2),
        "prepare_profile_ms": prepare_profile,
        "frames": n_all, "frames_after_audio_end": n_closed,
        "frames_per_s": round(n_streamed / max(1e-9, emitted[-1] - t_start), 2) if emitted else 0.0,
        "latency_ms": {"p50": round(float(np.percentile(latency, 50)), 1),
                       "p95": round(float(np.percentile(latency, 95)), 1), "max": round(max(latency), 1)},
        "backlog_frames": {"first_third": round(first_third, 2), "last_third": round(last_third, 2),
                           "growth": round(last_third - first_third, 2), "max": max(b for _, b in backlog)},
        "av_offset_frames": n_all - n_video_frames_for_audio(n_samples),
        "last_frame_end_s": round(n_all / 25, 3), "audio_seconds_received": round(n_samples / 16000, 4),
        "last_frame_end_minus_audio_ms": round(1000 * (n_all / 25 - n_samples / 16000), 1),
        "rss_mb": {"samples": len(rss), "every_s": args.rss_every, "first_third_peak": rss_first,
                   "last_third_peak": rss_last, "growth": round(rss_last - rss_first, 1)},
        "wall_seconds": round(time.perf_counter() - t_start, 1),
        "cpu_ms_per_frame": round(1000 * cpu / n_all, 1),
        "frames_per_s_if_cores_idle": round(os.cpu_count() * n_all / cpu, 2),
        "peak_rss_mb": harness.peak_rss_mb(), "load_average_1min": harness.load_average(),
        "profile": profiler.report()})


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    harness.add_inference_arguments(parser, 60.0, "seconds of audio streamed", chunked=True)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1],
                        help="infer_batch_size of the stream: one run per value")
    parser.add_argument("--rss-every", type=float, default=1.0, help="seconds between resident-memory samples")
    parser.add_argument("--batch-size", type=int, default=1, help=argparse.SUPPRESS)  # a child's
    args = parser.parse_args()
    if args.child:
        return child(args)
    report = harness.sweep(__file__, args, [("--mode", mode, "--batch-size", batch_size, "--chunk-ms", args.chunk_ms,
                                             "--rss-every", args.rss_every)
                                            for mode in args.modes for batch_size in args.batch_sizes])
    if len(args.batch_sizes) > 1:
        report["best_batch_within_300ms_p95"] = best_batch_within(report["runs"], 300.0)
    harness.print_report(report)


def best_batch_within(runs, p95_ms):
    """Per mode: the infer_batch_size with the highest frames_per_s among the runs whose latency p95
    is at most p95_ms (None if none is)."""
    best = {}
    for mode in dict.fromkeys(run["mode"] for run in runs):
        fitting = [run for run in runs if run["mode"] == mode and run["latency_ms"]["p95"] <= p95_ms]
        best[mode] = max(fitting, key=lambda run: run["frames_per_s"])["infer_batch_size"] if fitting else None
    return best


if __name__ == "__main__":
    main()
