"""The tracking stage: one face box per 25 fps frame of a source (utils.tracking.track_faces: detected
on every infer_detect_every-th frame, padded at the bottom, the frames between and short gaps
interpolated, smoothed over box_smooth_window frames); only the boxes are kept, so a video of any
length is tracked in bounded memory. benchmarks/bench_tracking.py measures what detecting fewer
frames saves and how far the boxes move."""
from talkingface.inference.profile import OFF
from talkingface.utils.audio import FPS
from talkingface.utils.prefetch import Prefetcher
from talkingface.utils.tracking import TRACKER_KEYS, track_faces

DECODE_AHEAD = 8  # decoded frames queued for the detector (8 720p frames: 22 MB)


def track_source(source, settings, n_out, whole_video, progress=None, profiler=OFF):
    """(n, 4) float boxes (NaN rows: no face) of the first n_out frames of `source`, or of all its
    frames when `whole_video`; progress(stage "faces", done, total) every 25 frames. The frames are
    decoded in a thread, ahead of the detector (the two share the cores instead of taking turns)."""
    total = None if source.is_still else round(source.info.duration * FPS)
    if not whole_video:
        total = None if total is None else min(n_out, total)
    with profiler.stage("tracking"):
        waited = profiler.seconds["wait"] if profiler is not OFF else 0.0
        frames = Prefetcher(profiler.timed_iter(source.scan(max_frames=None if whole_video else n_out), "decode"),
                            depth=DECODE_AHEAD)
        try:
            boxes = track_faces(_reporting(profiler.timed_iter(frames, "wait"), progress, "faces", total),
                                source.width, source.height, total=total, detect_every=detect_every(settings),
                                **{arg: settings[key] for key, arg in TRACKER_KEYS.items()})
        finally:
            frames.close()
    if profiler is not OFF:  # the waits for decoded frames are counted as wait
        profiler.add("tracking", -(profiler.seconds["wait"] - waited))
    return boxes


def detect_every(settings):
    """Frames per face detection (infer_detect_every), at most one more than the gap the tracker
    fills (face_max_gap), so that the frames between two detections are always interpolated."""
    return max(1, min(int(settings["infer_detect_every"]), int(settings["face_max_gap"]) + 1))


def _reporting(frames, progress, stage, total):
    """`frames` unchanged, calling progress(stage, done, total) every 25 frames."""
    done = 0
    for frame in frames:
        yield frame
        done += 1
        if progress is not None and done % FPS == 0:
            progress(stage, done, total)
