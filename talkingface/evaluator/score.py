"""Score any method's output against ground truth with the toolkit's metrics; prints JSON.

    python -m talkingface.evaluator.score --generated A --real B [--audio WAV]
        [--metrics PSNR SSIM LMD SyncScore] [--sync_expert PATH] [--size 256]

A and B are each one clip (a video file, or a folder of frame images taken as face crops) or a
folder of clips (videos and/or frame folders) matched by name. For videos the face is found
the way preprocessing finds it (FaceDetector per frame, box padded at the bottom, smoothed over
frames) and cropped to --size; the boxes found in the REAL video are used for both videos when
their frame sizes agree, so the pixel metrics compare the same region. Frame folders are resized
to --size. Audio: --audio, else the generated video's own audio track.
"""
import argparse
import json
import logging
import os
import re
import sys

import numpy as np

from talkingface.utils.errors import InputError, TalkingFaceError

logger = logging.getLogger("talkingface.evaluator.score")   # also when run as __main__

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".mpg", ".mpeg", ".m4v", ".flv")


def _natural_key(name):
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def _is_video(path):
    return os.path.isfile(path) and path.lower().endswith(VIDEO_EXTENSIONS)


def _frame_files(folder):
    from talkingface.utils.video import is_image
    return sorted((n for n in os.listdir(folder) if is_image(n)), key=_natural_key)


def list_clips(path):
    """{name: clip path} where a clip is a video file or a folder of frames."""
    if not os.path.exists(path):
        raise InputError(f"not found: {path} (give a video, a folder of frames or a folder of clips)")
    if _is_video(path):
        return {os.path.splitext(os.path.basename(path))[0]: path}
    if not os.path.isdir(path):
        raise InputError(f"{path} is neither a video ({', '.join(VIDEO_EXTENSIONS)}) nor a folder")
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
    from talkingface.utils.video import iter_frames
    frames = []
    for frame in iter_frames(path, fps=25):
        frames.append(frame)
        if max_frames and len(frames) >= max_frames:
            break
    if not frames:
        raise InputError(f"no frames in {path}")
    return frames


def detect_boxes(frames, config):
    """Per-frame face boxes as in preprocessing: detect, pad at the bottom, smooth over frames
    (frames without a face take boxes interpolated from their neighbours)."""
    from talkingface.utils.face import FaceDetector, pad_box, smooth_boxes
    height, width = frames[0].shape[:2]
    boxes = np.full((len(frames), 4), np.nan, dtype=np.float64)
    with FaceDetector(max_side=int(config["detect_max_side"])) as detector:
        for k, frame in enumerate(frames):
            found = detector.detect(frame)
            if found:
                boxes[k] = found[0][:4]
    boxes = pad_box(boxes, bottom=int(config["face_pad_bottom"]), width=width, height=height)  # misses stay NaN
    return smooth_boxes(boxes, window=int(config["box_smooth_window"]))        # and are interpolated here


def crop_frames(frames, boxes, size):
    from talkingface.utils.face import crop_resize
    return np.stack([crop_resize(f, b, size) for f, b in zip(frames, boxes)])


def load_frame_folder(folder, size, max_frames):
    import cv2
    names = _frame_files(folder)[:max_frames or None]
    frames = []
    for name in names:
        image = cv2.imread(os.path.join(folder, name), cv2.IMREAD_COLOR)
        if image is None:
            raise InputError(f"cannot read image {os.path.join(folder, name)}")
        frames.append(cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA
                                 if image.shape[0] > size else cv2.INTER_LINEAR))
    return np.stack(frames)


def load_pair(generated, real, size, max_frames, config):
    """Face crops (uint8 BGR, size x size) of a generated and a real clip, equal length."""
    if _is_video(real):
        real_frames = read_video(real, max_frames)
        boxes = detect_boxes(real_frames, config)
        real_crops = crop_frames(real_frames, boxes, size)
    else:
        real_crops = load_frame_folder(real, size, max_frames)
    if _is_video(generated):
        gen_frames = read_video(generated, max_frames)
        same_geometry = _is_video(real) and gen_frames[0].shape == real_frames[0].shape
        gen_boxes = boxes if same_geometry and len(gen_frames) <= len(boxes) else detect_boxes(gen_frames, config)
        gen_crops = crop_frames(gen_frames, gen_boxes, size)
    else:
        gen_crops = load_frame_folder(generated, size, max_frames)
    n = min(len(gen_crops), len(real_crops))
    return gen_crops[:n], real_crops[:n]


def load_clip_audio(audio, generated):
    from talkingface.utils.audio import load_audio
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
    from talkingface.config.configurator import PROPERTIES_DIR, load_yaml
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
    from talkingface.evaluator.evaluator import score_samples
    from talkingface.evaluator.metrics import METRICS_DOC, EvalSample, build_metrics
    from talkingface.evaluator.report import NON_FINITE_NOTE, json_safe
    from talkingface.utils.audio import SAMPLE_RATE

    config = score_config(args)
    metrics, skipped = build_metrics(config, args.metrics)
    needs_audio = any(m.name in ("LSE", "SyncScore") for m in metrics)

    def samples():
        for name, generated, real in pairs:
            gen, ref = load_pair(generated, real, args.size, args.max_frames, config)
            wav = load_clip_audio(args.audio, generated)
            if needs_audio and wav is None:
                raise InputError(f"no audio for {name}: pass --audio WAV or give videos with sound")
            if wav is not None:
                wav = wav[:len(gen) * SAMPLE_RATE // 25]
            yield EvalSample(name=name, generated=gen, real=ref, wav=wav)

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
    parser.add_argument("--metrics", nargs="+", default=["PSNR", "SSIM", "LMD", "SyncScore"])
    parser.add_argument("--sync_expert", help="SyncNet expert checkpoint for SyncScore")
    parser.add_argument("--syncnet_v2", help="official syncnet_v2.model for LSE")
    parser.add_argument("--inception", help="InceptionV3 weights for FID")
    parser.add_argument("--size", type=int, default=256, help="face crop size (default 256)")
    parser.add_argument("--max_frames", type=int, default=0, help="frames per clip (0 = all)")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    from talkingface.utils.runtime import keep_freed_memory
    keep_freed_memory()
    try:
        pairs = check_inputs(args)
        from talkingface.utils.logger import init_logger
        init_logger(level="INFO")   # to stderr: stdout carries only the JSON
        result = score(args, pairs)
    except TalkingFaceError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(result, indent=2, allow_nan=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
