"""benchmarks/bench_codec.py (in-process PyAV against the OpenCV decoder and the ffmpeg-pipe encoder)
and bench_tracking.py (the detector on every k-th frame): the PyAV decoder gives iter_frames' frames,
detection on every 3rd frame keeps a real clip's boxes, and the scripts print the fields the docs
quote (not timed tests)."""
import json
import subprocess
import sys

import numpy as np
import pytest

from paths import REPO_ROOT

sys.path.insert(0, str(REPO_ROOT / "benchmarks"))

import bench_codec  # noqa: E402
import bench_tracking  # noqa: E402


@pytest.fixture(scope="module")
def clip_30fps(lipsync_media, tmp_path_factory):
    """The sample face at 30 fps (12 frames): iter_frames resamples it to 25 fps (10 frames)."""
    from talkingface.utils.video import VideoWriter, read_frames
    path = tmp_path_factory.mktemp("clip_30fps") / "face30.mp4"
    with VideoWriter(path, 30) as writer:
        for frame in read_frames(lipsync_media["video"])[:12]:
            writer.write(frame)
    return path


@pytest.mark.parametrize("clip", ["25fps", "30fps"])
def test_pyav_decoder_gives_iter_frames_frames_bit_for_bit(clip, lipsync_media, clip_30fps):
    from talkingface.utils.video import read_frames
    path = lipsync_media["video"] if clip == "25fps" else clip_30fps
    ours = read_frames(path, fps=25)
    theirs = list(bench_codec.pyav_frames(path))
    assert len(ours) == len(theirs) == (15 if clip == "25fps" else 10)
    for a, b in zip(ours, theirs):
        np.testing.assert_array_equal(a, b)


def test_pyav_encoder_writes_the_frames_it_is_given(lipsync_media, tmp_path):
    from talkingface.utils.video import probe_video, read_frames
    frames = read_frames(lipsync_media["video"], fps=25)
    bench_codec.pyav_encode(tmp_path / "out.mp4", frames, 25, "veryfast")
    info = probe_video(tmp_path / "out.mp4")
    assert (info.n_frames, info.width, info.height, info.fps) == (15, 480, 270, 25.0)
    decoded = read_frames(tmp_path / "out.mp4")
    # crf 18 of the same frames: close to them, not equal (a blank or shifted output is far off)
    assert np.mean([np.abs(a.astype(int) - b).mean() for a, b in zip(frames, decoded)]) < 3


def test_detecting_every_third_frame_keeps_the_boxes_of_a_real_clip(lipsync_media):
    from talkingface.utils.tracking import track_faces
    from talkingface.utils.video import read_frames
    frames = read_frames(lipsync_media["video"], fps=25)
    settings = bench_tracking.tracker_arguments()
    every_frame = track_faces(frames, 480, 270, **settings)
    every_3rd = track_faces(frames, 480, 270, detect_every=3, **settings)
    deviation = bench_tracking.deviation(every_3rd, every_frame)
    assert deviation["frames"] == 15 and 0 < deviation["max_px"] < 5  # the box side is ~100 px here


def _report(*args):
    result = subprocess.run([sys.executable, *map(str, args)], capture_output=True, text=True, cwd=REPO_ROOT,
                            timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    return json.loads(result.stdout[result.stdout.index("{\n"):])


@pytest.mark.slow
def test_bench_codec_and_bench_tracking_print_their_figures():
    codec = _report("benchmarks/bench_codec.py", "--seconds", 0.4, "--repeats", 1)["clips"]["synthetic_720p"]
    for case in bench_codec.CASES:
        assert codec[case]["frames"] == 10 and codec[case]["cpu_ms_per_frame"] > 0
    assert codec["decode_pyav_vs_opencv"]["bit_identical"] is True
    assert codec["encode_ffmpeg"]["file_bytes"] > 1000 and codec["encode_pyav"]["file_bytes"] > 1000
    tracking = _report("benchmarks/bench_tracking.py", "--seconds", 0.4, "--every", 2)
    row = tracking["clips"]["synthetic_720p"]
    assert row["every_2"]["frames_box_presence_differs"] == 0 and row["every_2"]["cpu_gain"] > 1
    assert set(row["every_2"]["deviation"]) >= {"max_px", "mean_px", "max_fraction", "mean_fraction"}
