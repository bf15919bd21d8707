"""Live mode (talkingface/live.py, LipSync.live) at real-time pace: frames/s delivered, latency, drops.

    python benchmarks/bench_live.py [--video V] [--audio A] [--seconds 20] [--max-latency-ms 500 ...]
                                    [--chunk-ms 20] [--device cpu] [--threads N]

Without --video, the synthetic 1280x720 talking-face clip of benchmarks/harness.py is the avatar
and its own track (looped) the audio; random-init Base weights. Each run has its own process: the
avatar is prepared once into a temporary avatar cache (not counted), then a feeder pushes the audio
in --chunk-ms chunks at real-time pace into LipSync.live while a consumer takes the frames as the
WebRTC sender of the web app does (get()).

Reported per run (one per --max-latency-ms value):
- frames_per_s: frames taken / seconds from the first audio to the end of the audio;
- latency_ms p50/p95/max: per frame taken, the audio received after its time when it was taken
  (LiveSession.stats' definition: includes the up to 212.5 ms the model hears after a frame);
- frames_over_bound: frames later than max_latency_ms + their own render time + a chunk (0 expected);
- first_frame_latency_ms: the first frame's (its render includes the stream's first-call costs);
- dropped: frames skipped or superseded; frames + dropped <= the frames the audio implies (25/s);
- frames_taken_first_half / second_half: steady (no growing backlog) when close.
"""
import argparse
import os
import threading
import time

import harness

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def child(args):
    import logging

    import numpy as np
    import torch

    from talkingface import LipSync
    from talkingface.model import build_network
    from talkingface.utils.audio import load_audio
    from talkingface.utils.checkpoint import save_checkpoint_file

    logging.getLogger("talkingface").setLevel(logging.WARNING)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    base_path = os.path.join(args.tmp, "base.pth")
    if not os.path.exists(base_path):
        save_checkpoint_file({"state_dict": build_network("HyperLipsBase").state_dict()}, base_path)
    lipsync = LipSync("HyperLipsBase", checkpoint=base_path, dataset="demo", device=args.device,
                      avatar_cache_dir=os.path.join(args.tmp, "avatars"))
    wav = load_audio(args.audio)
    n = int(args.seconds * 16000)
    pcm = (np.clip(np.tile(wav, n // len(wav) + 1)[:n], -1, 1) * 32767).astype(np.int16)
    chunk = int(16000 * args.chunk_ms / 1000)
    with lipsync.stream(args.video, avatar_cache="on", infer_batch_size=1):
        pass  # the avatar into the cache, as the page's "Prepare avatar" does

    max_latency_ms = args.max_latency_ms[0]  # a child runs one value
    live = lipsync.live(args.video, max_latency_ms=max_latency_ms)
    while live.state == "starting":
        time.sleep(0.01)
    taken, latencies, over = [], [], []

    def consume():
        while (frame := live.get(timeout=5)) is not None:
            taken.append(time.perf_counter())
            latencies.append(1000 * (live.stats()["audio_s"] - frame.time))
            # the bound: max_latency_ms + this frame's render + a chunk (+ stats' 10 ms rounding)
            over.append(latencies[-1] > max_latency_ms + 1000 * frame.render_s + args.chunk_ms + 10)

    consumer = threading.Thread(target=consume)
    consumer.start()
    t0 = time.perf_counter()
    for i, start in enumerate(range(0, len(pcm), chunk)):
        delay = t0 + (i + 1) * chunk / 16000 - time.perf_counter()  # a chunk is there once recorded
        if delay > 0:
            time.sleep(delay)
        live.push(pcm[start:start + chunk])
    t_end = time.perf_counter()
    stats = live.stats()
    live.close()
    consumer.join()
    half = t0 + (t_end - t0) / 2
    harness.print_child_result({
        "mode": "Base", "audio_seconds": args.seconds, "chunk_ms": args.chunk_ms,
        "max_latency_ms": max_latency_ms, "frames": len(taken), "dropped": live.dropped,
        "frames_implied_by_audio": n // 640,
        "frames_per_s": round(sum(t <= t_end for t in taken) / (t_end - t0), 2),
        "latency_ms": {"p50": round(float(np.percentile(latencies, 50))),
                       "p95": round(float(np.percentile(latencies, 95))), "max": round(max(latencies))}
        if latencies else None,
        "first_frame_latency_ms": round(latencies[0]) if latencies else None,
        "frames_over_bound": sum(over),
        "frames_taken_first_half": sum(t < half for t in taken),
        "frames_taken_second_half": sum(half <= t <= t_end for t in taken),
        "session_stats_at_end": stats, "load_average_1min": harness.load_average()})


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    harness.add_inference_arguments(parser, 20.0, "seconds of audio pushed", chunked=True)
    parser.add_argument("--max-latency-ms", type=int, nargs="+", default=[500],
                        help="live_max_latency_ms: one run per value")
    args = parser.parse_args()
    if args.child:
        return child(args)
    report = harness.sweep(__file__, args, [("--chunk-ms", args.chunk_ms, "--max-latency-ms", max_latency_ms)
                                            for max_latency_ms in args.max_latency_ms])
    harness.print_report(report)


if __name__ == "__main__":
    main()
