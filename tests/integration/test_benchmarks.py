"""The benchmark scripts still run and print the JSON the README quotes (not timed tests)."""
import json
import subprocess
import sys

import pytest
from paths import REPO_ROOT


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


def test_bench_generator_reports_stage_times_and_psnr_of_each_variant():
    report = json.loads(run_script(BENCHMARKS / "bench_generator.py", "--batch", "1", "--repeats", "1",
                                   "--calibration", "1"))
    assert {"device", "threads", "load_average_1min", "peak_rss_mb"} <= set(report)
    stages = {"hyper_control_net", "decoder", "decoder.decode0", "up_conv", "output_block", "full_res", "generate"}
    assert set(report["fp32"]["ms_per_frame"]) == set(report["bf16"]["cpu_ms_per_frame"]) == stages
    fp32_ms = report["fp32"]["ms_per_frame"]
    full_res = fp32_ms["decoder.decode0"] + fp32_ms["up_conv"] + fp32_ms["output_block"]
    assert fp32_ms["full_res"] == pytest.approx(full_res, abs=0.03)   # the sum of its three (rounded) stages
    for variant in ("bf16",):
        row = report[variant]
        # one crop: the batch's PSNR is its worst crop's. Each variant changes the crops (100 dB would
        # mean identical: the variant did not run) but keeps them near fp32's: a random-init network's
        # crops differ by a few levels at most (bf16 ~52 dB here), a broken scale by tens
        assert row["psnr_db"] == row["psnr_db_worst_crop"]
        assert 40 < row["psnr_db"] < 99 and row["keeps_40db"] is True
        # the speed-up is fp32's generate time over the variant's, as reported
        expected = fp32_ms["generate"] / row["ms_per_frame"]["generate"]
        assert row["generate_speedup"] == pytest.approx(expected, rel=0.01, abs=0.006)


@pytest.mark.slow
def test_bench_generator_region_only_reports_full_against_pasted_region():
    report = json.loads(run_script(BENCHMARKS / "bench_generator.py", "--region-only", "--batch", "2",
                                   "--repeats", "1", "--calibration", "0", "--threads", "1"))
    assert "int8" not in report and "bf16" not in report   # --region-only: a short run
    region = report["pasted_region"]
    top, bottom, left, right = region["rect"]
    assert region["mesh_found"] is True and region["rect_px"] == [bottom - top, right - left]
    assert 0.05 < region["rect_area_fraction"] < 0.5   # the demo's mouth, not the whole crop
    assert set(region) >= {"generate_batch1", "generate_batch2", "hr_decoder_x1_batch2"}
    for key in ("generate_batch1", "generate_batch2", "hr_decoder_x1_batch2"):
        row = region[key]
        assert row["max_abs_diff"] <= 1e-5   # the rectangle is the full computation's
        assert row["speedup"] == pytest.approx(row["full"]["ms_per_frame"] / row["region"]["ms_per_frame"],
                                               rel=0.01, abs=0.006)


@pytest.mark.slow
def test_bench_engine_reports_each_backend_against_torch():
    pytest.importorskip("onnxruntime")
    report = json.loads(run_script(BENCHMARKS / "bench_engine.py", "--batch", "1", "--repeats", "1",
                                   "--hr-size", "128"))
    case = report["batch_1"]
    assert {"torch_fp32", "torch_bf16", "onnxruntime"} <= set(case)
    for name, row in case.items():
        assert set(row["ms_per_frame"]) == {"face_encoder", "generator", "hr_decoder", "total"}
        assert row["speedup_vs_torch_fp32"] > 0
    for engine in ("onnxruntime", "openvino"):  # fp32 engines: the exported graphs' parity
        if engine in case:
            assert max(case[engine]["max_abs_diff"].values()) <= 1e-4
