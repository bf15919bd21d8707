"""End-to-end --mode=infer throughput and peak memory, with random-init network weights.

    python benchmarks/bench_inference.py [--video V] [--audio A] [--seconds 10] [--modes base hr]
                                         [--avatar-cache] [--int8] [--backend onnxruntime|openvino]
                                         [--memory-check] [--device cpu] [--threads N]

Without --video, a synthetic 1280x720 talking-face clip (benchmarks/harness.py) is made in the
temporary folder and drives itself; pass a real clip to measure on your footage.

Each run is the whole `run_inference` (decode, face tracking, mel features, networks, face mesh,
paste-back, x264 encode with the audio track) in its own subprocess, so the reported peak
resident memory (ru_maxrss of that process, not counting the ffmpeg encoder) belongs to it alone.
The audio is cut to --seconds; frames = output frames at 25 fps; fps = frames / wall seconds of
run_inference (checkpoint loading included, Python start-up excluded). HR runs at 128 px.
On a shared, busy machine wall-clock fps says little, so each run also reports its CPU time per
frame (this process + the ffmpeg children) and fps_if_cores_idle = cpu_count / cpu-seconds per
frame: the rate if its work spread perfectly over idle cores (an upper bound), plus the load average.
Each run also reports `profile`: milliseconds per output frame in each stage of the pipeline
(talkingface/inference/profile.py: decode, tracking, mel, mesh_masks, face_encoder, audio_decoder,
hr_mesh, hr_decoder, paste, encode, avatar_cache, wait); stages in the reader and writer threads
overlap the main thread's, so they may add up to more than wall_ms_per_frame.
--avatar-cache also runs each mode with avatar_cache=refresh (the first run: the avatar is built)
and then avatar_cache=on with another audio of the same length (the warm run), and reports
warm_speedup = warm frames_per_s / first-run (cache off) frames_per_s, and the same for CPU time, and
second_dub_speedup = warm / the run that built the avatar (both with the cache on: dubbing one video
twice). The warm run skips what the video's frames alone decide, so its gain grows with the video's
share of the work: use a --video as long as the audio to see a dub of the whole video.
--int8 also runs each mode with infer_int8=true (talkingface/inference/int8.py; quantizing at load
time is counted) and reports int8_speedup the same way.
--backend also runs each mode with infer_backend=<engine> (talkingface/inference/engine.py; the
once-per-checkpoint ONNX export is done before the timer, as a later run finds it cached, and
reported as export_seconds) and reports backend_speedup the same way. Every row says its
`backend`: what ran the generator (torch, or the engine; a missing engine falls back to torch).
--memory-check also runs Base with 5 s and 20 s of audio (20 s loops the video ping-pong) and
prints their peak RSS: streaming keeps them about equal.
Prints one JSON object per run, and a summary list at the end.

Latest figures, with the commands that made them: docs/benchmarks.md and docs/realtime.md.
"""
import argparse
import os
import tempfile
import time

import harness

