"""The tracking stage: one face box per 25 fps frame of a source (utils.tracking.track_faces: detected,
padded at the bottom, short gaps interpolated, smoothed over box_smooth_window frames); only the
boxes are kept, so a video of any length is tracked in bounded memory."""
from talkingface.inference.profile import OFF
from talkingface.utils.audio import FPS
from talkingface.utils.tracking import TRACKER_KEYS, track_faces


def track_source(source, settings, n_out, whole_video, progress=None, profiler=OFF):
    """(n, 4) float boxes (NaN rows: no face) of the first n_out frames of `source`, or of all its
    frames when `whole_video`; progress(stage "faces", done, total) every 25 frames."""
    total = None if source.is_still else round(source.info.duration * FPS)
    if not whole_video:
        total = None if total is None else min(n_out, total)
    with profiler.stage("tracking"):
        decoded = profiler.seconds["decode"] if profiler is not OFF else 0.0
        frames = profiler.timed_iter(source.scan(max_frames=None if whole_video else n_out), "decode")
        boxes = track_faces(_reporting(frames, progress, "faces", total), source.width, source.height,
                            total=total, **{arg: settings[key] for key, arg in TRACKER_KEYS.items()})
    if profiler is not OFF:  # the decoding inside is counted as decode
        profiler.add("tracking", -(profiler.seconds["decode"] - decoded))
    return boxes


def _reporting(frames, progress, stage, total):
    """`frames` unchanged, calling progress(stage, done, total) every 25 frames."""
    done = 0
    for frame in frames:
        yield frame
        done += 1
        if progress is not None and done % FPS == 0:
            progress(stage, done, total)
