"""The benchmark scripts still run and print the JSON the README quotes (not timed tests)."""
import json
import math
import pathlib
import subprocess
import sys

import pytest

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent

BENCHMARKS = REPO_ROOT / "benchmarks"


def run_script(*args):
    result = subprocess.run([sys.executable, *map(str, args)], capture_output=True, text=True, cwd=REPO_ROOT,
                            timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


@pytest.mark.slow
def test_bench_train_reports_throughput_and_memory_per_model():
    report = json.loads(run_script(BENCHMARKS / "bench_train.py", "--models", "HyperLipsHR@128",
                                   "--steps", "1", "--batch", "1", "--threads", "1"))
    assert report["device"].startswith("cpu")
    row = report["models"]["HyperLipsHR@128"]
    assert row["frames_per_s"] > 0 and row["peak_rss_mb"] > 0
    assert row["compiled"] is False and row["amp"] == "off"


def test_official_compare_without_a_checkout_says_so_in_one_line(tmp_path):
    out = run_script(BENCHMARKS / "official_compare.py", "--official", tmp_path / "nowhere")
    assert out.strip().startswith("skipped: no official HyperLips checkout")
    assert len(out.strip().splitlines()) == 1


def test_bench_generator_reports_stage_times_and_psnr_of_each_variant():
    report = json.loads(run_script(BENCHMARKS / "bench_generator.py", "--batch", "1", "--repeats", "1",
                                   "--calibration", "1"))
    assert {"device", "threads", "load_average_1min", "peak_rss_mb"} <= set(report)
    stages = {"hyper_control_net", "decoder", "decoder.decode0", "up_conv", "output_block", "full_res", "generate"}
    assert set(report["fp32"]["ms_per_frame"]) == set(report["bf16"]["cpu_ms_per_frame"]) == stages
    assert set(report["int8"]["ms_per_frame"]) == {"full_res", "generate"}
    assert "6 of 6 convolutions" in report["int8"]["int8_scope"]
    for variant in ("bf16", "int8"):
        row = report[variant]
        assert math.isfinite(row["psnr_db"]) and math.isfinite(row["psnr_db_worst_crop"])
        assert row["psnr_db"] >= row["psnr_db_worst_crop"] > 0
        assert row["generate_speedup"] > 0 and row["keeps_40db"] == (row["psnr_db_worst_crop"] >= 40)