# As run_talkingface.py: idle OpenMP threads must not spin (they burn CPU time next to the decoder,
# encoder and face-mesh threads); the measured children inherit it.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def child(args):
    """One run in this process; prints its JSON line."""
    import logging

    import numpy as np
    import torch

    from talkingface.config import Config
    from talkingface.inference.engine import backend_of, cached_graphs
    from talkingface.inference.pipeline import LipSyncer
    from talkingface.quick_start.infer_mode import output_path
    from talkingface.inference.profile import StageProfiler
    from talkingface.model import build_network, load_network
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
    warm = args.cache == "on"  # the warm run: another audio (the track reversed) on the cached video
    audio = os.path.join(tmp, f"audio_{args.seconds:g}{'_other' if warm else ''}.wav")
    if not os.path.exists(audio):
        wav = load_audio(args.audio)
        reps = int(args.seconds * 16000 // len(wav)) + 1
        wav = np.tile(wav, reps)[:int(args.seconds * 16000)]
        save_wav(audio, wav[::-1].copy() if warm else wav)
    overrides = dict(mode="infer", device=args.device, video=args.video, audio=audio,
                     output=os.path.join(tmp, f"out_{args.mode}_{args.seconds:g}.mp4"), avatar_cache=args.cache,
                     avatar_cache_dir=os.path.join(tmp, "avatars"), infer_int8=args.int8_run,
                     infer_backend=args.backend, engine_cache_dir=os.path.join(tmp, "engines"))
    if args.mode == "base":
        config = Config(model="HyperLipsBase", dataset="demo", config_dict=dict(overrides, checkpoint=base_path))
    else:
        config = Config(model="HyperLipsHR", dataset="demo",
                        config_dict=dict(overrides, checkpoint=hr_path, base_checkpoint=base_path))
    export_seconds = None
    if args.backend != "torch":  # the export is once per checkpoint: a later run finds it cached
        start = time.perf_counter()
        cached_graphs("base", load_network("HyperLipsBase", base_path), base_path, config["engine_cache_dir"])
        if args.mode == "hr":
            cached_graphs("hr", load_network("HRDecoder", hr_path), hr_path, config["engine_cache_dir"])
        export_seconds = round(time.perf_counter() - start, 1)
    cpu_before = harness.cpu_seconds()
    start = time.perf_counter()
    profiler = StageProfiler()
    syncer = LipSyncer(config)
    result = syncer.run(config["video"], config["audio"], output_path(config, config["video"], audio),
                        profiler=profiler)
    seconds = time.perf_counter() - start
    cpu = harness.cpu_seconds() - cpu_before
    harness.print_child_result({
        "mode": "HR 128" if args.mode == "hr" else "Base", "avatar_cache": args.cache, "int8": args.int8_run,
        "backend": backend_of(syncer.networks(syncer.settings())[0]), "export_seconds": export_seconds,
        "frames": result.n_frames,
        "seconds": round(seconds, 2), "frames_per_s": round(result.n_frames / seconds, 2),
        "peak_rss_mb": harness.peak_rss_mb(), "audio_seconds": args.seconds,
        "video": os.path.basename(args.video), "cpu_ms_per_frame": round(1000 * cpu / result.n_frames, 1),
        "frames_per_s_if_cores_idle": round(os.cpu_count() * result.n_frames / cpu, 2),
        "load_average_1min": harness.load_average(), "profile": profiler.report()})


def run_child(args, mode, seconds, tmp, cache="off", int8=False, backend="torch"):
    return harness.run_media_child(__file__, args, tmp, "--mode", mode, "--cache", cache, "--backend", backend,
                                   *(["--int8-run"] if int8 else []), seconds=seconds)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    harness.add_inference_arguments(parser, 10.0, "audio length (the output's length)")
    parser.add_argument("--memory-check", action="store_true", help="also compare peak RSS at 5 s and 20 s")
    parser.add_argument("--avatar-cache", action="store_true",
                        help="also time a run that builds the avatar cache and a warm run with another audio")
    parser.add_argument("--int8", action="store_true",
                        help="also time each mode with infer_int8=true (the generator in int8 on onnxruntime)")
    parser.add_argument("--backend", default="torch", choices=["torch", "onnxruntime", "openvino"],
                        help="also time each mode with infer_backend=this engine")
    parser.add_argument("--cache", default="off", help=argparse.SUPPRESS)
    parser.add_argument("--int8-run", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args)
    for path in (args.video, args.audio):
        if path and not os.path.isfile(path):
            raise SystemExit(f"not found: {path} (pass --video/--audio)")
    report = dict(harness.header(args.device, args.threads), runs=[])
    results = report["runs"]
    with tempfile.TemporaryDirectory(prefix="bench_inference_") as tmp:
        harness.default_media(args, tmp)
        for mode in args.modes:
            first = run_child(args, mode, args.seconds, tmp)
            results.append(first)
            if args.int8:
                int8 = run_child(args, mode, args.seconds, tmp, int8=True)
                results.append(int8)
                report.setdefault("int8_speedup", {})[first["mode"]] = {
                    "frames_per_s": round(int8["frames_per_s"] / first["frames_per_s"], 2),
                    "cpu_ms_per_frame": round(first["cpu_ms_per_frame"] / int8["cpu_ms_per_frame"], 2)}
            if args.backend != "torch":
                engine = run_child(args, mode, args.seconds, tmp, backend=args.backend)
                results.append(engine)
                report.setdefault("backend_speedup", {})[first["mode"]] = {
                    "frames_per_s": round(engine["frames_per_s"] / first["frames_per_s"], 2),
                    "cpu_ms_per_frame": round(first["cpu_ms_per_frame"] / engine["cpu_ms_per_frame"], 2)}
            if args.avatar_cache:
                build = run_child(args, mode, args.seconds, tmp, "refresh")
                warm = run_child(args, mode, args.seconds, tmp, "on")
                results += [build, warm]
                report.setdefault("warm_speedup", {})[first["mode"]] = {
                    "frames_per_s": round(warm["frames_per_s"] / first["frames_per_s"], 2),
                    "cpu_ms_per_frame": round(first["cpu_ms_per_frame"] / warm["cpu_ms_per_frame"], 2)}
                report.setdefault("second_dub_speedup", {})[first["mode"]] = {
                    "frames_per_s": round(warm["frames_per_s"] / build["frames_per_s"], 2),
                    "cpu_ms_per_frame": round(build["cpu_ms_per_frame"] / warm["cpu_ms_per_frame"], 2)}
        if args.memory_check:
            short = run_child(args, "base", 5, tmp)
            long = run_child(args, "base", 20, tmp)
            results += [short, long]
            report["memory_check"] = {"peak_rss_mb_5s": short["peak_rss_mb"], "peak_rss_mb_20s": long["peak_rss_mb"],
                                      "ratio": round(long["peak_rss_mb"] / short["peak_rss_mb"], 3)}
    harness.print_report(report)


if __name__ == "__main__":
    main()
