"""Score any method's output against ground truth with the toolkit's metrics; prints JSON.

    python -m talkingface.evaluator.score --generated A --real B [--audio WAV]
        [--metrics PSNR SSIM LMD LipJitter SyncScore] [--sync_expert PATH] [--size 256]

A and B are each one clip (a video file, or a folder of frame images taken as face crops) or a
folder of clips (videos and/or frame folders) matched by name. For videos the face is found by
the toolkit's one face tracker (utils/tracking.py, its settings from overall.yaml: the same boxes
preprocessing, inference and --mode=evaluate use) and cropped to --size; the boxes found in the
REAL video are used for both videos when their frame sizes agree, so the pixel metrics compare the
same region (frames where the tracker has no face are left out of both). With --size equal to
crop_size this is what --mode=evaluate computes. Frame folders are resized to --size. Audio:
--audio, else the generated video's own audio track.
"""
import argparse
import json
import logging
import os
import re
import sys

import cv2
import numpy as np

from talkingface.evaluator.report import NON_FINITE_NOTE, json_safe
from talkingface.utils.errors import InputError, TalkingFaceError
from talkingface.utils.audio import FPS, SAMPLE_RATE, load_audio
from talkingface.utils.face import crop_resize
from talkingface.utils.runtime import keep_freed_memory
from talkingface.utils.video import VIDEO_EXTENSIONS, is_image, read_frames

# The modules that load torch (tracking, config, metrics, the evaluator, the logger) are imported in
# the functions that use them, so that a bad path or --help answers before torch is loaded (~2 s).

logger = logging.getLogger("talkingface.evaluator.score")   # also when run as __main__


def _natural_key(name):
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def _is_video(path):
    return os.path.isfile(path) and os.path.splitext(path)[1].lower() in VIDEO_EXTENSIONS


def _frame_files(folder):
    return sorted((n for n in os.listdir(folder) if is_image(n)), key=_natural_key)


def list_clips(path):
    """{name: clip path} where a clip is a video file or a folder of frames."""
    if not os.path.exists(path):
        raise InputError(f"not found: {path} (give a video, a folder of frames or a folder of clips)")
    if _is_video(path):
        return {os.path.splitext(os.path.basename(path))[0]: path}
    if not os.path.isdir(path):
        raise InputError(f"{path} is neither a video ({', '.join(sorted(VIDEO_EXTENSIONS))}) nor a folder")
    if _frame_files(path):
        return {os.path.basename(os.path.normpath(path)): path}
    clips = {}
    for name in sorted(os.listdir(path), key=_natural_key):
        full = os.path.join(path, name)
        if _is_video(full) or (os.path.isdir(full) and _frame_files(full)):
            clips[os.path.splitext(name)[0] if os.path.isfile(full) else name] = full
    if not clips:
        raise InputError(f"{path} holds no frames, videos or frame folders")
    return clips


def pair_clips(generated, real):
    gen, ref = list_clips(generated), list_clips(real)
    if len(gen) == 1 and len(ref) == 1:
        return [(next(iter(gen)), next(iter(gen.values())), next(iter(ref.values())))]
    common = [name for name in gen if name in ref]
    if not common:
        raise InputError(f"no clip names in common between {generated} and {real}")
    missing = sorted(set(gen) ^ set(ref))
    if missing:
        logger.warning("clips without a partner are left out: %s", ", ".join(missing[:10]))
    return [(name, gen[name], ref[name]) for name in common]


def read_video(path, max_frames):
    """The 25 fps frames of a video (the first `max_frames` when > 0)."""
    frames = read_frames(path, FPS, max_frames or None)
    if not frames:
        raise InputError(f"no frames in {path}")
    return frames


def detect_boxes(frames, config):
    """Per-frame face boxes (n, 4) from the one face tracker with config's settings; NaN rows
    where it has no face."""
    from talkingface.utils.tracking import track_faces, tracker_arguments   # lazy: torch, see the top
    height, width = frames[0].shape[:2]
    return track_faces(frames, width, height, **tracker_arguments(config)).astype(np.float64)


def crop_frames(frames, boxes, size):
    return np.stack([crop_resize(f, b, size) for f, b in zip(frames, boxes) if np.isfinite(b).all()])


def load_frame_folder(folder, size, max_frames):
    names = _frame_files(folder)[:max_frames or None]
    frames = []
    for name in names:
        image = cv2.imread(os.path.join(folder, name), cv2.IMREAD_COLOR)
        if image is None:
            raise InputError(f"cannot read image {os.path.join(folder, name)}")
        frames.append(cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA
                                 if image.shape[0] > size else cv2.INTER_LINEAR))
    return np.stack(frames)


