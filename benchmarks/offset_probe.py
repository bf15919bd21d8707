"""Does an offset estimator find known audio shifts on real clips? Prints one JSON report.

    python benchmarks/offset_probe.py VIDEO [VIDEO ...] [--method loudness] [--shift 6] [--keep DIR]

The videos are preprocessed (the toolkit's face tracker and crops, av_offset=off) in a temporary
folder; each clip's own audio is then shifted by 0, +shift and -shift frames (`av_sync.shift_audio`:
+ delays the sound) and the offset is estimated from the crops and the shifted audio. Expected, in
syncnet_python's sign (positive = sound early): -shift for a delay, +shift for an advance, plus
the clip's own offset. A clip passes when both shifted estimates are within 1 frame of the
expectation, judged both absolutely (the clip taken as in sync) and relative to its unshifted
estimate. The bar for a weight-free default (data/dataprocess/av_offset.py, LOUDNESS_IS_DEFAULT):
3 of 4 real clips pass absolutely. --method SyncNet / syncnet_v2 probe an expert (with
--sync_expert_path / --syncnet_v2_path).
"""
import argparse
import json
import os
import shutil
import tempfile
import time

import harness


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("videos", nargs="+", help="real talking-face videos with their own audio")
    parser.add_argument("--method", default="loudness", choices=["loudness", "SyncNet", "syncnet_v2"])
    parser.add_argument("--shift", type=int, default=6, help="frames of the known shift (default 6)")
    parser.add_argument("--sync_expert_path", help="SyncNet checkpoint (--method SyncNet)")
    parser.add_argument("--syncnet_v2_path", help="syncnet_v2.model (--method syncnet_v2)")
    parser.add_argument("--keep", help="preprocess into this folder and keep it (reused on a second run)")
    args = parser.parse_args()

    from talkingface.config import Config
    from talkingface.utils.runtime import keep_freed_memory
    keep_freed_memory()
    from talkingface.data.dataprocess import av_offset
    from talkingface.data.dataprocess.hyperlipsbase_process import HyperLipsBasePreprocessor
    from talkingface.model.av_sync import shift_audio

    tmp = args.keep or tempfile.mkdtemp(prefix="offset_probe_")
    try:
        data_root = os.path.join(tmp, "data")
        os.makedirs(data_root, exist_ok=True)
        names = [f"{i:02d}_{os.path.basename(video)}" for i, video in enumerate(args.videos)]
        for video, name in zip(args.videos, names):   # links: the videos are read in place
            link = os.path.join(data_root, name)
            if not os.path.lexists(link):
                os.symlink(os.path.abspath(video), link)
        values = {"data_root": data_root, "preprocessed_root": os.path.join(tmp, "pre"), "log_level": "WARNING",
                  "num_preprocess_workers": 2, "av_offset": "off", "device": "cpu"}
        pre = HyperLipsBasePreprocessor(Config(model="HyperLipsBase", dataset="MEAD", config_dict=values))
        if pre.is_stale():
            pre.run()
        paths = {k: getattr(args, k) for k in ("sync_expert_path", "syncnet_v2_path") if getattr(args, k)}
        detector = av_offset.OffsetDetector(Config(model="HyperLipsBase", dataset="MEAD", config_dict=dict(
            values, av_offset="detect", av_offset_method=args.method, **paths)))
        clips, passed_abs, passed_rel = {}, 0, 0
        start = time.perf_counter()
        for video, name in zip(args.videos, names):
            clip_dir = os.path.join(values["preprocessed_root"], os.path.splitext(name)[0])
            with open(os.path.join(clip_dir, "meta.json"), encoding="utf-8") as f:
                meta = json.load(f)
            frames = av_offset.read_crops(clip_dir, meta["n_frames"])
            wav = av_offset._read_wav(os.path.join(clip_dir, "audio.wav"))
            found = {shift: detector.estimate(frames, shift_audio(wav, shift))
                     for shift in (0, args.shift, -args.shift)}
            own = found[0]["offset"]
            ok_abs = all(found[s]["offset"] is not None and abs(found[s]["offset"] + s) <= 1
                         for s in (args.shift, -args.shift))
            ok_rel = own is not None and all(found[s]["offset"] is not None and abs(found[s]["offset"] - own + s) <= 1
                                             for s in (args.shift, -args.shift))
            passed_abs += ok_abs
            passed_rel += ok_rel
            clips[name] = {
                "frames": meta["n_frames"], "passed": ok_abs, "passed_relative": ok_rel,
                **{f"shift{s:+d}": dict(found[s], expected=-s) for s in (0, args.shift, -args.shift)}}
        seconds = time.perf_counter() - start
    finally:
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
    bar = max(1, (3 * len(args.videos) + 3) // 4)
    harness.print_report(dict(harness.header("cpu"), method=args.method, shift=args.shift, clips=clips,
                              passed=passed_abs, passed_relative=passed_rel, of=len(args.videos),
                              bar=bar, meets_bar=passed_abs >= bar, estimate_seconds=round(seconds, 2)))


if __name__ == "__main__":
    main()
