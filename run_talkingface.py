"""The one entry point: python run_talkingface.py --model=HyperLipsBase --dataset=MEAD [--key=value ...]"""
import argparse
import os
import signal
import sys

# Idle OpenMP threads busy-wait by default; next to our decode/encode threads and worker
# processes that made CPU runs several times slower. Must be set before torch is imported.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def parse_args(argv):
    from talkingface.config import MODES
    from talkingface.config.configurator import available
    parser = argparse.ArgumentParser(
        description="Train, evaluate and run HyperLips talking-face models.",
        epilog=("Any key of talkingface/properties/overall.yaml, of the dataset's YAML or of the model's "
                "YAML can be overridden as --key=value (values are read as YAML scalars). Example: "
                "python run_talkingface.py --model=HyperLipsBase --dataset=demo --max_steps=200"))
    parser.add_argument("--model", default=None,
                        help="one of: " + ", ".join(available("model")) + " (app: the model selected first)")
    parser.add_argument("--dataset", default="MEAD", help="one of: " + ", ".join(available("dataset")))
    parser.add_argument("--config_files", default=None, help="space-separated YAML files applied after the defaults")
    parser.add_argument("--mode", default=None, choices=MODES, help="train (default) | " + " | ".join(MODES[1:]))
    parser.add_argument("--video", default=None, help="infer: input video or image")
    parser.add_argument("--audio", default=None, help="infer: driving audio (wav, mp3 or a video file)")
    parser.add_argument("--output", default=None, help="infer: output .mp4")
    parser.add_argument("--checkpoint", default=None, help="evaluate/infer: checkpoint (default: the latest)")
    parser.add_argument("--port", dest="app_port", type=int, default=None, help="app: port (default app_port: 7860)")
    args, rest = parser.parse_known_args(argv)
    if args.model is None:
        if args.mode != "app":
            parser.error("the following arguments are required: --model")
        args.model = "HyperLipsBase"  # the app lets the user pick; this is only the first choice
    return args, rest, parser


def overrides_from(args, rest, parser):
    from talkingface.config import parse_value
    overrides = {k: v for k, v in vars(args).items()
                 if v is not None and k not in ("model", "dataset", "config_files")}
    index = 0
    while index < len(rest):
        item = rest[index]
        if not item.startswith("--"):
            parser.error(f"unexpected argument '{item}'; settings are given as --key=value")
        key, sep, value = item[2:].partition("=")
        if not sep:  # --key value
            if index + 1 >= len(rest) or rest[index + 1].startswith("--"):
                parser.error(f"--{key} needs a value: --{key}=VALUE")
            index += 1
            value = rest[index]
        overrides[key.replace("-", "_")] = parse_value(value)
        index += 1
    return overrides


# What an interrupted run leaves, by mode (Ctrl-C or SIGTERM).
INTERRUPTED = {
    "train": "checkpoints and finished clips are kept; run the same command to resume",
    "preprocess": "finished clips are kept; run the same command to resume",
    "evaluate": "the evaluation did not finish and wrote no metrics; run the same command again",
    "infer": "no output written for the video in progress (a video appears only when its run completes)",
    "app": "the app stopped (a generation it was running wrote no output)",
    "stream": "the stream stopped (a .y4m file output is written only when the stream ends)",
}


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread so that it unwinds like Ctrl-C: every `finally` and
    context manager runs, and temp files and child processes are removed."""


def _raise_terminated(signum, frame):
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second SIGTERM must not cut the cleanup short
    raise Terminated()


def main(argv=None):
    args, rest, parser = parse_args(sys.argv[1:] if argv is None else argv)
    from talkingface.utils.runtime import keep_freed_memory
    keep_freed_memory()
    from talkingface.quick_start import run
    from talkingface.utils.errors import TalkingFaceError, error_line
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        run(args.model, args.dataset, args.config_files, overrides_from(args, rest, parser))
    except TalkingFaceError as exc:
        print(f"error: {error_line(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:
        terminated = isinstance(exc, Terminated)
        print(f"{'terminated' if terminated else 'interrupted'}: {INTERRUPTED[args.mode or 'train']}",
              file=sys.stderr)
        return 143 if terminated else 130  # 128 + the signal's number, as a shell reports it
    finally:
        signal.signal(signal.SIGTERM, previous)
    return 0


if __name__ == "__main__":
    sys.exit(main())
