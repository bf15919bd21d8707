"""benchmarks/bench_stream.py: the A/V offset, memory flatness and batch-size fields its figures in
docs/realtime.md and docs/benchmarks.md come from (not a timed test)."""
import json
import subprocess
import sys

import pytest

from paths import REPO_ROOT

sys.path.insert(0, str(REPO_ROOT / "benchmarks"))

import bench_stream  # noqa: E402
import harness  # noqa: E402


def _run(mode, batch, fps, p95):
    return {"mode": mode, "infer_batch_size": batch, "frames_per_s": fps, "latency_ms": {"p50": 0.0, "p95": p95}}


def test_best_batch_is_the_fastest_within_the_latency_bound():
    runs = [_run("Base", 1, 20.0, 120.0), _run("Base", 4, 24.0, 280.0), _run("Base", 8, 26.0, 420.0),
            _run("HR 128", 1, 9.0, 900.0)]
    assert bench_stream.best_batch_within(runs, 300.0) == {"Base": 4, "HR 128": None}


@pytest.mark.slow
def test_bench_stream_reports_av_offset_memory_and_best_batch(tmp_path):
    # a 1 s 480x270 avatar instead of the default 8 s 720p clip: each run prepares (tracks, meshes,
    # encodes) every frame of it, and the fields checked here do not depend on its size
    video = harness.synthetic_talking_video(str(tmp_path / "avatar.mp4"), seconds=1.0, width=480, height=270,
                                            face_px=200)
    result = subprocess.run([sys.executable, "benchmarks/bench_stream.py", "--video", video, "--seconds", "1.5",
                             "--modes", "base",
                             "--batch-sizes", "1", "3", "--rss-every", "0.2", "--threads", "1"],
                            capture_output=True, text=True, cwd=REPO_ROOT, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(result.stdout[result.stdout.index("{\n"):])
    assert [run["infer_batch_size"] for run in report["runs"]] == [1, 3]
    for run in report["runs"]:
        assert run["frames"] == 37 and run["av_offset_frames"] == 0  # 1.5 s: 37 frames (int(37.5))
        assert run["audio_seconds_received"] == 1.5 and run["last_frame_end_minus_audio_ms"] == -20.0
        rss = run["rss_mb"]
        assert rss["samples"] >= 3 and rss["growth"] == pytest.approx(rss["last_third_peak"] - rss["first_third_peak"])
        assert 100 < rss["first_third_peak"] < 32_000
    assert set(report["best_batch_within_300ms_p95"]) == {"Base"}
