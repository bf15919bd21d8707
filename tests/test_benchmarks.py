"""The benchmark scripts still run and print the JSON the README quotes (not timed tests)."""
import json
import pathlib
import subprocess
import sys

import pytest
import torch

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent

BENCHMARKS = REPO_ROOT / "benchmarks"


def run_script(*args):
    result = subprocess.run([sys.executable, *map(str, args)], capture_output=True, text=True, cwd=REPO_ROOT,
                            timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


@pytest.mark.slow
def test_bench_train_reports_throughput_and_memory_per_model():
    # device and precision given, not left to auto: the same report on a CUDA host
    report = json.loads(run_script(BENCHMARKS / "bench_train.py", "--models", "HyperLipsHR@128", "--steps", "1",
                                   "--batch", "1", "--threads", "1", "--device", "cpu", "--amp", "off"))
    assert report["device"].startswith("cpu") and report["threads"] == 1
    row = report["models"]["HyperLipsHR@128"]
    assert (row["batch"], row["frames_per_step"], row["threads"]) == (1, 1, 1)   # HR: single frames
    assert row["compiled"] is False and row["amp"] == "off"
    # the rate is the frames of a step over its (rounded) seconds, and a real step takes time
    assert row["seconds_per_step"] >= 0.01 and row["cpu_seconds_per_step"] > 0
    assert row["frames_per_s"] == pytest.approx(row["frames_per_step"] / row["seconds_per_step"], rel=0.05)
    assert "peak_cuda_memory_mb" not in row
    assert 100 < row["peak_rss_mb"] < 32_000   # torch and the networks are resident: hundreds of MB


def test_official_compare_without_a_checkout_says_so_in_one_line(tmp_path):
    out = run_script(BENCHMARKS / "official_compare.py", "--official", tmp_path / "nowhere")
    assert out.strip().startswith("skipped: no official HyperLips checkout")
    assert len(out.strip().splitlines()) == 1


@pytest.mark.skipif("x86" not in torch.backends.quantized.supported_engines,
                    reason="int8 needs torch's x86 quantized engine, which this torch build lacks")
def test_bench_generator_reports_stage_times_and_psnr_of_each_variant():
    report = json.loads(run_script(BENCHMARKS / "bench_generator.py", "--batch", "1", "--repeats", "1",
                                   "--calibration", "1", "--engine", "x86"))
    assert {"device", "threads", "load_average_1min", "peak_rss_mb"} <= set(report)
    stages = {"hyper_control_net", "decoder", "decoder.decode0", "up_conv", "output_block", "full_res", "generate"}
    assert set(report["fp32"]["ms_per_frame"]) == set(report["bf16"]["cpu_ms_per_frame"]) == stages
    assert set(report["int8"]["ms_per_frame"]) == {"full_res", "generate"}
    assert "6 of 6 convolutions" in report["int8"]["int8_scope"]
    fp32_ms = report["fp32"]["ms_per_frame"]
    full_res = fp32_ms["decoder.decode0"] + fp32_ms["up_conv"] + fp32_ms["output_block"]
    assert fp32_ms["full_res"] == pytest.approx(full_res, abs=0.03)   # the sum of its three (rounded) stages
    for variant in ("bf16", "int8"):
        row = report[variant]
        # one crop: the batch's PSNR is its worst crop's. Each variant changes the crops (100 dB would
        # mean identical: the variant did not run) but keeps them near fp32's: a random-init network's
        # crops differ by a few levels at most (bf16 ~52 dB, int8 ~62 dB here), a broken scale by tens
        assert row["psnr_db"] == row["psnr_db_worst_crop"]
        assert 40 < row["psnr_db"] < 99 and row["keeps_40db"] is True
        # the speed-up is fp32's generate time over the variant's, as reported
        expected = fp32_ms["generate"] / row["ms_per_frame"]["generate"]
        assert row["generate_speedup"] == pytest.approx(expected, rel=0.01, abs=0.006)