def load_pair(generated, real, size, max_frames, config, sync_crops=False):
    """Face crops (uint8 BGR, size x size) of a generated and a real clip, equal length, and with
    `sync_crops` the generated video's crops for LSE cut with syncnet_python's geometry (None
    when the generated clip is a frame folder)."""
    if _is_video(real):
        real_frames = read_video(real, max_frames)
        boxes = detect_boxes(real_frames, config)
        real_crops = crop_frames(real_frames, boxes, size)
    else:
        real_crops = load_frame_folder(real, size, max_frames)
    if _is_video(generated):
        gen_frames = read_video(generated, max_frames)
        same_geometry = _is_video(real) and gen_frames[0].shape == real_frames[0].shape
        if same_geometry:   # the real boxes, frame for frame (the shorter of the two clips)
            n = min(len(gen_frames), len(real_frames))
            gen_frames, gen_boxes = gen_frames[:n], boxes[:n]
            real_crops = crop_frames(real_frames[:n], boxes[:n], size)
        else:
            gen_boxes = detect_boxes(gen_frames, config)
        gen_crops = crop_frames(gen_frames, gen_boxes, size)
        if sync_crops:
            from talkingface.model.syncnet_v2 import syncnet_crops   # lazy: torch, see the top
            found = np.isfinite(gen_boxes).all(axis=1)
            face_boxes = np.array(gen_boxes[found], dtype=np.float64)
            face_boxes[:, 3] -= int(config["face_pad_bottom"])   # the detector's box, without our chin pad
            sync_crops = syncnet_crops([f for f, keep in zip(gen_frames, found) if keep], face_boxes)
    else:
        gen_crops = load_frame_folder(generated, size, max_frames)
    n = min(len(gen_crops), len(real_crops))
    sync = sync_crops[:n] if isinstance(sync_crops, np.ndarray) else None
    return gen_crops[:n], real_crops[:n], sync


def load_clip_audio(audio, generated):
    if audio:
        return load_audio(audio)
    if _is_video(generated):
        try:
            return load_audio(generated)
        except InputError:
            return None
    return None


def score_config(args):
    """Defaults from overall.yaml (no model or dataset needed), with the command-line paths."""
    from talkingface.config.configurator import PROPERTIES_DIR, load_yaml   # lazy: torch, see the top
    config = load_yaml(os.path.join(PROPERTIES_DIR, "overall.yaml"))
    config.update(device=args.device, dataset=None, metrics=args.metrics)
    if args.sync_expert:
        config["sync_expert_path"] = args.sync_expert
    if args.syncnet_v2:
        config["syncnet_v2_path"] = args.syncnet_v2
    if args.inception:
        config["inception_path"] = args.inception
    return config


def check_inputs(args):
    """Clip pairs to score; a bad path fails here, before torch and the models are loaded."""
    if args.audio and not os.path.isfile(args.audio):
        raise InputError(f"audio not found: {args.audio}")
    return pair_clips(args.generated, args.real)


def score(args, pairs):
    # lazy: torch and the metrics' libraries, see the top
    from talkingface.evaluator.evaluator import score_samples
    from talkingface.evaluator.metrics import METRICS_DOC, EvalSample, build_metrics

    config = score_config(args)
    metrics, skipped = build_metrics(config, args.metrics)
    needs_audio = any(m.name in ("LSE", "SyncScore") for m in metrics)

    def samples():
        for name, generated, real in pairs:
            gen, ref, sync_crops = load_pair(generated, real, args.size, args.max_frames, config,
                                             sync_crops=any(m.name == "LSE" for m in metrics))
            wav = load_clip_audio(args.audio, generated)
            if needs_audio and wav is None:
                raise InputError(f"no audio for {name}: pass --audio WAV or give videos with sound")
            if wav is not None:
                wav = wav[:len(gen) * SAMPLE_RATE // 25]
            yield EvalSample(name=name, generated=gen, real=ref, wav=wav, sync_crops=sync_crops)

    per_clip, mean = score_samples(metrics, samples(), progress=len(pairs))
    return json_safe({"metrics": [m.name for m in metrics], "skipped": skipped, "mean": mean,
                      "per_clip": per_clip, "size": args.size, "definitions": METRICS_DOC,
                      "notes": NON_FINITE_NOTE})


def parse_args(argv=None):
    parser = argparse.ArgumentParser(prog="python -m talkingface.evaluator.score", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--generated", required=True, help="video, frame folder, or folder of clips")
    parser.add_argument("--real", required=True, help="ground truth, same form as --generated")
    parser.add_argument("--audio", help="driving audio (wav, mp3 or a video); default: the generated video's track")
    parser.add_argument("--metrics", nargs="+", default=["PSNR", "SSIM", "LMD", "LipJitter", "SyncScore"])
    parser.add_argument("--sync_expert", help="SyncNet expert checkpoint for SyncScore")
    parser.add_argument("--syncnet_v2", help="official syncnet_v2.model for LSE")
    parser.add_argument("--inception", help="InceptionV3 weights for FID")
    parser.add_argument("--size", type=int, default=256, help="face crop size (default 256)")
    parser.add_argument("--max_frames", type=int, default=0, help="frames per clip (0 = all)")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    keep_freed_memory()
    try:
        pairs = check_inputs(args)
        from talkingface.utils.logger import init_logger   # lazy: torch (utils.distributed), see the top
        init_logger(level="INFO")   # to stderr: stdout carries only the JSON
        result = score(args, pairs)
    except TalkingFaceError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(result, indent=2, allow_nan=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
